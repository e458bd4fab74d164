//! The store as the pipeline's [`Archive`]: a batch's routed signals are appended in one
//! transaction when the stage commits, and only then enter the channel logs.

use engine::pipeline::{Archive, Archived};

use super::{Routed, SqliteStore};

/// See the module docs.
#[derive(Debug)]
pub struct StoreArchive {
    store: SqliteStore,
    batch: Vec<Routed>,
}

impl StoreArchive {
    pub fn new(store: SqliteStore) -> Self {
        Self { store, batch: Vec::new() }
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
            // The engine's encoder writes UTF-8 JSON only.
            data: String::from_utf8_lossy(r.data).into_owned(),
            market: r.market.and_then(|m| serde_json::to_string(m).ok()),
            ingest_ts: r.ingest_ts,
            routed_ts: r.routed_ts,
            channels: r.channels.to_vec(),
        });
    }

    fn commit(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // On error the batch stays staged and the stage tries again.
        self.store.append(&self.batch).map_err(|e| e.to_string())?;
        self.batch.clear();
        Ok(())
    }
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
                IngestItem::Signal(SignalItem { origin, signal, ingest_ts: now, sent_ts: None }),
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
        for (m, (seq, data, _)) in live.iter().zip(&stored) {
            assert_eq!(m.seq(), *seq);
            let json = std::str::from_utf8(m.json()).unwrap();
            assert!(json.contains(data.as_str()), "the log's message carries the stored data: {json}");
        }
        assert_eq!(stored.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
