//! [`Node`]: one quorumkv server's Raft instance, its state, and the rules for serving
//! writes and reads from any node.
//!
//! Writes run on the leader (`client_write`); a follower forwards them over the peer channel.
//! Linearizable reads ask the leader for a read point (ReadIndex or lease), wait until the
//! local state machine has applied that far, then read locally.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use backon::Retryable;
use futures::StreamExt;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use openraft::raft::linearizable_read::Linearizer;
use openraft::raft::linearizable_read::ReadLogId;
use openraft::RaftMetrics;
use openraft::ServerState;
use quorumkv_api::ClusterStatus;
use quorumkv_api::MemberStatus;
use quorumkv_api::RaftRole;

use crate::auth;
use crate::auth::AuthState;
use crate::auth::Need;
use crate::auth::Principal;
use crate::config::ServeConfig;
use crate::error::Error;
use crate::leader::forward_as;
use crate::leader::Effect;
use crate::limits;
use crate::metrics::Metrics;
use crate::metrics::RaftGauges;
use crate::network::PeerClient;
use crate::network::PeerClients;
use crate::network::PeerCredentials;
use crate::network::PeerNetwork;
use crate::protocol;
use crate::protocol::ForwardedWrite;
use crate::protocol::ReadPolicy;
use crate::read_rounds::ReadRounds;
use crate::store;
use crate::store::AuthRecords;
use crate::store::BootstrapRecord;
use crate::store::IncomingSnapshot;
use crate::store::KvReader;
use crate::store::Page;
use crate::store::SnapshotStore;
use crate::store::StoredValue;
use crate::tls::ClientIdentity;
use crate::tls::NodeTls;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::TypeConfig;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex through the leader: never stale.
    Linearizable,
    /// The leader's lease: no quorum round while the lease holds; relies on bounded clock drift.
    Lease,
    /// This node's applied state. With `max_lag`, refused unless this node heard from the
    /// leader within `max_lag` and has applied everything the leader then said was committed
    /// (bounded staleness).
    Stale { max_lag: Option<Duration> },
}

use crate::protocol::Ack;

/// The leader's view of how far `peer`'s log is durable (0 when unknown), the leader's own
/// log included. Only a leader has replication metrics; elsewhere this is always 0.
pub(crate) fn matched_index(metrics: &RaftMetrics<TypeConfig>, peer: NodeId) -> u64 {
    metrics.replication.as_ref().and_then(|r| r.get(&peer)).and_then(|m| m.as_ref()).map_or(0, |l| l.index())
}

/// A local read overlapping a snapshot install is refused (definitely: reads change nothing).
pub(crate) fn read_error(error: std::io::Error) -> Error {
    if error.kind() == std::io::ErrorKind::Interrupted {
        Error::Unavailable(error.to_string())
    } else {
        Error::Internal(error.to_string())
    }
}

/// One node. Shared by the client API, the peer API and the background tasks.
pub struct Node {
    id: NodeId,
    config: ServeConfig,
    raft: Raft,
    kv: KvReader,
    snapshots: SnapshotStore,
    peers: PeerClients,
    /// What this node presents to and demands of its peers (token, mutual TLS).
    peer_credentials: PeerCredentials,
    /// The listeners' TLS, and how this node calls other nodes' client ports.
    tls: Arc<NodeTls>,
    bootstrap: BootstrapRecord,
    /// False until the node has decided to resume or bootstrap (and, bootstrapping, has been
    /// recorded by every founder): peers get 503 for Raft RPCs, and this node sends none.
    serving_raft: Arc<AtomicBool>,
    /// Set when shutdown begins: new client requests get a definite 503 `shutting_down` with
    /// `Connection: close`, so clients move to another node before this one closes its sockets.
    draining: AtomicBool,
    shutting_down: AtomicBool,
    /// The log index of the membership that removed this node, while it is removed.
    removed_at: std::sync::Mutex<Option<u64>>,
    /// Administration requests run one at a time on the leader (see `admin.rs`).
    admin_lock: tokio::sync::Mutex<()>,
    /// Slots for client requests doing work (see [`limits::MAX_CONCURRENT_CLIENT_REQUESTS`]).
    admission: Arc<tokio::sync::Semaphore>,
    /// How fresh this node's state is known to be, from the leader's last answer (see
    /// `staleness.rs`).
    freshness: std::sync::Mutex<Option<crate::staleness::Freshness>>,
    /// When a bounded-staleness read last asked: the freshness keeper runs while they do.
    bounded_read_at: std::sync::Mutex<Option<Instant>>,
    /// When this node last accepted an AppendEntries from a leader (removal detection).
    last_leader_contact: std::sync::Mutex<Option<Instant>>,
    /// Slots for Argon2 work (hashing or checking a password), see
    /// [`limits::MAX_CONCURRENT_PASSWORD_HASHES`].
    password_work: Arc<tokio::sync::Semaphore>,
    /// Slots for watch streams (see [`limits::MAX_WATCHERS`]).
    pub(crate) watchers: Arc<tokio::sync::Semaphore>,
    /// The leader's deadlines for leases (see `lease.rs`).
    lease_clock: std::sync::Mutex<crate::lease::LeaseClock>,
    /// Concurrent linearizable reads share read points (see `read_rounds.rs`): one for
    /// ReadIndex reads, one for lease reads.
    read_index_rounds: ReadRounds<ReadPoint>,
    lease_read_rounds: ReadRounds<ReadPoint>,
    prometheus_metrics: Metrics,
}

/// A read point: the leader that confirmed it, and the log id a read must wait for.
type ReadPoint = Result<(NodeId, ReadLogId<TypeConfig>), Error>;

/// A follower's shared read rounds of one policy (see `read_rounds.rs`).
fn read_rounds(node: &std::sync::Weak<Node>, policy: ReadPolicy) -> ReadRounds<ReadPoint> {
    let node = node.clone();
    ReadRounds::new(
        move || {
            let node = node.clone();
            Box::pin(async move {
                match node.upgrade() {
                    Some(node) => node.read_point(policy).await,
                    None => Err(Error::Unavailable("the node is shutting down".into())),
                }
            })
        },
        || Err(Error::Unavailable("the read round failed".into())),
    )
}

/// What a client gets for a write that Raft refused or dropped before committing it.
fn not_committed(error: ClientWriteError<TypeConfig>) -> Error {
    match error {
        ClientWriteError::ForwardToLeader(forward) => Error::NoLeader { last_known_leader: forward.leader_id },
        ClientWriteError::LogEntryDiscarded(_) => {
            Error::OutcomeUnknown("leadership changed before the write was committed".into())
        }
        other => Error::Internal(other.to_string()),
    }
}

/// A node's part in Raft as the API names it: mapped explicitly, so that a rename in openraft
/// cannot change the API.
fn raft_role(state: openraft::ServerState) -> RaftRole {
    match state {
        openraft::ServerState::Leader => RaftRole::Leader,
        openraft::ServerState::Follower => RaftRole::Follower,
        openraft::ServerState::Candidate => RaftRole::Candidate,
        openraft::ServerState::Learner => RaftRole::Learner,
        openraft::ServerState::Shutdown => RaftRole::Shutdown,
    }
}

impl Node {
    /// Opens the node's storage and creates its Raft instance (not yet bootstrapped).
    pub async fn open(config: ServeConfig) -> Result<Arc<Node>, String> {
        let raft_config = Arc::new(config.raft_config()?);
        let (log_store, mut state_machine) =
            store::open_with_faults(&config.data_dir, config.storage_faults())
                .await
                .map_err(|e| format!("cannot open data dir {}: {e}", config.data_dir.display()))?;
        state_machine.set_event_retention(store::events::EventRetention {
            revisions: config.watch_history_revisions,
            age_ms: config.watch_history_ms,
        });
        let bootstrap = BootstrapRecord::new(&log_store);
        let kv = state_machine.reader();
        let snapshots = state_machine.snapshots();
        let tls = Arc::new(NodeTls::from_config(&config)?);
        let peer_credentials = PeerCredentials::new(config.load_peer_tokens()?, tls.peer_client.clone());
        if tls.peer.is_none() {
            tracing::warn!(
                "PEER TRAFFIC IS NOT ENCRYPTED: the peer port authenticates members by the peer token \
                 only, and anyone on the network path can read replicated data and the token. Use mutual \
                 TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file) outside a trusted network."
            );
        }
        let peers = PeerClients::new(bootstrap.clone(), peer_credentials.clone());
        let serving_raft = Arc::new(AtomicBool::new(false));
        let network = PeerNetwork::new(peers.clone(), serving_raft.clone());
        let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| format!("cannot start raft: {e}"))?;
        let removed_at = bootstrap.removed_at().map_err(|e| format!("data dir: {e}"))?;
        if removed_at.is_some() {
            // Removed before this restart: no campaigning until added back (see `removal.rs`).
            raft.runtime_config().elect(false);
        }
        Ok(Arc::new_cyclic(|node| Node {
            id: config.id,
            config,
            raft,
            kv,
            snapshots,
            peers,
            peer_credentials,
            tls,
            bootstrap,
            serving_raft,
            draining: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            removed_at: std::sync::Mutex::new(removed_at),
            admin_lock: tokio::sync::Mutex::new(()),
            admission: Arc::new(tokio::sync::Semaphore::new(limits::MAX_CONCURRENT_CLIENT_REQUESTS)),
            freshness: std::sync::Mutex::new(None),
            bounded_read_at: std::sync::Mutex::new(None),
            last_leader_contact: std::sync::Mutex::new(None),
            password_work: Arc::new(tokio::sync::Semaphore::new(limits::MAX_CONCURRENT_PASSWORD_HASHES)),
            watchers: Arc::new(tokio::sync::Semaphore::new(limits::MAX_WATCHERS)),
            lease_clock: std::sync::Mutex::default(),
            read_index_rounds: read_rounds(node, ReadPolicy::ReadIndex),
            lease_read_rounds: read_rounds(node, ReadPolicy::Lease),
            prometheus_metrics: Metrics::new(),
        }))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// A slot for one client request's work, held until the returned permit is dropped;
    /// `429` when none frees up within [`limits::ADMISSION_WAIT_MS`].
    pub async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let wait = Duration::from_millis(limits::ADMISSION_WAIT_MS);
        match tokio::time::timeout(wait, self.admission.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Overloaded),
        }
    }

    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    pub fn peer_credentials(&self) -> &PeerCredentials {
        &self.peer_credentials
    }

    pub fn tls(&self) -> &Arc<NodeTls> {
        &self.tls
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Records that a leader's AppendEntries was just accepted.
    pub fn note_leader_contact(&self) {
        *self.last_leader_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// When this node last accepted an AppendEntries from a leader (`None`: not since start).
    pub(crate) fn last_leader_contact(&self) -> Option<Instant> {
        *self.last_leader_contact.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_serving_raft(&self) -> bool {
        self.serving_raft.load(Ordering::Acquire)
    }

    pub(crate) fn serving_raft_flag(&self) -> &AtomicBool {
        &self.serving_raft
    }

    pub(crate) fn bootstrap_record(&self) -> &BootstrapRecord {
        &self.bootstrap
    }

    pub(crate) fn admin_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.admin_lock
    }

    pub(crate) fn removal_state(&self) -> &std::sync::Mutex<Option<u64>> {
        &self.removed_at
    }

    pub(crate) fn freshness_state(&self) -> &std::sync::Mutex<Option<crate::staleness::Freshness>> {
        &self.freshness
    }

    pub(crate) fn bounded_read_state(&self) -> &std::sync::Mutex<Option<Instant>> {
        &self.bounded_read_at
    }

    /// A client for the peer at `peer_addr` (reused per peer).
    pub(crate) fn peer_client_at(&self, node_id: NodeId, peer_addr: &str) -> PeerClient {
        self.peers.get(node_id, peer_addr)
    }

    /// A copy of openraft's metrics, for status and decisions off the request path.
    pub(crate) fn raft_metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Starts the drain phase of a graceful shutdown (see `server::serve_until`).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Publishes this node's client address in the replicated state, so clients can be told
    /// where the leader is. Idempotent, so retrying after an unknown outcome is safe.
    pub async fn register_client_addr(&self) {
        let client_addr = self.config.advertised_client_addr().to_string();
        let register = || async {
            // Shutdown cancels this task (server.rs), so only the registration itself ends it.
            if self.kv.client_addrs().ok().and_then(|addrs| addrs.get(&self.id).cloned()).as_ref() == Some(&client_addr)
            {
                return Ok(());
            }
            let command = Command::RegisterClientAddr { node_id: self.id, client_addr: client_addr.clone() };
            self.write(command, Ack::Quorum).await.map(|_| ())
        };
        let attempts = limits::REGISTER_CLIENT_ADDR_ATTEMPTS;
        let retries = backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(limits::REGISTER_CLIENT_ADDR_INTERVAL_MS))
            .with_max_times(attempts as usize - 1);
        let registered = register
            .retry(retries)
            .notify(|error: &Error, _| tracing::debug!(%error, "client address not registered yet"))
            .await;
        if registered.is_err() {
            tracing::warn!("gave up registering the client address after {attempts} attempts");
        }
    }

    // ----- writes -----

    /// Runs a write from any node: on the leader directly, else forwarded to it.
    pub async fn write(&self, command: Command, ack: Ack) -> Result<CommandResult, Error> {
        let timeout = self.config.write_timeout() + Duration::from_secs(1);
        let request = ForwardedWrite { command, ack };
        self.via_leader(
            Effect::Changes,
            || self.write_as_leader(request.command.clone(), ack),
            |peer| {
                let request = &request;
                async move { peer.forward_write(request, timeout).await }
            },
        )
        .await
    }

    /// Proposes a write on this node, which must be the leader.
    pub async fn write_as_leader(&self, command: Command, ack: Ack) -> Result<CommandResult, Error> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        command.check(self.config.max_key_bytes, self.config.max_value_bytes)?;
        let timeout = self.config.write_timeout();
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.raft.client_write(command)).await {
            Err(_) => Err(Error::OutcomeUnknown(format!("not committed within {} ms", timeout.as_millis()))),
            Ok(Ok(response)) if ack == Ack::All => {
                self.await_all_voters(response.log_id.index(), timeout.saturating_sub(started.elapsed())).await?;
                Ok(response.data)
            }
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(error))) => Err(not_committed(error)),
            Ok(Err(RaftError::Fatal(fatal))) => Err(Error::OutcomeUnknown(format!("raft stopped: {fatal}"))),
        }
    }

    /// Proposes writes forwarded together (`network/write_batches.rs`) on this node, which must
    /// be the leader: one proposal of them all, and one answer per write, in order, each what
    /// [`Node::write_as_leader`] would have answered it alone. A write without an answer when
    /// the write timeout ends (or when Raft stops) has an unknown outcome.
    pub async fn write_many_as_leader(&self, writes: Vec<ForwardedWrite>) -> Vec<Result<CommandResult, Error>> {
        if self.shutting_down.load(Ordering::Acquire) {
            return writes.iter().map(|_| Err(Error::ShuttingDown)).collect();
        }
        self.prometheus_metrics.observe_forwarded_batch(writes.len());
        let timeout = self.config.write_timeout();
        let started = Instant::now();
        let mut answers: Vec<Option<Result<CommandResult, Error>>> = Vec::with_capacity(writes.len());
        // Position in the batch and ack of each write proposed, in proposal order.
        let mut proposed = Vec::with_capacity(writes.len());
        let mut commands = Vec::with_capacity(writes.len());
        for (position, write) in writes.into_iter().enumerate() {
            match write.command.check(self.config.max_key_bytes, self.config.max_value_bytes) {
                Ok(()) => {
                    answers.push(None);
                    proposed.push((position, write.ack));
                    commands.push(write.command);
                }
                Err(refused) => answers.push(Some(Err(refused))),
            }
        }
        // Committed writes that wait for every voter (ack=all): position and log index.
        let mut wait_for_all = Vec::new();
        let propose = async {
            let mut results = match self.raft.client_write_many(commands).await {
                Ok(results) => results,
                Err(fatal) => return Err(fatal),
            };
            for &(position, ack) in &proposed {
                let answer = match results.next().await {
                    None => break,
                    Some(Err(fatal)) => return Err(fatal),
                    Some(Ok(Err(error))) => Err(not_committed(error)),
                    Some(Ok(Ok(response))) => {
                        if ack == Ack::All {
                            wait_for_all.push((position, response.log_id.index()));
                        }
                        Ok(response.response)
                    }
                };
                answers[position] = Some(answer);
            }
            Ok(())
        };
        let unknown = match tokio::time::timeout(timeout, propose).await {
            Err(_) => format!("not committed within {} ms", timeout.as_millis()),
            Ok(Err(fatal)) => format!("raft stopped: {fatal}"),
            Ok(Ok(())) => "no answer from Raft".to_string(),
        };
        for (position, index) in wait_for_all {
            if let Err(error) = self.await_all_voters(index, timeout.saturating_sub(started.elapsed())).await {
                answers[position] = Some(Err(error));
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(Error::OutcomeUnknown(unknown.clone()))))
            .collect()
    }

    /// Waits until every voter, the leader included, has the log durable up to `index`
    /// (synchronous replication). The followers can commit an entry before the leader's own
    /// fsync finishes (entries are replicated once submitted), so the leader's flushed index
    /// counts like anyone's: openraft's replication metrics carry it under the leader's id.
    async fn await_all_voters(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        let all_durable = move |m: &RaftMetrics<TypeConfig>| {
            m.membership_config.membership().voter_ids().all(|voter| matched_index(m, voter) >= index)
        };
        match self.raft.wait(Some(timeout)).metrics(all_durable, "every voter has the entry").await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::OutcomeUnknown(format!(
                "committed by a quorum, but not durable on every voter within {} ms (ack=all)",
                self.config.write_timeout_ms
            ))),
        }
    }

    // ----- reads -----

    pub async fn get(&self, key: &str, consistency: Consistency) -> Result<Option<StoredValue>, Error> {
        self.get_indexed(key, consistency).await.map(|(stored, _)| stored)
    }

    pub async fn list(&self, prefix: &str, start: &str, limit: usize, consistency: Consistency) -> Result<Page, Error> {
        self.list_indexed(prefix, start, limit, consistency).await.map(|(page, _)| page)
    }

    /// [`Node::get`], with the revision this node had applied just before it read (the
    /// `X-Quorumkv-Index` of the answer): the state read is at least that new, so waiting
    /// for changes after it misses none.
    pub async fn get_indexed(&self, key: &str, consistency: Consistency) -> Result<(Option<StoredValue>, u64), Error> {
        self.await_read_point(consistency).await?;
        let index = self.kv.event_clock().applied_revision();
        Ok((self.kv.get(key).map_err(read_error)?, index))
    }

    /// [`Node::list`], with the revision applied before the read (see [`Node::get_indexed`]).
    pub async fn list_indexed(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Page, u64), Error> {
        self.await_read_point(consistency).await?;
        let index = self.kv.event_clock().applied_revision();
        Ok((self.kv.list(prefix, start, limit, limits::MAX_LIST_PAGE_BYTES).map_err(read_error)?, index))
    }

    /// The lease `id` after a read point of `consistency`, with what is left of its TTL when
    /// this node leads and keeps its time.
    pub async fn lease(
        &self,
        id: quorumkv_wire::lease::LeaseId,
        consistency: Consistency,
    ) -> Result<(store::LeaseView, Option<Duration>), Error> {
        self.await_read_point(consistency).await?;
        let lease = self.kv.lease(id, limits::MAX_LEASE_KEYS_SHOWN).ok_or(Error::LeaseNotFound { id })?;
        let remaining = self.lease_clock.lock().unwrap_or_else(|p| p.into_inner()).remaining(id);
        Ok((lease, remaining))
    }

    /// The lease `key` is attached to in the applied state (read after a key read's point).
    pub fn lease_of(&self, key: &str) -> Option<quorumkv_wire::lease::LeaseId> {
        self.kv.lease_of(key)
    }

    pub(crate) fn lease_clock(&self) -> &std::sync::Mutex<crate::lease::LeaseClock> {
        &self.lease_clock
    }

    /// Starts receiving a snapshot streamed by the leader (see `network::server`).
    pub async fn receive_snapshot(&self) -> std::io::Result<IncomingSnapshot> {
        IncomingSnapshot::create(&self.snapshots).await
    }

    /// Waits until a read of local state reflects every write acknowledged before the read
    /// began (for linearizable and lease reads).
    pub(crate) async fn await_read_point(&self, consistency: Consistency) -> Result<(), Error> {
        let policy = match consistency {
            Consistency::Stale { max_lag: None } => return Ok(()),
            Consistency::Stale { max_lag: Some(max_lag) } => return self.check_staleness(max_lag).await,
            Consistency::Linearizable => ReadPolicy::ReadIndex,
            Consistency::Lease => ReadPolicy::Lease,
        };
        let timeout = self.config.read_timeout();
        let (leader, read_log_id) = if self.current_leader() == Some(self.id) {
            // On the leader openraft already folds concurrent reads into one heartbeat round.
            self.read_point(policy).await?
        } else {
            match policy {
                ReadPolicy::ReadIndex => self.read_index_rounds.read_point().await?,
                ReadPolicy::Lease => self.lease_read_rounds.read_point().await?,
            }
        };
        let linearizer = Linearizer::new(leader, read_log_id, None);
        match linearizer.try_await_ready(&self.raft, Some(timeout)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Unavailable("this node did not apply up to the read point in time".into())),
            Err(fatal) => Err(Error::Unavailable(format!("raft stopped: {fatal}"))),
        }
    }

    /// A read point from the leader: this node's own when it leads, else asked of the leader.
    async fn read_point(&self, policy: ReadPolicy) -> ReadPoint {
        let timeout = self.config.read_timeout();
        self.via_leader(
            Effect::None,
            || self.read_index_as_leader(policy),
            |peer| forward_as::<protocol::ReadIndex>(peer, &policy, timeout),
        )
        .await
    }

    /// On the leader: confirms leadership and returns this node's id with the log id a read
    /// must wait for.
    pub async fn read_index_as_leader(&self, policy: ReadPolicy) -> ReadPoint {
        let option = match policy {
            ReadPolicy::ReadIndex => openraft::ReadPolicy::ReadIndex,
            ReadPolicy::Lease => openraft::ReadPolicy::LeaseRead,
        };
        let timeout = self.config.read_timeout();
        let mut result = tokio::time::timeout(timeout, self.raft.get_read_linearizer(option)).await;
        if policy == ReadPolicy::Lease
            && matches!(result, Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))))
        {
            // The lease lapsed (no recent quorum acknowledgement): confirm with a round instead.
            result =
                tokio::time::timeout(timeout, self.raft.get_read_linearizer(openraft::ReadPolicy::ReadIndex)).await;
        }
        match result {
            Err(_) => Err(Error::Unavailable("leadership not confirmed by a quorum in time".into())),
            Ok(Ok(linearizer)) => Ok((self.id, *linearizer.read_log_id())),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                Err(Error::NoLeader { last_known_leader: forward.leader_id })
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(error)))) => {
                Err(Error::Unavailable(error.to_string()))
            }
            Ok(Err(RaftError::Fatal(fatal))) => Err(Error::Unavailable(format!("raft stopped: {fatal}"))),
        }
    }

    // ----- authentication (see `auth.rs`) -----

    /// The replicated users, roles and auth switch, as this node has applied them.
    pub fn auth_records(&self) -> Result<Arc<AuthRecords>, Error> {
        self.kv.auth().map_err(read_error)
    }

    /// This node's applied and known-committed indexes, without copying the metrics.
    fn applied_and_committed(&self) -> (u64, u64) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let index = |log_id: &Option<crate::types::LogId>| log_id.as_ref().map_or(0, |log_id| log_id.index());
        (index(&metrics.last_applied), index(&metrics.local_committed))
    }

    /// Who sent a request, from its `Authorization` header and its connection's client
    /// certificate (`None`: neither). A credential is judged even while auth is off here (this
    /// node may lag behind an enable): a bad one is a `401` only while auth is on, and ignored
    /// otherwise, as etcd ignores tokens with auth off.
    pub async fn authenticate(
        &self,
        authorization: Option<&axum::http::HeaderValue>,
        certificate: Option<&ClientIdentity>,
    ) -> Result<Option<Principal>, Error> {
        if let Some(header) = authorization {
            if crate::network::bearer_matches_any(&self.peer_credentials.accepted, Some(header)) {
                return Ok(Some(Principal::Member));
            }
            let token = header
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|token| auth::is_token(token));
            let checked = match token {
                Some(token) => self.check_token(token).await,
                None => Err(Error::Unauthorized(
                    "Authorization must be \"Bearer <token>\" with a token from POST /v1/auth/token".into(),
                )),
            };
            return match checked {
                Ok(principal) => Ok(Some(principal)),
                Err(_) if !self.auth_records()?.enabled().map_err(read_error)? => Ok(None),
                Err(error) => Err(error),
            };
        }
        Ok(match certificate {
            Some(ClientIdentity { member: true, .. }) => Some(Principal::Member),
            // A common name that cannot be a user name names nobody (auth then says 401).
            Some(ClientIdentity { common_name: Some(name), .. }) if auth::check_name("user", name).is_ok() => {
                Some(Principal::User { name: name.clone(), revision: None })
            }
            _ => None,
        })
    }

    async fn check_token(&self, token: &str) -> Result<Principal, Error> {
        let verify = || -> Result<auth::TokenClaims, Error> {
            let records = self.auth_records()?;
            // No key: this node has never applied an enable; nothing it could check a token
            // against (an empty key would let anyone sign one).
            let key = records.signing_key().ok_or_else(|| {
                Error::Unauthorized("authentication was never enabled here; no token is valid".into())
            })?;
            auth::verify_token(key, token, auth::now_unix_ms()).map_err(Error::Unauthorized)
        };
        let claims = match verify() {
            Ok(claims) => claims,
            Err(error) => {
                // Signed with a key this node has not applied yet (auth was just enabled, or
                // enabled again): catch up to the issuer, and judge again. Only as far as this
                // node knows committed, since the claim is not verified yet: a forged index
                // makes nobody wait.
                let (applied, committed) = self.applied_and_committed();
                let issued_at = auth::unverified_applied_index(token).unwrap_or(0);
                if issued_at <= applied || issued_at > committed {
                    return Err(error);
                }
                self.await_applied(issued_at).await?;
                verify()?
            }
        };
        // Signed: the issuer had applied this far, so the user record it saw exists here soon.
        if self.applied_and_committed().0 < claims.applied_index {
            self.await_applied(claims.applied_index).await?;
        }
        let user = self.auth_records()?.user(&claims.user).map_err(read_error)?;
        match user {
            None => Err(Error::Unauthorized(format!("user {:?} no longer exists", claims.user))),
            Some(user) if user.revision != claims.revision => Err(Error::Unauthorized(format!(
                "the token of user {:?} was revoked (the user changed since); log in again",
                claims.user
            ))),
            Some(_) => Ok(Principal::User { name: claims.user, revision: Some(claims.revision) }),
        }
    }

    async fn await_applied(&self, index: u64) -> Result<(), Error> {
        let wait = Duration::from_millis(limits::AUTH_CATCH_UP_WAIT_MS);
        self.raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "a token's issuer")
            .await
            .map(|_| ())
            .map_err(|_| Error::Unavailable("this node has not caught up with the node that issued the token".into()))
    }

    /// `401` or `403` unless `principal` may do what `need` says (by this node's records).
    pub fn authorize(&self, principal: Option<&Principal>, need: Need<'_>) -> Result<(), Error> {
        match auth::authorize(&*self.auth_records()?, principal, need).map_err(read_error)? {
            Ok(()) => Ok(()),
            Err(refusal) => Err(refusal.into()),
        }
    }

    /// [`Node::authorize`], judged again after a linearizable read point before refusing:
    /// this node's records may lag a grant (or an enable's user) committed through another node.
    pub async fn authorize_or_catch_up(&self, principal: Option<&Principal>, need: Need<'_>) -> Result<(), Error> {
        match self.authorize(principal, need) {
            // Without a credential, nothing committed elsewhere can help (only an admin's
            // disable, which is rare): refuse at once, without a quorum round per request.
            Err(Error::Unauthorized(_) | Error::Forbidden(_)) if principal.is_some() => {
                self.await_read_point(Consistency::Linearizable).await?;
                self.authorize(principal, need)
            }
            other => other,
        }
    }

    /// [`Node::authorize`] for administration (membership, backup, users and roles), after a
    /// linearizable read point: these are not checked again at apply, so the records judged
    /// must include every auth change committed before the request (a lagging node must not
    /// let an anonymous caller in just after auth was enabled). Members need no such wait.
    pub async fn authorize_admin(&self, principal: Option<&Principal>) -> Result<(), Error> {
        if principal != Some(&Principal::Member) {
            self.await_read_point(Consistency::Linearizable).await?;
        }
        self.authorize(principal, Need::Admin)
    }

    /// Logs a user in: checks the password against this node's records after a linearizable
    /// read point (so a user just created anywhere is found), then signs a token.
    pub async fn issue_token(&self, name: &str, password: &str) -> Result<(String, u64), Error> {
        self.await_read_point(Consistency::Linearizable).await?;
        let records = self.auth_records()?;
        if !records.enabled().map_err(read_error)? {
            return Err(Error::Conflict("authentication is not enabled (POST /v1/auth/enable)".into()));
        }
        let user = records.user(name).map_err(read_error)?;
        // An unknown user costs a password check too, so timing does not tell who exists.
        let hash = user.as_ref().map(|user| user.password_hash.clone());
        let password = password.to_string();
        let matches = self
            .password_work(move || {
                let hash = hash.unwrap_or_else(|| auth::decoy_hash().to_string());
                auth::verify_password(&hash, &password)
            })
            .await?;
        let (Some(user), true) = (user, matches) else {
            return Err(Error::Unauthorized("wrong user name or password".into()));
        };
        let lifetime_ms = self.config.auth_token_ttl_ms;
        let claims = auth::TokenClaims {
            user: name.to_string(),
            revision: user.revision,
            applied_index: self.applied_and_committed().0,
            expires_at_unix_ms: auth::now_unix_ms() + lifetime_ms,
        };
        let key =
            records.signing_key().ok_or_else(|| Error::Internal("auth is enabled without a signing key".into()))?;
        Ok((auth::issue_token(key, &claims), lifetime_ms))
    }

    /// Hashes a new password (Argon2id), off the async workers and a bounded number at a time.
    pub async fn hash_password(&self, password: String) -> Result<String, Error> {
        self.password_work(move || auth::hash_password(&password)).await?.map_err(Error::Internal)
    }

    /// Runs Argon2 work on a blocking thread holding one of the password slots for as long as
    /// the work runs, even when the request that asked is dropped (its client went away).
    async fn password_work<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let wait = Duration::from_millis(limits::ADMISSION_WAIT_MS);
        let slot = match tokio::time::timeout(wait, self.password_work.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(Error::Overloaded),
        };
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slot);
            result
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))
    }

    // ----- leader discovery -----

    /// The known leader, read without copying the whole metrics (every request asks).
    pub(crate) fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Whether `node_id` is in this node's current membership (voter or learner).
    pub(crate) fn is_member(&self, node_id: NodeId) -> bool {
        self.raft.metrics().borrow_watched().membership_config.membership().get_node(&node_id).is_some()
    }

    pub(crate) fn peer_client(&self, node_id: NodeId) -> Result<PeerClient, Error> {
        // Borrow only the membership: this runs for every forwarded request.
        let membership = self.raft.metrics().borrow_watched().membership_config.clone();
        let member = membership
            .membership()
            .get_node(&node_id)
            .ok_or_else(|| Error::Internal(format!("node {node_id} is not a member")))?;
        Ok(self.peers.get(node_id, &member.peer_addr))
    }

    // ----- status and shutdown -----

    /// What `GET /v1/cluster` reports; refused (503) while a snapshot install hides the client
    /// addresses.
    pub fn status(&self) -> Result<ClusterStatus, Error> {
        let client_addrs = self.kv.client_addrs().map_err(read_error)?;
        Ok(self.status_with(&client_addrs))
    }

    /// The status to answer a change that committed with. Never an error: the change's outcome
    /// is known, and a failed status read must not make a client believe it failed (and retry
    /// it). While a snapshot install hides the client addresses, they are left out (null).
    pub fn status_after_change(&self) -> ClusterStatus {
        let client_addrs = self.kv.client_addrs().unwrap_or_default();
        self.status_with(&client_addrs)
    }

    fn status_with(&self, client_addrs: &BTreeMap<NodeId, String>) -> ClusterStatus {
        let metrics = self.raft_metrics();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let is_leader = metrics.state == ServerState::Leader;
        let heartbeat = metrics.heartbeat.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, member)| {
                // The leader's own entry is what its log has fsynced, as for every other member.
                let matched_index = is_leader.then(|| matched_index(&metrics, *id));
                let last_ack_ms_ago = match (is_leader, *id == self.id) {
                    (true, true) => Some(0),
                    (true, false) => heartbeat
                        .get(id)
                        .cloned()
                        .flatten()
                        .map(|at| openraft::Instant::elapsed(&*at).as_millis() as u64),
                    (false, _) => None,
                };
                MemberStatus {
                    id: *id,
                    client_addr: client_addrs.get(id).cloned(),
                    peer_addr: member.peer_addr.clone(),
                    voter: voters.contains(id),
                    matched_index,
                    lag_entries: matched_index.map(|m| last_log_index.saturating_sub(m)),
                    last_ack_ms_ago,
                }
            })
            .collect();
        let commit_index = metrics.local_committed.as_ref().map_or(0, |l| l.index());
        let applied_index = metrics.last_applied.as_ref().map_or(0, |l| l.index());
        debug_assert!(applied_index <= commit_index, "applied {applied_index} beyond committed {commit_index}");
        ClusterStatus {
            id: self.id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            state: raft_role(metrics.state),
            members,
            commit_index,
            applied_index,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            snapshot_index: metrics.snapshot.as_ref().map_or(0, |l| l.index()),
            purged_index: metrics.purged.as_ref().map_or(0, |l| l.index()),
            removed: self.is_removed(),
        }
    }

    pub(crate) fn kv_reader(&self) -> KvReader {
        self.kv.clone()
    }

    /// The counters and histograms served on `GET /metrics` (Raft's own state: [`Self::raft_metrics`]).
    pub fn prometheus_metrics(&self) -> &Metrics {
        &self.prometheus_metrics
    }

    /// The Prometheus text exposition of this node's metrics.
    pub fn render_metrics(&self) -> Result<String, Error> {
        let status = self.status()?;
        let gauges = RaftGauges {
            term: status.term,
            is_leader: status.leader_id == Some(self.id),
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            last_log_index: status.last_log_index,
            lag_entries: status
                .members
                .iter()
                .filter(|m| m.id != self.id)
                .filter_map(|m| m.lag_entries.map(|lag| (m.id, lag)))
                .collect(),
        };
        self.prometheus_metrics.render(&gauges, &self.kv.storage_sizes()).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Counts leader changes, snapshots and purges as openraft reports them, until shutdown.
    pub async fn watch_raft_changes(&self) {
        // Metrics change on every apply: compare the three fields, never copy the whole struct.
        let mut receiver = self.raft.metrics();
        let watched = |m: &RaftMetrics<TypeConfig>| (m.current_leader, m.snapshot, m.purged);
        let mut seen = watched(&receiver.borrow_watched());
        while receiver.changed().await.is_ok() {
            let now = watched(&receiver.borrow_watched());
            if now.0.is_some() && now.0 != seen.0 {
                self.prometheus_metrics.count_leader_change();
            }
            if now.1 != seen.1 {
                self.prometheus_metrics.count_snapshot();
            }
            if now.2 != seen.2 {
                self.prometheus_metrics.count_purge();
            }
            seen = now;
        }
    }

    /// Ready to serve: start-up is over (Raft RPCs are served), shutdown has not begun, a
    /// leader is known, and everything known committed is applied here.
    pub fn is_ready(&self) -> bool {
        if !self.is_serving_raft() || self.is_draining() || self.is_removed() {
            return false;
        }
        let metrics = self.raft_metrics();
        let committed = metrics.local_committed.as_ref().map(|l| l.index());
        let applied = metrics.last_applied.as_ref().map(|l| l.index());
        metrics.current_leader.is_some() && applied >= committed
    }

    /// Graceful step-down: a leader hands leadership to its most up-to-date voter and waits
    /// (bounded) for the handover, so clients see no election timeout.
    pub async fn transfer_leadership_away(&self) {
        let metrics = self.raft_metrics();
        if metrics.current_leader != Some(self.id) || metrics.state != ServerState::Leader {
            return;
        }
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let target = voters.iter().filter(|id| **id != self.id).max_by_key(|id| matched_index(&metrics, **id));
        let Some(&target) = target else { return };
        tracing::info!(to = target, "transferring leadership before shutdown");
        if let Err(error) = self.raft.trigger().transfer_leader(target).await {
            tracing::warn!(%error, "leadership transfer failed");
            return;
        }
        let moved = self
            .raft
            .wait(Some(Duration::from_millis(limits::LEADER_TRANSFER_WAIT_MS)))
            .metrics(|m| m.current_leader.is_some_and(|l| l != self.id), "leadership moved")
            .await;
        if moved.is_err() {
            tracing::warn!("leadership did not move in time; shutting down anyway");
        }
    }

    /// Stops accepting writes, then stops Raft.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
    }
}
