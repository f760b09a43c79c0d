//! The replicated key-value state machine, applied from committed Raft log entries.
//!
//! Apply is deterministic: the same entries give the same state and the same results on every
//! replica. A failed precondition is a result; an I/O error stops the node (openraft turns a
//! storage error into a fatal error).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

use super::cf;
use super::codec::decode;
use super::codec::encode;
use super::events;
use super::events::EventClock;
use super::events::EventRecord;
use super::events::EventRetention;
use super::events::PutEvent;
use super::io_error;
use super::leases::LeaseCache;
use super::leases::PREFIX_LEASE;
use super::leases::PREFIX_LEASE_END;
use super::snapshot::SnapshotBuilder;
use super::snapshot::SnapshotHandle;
use super::snapshot::SnapshotStore;
use super::CF_EVENTS;
use super::CF_KV;
use super::CF_SM;
use crate::auth;
use crate::auth::AuthCommand;
use crate::auth::AuthState;
use crate::auth::Need;
use crate::auth::Refusal;
use crate::auth::RoleRecord;
use crate::auth::UserRecord;
use crate::limits;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use quorumkv_wire::lease;
use quorumkv_wire::lease::LeaseCommand;
use quorumkv_wire::lease::LeaseId;
use quorumkv_wire::lease::LeaseRecord;
use quorumkv_wire::lease::LeaseRef;
use quorumkv_wire::lease::LeaseResult;
use quorumkv_wire::snapshot::Record;
use quorumkv_wire::snapshot::SnapshotReader;
use quorumkv_wire::txn::Txn;
use quorumkv_wire::txn::TxnOp;
use quorumkv_wire::txn::TxnOpResult;
use quorumkv_wire::txn::MAX_DELETE_PREFIX_KEYS;
use quorumkv_wire::txn::MAX_TXN_READ_BYTES;

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const PREFIX_CLIENT_ADDR: &[u8] = b"client_addr/";
/// Users, roles and the auth switch (`auth.rs`): `auth/enabled`, `auth/signing_key`,
/// `auth/user/<name>`, `auth/role/<name>`. Snapshots carry every key under the prefix.
pub(crate) const PREFIX_AUTH: &[u8] = b"auth/";
/// The first key after every `auth/…` key ('0' follows '/').
pub(crate) const PREFIX_AUTH_END: &[u8] = b"auth0";
const KEY_AUTH_ENABLED: &[u8] = b"auth/enabled";
const KEY_AUTH_SIGNING_KEY: &[u8] = b"auth/signing_key";
const PREFIX_AUTH_USER: &str = "auth/user/";
const PREFIX_AUTH_ROLE: &str = "auth/role/";
/// Present while a snapshot install is replacing the state (its value: the snapshot's
/// metadata). Found at start-up, it means the install was cut off and is redone.
pub(crate) const KEY_INSTALLING: &[u8] = b"installing";
/// The first revision whose events are all in `events` (see `events.rs`). Absent: the
/// revision after the applied one (a node that never kept events keeps them from now on).
const KEY_EVENTS_FROM: &[u8] = b"events_from";
/// How many old revisions one apply batch looks at for the age bound: pruning is spread over
/// batches, so no batch waits on a long scan.
const EVENT_AGE_SCAN_LIMIT: usize = 4096;
/// The history is pruned at most this often (so it may hold up to a second of writes beyond
/// its bounds).
const EVENT_PRUNE_INTERVAL_MS: u64 = 1_000;

/// One key's stored record (its format is shared with snapshot files).
pub use quorumkv_wire::snapshot::StoredValue;

/// The state machine handed to openraft. Reads go through [`KvReader`] instead.
pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotStore,
    installs: InstallCounter,
    auth: AuthCache,
    leases: LeaseCache,
    events: EventClock,
    retention: EventRetention,
    /// When the batch being applied began (this node's clock), stamped on its events.
    batch_time_unix_ms: u64,
    /// When the history was last pruned: at most once per [`EVENT_PRUNE_INTERVAL_MS`], so a
    /// steady write load does not leave a range tombstone per batch.
    last_prune: Option<std::time::Instant>,
}

/// The applied auth records, in memory: every client request consults them, so they are not
/// read from RocksDB each time, and a snapshot install (which empties and refills the state)
/// never makes them vanish. An apply batch swaps in its changes just before it writes the
/// batch, so no read of the batch's keys is ever judged by older records. If the records
/// cannot be rebuilt (a storage error: openraft stops the node), the cache is marked broken
/// and every check fails, rather than judging by records that miss a revocation.
#[derive(Clone)]
pub(crate) struct AuthCache(Arc<std::sync::RwLock<Result<Arc<AuthRecords>, String>>>);

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache(Arc::new(std::sync::RwLock::new(Ok(Arc::default()))))
    }
}

impl AuthCache {
    fn current(&self) -> io::Result<Arc<AuthRecords>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone().map_err(io::Error::other)
    }

    fn set(&self, records: io::Result<AuthRecords>) -> io::Result<()> {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        match records {
            Ok(records) => {
                *slot = Ok(Arc::new(records));
                Ok(())
            }
            Err(error) => {
                *slot = Err(format!("the auth records could not be rebuilt: {error}"));
                Err(error)
            }
        }
    }

    /// Reads every `auth/` record again (at start-up and after a snapshot install).
    fn reload(&self, db: &DB) -> io::Result<()> {
        let load = || {
            let mut records = AuthRecords::default();
            for item in db.prefix_iterator_cf(cf(db, CF_SM), PREFIX_AUTH) {
                let (key, value) = item.map_err(io_error)?;
                if !key.starts_with(PREFIX_AUTH) {
                    break;
                }
                records.set(&key, Some(&value))?;
            }
            Ok(records)
        };
        self.set(load())
    }
}

/// The replicated users, roles and auth switch as of one applied batch (see [`KvReader::auth`]).
#[derive(Debug, Default, Clone)]
pub struct AuthRecords {
    enabled: bool,
    signing_key: Option<Vec<u8>>,
    users: BTreeMap<String, UserRecord>,
    roles: BTreeMap<String, RoleRecord>,
}

impl AuthRecords {
    /// One `auth/` record written (`Some`) or deleted (`None`).
    fn set(&mut self, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
        let name = |prefix: &str| key.strip_prefix(prefix.as_bytes()).map(|n| String::from_utf8_lossy(n).into_owned());
        if key == KEY_AUTH_ENABLED {
            self.enabled = value.is_some();
        } else if key == KEY_AUTH_SIGNING_KEY {
            self.signing_key = value.map(<[u8]>::to_vec);
        } else if let Some(user) = name(PREFIX_AUTH_USER) {
            match value {
                Some(value) => self.users.insert(user, decode(value)?),
                None => self.users.remove(&user),
            };
        } else if let Some(role) = name(PREFIX_AUTH_ROLE) {
            match value {
                Some(value) => self.roles.insert(role, decode(value)?),
                None => self.roles.remove(&role),
            };
        }
        Ok(())
    }

    /// The key tokens are signed with (present once auth was first enabled).
    pub fn signing_key(&self) -> Option<&[u8]> {
        self.signing_key.as_deref()
    }

    pub fn users(&self) -> &BTreeMap<String, UserRecord> {
        &self.users
    }

    pub fn roles(&self) -> &BTreeMap<String, RoleRecord> {
        &self.roles
    }
}

impl AuthState for AuthRecords {
    fn enabled(&self) -> io::Result<bool> {
        Ok(self.enabled)
    }
    fn user(&self, name: &str) -> io::Result<Option<UserRecord>> {
        Ok(self.users.get(name).cloned())
    }
    fn role(&self, name: &str) -> io::Result<Option<RoleRecord>> {
        Ok(self.roles.get(name).cloned())
    }
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
        let mut state_machine = Self {
            db,
            snapshots,
            installs: InstallCounter::default(),
            auth: AuthCache::default(),
            leases: LeaseCache::default(),
            events: EventClock::new(0, 1),
            retention: EventRetention::default(),
            batch_time_unix_ms: 0,
            last_prune: None,
        };
        state_machine.repair_interrupted_install()?;
        state_machine.auth.reload(&state_machine.db)?;
        state_machine.leases.reload(&state_machine.db)?;
        let applied = state_machine.reader().sm_meta::<LogId>(KEY_APPLIED)?.map_or(0, |log_id| log_id.index());
        let from = match state_machine.reader().sm_meta::<u64>(KEY_EVENTS_FROM)? {
            Some(from) => from,
            None => {
                // Recorded before any event is written (one WAL, recovered as a prefix), so a
                // restart knows the history is complete from here, not from its applied index.
                let from = applied + 1;
                let sm = cf(&state_machine.db, CF_SM);
                state_machine.db.put_cf(sm, KEY_EVENTS_FROM, encode(&from)?).map_err(io_error)?;
                from
            }
        };
        state_machine.events = EventClock::new(applied, from);
        Ok(state_machine)
    }

    /// How much change history to keep (`--watch-history-revisions`, `--watch-history-ms`).
    pub fn set_event_retention(&mut self, retention: EventRetention) {
        self.retention = retention;
    }

    /// The snapshot directory, for receiving snapshots from the leader.
    pub(crate) fn snapshots(&self) -> SnapshotStore {
        self.snapshots.clone()
    }

    /// A read handle on the applied state, for the API layer (through the node).
    pub fn reader(&self) -> KvReader {
        KvReader {
            db: self.db.clone(),
            installs: self.installs.clone(),
            auth: self.auth.clone(),
            leases: self.leases.clone(),
            events: self.events.clone(),
        }
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
        let caches = Caches { auth: &self.auth, leases: &self.leases, events: &self.events };
        install_state(&self.db, &self.installs, caches, &current.meta, &current.snapshot)
    }
}

/// The keys written by earlier entries of the batch being applied: they are not in RocksDB
/// yet. `None`: deleted. Ordered, so a `delete_prefix` finds the batch's keys under its prefix.
type Overlay = BTreeMap<String, Option<StoredValue>>;
/// The auth records as one entry of an apply batch sees them: the applied records (in memory,
/// see [`AuthCache`]), copied on the batch's first auth change and changed in place after it.
/// Apply reads no auth record from RocksDB.
struct AuthBatch {
    applied: Arc<AuthRecords>,
    changed: Option<AuthRecords>,
}

impl AuthBatch {
    fn records(&self) -> &AuthRecords {
        self.changed.as_ref().unwrap_or(&self.applied)
    }

    fn set(&mut self, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
        let applied = &self.applied;
        self.changed.get_or_insert_with(|| AuthRecords::clone(applied)).set(key, value)
    }
}

fn user_key(name: &str) -> String {
    format!("{PREFIX_AUTH_USER}{name}")
}

fn role_key(name: &str) -> String {
    format!("{PREFIX_AUTH_ROLE}{name}")
}

impl StateMachine {
    /// Applies one command if its sender may (see `auth.rs`): a refusal is a result.
    fn apply_command(
        &self,
        batch: &mut WriteBatch,
        overlay: &mut Overlay,
        auth: &mut AuthBatch,
        revision: u64,
        command: &Command,
    ) -> io::Result<CommandResult> {
        let (principal, command) = match command {
            Command::As { principal, command } => (Some(principal), command.as_ref()),
            command => (None, command),
        };
        let needs = match (command.needs(), principal) {
            // Nothing to judge it by (an empty transaction, refused before proposing): it
            // must not pass unjudged.
            (Some(needs), _) if needs.is_empty() => {
                return Ok(CommandResult::Refused(Refusal::Invalid(format!("{command} does nothing"))))
            }
            (Some(needs), _) => needs,
            // Internal commands come from members only, never wrapped for a user.
            (None, None) => return self.apply_allowed(batch, overlay, auth, revision, None, command),
            (None, Some(auth::Principal::Member)) if !matches!(command, Command::As { .. }) => vec![Need::Admin],
            (None, Some(_)) => {
                return Ok(CommandResult::Refused(Refusal::Forbidden(format!("{command} is not a client command"))))
            }
        };
        for need in needs {
            if let Err(refusal) = auth::authorize(auth.records(), principal, need)? {
                return Ok(CommandResult::Refused(refusal));
            }
        }
        if let Err(refusal) = self.check_lease_owner(auth.records(), principal, command)? {
            return Ok(CommandResult::Refused(refusal));
        }
        if let Command::Lease(LeaseCommand::Revoke { id }) = command {
            // Revoking deletes the lease's keys: the sender must be able to delete each.
            let keys: Vec<String> =
                self.leases.lock().get(*id).map(|l| l.keys.iter().cloned().collect()).unwrap_or_default();
            for key in &keys {
                if let Err(refusal) = auth::authorize(auth.records(), principal, Need::Write(key))? {
                    return Ok(CommandResult::Refused(refusal));
                }
            }
        }
        let owner = match principal {
            Some(auth::Principal::User { name, .. }) => Some(name.as_str()),
            _ => None,
        };
        self.apply_allowed(batch, overlay, auth, revision, owner, command)
    }

    /// While auth is on, a user may renew, revoke or attach keys to only the leases it made
    /// (admins and members: any). Judged by the lease records at this point of the log.
    fn check_lease_owner(
        &self,
        records: &AuthRecords,
        principal: Option<&auth::Principal>,
        command: &Command,
    ) -> io::Result<Result<(), Refusal>> {
        let Some(auth::Principal::User { name, .. }) = principal else { return Ok(Ok(())) };
        if !records.enabled()? {
            return Ok(Ok(()));
        }
        let ids: Vec<LeaseId> = match command {
            Command::Lease(LeaseCommand::KeepAlive { ids }) => ids.clone(),
            Command::Lease(LeaseCommand::Revoke { id }) => vec![*id],
            Command::Txn(txn) => (txn.success.iter().chain(&txn.failure))
                .filter_map(|op| match op {
                    TxnOp::PutWithLease { lease: LeaseRef::Existing(id), .. } => Some(*id),
                    _ => None,
                })
                .collect(),
            _ => return Ok(Ok(())),
        };
        let leases = self.leases.lock();
        for id in ids {
            let Some(lease) = leases.get(id) else { continue };
            if lease.record.owner.as_deref() == Some(name.as_str())
                || auth::authorize(records, principal, Need::Admin)?.is_ok()
            {
                continue;
            }
            return Ok(Err(Refusal::Forbidden(format!("lease {id} was granted to another user than {name:?}"))));
        }
        Ok(Ok(()))
    }

    fn apply_allowed(
        &self,
        batch: &mut WriteBatch,
        overlay: &mut Overlay,
        auth: &mut AuthBatch,
        revision: u64,
        owner: Option<&str>,
        command: &Command,
    ) -> io::Result<CommandResult> {
        match command {
            // A plain or conditional PUT or DELETE is the transaction its precondition stands
            // for: one evaluator for every condition.
            Command::Put { key, value, precondition } => {
                let put = TxnOp::Put { key: key.clone(), value: value.clone() };
                let txn = Txn { compare: precondition.compares(key), success: vec![put], failure: Vec::new() };
                Ok(match self.apply_txn(batch, overlay, revision, owner, &txn)? {
                    Ok((true, _)) => CommandResult::Put { revision },
                    _ => self.precondition_failed(overlay, key)?,
                })
            }
            Command::Delete { key, precondition } => {
                let delete = TxnOp::Delete { key: key.clone() };
                let txn = Txn { compare: precondition.compares(key), success: vec![delete], failure: Vec::new() };
                Ok(match self.apply_txn(batch, overlay, revision, owner, &txn)? {
                    Ok((true, results)) => {
                        let deleted = matches!(results.first(), Some(TxnOpResult::Delete { deleted: true }));
                        CommandResult::Delete { revision, deleted }
                    }
                    _ => self.precondition_failed(overlay, key)?,
                })
            }
            Command::Txn(txn) => Ok(match self.apply_txn(batch, overlay, revision, owner, txn)? {
                Ok((succeeded, results)) => CommandResult::Txn { succeeded, revision, results },
                Err(TxnRefused::Invalid(reason)) => CommandResult::Refused(Refusal::Invalid(reason)),
                Err(TxnRefused::LeaseNotFound(id)) => CommandResult::Lease(LeaseResult::NotFound { id }),
            }),
            Command::Lease(command) => self.apply_lease(batch, overlay, revision, owner, command),
            Command::RegisterClientAddr { node_id, client_addr } => {
                batch.put_cf(cf(&self.db, CF_SM), client_addr_key(*node_id), client_addr.as_bytes());
                Ok(CommandResult::Empty)
            }
            Command::Auth(command) => {
                let writes = match auth_writes(auth.records(), revision, command)? {
                    Ok(writes) => writes,
                    Err(reason) => return Ok(CommandResult::Refused(Refusal::Invalid(reason))),
                };
                let sm = cf(&self.db, CF_SM);
                for (key, value) in writes {
                    match &value {
                        Some(value) => batch.put_cf(sm, &key, value),
                        None => batch.delete_cf(sm, &key),
                    }
                    auth.set(&key, value.as_deref())?;
                }
                Ok(CommandResult::AuthChanged { revision })
            }
            Command::As { .. } => Ok(CommandResult::Refused(Refusal::Invalid("a command wrapped twice".into()))),
        }
    }
}

impl StateMachine {
    /// A conditional write whose compares did not hold: the key's revision now.
    fn precondition_failed(&self, overlay: &Overlay, key: &str) -> io::Result<CommandResult> {
        let current = TxnView::new(&self.db, overlay).current(key)?;
        Ok(CommandResult::PreconditionFailed { current_revision: current.map(|stored| stored.mod_revision) })
    }

    /// Runs a transaction at `revision`: the compares against the state as of the previous
    /// entry (this batch's earlier entries included), then the branch they choose, each
    /// operation seeing the ones before it. Its writes go into `batch` and `overlay` only if
    /// the whole branch can run; a branch that would delete more than
    /// [`MAX_DELETE_PREFIX_KEYS`] keys under one prefix, or read more than
    /// [`MAX_TXN_READ_BYTES`], changes nothing and gives the reason (the same on every
    /// replica: both bounds are part of the log format).
    fn apply_txn(
        &self,
        batch: &mut WriteBatch,
        overlay: &mut Overlay,
        revision: u64,
        owner: Option<&str>,
        txn: &Txn,
    ) -> io::Result<Result<(bool, Vec<TxnOpResult>), TxnRefused>> {
        let mut view = TxnView::new(&self.db, overlay);
        // Each changed key's lease after the transaction (`None`: no lease), and the per-key
        // leases it makes; applied only if the whole branch runs.
        let mut attach: BTreeMap<String, Option<LeaseId>> = BTreeMap::new();
        let mut new_leases: Vec<(LeaseId, u64)> = Vec::new();
        let mut attaching: BTreeMap<LeaseId, usize> = BTreeMap::new();
        let mut succeeded = true;
        for compare in &txn.compare {
            if !compare.holds(view.current(&compare.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded { &txn.success } else { &txn.failure };
        let mut results = Vec::with_capacity(branch.len());
        let mut read_bytes = 0usize;
        let mut deleted_by_prefix = 0usize;
        for (position, op) in branch.iter().enumerate() {
            results.push(match op {
                TxnOp::Put { key, value } | TxnOp::PutWithLease { key, value, .. } => {
                    let lease = match op {
                        TxnOp::PutWithLease { lease: LeaseRef::Existing(id), .. } => {
                            let leases = self.leases.lock();
                            let Some(lease) = leases.get(*id) else {
                                return Ok(Err(TxnRefused::LeaseNotFound(*id)));
                            };
                            if lease.record.per_key && !lease.keys.contains(key) {
                                return Ok(Err(TxnRefused::Invalid(format!(
                                    "lease {id} is a per-key TTL's: it holds its own key only"
                                ))));
                            }
                            let adding = attaching.entry(*id).or_default();
                            if !lease.keys.contains(key) {
                                *adding += 1;
                            }
                            if lease.keys.len() + *adding > lease::MAX_LEASE_KEYS {
                                return Ok(Err(TxnRefused::Invalid(format!(
                                    "lease {id} would hold more than {} keys",
                                    lease::MAX_LEASE_KEYS
                                ))));
                            }
                            Some(*id)
                        }
                        TxnOp::PutWithLease { lease: LeaseRef::New { ttl_ms }, .. } => {
                            if self.leases.lock().len() + new_leases.len() >= lease::MAX_LEASES {
                                return Ok(Err(TxnRefused::Invalid(format!(
                                    "there are {} leases, the most there can be (per-key TTLs included)",
                                    lease::MAX_LEASES
                                ))));
                            }
                            // Positions are below MAX_TXN_OPS (128), so the slot fits a byte.
                            let id = lease::lease_id(revision, u8::try_from(position + 1).unwrap_or(u8::MAX));
                            new_leases.push((id, *ttl_ms));
                            Some(id)
                        }
                        _ => None,
                    };
                    attach.insert(key.clone(), lease);
                    let create_revision = view.current(key)?.map_or(revision, |stored| stored.create_revision);
                    let stored = StoredValue { create_revision, mod_revision: revision, value: value.clone() };
                    view.changes.insert(key.clone(), Some(stored));
                    TxnOpResult::Put { revision }
                }
                TxnOp::Delete { key } => {
                    let deleted = view.current(key)?.is_some();
                    if deleted {
                        view.changes.insert(key.clone(), None);
                        attach.insert(key.clone(), None);
                    }
                    TxnOpResult::Delete { deleted }
                }
                TxnOp::DeletePrefix { prefix } => {
                    let budget = MAX_DELETE_PREFIX_KEYS - deleted_by_prefix;
                    let keys = view.keys_with_prefix(prefix, budget + 1)?;
                    if keys.len() > budget {
                        return Ok(Err(TxnRefused::Invalid(format!(
                            "this transaction would delete more than {MAX_DELETE_PREFIX_KEYS} keys by prefix \
                             ({prefix:?} and any before it): delete them in parts, by longer prefixes"
                        ))));
                    }
                    deleted_by_prefix += keys.len();
                    let deleted = keys.len() as u64;
                    for key in keys {
                        attach.insert(key.clone(), None);
                        view.changes.insert(key, None);
                    }
                    TxnOpResult::DeletePrefix { deleted }
                }
                TxnOp::Get { key } => {
                    let current = view.current(key)?;
                    read_bytes += current.as_ref().map_or(0, |stored| stored.value.len());
                    if read_bytes > MAX_TXN_READ_BYTES {
                        return Ok(Err(TxnRefused::Invalid(format!(
                            "the gets of this transaction would return more than {MAX_TXN_READ_BYTES} bytes"
                        ))));
                    }
                    TxnOpResult::Get(current)
                }
            });
        }
        let changes = std::mem::take(&mut view.changes);
        // Each key's net change is one event, in key order; deleting a key the transaction
        // itself created is no change at all.
        let changed: Vec<bool> = (changes.iter())
            .map(|(key, stored)| Ok(stored.is_some() || view.existed_before(key)?))
            .collect::<io::Result<_>>()?;
        let (kv, events) = (cf(&self.db, CF_KV), cf(&self.db, CF_EVENTS));
        let mut event_index = 0u32;
        for ((key, stored), changed) in changes.into_iter().zip(changed) {
            if changed {
                let put =
                    stored.as_ref().map(|s| PutEvent { create_revision: s.create_revision, value: s.value.clone() });
                let record = EventRecord { key: key.clone(), put, applied_at_unix_ms: self.batch_time_unix_ms };
                batch.put_cf(events, events::event_key(revision, event_index), encode(&record)?);
                event_index += 1;
            }
            match &stored {
                Some(stored) => batch.put_cf(kv, key.as_bytes(), encode(stored)?),
                None => batch.delete_cf(kv, key.as_bytes()),
            }
            overlay.insert(key, stored);
        }
        let mut leases = self.leases.lock();
        for (id, ttl_ms) in &new_leases {
            let record = LeaseRecord {
                ttl_ms: *ttl_ms,
                granted_revision: revision,
                renewed_revision: revision,
                per_key: true,
                owner: owner.map(str::to_string),
            };
            leases.grant(&self.db, batch, *id, record)?;
        }
        for (key, lease) in &attach {
            leases.attach(&self.db, batch, key, *lease);
        }
        for (id, _) in new_leases {
            leases.end_if_unused(&self.db, batch, id);
        }
        Ok(Ok((succeeded, results)))
    }

    /// Grants, renews or ends a lease. Ending one deletes its keys as one transaction at this
    /// revision (one event per key), then the lease.
    fn apply_lease(
        &self,
        batch: &mut WriteBatch,
        overlay: &mut Overlay,
        revision: u64,
        owner: Option<&str>,
        command: &LeaseCommand,
    ) -> io::Result<CommandResult> {
        let result = match command {
            LeaseCommand::Grant { ttl_ms } => {
                let mut leases = self.leases.lock();
                if leases.len() >= lease::MAX_LEASES {
                    return Ok(CommandResult::Refused(Refusal::Invalid(format!(
                        "there are {} leases, the most there can be (per-key TTLs included)",
                        lease::MAX_LEASES
                    ))));
                }
                let id = lease::lease_id(revision, 0);
                let record = LeaseRecord {
                    ttl_ms: *ttl_ms,
                    granted_revision: revision,
                    renewed_revision: revision,
                    per_key: false,
                    owner: owner.map(str::to_string),
                };
                leases.grant(&self.db, batch, id, record)?;
                LeaseResult::Granted { id, ttl_ms: *ttl_ms, revision }
            }
            LeaseCommand::KeepAlive { ids } => {
                let mut leases = self.leases.lock();
                let (mut renewed, mut not_found) = (Vec::new(), Vec::new());
                for id in ids.iter().copied().collect::<std::collections::BTreeSet<_>>() {
                    match leases.get(id).map(|lease| lease.record.ttl_ms) {
                        Some(ttl_ms) => {
                            leases.renew(&self.db, batch, id, revision)?;
                            renewed.push((id, ttl_ms));
                        }
                        None => not_found.push(id),
                    }
                }
                LeaseResult::KeptAlive { renewed, not_found }
            }
            LeaseCommand::Revoke { id } | LeaseCommand::Expire { id, .. } => {
                let keys: Vec<String> = match self.leases.lock().get(*id) {
                    None => return Ok(CommandResult::Lease(LeaseResult::NotFound { id: *id })),
                    Some(lease) => {
                        if let LeaseCommand::Expire { renewed_revision, .. } = command {
                            if lease.record.renewed_revision != *renewed_revision {
                                return Ok(CommandResult::Lease(LeaseResult::Renewed { id: *id }));
                            }
                        }
                        lease.keys.iter().cloned().collect()
                    }
                };
                let deleted_keys = keys.len() as u64;
                let deletes = keys.into_iter().map(|key| TxnOp::Delete { key }).collect();
                let txn = Txn { compare: Vec::new(), success: deletes, failure: Vec::new() };
                if let Err(refused) = self.apply_txn(batch, overlay, revision, owner, &txn)? {
                    // Plain deletes of at most MAX_LEASE_KEYS keys: nothing can refuse them.
                    return Err(io::Error::other(format!("ending lease {id}: {refused:?}")));
                }
                self.leases.lock().end(&self.db, batch, *id);
                LeaseResult::Ended { id: *id, revision, deleted_keys }
            }
        };
        Ok(CommandResult::Lease(result))
    }
}

/// Why a transaction changed nothing, decided at apply alike on every replica.
#[derive(Debug)]
enum TxnRefused {
    /// Over an apply-time bound; the reason.
    Invalid(String),
    /// A put names a lease that does not exist.
    LeaseNotFound(LeaseId),
}

/// The state as one transaction sees it: its own writes so far (`changes`), over the batch's
/// earlier entries (`overlay`), over RocksDB.
struct TxnView<'a> {
    db: &'a DB,
    overlay: &'a Overlay,
    changes: BTreeMap<String, Option<StoredValue>>,
}

impl<'a> TxnView<'a> {
    fn new(db: &'a DB, overlay: &'a Overlay) -> Self {
        TxnView { db, overlay, changes: BTreeMap::new() }
    }

    /// What this transaction or the batch wrote to `key`: `Some(None)` deleted, `None` nothing.
    fn written(&self, key: &str) -> Option<&Option<StoredValue>> {
        self.changes.get(key).or_else(|| self.overlay.get(key))
    }

    fn current(&self, key: &str) -> io::Result<Option<StoredValue>> {
        match self.written(key) {
            Some(written) => Ok(written.clone()),
            None => get_stored(self.db, key),
        }
    }

    /// Whether the key existed before this transaction.
    fn existed_before(&self, key: &str) -> io::Result<bool> {
        match self.overlay.get(key) {
            Some(written) => Ok(written.is_some()),
            None => Ok(get_stored(self.db, key)?.is_some()),
        }
    }

    /// The keys under `prefix` that exist in this view, in order, at most `limit` of them.
    fn keys_with_prefix(&self, prefix: &str, limit: usize) -> io::Result<Vec<String>> {
        let mut keys = std::collections::BTreeSet::new();
        // Keys only: a raw iterator does not copy the values out.
        let mut iterator = self.db.raw_iterator_cf(cf(self.db, CF_KV));
        iterator.seek(prefix.as_bytes());
        while let Some(key) = iterator.key() {
            if keys.len() >= limit || !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = std::str::from_utf8(key).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // A key this batch deleted is gone; one it wrote is counted below.
            if self.written(key).is_none() {
                keys.insert(key.to_string());
            }
            iterator.next();
        }
        iterator.status().map_err(io_error)?;
        for (key, _) in written_under(self.overlay, prefix).chain(written_under(&self.changes, prefix)) {
            if matches!(self.written(key), Some(Some(_))) {
                keys.insert(key.clone());
            }
        }
        Ok(keys.into_iter().take(limit).collect())
    }
}

impl StateMachine {
    /// The new first revision of the history once the batch ending at `last` is applied, if
    /// the bounds move it: the latest `retention.revisions` revisions at most, and none
    /// applied longer than `retention.age_ms` ago (up to [`EVENT_AGE_SCAN_LIMIT`] revisions
    /// looked at per batch).
    fn pruned_events_from(&self, last: u64) -> io::Result<Option<u64>> {
        let from = self.events.events_from();
        let mut new_from = from.max((last + 1).saturating_sub(self.retention.revisions));
        let cutoff = self.batch_time_unix_ms.saturating_sub(self.retention.age_ms);
        let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_EVENTS));
        iterator.seek(events::event_key(new_from, 0));
        for _ in 0..EVENT_AGE_SCAN_LIMIT {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else { break };
            let (revision, _) =
                events::parse_event_key(key).ok_or_else(|| io::Error::other("a malformed event key"))?;
            let record: EventRecord = decode(value)?;
            if record.applied_at_unix_ms >= cutoff {
                break;
            }
            // A revision's events were applied together: this one is old as a whole.
            new_from = revision + 1;
            iterator.seek(events::event_key(new_from, 0));
        }
        iterator.status().map_err(io_error)?;
        Ok((new_from > from).then_some(new_from))
    }
}

/// The entries of `written` under `prefix`, in order.
fn written_under<'m>(
    written: &'m BTreeMap<String, Option<StoredValue>>,
    prefix: &'m str,
) -> impl Iterator<Item = (&'m String, &'m Option<StoredValue>)> + 'm {
    written
        .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(move |(key, _)| key.starts_with(prefix))
}

/// The records an auth change writes (`None`: deletes), or why it cannot be made. Pure:
/// every replica computes the same from the same state.
type AuthWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn auth_writes(view: &AuthRecords, revision: u64, command: &AuthCommand) -> io::Result<Result<AuthWrites, String>> {
    let enabled = view.enabled()?;
    let is_admin = |user: &UserRecord| user.roles.iter().any(|role| role == auth::ADMIN_ROLE);
    // While auth is on, the cluster keeps at least one admin: nobody could turn it off again.
    let admins_without = |name: &str| -> io::Result<usize> {
        Ok(view.users().iter().filter(|(n, u)| n.as_str() != name && is_admin(u)).count())
    };
    Ok(Ok(match command {
        AuthCommand::PutUser { name, password_hash, roles } => {
            let existing = view.user(name)?;
            if existing.is_none() && view.users().len() >= auth::MAX_USERS {
                return Ok(Err(format!("the cluster already has {} users, the most it may hold", auth::MAX_USERS)));
            }
            let Some(password_hash) =
                password_hash.clone().or_else(|| existing.as_ref().map(|u| u.password_hash.clone()))
            else {
                return Ok(Err(format!("user {name:?} does not exist; a new user needs a password")));
            };
            let roles = roles.clone().or_else(|| existing.as_ref().map(|u| u.roles.clone())).unwrap_or_default();
            for role in &roles {
                if role != auth::ADMIN_ROLE && view.role(role)?.is_none() {
                    return Ok(Err(format!("role {role:?} does not exist")));
                }
            }
            let record = UserRecord { password_hash, roles, revision };
            if enabled && existing.as_ref().is_some_and(is_admin) && !is_admin(&record) && admins_without(name)? == 0 {
                return Ok(Err(format!("{name:?} is the last user with role admin while auth is enabled")));
            }
            vec![(user_key(name).into_bytes(), Some(encode(&record)?))]
        }
        AuthCommand::DeleteUser { name } => {
            let Some(existing) = view.user(name)? else { return Ok(Err(format!("user {name:?} does not exist"))) };
            if enabled && is_admin(&existing) && admins_without(name)? == 0 {
                return Ok(Err(format!("{name:?} is the last user with role admin while auth is enabled")));
            }
            vec![(user_key(name).into_bytes(), None)]
        }
        AuthCommand::PutRole { name, grants } => {
            if view.role(name)?.is_none() && view.roles().len() >= auth::MAX_ROLES {
                return Ok(Err(format!("the cluster already has {} roles, the most it may hold", auth::MAX_ROLES)));
            }
            let record = RoleRecord { grants: grants.clone(), revision };
            vec![(role_key(name).into_bytes(), Some(encode(&record)?))]
        }
        AuthCommand::DeleteRole { name } => {
            if view.role(name)?.is_none() {
                return Ok(Err(format!("role {name:?} does not exist")));
            }
            // Else a role created again under the name would silently give its holders rights.
            let holders: Vec<&String> =
                view.users().iter().filter(|(_, user)| user.roles.contains(name)).map(|(user, _)| user).collect();
            if !holders.is_empty() {
                return Ok(Err(format!("role {name:?} is granted to {holders:?}: take it from them first")));
            }
            vec![(role_key(name).into_bytes(), None)]
        }
        AuthCommand::Enable { .. } if enabled => Vec::new(),
        AuthCommand::Enable { signing_key } => {
            if admins_without("")? == 0 {
                return Ok(Err(format!("create a user with role {:?} before enabling auth", auth::ADMIN_ROLE)));
            }
            // A new key each time auth is turned on, and every user's revision moves to this
            // entry: every credential from before (a token, a command proposed with it by a node
            // that has not applied this yet) is refused from here on, on every replica.
            let mut writes: AuthWrites = Vec::new();
            for (name, user) in view.users() {
                let user = UserRecord { revision, ..user.clone() };
                writes.push((user_key(name).into_bytes(), Some(encode(&user)?)));
            }
            writes.extend([
                (KEY_AUTH_SIGNING_KEY.to_vec(), Some(signing_key.clone())),
                (KEY_AUTH_ENABLED.to_vec(), Some(Vec::new())),
            ]);
            writes
        }
        AuthCommand::Disable => vec![(KEY_AUTH_ENABLED.to_vec(), None)],
    }))
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
        self.batch_time_unix_ms = events::now_unix_ms();
        let mut batch = WriteBatch::default();
        let mut overlay = Overlay::new();
        let mut auth = AuthBatch { applied: self.auth.current()?, changed: None };
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
                    self.apply_command(&mut batch, &mut overlay, &mut auth, log_id.index(), command)?
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
        if let Some(records) = auth.changed.take() {
            // Before the write: a read that sees the batch's keys is judged by its records.
            // Early is safe: these entries are committed.
            self.auth.set(Ok(records))?;
        }
        let prune_due = self
            .last_prune
            .is_none_or(|last| last.elapsed() >= std::time::Duration::from_millis(EVENT_PRUNE_INTERVAL_MS));
        if prune_due {
            self.last_prune = Some(std::time::Instant::now());
        }
        // The history is this node's own: a record it cannot read is logged, never a reason to
        // stop applying the replicated state.
        let pruned = match prune_due.then(|| self.pruned_events_from(last_applied.index())) {
            Some(Ok(pruned)) => pruned,
            Some(Err(error)) => {
                tracing::warn!(%error, "the change history could not be pruned; trying again later");
                None
            }
            None => None,
        };
        if let Some(from) = pruned {
            let events = cf(&self.db, CF_EVENTS);
            let old_from = self.events.events_from();
            batch.delete_range_cf(events, events::event_key(old_from, 0), events::event_key(from, 0));
            batch.put_cf(sm, KEY_EVENTS_FROM, encode(&from)?);
            // Before the write: a watcher that reads after the deletion sees the new bound and
            // knows it missed events, instead of skipping them silently.
            self.events.set_from(from);
        }
        self.db.write(batch).map_err(io_error)?;
        self.events.applied(last_applied.index());
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
        let (db, snapshots, installs, auth, leases, events, meta) = (
            self.db.clone(),
            self.snapshots.clone(),
            self.installs.clone(),
            self.auth.clone(),
            self.leases.clone(),
            self.events.clone(),
            meta.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut snapshot = snapshot;
            // The file first: if a crash cuts the install short, start-up finds the marker and
            // redoes it from this file. openraft has decided to install it, so it replaces
            // even a newer file a concurrent build left (the marker must match the file).
            snapshots.promote(&meta, &mut snapshot, true)?;
            install_state(&db, &installs, Caches { auth: &auth, leases: &leases, events: &events }, &meta, &snapshot)
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
/// The in-memory views of the state that an install replaces along with it.
struct Caches<'a> {
    auth: &'a AuthCache,
    leases: &'a LeaseCache,
    events: &'a EventClock,
}

fn install_state(
    db: &DB,
    installs: &InstallCounter,
    caches: Caches<'_>,
    meta: &SnapshotMeta,
    snapshot: &SnapshotHandle,
) -> io::Result<()> {
    let mut reader = SnapshotReader::new(snapshot.reader()?)?;
    if reader.meta() != meta {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot file does not match its metadata"));
    }
    let Caches { auth, leases, events } = caches;
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
        batch.delete_range_cf(sm, PREFIX_AUTH, PREFIX_AUTH_END);
        batch.delete_range_cf(sm, PREFIX_LEASE, PREFIX_LEASE_END);
        // No history before the snapshot: watches from earlier revisions get `410`. The bound
        // moves before the events go (see `StateMachine::apply`).
        let snapshot_index = meta.last_log_id.as_ref().map_or(0, |log_id| log_id.index());
        batch.delete_range_cf(cf(db, CF_EVENTS), events::event_key(0, 0), events::event_key(u64::MAX, u32::MAX));
        batch.put_cf(sm, KEY_EVENTS_FROM, encode(&(snapshot_index + 1))?);
        events.set_from(events.events_from().max(snapshot_index + 1));
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
                Record::Auth { key, value } if key.starts_with(PREFIX_AUTH) => batch.put_cf(sm, key, value),
                Record::Auth { .. } => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot auth record outside auth/"))
                }
                Record::Lease { key, value } if key.starts_with(PREFIX_LEASE) => batch.put_cf(sm, key, value),
                Record::Lease { .. } => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot lease record outside lease/"))
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
        auth.reload(db)?;
        leases.reload(db)?;
        events.applied(snapshot_index);
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
    auth: AuthCache,
    leases: LeaseCache,
    events: EventClock,
}

/// One lease as a reader sees it: its record and its first keys.
#[derive(Debug, Clone)]
pub struct LeaseView {
    pub id: LeaseId,
    pub record: LeaseRecord,
    pub keys: Vec<String>,
    /// More keys than `keys` holds are attached.
    pub keys_truncated: bool,
}

/// A page of the change history.
#[derive(Debug)]
pub enum EventsPage {
    /// Events in order, each with its revision and place; `whole` when the page reached the
    /// revision asked for (else it stopped at its count or byte budget).
    Events { events: Vec<(u64, u32, EventRecord)>, whole: bool },
    /// The history no longer reaches back to the position asked for: it starts here.
    Compacted { oldest_revision: u64 },
}

impl KvReader {
    /// The lease `id` with at most `max_keys` of its keys (`None`: no such lease).
    pub fn lease(&self, id: LeaseId, max_keys: usize) -> Option<LeaseView> {
        let leases = self.leases.lock();
        let lease = leases.get(id)?;
        Some(LeaseView {
            id,
            record: lease.record.clone(),
            keys: lease.keys.iter().take(max_keys).cloned().collect(),
            keys_truncated: lease.keys.len() > max_keys,
        })
    }

    /// The lease `key` is attached to, if any.
    pub fn lease_of(&self, key: &str) -> Option<LeaseId> {
        self.leases.lock().lease_of(key)
    }

    /// The applied leases, for the lease keeper (see `crate::lease`).
    pub(crate) fn lease_cache(&self) -> &LeaseCache {
        &self.leases
    }

    /// The applied revision and the bounds of the change history.
    pub fn event_clock(&self) -> &EventClock {
        &self.events
    }

    /// Events from `(revision, index)` on (inclusive), none after `up_to`: at most `limit`,
    /// and no more once `max_bytes` of them are read (at least one);
    /// [`EventsPage::Compacted`] when events from there on are no longer all kept.
    pub fn events_after(
        &self,
        revision: u64,
        index: u32,
        up_to: u64,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<EventsPage> {
        self.installs.read(|| {
            let mut events = Vec::new();
            let mut bytes = 0usize;
            let mut whole = true;
            let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_EVENTS));
            iterator.seek(events::event_key(revision, index));
            while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
                let (event_revision, event_index) =
                    events::parse_event_key(key).ok_or_else(|| io::Error::other("a malformed event key"))?;
                if event_revision > up_to {
                    break;
                }
                if events.len() >= limit || (!events.is_empty() && bytes + value.len() > max_bytes) {
                    whole = false;
                    break;
                }
                bytes += value.len();
                events.push((event_revision, event_index, decode(value)?));
                iterator.next();
            }
            iterator.status().map_err(io_error)?;
            // After the read: the bound moves before events are deleted, so a read that may
            // have missed some sees it moved.
            let oldest_revision = self.events.events_from();
            if oldest_revision > revision {
                return Ok(EventsPage::Compacted { oldest_revision });
            }
            Ok(EventsPage::Events { events, whole })
        })
    }

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
        [super::CF_LOG, super::CF_META, CF_KV, CF_SM, CF_EVENTS]
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

    /// The replicated users, roles and auth switch as of the last applied batch, for checks
    /// at the edge: in memory, consistent, and never hidden by a snapshot install.
    pub fn auth(&self) -> io::Result<Arc<AuthRecords>> {
        self.auth.current()
    }

    fn sm_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.get_cf(cf(&self.db, CF_SM), key).map_err(io_error)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }
}
