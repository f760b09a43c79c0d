//! The applied leases, in memory and in the `sm` column family.
//!
//! Records (`sm`):
//!
//! | key | value |
//! |---|---|
//! | `lease/r/<id, 8 bytes big-endian>` | [`LeaseRecord`] |
//! | `lease/k/<id, 8 bytes big-endian><key>` | empty: the key is attached to the lease |
//!
//! Every put and delete asks which lease its key is attached to, so the whole table is kept in
//! memory ([`LeaseCache`], bounded by `MAX_LEASES` and the keys that exist), loaded at start-up
//! and after a snapshot install. Apply changes it in place, entry by entry, so each entry of a
//! batch sees the ones before it; the batch's records reach RocksDB when the batch is written.
//! Unlike the auth cache (swapped in whole before the write), readers may see a batch's lease
//! changes a moment before its keys: those entries are committed, so this is early, never
//! wrong. A failed batch write stops the node (openraft's storage error), and a restart
//! reloads the table from what was written.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use rocksdb::WriteBatch;
use rocksdb::DB;

use super::cf;
use super::codec::decode;
use super::codec::encode;
use super::io_error;
use super::CF_SM;
use quorumkv_wire::lease::LeaseId;
use quorumkv_wire::lease::LeaseRecord;

/// Every lease record is under this prefix (the range `lease/`..`lease0` holds them all).
pub(crate) const PREFIX_LEASE: &[u8] = b"lease/";
pub(crate) const PREFIX_LEASE_END: &[u8] = b"lease0";
const PREFIX_LEASE_RECORD: &[u8] = b"lease/r/";
const PREFIX_LEASE_KEY: &[u8] = b"lease/k/";

fn record_key(id: LeaseId) -> Vec<u8> {
    [PREFIX_LEASE_RECORD, &id.to_be_bytes()].concat()
}

fn attachment_key(id: LeaseId, key: &str) -> Vec<u8> {
    [PREFIX_LEASE_KEY, &id.to_be_bytes(), key.as_bytes()].concat()
}

/// One lease and the keys attached to it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub record: LeaseRecord,
    pub keys: BTreeSet<String>,
}

/// What the lease keeper needs of one lease: its TTL and the revision of its last renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseClockView {
    pub ttl_ms: u64,
    pub renewed_revision: u64,
}

#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: BTreeMap<LeaseId, Lease>,
    key_lease: HashMap<String, LeaseId>,
    /// Leases granted, renewed or ended since the keeper last drained them.
    changed: BTreeSet<LeaseId>,
    /// Bumped by every reload (start-up, snapshot install): the keeper starts over from the
    /// whole table.
    generation: u64,
}

impl LeaseTable {
    fn load(db: &DB) -> io::Result<LeaseTable> {
        let mut table = LeaseTable::default();
        let mut attachments = Vec::new();
        for item in db.prefix_iterator_cf(cf(db, CF_SM), PREFIX_LEASE) {
            let (key, value) = item.map_err(io_error)?;
            if !key.starts_with(PREFIX_LEASE) {
                break;
            }
            let malformed = || io::Error::new(io::ErrorKind::InvalidData, "a malformed lease record");
            if let Some(rest) = key.strip_prefix(PREFIX_LEASE_RECORD) {
                let id = LeaseId::from_be_bytes(rest.try_into().map_err(|_| malformed())?);
                table.leases.insert(id, Lease { record: decode(&value)?, keys: BTreeSet::new() });
            } else if let Some(rest) = key.strip_prefix(PREFIX_LEASE_KEY) {
                let (id, name) = rest.split_at_checked(8).ok_or_else(malformed)?;
                let id = LeaseId::from_be_bytes(id.try_into().map_err(|_| malformed())?);
                let name = String::from_utf8(name.to_vec()).map_err(|_| malformed())?;
                attachments.push((id, name));
            } else {
                return Err(malformed());
            }
        }
        for (id, key) in attachments {
            // Never written (a lease ends only once its keys are gone), but not a reason to
            // refuse to start: every replica loads the same records and skips the same.
            let Some(lease) = table.leases.get_mut(&id) else {
                tracing::error!(id, key, "a key attached to a lease that does not exist; ignored");
                continue;
            };
            lease.keys.insert(key.clone());
            table.key_lease.insert(key, id);
        }
        Ok(table)
    }

    pub(crate) fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub(crate) fn lease_of(&self, key: &str) -> Option<LeaseId> {
        self.key_lease.get(key).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }

    pub(crate) fn grant(
        &mut self,
        db: &DB,
        batch: &mut WriteBatch,
        id: LeaseId,
        record: LeaseRecord,
    ) -> io::Result<()> {
        batch.put_cf(cf(db, CF_SM), record_key(id), encode(&record)?);
        self.leases.insert(id, Lease { record, keys: BTreeSet::new() });
        self.changed.insert(id);
        Ok(())
    }

    /// Renews a lease that exists at `revision`; false when there is none.
    pub(crate) fn renew(&mut self, db: &DB, batch: &mut WriteBatch, id: LeaseId, revision: u64) -> io::Result<bool> {
        let Some(lease) = self.leases.get_mut(&id) else { return Ok(false) };
        lease.record.renewed_revision = revision;
        batch.put_cf(cf(db, CF_SM), record_key(id), encode(&lease.record)?);
        self.changed.insert(id);
        Ok(true)
    }

    /// Attaches `key` to lease `to` (`None`: to none), detaching it from the one it had. A
    /// per-key lease left without its key ends.
    pub(crate) fn attach(&mut self, db: &DB, batch: &mut WriteBatch, key: &str, to: Option<LeaseId>) {
        let sm = cf(db, CF_SM);
        let from = self.key_lease.get(key).copied();
        if from == to {
            return;
        }
        if let Some(from) = from {
            batch.delete_cf(sm, attachment_key(from, key));
            self.key_lease.remove(key);
            if let Some(lease) = self.leases.get_mut(&from) {
                lease.keys.remove(key);
                if lease.record.per_key && lease.keys.is_empty() {
                    self.end(db, batch, from);
                }
            }
        }
        if let Some(to) = to {
            if let Some(lease) = self.leases.get_mut(&to) {
                batch.put_cf(sm, attachment_key(to, key), []);
                lease.keys.insert(key.to_string());
                self.key_lease.insert(key.to_string(), to);
            }
        }
    }

    /// Removes a lease's record (its keys must be detached first, by deleting them).
    pub(crate) fn end(&mut self, db: &DB, batch: &mut WriteBatch, id: LeaseId) {
        if self.leases.remove(&id).is_some() {
            batch.delete_cf(cf(db, CF_SM), record_key(id));
            self.changed.insert(id);
        }
    }

    /// Ends the per-key leases made for keys that never got them (a put with a new lease
    /// overwritten later in the same transaction).
    pub(crate) fn end_if_unused(&mut self, db: &DB, batch: &mut WriteBatch, id: LeaseId) {
        if self.leases.get(&id).is_some_and(|lease| lease.record.per_key && lease.keys.is_empty()) {
            self.end(db, batch, id);
        }
    }
}

/// The applied lease table, shared by the state machine (which changes it) and readers.
#[derive(Clone, Default)]
pub(crate) struct LeaseCache(Arc<Mutex<LeaseTable>>);

impl LeaseCache {
    pub(crate) fn lock(&self) -> MutexGuard<'_, LeaseTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every `lease/` record again (at start-up and after a snapshot install).
    pub(crate) fn reload(&self, db: &DB) -> io::Result<()> {
        let mut table = LeaseTable::load(db)?;
        let mut current = self.lock();
        table.generation = current.generation + 1;
        *current = table;
        Ok(())
    }

    /// The leases changed since the last call (`None`: ended), and the table's generation: when
    /// it moved, the changes are not enough and [`LeaseCache::all`] must be read instead.
    pub(crate) fn drain_changes(&self) -> (u64, Vec<(LeaseId, Option<LeaseClockView>)>) {
        let mut table = self.lock();
        let changed = std::mem::take(&mut table.changed);
        let changes = changed.into_iter().map(|id| (id, table.leases.get(&id).map(clock_view))).collect();
        (table.generation, changes)
    }

    /// Every lease, with the table's generation.
    pub(crate) fn all(&self) -> (u64, Vec<(LeaseId, LeaseClockView)>) {
        let table = self.lock();
        (table.generation, table.leases.iter().map(|(id, lease)| (*id, clock_view(lease))).collect())
    }
}

fn clock_view(lease: &Lease) -> LeaseClockView {
    LeaseClockView { ttl_ms: lease.record.ttl_ms, renewed_revision: lease.record.renewed_revision }
}
