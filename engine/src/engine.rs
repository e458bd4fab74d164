//! Wiring: the queue, the stage thread, the tick book, the channel logs.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::channels::{ChannelSet, Epoch, History};
use crate::config::{EngineConfig, FeedConfig};
use crate::feed::{FeedContext, FeedStats, ProducerAuth, ProducerRegistry};
use crate::pipeline::{Archive, IngestSender, PipelineStats, Publish, Stage, spawn_stage};
use crate::policy::TierPolicy;
use crate::ticks::TickBook;

/// A running engine: what ingest writes into and what the gateway reads from.
///
/// The stage thread ends when the last [`IngestSender`] (this engine's and every
/// clone handed to ingest) is dropped.
#[derive(Debug)]
pub struct Engine {
    ingest: IngestSender,
    pub channels: Arc<ChannelSet>,
    pub ticks: Arc<TickBook>,
    pub producers: Arc<ProducerRegistry>,
    pub stats: Arc<PipelineStats>,
    pub policy: Arc<TierPolicy>,
    pub config: EngineConfig,
    /// Where resumes from before the ring are served from (gateway role: Kafka).
    pub history: Option<Arc<dyn History>>,
}

/// How a node's engine differs from the single-node default.
#[derive(Debug, Default)]
pub struct EngineOptions {
    /// Engine role: routed signals go to this sink (`signals.<tier>`), not to channel logs.
    pub sink: Option<Box<dyn Publish>>,
    /// Engine role in scale-out: open signals follow their symbol's partition between
    /// engine nodes (fed by the `signals.<tier>` follower and Kafka ingest, which writes
    /// the rebalances here).
    pub handover: Option<Arc<crate::outcome::handover::Rebalances>>,
    /// Signal ids an earlier run already routed (de-duplication across restarts).
    pub seen_ids: Vec<uuid::Uuid>,
    /// Gateway role: the epochs every gateway derives for the shared topics; the logs
    /// then follow seqs assigned by Kafka offsets.
    pub epochs: Option<[Epoch; 4]>,
    /// Gateway role: older messages, read back from the topics.
    pub history: Option<Arc<dyn History>>,
    /// A single node's durable store: the epochs it keeps for the channels, what routed
    /// signals are committed to before fan-out and ACK, and how a new stage is filled
    /// from it (rings, delayed views, de-duplication) before it takes anything.
    pub durable: Option<Durable>,
}

/// How a node's engine is made durable (see [`EngineOptions::durable`]).
pub struct Durable {
    pub epochs: [Epoch; 4],
    pub archive: Box<dyn Archive>,
    pub restore: Restore,
}

/// Fills a new stage from the store before it takes anything (see [`Durable`]).
pub type Restore = Box<dyn FnOnce(&mut Stage) -> std::io::Result<()> + Send>;

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("epochs", &self.epochs).field("archive", &self.archive).finish()
    }
}

impl Engine {
    /// Builds the parts and starts the stage thread (single node).
    pub fn start(config: EngineConfig, policy: TierPolicy) -> std::io::Result<Self> {
        Self::start_with(config, policy, EngineOptions::default())
    }

    /// Builds the parts and starts the stage thread.
    pub fn start_with(
        config: EngineConfig,
        policy: TierPolicy,
        options: EngineOptions,
    ) -> std::io::Result<Self> {
        let policy = Arc::new(policy);
        let (ticks, writer) = TickBook::new(config.max_symbols);
        let channels = Arc::new(match (options.epochs, &options.durable) {
            (Some(epochs), _) => ChannelSet::following(&policy, config.ring_capacity, epochs),
            (None, Some(d)) => ChannelSet::with_epochs(&policy, config.ring_capacity, d.epochs),
            (None, None) => ChannelSet::new(&policy, config.ring_capacity),
        });
        let producers = Arc::new(ProducerRegistry::default());
        let stats = Arc::new(PipelineStats::default());
        let (tx, rx) = mpsc::channel(config.ingest_queue.max(1));
        let mut stage = Stage::new(
            &config,
            Arc::clone(&policy),
            writer,
            Arc::clone(&channels),
            Arc::clone(&producers),
            Arc::clone(&stats),
        );
        stage.seed_ids(options.seen_ids);
        if let Some(sink) = options.sink {
            stage = stage.with_sink(sink);
        }
        if let Some(rebalances) = options.handover {
            stage = stage.with_handover(rebalances);
        }
        if let Some(durable) = options.durable {
            (durable.restore)(&mut stage)?;
            stage = stage.with_archive_thread(durable.archive)?;
        }
        spawn_stage(stage, rx)?;
        Ok(Self { ingest: tx, channels, ticks, producers, stats, policy, config, history: options.history })
    }

    /// A sender into the ingest queue.
    pub fn ingest(&self) -> IngestSender {
        self.ingest.clone()
    }

    /// Items waiting in the ingest queue.
    pub fn queue_depth(&self) -> usize {
        self.ingest.max_capacity() - self.ingest.capacity()
    }

    /// What the TCP feed server needs from this engine.
    pub fn feed_context(&self, auth: Arc<dyn ProducerAuth>, config: FeedConfig) -> FeedContext {
        FeedContext {
            tls: None,
            ingest: self.ingest(),
            producers: Arc::clone(&self.producers),
            auth,
            max_analysis_bytes: self.config.max_analysis_bytes,
            config,
            stats: Arc::new(FeedStats::default()),
        }
    }
}
