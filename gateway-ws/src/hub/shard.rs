//! One hub shard: its connections, their subscriptions, and the fan-out loop.

use std::collections::HashMap;
use std::sync::Arc;

use engine::Engine;
use engine::channels::{ChannelLog, ChannelName, ChannelSet, Message, Resume, Subscription};
use engine::model::{CategoryMask, Tier, UnixNanos};
use engine::policy::TierPolicy;
use engine::ticks::TickBook;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::quota::{QuotaBook, Take, UserQuota, utc_day};
use super::{Cmd, ConnId, HubConfig};
use crate::auth::Session;
use crate::conn::{Outbox, Pushed};
use crate::metrics::GatewayStats;
use crate::protocol::{self, ErrorCode, Refusal};
use crate::ws::{CloseCode, outbound};

/// Eight logs: the live log and the delayed view of each tier (`tier * 2 + delayed`).
const LOGS: usize = 8;

fn log_index(tier: Tier, delayed: bool) -> usize {
    tier.index() * 2 + usize::from(delayed)
}

fn log_of(channels: &ChannelSet, idx: usize) -> Option<&ChannelLog> {
    let tier = Tier::ALL[idx / 2];
    if idx % 2 == 0 { Some(channels.live(tier)) } else { channels.delayed(tier) }
}

/// A connection's subscription to one log, with what the fan-out needs inline (no
/// lookup per recipient).
#[derive(Debug)]
struct Sub {
    conn: ConnId,
    outbox: Arc<Outbox>,
    categories: CategoryMask,
    quota: Arc<UserQuota>,
    limit: Option<u32>,
    /// Messages up to this seq were replayed or predate the subscription.
    skip_until: u64,
    /// Last seq queued or skipped for this subscriber (to move it between views).
    last_seq: u64,
}

#[derive(Debug)]
struct Conn {
    session: Session,
    outbox: Arc<Outbox>,
    quota: Arc<UserQuota>,
    /// Signal channels: channel tier -> log index.
    signals: HashMap<Tier, usize>,
    prices: bool,
    user_channel: bool,
    warned_expiry: bool,
}

impl Conn {
    fn subscriptions(&self) -> usize {
        self.signals.len() + usize::from(self.prices) + usize::from(self.user_channel)
    }
}

pub(super) struct Shard {
    index: usize,
    channels: Arc<ChannelSet>,
    ticks: Arc<TickBook>,
    policy: Arc<TierPolicy>,
    stats: Arc<GatewayStats>,
    quotas: Arc<QuotaBook>,
    config: HubConfig,
    conns: HashMap<ConnId, Conn>,
    subs: [Vec<Sub>; LOGS],
    cursors: [u64; LOGS],
    price_subs: Vec<(ConnId, Arc<Outbox>)>,
    price_versions: Vec<u64>,
    /// Reused buffers.
    batch: Vec<Message>,
    overflowed: Vec<ConnId>,
    exhausted: Vec<ConnId>,
}

impl Shard {
    pub(super) fn new(
        index: usize,
        engine: &Engine,
        stats: Arc<GatewayStats>,
        quotas: Arc<QuotaBook>,
        config: HubConfig,
    ) -> Self {
        Self {
            index,
            channels: Arc::clone(&engine.channels),
            ticks: Arc::clone(&engine.ticks),
            policy: Arc::clone(&engine.policy),
            stats,
            quotas,
            config,
            conns: HashMap::new(),
            subs: Default::default(),
            cursors: [0; LOGS],
            price_subs: Vec::new(),
            price_versions: Vec::new(),
            batch: Vec::with_capacity(256),
            overflowed: Vec::new(),
            exhausted: Vec::new(),
        }
    }

    /// The log a user reads `signals_<tier>` from: the delayed view when their own
    /// tier has a delay or they have no real-time access.
    fn view_for(&self, session: &Session, tier: Tier) -> usize {
        let delayed = !session.real_time || !self.policy.rule(session.tier).delay.is_zero();
        if delayed && self.channels.delayed(tier).is_some() {
            log_index(tier, true)
        } else {
            log_index(tier, false)
        }
    }

    fn limit_for(&self, session: &Session) -> Option<u32> {
        session.max_signals_per_day.or(self.policy.rule(session.tier).signals_per_day)
    }

    pub(super) async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, mut drain: watch::Receiver<bool>) {
        let mut bell = self.channels.watch();
        let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut prices = tokio::time::interval(self.config.price_interval);
        prices.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                changed = bell.changed() => {
                    if changed.is_err() {
                        break; // the engine is gone
                    }
                    self.fan_out();
                }
                _ = prices.tick(), if !self.price_subs.is_empty() => self.fan_out_prices(),
                _ = sweep.tick() => self.sweep(),
                () = crate::server::until_set(&mut drain) => {
                    self.drain();
                    break;
                }
            }
        }
        tracing::debug!(shard = self.index, "hub shard stopped");
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach { id, session, outbox } => self.attach(id, session, outbox),
            Cmd::Detach { id } => self.detach(id),
            Cmd::Subscribe { id, channel, resume } => self.subscribe(id, channel, resume),
            Cmd::Unsubscribe { id, channel } => self.unsubscribe(id, &channel),
            Cmd::Refresh { id, session } => self.refresh(id, session),
        }
    }

    fn attach(&mut self, id: ConnId, session: Session, outbox: Arc<Outbox>) {
        self.stats.connected(session.tier, 1);
        outbox.push_text(&protocol::system(json!({
            "event": "welcome",
            "user": session.user_id,
            "tier": session.tier.as_str(),
            "real_time": session.real_time,
            "token_expires_at": session.expires_at,
            "heartbeat_interval_s": self.config.heartbeat_timeout.as_secs() / 2,
            "server": concat!("signalcast ", env!("CARGO_PKG_VERSION")),
        })));
        let quota = self.quotas.user(&session.user_id);
        self.conns.insert(
            id,
            Conn {
                session,
                outbox,
                quota,
                signals: HashMap::new(),
                prices: false,
                user_channel: false,
                warned_expiry: false,
            },
        );
    }

    fn detach(&mut self, id: ConnId) {
        self.forget_subscriptions(id);
        if let Some(c) = self.conns.remove(&id) {
            self.stats.connected(c.session.tier, -1);
        }
    }

    /// Stops every delivery to `id` (the connection record stays until Detach).
    fn forget_subscriptions(&mut self, id: ConnId) {
        for subs in &mut self.subs {
            subs.retain(|s| s.conn != id);
        }
        self.price_subs.retain(|(c, _)| *c != id);
        if let Some(c) = self.conns.get_mut(&id) {
            c.signals.clear();
            c.prices = false;
            c.user_channel = false;
        }
    }

    fn refuse(&mut self, id: ConnId, r: &Refusal) {
        let Some(c) = self.conns.get(&id) else { return };
        c.outbox.push_text(&protocol::error(r));
        if c.outbox.record_error() {
            c.outbox.close(CloseCode::Policy);
            self.forget_subscriptions(id);
        }
    }

    fn subscribe(&mut self, id: ConnId, channel: ChannelName, resume: Option<Resume>) {
        let Some(c) = self.conns.get(&id) else { return };
        let name = channel.to_string();
        let already = match &channel {
            ChannelName::Signals(t) => c.signals.contains_key(t),
            ChannelName::Prices => c.prices,
            ChannelName::User(_) => c.user_channel,
        };
        if !already && c.subscriptions() >= self.config.max_subscriptions {
            let msg = format!("at most {} subscriptions per connection", self.config.max_subscriptions);
            return self.refuse(id, &Refusal::new(ErrorCode::TooManySubscriptions, msg).on(name));
        }
        match channel {
            ChannelName::Signals(tier) => {
                if tier > c.session.tier {
                    let msg = format!("{name} is above your tier ({})", c.session.tier);
                    return self.refuse(id, &Refusal::new(ErrorCode::Forbidden, msg).on(name));
                }
                if already {
                    self.remove_signal_sub(id, tier);
                }
                self.add_signal_sub(id, &channel, tier, resume);
            }
            ChannelName::Prices => {
                let outbox = Arc::clone(&c.outbox);
                outbox.push_text(&protocol::subscribed_plain(&channel, resume.is_some()));
                if !already {
                    // The latest price of every symbol first, then changes.
                    for (sym, tick, _) in self.ticks.iter() {
                        outbox.push_price(sym.0, price_frame(&tick));
                    }
                    self.price_subs.push((id, outbox));
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.prices = true;
                    }
                }
            }
            ChannelName::User(ref user) => {
                if *user != c.session.user_id {
                    return self.refuse(
                        id,
                        &Refusal::new(ErrorCode::Forbidden, "user channels are for their own user").on(name),
                    );
                }
                c.outbox.push_text(&protocol::subscribed_plain(&channel, resume.is_some()));
                if let Some(c) = self.conns.get_mut(&id) {
                    c.user_channel = true;
                }
            }
        }
    }

    fn add_signal_sub(&mut self, id: ConnId, channel: &ChannelName, tier: Tier, resume: Option<Resume>) {
        let Some(c) = self.conns.get(&id) else { return };
        let idx = self.view_for(&c.session, tier);
        let channels = Arc::clone(&self.channels);
        let Some(log) = log_of(&channels, idx) else { return };
        let sub = log.subscribe(resume);
        let (outbox, categories) = (Arc::clone(&c.outbox), c.session.categories);
        let (quota, limit) = (Arc::clone(&c.quota), self.limit_for(&c.session));
        outbox.push_text(&protocol::subscribed_signals(channel, sub.epoch, sub.head, sub.recovered));
        // The replay holds `since+1 ..= head`; live reading then goes on after head.
        let since = resume.filter(|_| sub.recovered == Some(true)).map_or(sub.head, |r| r.since);
        let entry = Sub { conn: id, outbox, categories, quota, limit, skip_until: since, last_seq: since };
        self.install(id, idx, tier, entry, &sub);
        self.remove_overflowed();
    }

    /// Replays `sub` to `entry` (which skips what it has seen), then makes it a live
    /// subscriber of log `idx` after the subscription's head.
    fn install(&mut self, id: ConnId, idx: usize, tier: Tier, mut entry: Sub, sub: &Subscription) {
        let today = utc_day(UnixNanos::now().0);
        for m in &sub.replay {
            if deliver(&mut entry, idx, m, tier, today) == Delivery::Overflow {
                self.overflowed.push(id);
                break;
            }
        }
        entry.skip_until = entry.skip_until.max(sub.head);
        entry.last_seq = entry.last_seq.max(entry.skip_until);
        if self.subs[idx].is_empty() {
            // Nobody on this shard read this log: start from the subscription's head.
            self.cursors[idx] = sub.cursor;
        }
        self.subs[idx].push(entry);
        if let Some(c) = self.conns.get_mut(&id) {
            c.signals.insert(tier, idx);
        }
    }

    fn remove_signal_sub(&mut self, id: ConnId, tier: Tier) -> Option<Sub> {
        let idx = self.conns.get_mut(&id)?.signals.remove(&tier)?;
        let pos = self.subs[idx].iter().position(|s| s.conn == id)?;
        Some(self.subs[idx].swap_remove(pos))
    }

    fn unsubscribe(&mut self, id: ConnId, channel: &ChannelName) {
        let Some(c) = self.conns.get(&id) else { return };
        let subscribed = match channel {
            ChannelName::Signals(t) => c.signals.contains_key(t),
            ChannelName::Prices => c.prices,
            ChannelName::User(_) => c.user_channel,
        };
        if !subscribed {
            let r = Refusal::new(ErrorCode::BadRequest, "not subscribed").on(channel.to_string());
            return self.refuse(id, &r);
        }
        match channel {
            ChannelName::Signals(t) => {
                self.remove_signal_sub(id, *t);
            }
            ChannelName::Prices => {
                self.price_subs.retain(|(c, _)| *c != id);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.prices = false;
                }
            }
            ChannelName::User(_) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.user_channel = false;
                }
            }
        }
        if let Some(c) = self.conns.get(&id) {
            c.outbox.push_text(&protocol::unsubscribed(channel, "client"));
        }
    }

    /// New entitlements for a live connection: channels above the new tier are closed
    /// (ERROR + UNSUBSCRIBED), the others follow the new categories, limit and view.
    fn refresh(&mut self, id: ConnId, session: Session) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.session.tier != session.tier {
            self.stats.connected(c.session.tier, -1);
            self.stats.connected(session.tier, 1);
        }
        c.session = session;
        c.warned_expiry = false;
        let session = c.session.clone();
        let outbox = Arc::clone(&c.outbox);
        let tiers: Vec<Tier> = c.signals.keys().copied().collect();
        outbox.push_text(&protocol::system(
            json!({"event": "token_refreshed", "token_expires_at": session.expires_at}),
        ));
        if c.user_channel {
            let categories: Vec<&str> = engine::model::Category::ALL
                .iter()
                .filter(|k| session.categories.contains(**k))
                .map(|k| k.as_str())
                .collect();
            outbox.push_text(&protocol::user_update(
                &session.user_id,
                json!({
                    "tier": session.tier.as_str(),
                    "categories": categories,
                    "real_time": session.real_time,
                    "max_signals_per_day": self.limit_for(&session),
                }),
            ));
        }
        for tier in tiers {
            let channel = ChannelName::Signals(tier);
            let Some(old) = self.remove_signal_sub(id, tier) else { continue };
            if tier > session.tier {
                let r = Refusal::new(
                    ErrorCode::Forbidden,
                    format!("{channel} is above your tier ({})", session.tier),
                )
                .on(channel.to_string());
                outbox.push_text(&protocol::error(&r));
                outbox.push_text(&protocol::unsubscribed(&channel, "entitlement"));
                continue;
            }
            // Same channel, maybe another view: continue after the last seq seen, so
            // nothing is repeated and (live to delayed) nothing is seen early.
            let idx = self.view_for(&session, tier);
            let channels = Arc::clone(&self.channels);
            let Some(log) = log_of(&channels, idx) else { continue };
            let sub = log.subscribe(Some(Resume { since: old.last_seq, epoch: log.epoch() }));
            let seen = old.last_seq;
            let entry = Sub {
                categories: session.categories,
                limit: self.limit_for(&session),
                skip_until: seen,
                ..old
            };
            self.install(id, idx, tier, entry, &sub);
        }
        self.remove_overflowed();
    }

    fn fan_out(&mut self) {
        let today = utc_day(UnixNanos::now().0);
        let channels = Arc::clone(&self.channels);
        for idx in 0..LOGS {
            let Some(log) = log_of(&channels, idx) else { continue };
            if self.subs[idx].is_empty() {
                self.cursors[idx] = log.head();
                continue;
            }
            let tier = Tier::ALL[idx / 2];
            loop {
                self.batch.clear();
                match log.read_after(self.cursors[idx], &mut self.batch, 256) {
                    Ok(next) => {
                        if self.batch.is_empty() {
                            break;
                        }
                        self.cursors[idx] = next;
                        for m in &self.batch {
                            for sub in &mut self.subs[idx] {
                                match deliver(sub, idx, m, tier, today) {
                                    Delivery::Overflow => self.overflowed.push(sub.conn),
                                    Delivery::Exhausted => self.exhausted.push(sub.conn),
                                    Delivery::Done => {}
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // This shard fell more than a ring behind: its subscribers
                        // missed messages. They are closed as slow consumers and can
                        // resume (and will be told whether it recovered).
                        tracing::warn!(shard = self.index, log = log.name(), error = %e, "hub shard lagged");
                        self.overflowed.extend(self.subs[idx].iter().map(|s| s.conn));
                        for s in &self.subs[idx] {
                            s.outbox.close(CloseCode::SlowConsumer);
                        }
                        self.cursors[idx] = log.head();
                        break;
                    }
                }
            }
        }
        self.batch.clear();
        self.notify_exhausted();
        self.remove_overflowed();
    }

    fn notify_exhausted(&mut self) {
        for id in std::mem::take(&mut self.exhausted) {
            let Some(user) = self.conns.get(&id).map(|c| c.session.user_id.clone()) else { continue };
            let note = protocol::notification(
                &user,
                json!({"event": "quota_exhausted", "message": "daily signal quota used up; deliveries resume at 00:00 UTC"}),
            );
            for c in self.conns.values().filter(|c| c.session.user_id == user && c.user_channel) {
                c.outbox.push_text(&note);
            }
        }
    }

    fn remove_overflowed(&mut self) {
        let mut ids = std::mem::take(&mut self.overflowed);
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.stats.slow_consumer();
            self.forget_subscriptions(id);
        }
    }

    fn fan_out_prices(&mut self) {
        let n = self.ticks.len();
        if self.price_versions.len() < n {
            self.price_versions.resize(n, 0);
        }
        for (sym, tick, version) in self.ticks.iter() {
            let seen = &mut self.price_versions[sym.0 as usize];
            if version <= *seen {
                continue;
            }
            *seen = version;
            let frame = price_frame(&tick);
            for (_, outbox) in &self.price_subs {
                outbox.push_price(sym.0, Arc::clone(&frame));
            }
        }
    }

    /// Once a second: token expiry (warning, then 4001) and heartbeats (4004).
    fn sweep(&mut self) {
        let now_ns = UnixNanos::now().0;
        let now_s = now_ns / 1_000_000_000;
        let warn = self.config.expiry_warning.as_secs() as i64;
        let silent = self.config.heartbeat_timeout.as_nanos() as i64;
        let mut ended = Vec::new();
        for (id, c) in &mut self.conns {
            if c.outbox.is_closing() {
                continue;
            }
            if now_s >= c.session.expires_at {
                c.outbox.close(CloseCode::TokenExpired);
                ended.push(*id);
            } else if now_ns - c.outbox.last_seen() > silent {
                c.outbox.close(CloseCode::HeartbeatTimeout);
                ended.push(*id);
            } else if !c.warned_expiry && now_s >= c.session.expires_at - warn {
                c.warned_expiry = true;
                c.outbox.push_text(&protocol::system(
                    json!({"event": "token_expiring", "token_expires_at": c.session.expires_at}),
                ));
            }
        }
        for id in ended {
            self.forget_subscriptions(id);
        }
    }

    /// Shutdown: tell everyone to reconnect elsewhere, then 1001.
    fn drain(&mut self) {
        let note = protocol::system(
            json!({"event": "drain", "message": "server shutting down; reconnect and resume"}),
        );
        for c in self.conns.values() {
            c.outbox.push_text(&note);
            c.outbox.close(CloseCode::GoingAway);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Done,
    Overflow,
    Exhausted,
}

/// The per-recipient step: seq, category and quota checks, then a pointer push.
fn deliver(sub: &mut Sub, log: usize, m: &Message, tier: Tier, today: u32) -> Delivery {
    let seq = m.seq();
    if seq <= sub.skip_until {
        return Delivery::Done;
    }
    sub.last_seq = seq;
    if !sub.categories.contains(m.category()) {
        return Delivery::Done;
    }
    if let Some(limit) = sub.limit
        && let Take::Exhausted { notify } = sub.quota.take(log, seq, limit, today)
    {
        return if notify { Delivery::Exhausted } else { Delivery::Done };
    }
    match sub.outbox.push_signal(m.clone(), tier) {
        Pushed::Overflow => Delivery::Overflow,
        Pushed::Queued | Pushed::Closed => Delivery::Done,
    }
}

fn price_frame(tick: &engine::model::Tick) -> Arc<[u8]> {
    let mut json = Vec::with_capacity(200);
    engine::pipeline::encode::price_update(&mut json, tick);
    outbound::text(&json).into()
}
