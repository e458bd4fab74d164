//! LISTEN/NOTIFY for the entitlement change feed.
//!
//! The change log (`auth.entitlement_changes`) is durable and ordered; NOTIFY only says
//! "the log grew to position N" so that streams wake at once instead of polling. One
//! dedicated connection listens (pooled connections never LISTEN); after every
//! (re)connect it reads the log's head, because notifications sent while it was away
//! are lost.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use crate::db::DbTls;

/// Follows the log's head in the background (over `tls`, as the pool does); the
/// receiver holds the highest position known (0 until the first read).
pub fn follow(config: tokio_postgres::Config, tls: DbTls) -> watch::Receiver<i64> {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !tx.is_closed() {
            // A connection the server closed cleanly is retried after the same pause as
            // a failed one: a server that keeps closing must not make this spin.
            let began = tokio::time::Instant::now();
            let listened = match &tls {
                DbTls::Plain => listen(&config, NoTls, &tx).await,
                DbTls::Verified(t) => listen(&config, t.clone(), &tx).await,
            };
            if let Err(e) = listened {
                tracing::warn!(error = %e, "change feed listener lost PostgreSQL; retrying");
            }
            if began.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100); // it had been healthy
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    rx
}

fn advance(tx: &watch::Sender<i64>, position: i64) {
    tx.send_if_modified(|p| {
        let newer = position > *p;
        if newer {
            *p = position;
        }
        newer
    });
}

async fn listen<T>(
    config: &tokio_postgres::Config,
    tls: T,
    tx: &watch::Sender<i64>,
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut conn) = config.connect(tls).await?;
    let driver = async {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m?
                && let Ok(p) = n.payload().parse()
            {
                advance(tx, p);
            }
        }
        Ok(())
    };
    let setup = async {
        client.batch_execute("LISTEN entitlements").await?;
        let row =
            client.query_one("SELECT COALESCE(MAX(position), 0) FROM auth.entitlement_changes", &[]).await?;
        advance(tx, row.get(0));
        // Keep the client (and with it the session) alive while the driver runs.
        std::future::pending::<Result<(), tokio_postgres::Error>>().await
    };
    tokio::select! {
        r = driver => r,
        r = setup => r,
        () = tx.closed() => Ok(()),
    }
}
