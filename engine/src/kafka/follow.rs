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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::client::client_config;
use super::{KafkaError, relay, value};
use crate::config::KafkaConfig;
use crate::model::Tier;
use crate::outcome::Tracked;
use crate::outcome::handover::{CLOSED_WINDOW, Key, PeerEvent};
use crate::pipeline::{HandoverItem, IngestItem, IngestSender};

/// The longest the first read-back may take before the node goes on without the rest
/// (logged): a node that never starts is worse than one that tracks less.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

/// Starts the follower thread; the receiver resolves once the read-back at start is
/// handed over (or given up: after [`CATCH_UP_LIMIT`], or when the brokers cannot be
/// read, logged). It keeps at most `max_open` signals from the read-back and runs until
/// `stop` is set or the engine stops. Nothing here blocks the caller.
pub fn spawn_follower(
    cfg: &KafkaConfig,
    ingest: IngestSender,
    max_open: usize,
    stop: Arc<AtomicBool>,
) -> Result<tokio::sync::oneshot::Receiver<()>, KafkaError> {
    let cfg = cfg.clone();
    let (caught_up, caught_up_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("signalcast-follower".into())
        .spawn(move || {
            let send = |e: PeerEvent| ingest.blocking_send(IngestItem::Handover(HandoverItem::Peer(e))).is_ok();
            let (consumer, topics) = match consumer(&cfg) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot follow signals.<tier>: open signals of other nodes are not rebuilt here");
                    return;
                }
            };
            let Some(back) = read_back(&consumer, &topics, cfg.relay_max_record_bytes, max_open, &stop) else {
                return;
            };
            let closes = back.closed.into_iter().map(|(id, key)| PeerEvent::Close { id, key });
            for e in closes.chain(back.open.into_iter().map(|t| PeerEvent::Open(Box::new(t)))) {
                if !send(e) {
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
                        if let Some(e) = event(&topics, &m, cfg.relay_max_record_bytes)
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
    Ok(caught_up_rx)
}

/// A consumer for every `signals.<tier>`, assigned by [`read_back`].
fn consumer(cfg: &KafkaConfig) -> Result<(BaseConsumer, [String; 4]), KafkaError> {
    let consumer: BaseConsumer = client_config(cfg)
        // No group: partitions are assigned, nothing is committed. An offset retention
        // removed meanwhile means the first one left, not the end.
        .set("group.id", "signalcast-engine-follower")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    Ok((consumer, Tier::ALL.map(|t| cfg.signals_topic(t))))
}

/// What the read-back at start hands over: the signals still open, in the order first
/// read, and the latest closes it read (their ids are remembered by the handover, so a
/// copy of a closed signal read later does not open it again).
struct ReadBack {
    open: Vec<Tracked>,
    closed: Vec<(uuid::Uuid, Key)>,
}

/// Assigns every topic from its first retained record and reads up to where each ends
/// now; `None` when `stop` was set meanwhile or the topics cannot be assigned.
///
/// The assignment made here is the follower's for good: what comes after the
/// read-back is read on from where it stopped, never re-assigned. A broker's high
/// watermark may lag its last record (the test broker's does), so the read-back can
/// end before records that exist; those then come as live events, and the handover
/// merges them as it would any late copy. (Re-assigning "from where the read-back
/// ended" skipped them: librdkafka kept the fetch position it had reached in the
/// topics already read past their watermark.)
fn read_back(
    consumer: &BaseConsumer,
    topics: &[String; 4],
    max_bytes: usize,
    max_open: usize,
    stop: &AtomicBool,
) -> Option<ReadBack> {
    let started = Instant::now();
    // Where each topic ends now: what is left to read. Offsets are the watermarks'
    // (explicit, as the gateways' relay does): a broker's answer for "the beginning"
    // is not always the first record it holds.
    let mut ends = HashMap::new();
    let mut from = TopicPartitionList::new();
    for topic in topics {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
            Ok((low, high)) => {
                if high > low {
                    ends.insert(topic.clone(), high);
                }
                let _ = from.add_partition_offset(topic, 0, Offset::Offset(low));
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "no watermarks: not read back");
                let _ = from.add_partition_offset(topic, 0, Offset::End);
            }
        }
    }
    if let Err(e) = consumer.assign(&from) {
        tracing::error!(error = %e, "cannot follow signals.<tier>: open signals of other nodes are not rebuilt here");
        return None;
    }
    // Still open, by id, with the order it was first read in.
    let mut open: HashMap<uuid::Uuid, (u64, Tracked)> = HashMap::new();
    let mut closed: HashSet<uuid::Uuid> = HashSet::new();
    let mut latest_closes: VecDeque<(uuid::Uuid, Key)> = VecDeque::new();
    let (mut order, mut not_kept) = (0_u64, 0_u64);
    while !ends.is_empty() && started.elapsed() < CATCH_UP_LIMIT {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
        if ends.get(m.topic()).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(m.topic());
        }
        match event(topics, &m, max_bytes) {
            Some(PeerEvent::Open(t)) if !closed.contains(&t.id) => {
                let full = open.len() >= max_open;
                match open.get_mut(&t.id) {
                    Some((_, same)) => same.tiers |= t.tiers,
                    None if full => not_kept += 1,
                    None => {
                        open.insert(t.id, (order, *t));
                        order += 1;
                    }
                }
            }
            Some(PeerEvent::Close { id, key }) => {
                if closed.insert(id) {
                    if latest_closes.len() == CLOSED_WINDOW {
                        latest_closes.pop_front();
                    }
                    latest_closes.push_back((id, key));
                }
                open.remove(&id);
            }
            _ => {}
        }
    }
    if !ends.is_empty() {
        tracing::warn!(topics = ?ends.keys().collect::<Vec<_>>(), "signals.<tier> not read back to the end at start; open signals past that point are not rebuilt");
        // What was left unread is history: followed live, its opens would be taken
        // for new ones (their closes are not among those handed over). Go on from where
        // the topic ended at start.
        for (topic, end) in &ends {
            if let Err(e) = consumer.seek(topic, 0, Offset::Offset(*end), Duration::from_secs(10)) {
                tracing::warn!(%topic, error = %e, "cannot skip the rest of the read-back");
            }
        }
    }
    tracing::info!(
        open = open.len(),
        closed = closed.len(),
        not_kept,
        ms = started.elapsed().as_millis() as u64,
        "open signals read back from signals.<tier>"
    );
    let mut open: Vec<(u64, Tracked)> = open.into_values().collect();
    open.sort_unstable_by_key(|(order, _)| *order);
    Some(ReadBack { open: open.into_iter().map(|(_, t)| t).collect(), closed: latest_closes.into() })
}

/// A `signals.<tier>` record as the handover reads it (`None`, logged by the relay's
/// check, for a record no engine wrote).
fn event(
    topics: &[String; 4],
    m: &rdkafka::message::BorrowedMessage<'_>,
    max_bytes: usize,
) -> Option<PeerEvent> {
    let r = relay::routed(topics, m, max_bytes)?;
    value::peer_event(&r.data, r.tier).ok()
}
