//! Resumes from before the ring: on a gateway node the channel's topic still holds what
//! the ring let go, so the subscription waits for a read-back instead of answering
//! `recovered: false`.
//!
//! The connection is not subscribed while the read runs (live messages are not queued
//! for it); when the messages arrive, the ring is asked for what follows the last of
//! them, and SUBSCRIBED, the read-back, the ring's part and then live messages go out in
//! order, exactly as a resume inside the ring would. A second SUBSCRIBE or an
//! UNSUBSCRIBE of the channel, or the connection closing, cancels the wait.

use std::sync::Arc;

use engine::channels::{ChannelName, Message, Resume};
use engine::model::Tier;

use super::fanout::log_of;
use super::{Clock, ConnId, Core};

/// A read the driver starts on the node's history; its result comes back as a
/// [`HistoryDone`] with the same `conn`, `serial`, `tier`, `since` and `round`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    pub conn: ConnId,
    pub serial: u64,
    pub tier: Tier,
    /// The resume asked for what follows `since`: read `since + 1 ..= to`.
    pub since: u64,
    pub to: u64,
    pub round: u8,
}

impl HistoryRequest {
    /// The answer to this request.
    pub fn done(self, result: Result<Vec<Message>, engine::channels::HistoryError>) -> HistoryDone {
        HistoryDone {
            conn: self.conn,
            serial: self.serial,
            tier: self.tier,
            since: self.since,
            result,
            round: self.round,
        }
    }
}

/// What a history read returned, addressed to the connection that asked.
#[derive(Debug)]
pub struct HistoryDone {
    conn: ConnId,
    /// Tells a reused connection slot from the connection that asked.
    serial: u64,
    tier: Tier,
    since: u64,
    result: Result<Vec<Message>, engine::channels::HistoryError>,
    round: u8,
}

/// A subscription waiting for its read-back.
#[derive(Debug)]
pub(super) struct Pending {
    pub conn: usize,
    pub serial: u64,
    pub tier: Tier,
    pub idx: usize,
    pub resume: Resume,
    /// A snapshot of this many messages waits for its older part (then `resume.since`
    /// is where the read starts), not a resume.
    pub snapshot: usize,
}

/// How far before the ring a snapshot's read-back looks, at most.
const SNAPSHOT_LOOKBACK: u64 = 4_096;

/// Read-backs in a row for one SUBSCRIBE before giving up (the ring outran the reads).
const MAX_ROUNDS: u8 = 3;

impl Core {
    /// Starts a read-back for a resume from before the ring, if this node has a
    /// history and the resume is for this log's epoch; false to answer as usual.
    pub(super) fn resume_from_history(&mut self, i: usize, tier: Tier, idx: usize, resume: Resume) -> bool {
        let channels = Arc::clone(&self.src.channels);
        let Some(log) = log_of(&channels, idx).filter(|_| self.src.history) else {
            return false;
        };
        let lost = log.lost_through();
        if resume.epoch != log.epoch() || resume.since >= lost {
            return false;
        }
        let Some(serial) = self.conns.get(i).and_then(Option::as_ref).map(|c| c.serial) else {
            return false;
        };
        self.pending.push(Pending { conn: i, serial, tier, idx, resume, snapshot: 0 });
        self.request(i, serial, tier, resume.since, lost, 1);
        true
    }

    /// Starts a read-back of the messages just before the ring for a snapshot of `n`
    /// that the ring cannot fill, if this node has a history; false to answer at once.
    pub(super) fn snapshot_from_history(&mut self, i: usize, tier: Tier, idx: usize, n: usize) -> bool {
        let channels = Arc::clone(&self.src.channels);
        let Some(log) = log_of(&channels, idx).filter(|_| self.src.history) else {
            return false;
        };
        let lost = log.lost_through();
        let Some(c) = self.conns.get(i).and_then(Option::as_ref) else { return false };
        if lost == 0 {
            return false; // the ring holds the whole channel
        }
        let probe = super::Sub {
            conn: i,
            categories: c.session.categories,
            quota: Arc::clone(&c.quota),
            limit: None,
            skip_until: 0,
            last_seq: 0,
            filter: c.filters[tier.index()].clone(),
        };
        let serial = c.serial;
        let (picked, ran_out) = self.ring_snapshot(idx, &probe, log.head(), n);
        if picked.len() >= n || !ran_out {
            return false;
        }
        let since = lost.saturating_sub(SNAPSHOT_LOOKBACK);
        let resume = Resume { since, epoch: log.epoch() };
        self.pending.push(Pending { conn: i, serial, tier, idx, resume, snapshot: n });
        self.request(i, serial, tier, since, lost, 1);
        true
    }

    fn request(&mut self, conn: ConnId, serial: u64, tier: Tier, since: u64, to: u64, round: u8) {
        self.requests.push_back(HistoryRequest { conn, serial, tier, since, to, round });
    }

    /// Drops a waiting read-back of `tier` for connection `i` (its reply is ignored).
    pub(super) fn cancel_history(&mut self, i: usize, tier: Tier) -> bool {
        let before = self.pending.len();
        self.pending.retain(|p| !(p.conn == i && p.tier == tier));
        self.pending.len() != before
    }

    /// A read-back came in.
    pub fn history_done(&mut self, done: HistoryDone, now: Clock) {
        self.now = now;
        if let Some(c) =
            self.conns.get_mut(done.conn).and_then(Option::as_mut).filter(|c| c.serial == done.serial)
        {
            c.reads = c.reads.saturating_sub(1);
        }
        let Some(at) = self.pending.iter().position(|p| {
            p.conn == done.conn
                && p.serial == done.serial
                && p.tier == done.tier
                && p.resume.since == done.since
        }) else {
            return; // cancelled, or the connection is gone
        };
        let p = self.pending.swap_remove(at);
        if self
            .conns
            .get(p.conn)
            .and_then(Option::as_ref)
            .is_none_or(|c| c.serial != p.serial || !c.is_open())
        {
            return; // closed meanwhile (its slot may be someone else's now)
        }
        let channels = Arc::clone(&self.src.channels);
        let Some(log) = log_of(&channels, p.idx) else { return };
        let channel = ChannelName::Signals(p.tier);
        if p.snapshot > 0 {
            // The older part of a snapshot (none if the read failed: the ring's part
            // still goes out); the rest is read from the ring as it is now.
            match done.result {
                Ok(msgs) => self.snapshot_older = msgs,
                Err(e) => tracing::debug!(conn = p.conn, error = %e, "no history for a snapshot"),
            }
            self.subscribe_live(p.conn, &channel, p.tier, p.idx, None, None, p.snapshot);
            // Taken by the snapshot; never left for another connection's.
            self.snapshot_older.clear();
            return;
        }
        let mut older = match done.result {
            Ok(msgs) => msgs,
            Err(e) => {
                tracing::debug!(conn = p.conn, error = %e, "no history for a resume");
                return self.subscribe_live(p.conn, &channel, p.tier, p.idx, Some(p.resume), None, 0);
            }
        };
        let last = older.last().map_or(done.since, Message::seq);
        let mut sub = log.subscribe(Some(Resume { since: last, epoch: p.resume.epoch }));
        if sub.recovered != Some(true) {
            if done.round < MAX_ROUNDS {
                // The ring moved past what was read meanwhile: read again, further.
                self.request(p.conn, p.serial, p.tier, p.resume.since, log.lost_through(), done.round + 1);
                self.pending.push(p);
                return;
            }
            return self.subscribe_live(p.conn, &channel, p.tier, p.idx, Some(p.resume), None, 0);
        }
        older.append(&mut sub.replay);
        sub.replay = older;
        self.subscribe_live(p.conn, &channel, p.tier, p.idx, Some(p.resume), Some(sub), 0);
    }
}
