//! What a client's frames and messages do: PING, SUBSCRIBE, UNSUBSCRIBE, REFRESH, and
//! the WebSocket control frames.

use std::sync::Arc;

use engine::channels::{ChannelName, Resume};
use engine::model::Tier;

use super::fanout::log_of;
use super::outbox::Out;
use super::{Core, Sub};
use crate::auth::Session;
use crate::hub::quota::utc_day;
use crate::protocol::{
    self, ClientMessage, ErrorCode, Refusal, ResumeAsk, SystemEvent, UnsubscribeReason, UserRights,
};
use crate::ws::inbound::Inbound;
use crate::ws::outbound;

impl Core {
    pub(super) fn on_frame(&mut self, i: usize, frame: Inbound) {
        match frame {
            Inbound::Text(text) => self.on_message(i, &text),
            // Control frames take from the same bucket as messages: a PING costs a
            // PONG, and a flood of them (even empty) would otherwise cost the shard.
            Inbound::Ping(p) => {
                if self.admit(i) {
                    let limit = self.src.conn.outbound_limit;
                    if let Some(c) = self.conns[i].as_mut() {
                        c.outbox.push(Out::Frame(outbound::pong(&p).into()), limit);
                    }
                    self.mark_dirty(i);
                }
            }
            Inbound::Pong => {
                self.admit(i);
            }
            // Echo the client's code (RFC 6455 §5.5.1), then end.
            Inbound::Close(code) => self.close(i, outbound::close_raw(code.unwrap_or(1000), "")),
        }
    }

    /// Takes a token from connection `i`'s message rate; over it, ERROR `rate_limited`
    /// (which counts towards the 1008 close of too many errors) and false.
    fn admit(&mut self, i: usize) -> bool {
        let per_sec = self.src.conn.max_messages_per_sec;
        let Some(c) = self.conns[i].as_mut() else { return false };
        if c.admit_message(per_sec, self.now.mono) {
            return true;
        }
        let msg = format!("more than {per_sec} messages per second (control frames included)");
        self.refuse(i, &Refusal::new(ErrorCode::RateLimited, msg));
        false
    }

    fn on_message(&mut self, i: usize, text: &str) {
        if !self.admit(i) {
            return;
        }
        let Some(c) = self.conns[i].as_mut() else { return };
        match protocol::parse(text) {
            Ok(ClientMessage::Ping) => self.reply(i, protocol::PONG),
            Ok(ClientMessage::Subscribe {
                channel: ChannelName::Prices,
                resume,
                filter,
                max_frequency,
                ..
            }) => {
                self.subscribe_prices(i, resume.is_some(), filter, max_frequency);
            }
            Ok(ClientMessage::Subscribe { channel, resume, filter, snapshot, .. }) => {
                self.subscribe(i, channel, resume, filter, snapshot);
            }
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(i, &channel),
            Ok(ClientMessage::Refresh { token }) => {
                let user = c.session.user_id.clone();
                match self.src.auth.authenticate(&token) {
                    Ok(s) if s.user_id == user => {
                        let note =
                            protocol::system(SystemEvent::TokenRefreshed { token_expires_at: s.expires_at });
                        self.change_rights(i, s, &note);
                    }
                    Ok(_) => self
                        .refuse(i, &Refusal::new(ErrorCode::Forbidden, "REFRESH token is for another user")),
                    Err(e) => {
                        self.refuse(i, &Refusal::new(ErrorCode::Forbidden, format!("REFRESH refused: {e}")))
                    }
                }
            }
            Err(r) => self.refuse(i, &r),
        }
    }

    /// The channels a connection named in its upgrade request, subscribed right after
    /// WELCOME as plain SUBSCRIBEs would be (each answered SUBSCRIBED or ERROR).
    pub fn subscribe_on_open(&mut self, i: usize, channels: Vec<ChannelName>) {
        // Attached while draining: the connection is being closed (1001), and a
        // subscription would only charge its quota for messages it never gets.
        if self.draining {
            return;
        }
        for channel in channels {
            self.subscribe(i, channel, None, None, None);
        }
    }

    fn subscribe(
        &mut self,
        i: usize,
        channel: ChannelName,
        resume: Option<ResumeAsk>,
        filter: Option<serde_json::Value>,
        snapshot: Option<u32>,
    ) {
        let Some(c) = self.conns[i].as_ref() else { return };
        let name = channel.to_string();
        let already = match &channel {
            ChannelName::Signals(t) => c.signals[t.index()].is_some(),
            ChannelName::Prices => c.prices.is_some(),
            ChannelName::User(_) => c.user_channel,
        };
        if !already && c.subscriptions() >= self.src.hub.max_subscriptions {
            let msg = format!("at most {} subscriptions per connection", self.src.hub.max_subscriptions);
            return self.refuse(i, &Refusal::new(ErrorCode::TooManySubscriptions, msg).on(name));
        }
        match channel {
            ChannelName::Signals(tier) => {
                if tier > c.session.tier {
                    let msg = format!("{name} is above your tier ({})", c.session.tier);
                    return self.refuse(i, &Refusal::new(ErrorCode::Forbidden, msg).on(name));
                }
                // Nothing would be delivered: say so instead of a silent subscription.
                if let Some(limit) = self.limit_for(&c.session)
                    && c.quota.exhausted(limit, utc_day(self.now.unix.0))
                {
                    let msg =
                        format!("daily signal quota of {limit} used up; deliveries resume at 00:00 UTC");
                    return self.refuse(i, &Refusal::new(ErrorCode::QuotaExhausted, msg).on(name));
                }
                let max = self.src.hub.max_snapshot;
                if snapshot.is_some_and(|n| n as usize > max) {
                    let msg = format!("a snapshot is at most {max} messages");
                    return self.refuse(i, &Refusal::new(ErrorCode::BadRequest, msg).on(name));
                }
                // The filter first: a bad one changes nothing.
                let filter = match filter {
                    None => None,
                    Some(v) => {
                        let limits = crate::protocol::filter::Limits {
                            symbols: self.src.policy.rule(c.session.tier).watchlist_symbols as usize,
                            sources: FILTER_SOURCES,
                        };
                        let current = c.filters[tier.index()].as_deref();
                        match crate::protocol::filter::Filter::update(
                            current,
                            &v,
                            limits,
                            c.session.categories,
                        ) {
                            Ok(f) => Some(self.filters.intern(f)),
                            Err(msg) => {
                                return self.refuse(i, &Refusal::new(ErrorCode::BadRequest, msg).on(name));
                            }
                        }
                    }
                };
                // Only the filter changes: swapped in place, no gap and no repeat.
                if already && resume.is_none() && filter.is_some() && snapshot.is_none() {
                    return self.swap_filter(i, &channel, tier, filter);
                }
                if let Some(c) = self.conns[i].as_mut() {
                    c.filters[tier.index()] = filter;
                }
                // A new SUBSCRIBE replaces a subscription, or one waiting for history.
                self.cancel_history(i, tier);
                if already {
                    self.remove_signal_sub(i, tier);
                }
                self.add_signal_sub(i, &channel, tier, resume, snapshot.map_or(0, |n| n as usize));
            }
            ChannelName::Prices => self.subscribe_prices(i, resume.is_some(), filter, None),
            ChannelName::User(ref user) => {
                if *user != c.session.user_id {
                    let r =
                        Refusal::new(ErrorCode::Forbidden, "user channels are for their own user").on(name);
                    return self.refuse(i, &r);
                }
                self.reply(i, &protocol::subscribed_plain(&channel, resume.is_some()));
                if let Some(c) = self.conns[i].as_mut() {
                    c.user_channel = true;
                }
            }
        }
    }

    /// SUBSCRIBE `prices_general`: a watchlist (`filter.symbols`, or its steps) and a
    /// rate. On a connection subscribed already, what is left out stays as it was: a
    /// `max_frequency` alone changes the rate on the fly, a `filter` alone the
    /// watchlist (`{}`: every symbol again).
    fn subscribe_prices(
        &mut self,
        i: usize,
        resume_asked: bool,
        filter: Option<serde_json::Value>,
        rate: Option<usize>,
    ) {
        let Some(c) = self.conns[i].as_ref() else { return };
        let name = ChannelName::Prices.to_string();
        if c.prices.is_none() && c.subscriptions() >= self.src.hub.max_subscriptions {
            let msg = format!("at most {} subscriptions per connection", self.src.hub.max_subscriptions);
            return self.refuse(i, &Refusal::new(ErrorCode::TooManySubscriptions, msg).on(name));
        }
        let rule = self.src.policy.rule(c.session.tier);
        let current = c.prices.as_ref();
        let watch = match filter {
            None => current.and_then(|p| p.watch.clone()),
            Some(v) => {
                let limits = crate::protocol::filter::Limits {
                    symbols: rule.watchlist_symbols as usize,
                    sources: FILTER_SOURCES,
                };
                let now = current.and_then(|p| p.watch.as_deref());
                match crate::protocol::filter::Filter::update(now, &v, limits, c.session.categories) {
                    Ok(f) if !f.symbols_only() => {
                        let msg = "prices_general filters by symbols only";
                        return self.refuse(i, &Refusal::new(ErrorCode::BadRequest, msg).on(name));
                    }
                    Ok(f) => (!f.symbols.is_empty()).then(|| Arc::new(f)),
                    Err(msg) => return self.refuse(i, &Refusal::new(ErrorCode::BadRequest, msg).on(name)),
                }
            }
        };
        if watch.is_none() && !rule.prices_all {
            let msg = format!(
                "your tier ({}) watches prices by watchlist: give filter.symbols (at most {})",
                c.session.tier, rule.watchlist_symbols
            );
            return self.refuse(i, &Refusal::new(ErrorCode::Forbidden, msg).on(name));
        }
        // Never above the tier's cap; asked for or not, the rate is echoed.
        let cap = protocol::price_rate_index(f64::from(rule.price_rate));
        let rate = rate.or(current.map(|p| p.rate)).unwrap_or(cap).min(cap);
        self.reply(
            i,
            &protocol::subscribed_prices(resume_asked, watch.as_deref(), protocol::PRICE_RATES[rate]),
        );
        self.add_price_sub(i, super::prices::PriceSub { rate, watch });
    }

    fn unsubscribe(&mut self, i: usize, channel: &ChannelName) {
        if let ChannelName::Signals(t) = channel
            && self.cancel_history(i, *t)
        {
            if let Some(c) = self.conns[i].as_mut() {
                c.filters[t.index()] = None;
            }
            return self.reply(i, &protocol::unsubscribed(channel, UnsubscribeReason::Client));
        }
        let Some(c) = self.conns[i].as_mut() else { return };
        let subscribed = match channel {
            ChannelName::Signals(t) => c.signals[t.index()].is_some(),
            ChannelName::Prices => c.prices.is_some(),
            ChannelName::User(_) => c.user_channel,
        };
        if !subscribed {
            let r = Refusal::new(ErrorCode::BadRequest, "not subscribed").on(channel.to_string());
            return self.refuse(i, &r);
        }
        match channel {
            ChannelName::Signals(t) => {
                c.filters[t.index()] = None;
                self.remove_signal_sub(i, *t);
            }
            ChannelName::Prices => {
                if let Some(sub) = c.prices.take() {
                    self.prices.remove(i, &sub);
                }
                c.outbox.clear_prices();
            }
            ChannelName::User(_) => c.user_channel = false,
        }
        self.reply(i, &protocol::unsubscribed(channel, UnsubscribeReason::Client));
    }

    /// A rights change from the accounts feed for every connection of the user: new
    /// tier, categories, limit and view at once, or SYSTEM_MESSAGE suspended and 4003.
    pub fn rights(&mut self, e: &crate::auth::Entitlements, now: super::Clock) {
        self.now = now;
        let theirs: Vec<usize> = (0..self.conns.len())
            .filter(|&k| self.conns[k].as_ref().is_some_and(|c| c.is_open() && c.session.user_id == e.id))
            .collect();
        for i in theirs {
            if e.status != "active" {
                self.reply(i, &protocol::system(SystemEvent::Suspended { message: "account suspended" }));
                self.close(i, outbound::close(crate::ws::CloseCode::Suspended));
                continue;
            }
            let Some(c) = self.conns[i].as_ref() else { continue };
            let session = Session {
                tier: e.tier,
                categories: e.categories.iter().copied().collect(),
                real_time: e.real_time,
                max_signals_per_day: e.max_signals_per_day,
                ..c.session.clone()
            };
            if session != c.session {
                let note = protocol::system(SystemEvent::EntitlementsChanged { tier: e.tier });
                self.change_rights(i, session, &note);
            }
        }
    }

    /// New entitlements for a live connection: channels above the new tier are closed
    /// (ERROR + UNSUBSCRIBED), the others follow the new categories, limit and view.
    pub(super) fn change_rights(&mut self, i: usize, session: Session, notice: &[u8]) {
        let Some(c) = self.conns[i].as_mut() else { return };
        if c.session.tier != session.tier {
            self.src.stats.connected(c.session.tier, -1);
            self.src.stats.connected(session.tier, 1);
        }
        c.session = session.clone();
        c.warned_expiry = false;
        let user_channel = c.user_channel;
        let tiers: Vec<Tier> = Tier::ALL.into_iter().filter(|t| c.signals[t.index()].is_some()).collect();
        let prices = c.prices.clone();
        self.reply(i, notice);
        // prices_general under the new tier's rules: its rate capped, its watchlist within
        // the size (else unsubscribed), every symbol only where allowed.
        if let Some(sub) = prices {
            let rule = self.src.policy.rule(session.tier);
            let cap = protocol::price_rate_index(f64::from(rule.price_rate));
            let allowed = match &sub.watch {
                None => rule.prices_all,
                Some(w) => w.symbols.len() <= rule.watchlist_symbols as usize,
            };
            if !allowed {
                if let Some(c) = self.conns[i].as_mut()
                    && let Some(old) = c.prices.take()
                {
                    self.prices.remove(i, &old);
                    c.outbox.clear_prices();
                }
                self.reply(i, &protocol::unsubscribed(&ChannelName::Prices, UnsubscribeReason::Entitlement));
            } else if sub.rate > cap {
                let rate = protocol::PRICE_RATES[cap];
                self.reply(i, &protocol::subscribed_prices(false, sub.watch.as_deref(), rate));
                self.add_price_sub(i, super::prices::PriceSub { rate: cap, watch: sub.watch });
            }
        }
        if user_channel {
            let categories = engine::model::Category::ALL
                .into_iter()
                .filter(|k| session.categories.contains(*k))
                .collect();
            let rights = UserRights {
                tier: session.tier,
                categories,
                real_time: session.real_time,
                max_signals_per_day: self.limit_for(&session),
            };
            let update = protocol::user_update(&session.user_id, rights);
            self.reply(i, &update);
        }
        for tier in tiers {
            let channel = ChannelName::Signals(tier);
            let Some(old) = self.remove_signal_sub(i, tier) else { continue };
            if tier > session.tier {
                let r = Refusal::new(
                    ErrorCode::Forbidden,
                    format!("{channel} is above your tier ({})", session.tier),
                )
                .on(channel.to_string());
                self.reply(i, &protocol::error(&r));
                self.reply(i, &protocol::unsubscribed(&channel, UnsubscribeReason::Entitlement));
                continue;
            }
            // Same channel, maybe another view: continue after the last seq seen, so
            // nothing is repeated and (live to delayed) nothing is seen early.
            let idx = self.view_for(&session, tier);
            let channels = Arc::clone(&self.src.channels);
            let Some(log) = log_of(&channels, idx) else { continue };
            let sub = log.subscribe(Some(Resume { since: old.last_seq, epoch: log.epoch() }));
            let seen = old.last_seq;
            let entry = Sub {
                categories: session.categories,
                limit: self.limit_for(&session),
                skip_until: seen,
                ..old
            };
            self.install(i, idx, tier, entry, &sub);
        }
        self.remove_overflowed();
    }

    /// Replaces the filter of connection `i`'s subscription to `signals_<tier>` where it
    /// stands: the next message it is offered is the one after the last it was offered.
    fn swap_filter(
        &mut self,
        i: usize,
        channel: &ChannelName,
        tier: Tier,
        filter: Option<Arc<crate::protocol::filter::Filter>>,
    ) {
        let Some(c) = self.conns[i].as_mut() else { return };
        c.filters[tier.index()].clone_from(&filter);
        let Some(idx) = c.signals[tier.index()].map(usize::from) else { return };
        // Where the subscription stands: what follows is checked with the new filter.
        // (The log's head may be ahead of what this shard has fanned out: answering it
        // would move the client past messages the new filter lets through.)
        let mut at = self.cursors[idx];
        if let Some(sub) = self.subs[idx].iter_mut().find(|s| s.conn == i) {
            sub.filter.clone_from(&filter);
            at = at.max(sub.skip_until);
        }
        let channels = Arc::clone(&self.src.channels);
        let Some(log) = log_of(&channels, idx) else { return };
        self.reply(i, &protocol::subscribed_signals(channel, log.epoch(), at, None, filter.as_deref()));
    }
}

/// Sources a filter may name.
pub(super) const FILTER_SOURCES: usize = 50;
