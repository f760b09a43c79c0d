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

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::error::InitializeError;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use openraft::raft::linearizable_read::Linearizer;
use openraft::raft::linearizable_read::ReadLogId;
use openraft::RaftMetrics;
use openraft::ServerState;
use serde::Deserialize;
use serde::Serialize;

use crate::config::InitialClusterState;
use crate::config::ServeConfig;
use crate::error::Error;
use crate::limits;
use crate::metrics::Metrics;
use crate::metrics::RaftGauges;
use crate::network::CallError;
use crate::network::PeerClient;
use crate::network::PeerClients;
use crate::network::PeerNetwork;
use crate::network::ProbeReply;
use crate::network::ReadPolicy;
use crate::store;
use crate::store::BootstrapRecord;
use crate::store::IncomingSnapshot;
use crate::store::KvReader;
use crate::store::Page;
use crate::store::SnapshotStore;
use crate::store::StoredValue;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Member;
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

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Once a quorum of voters has it durable (semi-synchronous; the default).
    Quorum,
    /// Once every voter has it durable (synchronous). A voter that is down makes the write
    /// time out with an unknown outcome (it is committed by the quorum, not acknowledged).
    All,
}

/// The leader's view of how far `peer`'s log is durable (0 when unknown). Only a leader has
/// replication metrics; elsewhere this is always 0.
pub(crate) fn matched_index(metrics: &RaftMetrics<TypeConfig>, peer: NodeId) -> u64 {
    metrics.replication.as_ref().and_then(|r| r.get(&peer)).and_then(|m| m.as_ref()).map_or(0, |l| l.index())
}

/// A local read overlapping a snapshot install is refused (definitely: reads change nothing).
fn read_error(error: std::io::Error) -> Error {
    if error.kind() == std::io::ErrorKind::Interrupted {
        Error::Unavailable(error.to_string())
    } else {
        Error::Internal(error.to_string())
    }
}

/// Attempts to reach the leader for one request. Each attempt either finishes the request or
/// learns that it certainly did not run (not leader, unreachable), so the retry is safe.
const MAX_LEADER_ATTEMPTS: usize = 3;

/// One node. Shared by the client API, the peer API and the background tasks.
pub struct Node {
    id: NodeId,
    config: ServeConfig,
    raft: Raft,
    kv: KvReader,
    snapshots: SnapshotStore,
    peers: PeerClients,
    bootstrap: BootstrapRecord,
    /// False until the node has decided to resume or bootstrap: peers get 503 for Raft RPCs.
    serving_raft: AtomicBool,
    /// Set when shutdown begins: new client requests get a definite 503 `shutting_down` with
    /// `Connection: close`, so clients move to another node before this one closes its sockets.
    draining: AtomicBool,
    shutting_down: AtomicBool,
    /// When this node last accepted an AppendEntries from a leader (bounded-staleness reads).
    last_leader_contact: std::sync::Mutex<Option<Instant>>,
    telemetry: Metrics,
}

/// What `GET /v1/cluster` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub state: String,
    pub members: Vec<MemberStatus>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// Last log index covered by this node's current snapshot (0: none yet).
    pub snapshot_index: u64,
    /// Log entries up to this index have been purged here (they live on only in snapshots).
    pub purged_index: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    /// `None` until the member has registered it (shortly after it first joins).
    pub client_addr: Option<String>,
    pub peer_addr: String,
    pub voter: bool,
    /// Leader's view only (null elsewhere): the last log index this member has durable.
    pub matched_index: Option<u64>,
    /// Leader's view only: how many entries this member is behind the leader's log.
    pub lag_entries: Option<u64>,
    /// Leader's view only: milliseconds since this member last acknowledged the leader.
    pub last_ack_ms_ago: Option<u64>,
}

impl Node {
    /// Opens the node's storage and creates its Raft instance (not yet bootstrapped).
    pub async fn open(config: ServeConfig) -> Result<Arc<Node>, String> {
        let raft_config = Arc::new(config.raft_config()?);
        let (log_store, state_machine) = store::open(&config.data_dir)
            .await
            .map_err(|e| format!("cannot open data dir {}: {e}", config.data_dir.display()))?;
        let bootstrap = BootstrapRecord::new(&log_store);
        let kv = state_machine.reader();
        let snapshots = state_machine.snapshots();
        let peers = PeerClients::new(bootstrap.clone());
        let network = PeerNetwork::new(peers.clone());
        let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| format!("cannot start raft: {e}"))?;
        Ok(Arc::new(Node {
            id: config.id,
            config,
            raft,
            kv,
            snapshots,
            peers,
            bootstrap,
            serving_raft: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            last_leader_contact: std::sync::Mutex::new(None),
            telemetry: Metrics::new(),
        }))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Records that a leader's AppendEntries was just accepted.
    pub fn note_leader_contact(&self) {
        *self.last_leader_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub fn is_serving_raft(&self) -> bool {
        self.serving_raft.load(Ordering::Acquire)
    }

    /// A copy of openraft's metrics, for status and decisions off the request path.
    pub(crate) fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The known leader, read without copying the whole metrics (every request asks).
    fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Resumes a bootstrapped node, or bootstraps a new cluster from `--initial-cluster`.
    ///
    /// Must run while the peer server is up: peers that bootstrap at the same time ask this
    /// node whether it has seen them. Refuses to bootstrap a node whose data was wiped.
    pub async fn bootstrap_or_resume(&self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("data dir: {e}");
        let initialized = self.raft.is_initialized().await.map_err(|e| e.to_string())?;
        if self.bootstrap.is_bootstrapped().map_err(io)? || initialized {
            self.bootstrap.mark_bootstrapped().map_err(io)?;
            // A restarted node has forgotten when it last heard from the leader. Granting votes
            // at once could elect a new leader while the old one's lease still serves lease
            // reads; staying silent for one lease length keeps lease reads linearizable.
            tokio::time::sleep(Duration::from_millis(self.config.election_timeout_max_ms)).await;
            self.serving_raft.store(true, Ordering::Release);
            tracing::info!("resuming from existing Raft state");
            return Ok(());
        }
        if !self.config.join_addrs().is_empty() {
            return self.join_cluster().await;
        }
        let members = self.config.initial_members()?;
        if self.config.initial_cluster_state == InitialClusterState::Existing {
            return Err(format!(
                "data dir {} is empty and --initial-cluster-state is existing: this node has no Raft state \
                 and may not bootstrap one. Restore its data directory, or start it with \
                 --initial-cluster-state new only if the whole cluster is new.",
                self.config.data_dir.display()
            ));
        }
        self.refuse_if_seen_before(&members).await?;
        self.serving_raft.store(true, Ordering::Release);
        let nodes: BTreeMap<NodeId, Member> =
            members.into_iter().map(|(id, peer_addr)| (id, Member { peer_addr })).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => tracing::info!("bootstrapped a new cluster from --initial-cluster"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!("already initialized by the cluster");
            }
            Err(error) => return Err(format!("cannot bootstrap: {error}")),
        }
        self.bootstrap.mark_bootstrapped().map_err(io)
    }

    /// Asks every founding peer whether it has ever seen this node hold Raft state. If one
    /// has, this empty data dir was wiped: bootstrapping it as a voter could let it vote twice
    /// in a term and lose committed writes, so start-up fails with the way back.
    async fn refuse_if_seen_before(&self, members: &BTreeMap<NodeId, String>) -> Result<(), String> {
        let peers: Vec<PeerClient> =
            members.iter().filter(|(id, _)| **id != self.id).map(|(id, addr)| self.peers.get(*id, addr)).collect();
        let deadline = Instant::now() + Duration::from_millis(limits::BOOTSTRAP_PROBE_MS);
        let mut answered = vec![false; peers.len()];
        while answered.iter().any(|a| !a) && Instant::now() < deadline {
            for (peer, answered) in peers.iter().zip(answered.iter_mut()).filter(|(_, a)| !**a) {
                let reply: Result<ProbeReply, CallError> =
                    peer.call("/internal/probe", &self.id, Duration::from_millis(500)).await;
                if let Ok(reply) = reply {
                    *answered = true;
                    if reply.has_seen_asker {
                        return Err(format!(
                            "node {id} has an empty data dir ({dir}), but peer {peer} has seen node {id} as a \
                             cluster member before: its data was lost or wiped. Rejoining as a fresh voter \
                             could lose committed writes, so it will not start. To bring it back, restore its \
                             data dir from a backup; or remove it (quorumkv cluster remove {id}) and start it \
                             again with --join <any member's client address>.",
                            id = self.id,
                            dir = self.config.data_dir.display(),
                            peer = peer.target(),
                        ));
                    }
                }
            }
            if answered.iter().any(|a| !a) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !peers.is_empty() && answered.iter().all(|a| !a) {
            tracing::warn!("no founding peer answered; bootstrapping as a member of a new cluster");
        }
        Ok(())
    }

    /// Asks the cluster, through any member given to `--join`, to add this node as a learner.
    /// Adding the same learner again is a no-op, so retrying after a lost answer is safe.
    async fn join_cluster(&self) -> Result<(), String> {
        // Accept the leader's appends before asking: it starts replicating at once.
        self.serving_raft.store(true, Ordering::Release);
        let http = reqwest::Client::builder()
            .timeout(self.config.write_timeout() + Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let request = serde_json::json!({ "id": self.id, "peer_addr": self.config.advertised_peer_addr() });
        let addrs = self.config.join_addrs();
        let mut last_error = String::new();
        for attempt in 0..limits::JOIN_ATTEMPTS {
            let addr = &addrs[attempt as usize % addrs.len()];
            match http.post(format!("http://{addr}/v1/cluster/learners")).json(&request).send().await {
                Ok(response) if response.status().is_success() => {
                    self.bootstrap.mark_bootstrapped().map_err(|e| format!("data dir: {e}"))?;
                    tracing::info!(via = %addr, "joined the cluster as a learner");
                    return Ok(());
                }
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!("the cluster refused to add node {}: {status} {body}", self.id));
                }
                Ok(response) => last_error = format!("{addr}: {}", response.status()),
                Err(error) => last_error = format!("{addr}: {error}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(format!("could not join through {addrs:?} after {} attempts: {last_error}", limits::JOIN_ATTEMPTS))
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

    pub fn probe_reply(&self, asker: NodeId) -> std::io::Result<ProbeReply> {
        Ok(ProbeReply { has_seen_asker: self.bootstrap.has_seen_peer(asker)? })
    }

    /// Publishes this node's client address in the replicated state, so clients can be told
    /// where the leader is. Idempotent, so retrying after an unknown outcome is safe.
    pub async fn register_client_addr(&self) {
        let client_addr = self.config.advertised_client_addr().to_string();
        let attempts = limits::REGISTER_CLIENT_ADDR_ATTEMPTS;
        for _ in 0..attempts {
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            if self.kv.client_addrs().ok().and_then(|addrs| addrs.get(&self.id).cloned()) == Some(client_addr.clone()) {
                return;
            }
            let command = Command::RegisterClientAddr { node_id: self.id, client_addr: client_addr.clone() };
            match self.write(command, Ack::Quorum).await {
                Ok(_) => return,
                Err(error) => tracing::debug!(%error, "client address not registered yet"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::warn!("gave up registering the client address after {attempts} attempts");
    }

    // ----- writes -----

    /// Runs a write from any node: on the leader directly, else forwarded to it.
    pub async fn write(&self, command: Command, ack: Ack) -> Result<CommandResult, Error> {
        for _ in 0..MAX_LEADER_ATTEMPTS {
            let leader = self.leader_or_wait().await?;
            if leader == self.id {
                match self.write_as_leader(command.clone(), ack).await {
                    // Leadership moved before the entry was proposed: certainly not written.
                    Err(Error::NoLeader { .. }) => {
                        self.wait_leader_change(leader).await;
                        continue;
                    }
                    other => return other,
                }
            }
            let peer = self.peer_client(leader)?;
            let timeout = self.config.write_timeout() + Duration::from_secs(1);
            let answer: Result<Result<CommandResult, Error>, CallError> =
                peer.call("/internal/write", &(&command, ack), timeout).await;
            match answer {
                Ok(Err(Error::NoLeader { .. })) => self.wait_leader_change(leader).await,
                Ok(result) => return result,
                Err(error) if error.is_definite() => self.wait_leader_change(leader).await,
                Err(error) => return Err(Error::OutcomeUnknown(error.to_string())),
            }
        }
        Err(Error::NoLeader { last_known_leader: self.current_leader() })
    }

    /// Proposes a write on this node, which must be the leader.
    pub async fn write_as_leader(&self, command: Command, ack: Ack) -> Result<CommandResult, Error> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let timeout = self.config.write_timeout();
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.raft.client_write(command)).await {
            Err(_) => Err(Error::OutcomeUnknown(format!("not committed within {} ms", timeout.as_millis()))),
            Ok(Ok(response)) if ack == Ack::All => {
                self.await_all_voters(response.log_id.index(), timeout.saturating_sub(started.elapsed())).await?;
                Ok(response.data)
            }
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(Error::NoLeader { last_known_leader: forward.leader_id })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(Error::OutcomeUnknown("leadership changed before the write was committed".into()))
            }
            Ok(Err(RaftError::APIError(other))) => Err(Error::Internal(other.to_string())),
            Ok(Err(RaftError::Fatal(fatal))) => Err(Error::OutcomeUnknown(format!("raft stopped: {fatal}"))),
        }
    }

    /// Waits until every voter has the log durable up to `index` (synchronous replication).
    async fn await_all_voters(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        let id = self.id;
        let all_durable = move |m: &RaftMetrics<TypeConfig>| {
            m.membership_config.membership().voter_ids().all(|voter| voter == id || matched_index(m, voter) >= index)
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
        self.await_read_point(consistency).await?;
        self.kv.get(key).map_err(read_error)
    }

    pub async fn list(&self, prefix: &str, start: &str, limit: usize, consistency: Consistency) -> Result<Page, Error> {
        self.await_read_point(consistency).await?;
        self.kv.list(prefix, start, limit, limits::MAX_LIST_PAGE_BYTES).map_err(read_error)
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
            Consistency::Stale { max_lag: Some(max_lag) } => return self.check_staleness(max_lag),
            Consistency::Linearizable => ReadPolicy::ReadIndex,
            Consistency::Lease => ReadPolicy::Lease,
        };
        let timeout = self.config.read_timeout();
        for _ in 0..MAX_LEADER_ATTEMPTS {
            let leader = self.leader_or_wait().await?;
            let read_log_id = if leader == self.id {
                self.read_index_as_leader(policy).await
            } else {
                let peer = self.peer_client(leader)?;
                match peer.call("/internal/read-index", &policy, timeout).await {
                    Ok(answer) => answer,
                    // A read has no effect, so retrying after any transport failure is safe.
                    Err(error) => Err(Error::Unavailable(error.to_string())),
                }
            };
            let read_log_id = match read_log_id {
                Ok(read_log_id) => read_log_id,
                Err(Error::NoLeader { .. } | Error::Unavailable(_)) => {
                    self.wait_leader_change(leader).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let linearizer = Linearizer::new(leader, read_log_id, None);
            return match linearizer.try_await_ready(&self.raft, Some(timeout)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(Error::Unavailable("this node did not apply up to the read point in time".into())),
                Err(fatal) => Err(Error::Unavailable(format!("raft stopped: {fatal}"))),
            };
        }
        Err(Error::Unavailable("could not confirm a leader for the read".into()))
    }

    /// Bounded staleness: this node's state is at most `max_lag` old.
    fn check_staleness(&self, max_lag: Duration) -> Result<(), Error> {
        let (state, last_quorum_acked, applied, cluster_committed) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let index = |log_id: &Option<crate::types::LogId>| log_id.as_ref().map(|l| l.index());
            (m.state, m.last_quorum_acked, index(&m.last_applied), index(&m.cluster_committed))
        };
        let max_lag_ms = max_lag.as_millis() as u64;
        if state == ServerState::Leader {
            // A leader's data is as old as its last contact with a quorum.
            let lag_ms = last_quorum_acked.map(|at| openraft::Instant::elapsed(&*at).as_millis() as u64);
            return match lag_ms {
                Some(lag) if lag <= max_lag_ms => Ok(()),
                _ => Err(Error::TooStale { lag_ms, max_lag_ms }),
            };
        }
        let contact = *self.last_leader_contact.lock().unwrap_or_else(|p| p.into_inner());
        let lag_ms = contact.map(|c| c.elapsed().as_millis() as u64);
        match lag_ms {
            Some(lag) if lag <= max_lag_ms && applied >= cluster_committed => Ok(()),
            _ => Err(Error::TooStale { lag_ms, max_lag_ms }),
        }
    }

    /// On the leader: confirms leadership and returns the log id a read must wait for.
    pub async fn read_index_as_leader(&self, policy: ReadPolicy) -> Result<ReadLogId<TypeConfig>, Error> {
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
            Ok(Ok(linearizer)) => Ok(*linearizer.read_log_id()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                Err(Error::NoLeader { last_known_leader: forward.leader_id })
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(error)))) => {
                Err(Error::Unavailable(error.to_string()))
            }
            Ok(Err(RaftError::Fatal(fatal))) => Err(Error::Unavailable(format!("raft stopped: {fatal}"))),
        }
    }

    // ----- leader discovery -----

    /// The current leader, waiting up to `--leader-wait-ms` for an election if none is known.
    pub(crate) async fn leader_or_wait(&self) -> Result<NodeId, Error> {
        if let Some(leader) = self.current_leader() {
            return Ok(leader);
        }
        let waited = self
            .raft
            .wait(Some(self.config.leader_wait()))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        match waited {
            Ok(metrics) => metrics.current_leader.ok_or(Error::NoLeader { last_known_leader: None }),
            Err(_) => Err(Error::NoLeader { last_known_leader: None }),
        }
    }

    /// After `old` failed us, waits (bounded) until another leader is known.
    pub(crate) async fn wait_leader_change(&self, old: NodeId) {
        let _ = self
            .raft
            .wait(Some(self.config.leader_wait()))
            .metrics(|m| m.current_leader.is_some_and(|l| l != old), "the leader changed")
            .await;
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

    pub fn status(&self) -> Result<ClusterStatus, Error> {
        let metrics = self.metrics();
        let client_addrs = self.kv.client_addrs().map_err(read_error)?;
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let is_leader = metrics.state == ServerState::Leader;
        let heartbeat = metrics.heartbeat.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, member)| {
                let matched_index = match (is_leader, *id == self.id) {
                    (false, _) => None,
                    (true, true) => Some(last_log_index),
                    (true, false) => Some(matched_index(&metrics, *id)),
                };
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
        Ok(ClusterStatus {
            id: self.id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            state: format!("{:?}", metrics.state),
            members,
            commit_index,
            applied_index,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            snapshot_index: metrics.snapshot.as_ref().map_or(0, |l| l.index()),
            purged_index: metrics.purged.as_ref().map_or(0, |l| l.index()),
        })
    }

    pub(crate) fn kv_reader(&self) -> KvReader {
        self.kv.clone()
    }

    pub fn telemetry(&self) -> &Metrics {
        &self.telemetry
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
        self.telemetry.render(&gauges, &self.kv.storage_sizes()).map_err(|e| Error::Internal(e.to_string()))
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
                self.telemetry.count_leader_change();
            }
            if now.1 != seen.1 {
                self.telemetry.count_snapshot();
            }
            if now.2 != seen.2 {
                self.telemetry.count_purge();
            }
            seen = now;
        }
    }

    /// Ready to serve: start-up is over (Raft RPCs are served), shutdown has not begun, a
    /// leader is known, and everything known committed is applied here.
    pub fn is_ready(&self) -> bool {
        if !self.is_serving_raft() || self.is_draining() {
            return false;
        }
        let metrics = self.metrics();
        let committed = metrics.local_committed.as_ref().map(|l| l.index());
        let applied = metrics.last_applied.as_ref().map(|l| l.index());
        metrics.current_leader.is_some() && applied >= committed
    }

    /// Graceful step-down: a leader hands leadership to its most up-to-date voter and waits
    /// (bounded) for the handover, so clients see no election timeout.
    pub async fn transfer_leadership_away(&self) {
        let metrics = self.metrics();
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
