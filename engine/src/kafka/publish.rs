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

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::client::client_config;
use super::{KafkaError, KafkaStats, headers};
use crate::config::KafkaConfig;
use crate::model::Tier;
use crate::pipeline::{Publish, Routed};

/// Counts deliveries and the rare permanent failure.
#[derive(Debug, Clone)]
pub struct DeliveryContext(Arc<KafkaStats>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => KafkaStats::count(&self.0.published),
            Err((e, _)) => {
                KafkaStats::count(&self.0.publish_failed);
                tracing::error!(error = %e, "a routed signal could not be written to kafka");
            }
        }
    }
}

/// See the module docs.
pub struct KafkaSink {
    producer: BaseProducer<DeliveryContext>,
    topics: [String; 4],
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig, stats: Arc<KafkaStats>) -> Result<Self, KafkaError> {
        let producer = client_config(cfg)
            // Never give a record up for time: flush waits for the broker instead.
            .set("message.timeout.ms", "0")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create_with_context(DeliveryContext(stats))?;
        Ok(Self { producer, topics: Tier::ALL.map(|t| cfg.signals_topic(t)) })
    }
}

impl Publish for KafkaSink {
    fn publish(&mut self, r: &Routed<'_>) {
        let mut uuid = uuid::Uuid::encode_buffer();
        let key = r.id.hyphenated().encode_lower(&mut uuid);
        let (ingest, routed) = (r.ingest_ts.0.to_string(), r.routed_ts.0.to_string());
        let sent = r.sent_ts.map(|t| t.0.to_string());
        let mut hs = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: headers::CONTENT_TYPE, value: Some("application/json") })
            .insert(Header { key: headers::CATEGORY, value: Some(r.category.as_str()) })
            .insert(Header { key: headers::INGEST_TS, value: Some(ingest.as_str()) })
            .insert(Header { key: headers::ROUTED_TS, value: Some(routed.as_str()) });
        if let Some(sent) = &sent {
            hs = hs.insert(Header { key: headers::SENT_TS, value: Some(sent.as_str()) });
        }
        let mut record =
            BaseRecord::to(&self.topics[r.tier.index()]).partition(0).key(&*key).payload(r.data).headers(hs);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                // librdkafka's queue is bounded; wait for deliveries to make room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    KafkaStats::count(&self.producer.context().0.publish_failed);
                    tracing::error!(error = %e, tier = %r.tier.as_str(), "cannot queue a routed signal for kafka");
                    return;
                }
            }
        }
    }

    fn flush(&mut self) {
        let mut waited = 0u32;
        while let Err(e) = self.producer.flush(Duration::from_secs(1)) {
            waited += 1;
            if waited % 10 == 1 {
                tracing::warn!(error = %e, seconds = waited, "kafka does not take routed signals; ingest waits");
            }
        }
    }
}
