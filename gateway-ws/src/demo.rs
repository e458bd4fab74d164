//! The built-in demo producer: replays the embedded fixtures into the TCP feed, over a
//! real producer connection, so that the embedded default has signals flowing at once.

use std::net::SocketAddr;
use std::time::Duration;

use engine::feed::{Producer, ProducerConfig, StaticKeys};
use engine::model::{Signal, Tick, UnixNanos};
use tokio::sync::watch;

use crate::config::{DemoConfig, fixtures};

/// One recorded event of the fixtures.
#[derive(Clone, Debug)]
pub enum Event {
    Tick(Tick),
    Signal(Box<Signal>),
}

/// Ticks and signals of the embedded fixtures, in recorded order.
pub fn events() -> Vec<Event> {
    let signals = fixtures::SIGNALS.lines().filter_map(|l| serde_json::from_str::<Signal>(l).ok());
    let ticks = fixtures::TICKS.lines().filter_map(|l| serde_json::from_str::<Tick>(l).ok());
    let mut all: Vec<(i64, Event)> = ticks
        .map(|t| (t.ts.0, Event::Tick(t)))
        .chain(signals.map(|s| (s.generated_at.0, Event::Signal(Box::new(s)))))
        .collect();
    all.sort_by_key(|(at, _)| *at);
    all.into_iter().map(|(_, e)| e).collect()
}

pub(crate) async fn run(
    feed: SocketAddr,
    config: DemoConfig,
    keys: StaticKeys,
    mut stop: watch::Receiver<bool>,
) {
    let key = match keys_for(&keys, &config.producer_id) {
        Some(k) => k,
        None => {
            tracing::warn!(producer = %config.producer_id, "demo producer has no key; demo off");
            return;
        }
    };
    let producer =
        match Producer::connect(ProducerConfig::new(feed.to_string(), config.producer_id.clone(), key)).await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "demo producer cannot connect; demo off");
                return;
            }
        };
    let events = events();
    let pause = Duration::from_secs_f64(1.0 / config.rate.max(0.1));
    tracing::info!(rate = config.rate, events = events.len(), "demo producer replaying fixtures");
    for round in 0u128.. {
        for e in &events {
            let now = UnixNanos::now();
            let sent = match e {
                Event::Tick(t) => producer.send_tick(&Tick { ts: now, ..*t }).await,
                Event::Signal(s) => {
                    let mut s = s.restamped(now);
                    // A fresh id each round: the engine routes each id once.
                    s.id = uuid_for_round(s.id, round);
                    let r = producer.send_signal(&s).await;
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = crate::server::until_set(&mut stop) => return,
                    }
                    r
                }
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, "demo producer stopped");
                return;
            }
        }
    }
}

fn keys_for(keys: &StaticKeys, id: &str) -> Option<String> {
    keys.key_of(id).map(str::to_owned)
}

fn uuid_for_round(id: uuid::Uuid, round: u128) -> uuid::Uuid {
    if round == 0 { id } else { uuid::Uuid::from_u128(id.as_u128() ^ (round << 64) ^ round.rotate_left(17)) }
}
