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

/// A file of JSON lines, each a signal or a tick (a line with `bid`, `ask` and `last`),
/// in file order; blank lines are skipped. The error names the line.
pub fn parse_events(text: &str) -> Result<Vec<Event>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let tick = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(l)
                .map_err(|e| format!("{}: not a JSON object: {e}", i + 1))?
                .contains_key("bid");
            if tick {
                serde_json::from_str::<Tick>(l).map(Event::Tick).map_err(|e| format!("{}: tick: {e}", i + 1))
            } else {
                serde_json::from_str::<Signal>(l)
                    .map(|s| Event::Signal(Box::new(s)))
                    .map_err(|e| format!("{}: signal: {e}", i + 1))
            }
        })
        .collect()
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
    let Some(key) = keys_for(&keys, &config.producer_id) else {
        tracing::warn!(producer = %config.producer_id, "demo producer has no key; demo off");
        return;
    };
    let events = events();
    let pause = Duration::from_secs_f64(1.0 / config.rate.max(0.1));
    tracing::info!(rate = config.rate, events = events.len(), "demo producer replaying fixtures");
    let mut round = 0u128;
    // The demo outlives whatever ends its connection (another process connecting under
    // its producer id, a refusal): it says why, waits a little and connects again.
    loop {
        let cfg = ProducerConfig::new(feed.to_string(), config.producer_id.clone(), key.clone());
        let ended = match Producer::connect(cfg).await {
            Ok(producer) => replay(&producer, &events, pause, &mut round, &mut stop).await,
            Err(e) => Err(e.to_string()),
        };
        match ended {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "demo producer interrupted; reconnecting in 1 s");
                round += 1; // what was cut off goes out again under new ids
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = crate::server::until_set(&mut stop) => return,
        }
    }
}

/// Replays the fixtures round after round until `stop` (Ok) or a send fails (Err).
async fn replay(
    producer: &Producer,
    events: &[Event],
    pause: Duration,
    round: &mut u128,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        for e in events {
            let now = UnixNanos::now();
            let sent = match e {
                Event::Tick(t) => producer.send_tick(&Tick { ts: now, ..*t }).await,
                Event::Signal(s) => {
                    let mut s = s.restamped(now);
                    // A fresh id each round: the engine routes each id once.
                    s.id = uuid_for_round(s.id, *round);
                    let r = producer.send_signal(&s).await;
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = crate::server::until_set(stop) => return Ok(()),
                    }
                    r
                }
            };
            sent.map_err(|e| e.to_string())?;
        }
        *round += 1;
    }
}

fn keys_for(keys: &StaticKeys, id: &str) -> Option<String> {
    keys.key_of(id).map(str::to_owned)
}

fn uuid_for_round(id: uuid::Uuid, round: u128) -> uuid::Uuid {
    if round == 0 { id } else { uuid::Uuid::from_u128(id.as_u128() ^ (round << 64) ^ round.rotate_left(17)) }
}
