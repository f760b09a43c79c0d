//! Durable storage of one node: a single RocksDB with one column family per concern.
//!
//! | column family | contents |
//! |---|---|
//! | `log` | Raft log entries, key = big-endian index |
//! | `meta` | Raft metadata: vote, committed log id, last purged log id, bootstrap marker, peers seen |
//! | `kv` | the key-value state: key → modification revision + value |
//! | `events` | this node's change history for watches: revision and place → the change (`events.rs`) |
//! | `sm` | state-machine metadata: last applied log id, last membership, client addresses, users and roles (`auth/`), leases and their keys (`lease/`, `leases.rs`), the marker of a snapshot install in progress |
//!
//! Snapshots live beside the database in `snapshots/` (see `snapshot.rs`).
//!
//! All column families share one write-ahead log. RocksDB syncs the WAL as a whole and
//! recovers a prefix of it after a crash, so a synced write makes every earlier write durable
//! too and no later write can survive without the earlier ones. The ordering rules of
//! openraft's storage contract follow from that (see `DESIGN.md`).

mod codec;
pub mod events;
pub(crate) mod leases;
mod log_store;
mod snapshot;
mod state_machine;

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

pub use log_store::LogStore;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;
pub use snapshot::IncomingSnapshot;
pub use snapshot::SnapshotHandle;
pub(crate) use snapshot::SnapshotStore;
pub use state_machine::AuthRecords;
pub use state_machine::EventsPage;
pub use state_machine::KvReader;
pub use state_machine::LeaseView;
pub use state_machine::Page;
pub use state_machine::StateMachine;
pub use state_machine::StoredValue;

use crate::types::LogId;
use crate::types::NodeId;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_SM: &str = "sm";
/// This node's change history for watches (`events.rs`): not replicated, not in snapshots.
pub(crate) const CF_EVENTS: &str = "events";

/// Raft metadata keys in `meta`.
pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// Present once this node has bootstrapped or joined a cluster; restarts resume from it.
pub(crate) const KEY_BOOTSTRAPPED: &[u8] = b"bootstrapped";
/// Present while a freshly bootstrapped node has not yet told every founding peer that it
/// exists (see `bootstrap.rs`); a restart finishes the announcement before serving Raft.
pub(crate) const KEY_ANNOUNCE_PENDING: &[u8] = b"announce_pending";
/// Present once this node learned that it was removed from the cluster; the value is the log
/// index of the membership that removed it. A restart stays removed until added back.
pub(crate) const KEY_REMOVED: &[u8] = b"removed";
/// The log id of a membership that listed this node (the first one it saw itself in): only a
/// committed membership newer than it can have removed this node.
pub(crate) const KEY_MEMBER_SINCE: &[u8] = b"member_since";
/// Present from the moment a node asks to join with an empty data dir until it first sees
/// itself listed: meanwhile no membership can prove it was removed (it replays a history from
/// before it was added).
pub(crate) const KEY_AWAITING_LISTING: &[u8] = b"awaiting_listing";
/// Prefix of `peer_seen/<id>`: the peer is known to have held Raft state (announced itself,
/// answered or sent a Raft RPC). A peer that later starts with an empty data dir was wiped.
pub(crate) const PREFIX_PEER_SEEN: &[u8] = b"peer_seen/";

/// Storage faults injected for tests (`--fault-*` flags). The default injects none.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultOptions {
    /// Keep write-ahead-log writes in the process until the node syncs them, so that SIGKILL
    /// loses exactly the writes a power cut could lose: whatever was not fsynced.
    pub lose_unsynced_writes: bool,
    /// Every fsync of the Raft log first waits this long (a slow disk)...
    pub fsync_delay: std::time::Duration,
    /// ...plus a random extra of up to this much (a disk whose latency varies).
    pub fsync_jitter: std::time::Duration,
}

/// Opens (or creates) the node's RocksDB and returns its log store and state machine.
pub async fn open(data_dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    open_with_faults(data_dir, FaultOptions::default()).await
}

/// [`open`], with storage faults injected for tests.
pub async fn open_with_faults(data_dir: &Path, faults: FaultOptions) -> io::Result<(LogStore, StateMachine)> {
    let db = open_db(data_dir, faults.lose_unsynced_writes)?;
    let log_store = LogStore::new(db.clone(), faults)?;
    let snapshots = SnapshotStore::open(data_dir.join("snapshots"))?;
    let state_machine = StateMachine::new(db, snapshots)?;
    Ok((log_store, state_machine))
}

fn open_db(data_dir: &Path, lose_unsynced_writes: bool) -> io::Result<Arc<DB>> {
    std::fs::create_dir_all(data_dir)?;
    let mut options = Options::default();
    // The power-cut model: RocksDB buffers WAL writes in the process until a sync (a synced
    // write or `flush_wal(true)`), so a killed process loses what a power cut would lose.
    options.set_manual_wal_flush(lose_unsynced_writes);
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Values are small and the build carries no codecs: be explicit rather than rely on a
    // default that may name a codec this build lacks.
    options.set_compression_type(rocksdb::DBCompressionType::None);
    // Recover the longest consistent prefix of the WAL: unsynced tails are expected after a
    // crash, and DESIGN.md's ordering argument relies on prefix recovery.
    options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    // Bounded, so the descriptor budget of `server.rs` holds (RocksDB's default is no limit).
    options.set_max_open_files(crate::limits::ROCKSDB_MAX_OPEN_FILES);
    let families = [CF_LOG, CF_META, CF_KV, CF_SM, CF_EVENTS].map(|name| {
        let mut cf_options = Options::default();
        cf_options.set_compression_type(rocksdb::DBCompressionType::None);
        ColumnFamilyDescriptor::new(name, cf_options)
    });
    let db = DB::open_cf_descriptors(&options, db_path(data_dir), families).map_err(io_error)?;
    // What recovery read back may have come from the page cache of a process that was killed
    // before syncing it; openraft treats every entry it reads back as durable, so make it so.
    db.flush_wal(true).map_err(io_error)?;
    Ok(Arc::new(db))
}

fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// What a node knows of the memberships that listed it (see `removal.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberSince {
    /// This membership listed it (the first it saw itself in).
    Listed(LogId),
    /// It joined with an empty data dir and has not yet seen itself listed.
    NotYet,
    /// Nothing recorded: a data dir from before the record existed, or a founder that has not
    /// yet looked (founders are listed from the start).
    Unrecorded,
}

/// Bootstrap bookkeeping that lives beside the Raft state: the markers and the peers seen.
///
/// "Seen" means the peer is known to have held Raft state: it was announced to this node when
/// it bootstrapped, it answered a Raft RPC of this node, or it sent one. A peer that later asks
/// with an empty data dir must therefore have lost its data (see `bootstrap.rs`).
#[derive(Clone)]
pub struct BootstrapRecord {
    db: Arc<DB>,
    /// Peers already recorded durably, so the synced write happens once per peer and process.
    seen: Arc<Mutex<HashSet<NodeId>>>,
}

impl BootstrapRecord {
    pub fn new(log_store: &LogStore) -> Self {
        Self { db: log_store.db(), seen: Arc::new(Mutex::new(HashSet::new())) }
    }

    /// Whether this data directory already belongs to a cluster.
    pub fn is_bootstrapped(&self) -> io::Result<bool> {
        self.has_meta(KEY_BOOTSTRAPPED)
    }

    /// Durably marks this data directory as part of a cluster.
    pub fn mark_bootstrapped(&self) -> io::Result<()> {
        self.put_synced(&[KEY_BOOTSTRAPPED])
    }

    /// Durably marks that this node is about to hold Raft state with its founding peers not
    /// all told yet: until [`Self::clear_announce_pending`], it must not serve Raft.
    pub fn mark_announce_pending(&self) -> io::Result<()> {
        self.put_synced(&[KEY_ANNOUNCE_PENDING])
    }

    pub fn is_announce_pending(&self) -> io::Result<bool> {
        self.has_meta(KEY_ANNOUNCE_PENDING)
    }

    pub fn clear_announce_pending(&self) -> io::Result<()> {
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        self.db.delete_cf_opt(cf(&self.db, CF_META), KEY_ANNOUNCE_PENDING, &write_options).map_err(io_error)
    }

    /// The log index of the membership that removed this node, if it learned of one.
    pub fn removed_at(&self) -> io::Result<Option<u64>> {
        match self.db.get_cf(cf(&self.db, CF_META), KEY_REMOVED).map_err(io_error)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some),
        }
    }

    /// Durably records that the membership at `membership_index` removed this node, or
    /// (`None`) that it is a member again.
    pub fn set_removed_at(&self, membership_index: Option<u64>) -> io::Result<()> {
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        let meta = cf(&self.db, CF_META);
        let result = match membership_index {
            Some(index) => self.db.put_cf_opt(meta, KEY_REMOVED, codec::encode(&index)?, &write_options),
            None => self.db.delete_cf_opt(meta, KEY_REMOVED, &write_options),
        };
        result.map_err(io_error)
    }

    /// What this node knows of the memberships that listed it.
    pub fn member_since(&self) -> io::Result<MemberSince> {
        if let Some(bytes) = self.db.get_cf(cf(&self.db, CF_META), KEY_MEMBER_SINCE).map_err(io_error)? {
            return codec::decode(&bytes).map(MemberSince::Listed);
        }
        if self.has_meta(KEY_AWAITING_LISTING)? {
            return Ok(MemberSince::NotYet);
        }
        Ok(MemberSince::Unrecorded)
    }

    /// Durably records `membership` as one that listed this node, unless one is recorded already
    /// (and ends a join's wait for its first listing).
    pub fn note_member_since(&self, membership: LogId) -> io::Result<()> {
        if matches!(self.member_since()?, MemberSince::Listed(_)) {
            return Ok(());
        }
        let meta = cf(&self.db, CF_META);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(meta, KEY_MEMBER_SINCE, codec::encode(&membership)?);
        batch.delete_cf(meta, KEY_AWAITING_LISTING);
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        self.db.write_opt(batch, &write_options).map_err(io_error)
    }

    /// Durably marks that this node, with an empty data dir, is about to ask to join: until it
    /// sees itself listed, no membership proves that it was removed.
    pub fn mark_awaiting_listing(&self) -> io::Result<()> {
        if matches!(self.member_since()?, MemberSince::Listed(_)) {
            return Ok(());
        }
        self.put_synced(&[KEY_AWAITING_LISTING])
    }

    pub fn has_seen_peer(&self, peer: NodeId) -> io::Result<bool> {
        if self.seen.lock().unwrap_or_else(|p| p.into_inner()).contains(&peer) {
            return Ok(true);
        }
        self.has_meta(&peer_seen_key(peer))
    }

    /// Durably records that `peer` held Raft state. Returns only once the record is on disk,
    /// so a caller may then act on the peer's answer: whoever asks later will be told.
    pub async fn note_peer_seen(&self, peer: NodeId) -> io::Result<()> {
        if self.seen.lock().unwrap_or_else(|p| p.into_inner()).contains(&peer) {
            return Ok(());
        }
        let record = self.clone();
        // A synced write, once per peer per process: kept off the async workers.
        tokio::task::spawn_blocking(move || record.put_synced(&[&peer_seen_key(peer)]))
            .await
            .map_err(io::Error::other)??;
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(peer);
        Ok(())
    }

    fn has_meta(&self, key: &[u8]) -> io::Result<bool> {
        Ok(self.db.get_cf(cf(&self.db, CF_META), key).map_err(io_error)?.is_some())
    }

    /// Writes every key (value `1`) in one synced batch.
    fn put_synced(&self, keys: &[&[u8]]) -> io::Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for key in keys {
            batch.put_cf(cf(&self.db, CF_META), key, b"1");
        }
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        self.db.write_opt(batch, &write_options).map_err(io_error)
    }
}

fn peer_seen_key(peer: NodeId) -> Vec<u8> {
    let mut key = PREFIX_PEER_SEEN.to_vec();
    key.extend_from_slice(&peer.to_be_bytes());
    key
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // The families are created by `open_db`; a missing one is a programming error.
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} missing"))
}

pub(crate) fn io_error(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(error)
}
