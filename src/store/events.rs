//! The change history behind `GET /v1/watch` and blocking reads: every change of a key is an
//! event at the revision that made it, written to the `events` column family in the same write
//! batch as the change itself, so the history and the state never disagree, across crashes
//! included (a lost unsynced tail is re-applied from the log, events and all).
//!
//! The history is this node's own: it is not replicated, not in snapshots, and bounded by
//! revisions and by age (`--watch-history-revisions`, `--watch-history-ms`). It is complete
//! from one revision on (`events_from`); a watch that starts before it is refused (`410
//! compacted`), never served with a gap. A snapshot install empties it and starts it after
//! the snapshot.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

/// One change of one key, as stored: the revision (and its place within the revision) is the
/// RocksDB key, see [`event_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub key: String,
    /// `None`: the key was deleted.
    pub put: Option<PutEvent>,
    /// When this node applied it (milliseconds since the Unix epoch, this node's clock): for
    /// the age bound only.
    pub applied_at_unix_ms: u64,
}

/// What a put left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutEvent {
    pub create_revision: u64,
    pub value: Bytes,
}

/// Where an event is kept: its revision, then its place among the revision's events (in key
/// order), both big-endian so RocksDB orders them.
pub fn event_key(revision: u64, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&revision.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The revision and place of an event key (`None`: not one).
pub fn parse_event_key(key: &[u8]) -> Option<(u64, u32)> {
    let key: &[u8; 12] = key.try_into().ok()?;
    let (revision, index) = key.split_at(8);
    Some((u64::from_be_bytes(revision.try_into().ok()?), u32::from_be_bytes(index.try_into().ok()?)))
}

/// How much history a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    /// The events of at most this many of the latest revisions.
    pub revisions: u64,
    /// No events applied longer ago than this (checked as later entries are applied).
    pub age_ms: u64,
}

impl Default for EventRetention {
    fn default() -> Self {
        EventRetention {
            revisions: crate::limits::DEFAULT_WATCH_HISTORY_REVISIONS,
            age_ms: crate::limits::DEFAULT_WATCH_HISTORY_MS,
        }
    }
}

/// What the state machine tells readers about the history: the applied revision (watchers
/// wait on it) and the first revision whose events are all kept.
#[derive(Clone)]
pub struct EventClock {
    applied: tokio::sync::watch::Sender<u64>,
    from: Arc<AtomicU64>,
}

impl EventClock {
    pub(crate) fn new(applied: u64, from: u64) -> Self {
        EventClock { applied: tokio::sync::watch::Sender::new(applied), from: Arc::new(AtomicU64::new(from)) }
    }

    /// After the batch up to `revision` is visible to reads (its events too).
    pub(crate) fn applied(&self, revision: u64) {
        self.applied.send_replace(revision);
    }

    pub(crate) fn set_from(&self, revision: u64) {
        self.from.store(revision, Ordering::Release);
    }

    /// The revision applied last here.
    pub fn applied_revision(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The first revision whose events are all kept: events from there on can be read.
    pub fn events_from(&self) -> u64 {
        self.from.load(Ordering::Acquire)
    }

    /// Changes whenever a batch is applied.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: event keys sort by revision, then place, and read back.
    #[test]
    fn event_keys_sort_by_revision_then_place() {
        assert!(event_key(1, 9) < event_key(2, 0));
        assert!(event_key(256, 0) > event_key(255, u32::MAX));
        assert_eq!(parse_event_key(&event_key(300, 7)), Some((300, 7)));
        assert_eq!(parse_event_key(b"short"), None);
    }
}
