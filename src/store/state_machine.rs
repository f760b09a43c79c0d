//! The replicated key-value state machine, applied from committed Raft log entries.
//!
//! Apply is deterministic: the same entries give the same state and the same results on every
//! replica. A failed precondition is a result; an I/O error stops the node (openraft turns a
//! storage error into a fatal error).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use super::cf;
use super::codec::decode;
use super::codec::encode;
use super::io_error;
use super::snapshot::SnapshotBuilder;
use super::snapshot::SnapshotHandle;
use super::snapshot::SnapshotStore;
use super::snapshot_format::Record;
use super::snapshot_format::SnapshotReader;
use super::CF_KV;
use super::CF_SM;
use crate::limits;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Precondition;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const PREFIX_CLIENT_ADDR: &[u8] = b"client_addr/";
/// Present while a snapshot install is replacing the state (its value: the snapshot's
/// metadata). Found at start-up, it means the install was cut off and is redone.
pub(crate) const KEY_INSTALLING: &[u8] = b"installing";

/// One key's stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// Revision (log index) of the write that created the key since it last was absent.
    pub create_revision: u64,
    /// Revision (log index) of the last write to the key.
    pub mod_revision: u64,
    pub value: Bytes,
}

/// The state machine handed to openraft. Reads go through [`KvReader`] instead.
pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotStore,
    installs: InstallCounter,
}

/// A seqlock over snapshot installs: odd while one runs. An install replaces the state in
/// several batches, so a read that overlaps one could see a mix; readers check the counter
/// before and after and refuse such a read.
#[derive(Clone, Default)]
pub(crate) struct InstallCounter(Arc<AtomicU64>);

impl InstallCounter {
    fn begin(&self) {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        assert!(before % 2 == 0, "snapshot installs overlap");
    }

    fn end(&self) {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        assert!(before % 2 == 1, "snapshot install ended twice");
    }

    /// Runs `read` and returns its result unless an install ran at any time during it.
    fn read<T>(&self, read: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let before = self.0.load(Ordering::Acquire);
        let result = read()?;
        if before % 2 == 1 || self.0.load(Ordering::Acquire) != before {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "a snapshot was being installed; retry"));
        }
        Ok(result)
    }
}

impl StateMachine {
    /// Opens the state machine, first finishing an install a crash cut off.
    pub(crate) fn new(db: Arc<DB>, snapshots: SnapshotStore) -> io::Result<Self> {
        let state_machine = Self { db, snapshots, installs: InstallCounter::default() };
        state_machine.repair_interrupted_install()?;
        Ok(state_machine)
    }

    /// The snapshot directory, for receiving snapshots from the leader.
    pub(crate) fn snapshots(&self) -> SnapshotStore {
        self.snapshots.clone()
    }

    /// A read handle on the applied state, for the API layer (through the node).
    pub fn reader(&self) -> KvReader {
        KvReader { db: self.db.clone(), installs: self.installs.clone() }
    }

    fn repair_interrupted_install(&self) -> io::Result<()> {
        let Some(bytes) = self.db.get_cf(cf(&self.db, CF_SM), KEY_INSTALLING).map_err(io_error)? else {
            return Ok(());
        };
        let interrupted: SnapshotMeta = decode(&bytes)?;
        // The snapshot file is made current before the state is touched, so it is on disk.
        let current = self
            .snapshots
            .current()?
            .ok_or_else(|| io::Error::other("a snapshot install was interrupted and the snapshot file is missing"))?;
        if current.meta != interrupted {
            return Err(io::Error::other(format!(
                "a snapshot install of {:?} was interrupted but the current snapshot is {:?}",
                interrupted.last_log_id, current.meta.last_log_id
            )));
        }
        tracing::warn!(last_log_id = ?interrupted.last_log_id, "redoing a snapshot install cut off by a crash");
        install_state(&self.db, &self.installs, &current.meta, &current.snapshot)
    }
}

/// A key's revisions as seen while applying one batch: earlier entries of the same batch are
/// not in RocksDB yet, so they are tracked here. `None` means absent.
type Overlay = HashMap<String, Option<(u64, u64)>>;

impl StateMachine {
    fn current_revisions(&self, overlay: &Overlay, key: &str) -> io::Result<Option<(u64, u64)>> {
        if let Some(state) = overlay.get(key) {
            return Ok(*state);
        }
        let stored = get_stored(&self.db, key)?;
        Ok(stored.map(|v| (v.create_revision, v.mod_revision)))
    }

    fn apply_command(
        &self,
        batch: &mut WriteBatch,
        overlay: &mut Overlay,
        revision: u64,
        command: &Command,
    ) -> io::Result<CommandResult> {
        let kv = cf(&self.db, CF_KV);
        match command {
            Command::Put { key, value, precondition } => {
                let current = self.current_revisions(overlay, key)?;
                if !precondition_holds(*precondition, current) {
                    return Ok(CommandResult::PreconditionFailed { current_revision: current.map(|c| c.1) });
                }
                let create_revision = current.map_or(revision, |c| c.0);
                let stored = StoredValue { create_revision, mod_revision: revision, value: value.clone() };
                batch.put_cf(kv, key.as_bytes(), encode(&stored)?);
                overlay.insert(key.clone(), Some((create_revision, revision)));
                Ok(CommandResult::Put { revision })
            }
            Command::Delete { key, precondition } => {
                let current = self.current_revisions(overlay, key)?;
                if !precondition_holds(*precondition, current) {
                    return Ok(CommandResult::PreconditionFailed { current_revision: current.map(|c| c.1) });
                }
                if current.is_some() {
                    batch.delete_cf(kv, key.as_bytes());
                    overlay.insert(key.clone(), None);
                }
                Ok(CommandResult::Delete { revision, deleted: current.is_some() })
            }
            Command::RegisterClientAddr { node_id, client_addr } => {
                batch.put_cf(cf(&self.db, CF_SM), client_addr_key(*node_id), client_addr.as_bytes());
                Ok(CommandResult::Empty)
            }
        }
    }
}

fn precondition_holds(precondition: Precondition, current: Option<(u64, u64)>) -> bool {
    match precondition {
        Precondition::None => true,
        Precondition::Exists => current.is_some(),
        Precondition::Absent => current.is_none(),
        Precondition::ModRevision(expected) => current.is_some_and(|(_, mod_revision)| mod_revision == expected),
    }
}

pub(crate) fn client_addr_key(node_id: NodeId) -> Vec<u8> {
    let mut key = PREFIX_CLIENT_ADDR.to_vec();
    key.extend_from_slice(&node_id.to_be_bytes());
    key
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotHandle;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let reader = self.reader();
        Ok((reader.sm_meta(KEY_APPLIED)?, reader.sm_meta(KEY_MEMBERSHIP)?.unwrap_or_default()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // One WriteBatch for the whole run of entries: the state and its applied log id always
        // move together. Not synced: the log is durable, and a crash that loses the tail of
        // this batch is repaired by re-applying from the log (see DESIGN.md).
        let mut batch = WriteBatch::default();
        let mut overlay = Overlay::new();
        let mut responses = Vec::new();
        let mut last_applied: Option<LogId> = None;
        let mut last_membership: Option<StoredMembership> = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            if let Some(previous) = &last_applied {
                assert!(previous.index() < log_id.index(), "entries applied out of order");
            }
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::Empty,
                EntryPayload::Normal(command) => {
                    self.apply_command(&mut batch, &mut overlay, log_id.index(), command)?
                }
                EntryPayload::Membership(membership) => {
                    last_membership = Some(StoredMembership::new(Some(log_id), membership.clone()));
                    CommandResult::Empty
                }
            };
            last_applied = Some(log_id);
            if let Some(responder) = responder {
                responses.push((responder, result));
            }
        }
        let Some(last_applied) = last_applied else { return Ok(()) };
        let sm = cf(&self.db, CF_SM);
        batch.put_cf(sm, KEY_APPLIED, encode(&last_applied)?);
        if let Some(membership) = &last_membership {
            batch.put_cf(sm, KEY_MEMBERSHIP, encode(membership)?);
        }
        self.db.write(batch).map_err(io_error)?;
        // Answer only once the batch is visible to local reads.
        for (responder, result) in responses {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.db.clone(), self.snapshots.clone())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotHandle) -> Result<(), io::Error> {
        // File moves and a large write: off the async workers.
        let (db, snapshots, installs, meta) =
            (self.db.clone(), self.snapshots.clone(), self.installs.clone(), meta.clone());
        tokio::task::spawn_blocking(move || {
            let mut snapshot = snapshot;
            // The file first: if a crash cuts the install short, start-up finds the marker and
            // redoes it from this file. openraft has decided to install it, so it replaces
            // even a newer file a concurrent build left (the marker must match the file).
            snapshots.promote(&meta, &mut snapshot, true)?;
            install_state(&db, &installs, &meta, &snapshot)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<crate::types::Snapshot>, io::Error> {
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || snapshots.current()).await.map_err(io::Error::other)?
    }
}

/// Replaces the whole state with a snapshot's, streaming it in bounded batches.
///
/// Atomic as far as anyone can tell: the first batch writes the `installing` marker and
/// clears the state, the last one (synced) writes the applied log id and removes the marker.
/// All column families share one WAL and recovery keeps a prefix of it, so after a crash
/// either nothing of the install survived (the old state is intact) or the marker did (and
/// start-up redoes the install). Local reads overlapping the install are refused
/// ([`InstallCounter`]).
fn install_state(db: &DB, installs: &InstallCounter, meta: &SnapshotMeta, snapshot: &SnapshotHandle) -> io::Result<()> {
    let mut reader = SnapshotReader::new(snapshot.reader()?)?;
    if reader.meta() != meta {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot file does not match its metadata"));
    }
    let kv = cf(db, CF_KV);
    let sm = cf(db, CF_SM);
    installs.begin();
    let result = (|| {
        let mut batch = WriteBatch::default();
        batch.put_cf(sm, KEY_INSTALLING, encode(meta)?);
        batch.delete_cf(sm, KEY_APPLIED);
        batch.delete_range_cf(kv, b"".as_slice(), [0xFFu8; 1].as_slice());
        // `client_addr0` is the first key after every `client_addr/…` key ('0' follows '/').
        batch.delete_range_cf(sm, PREFIX_CLIENT_ADDR, b"client_addr0".as_slice());
        let mut keys = 0u64;
        while let Some(record) = reader.next_record()? {
            match record {
                Record::Key { key, value } => {
                    batch.put_cf(kv, key.as_bytes(), encode(&value)?);
                    keys += 1;
                }
                Record::ClientAddr { node_id, client_addr } => {
                    batch.put_cf(sm, client_addr_key(node_id), client_addr.as_bytes())
                }
                Record::Meta(_) | Record::End { .. } => unreachable!("the reader yields state records only"),
            }
            if batch.size_in_bytes() >= limits::SNAPSHOT_INSTALL_BATCH_BYTES {
                db.write(std::mem::take(&mut batch)).map_err(io_error)?;
            }
        }
        match &meta.last_log_id {
            Some(log_id) => batch.put_cf(sm, KEY_APPLIED, encode(log_id)?),
            None => batch.delete_cf(sm, KEY_APPLIED),
        }
        batch.put_cf(sm, KEY_MEMBERSHIP, encode(&meta.last_membership)?);
        batch.delete_cf(sm, KEY_INSTALLING);
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        db.write_opt(batch, &write_options).map_err(io_error)?;
        tracing::info!(last_log_id = ?meta.last_log_id, keys, "snapshot installed");
        Ok(())
    })();
    // A failed install leaves a partial state: openraft stops the node, and local reads stay
    // refused (the counter stays odd) until a restart redoes the install.
    if result.is_ok() {
        installs.end();
    }
    result
}

fn get_stored(db: &DB, key: &str) -> io::Result<Option<StoredValue>> {
    match db.get_pinned_cf(cf(db, CF_KV), key.as_bytes()).map_err(io_error)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes).map(Some),
    }
}

/// A page of a listing: the items, and the first key of the next page when there is one.
pub type Page = (Vec<(String, StoredValue)>, Option<String>);

/// Read access to the applied key-value state. Cheap to clone.
///
/// Every read fails with [`io::ErrorKind::Interrupted`] when a snapshot install overlapped it.
#[derive(Clone)]
pub struct KvReader {
    db: Arc<DB>,
    installs: InstallCounter,
}

impl KvReader {
    pub fn get(&self, key: &str) -> io::Result<Option<StoredValue>> {
        self.installs.read(|| get_stored(&self.db, key))
    }

    /// Up to `limit` keys with `prefix`, starting at `start` (inclusive), in byte order, and
    /// about `max_bytes` of values at most. Returns the page and, when more keys follow, the
    /// first key of the next page.
    pub fn list(&self, prefix: &str, start: &str, limit: usize, max_bytes: usize) -> io::Result<Page> {
        self.installs.read(|| self.list_now(prefix, start, limit, max_bytes))
    }

    fn list_now(&self, prefix: &str, start: &str, limit: usize, max_bytes: usize) -> io::Result<Page> {
        let from = if start.as_bytes() > prefix.as_bytes() { start } else { prefix };
        let iterator =
            self.db.iterator_cf(cf(&self.db, CF_KV), IteratorMode::From(from.as_bytes(), rocksdb::Direction::Forward));
        let mut page = Vec::new();
        let mut page_bytes = 0;
        for item in iterator {
            let (key, bytes) = item.map_err(io_error)?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8(key.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if page.len() == limit || (!page.is_empty() && page_bytes + bytes.len() > max_bytes) {
                return Ok((page, Some(key)));
            }
            page_bytes += bytes.len();
            page.push((key, decode(&bytes)?));
        }
        Ok((page, None))
    }

    /// Calls `visit` for every key of one point-in-time view, in key order, until it returns
    /// false. Blocking: run it off the async workers.
    pub fn for_each_in_snapshot(&self, mut visit: impl FnMut(&str, &StoredValue) -> bool) -> io::Result<()> {
        self.installs.read(|| {
            let view = self.db.snapshot();
            for item in view.iterator_cf(cf(&self.db, CF_KV), IteratorMode::Start) {
                let (key, bytes) = item.map_err(io_error)?;
                let key = std::str::from_utf8(&key).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if !visit(key, &decode(&bytes)?) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Bytes in RocksDB per column family (SST files plus memtables), for metrics.
    pub fn storage_sizes(&self) -> Vec<(String, u64)> {
        [super::CF_LOG, super::CF_META, CF_KV, CF_SM]
            .iter()
            .map(|name| {
                let family = cf(&self.db, name);
                let property = |p: &str| self.db.property_int_value_cf(family, p).ok().flatten().unwrap_or(0);
                (
                    name.to_string(),
                    property("rocksdb.total-sst-files-size") + property("rocksdb.cur-size-all-mem-tables"),
                )
            })
            .collect()
    }

    /// The client address each member registered, by node id.
    pub fn client_addrs(&self) -> io::Result<BTreeMap<NodeId, String>> {
        self.installs.read(|| self.client_addrs_now())
    }

    fn client_addrs_now(&self) -> io::Result<BTreeMap<NodeId, String>> {
        let mut addrs = BTreeMap::new();
        let iterator = self.db.prefix_iterator_cf(cf(&self.db, CF_SM), PREFIX_CLIENT_ADDR);
        for item in iterator {
            let (key, value) = item.map_err(io_error)?;
            let Some(id_bytes) = key.strip_prefix(PREFIX_CLIENT_ADDR) else { break };
            let Ok(id_bytes) = <[u8; 8]>::try_from(id_bytes) else { break };
            addrs.insert(NodeId::from_be_bytes(id_bytes), String::from_utf8_lossy(&value).into_owned());
        }
        Ok(addrs)
    }

    fn sm_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.get_cf(cf(&self.db, CF_SM), key).map_err(io_error)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }
}
