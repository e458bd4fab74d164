//! The engine role's sink: each routed signal becomes one record of `signals.<tier>`.
//!
//! The record is what a gateway needs to rebuild the channel message without routing
//! again: key = signal id (hyphenated; what an engine reads back at start to seed its
//! de-duplication), value = the enriched signal object, headers = category and the
//! latency timestamps. Partition 0 always: the topic's offset order is the channel order.
//!
//! `flush` waits until the broker has every record: the stage calls it once per batch,
//! before producers are acknowledged and Kafka offsets stored. While the broker is away
//! it keeps waiting (records are never timed out), so ingest backs up instead of losing.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::client::client_config;
use super::{KafkaError, KafkaStats, headers};
use crate::config::KafkaConfig;
use crate::model::Tier;
use crate::pipeline::{Publish, Routed};

/// Records queued and not yet acknowledged by the broker, and a condition variable
/// the flushing stage waits on.
#[derive(Debug, Default)]
struct InFlight {
    count: Mutex<u64>,
    settled: Condvar,
}

/// Counts deliveries (and the rare permanent failure) and wakes `flush`. Called on
/// the producer's polling thread as each delivery report arrives.
#[derive(Debug, Clone)]
pub struct DeliveryContext {
    stats: Arc<KafkaStats>,
    in_flight: Arc<InFlight>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => KafkaStats::count(&self.stats.published),
            Err((e, _)) => {
                KafkaStats::count(&self.stats.publish_failed);
                tracing::error!(error = %e, "a routed signal could not be written to kafka");
            }
        }
        let mut n = self.in_flight.count.lock().unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.in_flight.settled.notify_all();
        }
    }
}

/// See the module docs.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
    in_flight: Arc<InFlight>,
    topics: [String; 4],
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig, stats: Arc<KafkaStats>) -> Result<Self, KafkaError> {
        let in_flight = Arc::new(InFlight::default());
        let producer = client_config(cfg)
            // Never give a record up for time: flush waits for the broker instead.
            .set("message.timeout.ms", "0")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create_with_context(DeliveryContext { stats, in_flight: Arc::clone(&in_flight) })?;
        Ok(Self { producer, in_flight, topics: Tier::ALL.map(|t| cfg.signals_topic(t)) })
    }
}

impl Publish for KafkaSink {
    fn publish(&mut self, r: &Routed<'_>) {
        let mut uuid = uuid::Uuid::encode_buffer();
        let key = r.id.hyphenated().encode_lower(&mut uuid);
        // Header values are copied by librdkafka: stack buffers, no allocation.
        let (mut ingest, mut routed, mut sent) =
            (itoa::Buffer::new(), itoa::Buffer::new(), itoa::Buffer::new());
        let mut hs = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: headers::CONTENT_TYPE, value: Some("application/json") })
            .insert(Header { key: headers::CATEGORY, value: Some(r.category.as_str()) })
            .insert(Header { key: headers::INGEST_TS, value: Some(ingest.format(r.ingest_ts.0)) })
            .insert(Header { key: headers::ROUTED_TS, value: Some(routed.format(r.routed_ts.0)) });
        if let Some(t) = r.sent_ts {
            hs = hs.insert(Header { key: headers::SENT_TS, value: Some(sent.format(t.0)) });
        }
        if let Some(p) = r.producer {
            hs = hs.insert(Header { key: headers::PRODUCER, value: Some(p) });
        }
        let mut record =
            BaseRecord::to(&self.topics[r.tier.index()]).partition(0).key(&*key).payload(r.data).headers(hs);
        // Counted before the send: its delivery report may come before `send` returns.
        *self.in_flight.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                // librdkafka's queue is bounded; wait for deliveries to make room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    let mut n = self.in_flight.count.lock().unwrap_or_else(PoisonError::into_inner);
                    *n = n.saturating_sub(1);
                    drop(n);
                    KafkaStats::count(&self.producer.context().stats.publish_failed);
                    tracing::error!(error = %e, tier = %r.tier.as_str(), "cannot queue a routed signal for kafka");
                    return;
                }
            }
        }
    }

    fn flush(&mut self) {
        // Not `Producer::flush`: rdkafka's polls in 100 ms slices that run to their end,
        // which put 100 ms on every batch. The producer's own thread delivers the
        // reports as they come; this waits for the count to reach zero.
        let started = std::time::Instant::now();
        let mut n = self.in_flight.count.lock().unwrap_or_else(PoisonError::into_inner);
        while *n > 0 {
            let (guard, timeout) = self
                .in_flight
                .settled
                .wait_timeout(n, Duration::from_secs(10))
                .unwrap_or_else(PoisonError::into_inner);
            n = guard;
            if timeout.timed_out() && *n > 0 {
                let seconds = started.elapsed().as_secs();
                tracing::warn!(seconds, waiting = *n, "kafka does not take routed signals; ingest waits");
            }
        }
        drop(n);
        tracing::trace!(flush_us = started.elapsed().as_micros() as u64, "routed signals durable");
    }
}
