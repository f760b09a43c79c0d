//! The Raft log and Raft metadata, with group commit.
//!
//! `append` writes entries into RocksDB without syncing (so they are readable at once) and
//! hands the completion callback to one fsync thread. That thread takes every callback queued
//! so far, syncs the WAL once, then completes them in order: one fsync covers a whole batch
//! of appends, and no append is reported flushed before it is on disk.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Weak;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;
use tokio::sync::mpsc;

use super::cf;
use super::codec::decode;
use super::codec::encode;
use super::codec::index_from_key;
use super::codec::index_key;
use super::io_error;
use super::FaultOptions;
use super::CF_LOG;
use super::CF_META;
use super::KEY_COMMITTED;
use super::KEY_LAST_PURGED;
use super::KEY_VOTE;
use crate::limits::FLUSH_QUEUE_CAPACITY;
use crate::limits::MAX_APPEND_BATCH_BYTES;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// The Raft log storage of one node. Cloning shares the database and the fsync thread.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Completion callbacks waiting for the next WAL sync, in append order. Bounded, and
    /// awaited when full: a slow disk then slows openraft's appends instead of blocking a
    /// runtime thread (or growing memory).
    flush_queue: mpsc::Sender<PendingFlush>,
}

/// One append waiting for the next WAL sync.
type PendingFlush = IOFlushed<TypeConfig>;

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, faults: FaultOptions) -> io::Result<Self> {
        let (flush_queue, pending) = mpsc::channel(FLUSH_QUEUE_CAPACITY);
        // Weak: the thread must not keep RocksDB open after the stores are dropped. A database
        // still open at process exit races RocksDB's static destructors (SIGABRT).
        let flusher_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("quorumkv-fsync".to_string())
            .spawn(move || run_flusher(flusher_db, pending, faults))?;
        Ok(Self { db, flush_queue })
    }

    pub(crate) fn db(&self) -> Arc<DB> {
        self.db.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.get_cf(cf(&self.db, CF_META), key).map_err(io_error)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }
}

/// Group commit: one WAL sync per batch of queued appends; callbacks complete in order.
fn run_flusher(db: Weak<DB>, mut pending: mpsc::Receiver<PendingFlush>, faults: FaultOptions) {
    while let Some(first) = pending.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < FLUSH_QUEUE_CAPACITY {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let delay = faults.fsync_delay + faults.fsync_jitter.mul_f64(fastrand::f64());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the database is closed".to_string()),
        };
        for callback in batch {
            match &result {
                Ok(()) => callback.io_completed(Ok(())),
                Err(error) => callback.io_completed(Err(io::Error::other(format!("fsync of the Raft log: {error}")))),
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let start_key = index_key(start);
        let mut entries = Vec::new();
        let iterator = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&start_key, Direction::Forward));
        for item in iterator {
            let (key, bytes) = item.map_err(io_error)?;
            let index = index_from_key(&key)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode(&bytes)?;
            // Checked on every read-back: a mismatch is on-disk corruption, an operating error.
            if index != entry.index() {
                return Err(corrupt(format!("log entry {} stored under index {index}", entry.index())));
            }
            if let Some(previous) = entries.last().map(|e: &Entry| e.index()) {
                if previous + 1 != index {
                    return Err(corrupt(format!("hole in the Raft log between {previous} and {index}")));
                }
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }

    /// What replication reads to build one AppendEntries: entries from `start`, stopping
    /// before `end` or once [`MAX_APPEND_BATCH_BYTES`] of them are read (always at least one).
    /// openraft bounds a batch by entry count only, and 256 values of 1 MiB make an RPC that
    /// neither meets its timeout nor fits a peer's body limit.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let start_key = index_key(start);
        let mut entries = Vec::new();
        let mut batch_bytes = 0usize;
        let iterator = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&start_key, Direction::Forward));
        for item in iterator {
            let (key, bytes) = item.map_err(io_error)?;
            let index = index_from_key(&key)?;
            if index >= end || (!entries.is_empty() && batch_bytes + bytes.len() > MAX_APPEND_BATCH_BYTES) {
                break;
            }
            let entry: Entry = decode(&bytes)?;
            if index != entry.index() {
                return Err(corrupt(format!("log entry {} stored under index {index}", entry.index())));
            }
            // The batch follows `start - 1` on the receiver: it must begin exactly at `start`.
            // A purge may just have taken `start` (a stream of a leader that stepped down and
            // installed a snapshot): send nothing, openraft treats that as a heartbeat.
            if entries.is_empty() && index != start {
                let purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
                if purged.is_some_and(|purged| purged.index() >= start) {
                    return Ok(entries);
                }
                return Err(corrupt(format!("log entry {start} missing (found {index}) while replicating")));
            }
            if let Some(previous) = entries.last().map(|e: &Entry| e.index()) {
                if previous + 1 != index {
                    return Err(corrupt(format!("hole in the Raft log between {previous} and {index}")));
                }
            }
            batch_bytes += bytes.len();
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last_entry = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End).next();
        let last_log_id = match last_entry {
            None => last_purged_log_id,
            Some(item) => {
                let (_, bytes) = item.map_err(io_error)?;
                let entry: Entry = decode(&bytes)?;
                Some(entry.log_id())
            }
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Synced before returning: a vote forgotten in a crash lets this node vote twice in
        // one term. The synced WAL write also covers every log write made before it.
        let bytes = encode(vote)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut write_options = WriteOptions::default();
            write_options.set_sync(true);
            db.put_cf_opt(cf(&db, CF_META), KEY_VOTE, bytes, &write_options).map_err(io_error)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: a lost committed id is learned again from the leader; when it survives,
        // openraft re-applies committed entries at start-up without waiting for a leader.
        let Some(committed) = committed else { return Ok(()) };
        let bytes = encode(&committed)?;
        self.db.put_cf(cf(&self.db, CF_META), KEY_COMMITTED, bytes).map_err(io_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.get_meta(KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        for entry in entries {
            batch.put_cf(log, index_key(entry.index()), encode(&entry)?);
        }
        // Unsynced write: readable on return, as the contract requires; durable once the
        // fsync thread has synced the WAL, and only then is the callback completed.
        self.db.write(batch).map_err(io_error)?;
        self.flush_queue.send(callback).await.map_err(|_| io::Error::other("the fsync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |log_id| log_id.index() + 1);
        // Unsynced: if a crash forgets it, the removed entries were uncommitted and come back
        // as conflicting entries the leader truncates again. Later synced appends cover it.
        self.db.delete_range_cf(cf(&self.db, CF_LOG), index_key(first_removed), index_key(u64::MAX)).map_err(io_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // One batch: the purge marker and the deletion land together, so no hole is visible.
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META), KEY_LAST_PURGED, encode(&log_id)?);
        batch.delete_range_cf(cf(&self.db, CF_LOG), index_key(0), index_key(log_id.index() + 1));
        self.db.write(batch).map_err(io_error)
    }
}

fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
