//! Messages older than a log's ring, read back from where its seqs come from.
//!
//! A gateway node's logs follow `signals.<tier>` topics, which keep far more than a ring:
//! a resume from before the ring is served from the topic ([`crate::kafka`]). One node
//! logs have no history beyond their ring.

use super::Message;
use crate::model::Tier;

/// Why a history read gave nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("history reader busy")]
    Busy,
    #[error("{0} messages asked for, over the limit of {1}")]
    TooMany(u64, u64),
    #[error("history incomplete: {0}")]
    Incomplete(String),
}

/// Called with the messages `from ..= to`, in order and gap-free, or why not; from the
/// reader's thread, or at once from the caller's (a reader that is busy, or a range too
/// deep to read).
pub type HistoryReply = Box<dyn FnOnce(Result<Vec<Message>, HistoryError>) + Send>;

/// A source of `signals_<tier>` messages older than the ring.
pub trait History: Send + Sync + std::fmt::Debug {
    /// Reads seqs `from ..= to` of `signals_<tier>` and calls `reply` when done. Must
    /// not block the caller (a hub shard thread); may call `reply` before it returns.
    fn read(&self, tier: Tier, from: u64, to: u64, reply: HistoryReply);
}
