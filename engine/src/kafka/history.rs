//! The gateway role's history: `signals_<tier>` messages older than the ring, read back
//! from `signals.<tier>` by offset (seq `s` is offset `s - 1`).
//!
//! One reader thread with its own consumer serves requests one at a time from a small
//! bounded queue: a full queue answers [`HistoryError::Busy`] at once (the client gets
//! `recovered: false`), so a burst of deep resumes cannot pile up memory or block a shard.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaError;
use super::client::client_config;
use super::relay::routed;
use crate::channels::{ChannelName, History, HistoryError, HistoryReply, Message};
use crate::config::KafkaConfig;
use crate::model::Tier;
use crate::pipeline::encode;

/// Requests waiting for the reader.
const QUEUE: usize = 16;
/// Time one read may take before it is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Request {
    tier: Tier,
    from: u64,
    to: u64,
    reply: HistoryReply,
}

/// See the module docs.
pub struct KafkaHistory {
    tx: SyncSender<Request>,
    max_messages: u64,
}

impl std::fmt::Debug for KafkaHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaHistory").field("max_messages", &self.max_messages).finish_non_exhaustive()
    }
}

impl KafkaHistory {
    /// Starts the reader thread; it ends when this is dropped.
    pub fn start(cfg: &KafkaConfig, max_messages: u64) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = client_config(cfg)
            .set("group.id", "signalcast-gateway-history")
            .set("enable.auto.commit", "false")
            .create()?;
        let topics = Tier::ALL.map(|t| cfg.signals_topic(t));
        let max_bytes = cfg.relay_max_record_bytes;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("signalcast-history".into())
            .spawn(move || serve(&consumer, &topics, max_bytes, &rx))
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(Self { tx, max_messages })
    }
}

impl History for KafkaHistory {
    fn read(&self, tier: Tier, from: u64, to: u64, reply: HistoryReply) {
        let n = to.saturating_sub(from) + 1;
        if from == 0 || to < from {
            return reply(Err(HistoryError::Incomplete(format!("empty range {from}..={to}"))));
        }
        if n > self.max_messages {
            return reply(Err(HistoryError::TooMany(n, self.max_messages)));
        }
        match self.tx.try_send(Request { tier, from, to, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) => (r.reply)(Err(HistoryError::Busy)),
        }
    }
}

fn serve(consumer: &BaseConsumer, topics: &[String; 4], max_bytes: usize, rx: &Receiver<Request>) {
    let (mut text, mut scratch) = (Vec::new(), Vec::new());
    while let Ok(r) = rx.recv() {
        let result = read(consumer, topics, max_bytes, &r, &mut text, &mut scratch);
        if let Err(e) = &result {
            tracing::warn!(tier = %r.tier.as_str(), from = r.from, to = r.to, error = %e, "history read failed");
        }
        (r.reply)(result);
    }
}

fn read(
    consumer: &BaseConsumer,
    topics: &[String; 4],
    max_bytes: usize,
    r: &Request,
    text: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<Vec<Message>, HistoryError> {
    let topic = &topics[r.tier.index()];
    let incomplete = |e: &dyn std::fmt::Display| HistoryError::Incomplete(e.to_string());
    let channel = ChannelName::Signals(r.tier).to_string();
    let target = i64::try_from(r.from - 1).map_err(|e| incomplete(&e))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    // Kafka answers a fetch from inside a record batch with the whole batch (the client
    // skips the records before the offset); some Kafka-protocol brokers (tansu 0.6)
    // answer with the next batch, or nothing. Then start earlier and skip: further back
    // each time, down to the start of the partition.
    let mut back: i64 = 0;
    'attempt: loop {
        let start = (target - back).max(0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(start)).map_err(|e| incomplete(&e))?;
        consumer.assign(&tpl).map_err(|e| incomplete(&e))?;
        let mut out = Vec::with_capacity(usize::try_from(r.to - r.from + 1).unwrap_or(0));
        let mut next = r.from;
        let mut seen_any = false;
        let attempt_deadline = Instant::now() + Duration::from_secs(1);
        while next <= r.to {
            let now = Instant::now();
            if now > deadline {
                return Err(HistoryError::Incomplete(format!("timed out at seq {next}")));
            }
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                if !seen_any && now > attempt_deadline && start > 0 {
                    back = (back * 4).max(64);
                    continue 'attempt;
                }
                continue;
            };
            let m = m.map_err(|e| incomplete(&e))?;
            if m.offset() < target {
                seen_any = true;
                continue; // before the range, from an earlier start
            }
            if !seen_any && m.offset() > target && start > 0 {
                back = (back * 4).max(64);
                continue 'attempt;
            }
            seen_any = true;
            // A record the relay dropped is skipped here too, never served.
            let Some(item) = routed(topics, &m, max_bytes) else {
                if u64::try_from(m.offset()).ok().map(|o| o + 1) == Some(next) {
                    next += 1;
                }
                continue;
            };
            if item.seq != next {
                return Err(HistoryError::Incomplete(format!("seq {} where {next} was due", item.seq)));
            }
            encode::signal_update(text, &channel, item.seq, &item.data);
            out.push(Message::new(&item.meta(), text, scratch));
            next += 1;
        }
        return Ok(out);
    }
}
