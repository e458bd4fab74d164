//! The single-writer stage between ingest and the channel logs, and its driver thread.
//!
//! Ingest (TCP sessions, later Kafka) pushes [`IngestItem`]s into one bounded queue. One
//! [`Stage`] takes them in order and, per signal: de-duplicates (producer seq, then id),
//! filters (confidence, expiry), enriches (tick book), routes (tier table), encodes each
//! message once per channel, appends to the channel logs and queues delayed views.
//! Ticks go through the same queue so that a tick a producer sent before a signal is
//! always the one that signal is enriched with.
//!
//! The stage is sans-IO: it is handed items and the time, which makes it testable
//! deterministically. [`spawn_stage`] runs it on its own thread.

pub mod encode;

mod dedup;
mod delay;
mod enrich;
mod filter;
mod route;
mod stage;
mod stats;

use std::time::Duration;

use tokio::sync::mpsc;

pub use stage::Stage;
pub use stats::{DropReason, PipelineStats};

use crate::model::{Signal, Tick, UnixNanos};

/// Where a signal came from, so that its acknowledgement reaches the right place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A TCP producer: `slot` in the producer registry, the producer's own seq.
    Producer { slot: u32, seq: u64 },
    /// The engine itself (demo producer, tests): nothing to acknowledge.
    Local,
}

/// A signal on its way into the stage.
#[derive(Clone, Debug)]
pub struct SignalItem {
    pub origin: Origin,
    pub signal: Signal,
    /// When ingest decoded it.
    pub ingest_ts: UnixNanos,
    /// The producer's send time, when given.
    pub sent_ts: Option<UnixNanos>,
}

/// What ingest hands to the stage.
#[derive(Clone, Debug)]
pub enum IngestItem {
    Signal(SignalItem),
    Tick(Tick),
}

/// The ingest side of the bounded queue. `send().await` waits while the queue is full:
/// a fast producer is slowed down, nothing is dropped.
pub type IngestSender = mpsc::Sender<IngestItem>;

/// Items the stage takes from the queue at once; its acks and the channel bell are
/// per batch.
const BATCH: usize = 256;

/// Runs `stage` on a thread of its own until every [`IngestSender`] is gone.
///
/// The thread runs a current-thread tokio runtime only to wait on the queue and on the
/// next delayed release together; all the work is synchronous.
pub fn spawn_stage(
    mut stage: Stage,
    mut rx: mpsc::Receiver<IngestItem>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("signalcast-stage".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the pipeline stage runtime");
                return;
            }
        };
        rt.block_on(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let wait = stage
                    .next_release()
                    .map(|at| Duration::from_nanos(at.0.saturating_sub(UnixNanos::now().0).max(0) as u64));
                let received = match wait {
                    Some(d) => tokio::select! {
                        n = rx.recv_many(&mut batch, BATCH) => Some(n),
                        () = tokio::time::sleep(d) => None,
                    },
                    None => Some(rx.recv_many(&mut batch, BATCH).await),
                };
                if received == Some(0) {
                    break; // every sender is gone
                }
                for item in batch.drain(..) {
                    stage.handle(item, UnixNanos::now());
                }
                stage.release_due(UnixNanos::now());
                stage.finish_batch();
            }
            tracing::debug!("pipeline stage stopped: ingest queue closed");
        });
    })
}
