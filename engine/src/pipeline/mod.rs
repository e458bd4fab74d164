//! The single-writer stage between ingest and the channel logs, and its driver thread.
//!
//! Ingest (TCP sessions, Kafka) pushes [`IngestItem`]s into one bounded queue. One
//! [`Stage`] takes them in order and, per signal: de-duplicates (producer seq, then id),
//! filters (confidence, expiry), enriches (tick book), routes (tier table), encodes each
//! message once per channel, and either appends to the channel logs and queues delayed
//! views (one node) or hands the routed signal to a [`Publish`] sink (the engine role:
//! `signals.<tier>` topics). Ticks go through the same queue so that a tick a producer
//! sent before a signal is always the one that signal is enriched with.
//!
//! A gateway node's stage routes nothing: it takes [`RoutedItem`]s (signals another
//! node routed, with their seq) and only encodes, appends and delays them.
//!
//! The stage is sans-IO: it is handed items and the time, which makes it testable
//! deterministically. [`spawn_stage`] runs it on its own thread.

mod commit;
pub mod encode;

pub(crate) mod dedup;
mod delay;
pub mod enrich;
mod filter;
mod route;
mod stage;
mod stats;

use std::time::Duration;

use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

pub use stage::Stage;
pub use stats::{DropReason, PipelineStats};

use crate::channels::MessageMeta;
use crate::model::{Category, Signal, Tick, Tier, UnixNanos};

/// Where a signal came from, so that its acknowledgement reaches the right place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A TCP producer: `slot` in the producer registry, the producer's own seq.
    Producer { slot: u32, seq: u64 },
    /// The engine itself (demo producer, tests) or HTTP ingest: nothing to acknowledge.
    Local,
    /// A `raw-signals` record of input `partition` (nothing to acknowledge: its offset is
    /// stored once it is routed). In scale-out its outcome is tracked by whichever node
    /// holds the partition.
    Kafka { partition: i32 },
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
    /// Where an HTTP request learns what became of this signal.
    pub verdict: Option<Arc<Verdict>>,
}

/// What the stage decided for one signal of an HTTP request, read once the request's
/// [`Done`] has run (so after the commit: `Routed` means stored).
#[derive(Debug)]
pub struct Verdict {
    /// The producer that sent it (stored with the signal).
    pub producer: Arc<str>,
    outcome: std::sync::Mutex<Option<Outcome>>,
}

/// See [`Verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Routed to at least one channel (stored, with an archive).
    Routed,
    /// Dropped for a reason: a duplicate, below the confidence bar, expired, …
    Dropped(DropReason),
}

impl Verdict {
    pub fn new(producer: Arc<str>) -> Arc<Self> {
        Arc::new(Self { producer, outcome: std::sync::Mutex::new(None) })
    }

    pub(crate) fn set(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outcome);
    }

    /// The decision, once the stage has taken the signal.
    pub fn outcome(&self) -> Option<Outcome> {
        *self.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A signal another node already routed to `signals_<tier>` with `seq` (a gateway node
/// reading `signals.<tier>`): `data` is the enriched signal object as that node encoded it.
#[derive(Clone, Debug)]
pub struct RoutedItem {
    pub tier: Tier,
    pub seq: u64,
    pub category: Category,
    pub data: Vec<u8>,
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    pub sent_ts: Option<UnixNanos>,
    /// The seqs just before this one that the relay dropped on purpose (records that
    /// were not a routed signal): a gap of these is not a loss, so readers and resumes
    /// across it go on; any older gap still is one.
    pub skipped: u64,
}

impl RoutedItem {
    /// What the channel message of this signal carries besides its text.
    pub fn meta(&self) -> MessageMeta {
        MessageMeta {
            seq: self.seq,
            category: self.category,
            ingest_ts: self.ingest_ts,
            routed_ts: self.routed_ts,
            sent_ts: self.sent_ts,
            // A close's data ends with its outcome (another node's tracker made it).
            outcome: encode::is_close(&self.data),
        }
    }
}

/// Run by the stage once everything queued before it has been routed and, with a
/// [`Publish`] sink, made durable: how Kafka ingest learns which offsets it may commit.
#[derive(Clone)]
pub struct Done(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Done")
    }
}

/// What ingest hands to the stage.
///
/// Boxed where a variant is large: every item is moved several times between a feed's
/// read and the stage (into the hand-off batch, the queue's block, out of it), and at
/// 100,000 ticks a second copying a 224-byte enum for a 112-byte tick was a tenth of a
/// tick's cost.
#[derive(Clone, Debug)]
pub enum IngestItem {
    Signal(Box<SignalItem>),
    Tick(Tick),
    Routed(Box<RoutedItem>),
    Done(Done),
    /// Scale-out: which node tracks which symbol's open signals.
    Handover(HandoverItem),
}

// A tick's size and a tag: a variant that grows past it goes in a Box.
const _: () = assert!(std::mem::size_of::<IngestItem>() <= 128);

/// Scale-out: what moves open signals between engine nodes (see
/// [`crate::outcome::handover`]).
#[derive(Clone, Debug)]
pub enum HandoverItem {
    /// A record of the `signals.<tier>` follower.
    Peer(crate::outcome::handover::PeerEvent),
    /// A record of `key` came from input `partition` (sent before the record itself,
    /// when the key is new on this node or its partition changed). Rebalances do not
    /// queue: they apply before the next item ([`crate::outcome::handover::Rebalances`]).
    Owned { key: crate::outcome::handover::Key, partition: i32 },
}

/// One routed signal for a sink: what a `signals.<tier>` record carries.
#[derive(Clone, Copy, Debug)]
pub struct Routed<'a> {
    pub tier: Tier,
    pub id: Uuid,
    pub category: Category,
    /// The enriched signal object (the `data` of SIGNAL_UPDATE).
    pub data: &'a [u8],
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    pub sent_ts: Option<UnixNanos>,
    /// The producer that sent it, when known (the archiver stores it).
    pub producer: Option<&'a str>,
}

/// One routed signal for an [`Archive`], with every channel and seq it takes.
#[derive(Clone, Copy, Debug)]
pub struct Archived<'a> {
    pub signal: &'a crate::model::Signal,
    /// The producer that sent it, when known.
    pub producer: Option<&'a str>,
    /// The `data` of its SIGNAL_UPDATE.
    pub data: &'a [u8],
    pub market: Option<&'a crate::model::MarketSnapshot>,
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    pub channels: &'a [(Tier, u64)],
}

/// A signal's close for an [`Archive`]: a later fact about a stored signal, with every
/// channel and seq its `SIGNAL_UPDATE` takes.
#[derive(Clone, Copy, Debug)]
pub struct ArchivedClose<'a> {
    pub close: &'a crate::outcome::Close,
    /// The `data` of its SIGNAL_UPDATE (the signal with its status and outcome).
    pub data: &'a [u8],
    pub channels: &'a [(Tier, u64)],
}

/// Where a node keeps what it routes before anyone sees it: with an archive, a batch's
/// signals enter the channel logs (and their producers are acknowledged) only once
/// [`Archive::commit`] has returned. Fan-out follows the write, so a seq a client saw
/// is never given to another message after a crash.
pub trait Archive: Send + std::fmt::Debug {
    /// Adds one routed signal to the batch being written.
    fn stage(&mut self, routed: &Archived<'_>);
    /// Adds a signal's close to the batch being written (after the signals staged
    /// before it, its own among them).
    fn stage_close(&mut self, close: &ArchivedClose<'_>);
    /// Makes everything staged durable. An error keeps it staged: the stage retries,
    /// and until a commit succeeds nothing more is routed or acknowledged (the ingest
    /// queue fills and producers are slowed).
    fn commit(&mut self) -> Result<(), String>;
}

/// Where an engine node's stage sends routed signals instead of its own channel logs.
pub trait Publish: Send + std::fmt::Debug {
    /// Queues one routed signal; must not lose it (wait, retry) and must keep order per tier.
    fn publish(&mut self, routed: &Routed<'_>);
    /// Returns once everything published so far is durable. Producers are acknowledged
    /// and [`Done`] callbacks run only after it returns.
    fn flush(&mut self);
}

/// The ingest side of the bounded queue. `send().await` waits while the queue is full:
/// a fast producer is slowed down, nothing is dropped.
pub type IngestSender = mpsc::Sender<IngestItem>;

/// Items the stage takes from the queue at once; its acks and the channel bell are
/// per batch.
const BATCH: usize = 1024;

/// Runs `stage` on a thread of its own until every [`IngestSender`] is gone.
///
/// The thread runs a current-thread tokio runtime only to wait on the queue and on the
/// next delayed release together; all the work is synchronous. Its death (a panic)
/// ends the process ([`crate::critical`]): a node that acknowledges signals it can no
/// longer route must not stay up.
pub fn spawn_stage(
    mut stage: Stage,
    mut rx: mpsc::Receiver<IngestItem>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    crate::critical::spawn("signalcast-stage".into(), crate::critical::exit_process(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the pipeline stage runtime: {e}"))?;
        rt.block_on(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let stored = stage.commit_waker();
            loop {
                let wait = stage
                    .next_release()
                    .map(|at| Duration::from_nanos(at.0.saturating_sub(UnixNanos::now().0).max(0) as u64))
                    .unwrap_or(Duration::from_secs(3600));
                let received = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => Some(n),
                    () = tokio::time::sleep(wait) => None,
                    () = async {
                        match &stored {
                            Some(n) => n.notified().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        // A batch is stored: let it out now, not with the next one.
                        stage.poll_committed();
                        continue;
                    }
                };
                if received == Some(0) {
                    stage.wait_committed();
                    break; // every sender is gone
                }
                // A signal's routing time is read as it is routed; ticks share the
                // time the batch (or the signal before them) was taken: a clock read
                // per tick was a twentieth of a tick's cost, and a tick's time here
                // only marks when the engine saw it.
                let mut now = UnixNanos::now();
                for item in batch.drain(..) {
                    if matches!(item, IngestItem::Signal(_)) {
                        now = UnixNanos::now();
                    }
                    stage.handle(item, now);
                }
                stage.release_due(UnixNanos::now());
                stage.finish_batch();
            }
            tracing::debug!("pipeline stage stopped: ingest queue closed");
        });
        Ok(())
    })
}
