//! Durable storage of one node: a single RocksDB with one column family per concern.
//!
//! | column family | contents |
//! |---|---|
//! | `log` | Raft log entries, key = big-endian index |
//! | `meta` | Raft metadata: vote, committed log id, last purged log id, bootstrap marker, peers seen |
//! | `kv` | the key-value state: key → modification revision + value |
//! | `sm` | state-machine metadata: last applied log id, last membership, client addresses, the marker of a snapshot install in progress |
//!
//! Snapshots live beside the database in `snapshots/` (see `snapshot.rs`).
//!
//! All column families share one write-ahead log. RocksDB syncs the WAL as a whole and
//! recovers a prefix of it after a crash, so a synced write makes every earlier write durable
//! too and no later write can survive without the earlier ones. The ordering rules of
//! openraft's storage contract follow from that (see `DESIGN.md`).

mod codec;
mod log_store;
mod snapshot;
mod snapshot_format;
mod state_machine;

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

pub use log_store::LogStore;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;
pub use snapshot::IncomingSnapshot;
pub use snapshot::SnapshotHandle;
pub(crate) use snapshot::SnapshotStore;
pub use state_machine::KvReader;
pub use state_machine::Page;
pub use state_machine::StateMachine;
pub use state_machine::StoredValue;

use crate::types::NodeId;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_SM: &str = "sm";

/// Raft metadata keys in `meta`.
pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// Present once this node has bootstrapped or joined a cluster; restarts resume from it.
pub(crate) const KEY_BOOTSTRAPPED: &[u8] = b"bootstrapped";
/// Prefix of `peer_seen/<id>`: the peer once answered a Raft RPC successfully, so it held
/// Raft state. A peer that later starts with an empty data dir must have been wiped.
pub(crate) const PREFIX_PEER_SEEN: &[u8] = b"peer_seen/";

/// Opens (or creates) the node's RocksDB and returns its log store and state machine.
pub async fn open(data_dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    let db = open_db(data_dir)?;
    let log_store = LogStore::new(db.clone())?;
    let snapshots = SnapshotStore::open(data_dir.join("snapshots"))?;
    let state_machine = StateMachine::new(db, snapshots)?;
    Ok((log_store, state_machine))
}

fn open_db(data_dir: &Path) -> io::Result<Arc<DB>> {
    std::fs::create_dir_all(data_dir)?;
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Values are small and the build carries no codecs: be explicit rather than rely on a
    // default that may name a codec this build lacks.
    options.set_compression_type(rocksdb::DBCompressionType::None);
    // Recover the longest consistent prefix of the WAL: unsynced tails are expected after a
    // crash, and DESIGN.md's ordering argument relies on prefix recovery.
    options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    let families = [CF_LOG, CF_META, CF_KV, CF_SM].map(|name| {
        let mut cf_options = Options::default();
        cf_options.set_compression_type(rocksdb::DBCompressionType::None);
        ColumnFamilyDescriptor::new(name, cf_options)
    });
    let db = DB::open_cf_descriptors(&options, db_path(data_dir), families).map_err(io_error)?;
    Ok(Arc::new(db))
}

fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Bootstrap bookkeeping that lives beside the Raft state: the marker and the peers seen.
#[derive(Clone)]
pub struct BootstrapRecord {
    db: Arc<DB>,
}

impl BootstrapRecord {
    pub fn new(log_store: &LogStore) -> Self {
        Self { db: log_store.db() }
    }

    /// Whether this data directory already belongs to a cluster.
    pub fn is_bootstrapped(&self) -> io::Result<bool> {
        Ok(self.db.get_cf(cf(&self.db, CF_META), KEY_BOOTSTRAPPED).map_err(io_error)?.is_some())
    }

    /// Durably marks this data directory as part of a cluster.
    pub fn mark_bootstrapped(&self) -> io::Result<()> {
        self.put_synced(KEY_BOOTSTRAPPED.to_vec())
    }

    pub fn has_seen_peer(&self, peer: NodeId) -> io::Result<bool> {
        let key = peer_seen_key(peer);
        Ok(self.db.get_cf(cf(&self.db, CF_META), key).map_err(io_error)?.is_some())
    }

    /// Durably records that `peer` held Raft state (it answered a Raft RPC successfully).
    pub fn mark_peer_seen(&self, peer: NodeId) -> io::Result<()> {
        self.put_synced(peer_seen_key(peer))
    }

    fn put_synced(&self, key: Vec<u8>) -> io::Result<()> {
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        self.db.put_cf_opt(cf(&self.db, CF_META), key, b"1", &write_options).map_err(io_error)
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
