//! The store as the pipeline's [`Archive`]: a batch's routed signals are appended in one
//! transaction when the stage commits, and only then enter the channel logs.

use engine::channels::{Epoch, MessageMeta};
use engine::model::{Tier, UnixNanos};
use engine::pipeline::{Archive, Archived, ArchivedClose, Stage};

use super::{ClosedSignal, Routed, SqliteStore, StoreError};

/// Signals removed per prune transaction: a bounded pause for the stage, which prunes
/// between batches, so that retention never stops ingest for long.
const PRUNE_CHUNK: usize = 2_000;

/// How often the stage looks for signals past retention when none were due last time.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// See the module docs.
#[derive(Debug)]
pub struct StoreArchive {
    store: SqliteStore,
    batch: Vec<Routed>,
    closes: Vec<ClosedSignal>,
    /// Signals older than this are pruned (None: kept for ever).
    retention: Option<std::time::Duration>,
    next_prune: std::time::Instant,
}

impl StoreArchive {
    pub fn new(store: SqliteStore) -> Self {
        Self {
            store,
            batch: Vec::new(),
            closes: Vec::new(),
            retention: None,
            next_prune: std::time::Instant::now(),
        }
    }

    /// Prunes signals routed longer than `retention` ago, a chunk at a time between
    /// batches.
    #[must_use]
    pub fn with_retention(mut self, retention: Option<std::time::Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// One chunk of pruning, when due.
    fn prune_due(&mut self) {
        let Some(retention) = self.retention else { return };
        let now = std::time::Instant::now();
        if now < self.next_prune {
            return;
        }
        let keep_ns = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        let before = engine::model::UnixNanos(engine::model::UnixNanos::now().0.saturating_sub(keep_ns));
        match self.store.prune(before, PRUNE_CHUNK) {
            // A full chunk: more may be due, go on after the next batch.
            Ok(n) if n == PRUNE_CHUNK => {}
            Ok(n) => {
                if n > 0 {
                    tracing::info!(signals = n, "pruned signals past retention");
                }
                self.next_prune = now + PRUNE_EVERY;
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning the signal store failed; trying again later");
                self.next_prune = now + PRUNE_EVERY;
            }
        }
    }

    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

impl Archive for StoreArchive {
    fn stage(&mut self, r: &Archived<'_>) {
        self.batch.push(Routed {
            signal: r.signal.clone(),
            producer: r.producer.map(str::to_owned),
            // The engine's encoder writes UTF-8 JSON only (checked, not trusted: the
            // lossy path is for a bug, and costs a scan per signal when used always).
            data: std::str::from_utf8(r.data)
                .map_or_else(|_| String::from_utf8_lossy(r.data).into_owned(), str::to_owned),
            // SQLite's market_conditions is read out of `data` (the view
            // trading_signals_json): the snapshot is not encoded a second time.
            market: None,
            ingest_ts: r.ingest_ts,
            routed_ts: r.routed_ts,
            channels: r.channels.to_vec(),
        });
    }

    fn stage_close(&mut self, c: &ArchivedClose<'_>) {
        self.closes.push(ClosedSignal {
            id: c.close.signal.id,
            status: c.close.status,
            entry: c.close.entry,
            exit: c.close.exit,
            return_pct: c.close.return_pct,
            closed_at: c.close.closed_at,
            data: std::str::from_utf8(c.data)
                .map_or_else(|_| String::from_utf8_lossy(c.data).into_owned(), str::to_owned),
            channels: c.channels.to_vec(),
        });
    }

    fn commit(&mut self) -> Result<(), String> {
        if !self.batch.is_empty() || !self.closes.is_empty() {
            // On error the batch stays staged and the stage tries again.
            self.store.append_all(&self.batch, &self.closes).map_err(|e| e.to_string())?;
            self.batch.clear();
            self.closes.clear();
        }
        self.prune_due();
        Ok(())
    }
}

/// The epochs of a node's channels, kept across restarts: the stored ones, or new
/// random ones, stored now (the first start on this data directory).
pub fn epochs(store: &mut SqliteStore) -> Result<[Epoch; 4], StoreError> {
    let mut out = [Epoch(0); 4];
    for tier in Tier::ALL {
        let epoch = match store.epoch(tier)? {
            Some(e) => Epoch(e),
            None => {
                let e = Epoch::random();
                store.set_epoch(tier, e.0)?;
                e
            }
        };
        out[tier.index()] = epoch;
    }
    Ok(out)
}

/// Puts a restarted node's state back into its new `stage` (whose channels carry the
/// stored [`epochs`]): the last `ring_capacity` messages of each channel, in seq order
/// (the delayed views refill from them), and the last `dedup_window` signal ids, so
/// that a producer resending after the restart is not routed twice. Returns how many
/// messages were put back.
pub fn restore(
    store: &SqliteStore,
    stage: &mut Stage,
    ring_capacity: usize,
    dedup_window: usize,
    max_open: usize,
) -> Result<usize, StoreError> {
    let mut restored = 0;
    for tier in Tier::ALL {
        let head = store.head(tier)?;
        let from = head.saturating_sub(ring_capacity as u64);
        let mut text = Vec::new();
        for m in store.after(tier, from, ring_capacity)? {
            let meta = MessageMeta {
                seq: m.seq,
                category: m.category,
                ingest_ts: m.ingest_ts,
                routed_ts: m.routed_ts,
                sent_ts: None,
                outcome: m.outcome,
            };
            text.clear();
            text.extend_from_slice(m.data.as_bytes());
            stage.restore(tier, &meta, &text);
            restored += 1;
        }
        stage.restore_head(tier, head);
    }
    let mut ids = store.recent_ids(dedup_window)?;
    ids.reverse(); // oldest first: the window forgets the oldest
    stage.seed_ids(ids);
    // Open signals are tracked again; those that expired while the node was down close
    // at its first pass (looking back a week at most: older ones stay as they were).
    let week_ago = UnixNanos(UnixNanos::now().0.saturating_sub(7 * 86_400 * 1_000_000_000));
    for signal in store.open_signals(week_ago, max_open)? {
        stage.reopen(signal);
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use engine::channels::ChannelSet;
    use engine::config::EngineConfig;
    use engine::feed::ProducerRegistry;
    use engine::model::{Category, Tier, UnixNanos};
    use engine::pipeline::{IngestItem, Origin, PipelineStats, SignalItem, Stage};
    use engine::policy::TierPolicy;
    use engine::ticks::TickBook;

    use super::*;
    use crate::Durability;

    #[test]
    fn what_the_stage_routes_is_in_the_store_with_the_seqs_the_channels_gave_it() {
        let dir = std::env::temp_dir().join(format!("signalcast-store-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = EngineConfig::default();
        let policy = Arc::new(TierPolicy::default());
        let (_book, writer) = TickBook::new(config.max_symbols);
        let channels = Arc::new(ChannelSet::new(&policy, config.ring_capacity));
        let producers = Arc::new(ProducerRegistry::default());
        let (slot, _) = producers.attach("model-alpha");
        let store = SqliteStore::open(&dir, Durability::Full).unwrap();
        let mut stage = Stage::new(
            &config,
            policy,
            writer,
            Arc::clone(&channels),
            producers,
            Arc::new(PipelineStats::default()),
        )
        .with_archive(Box::new(StoreArchive::new(store)));
        let now = UnixNanos::now();
        for (n, confidence) in [(1u128, 9_500u16), (2, 8_000), (3, 9_600)] {
            let signal = engine::testkit::signal_at(n, confidence, "RELIANCE", "NSE", Category::Equity, now);
            let origin = Origin::Producer { slot: slot.index, seq: n as u64 };
            stage.handle(
                IngestItem::Signal(Box::new(SignalItem {
                    origin,
                    signal,
                    ingest_ts: now,
                    sent_ts: None,
                    verdict: None,
                })),
                now,
            );
        }
        stage.finish_batch();
        assert_eq!(slot.acked(), 3);
        drop(stage);

        let store = SqliteStore::open(&dir, Durability::Full).unwrap();
        assert_eq!(store.head(Tier::Enterprise).unwrap(), 3);
        assert_eq!(store.head(Tier::Free).unwrap(), 2, "the 80.00 signal is below free's bar");
        let mut live = Vec::new();
        channels.live(Tier::Enterprise).read_after(0, &mut live, 10).unwrap();
        let stored = store.after(Tier::Enterprise, 0, 10).unwrap();
        for (m, s) in live.iter().zip(&stored) {
            assert_eq!(m.seq(), s.seq);
            let json = std::str::from_utf8(m.json()).unwrap();
            assert!(json.contains(s.data.as_str()), "the log's message carries the stored data: {json}");
        }
        assert_eq!(stored.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restarted_node_keeps_its_epochs_rings_and_de_duplication() {
        let dir = std::env::temp_dir().join(format!("signalcast-store-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = EngineConfig { ring_capacity: 2, ..EngineConfig::default() };
        let policy = Arc::new(TierPolicy::default());
        let now = UnixNanos::now();
        let signal = |n: u128| engine::testkit::signal_at(n, 9_500, "RELIANCE", "NSE", Category::Equity, now);
        let item = |n: u128| {
            IngestItem::Signal(Box::new(SignalItem {
                origin: Origin::Local,
                signal: signal(n),
                ingest_ts: now,
                sent_ts: None,
                verdict: None,
            }))
        };
        // A node's life: a stage over channels with the store's epochs, restored from it.
        let start = || {
            let mut store = SqliteStore::open(&dir, Durability::Full).unwrap();
            let epochs = epochs(&mut store).unwrap();
            let channels = Arc::new(ChannelSet::with_epochs(&policy, config.ring_capacity, epochs));
            let (_book, writer) = TickBook::new(config.max_symbols);
            let stats = Arc::new(PipelineStats::default());
            let mut stage = Stage::new(
                &config,
                Arc::clone(&policy),
                writer,
                Arc::clone(&channels),
                Arc::new(ProducerRegistry::default()),
                Arc::clone(&stats),
            );
            let restored = restore(
                &store,
                &mut stage,
                config.ring_capacity,
                config.dedup_window,
                config.max_open_signals,
            )
            .unwrap();
            (stage.with_archive(Box::new(StoreArchive::new(store))), channels, stats, restored)
        };
        let (mut stage, channels, _, restored) = start();
        assert_eq!(restored, 0);
        for n in 1..=3 {
            stage.handle(item(n), now);
        }
        stage.finish_batch();
        let epoch = channels.live(Tier::Premium).epoch();
        let before: Vec<Vec<u8>> = {
            let mut out = Vec::new();
            channels.live(Tier::Premium).read_after(1, &mut out, 10).unwrap();
            out.iter().map(|m| m.frame().to_vec()).collect()
        };
        drop(stage); // the process ends

        let (mut stage, channels, stats, restored) = start();
        assert_eq!(restored, 4 * 2, "a ring's worth per channel");
        let log = channels.live(Tier::Premium);
        assert_eq!((log.epoch(), log.head()), (epoch, 3), "same epoch, same head");
        let sub = log.subscribe(Some(engine::channels::Resume { since: 1, epoch }));
        assert_eq!(sub.recovered, Some(true));
        let again: Vec<Vec<u8>> = sub.replay.iter().map(|m| m.frame().to_vec()).collect();
        assert_eq!(again, before, "the very frames the live channel sent");
        assert_eq!(log.subscribe(Some(engine::channels::Resume { since: 0, epoch })).recovered, Some(false));
        // A resend after the restart is dropped; a new signal takes the next seq.
        stage.handle(item(2), now);
        stage.handle(item(4), now);
        stage.finish_batch();
        assert_eq!(stats.drops(engine::pipeline::DropReason::DuplicateId), 1);
        assert_eq!(log.head(), 4);
        drop(stage);

        // Retention removes every stored message: the next life starts after the stored
        // head, never at seq 1 again.
        SqliteStore::open(&dir, Durability::Full).unwrap().prune(UnixNanos(i64::MAX), 100).unwrap();
        let (mut stage, channels, _, restored) = start();
        assert_eq!(restored, 0, "nothing left to put back");
        let log = channels.live(Tier::Premium);
        assert_eq!(log.head(), 4, "the stored head");
        stage.handle(item(5), now);
        stage.finish_batch();
        assert_eq!(log.head(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
