//! The store as a single node's [`History`]: a resume from before a channel's ring is
//! read back from the store, so a client that was away for longer than the ring (or
//! across a restart) still gets `recovered: true` and every seq it missed, in order.
//!
//! Reads run on a thread of their own (a hub shard must not block), from a bounded
//! queue: past [`QUEUE`] waiting reads, a read is answered `Busy` at once and the
//! client gets `recovered: false` (and history over HTTP).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use engine::channels::{ChannelName, History, HistoryError, HistoryReply, Message, MessageMeta};
use engine::model::Tier;
use engine::pipeline::encode;

use crate::SqliteStore;

/// Reads waiting at once.
const QUEUE: usize = 64;

struct Request {
    tier: Tier,
    from: u64,
    to: u64,
    reply: HistoryReply,
}

/// See the module docs.
pub struct StoreHistory {
    tx: SyncSender<Request>,
    max_messages: u64,
}

impl std::fmt::Debug for StoreHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHistory").field("max_messages", &self.max_messages).finish_non_exhaustive()
    }
}

impl StoreHistory {
    /// Starts the reader thread on the store in `dir`; it ends when this is dropped.
    /// A resume deeper than `max_messages` is not read back.
    pub fn start(dir: PathBuf, max_messages: u64) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("signalcast-store-history".into())
            .spawn(move || serve(&dir, &rx))?;
        Ok(Self { tx, max_messages })
    }
}

impl History for StoreHistory {
    fn read(&self, tier: Tier, from: u64, to: u64, reply: HistoryReply) {
        let n = to.saturating_sub(from) + 1;
        if n > self.max_messages {
            return reply(Err(HistoryError::TooMany(n, self.max_messages)));
        }
        match self.tx.try_send(Request { tier, from, to, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) => (r.reply)(Err(HistoryError::Busy)),
        }
    }
}

fn serve(dir: &std::path::Path, rx: &Receiver<Request>) {
    let mut reader: Option<SqliteStore> = None;
    let (mut text, mut scratch) = (Vec::new(), Vec::new());
    while let Ok(r) = rx.recv() {
        if reader.is_none() {
            reader = SqliteStore::open_reader(dir).ok();
        }
        let Some(store) = reader.as_ref() else {
            (r.reply)(Err(HistoryError::Incomplete("the signal store cannot be opened".into())));
            continue;
        };
        let want = (r.to - r.from + 1) as usize;
        let rows = match store.after(r.tier, r.from.saturating_sub(1), want) {
            Ok(rows) => rows,
            Err(e) => {
                (r.reply)(Err(HistoryError::Incomplete(e.to_string())));
                continue;
            }
        };
        // Gap-free or nothing: a pruned seq cannot be recovered.
        let complete = rows.len() == want && rows.iter().zip(r.from..).all(|(m, seq)| m.seq == seq);
        if !complete {
            (r.reply)(Err(HistoryError::Incomplete(format!(
                "seqs {}..={} of {} are not all in the store",
                r.from,
                r.to,
                ChannelName::Signals(r.tier)
            ))));
            continue;
        }
        let channel = ChannelName::Signals(r.tier).to_string();
        let msgs = rows
            .iter()
            .map(|m| {
                encode::signal_update(&mut text, &channel, m.seq, m.data.as_bytes());
                let meta = MessageMeta {
                    seq: m.seq,
                    category: m.category,
                    ingest_ts: m.ingest_ts,
                    routed_ts: m.routed_ts,
                    sent_ts: None,
                    outcome: m.outcome,
                };
                Message::new(&meta, &text, &mut scratch)
            })
            .collect();
        (r.reply)(Ok(msgs));
    }
}
