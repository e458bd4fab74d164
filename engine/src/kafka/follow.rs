//! Engine nodes in scale-out: every `signals.<tier>` record, read back into the stage as
//! a [`PeerEvent`], so that open signals follow their symbols' partitions from node to
//! node ([`crate::outcome::handover`]).
//!
//! At start the follower reads the topics from their first retained record to where
//! they end, keeps only what is still open (a signal read on one tier topic may have
//! its close read first on another), hands that over oldest first, then
//! [`PeerEvent::CaughtUp`]; the node starts taking `raw-signals` and `market-data` only
//! then. After that each record is handed over as it comes. The topics' retention is
//! therefore how far back a node can rebuild what was open (docs/outcomes.md).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::client::client_config;
use super::{KafkaError, relay, value};
use crate::config::KafkaConfig;
use crate::model::Tier;
use crate::outcome::Tracked;
use crate::outcome::handover::PeerEvent;
use crate::pipeline::{HandoverItem, IngestItem, IngestSender};

/// The longest the first read-back may take before the node goes on without the rest
/// (logged): a node that never starts is worse than one that tracks less.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

/// Starts the follower thread; the receiver resolves once the read-back at start is
/// handed over (or given up after [`CATCH_UP_LIMIT`]). It runs until `stop` is set or
/// the engine stops.
pub fn spawn_follower(
    cfg: &KafkaConfig,
    ingest: IngestSender,
    stop: Arc<AtomicBool>,
) -> Result<(JoinHandle<()>, tokio::sync::oneshot::Receiver<()>), KafkaError> {
    let consumer: BaseConsumer = client_config(cfg)
        // No group: partitions are assigned, nothing is committed.
        .set("group.id", "signalcast-engine-follower")
        .set("enable.auto.commit", "false")
        .create()?;
    let topics = Tier::ALL.map(|t| cfg.signals_topic(t));
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in &topics {
        let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, 0, Offset::Offset(low))?;
        if high > low {
            ends.insert(topic.clone(), high);
        }
    }
    consumer.assign(&tpl)?;
    let max_bytes = cfg.relay_max_record_bytes;
    let (caught_up, caught_up_rx) = tokio::sync::oneshot::channel();
    let handle = std::thread::Builder::new()
        .name("signalcast-follower".into())
        .spawn(move || {
            let event = |m: &rdkafka::message::BorrowedMessage<'_>| {
                let r = relay::routed(&topics, m, max_bytes)?;
                value::peer_event(&r.data, r.tier).ok()
            };
            // The read-back: what is still open, in the order it was first read.
            let started = Instant::now();
            let mut open: Vec<Option<Tracked>> = Vec::new();
            let mut at: HashMap<uuid::Uuid, usize> = HashMap::new();
            let mut closed: HashSet<uuid::Uuid> = HashSet::new();
            while !ends.is_empty() && !stop.load(Ordering::Acquire) && started.elapsed() < CATCH_UP_LIMIT {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
                if ends.get(m.topic()).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(m.topic());
                }
                match event(&m) {
                    Some(PeerEvent::Open(t)) if !closed.contains(&t.id) => match at.get(&t.id) {
                        Some(&i) => {
                            if let Some(Some(same)) = open.get_mut(i) {
                                same.tiers |= t.tiers;
                            }
                        }
                        None => {
                            at.insert(t.id, open.len());
                            open.push(Some(*t));
                        }
                    },
                    Some(PeerEvent::Close { id, .. }) => {
                        closed.insert(id);
                        if let Some(&i) = at.get(&id) {
                            open[i] = None;
                        }
                    }
                    _ => {}
                }
            }
            if !ends.is_empty() {
                tracing::warn!(topics = ?ends.keys().collect::<Vec<_>>(), "signals.<tier> not read back to the end at start; open signals past that point are not rebuilt");
            }
            let n = open.iter().flatten().count();
            tracing::info!(open = n, closed = closed.len(), ms = started.elapsed().as_millis() as u64, "open signals read back from signals.<tier>");
            drop((at, closed));
            let send = |e: PeerEvent| ingest.blocking_send(IngestItem::Handover(HandoverItem::Peer(e))).is_ok();
            for t in open.into_iter().flatten() {
                if !send(PeerEvent::Open(Box::new(t))) {
                    return;
                }
            }
            if !send(PeerEvent::CaughtUp) {
                return;
            }
            let _ = caught_up.send(());
            while !stop.load(Ordering::Acquire) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        if let Some(e) = event(&m)
                            && !send(e)
                        {
                            break; // the engine stopped
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "signals.<tier> follower error"),
                    None => {}
                }
            }
            tracing::debug!("signals.<tier> follower stopped");
        })
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    Ok((handle, caught_up_rx))
}
