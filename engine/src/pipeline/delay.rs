//! Delayed views: the same messages as the live channel, released `delay` after ingest.
//!
//! Delays are per channel, not per signal, so release order is arrival order and a
//! FIFO per channel is the whole timer: O(1) per message, and one wake-up for the
//! earliest release instead of a sleep per signal.

use crate::channels::Message;
use crate::model::UnixNanos;
use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct DelayLine {
    delay_ns: i64,
    queue: VecDeque<(UnixNanos, Message)>,
    capacity: usize,
}

impl DelayLine {
    pub(crate) fn new(delay: std::time::Duration, capacity: usize) -> Self {
        Self {
            delay_ns: i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX),
            queue: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `msg` for release at `ingest_ts + delay`. Returns the oldest message when
    /// the line was full: it is dropped from the delayed view, never released early.
    pub(crate) fn push(&mut self, ingest_ts: UnixNanos, msg: Message) -> Option<Message> {
        let evicted =
            if self.queue.len() == self.capacity { self.queue.pop_front().map(|(_, m)| m) } else { None };
        // Release times follow arrival order even if ingest clocks disagree slightly,
        // so the view stays in seq order.
        let mut at = ingest_ts.plus_nanos(self.delay_ns);
        if let Some((last, _)) = self.queue.back() {
            at = at.max(*last);
        }
        self.queue.push_back((at, msg));
        evicted
    }

    /// The next message due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: UnixNanos) -> Option<Message> {
        match self.queue.front() {
            Some((at, _)) if *at <= now => {
                if let Some((_, soon)) = self.queue.get(8) {
                    soon.prefetch(); // released (and read) a few pops from now
                }
                self.queue.pop_front().map(|(_, m)| m)
            }
            _ => None,
        }
    }

    pub(crate) fn next_release(&self) -> Option<UnixNanos> {
        self.queue.front().map(|(at, _)| *at)
    }
}
