//! What the engine remembers about each producer across its connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// One producer id: its acked seq (the pipeline stage writes it), and its live session.
#[derive(Debug)]
pub struct ProducerSlot {
    pub index: u32,
    pub id: String,
    acked: AtomicU64,
    acked_changed: Notify,
    session: AtomicU64,
    replaced: Notify,
}

impl ProducerSlot {
    /// Highest producer seq the stage has taken (routed, dropped by filter, or found a
    /// duplicate): everything up to it is in the channel logs or never will be.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    pub(crate) fn set_acked(&self, seq: u64) {
        if self.acked.fetch_max(seq, Ordering::AcqRel) < seq {
            self.acked_changed.notify_one();
        }
    }

    /// Resolves after the next acked change (or at once if one happened unobserved).
    pub(crate) async fn acked_changed(&self) {
        self.acked_changed.notified().await;
    }

    pub(crate) fn is_current(&self, session: u64) -> bool {
        self.session.load(Ordering::Acquire) == session
    }

    /// Resolves when a newer connection of the same producer takes over.
    pub(crate) async fn replaced(&self, session: u64) {
        loop {
            let n = self.replaced.notified();
            if !self.is_current(session) {
                return;
            }
            n.await;
        }
    }
}

/// Producer slots by id. Taken only at HELLO and by the stage when it first sees a
/// slot index, never per frame.
#[derive(Debug, Default)]
pub struct ProducerRegistry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, u32>,
    slots: Vec<Arc<ProducerSlot>>,
}

impl ProducerRegistry {
    /// Starts a new session for `id`, ending any earlier one (a producer reconnecting
    /// after a half-open connection must not be locked out by its own ghost).
    pub fn attach(&self, id: &str) -> (Arc<ProducerSlot>, u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match inner.by_id.get(id) {
            Some(&i) => Arc::clone(&inner.slots[i as usize]),
            None => {
                let index = inner.slots.len() as u32;
                let slot = Arc::new(ProducerSlot {
                    index,
                    id: id.to_owned(),
                    acked: AtomicU64::new(0),
                    acked_changed: Notify::new(),
                    session: AtomicU64::new(0),
                    replaced: Notify::new(),
                });
                inner.slots.push(Arc::clone(&slot));
                inner.by_id.insert(id.to_owned(), index);
                slot
            }
        };
        drop(inner);
        let session = slot.session.fetch_add(1, Ordering::AcqRel) + 1;
        slot.replaced.notify_waiters();
        (slot, session)
    }

    pub fn slot(&self, index: u32) -> Option<Arc<ProducerSlot>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.slots.get(index as usize).cloned()
    }

    pub fn get(&self, id: &str) -> Option<Arc<ProducerSlot>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_id.get(id).map(|&i| Arc::clone(&inner.slots[i as usize]))
    }
}
