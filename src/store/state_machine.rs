//! The replicated key-value state machine, applied from committed Raft log entries.
//!
//! Apply is deterministic: the same entries give the same state and the same results on every
//! replica. A failed precondition is a result; an I/O error stops the node (openraft turns a
//! storage error into a fatal error).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
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
use super::snapshot::SnapshotFile;
use super::CF_KV;
use super::CF_SM;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Precondition;
use crate::types::SnapshotData;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const PREFIX_CLIENT_ADDR: &[u8] = b"client_addr/";

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
    snapshot_file: SnapshotFile,
}

impl StateMachine {
    pub(crate) fn new(db: Arc<DB>, snapshot_path: PathBuf) -> io::Result<Self> {
        Ok(Self { db, snapshot_file: SnapshotFile::new(snapshot_path)? })
    }

    /// A read handle on the applied state, for the API layer (through the node).
    pub fn reader(&self) -> KvReader {
        KvReader { db: self.db.clone() }
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
        let stored = KvReader { db: self.db.clone() }.get(key)?;
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
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let reader = KvReader { db: self.db.clone() };
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
        SnapshotBuilder::new(self.db.clone(), self.snapshot_file.clone())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        // Decode, file write and a synced batch: off the async workers.
        let (db, file, meta) = (self.db.clone(), self.snapshot_file.clone(), meta.clone());
        tokio::task::spawn_blocking(move || install(&db, &file, &meta, snapshot.into_inner()))
            .await
            .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<crate::types::Snapshot>, io::Error> {
        let file = self.snapshot_file.clone();
        tokio::task::spawn_blocking(move || file.load()).await.map_err(io::Error::other)?
    }
}

/// Replaces the whole state with a snapshot's, atomically.
fn install(db: &DB, snapshot_file: &SnapshotFile, meta: &SnapshotMeta, data: Vec<u8>) -> io::Result<()> {
    {
        let contents = super::snapshot::decode_contents(&data)?;
        // The file first: if a crash comes before the state is replaced, the state is behind
        // the snapshot and openraft installs the snapshot again at start-up.
        snapshot_file.save(meta, &data)?;
        let mut batch = WriteBatch::default();
        let kv = cf(db, CF_KV);
        let sm = cf(db, CF_SM);
        batch.delete_range_cf(kv, b"".as_slice(), [0xFFu8; 1].as_slice());
        // `client_addr0` is the first key after every `client_addr/…` key ('0' follows '/').
        batch.delete_range_cf(sm, PREFIX_CLIENT_ADDR, b"client_addr0".as_slice());
        for (key, stored) in &contents.kv {
            batch.put_cf(kv, key.as_bytes(), encode(stored)?);
        }
        for (node_id, client_addr) in &contents.client_addrs {
            batch.put_cf(sm, client_addr_key(*node_id), client_addr.as_bytes());
        }
        match &meta.last_log_id {
            Some(log_id) => batch.put_cf(sm, KEY_APPLIED, encode(log_id)?),
            None => batch.delete_cf(sm, KEY_APPLIED),
        }
        batch.put_cf(sm, KEY_MEMBERSHIP, encode(&meta.last_membership)?);
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        db.write_opt(batch, &write_options).map_err(io_error)
    }
}

/// A page of a listing: the items, and the first key of the next page when there is one.
pub type Page = (Vec<(String, StoredValue)>, Option<String>);

/// Read access to the applied key-value state. Cheap to clone.
#[derive(Clone)]
pub struct KvReader {
    db: Arc<DB>,
}

impl KvReader {
    pub fn get(&self, key: &str) -> io::Result<Option<StoredValue>> {
        match self.db.get_pinned_cf(cf(&self.db, CF_KV), key.as_bytes()).map_err(io_error)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    /// Up to `limit` keys with `prefix`, starting at `start` (inclusive), in byte order, and
    /// about `max_bytes` of values at most. Returns the page and, when more keys follow, the
    /// first key of the next page.
    pub fn list(&self, prefix: &str, start: &str, limit: usize, max_bytes: usize) -> io::Result<Page> {
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
        let view = self.db.snapshot();
        for item in view.iterator_cf(cf(&self.db, CF_KV), IteratorMode::Start) {
            let (key, bytes) = item.map_err(io_error)?;
            let key = std::str::from_utf8(&key).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if !visit(key, &decode(&bytes)?) {
                break;
            }
        }
        Ok(())
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
