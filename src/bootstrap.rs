//! How a node starts: resume its Raft state, join a cluster through `--join`, or bootstrap a
//! new cluster from `--initial-cluster` — and never bootstrap a node whose data was lost.
//!
//! A wiped voter that comes back as a fresh one has forgotten its vote and its log: it can vote
//! twice in a term and help elect a leader that lacks acknowledged writes. An empty data dir
//! looks the same whether it is new or wiped, so the node asks its peers, and three records
//! make sure some peer it asks can tell (DESIGN.md §4):
//!
//! - **Announcement.** Before a founding node serves Raft for the first time, every founding
//!   peer has durably recorded it. The node answers and sends no Raft RPC until then (its
//!   network refuses to send: openraft's `initialize` campaigns at once).
//! - **Raft traffic.** A node durably records a peer the first time that peer answers one of
//!   its Raft RPCs (before the answer is used) and the first time the peer sends it one.
//! - **Registration.** Every node registers its client address in the replicated state once it
//!   serves, so a snapshot or log of any up-to-date member shows that the node ran.
//!
//! An empty data dir bootstraps only once *every* founding peer, and every member those peers
//! name, has answered that it holds none of these records. A peer that does not answer may be
//! the only one that remembers, so the node waits for it (bounded, then exits so a supervisor
//! retries): an unreachable peer means "wait", never "bootstrap".

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use backon::Retryable;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use quorumkv_api::AddLearnerRequest;

use crate::config::InitialClusterState;
use crate::error::Error;
use crate::limits;
use crate::network::CallError;
use crate::node::Node;
use crate::protocol;
use crate::protocol::ProbeReply;
use crate::protocol::Rpc;
use crate::types::Member;
use crate::types::NodeId;

impl Node {
    /// Resumes a bootstrapped node, joins a cluster (`--join`), or bootstraps a new cluster
    /// from `--initial-cluster`.
    ///
    /// Must run while the peer server is up: peers that bootstrap at the same time ask this
    /// node whether it has seen them. Refuses to bootstrap a node whose data was wiped.
    pub async fn bootstrap_or_resume(&self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("data dir: {e}");
        let initialized = self.raft().is_initialized().await.map_err(|e| e.to_string())?;
        if self.bootstrap_record().is_bootstrapped().map_err(io)? || initialized {
            self.bootstrap_record().mark_bootstrapped().map_err(io)?;
            if self.bootstrap_record().is_announce_pending().map_err(io)? {
                // A crash cut the first start short: finish telling the founders first (this
                // node sends and answers no Raft RPC until it serves).
                self.announce(&self.config().initial_members()?).await?;
                self.bootstrap_record().clear_announce_pending().map_err(io)?;
            }
            // A restarted node has forgotten when it last heard from the leader. Granting votes
            // at once could elect a new leader while the old one's lease still serves lease
            // reads; staying silent for one lease length keeps lease reads linearizable.
            tokio::time::sleep(Duration::from_millis(self.config().election_timeout_max_ms)).await;
            self.start_serving_raft();
            tracing::info!("resuming from existing Raft state");
            if !self.config().join_addrs().is_empty() {
                self.rejoin_if_removed().await?;
            }
            return Ok(());
        }
        if !self.config().join_addrs().is_empty() {
            return self.join_cluster().await;
        }
        let founders = self.config().initial_members()?;
        if self.config().initial_cluster_state == InitialClusterState::Existing {
            return Err(format!(
                "data dir {} is empty and --initial-cluster-state is existing: this node has no Raft state \
                 and may not bootstrap one. Restore its data directory, or start it with \
                 --initial-cluster-state new only if the whole cluster is new.",
                self.config().data_dir.display()
            ));
        }
        self.refuse_if_seen_before(&founders).await?;
        // No campaign, vote or append until every founder has recorded this node: Raft RPCs
        // are neither answered nor sent before `start_serving_raft`. Marked before `initialize`,
        // so a crash at any point after it still finishes the announcement on restart.
        if founders.len() == 1 {
            tracing::info!("bootstrapping a one-node cluster: there is no peer to ask whether this node ran before");
        }
        self.bootstrap_record().mark_announce_pending().map_err(io)?;
        let nodes: BTreeMap<NodeId, Member> =
            founders.iter().map(|(id, peer_addr)| (*id, Member { peer_addr: peer_addr.clone() })).collect();
        match self.raft().initialize(nodes).await {
            Ok(()) => tracing::info!("bootstrapped a new cluster from --initial-cluster"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!("already initialized by the cluster");
            }
            Err(error) => return Err(format!("cannot bootstrap: {error}")),
        }
        self.bootstrap_record().mark_bootstrapped().map_err(io)?;
        self.announce(&founders).await?;
        self.bootstrap_record().clear_announce_pending().map_err(io)?;
        self.start_serving_raft();
        Ok(())
    }

    /// This node's answer to a peer that starts with an empty data dir.
    pub fn probe_reply(&self, asker: NodeId) -> Result<ProbeReply, Error> {
        let internal = |e: std::io::Error| Error::Internal(e.to_string());
        let has_seen_asker = self.bootstrap_record().has_seen_peer(asker).map_err(internal)?;
        // Refused (and asked again) while a snapshot install overlaps the read.
        let asker_registered = self.kv_reader().client_addrs().map_err(crate::node::read_error)?.contains_key(&asker);
        let metrics = self.raft_metrics();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, member)| (*id, member.peer_addr.clone()))
            .collect();
        let committed = &metrics.committed_membership_config;
        Ok(ProbeReply {
            has_seen_asker,
            asker_registered,
            members,
            committed_membership: *committed.log_id(),
            asker_in_committed_membership: committed.membership().get_node(&asker).is_some(),
        })
    }

    /// Records that `peer` announced itself before serving Raft for the first time.
    pub async fn record_announcement(&self, peer: NodeId) -> Result<(), Error> {
        self.bootstrap_record().note_peer_seen(peer).await.map_err(|e| Error::Internal(e.to_string()))
    }

    /// Asks every founding peer, and every member the answers name, whether it has ever seen
    /// this node hold Raft state. One that has means this empty data dir was wiped: start-up
    /// fails with the way back. Returns once every peer asked has said no.
    async fn refuse_if_seen_before(&self, founders: &BTreeMap<NodeId, String>) -> Result<(), String> {
        let mut wiped_evidence = None;
        self.ask_each_until_answered::<protocol::Probe, _>(
            "say whether they have seen this node",
            founders,
            |peer, reply| {
                if reply.has_seen_asker || reply.asker_registered {
                    wiped_evidence = Some(peer);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(reply.members)
            },
        )
        .await?;
        let Some(peer) = wiped_evidence else { return Ok(()) };
        Err(format!(
            "node {id} has an empty data dir ({dir}), but peer {peer} has seen node {id} as a cluster member \
             before: its data was lost or wiped. Rejoining as a fresh voter could lose committed writes, so \
             it will not start. To bring it back, restore its data dir from a backup; or remove it \
             (quorumkv cluster remove {id}) and start it again with --join <any member's client address>.",
            id = self.id(),
            dir = self.config().data_dir.display(),
        ))
    }

    /// Tells every founding peer, and waits until each has durably recorded, that this node
    /// now holds Raft state.
    async fn announce(&self, founders: &BTreeMap<NodeId, String>) -> Result<(), String> {
        self.ask_each_until_answered::<protocol::Announce, _>("record this node", founders, |_, reply| {
            let () = reply;
            ControlFlow::Continue(Vec::new())
        })
        .await
    }

    /// Sends this node's id to every peer in `peers` (and every further peer `on_answer`
    /// returns) until each has answered, asking again those that did not every
    /// [`limits::BOOTSTRAP_RETRY_MS`]. Gives up after [`limits::BOOTSTRAP_WAIT_MS`].
    /// `on_answer` returns the further peers to ask, or `Break` to stop asking at once.
    async fn ask_each_until_answered<R, Reply>(
        &self,
        what: &str,
        peers: &BTreeMap<NodeId, String>,
        mut on_answer: impl FnMut(NodeId, Reply) -> ControlFlow<(), Vec<(NodeId, String)>>,
    ) -> Result<(), String>
    where
        R: Rpc<Request = NodeId, Reply = Result<Reply, Error>>,
    {
        let mut to_ask: BTreeMap<NodeId, String> =
            peers.iter().filter(|(id, _)| **id != self.id()).map(|(id, a)| (*id, a.clone())).collect();
        let mut answered: BTreeSet<NodeId> = BTreeSet::new();
        let started = Instant::now();
        let mut reported_at: Option<Instant> = None;
        loop {
            let pending: Vec<(NodeId, String)> =
                to_ask.iter().filter(|(id, _)| !answered.contains(id)).map(|(id, a)| (*id, a.clone())).collect();
            if pending.is_empty() {
                return Ok(());
            }
            let calls = pending.iter().map(|(id, addr)| {
                let peer = self.peer_client_at(*id, addr);
                async move {
                    let timeout = Duration::from_millis(limits::BOOTSTRAP_PROBE_TIMEOUT_MS);
                    let answer: Result<Result<Reply, Error>, CallError> = peer.call::<R>(&self.id(), timeout).await;
                    let answer = match answer {
                        Ok(Ok(reply)) => Ok(reply),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(error) => Err(error.to_string()),
                    };
                    (*id, answer)
                }
            });
            let mut failures = Vec::new();
            for (id, answer) in futures::future::join_all(calls).await {
                match answer {
                    Ok(reply) => {
                        answered.insert(id);
                        let ControlFlow::Continue(more) = on_answer(id, reply) else { return Ok(()) };
                        for (member, addr) in more {
                            if member != self.id() && to_ask.len() < limits::MAX_BOOTSTRAP_PEERS {
                                to_ask.entry(member).or_insert(addr);
                            }
                        }
                    }
                    Err(error) => failures.push(format!("node {id} at {}: {error}", to_ask[&id])),
                }
            }
            if failures.is_empty() {
                continue;
            }
            if started.elapsed() >= Duration::from_millis(limits::BOOTSTRAP_WAIT_MS) {
                return Err(format!(
                    "data dir {} is empty; gave up after {} s waiting for peers to {what}: {}. Start the \
                     other founding members (a peer that does not answer may be the only one that \
                     remembers this node), then start this one again.",
                    self.config().data_dir.display(),
                    limits::BOOTSTRAP_WAIT_MS / 1000,
                    failures.join("; ")
                ));
            }
            if reported_at.is_none_or(|at| at.elapsed() >= Duration::from_millis(limits::BOOTSTRAP_REPORT_MS)) {
                reported_at = Some(Instant::now());
                tracing::warn!(
                    "data dir is empty: waiting for {} before going on ({what}); a peer that does not answer \
                     may be the only one that remembers this node",
                    failures.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(limits::BOOTSTRAP_RETRY_MS)).await;
        }
    }

    /// Joins the cluster through `--join` with an empty data dir: asks to be added as a learner.
    ///
    /// Raft RPCs are served only once the leader has answered: if this node was a learner that
    /// lost its data, the leader must first reset how far it believes this log reaches, or the
    /// empty log looks like one that went backwards (openraft stops the leader for that).
    async fn join_cluster(&self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("data dir: {e}");
        // Before asking: once added, the node replays a history whose memberships all leave it
        // out, and none of them may be taken for its removal.
        self.bootstrap_record().mark_awaiting_listing().map_err(io)?;
        self.ask_to_be_added(true).await?;
        // A bootstrap cut short before `initialize` may have left the marker: a joined node
        // announces nothing.
        self.bootstrap_record().clear_announce_pending().map_err(io)?;
        self.start_serving_raft();
        self.bootstrap_record().mark_bootstrapped().map_err(io)
    }

    /// A node with its data, restarted with `--join` after it was removed, asks to be added
    /// back as a learner (the operator's intent; with its log and vote intact that is safe).
    async fn rejoin_if_removed(&self) -> Result<(), String> {
        let removed = match self.removed_at() {
            Some(index) => Some(index),
            None => self.removal_evidence().await,
        };
        let Some(index) = removed else { return Ok(()) };
        self.note_removed(index).await;
        tracing::info!("restarted with --join after being removed: asking to be added back");
        self.ask_to_be_added(false).await
    }

    /// A node restarted with its data at another peer address is unreachable at the one the
    /// membership lists. A learner started with `--join` asks to be added at the new one (the
    /// leader then replaces it: removes it and adds it again); otherwise the node says what to do.
    /// Runs beside the node, not in its start-up: a node that merely restarted must not fail to
    /// start because no leader answers yet.
    pub async fn reregister_if_moved(&self) {
        let metrics = self.raft_metrics();
        let membership = metrics.membership_config.membership();
        let Some(listed) = membership.get_node(&self.id()) else { return };
        let advertised = self.config().advertised_peer_addr();
        if listed.peer_addr == advertised {
            return;
        }
        let is_voter = membership.voter_ids().any(|voter| voter == self.id());
        let unspecified = advertised.rsplit_once(':').is_some_and(|(host, _)| {
            host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
        });
        let advice = if unspecified {
            "It advertises an unspecified address: set --advertise-peer-addr to one its peers can reach."
        } else if is_voter {
            "A voter's address cannot change in place: start it at its old address, or remove it \
             (quorumkv cluster remove ID) and join it again as a new node."
        } else if self.config().join_addrs().is_empty() {
            "Restart it with --join <any member's client address> to register the new address."
        } else {
            tracing::info!(old = %listed.peer_addr, new = %advertised, "restarted at a new peer address: registering it");
            if let Err(error) = self.ask_to_be_added(false).await {
                tracing::warn!("could not register the new peer address {advertised}: {error}");
            }
            return;
        };
        tracing::warn!(
            "the membership lists this node's peer address as {listed}, but it now advertises {advertised}: \
             peers cannot reach it. {advice}",
            listed = listed.peer_addr,
        );
    }

    /// Asks the cluster, through any member given to `--join`, to add this node as a learner
    /// (`fresh`: with an empty log). Adding the same learner again is a no-op, so retrying after
    /// a lost answer is safe.
    async fn ask_to_be_added(&self, fresh: bool) -> Result<(), String> {
        // The members' client ports speak TLS when this node's does (one cluster, one mode).
        let mut builder = reqwest::Client::builder().timeout(self.config().write_timeout() + Duration::from_secs(5));
        let scheme = match &self.tls().client_port_client {
            Some(tls) => {
                builder = builder.use_preconfigured_tls(tls.clone());
                "https"
            }
            None => "http",
        };
        let http = builder.build().map_err(|e| e.to_string())?;
        let request =
            AddLearnerRequest { id: self.id(), peer_addr: self.config().advertised_peer_addr().to_string(), fresh };
        let addrs = self.config().join_addrs();
        /// Why one attempt did not add this node.
        enum Refusal {
            /// A definite `4xx`: asking again would not change the answer.
            Final(String),
            /// No answer, or another status: the next member may answer.
            Retry(String),
        }
        let attempt = std::sync::atomic::AtomicUsize::new(0);
        let ask = || async {
            let addr = &addrs[attempt.fetch_add(1, Ordering::Relaxed) % addrs.len()];
            let mut post = http.post(format!("{scheme}://{addr}/v1/cluster/learners")).json(&request);
            // Only without peer TLS (where adding a learner needs it): with peer TLS the token
            // is a second factor of the peer port and must not cross a plain client port.
            if let (false, Some(token)) = (self.config().peer_tls(), &self.peer_credentials().token) {
                post = post.bearer_auth(token);
            }
            match post.send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(via = %addr, "added to the cluster as a learner");
                    Ok(())
                }
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    Err(Refusal::Final(format!("the cluster refused to add node {}: {status} {body}", self.id())))
                }
                Ok(response) => Err(Refusal::Retry(format!("{addr}: {}", response.status()))),
                Err(error) => Err(Refusal::Retry(format!("{addr}: {error}"))),
            }
        };
        let retries = backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(limits::JOIN_INTERVAL_MS))
            .with_max_times(limits::JOIN_ATTEMPTS as usize - 1);
        match ask.retry(retries).when(|refusal| matches!(refusal, Refusal::Retry(_))).await {
            Ok(()) => Ok(()),
            Err(Refusal::Final(error)) => Err(error),
            Err(Refusal::Retry(last_error)) => {
                Err(format!("could not join through {addrs:?} after {} attempts: {last_error}", limits::JOIN_ATTEMPTS))
            }
        }
    }

    fn start_serving_raft(&self) {
        self.serving_raft_flag().store(true, Ordering::Release);
    }
}
