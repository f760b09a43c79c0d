//! Snapshots of the state machine: built from a RocksDB checkpoint into a snapshot file
//! (`quorumkv_wire::snapshot`), kept as one current file per node, and streamed to followers.
//!
//! Files in `<data-dir>/snapshots/`:
//!
//! | name | what |
//! |---|---|
//! | `current.qkvsnap` | the current snapshot, replaced by an atomic rename |
//! | `checkpoint-N/` | a RocksDB checkpoint a build reads from; deleted when the build ends |
//! | `build-N.tmp`, `incoming-N.tmp` | a snapshot being built or received |
//!
//! Leftovers of a crash (`checkpoint-*`, `*.tmp`) are removed at start-up.

use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::RaftSnapshotBuilder;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::DB;

use super::cf;
use super::codec::decode;
use super::io_error;
use super::leases::PREFIX_LEASE;
use super::state_machine::KEY_APPLIED;
use super::state_machine::KEY_MEMBERSHIP;
use super::state_machine::PREFIX_AUTH;
use super::state_machine::PREFIX_CLIENT_ADDR;
use super::CF_KV;
use super::CF_LOG;
use super::CF_META;
use super::CF_SM;
use crate::limits;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use quorumkv_wire::snapshot::SnapshotReader;
use quorumkv_wire::snapshot::SnapshotWriter;

const CURRENT: &str = "current.qkvsnap";

/// openraft's `SnapshotData`: a complete, verified snapshot file, open for reading.
///
/// The file is opened when the handle is made, so a newer snapshot renamed over the path (or
/// the path deleted) later does not change what this handle reads.
#[derive(Debug)]
pub struct SnapshotHandle {
    path: PathBuf,
    file: File,
    /// A built or received file not (yet) made current: deleted with the handle, so a
    /// snapshot openraft decides not to install leaves nothing behind.
    temporary: bool,
}

impl SnapshotHandle {
    pub(crate) fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        Ok(Self { path, file, temporary: false })
    }

    fn open_temporary(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        Ok(Self { path, file, temporary: true })
    }

    /// A reader from the first byte, independent of any other reader of this handle.
    pub fn reader(&self) -> io::Result<impl io::Read + '_> {
        Ok(PositionalReader { file: &self.file, offset: 0 })
    }

    /// A second handle on the same file, for an async reader (`tokio::fs::File`).
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

impl Drop for SnapshotHandle {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads with `pread`, so handles never share a file offset.
struct PositionalReader<'a> {
    file: &'a File,
    offset: u64,
}

impl io::Read for PositionalReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let read = self.file.read_at(buffer, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// The node's snapshot directory.
///
/// A build (beside apply) and an install (from the leader) can finish at the same time:
/// promotions to current are serialized, and a snapshot never replaces a newer one.
#[derive(Clone)]
pub(crate) struct SnapshotStore {
    directory: PathBuf,
    /// Serializes promotions; holds the last log id of the current snapshot (`None`: none).
    newest: Arc<Mutex<Option<LogId>>>,
    next_name: Arc<AtomicU64>,
}

impl SnapshotStore {
    /// Opens the directory, removing leftovers of an interrupted build or transfer.
    pub(crate) fn open(directory: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&directory)?;
        for entry in std::fs::read_dir(&directory)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("checkpoint-") {
                std::fs::remove_dir_all(entry.path())?;
            } else if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
            }
        }
        let store = Self { directory, newest: Arc::new(Mutex::new(None)), next_name: Arc::new(AtomicU64::new(0)) };
        let on_disk = store.current()?.and_then(|snapshot| snapshot.meta.last_log_id);
        *store.newest.lock().unwrap_or_else(|p| p.into_inner()) = on_disk;
        Ok(store)
    }

    pub(crate) fn current_path(&self) -> PathBuf {
        self.directory.join(CURRENT)
    }

    /// A fresh path in the snapshot directory, e.g. `incoming-3.tmp`.
    pub(crate) fn temporary_path(&self, kind: &str, suffix: &str) -> PathBuf {
        let n = self.next_name.fetch_add(1, Ordering::Relaxed);
        self.directory.join(format!("{kind}-{n}{suffix}"))
    }

    /// The current snapshot, with its metadata read from the file's first record.
    pub(crate) fn current(&self) -> io::Result<Option<Snapshot>> {
        let handle = match SnapshotHandle::open(self.current_path()) {
            Ok(handle) => handle,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let meta = SnapshotReader::new(handle.reader()?)?.meta().clone();
        Ok(Some(Snapshot { meta, snapshot: handle }))
    }

    /// Makes `handle`'s file the current snapshot: renamed into place when it is one of this
    /// directory's temporary files, copied otherwise. Unless `replace_newer`, a newer current
    /// snapshot is kept and `handle` stays temporary.
    pub(crate) fn promote(
        &self,
        meta: &SnapshotMeta,
        handle: &mut SnapshotHandle,
        replace_newer: bool,
    ) -> io::Result<()> {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if !replace_newer && newest.is_some() && meta.last_log_id < *newest {
            tracing::debug!(?meta.last_log_id, ?newest, "not replacing a newer snapshot");
            return Ok(());
        }
        let current = self.current_path();
        if handle.path == current {
            return Ok(());
        }
        if handle.path.parent() == Some(self.directory.as_path()) {
            std::fs::rename(&handle.path, &current)?;
        } else {
            let copy = self.temporary_path("copy", ".tmp");
            let copied = (|| {
                let mut out = File::options().write(true).create_new(true).open(&copy)?;
                io::copy(&mut handle.reader()?, &mut out)?;
                out.sync_all()?;
                std::fs::rename(&copy, &current)
            })();
            if let Err(error) = copied {
                let _ = std::fs::remove_file(&copy);
                return Err(error);
            }
            if handle.temporary {
                let _ = std::fs::remove_file(&handle.path);
            }
        }
        File::open(&self.directory)?.sync_all()?;
        handle.path = current;
        handle.temporary = false;
        *newest = meta.last_log_id;
        Ok(())
    }
}

/// Builds a snapshot beside `apply`, from a RocksDB checkpoint: a consistent point-in-time
/// copy of the database made of hard links, so the state, its applied log id and its
/// membership belong to the same instant, and the live database keeps no old versions
/// pinned while a large state is written out.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    store: SnapshotStore,
}

impl SnapshotBuilder {
    pub(crate) fn new(db: Arc<DB>, store: SnapshotStore) -> Self {
        Self { db, store }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotHandle;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // A checkpoint, a full scan and an fsync: kept off the async workers.
        let (db, store) = (self.db.clone(), self.store.clone());
        tokio::task::spawn_blocking(move || build(&db, &store)).await.map_err(io::Error::other)?
    }
}

fn build(db: &DB, store: &SnapshotStore) -> io::Result<Snapshot> {
    let checkpoint_path = store.temporary_path("checkpoint", "");
    rocksdb::checkpoint::Checkpoint::new(db)
        .and_then(|checkpoint| checkpoint.create_checkpoint(&checkpoint_path))
        .map_err(io_error)?;
    let file_path = store.temporary_path("build", ".tmp");
    let written = write_from_checkpoint(&checkpoint_path, &file_path);
    if let Err(error) = std::fs::remove_dir_all(&checkpoint_path) {
        // Only disk space: start-up removes leftover checkpoints.
        tracing::warn!(%error, path = %checkpoint_path.display(), "cannot remove a snapshot checkpoint");
    }
    let meta = match written {
        Ok(meta) => meta,
        Err(error) => {
            let _ = std::fs::remove_file(&file_path);
            return Err(error);
        }
    };
    // Not made current (a newer snapshot was installed meanwhile): deleted with the handle.
    let mut handle = SnapshotHandle::open_temporary(file_path)?;
    store.promote(&meta, &mut handle, false)?;
    tracing::info!(last_log_id = ?meta.last_log_id, bytes = handle.file.metadata()?.len(), "snapshot built");
    Ok(Snapshot { meta, snapshot: handle })
}

/// Writes the snapshot file of the state in the checkpoint at `checkpoint_path`.
fn write_from_checkpoint(checkpoint_path: &Path, file_path: &Path) -> io::Result<SnapshotMeta> {
    let mut options = Options::default();
    options.set_compression_type(rocksdb::DBCompressionType::None);
    // Counted in the descriptor reserve (RocksDB's default is no limit).
    options.set_max_open_files(crate::limits::SNAPSHOT_VIEW_MAX_OPEN_FILES);
    let view = DB::open_cf_for_read_only(&options, checkpoint_path, [CF_LOG, CF_META, CF_KV, CF_SM], false)
        .map_err(io_error)?;
    let sm = cf(&view, CF_SM);
    let read_meta = |key: &[u8]| -> io::Result<Option<Vec<u8>>> { view.get_cf(sm, key).map_err(io_error) };
    let last_log_id: Option<LogId> = read_meta(KEY_APPLIED)?.map(|b| decode(&b)).transpose()?;
    let last_membership: StoredMembership =
        read_meta(KEY_MEMBERSHIP)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
    let meta = SnapshotMeta { last_log_id, last_membership };
    let mut writer = SnapshotWriter::create(file_path, &meta)?;
    for item in view.iterator_cf(cf(&view, CF_KV), IteratorMode::Start) {
        let (key, bytes) = item.map_err(io_error)?;
        let key = String::from_utf8(key.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        writer.write_key(key, decode(&bytes)?)?;
    }
    for item in view.iterator_cf(sm, IteratorMode::From(PREFIX_CLIENT_ADDR, rocksdb::Direction::Forward)) {
        let (key, value) = item.map_err(io_error)?;
        let Some(id_bytes) = key.strip_prefix(PREFIX_CLIENT_ADDR) else { break };
        let Ok(id_bytes) = <[u8; 8]>::try_from(id_bytes) else { break };
        writer.write_client_addr(NodeId::from_be_bytes(id_bytes), String::from_utf8_lossy(&value).into_owned())?;
    }
    for item in view.iterator_cf(sm, IteratorMode::From(PREFIX_AUTH, rocksdb::Direction::Forward)) {
        let (key, value) = item.map_err(io_error)?;
        if !key.starts_with(PREFIX_AUTH) {
            break;
        }
        writer.write_auth(key.to_vec(), value.to_vec())?;
    }
    for item in view.iterator_cf(sm, IteratorMode::From(PREFIX_LEASE, rocksdb::Direction::Forward)) {
        let (key, value) = item.map_err(io_error)?;
        if !key.starts_with(PREFIX_LEASE) {
            break;
        }
        writer.write_lease(key.to_vec(), value.to_vec())?;
    }
    writer.finish()?;
    Ok(meta)
}

/// A snapshot arriving from the leader, written to a temporary file as its bytes come in.
/// Dropped before [`IncomingSnapshot::finish`] (a failed or abandoned transfer), it deletes
/// its file.
pub struct IncomingSnapshot {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    received_bytes: u64,
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl IncomingSnapshot {
    pub(crate) async fn create(store: &SnapshotStore) -> io::Result<Self> {
        let path = store.temporary_path("incoming", ".tmp");
        let file = tokio::fs::File::options().write(true).create_new(true).open(&path).await?;
        Ok(Self { path, file: Some(file), received_bytes: 0 })
    }

    /// Appends the next piece of the stream, refusing a snapshot over the size limit.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.received_bytes += bytes.len() as u64;
        if self.received_bytes > limits::MAX_SNAPSHOT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot over the limit of {} bytes", limits::MAX_SNAPSHOT_BYTES),
            ));
        }
        match &mut self.file {
            Some(file) => file.write_all(bytes).await,
            None => Err(io::Error::other("snapshot file already finished")),
        }
    }

    /// Makes the file durable and checks all of it (framing, order, checksum). Only a
    /// snapshot that passes is handed to openraft: a bad one failing inside openraft's
    /// install would stop the node.
    pub async fn finish(mut self) -> io::Result<Snapshot> {
        use tokio::io::AsyncWriteExt;
        let path = self.path.clone();
        let Some(mut file) = self.file.take() else {
            return Err(io::Error::other("snapshot file already finished"));
        };
        let finished = async {
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            let verify_path = path.clone();
            tokio::task::spawn_blocking(move || {
                let handle = SnapshotHandle::open_temporary(verify_path)?;
                let meta = SnapshotReader::new(handle.reader()?)?.verify()?;
                Ok::<_, io::Error>(Snapshot { meta, snapshot: handle })
            })
            .await
            .map_err(io::Error::other)?
        };
        let result = finished.await;
        if result.is_err() {
            // Also when the handle was never made; removing twice is harmless.
            let _ = tokio::fs::remove_file(&path).await;
        }
        result
    }
}
