//! The archive's own thread: a batch's signals are written to the store while the stage
//! routes the next batch, so the two halves of a signal's work (routing, storing) run on
//! two cores instead of one after the other.
//!
//! Fan-out still follows the write: the stage hands a batch to the [`Committer`] and
//! keeps its messages, acknowledgements and [`Done`](super::Done) callbacks until the
//! committer says the batch is stored. At most one batch is being written while the
//! next is routed; the stage waits for the first before it hands over the second.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use tokio::sync::Notify;

use super::{Archive, Archived, ArchivedClose, PipelineStats};
use crate::model::{MarketSnapshot, Signal, Tier, UnixNanos};
use crate::outcome::Close;

/// What a batch hands to the archive: routed signals and closes, in routing order.
#[derive(Debug)]
pub(crate) enum Staged {
    Signal(StagedSignal),
    Close(StagedClose),
}

/// A signal's close, owned, on its way to the archive.
#[derive(Debug)]
pub(crate) struct StagedClose {
    pub close: Close,
    pub data: Vec<u8>,
    pub channels: [(Tier, u64); 4],
    pub n: usize,
}

impl Staged {
    /// Hands this to `archive`.
    pub fn stage_into(&self, archive: &mut dyn Archive) {
        match self {
            Self::Signal(s) => archive.stage(&s.archived()),
            Self::Close(c) => {
                archive.stage_close(&ArchivedClose {
                    close: &c.close,
                    data: &c.data,
                    channels: &c.channels[..c.n],
                });
            }
        }
    }
}

/// One routed signal, owned, on its way to the archive.
#[derive(Debug)]
pub(crate) struct StagedSignal {
    pub signal: Signal,
    pub producer: Option<String>,
    pub data: Vec<u8>,
    pub market: Option<MarketSnapshot>,
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    pub channels: [(Tier, u64); 4],
    pub n: usize,
}

impl StagedSignal {
    fn archived(&self) -> Archived<'_> {
        Archived {
            signal: &self.signal,
            producer: self.producer.as_deref(),
            data: &self.data,
            market: self.market.as_ref(),
            ingest_ts: self.ingest_ts,
            routed_ts: self.routed_ts,
            channels: &self.channels[..self.n],
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Committer {
    jobs: SyncSender<Vec<Staged>>,
    done: Receiver<()>,
    wake: Arc<Notify>,
}

impl Committer {
    /// Starts the archive's thread. Its death (a panic) ends the process, as the
    /// stage's does: a node that can no longer store must not go on acknowledging.
    pub fn start(mut archive: Box<dyn Archive>, stats: Arc<PipelineStats>) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Vec<Staged>>(1);
        let (done_tx, done) = std::sync::mpsc::channel();
        let wake = Arc::new(Notify::new());
        let waker = Arc::clone(&wake);
        crate::critical::spawn("signalcast-store".into(), crate::critical::exit_process(), move || {
            while let Ok(batch) = rx.recv() {
                for s in &batch {
                    s.stage_into(archive.as_mut());
                }
                commit(archive.as_mut(), &stats);
                if done_tx.send(()).is_err() {
                    break;
                }
                waker.notify_one();
            }
            Ok(())
        })?;
        Ok(Self { jobs, done, wake })
    }

    /// Hands a batch to the thread (which takes one at a time).
    pub fn submit(&self, batch: Vec<Staged>) -> Result<(), String> {
        self.jobs.send(batch).map_err(|_| "the signal store's thread is gone".to_owned())
    }

    /// Blocks until the batch handed over last is stored.
    pub fn wait(&self) -> Result<(), String> {
        self.done.recv().map_err(|_| "the signal store's thread is gone".to_owned())
    }

    /// Whether the batch handed over last is stored, without waiting.
    pub fn is_done(&self) -> Result<bool, String> {
        match self.done.try_recv() {
            Ok(()) => Ok(true),
            Err(TryRecvError::Empty) => Ok(false),
            Err(TryRecvError::Disconnected) => Err("the signal store's thread is gone".to_owned()),
        }
    }

    /// Woken when a batch is stored (the stage's loop waits on it beside the queue).
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }
}

/// Commits `archive`'s batch, retrying with a growing pause while it fails (a full or
/// read-only disk): nothing is routed or acknowledged meanwhile, so the ingest queue
/// fills and producers are slowed.
pub(crate) fn commit(archive: &mut dyn Archive, stats: &PipelineStats) {
    let mut pause = std::time::Duration::from_millis(10);
    while let Err(e) = archive.commit() {
        stats.store_failed();
        stats.set_store_stalled(true);
        tracing::error!(error = %e, "the signal store cannot commit; nothing is acknowledged until it can");
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
    stats.set_store_stalled(false);
}
