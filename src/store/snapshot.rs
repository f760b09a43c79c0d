//! Snapshots of the state machine: built from a RocksDB point-in-time view, kept in one file.
//!
//! The snapshot is the whole key-value state encoded with postcard and held in memory; this is
//! simple and fine for small stores. Streaming checkpoints for large states are future work.

use std::collections::BTreeMap;
use std::io;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::RaftSnapshotBuilder;
use rocksdb::IteratorMode;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use super::cf;
use super::codec::decode;
use super::codec::encode;
use super::io_error;
use super::state_machine::StoredValue;
use super::state_machine::KEY_APPLIED;
use super::state_machine::KEY_MEMBERSHIP;
use super::state_machine::PREFIX_CLIENT_ADDR;
use super::CF_KV;
use super::CF_SM;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Snapshot;
use crate::types::SnapshotData;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// The state a snapshot carries besides its metadata.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SnapshotContents {
    pub(crate) kv: Vec<(String, StoredValue)>,
    pub(crate) client_addrs: BTreeMap<NodeId, String>,
}

pub(crate) fn decode_contents(data: &[u8]) -> io::Result<SnapshotContents> {
    decode(data)
}

/// Builds a snapshot beside `apply`: everything is read from one RocksDB snapshot, so the
/// state, its applied log id and its membership belong to the same instant.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    file: SnapshotFile,
}

impl SnapshotBuilder {
    pub(crate) fn new(db: Arc<DB>, file: SnapshotFile) -> Self {
        Self { db, file }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // A full scan, encode and fsync: kept off the async workers so heartbeats keep flowing.
        let (db, file) = (self.db.clone(), self.file.clone());
        tokio::task::spawn_blocking(move || build(&db, &file)).await.map_err(io::Error::other)?
    }
}

fn build(db: &DB, file: &SnapshotFile) -> io::Result<Snapshot> {
    {
        let view = db.snapshot();
        let sm = cf(db, CF_SM);
        let read_meta = |key: &[u8]| -> io::Result<Option<Vec<u8>>> { view.get_cf(sm, key).map_err(io_error) };
        let last_log_id: Option<LogId> = read_meta(KEY_APPLIED)?.map(|b| decode(&b)).transpose()?;
        let last_membership: StoredMembership =
            read_meta(KEY_MEMBERSHIP)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
        let mut contents = SnapshotContents::default();
        for item in view.iterator_cf(cf(db, CF_KV), IteratorMode::Start) {
            let (key, bytes) = item.map_err(io_error)?;
            let key = String::from_utf8(key.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            contents.kv.push((key, decode(&bytes)?));
        }
        for item in view.iterator_cf(sm, IteratorMode::From(PREFIX_CLIENT_ADDR, rocksdb::Direction::Forward)) {
            let (key, value) = item.map_err(io_error)?;
            let Some(id_bytes) = key.strip_prefix(PREFIX_CLIENT_ADDR) else { break };
            let Ok(id_bytes) = <[u8; 8]>::try_from(id_bytes) else { break };
            contents.client_addrs.insert(NodeId::from_be_bytes(id_bytes), String::from_utf8_lossy(&value).into_owned());
        }
        drop(view);
        let data = encode(&contents)?;
        let meta = SnapshotMeta { last_log_id, last_membership };
        file.save(&meta, &data)?;
        Ok(Snapshot { meta, snapshot: io::Cursor::new(data) })
    }
}

/// The current snapshot on disk, replaced atomically (write, fsync, rename, fsync directory).
///
/// A build (beside apply) and an install (from the leader) can finish concurrently: writes are
/// serialized, and a snapshot never replaces a newer one.
#[derive(Clone)]
pub(crate) struct SnapshotFile {
    path: PathBuf,
    /// Serializes writers; holds the last log id of the snapshot on disk (`None`: none yet).
    newest: Arc<Mutex<Option<LogId>>>,
}

impl SnapshotFile {
    pub(crate) fn new(path: PathBuf) -> io::Result<Self> {
        let file = Self { path, newest: Arc::new(Mutex::new(None)) };
        let on_disk = file.load()?.and_then(|snapshot| snapshot.meta.last_log_id);
        *file.newest.lock().unwrap_or_else(|p| p.into_inner()) = on_disk;
        Ok(file)
    }

    pub(crate) fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if newest.is_some() && meta.last_log_id < *newest {
            tracing::debug!(?meta.last_log_id, ?newest, "not replacing a newer snapshot");
            return Ok(());
        }
        let bytes = encode(&(meta, data))?;
        let temporary = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        if let Some(directory) = self.path.parent() {
            std::fs::File::open(directory)?.sync_all()?;
        }
        *newest = meta.last_log_id;
        Ok(())
    }

    pub(crate) fn load(&self) -> io::Result<Option<Snapshot>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let (meta, data): (SnapshotMeta, Vec<u8>) = decode(&bytes)?;
        Ok(Some(Snapshot { meta, snapshot: io::Cursor::new(data) }))
    }
}
