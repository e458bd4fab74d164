//! `signalcast-accounts`: serve the accounts API, apply migrations, or seed dev users.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "signalcast-accounts", version, about = "signalcast accounts sidecar (PostgreSQL)")]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://signalcast@127.0.0.1:5432/signalcast
    #[arg(
        long,
        env = "SIGNALCAST_ACCOUNTS_DATABASE_URL",
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API (the default).
    Serve {
        #[arg(long, env = "SIGNALCAST_ACCOUNTS_LISTEN", default_value = "127.0.0.1:8081")]
        listen: String,
        /// Bearer token of the admin endpoints (required).
        #[arg(long, env = "SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// Bearer token gateways use for the change feed and producer keys (required).
        #[arg(long, env = "SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", hide_env_values = true)]
        gateway_token: String,
        /// Access token lifetime, seconds.
        #[arg(long, default_value_t = 900)]
        access_ttl_secs: u64,
    },
    /// Apply the embedded migrations and exit.
    Migrate,
    /// Load users from an accounts file (fixtures/accounts.toml), all with one password.
    Seed {
        #[arg(long, default_value = "fixtures/accounts.toml")]
        file: PathBuf,
        /// DEV ONLY: every seeded user gets this password.
        #[arg(long, default_value = "signalcast-dev-password")]
        password: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIGNALCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Serve { listen, admin_token, gateway_token, access_ttl_secs }) => {
            anyhow::ensure!(admin_token.len() >= 16, "--admin-token: at least 16 characters");
            anyhow::ensure!(gateway_token.len() >= 16, "--gateway-token: at least 16 characters");
            let mut config = accounts::Config::new(cli.database_url, admin_token, gateway_token);
            config.access_ttl = Duration::from_secs(access_ttl_secs.max(1));
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "signalcast-accounts serving");
            accounts::run(listener, config, shutdown()).await?;
        }
        None => anyhow::bail!("choose a command: serve, migrate or seed (see --help)"),
        Some(Cmd::Migrate) => {
            let pool = accounts::db::pool(&cli.database_url, 2)?;
            let n = accounts::db::migrate(&pool).await?;
            tracing::info!(applied = n, "migrations done");
        }
        Some(Cmd::Seed { file, password }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            let pool = accounts::db::pool(&cli.database_url, 2)?;
            accounts::db::migrate(&pool).await?;
            let n = accounts::seed::seed(&pool, &text, &password).await?;
            tracing::info!(users = n, file = %file.display(), "seeded");
        }
    }
    Ok(())
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
