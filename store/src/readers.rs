//! Read-only connections to a node's store, shared by the request handlers that read
//! history: idle connections are kept for the next request instead of reopened.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use crate::{SqliteStore, StoreError};

/// Idle connections kept at most; more requests at once open more (the caller bounds
/// how many run at once).
const KEEP_IDLE: usize = 4;

/// See the module docs.
#[derive(Debug)]
pub struct Readers {
    dir: PathBuf,
    idle: Mutex<Vec<SqliteStore>>,
}

impl Readers {
    /// Readers of the store in `dir` (which the writer has opened and migrated).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, idle: Mutex::new(Vec::new()) }
    }

    /// Runs `f` on a reader. Blocking: call it off the async workers.
    pub fn read<T>(&self, f: impl FnOnce(&SqliteStore) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let taken = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let reader = match taken {
            Some(r) => r,
            None => SqliteStore::open_reader(&self.dir)?,
        };
        let out = f(&reader);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < KEEP_IDLE {
            idle.push(reader);
        }
        out
    }
}
