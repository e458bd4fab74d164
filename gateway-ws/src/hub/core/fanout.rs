//! Channel logs and prices to outboxes, and the subscriptions that decide who gets what.

use std::sync::Arc;

use engine::channels::{ChannelLog, ChannelName, ChannelSet, Message, Resume, Subscription};
use engine::model::Tier;

use super::outbox::{Out, Pushed, Timing};
use super::peer::{Deflate, Peer, Phase};
use super::prices::PriceSub;
use super::{Clock, Core, LOGS, Sub};
use crate::auth::Session;
use crate::hub::quota::{Take, utc_day};
use crate::protocol::filter::{Fields, Filter};
use crate::protocol::{self, Notice, Refusal, ResumeAsk};
use crate::ws::{CloseCode, outbound};

pub(super) fn log_index(tier: Tier, delayed: bool) -> usize {
    tier.index() * 2 + usize::from(delayed)
}

pub(super) fn log_of(channels: &ChannelSet, idx: usize) -> Option<&ChannelLog> {
    let tier = Tier::ALL[idx / 2];
    if idx.is_multiple_of(2) { Some(channels.live(tier)) } else { channels.delayed(tier) }
}

impl Core {
    /// The log a user reads `signals_<tier>` from: the delayed view when their own
    /// tier has a delay or they have no real-time access.
    pub(super) fn view_for(&self, session: &Session, tier: Tier) -> usize {
        let policy = &self.src.policy;
        let delayed = !session.real_time || !policy.rule(session.tier).delay.is_zero();
        if delayed && self.src.channels.delayed(tier).is_some() {
            log_index(tier, true)
        } else {
            log_index(tier, false)
        }
    }

    pub(super) fn limit_for(&self, session: &Session) -> Option<u32> {
        session.max_signals_per_day.or(self.src.policy.rule(session.tier).signals_per_day)
    }

    /// Queues a reply or notice on connection `i`.
    pub(super) fn reply(&mut self, i: usize, json: &[u8]) {
        let limit = self.src.conn.outbound_limit;
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        if c.outbox.push_text(json, limit) == Pushed::Overflow {
            self.overflowed.push(i);
        }
        self.mark_dirty(i);
    }

    /// Sends ERROR; too many of them close the connection with 1008.
    pub(super) fn refuse(&mut self, i: usize, r: &Refusal) {
        self.reply(i, &protocol::error(r));
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        if c.record_error(self.now.mono) {
            self.close(i, outbound::close(CloseCode::Policy));
        }
    }

    /// Stops every delivery to connection `i`.
    pub(super) fn forget_subscriptions(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        let signals = std::mem::take(&mut c.signals);
        for idx in signals.into_iter().flatten() {
            self.unlink_sub(usize::from(idx), i);
        }
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        if let Some(sub) = c.prices.take() {
            self.prices.remove(i, &sub);
        }
        c.outbox.clear_prices();
        c.user_channel = false;
    }

    /// Subscribes connection `i` to `signals_<tier>`, replaying from `resume`.
    pub(super) fn add_signal_sub(
        &mut self,
        i: usize,
        channel: &ChannelName,
        tier: Tier,
        ask: Option<ResumeAsk>,
        snapshot: usize,
    ) {
        let Some(c) = self.conns.get(i).and_then(Option::as_ref) else { return };
        let idx = self.view_for(&c.session, tier);
        let Some(epoch) = log_of(&self.src.channels, idx).map(ChannelLog::epoch) else { return };
        let resume = ask.map(|a| a.against(epoch));
        if let Some(r) = resume
            && self.resume_from_history(i, tier, idx, r)
        {
            return; // answered when the read-back is in
        }
        if snapshot > 0 && resume.is_none() && self.snapshot_from_history(i, tier, idx, snapshot) {
            return; // answered when the older part is in
        }
        self.subscribe_live(i, channel, tier, idx, resume, None, snapshot);
    }

    /// Answers SUBSCRIBED and makes `i` a subscriber of log `idx`: with `sub` (a resume
    /// already prepared) or by subscribing now.
    #[allow(clippy::too_many_arguments)] // a subscription's parts, as its three callers have them
    pub(super) fn subscribe_live(
        &mut self,
        i: usize,
        channel: &ChannelName,
        tier: Tier,
        idx: usize,
        resume: Option<Resume>,
        sub: Option<Subscription>,
        snapshot: usize,
    ) {
        let Some(c) = self.conns.get(i).and_then(Option::as_ref) else { return };
        let channels = Arc::clone(&self.src.channels);
        let Some(log) = log_of(&channels, idx) else { return };
        let sub = sub.unwrap_or_else(|| log.subscribe(resume));
        let (categories, quota, limit) =
            (c.session.categories, Arc::clone(&c.quota), self.limit_for(&c.session));
        let filter = c.filters[tier.index()].clone();
        self.reply(
            i,
            &protocol::subscribed_signals(channel, sub.epoch, sub.head, sub.recovered, filter.as_deref()),
        );
        // The replay holds `since+1 ..= head`; live reading then goes on after head.
        let since = resume.filter(|_| sub.recovered == Some(true)).map_or(sub.head, |r| r.since);
        let entry = Sub { conn: i, categories, quota, limit, skip_until: since, last_seq: since, filter };
        if snapshot > 0 {
            self.send_snapshot(i, idx, tier, &entry, sub.head, snapshot);
        }
        self.install(i, idx, tier, entry, &sub);
        self.remove_overflowed();
    }

    /// Replays `sub` to `entry` (which skips what it has seen), then makes it a live
    /// subscriber of log `idx` after the subscription's head.
    pub(super) fn install(&mut self, i: usize, idx: usize, tier: Tier, mut entry: Sub, sub: &Subscription) {
        let today = utc_day(self.now.unix.0);
        let limit = self.src.conn.outbound_limit;
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        for m in &sub.replay {
            let mut fields = Lazy::new(m);
            if deliver(&mut entry, c, idx, m, tier, Timing::Replay, today, limit, &mut fields)
                == Delivery::Overflow
            {
                self.overflowed.push(i);
                break;
            }
        }
        entry.skip_until = entry.skip_until.max(sub.head);
        entry.last_seq = entry.last_seq.max(entry.skip_until);
        c.signals[tier.index()] = Some(idx as u8);
        c.sub_pos[tier.index()] = self.subs[idx].len() as u32;
        if self.subs[idx].is_empty() {
            // Nobody on this shard read this log: start from the subscription's head.
            self.cursors[idx] = sub.cursor;
        }
        self.subs[idx].push(entry);
        self.mark_dirty(i);
    }

    /// Sends connection `i` the last `n` messages up to `head` of log `idx` that its
    /// subscription `entry` lets through (categories, filter), oldest first, each marked
    /// `"snapshot":true` and charged to the quota as a delivery: from the ring, then from
    /// the older part read back from the node's history ([`Core::snapshot_from_history`]),
    /// if the ring held fewer.
    fn send_snapshot(&mut self, i: usize, idx: usize, tier: Tier, entry: &Sub, head: u64, n: usize) {
        let (mut picked, _) = self.ring_snapshot(idx, entry, head, n);
        let older = std::mem::take(&mut self.snapshot_older);
        if picked.len() < n {
            let first = picked.first().map_or(head + 1, Message::seq);
            let mut more: Vec<Message> =
                older.into_iter().filter(|m| m.seq() < first && passes(entry, m)).collect();
            let room = n - picked.len();
            if more.len() > room {
                more.drain(..more.len() - room);
            }
            more.append(&mut picked);
            picked = more;
        }
        let today = utc_day(self.now.unix.0);
        let limit = self.src.conn.outbound_limit;
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        let mut scratch = Vec::new();
        for m in picked {
            if let Some(max) = entry.limit
                && !m.is_outcome()
                && !matches!(entry.quota.take(idx, m.seq(), max, today), Take::Deliver)
            {
                continue;
            }
            let marked = snapshot_message(&m, &mut scratch);
            if c.outbox.push(Out::Signal(marked, tier, Timing::Replay), limit) == Pushed::Overflow {
                self.overflowed.push(i);
                break;
            }
        }
        self.mark_dirty(i);
    }

    /// The last `n` messages up to `head` of log `idx` that `entry` lets through, oldest
    /// first, from the ring (a batch per lock hold, newest batches first, never past the
    /// ring's oldest); and whether the ring ran out (it starts after seq 1) on the way.
    pub(super) fn ring_snapshot(&self, idx: usize, entry: &Sub, head: u64, n: usize) -> (Vec<Message>, bool) {
        const STEP: u64 = 256;
        let Some(log) = log_of(&self.src.channels, idx) else { return (Vec::new(), true) };
        let mut picked: Vec<Message> = Vec::new();
        let mut upto = head;
        let mut chunk = Vec::new();
        while picked.len() < n && upto > 0 {
            let from = upto.saturating_sub(STEP);
            chunk.clear();
            if let Err(lost) = log.read_after(from, &mut chunk, STEP as usize) {
                // The ring let go of part of this step: read what it still holds of it.
                chunk.clear();
                if lost.lost_through >= upto
                    || log.read_after(lost.lost_through, &mut chunk, STEP as usize).is_err()
                {
                    return (picked, true);
                }
            }
            let first = chunk.first().map_or(upto + 1, Message::seq);
            let mut matches: Vec<Message> =
                chunk.iter().filter(|m| m.seq() <= upto && passes(entry, m)).cloned().collect();
            let room = n - picked.len();
            if matches.len() > room {
                matches.drain(..matches.len() - room);
            }
            matches.append(&mut picked);
            picked = matches;
            if first > from + 1 {
                return (picked, true); // the ring starts after `from`: nothing older is kept
            }
            upto = from;
        }
        (picked, false)
    }

    pub(super) fn remove_signal_sub(&mut self, i: usize, tier: Tier) -> Option<Sub> {
        let c = self.conns.get_mut(i)?.as_mut()?;
        let idx = usize::from(c.signals[tier.index()].take()?);
        self.unlink_sub(idx, i)
    }

    /// Takes connection `i`'s subscription out of log `idx`'s subscribers in O(1): the
    /// last one moves into its place (delivery order among a shard's subscribers means
    /// nothing) and learns its new position.
    fn unlink_sub(&mut self, idx: usize, i: usize) -> Option<Sub> {
        let tier = idx / 2;
        let pos = self.conns.get(i)?.as_ref()?.sub_pos[tier] as usize;
        let subs = &mut self.subs[idx];
        let current = subs.get(pos).is_some_and(|s| s.conn == i);
        debug_assert!(current, "subscriber position out of date");
        // Never take someone else's subscription, even if a position went stale.
        let pos = if current { pos } else { subs.iter().position(|s| s.conn == i)? };
        let sub = subs.swap_remove(pos);
        if let Some(moved) = subs.get(pos).map(|s| s.conn)
            && let Some(c) = self.conns.get_mut(moved).and_then(Option::as_mut)
        {
            c.sub_pos[tier] = pos as u32;
        }
        Some(sub)
    }

    /// Subscribes connection `i` to the conflated price stream (replacing its current
    /// subscription): the latest price of each symbol it watches first, then changes at
    /// its rate. The snapshot is one bit per symbol in the outbox; the frames are the
    /// shard's, one per (symbol, rate), shared by every subscriber.
    pub(super) fn add_price_sub(&mut self, i: usize, sub: PriceSub) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        // Pending bits point at the old rate's frames, maybe of symbols no longer watched.
        c.outbox.clear_prices();
        let before = c.prices.take();
        if let Some(old) = &before {
            self.prices.remove(i, old);
        }
        let (rate, first) = (sub.rate, self.prices.add(i, &sub));
        c.prices = Some(sub);
        // Bring the shard's frames up to date (the first frames of a rate nobody used
        // yet included); subscribers already here get what changed now.
        self.fan_out_prices();
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        let frames = self.prices.frames(rate);
        // The latest price of each watched symbol first, again on a changed watchlist;
        // on a changed rate only of the newly watched ones (the new rate's frame of a
        // symbol the client has may be older than the one it got).
        let names = self.prices.names();
        for k in first {
            let known = before.as_ref().is_some_and(|old| {
                old.rate != rate
                    && names.get(k as usize).and_then(Option::as_ref).is_some_and(|(s, e)| old.watches(s, e))
            });
            if !known && frames.get(k as usize).is_some_and(Option::is_some) {
                c.outbox.push_price(k);
            }
        }
        self.mark_dirty(i);
    }

    /// Queues the channel logs' new messages on their subscribers (the engine rang,
    /// or the driver looks again in the middle of a long write sweep).
    pub fn fan_out(&mut self, now: Clock) {
        self.now = now;
        let today = utc_day(now.unix.0);
        let limit = self.src.conn.outbound_limit;
        let channels = Arc::clone(&self.src.channels);
        for idx in 0..LOGS {
            let Some(log) = log_of(&channels, idx) else { continue };
            if self.subs[idx].is_empty() {
                self.cursors[idx] = log.head();
                continue;
            }
            let tier = Tier::ALL[idx / 2];
            let timing = if idx.is_multiple_of(2) { Timing::Live } else { Timing::Delayed };
            loop {
                self.batch.clear();
                match log.read_after(self.cursors[idx], &mut self.batch, 256) {
                    Ok(next) => {
                        if self.batch.is_empty() {
                            break;
                        }
                        self.cursors[idx] = next;
                        for m in &self.batch {
                            // Read once per message, by the first subscriber with a filter.
                            let mut fields = Lazy::with_deflater(m, &mut self.deflater, &self.src.stats);
                            for sub in &mut self.subs[idx] {
                                let Some(c) = self.conns[sub.conn].as_mut() else { continue };
                                match deliver(sub, c, idx, m, tier, timing, today, limit, &mut fields) {
                                    Delivery::Queued => c.mark_dirty(&mut self.dirty, sub.conn),
                                    Delivery::Overflow => self.overflowed.push(sub.conn),
                                    Delivery::Exhausted => self.exhausted.push(sub.conn),
                                    Delivery::Skipped => {}
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // This shard fell more than a ring behind: its subscribers
                        // missed messages. They are closed as slow consumers and can
                        // resume (and will be told whether it recovered).
                        tracing::warn!(shard = self.index, log = log.name(), error = %e, "hub shard lagged");
                        let lagged: Vec<usize> = self.subs[idx].iter().map(|s| s.conn).collect();
                        for i in lagged {
                            self.src.stats.slow_consumer();
                            self.close(i, outbound::close(CloseCode::SlowConsumer));
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
        for i in std::mem::take(&mut self.exhausted) {
            let Some(user) = self.conns.get(i).and_then(Option::as_ref).map(|c| c.session.user_id.clone())
            else {
                continue;
            };
            let note = protocol::notification(
                &user,
                Notice::QuotaExhausted {
                    message: "daily signal quota used up; deliveries resume at 00:00 UTC",
                },
            );
            let theirs: Vec<usize> = (0..self.conns.len())
                .filter(|&k| {
                    self.conns[k].as_ref().is_some_and(|c| c.session.user_id == user && c.user_channel)
                })
                .collect();
            for k in theirs {
                self.reply(k, &note);
            }
        }
    }

    /// Connections whose outbox overflowed: closed with 4008 already; stop delivering.
    pub(super) fn remove_overflowed(&mut self) {
        let mut ids = std::mem::take(&mut self.overflowed);
        ids.sort_unstable();
        ids.dedup();
        for i in ids {
            let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { continue };
            if c.is_open() {
                c.phase = Phase::Closing;
            }
            self.src.stats.slow_consumer();
            self.forget_subscriptions(i);
            self.mark_dirty(i);
        }
    }

    /// Makes a frame for every symbol whose tick changed since the last turn and marks
    /// it pending on every price subscriber (who gets the latest frame when its socket
    /// can take it).
    pub(super) fn fan_out_prices(&mut self) {
        let ticks = Arc::clone(&self.src.ticks);
        let (conns, dirty) = (&mut self.conns, &mut self.dirty);
        // The stage adds symbols while this runs: the turn sizes by what the book's
        // iterator yields, not by a length read before it.
        self.prices.turn(&ticks, self.now.mono, self.src.hub.price_interval, |i, symbol| {
            if let Some(c) = conns.get_mut(i).and_then(Option::as_mut) {
                c.outbox.push_price(symbol);
                c.mark_dirty(dirty, i);
            }
        });
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    Queued,
    Skipped,
    Overflow,
    Exhausted,
}

/// Filters remembered per message: subscriptions with equal filters share one `Arc`
/// (the shard's [`crate::protocol::filter::Interner`]), so with a few popular watchlists
/// most recipients are answered from here.
const MEMO: usize = 4;

/// zlib level of the per-connection compressors (context takeover, opted in): every
/// delivery pays one, so the quick strategy. On the fixture mix at 200 × 50/s it cost
/// 21.8 µs of server CPU per delivery for 0.15 × the bytes; level 2, 36.8 µs for 0.14 ×;
/// level 6, 72.8 µs for 0.11 × (1,000 compressors' states do not stay in cache).
const CONTEXT_LEVEL: u32 = 1;

/// A message's fields for filters, read from its text when first asked for, the
/// answers of the last [`MEMO`] filters checked against it, and its compressed copy for
/// permessage-deflate connections, made at the first of them (`None` where the fan-out
/// sends plain frames only: replays, snapshots).
pub(super) struct Lazy<'a> {
    msg: &'a Message,
    fields: Option<Option<Fields<'a>>>,
    deflater: Option<(&'a mut crate::ws::deflate::Deflater, &'a crate::metrics::GatewayStats)>,
    /// `Some(None)`: tried, and compressing did not make it smaller.
    deflated: Option<Option<Message>>,
    /// Where compressed frames are assembled: one buffer for every connection with a
    /// context of its own that this message goes to.
    scratch: Vec<u8>,
    /// (filter's address, answer); address 0 is no filter. The filters are held by the
    /// subscriptions for as long as this message is fanned out, so an address stands
    /// for one filter here.
    seen: [(usize, bool); MEMO],
    next: usize,
}

impl<'a> Lazy<'a> {
    pub(super) fn new(msg: &'a Message) -> Self {
        Self {
            msg,
            fields: None,
            deflater: None,
            deflated: None,
            scratch: Vec::new(),
            seen: [(0, false); MEMO],
            next: 0,
        }
    }

    /// With the shard's compressor: connections that negotiated permessage-deflate get
    /// the message compressed, once for all of them.
    pub(super) fn with_deflater(
        msg: &'a Message,
        deflater: &'a mut crate::ws::deflate::Deflater,
        stats: &'a crate::metrics::GatewayStats,
    ) -> Self {
        Self { deflater: Some((deflater, stats)), ..Self::new(msg) }
    }

    /// The frame a connection gets: the shared compressed copy when it negotiated
    /// permessage-deflate and compressing pays, its own when it keeps a context, the
    /// plain message otherwise (and always where the fan-out sends plain frames: a plain
    /// message never enters a context, so it is safe in every mode).
    fn for_peer(&mut self, deflate: &mut Deflate) -> Message {
        let msg = self.msg;
        let Some((d, stats)) = self.deflater.as_mut() else { return msg.clone() };
        match deflate {
            Deflate::Off => msg.clone(),
            Deflate::Shared => self
                .deflated
                .get_or_insert_with(|| {
                    let p = d.compress(msg.json())?;
                    stats.deflated(msg.json().len(), p.len());
                    Some(msg.deflated(&p, &mut self.scratch))
                })
                .clone()
                .unwrap_or_else(|| msg.clone()),
            Deflate::Context { window_bits, c } => {
                let c = c.get_or_insert_with(|| {
                    Box::new(crate::ws::deflate::ContextDeflater::new(CONTEXT_LEVEL, *window_bits))
                });
                match c.compress(msg.json()) {
                    Some(p) => {
                        stats.deflated(msg.json().len(), p.len());
                        msg.deflated(&p, &mut self.scratch)
                    }
                    None => {
                        // zlib failed mid-stream: its window is unknown now. Plain from
                        // here on never touches the client's window.
                        *deflate = Deflate::Off;
                        msg.clone()
                    }
                }
            }
        }
    }

    /// Whether `filter` lets this message through.
    fn passes(&mut self, filter: &Arc<Filter>) -> bool {
        let key = Arc::as_ptr(filter) as usize;
        if let Some(&(_, ok)) = self.seen.iter().find(|(k, _)| *k == key) {
            return ok;
        }
        let msg = self.msg;
        let ok = self
            .fields
            .get_or_insert_with(|| Fields::of(msg.json()))
            .as_ref()
            .is_some_and(|x| filter.matches(x));
        self.seen[self.next % MEMO] = (key, ok);
        self.next += 1;
        ok
    }
}

/// The per-recipient step: seq, category, filter and quota checks, then a pointer push.
#[allow(clippy::too_many_arguments)] // the hot path's inputs, kept as plain values
pub(super) fn deliver(
    sub: &mut Sub,
    c: &mut Peer,
    log: usize,
    m: &Message,
    tier: Tier,
    timing: Timing,
    today: u32,
    limit: usize,
    fields: &mut Lazy<'_>,
) -> Delivery {
    let seq = m.seq();
    if seq <= sub.skip_until {
        return Delivery::Skipped;
    }
    sub.last_seq = seq;
    if !sub.categories.contains(m.category()) {
        return Delivery::Skipped;
    }
    // Before the quota: a message the filter leaves out is not charged.
    if let Some(f) = &sub.filter
        && !fields.passes(f)
    {
        return Delivery::Skipped;
    }
    // A close (a signal's outcome) is charged to no quota.
    if let Some(max) = sub.limit
        && !m.is_outcome()
        && let Take::Exhausted { notify } = sub.quota.take(log, seq, max, today)
    {
        return if notify { Delivery::Exhausted } else { Delivery::Skipped };
    }
    match c.outbox.push(Out::Signal(fields.for_peer(&mut c.deflate), tier, timing), limit) {
        Pushed::Queued => Delivery::Queued,
        Pushed::Overflow => Delivery::Overflow,
        Pushed::Closed => Delivery::Skipped,
    }
}

pub(super) fn price_frame(tick: &engine::model::Tick, conflated: u64) -> Arc<[u8]> {
    let mut json = Vec::with_capacity(200);
    engine::pipeline::encode::price_update(&mut json, tick, conflated);
    outbound::text(&json).into()
}

/// `m` with `"snapshot":true` after its seq: a snapshot's own frame (per recipient: a
/// snapshot is read once per SUBSCRIBE).
fn snapshot_message(m: &Message, scratch: &mut Vec<u8>) -> Message {
    let json = m.json();
    const DATA: &[u8] = b",\"data\":";
    let at = json.windows(DATA.len()).position(|w| w == DATA).unwrap_or(json.len());
    let mut text = Vec::with_capacity(json.len() + 16);
    text.extend_from_slice(&json[..at]);
    text.extend_from_slice(b",\"snapshot\":true");
    text.extend_from_slice(&json[at..]);
    Message::new(&m.meta(), &text, scratch)
}

/// Whether subscription `entry` lets message `m` through (categories, filter).
pub(super) fn passes(entry: &Sub, m: &Message) -> bool {
    entry.categories.contains(m.category())
        && entry.filter.as_ref().is_none_or(|f| Fields::of(m.json()).is_some_and(|x| f.matches(&x)))
}
