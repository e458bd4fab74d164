//! The check every fault test shares: what one subscriber saw across its reconnects,
//! and whether it had every signal of its channel exactly once, or was told
//! `recovered: false` where something went missing. Nothing silently missing.
//!
//! [`Ledger`] is the record and the verdict (no I/O); [`Subscriber`] is a real
//! WebSocket client that fills one while it follows a channel through whatever the
//! test does to the servers, reconnecting with `since`/`epoch` as a client should.
//!
//! The verdict assumes one producer whose signals enter the channel in the order they
//! were produced (one feed connection, or one Kafka partition), so that the channel's
//! order is the producer's order, and a subscription made before the first signal.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SUBSCRIBED: the channel's epoch and head, and `recovered` when `since` was sent.
    Subscribed {
        epoch: String,
        head: u64,
        recovered: Option<bool>,
    },
    Signal {
        seq: u64,
        id: u128,
    },
    /// The connection ended: a close frame's code, or None for a reset or EOF.
    Ended {
        code: Option<u16>,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub events: Vec<Event>,
}

/// What a ledger shows, once it has passed the check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// SIGNAL_UPDATEs received, repeats included.
    pub delivered: usize,
    /// Subscriptions after the first (each one a reconnect).
    pub resumes: usize,
    /// Of those, answered `recovered: false`.
    pub told: usize,
    /// Produced signals never received, every one inside a gap that was told.
    pub missed_when_told: usize,
    /// Signals received a second time in an epoch that began with `recovered: false`
    /// (a producer resending what a killed server had routed but not acknowledged).
    pub repeated_when_told: usize,
    /// Close codes received, in order.
    pub close_codes: Vec<Option<u16>>,
}

impl Ledger {
    /// Where a reconnect resumes: the current epoch and the last seq known in it (the
    /// last signal's, or the head the last SUBSCRIBED gave).
    pub fn resume_point(&self) -> Option<(String, u64)> {
        let mut point: Option<(String, u64)> = None;
        for e in &self.events {
            match e {
                Event::Subscribed { epoch, head, recovered } => {
                    // A recovered resume keeps the point the client asked from.
                    if *recovered != Some(true) {
                        point = Some((epoch.clone(), *head));
                    }
                }
                Event::Signal { seq, .. } => {
                    if let Some(p) = point.as_mut() {
                        p.1 = *seq;
                    }
                }
                Event::Ended { .. } => {}
            }
        }
        point
    }

    pub fn signals(&self) -> impl Iterator<Item = (u64, u128)> + '_ {
        self.events.iter().filter_map(|e| match e {
            Event::Signal { seq, id } => Some((*seq, *id)),
            _ => None,
        })
    }

    /// Checks the ledger against `produced`, every signal id the producer sent, in
    /// order. Err names the first thing a trading client would call a bug:
    /// - a seq that skips, repeats or goes back inside an epoch, however it resumed;
    /// - `recovered: true` into another epoch, or not followed by `since + 1`;
    /// - a produced signal missing with no `recovered: false` to account for it;
    /// - a signal twice, except after `recovered: false` (then counted);
    /// - a signal nobody produced, or signals out of the producer's order.
    pub fn verify(&self, produced: &[u128]) -> Result<Verdict, String> {
        let index: HashMap<u128, usize> = produced.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut v = Verdict::default();
        let mut seen = HashSet::new();
        let mut excused = HashSet::new();
        // The highest producer index received, and the channel position.
        let mut pos: Option<usize> = None;
        let mut epoch: Option<String> = None;
        let mut last_seq = 0u64;
        let mut subscribed = false;
        // A tell since the last signal (a gap may follow) / in this epoch (repeats may).
        let mut gap_told = false;
        let mut epoch_told = false;
        for (n, e) in self.events.iter().enumerate() {
            let at = |what: String| format!("event {n} ({e:?}): {what}");
            match e {
                Event::Subscribed { epoch: ep, head, recovered } => {
                    match (subscribed, recovered) {
                        (false, None) => {}
                        (false, Some(_)) => return Err(at("the first subscription cannot resume".into())),
                        (true, None) => return Err(at("a resubscription without since".into())),
                        (true, Some(true)) => {
                            if epoch.as_deref() != Some(ep.as_str()) {
                                return Err(at(format!(
                                    "recovered: true into another epoch (was {epoch:?})"
                                )));
                            }
                            if *head < last_seq {
                                return Err(at(format!("the head went back from {last_seq}")));
                            }
                            v.resumes += 1;
                        }
                        (true, Some(false)) => {
                            v.resumes += 1;
                            v.told += 1;
                            gap_told = true;
                            epoch_told = epoch.as_deref() != Some(ep.as_str()) || epoch_told;
                            last_seq = *head;
                        }
                    }
                    if !subscribed {
                        last_seq = *head;
                    }
                    subscribed = true;
                    epoch = Some(ep.clone());
                }
                Event::Signal { seq, id } => {
                    if !subscribed {
                        return Err(at("a signal before SUBSCRIBED".into()));
                    }
                    if *seq != last_seq + 1 {
                        return Err(at(format!("seq {seq} after {last_seq} in epoch {epoch:?}")));
                    }
                    last_seq = *seq;
                    v.delivered += 1;
                    let Some(&i) = index.get(id) else {
                        return Err(at(format!("signal {id:#x} was never produced")));
                    };
                    let next = pos.map_or(0, |p| p + 1);
                    if !seen.insert(*id) {
                        if !epoch_told {
                            return Err(at(format!("signal {id:#x} delivered twice")));
                        }
                        v.repeated_when_told += 1;
                    } else if i < next {
                        return Err(at(format!(
                            "signal {id:#x} (#{i}) after #{} : out of the producer's order",
                            next - 1
                        )));
                    } else if i > next {
                        if !gap_told {
                            return Err(at(format!(
                                "signals #{next}..#{} silently missing before {id:#x}",
                                i - 1
                            )));
                        }
                        excused.extend(produced[next..i].iter().copied());
                    }
                    if pos.is_none_or(|p| i > p) {
                        pos = Some(i);
                    }
                    gap_told = false;
                }
                Event::Ended { code } => v.close_codes.push(*code),
            }
        }
        let missing: Vec<usize> = (0..produced.len()).filter(|i| !seen.contains(&produced[*i])).collect();
        if let Some(first) = missing.iter().find(|i| !excused.contains(&produced[**i])) {
            return Err(format!(
                "{} of {} produced signals never arrived, #{first} ({:#x}) first, with no recovered: false for it",
                missing.len(),
                produced.len(),
                produced[*first]
            ));
        }
        v.missed_when_told = missing.len();
        Ok(v)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client that follows one channel and fills a [`Ledger`].
pub struct Subscriber {
    pub channel: String,
    pub ledger: Ledger,
    /// Signals received so far, for the test to time its faults by.
    pub progress: Arc<AtomicUsize>,
    ws: Option<Ws>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("channel", &self.channel).finish_non_exhaustive()
    }
}

enum Read {
    Done,
    Ended,
}

impl Subscriber {
    pub fn new(channel: &str) -> Self {
        Self { channel: channel.into(), ledger: Ledger::default(), progress: Arc::default(), ws: None }
    }

    /// Connects to `url` and subscribes, resuming from the ledger's point after the
    /// first time. Err when the server cannot be reached or refuses.
    pub async fn connect(&mut self, url: &str) -> Result<(), String> {
        let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut sub = json!({"type": "SUBSCRIBE", "channel": self.channel});
        if let Some((epoch, seq)) = self.ledger.resume_point() {
            sub["since"] = json!(seq);
            sub["epoch"] = json!(epoch);
        }
        ws.send(WsMessage::text(sub.to_string())).await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let msg =
                tokio::time::timeout_at(deadline, ws.next()).await.map_err(|_| "no SUBSCRIBED in 10 s")?;
            let Some(Ok(WsMessage::Text(t))) = msg else {
                return Err(format!("connection ended before SUBSCRIBED: {msg:?}"));
            };
            let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
            match v["type"].as_str() {
                Some("SUBSCRIBED") => {
                    self.ledger.events.push(Event::Subscribed {
                        epoch: v["epoch"].as_str().unwrap_or_default().to_owned(),
                        head: v["seq"].as_u64().unwrap_or_default(),
                        recovered: v["recovered"].as_bool(),
                    });
                    self.ws = Some(ws);
                    return Ok(());
                }
                Some("ERROR") => return Err(format!("refused: {v}")),
                _ => {} // the welcome
            }
        }
    }

    /// Reads until `last` arrives (true) or the connection ends (false).
    async fn read(&mut self, last: u128, deadline: Instant) -> Read {
        let Some(ws) = self.ws.as_mut() else { return Read::Ended };
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Read::Ended, // the caller's deadline decides
                Ok(m) => m,
            };
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    if v["type"] == "SIGNAL_UPDATE" && v["channel"] == self.channel.as_str() {
                        let id = uuid::Uuid::parse_str(v["data"]["id"].as_str().unwrap_or_default())
                            .map(|u| u.as_u128())
                            .unwrap_or_default();
                        let seq = v["seq"].as_u64().unwrap_or_default();
                        self.ledger.events.push(Event::Signal { seq, id });
                        self.progress.fetch_add(1, Ordering::Relaxed);
                        if id == last {
                            return Read::Done;
                        }
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    self.ledger.events.push(Event::Ended { code: frame.map(|f| f.code.into()) });
                    self.ws = None;
                    return Read::Ended;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    self.ledger.events.push(Event::Ended { code: None });
                    self.ws = None;
                    return Read::Ended;
                }
            }
        }
    }

    /// Follows the channel until signal `last` arrives, reconnecting (to the next of
    /// `urls` in turn) whenever the connection ends; panics at `within`.
    pub async fn follow(mut self, urls: Vec<String>, last: u128, within: Duration) -> Self {
        let deadline = Instant::now() + within;
        let mut attempt = 0usize;
        loop {
            if self.ws.is_none() {
                let url = &urls[attempt % urls.len()];
                attempt += 1;
                if let Err(e) = self.connect(url).await {
                    assert!(
                        Instant::now() < deadline,
                        "{}: no reconnect before the deadline: {e}",
                        self.channel
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            if let Read::Done = self.read(last, deadline).await {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "{}: signal {last:#x} not received within {within:?}; {} signals seen",
                self.channel,
                self.ledger.signals().count()
            );
        }
    }
}
