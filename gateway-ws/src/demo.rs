//! Fixture replay, once for everyone: the built-in demo producer (the embedded fixtures
//! into the TCP feed, over a real producer connection, so that the embedded default has
//! signals flowing at once) and `signalcast produce` (a file or the fixtures) both run
//! [`replay`].

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

/// How replayed signals get their ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// The first pass keeps the file's ids (the idempotency key: a rerun after a crash
    /// repeats nothing); later passes get new ones.
    KeepFirstPass,
    /// Every pass gets new ids (the demo and `produce` without a file: the same fixtures,
    /// new signals).
    Fresh,
}

/// What to replay, how fast and how much.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Signals per second (ticks ride along); 0 = as fast as acknowledgements allow.
    pub rate: f64,
    /// Stop after this many signals; `None` = forever.
    pub count: Option<u64>,
    pub ids: Ids,
    /// Mixed into new ids so that two replays of the same fixtures do not collide.
    pub salt: u128,
}

/// Sends `events` round after round, times restamped to the moment of sending, until
/// `pace.count` signals are sent (returns how many) or `stop` resolves. `progress` is
/// called after each signal with the count so far.
pub async fn replay(
    producer: &Producer,
    events: &[Event],
    pace: Pace,
    stop: impl std::future::Future<Output = ()>,
    mut progress: impl FnMut(u64),
) -> Result<u64, engine::feed::ProducerError> {
    let mut stop = std::pin::pin!(stop);
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    if !events.iter().any(|e| matches!(e, Event::Signal(_))) {
        for e in events {
            if let Event::Tick(t) = e {
                producer.send_tick(&Tick { ts: UnixNanos::now(), ..*t }).await?;
            }
        }
        return Ok(0);
    }
    for round in 0u128.. {
        for e in events {
            let now = UnixNanos::now();
            match e {
                Event::Tick(t) => producer.send_tick(&Tick { ts: now, ..*t }).await?,
                Event::Signal(s) => {
                    if pace.count == Some(sent) {
                        return Ok(sent);
                    }
                    let mut s = s.restamped(now);
                    if round > 0 || pace.ids == Ids::Fresh {
                        s.id = uuid::Uuid::from_u128(s.id.as_u128() ^ (round << 64) ^ pace.salt);
                    }
                    producer.send_signal(&s).await?;
                    sent += 1;
                    progress(sent);
                    if pace.rate > 0.0 {
                        let due = started + Duration::from_secs_f64(sent as f64 / pace.rate);
                        tokio::select! {
                            () = tokio::time::sleep_until(due) => {}
                            () = &mut stop => return Ok(sent),
                        }
                    }
                }
            }
        }
    }
    Ok(sent)
}

pub(crate) async fn run(
    feed: SocketAddr,
    config: DemoConfig,
    keys: StaticKeys,
    mut stop: watch::Receiver<bool>,
) {
    let Some(key) = keys.key_of(&config.producer_id).map(str::to_owned) else {
        tracing::warn!(producer = %config.producer_id, "demo producer has no key; demo off");
        return;
    };
    let events = events();
    tracing::info!(rate = config.rate, events = events.len(), "demo producer replaying fixtures");
    // New ids for every run and every reconnect: the engine routes each id once.
    let mut salt = u128::from(UnixNanos::now().0.unsigned_abs()) << 1;
    // The demo outlives whatever ends its connection (another process connecting under
    // its producer id, a refusal): it says why, waits a little and connects again.
    loop {
        let cfg = ProducerConfig::new(feed.to_string(), config.producer_id.clone(), key.clone());
        let pace = Pace { rate: config.rate.max(0.1), count: None, ids: Ids::Fresh, salt };
        let mut until_stop = stop.clone();
        let ended = match Producer::connect(cfg).await {
            Ok(producer) => {
                let stopped = async move { crate::server::until_set(&mut until_stop).await };
                replay(&producer, &events, pace, stopped, |_| {}).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match ended {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "demo producer interrupted; reconnecting in 1 s");
                salt = salt.wrapping_add(1 << 100); // what was cut off goes out again under new ids
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = crate::server::until_set(&mut stop) => return,
        }
    }
}
