//! Membership and leadership changes, run on the leader and reachable from any node.
//!
//! openraft serializes membership changes itself: a second change while one is in flight is
//! refused, reported as 503 (retry shortly). On top of that quorumkv refuses changes that would hurt availability or safety:
//! re-adding a live voter's id as a learner, promoting a learner that has not caught up, and
//! removing a voter when the remaining voters would not include a healthy majority.

use std::collections::BTreeSet;
use std::time::Duration;

use backon::Retryable;
use openraft::error::ChangeMembershipError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::ChangeMembers;

use crate::error::Error;
use crate::leader::forward_as;
use crate::leader::Effect;
use crate::limits;
use crate::node::matched_index;
use crate::node::Node;
use crate::protocol;
use crate::protocol::AdminCommand;
use crate::types::Member;
use crate::types::NodeId;

impl Node {
    /// Runs an administration request from any node: on the leader, or forwarded to it.
    pub async fn admin(&self, command: AdminCommand) -> Result<(), Error> {
        let timeout = self.config().write_timeout() + Duration::from_secs(1);
        self.via_leader(
            Effect::Changes,
            || self.admin_as_leader(command.clone()),
            |peer| forward_as::<protocol::Admin>(peer, &command, timeout),
        )
        .await
    }

    /// Runs an administration request on this node, which must be the leader. One at a time:
    /// each decides from the membership it reads first (a learner re-joining with an empty log
    /// must not be promoted between the check and the reset).
    pub async fn admin_as_leader(&self, command: AdminCommand) -> Result<(), Error> {
        let wait = Duration::from_millis(limits::ADMIN_LOCK_WAIT_MS);
        let Ok(_one_at_a_time) = tokio::time::timeout(wait, self.admin_lock().lock()).await else {
            return Err(Error::Unavailable("another administration request is in progress; retry".into()));
        };
        let metrics = self.raft_metrics();
        if metrics.current_leader != Some(self.id()) {
            return Err(Error::NoLeader { last_known_leader: metrics.current_leader });
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_member = |id: NodeId| membership.get_node(&id).is_some();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let lag_of = |id: NodeId| {
            if id == self.id() {
                return 0;
            }
            last_log_index.saturating_sub(matched_index(&metrics, id))
        };
        let changes: ChangeMembers<NodeId, Member> = match command {
            AdminCommand::AddLearner { id, peer_addr, fresh } => {
                if voters.contains(&id) {
                    return Err(Error::Conflict(format!(
                        "node {id} is a voter; a node that lost its data must be removed \
                         (quorumkv cluster remove {id}) before it joins again"
                    )));
                }
                if let Some(known) = membership.get_node(&id) {
                    if known.peer_addr == peer_addr {
                        if fresh {
                            // A learner that lost its data: without this the leader finds the log
                            // behind what it acknowledged and stops (a learner never votes and its
                            // log never counts for commit, so starting over is safe).
                            self.raft()
                                .trigger()
                                .allow_next_revert(&id, true)
                                .await
                                .map_err(|fatal| Error::Unavailable(fatal.to_string()))?
                                .map_err(|refused| Error::Unavailable(refused.to_string()))?;
                            tracing::info!(learner = id, "learner rejoins with an empty log: replicating from scratch");
                        }
                        return Ok(());
                    }
                    // A learner back at another address. openraft neither replaces a known node
                    // on add nor moves an open replication stream to a new address, so remove it
                    // and add it again: the new stream starts from nothing and probes.
                    let timeout = self.config().write_timeout();
                    let removed =
                        self.raft().change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false);
                    map_change(tokio::time::timeout(timeout, removed).await)?;
                    tracing::info!(learner = id, "learner rejoins at a new address: removed, adding it again");
                }
                let timeout = self.config().write_timeout();
                let added = tokio::time::timeout(timeout, self.raft().add_learner(id, Member { peer_addr }, false));
                return map_change(added.await);
            }
            AdminCommand::Promote { id } => {
                if !is_member(id) {
                    return Err(Error::MemberNotFound(id));
                }
                if voters.contains(&id) {
                    return Ok(());
                }
                check_promotion_lag(id, lag_of(id))?;
                // Caught up is not enough: a learner that just died still shows a small lag.
                if !self.answering_now(&[id], 1).await.contains(&id) {
                    return Err(Error::Conflict(format!(
                        "node {id} does not answer the leader; promote it once it does"
                    )));
                }
                ChangeMembers::AddVoterIds(BTreeSet::from([id]))
            }
            AdminCommand::Remove { id } => {
                if !is_member(id) {
                    return Err(Error::MemberNotFound(id));
                }
                if voters.contains(&id) {
                    let remaining: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
                    // A voter that died a moment ago still shows no lag: count only those that
                    // answer the leader now, and are caught up.
                    let answering = self.answering_now(&remaining, quorum_of(remaining.len())).await;
                    check_voter_removal(id, &remaining, |voter| {
                        answering.contains(&voter) && lag_of(voter) <= limits::MAX_HEALTHY_LAG_ENTRIES
                    })?;
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                }
            }
            AdminCommand::TransferLeader { to } => return self.transfer_leadership(to, &voters).await,
        };
        let timeout = self.config().write_timeout();
        // retain = false: a removed voter leaves the cluster entirely rather than as a learner.
        let changed = tokio::time::timeout(timeout, self.raft().change_membership(changes, false));
        map_change(changed.await)
    }

    /// Which of `nodes` (this leader always among them when listed) acknowledge a Raft RPC the
    /// leader sends from now on: waits until `enough` do, at most
    /// [`limits::HEALTH_CONFIRM_HEARTBEATS`] heartbeat intervals.
    async fn answering_now(&self, nodes: &[NodeId], enough: usize) -> BTreeSet<NodeId> {
        // The clock openraft stamps its RPCs with.
        let since = <openraft::type_config::alias::InstantOf<crate::types::TypeConfig> as openraft::Instant>::now();
        let id = self.id();
        let answering = move |metrics: &openraft::RaftMetrics<crate::types::TypeConfig>| -> BTreeSet<NodeId> {
            let heartbeat = metrics.heartbeat.clone().unwrap_or_default();
            let acked_since = |node: &NodeId| heartbeat.get(node).cloned().flatten().is_some_and(|sent| *sent >= since);
            nodes.iter().copied().filter(|node| *node == id || acked_since(node)).collect()
        };
        // A heartbeat round now, rather than at the next tick.
        let _ = self.raft().trigger().heartbeat().await;
        let wait = Duration::from_millis(self.config().heartbeat_interval_ms * limits::HEALTH_CONFIRM_HEARTBEATS);
        let enough_answer =
            move |metrics: &openraft::RaftMetrics<crate::types::TypeConfig>| answering(metrics).len() >= enough;
        let _ = self.raft().wait(Some(wait)).metrics(enough_answer, "enough members answer").await;
        answering(&self.raft_metrics())
    }

    /// With `--join` and auto-promotion: asks for promotion until the leader finds this
    /// learner caught up. Stops when it is a voter, was removed, or the node shuts down.
    pub async fn promote_self_when_caught_up(&self) {
        /// Why this round did not end the wait.
        enum NotYet {
            NotAMember,
            Refused(Error),
        }
        // Shutdown cancels this task (server.rs).
        let ask = || async {
            let metrics = self.raft_metrics();
            let membership = metrics.membership_config.membership();
            // A removed node's own (stale) membership may still list it as a voter.
            if membership.voter_ids().any(|v| v == self.id()) && !self.is_removed() {
                return Ok(());
            }
            if membership.get_node(&self.id()).is_none() {
                return Err(NotYet::NotAMember);
            }
            match self.admin(AdminCommand::Promote { id: self.id() }).await {
                Ok(()) => {
                    tracing::info!("promoted to voter");
                    Ok(())
                }
                // Removed meanwhile: nothing to promote.
                Err(Error::MemberNotFound(_)) => Ok(()),
                Err(error) => Err(NotYet::Refused(error)),
            }
        };
        let retries = backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(limits::JOIN_INTERVAL_MS))
            .with_max_times(limits::PROMOTE_ATTEMPTS as usize - 1);
        let notify = |not_yet: &NotYet, _| {
            if let NotYet::Refused(error) = not_yet {
                tracing::debug!(%error, "not promoted yet");
            }
        };
        if ask.retry(retries).notify(notify).await.is_err() {
            tracing::warn!("gave up asking for promotion; promote with `quorumkv cluster promote {}`", self.id());
        }
    }

    async fn transfer_leadership(&self, to: NodeId, voters: &BTreeSet<NodeId>) -> Result<(), Error> {
        if !voters.contains(&to) {
            return Err(Error::Conflict(format!("node {to} is not a voter")));
        }
        if to == self.id() {
            return Ok(());
        }
        // Not started (Raft stopped): certainly nothing happened.
        self.raft().trigger().transfer_leader(to).await.map_err(|e| Error::Unavailable(e.to_string()))?;
        let moved = self
            .raft()
            .wait(Some(Duration::from_millis(limits::LEADER_TRANSFER_WAIT_MS)))
            .metrics(|m| m.current_leader == Some(to), "leadership moved to the target")
            .await;
        // Started but not seen through: the target may still take over (or another node may).
        moved.map(|_| ()).map_err(|_| {
            Error::OutcomeUnknown(format!(
                "leadership did not move to node {to} within {} ms; it may still",
                limits::LEADER_TRANSFER_WAIT_MS
            ))
        })
    }
}

type ChangeResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
        RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
    >,
    tokio::time::error::Elapsed,
>;

/// The size of a majority of `voters` voters.
fn quorum_of(voters: usize) -> usize {
    voters / 2 + 1
}

/// Removing voter `id` must leave a voter, and a quorum of the `remaining` voters healthy
/// (answering the leader now and caught up): else every write would stall on the removal.
fn check_voter_removal(id: NodeId, remaining: &[NodeId], healthy: impl Fn(NodeId) -> bool) -> Result<(), Error> {
    if remaining.is_empty() {
        return Err(Error::Conflict(format!("node {id} is the last voter")));
    }
    let quorum = quorum_of(remaining.len());
    let healthy = remaining.iter().filter(|voter| healthy(**voter)).count();
    if healthy < quorum {
        return Err(Error::Conflict(format!(
            "removing node {id} would leave {healthy} healthy of {} voters, fewer than the quorum of {quorum}",
            remaining.len()
        )));
    }
    Ok(())
}

/// A learner `lag` entries behind the leader is promoted only once nearly caught up: a voter
/// far behind would count towards the quorum without being able to acknowledge anything.
fn check_promotion_lag(id: NodeId, lag: u64) -> Result<(), Error> {
    if lag > limits::MAX_PROMOTION_LAG_ENTRIES {
        return Err(Error::Conflict(format!("node {id} is {lag} entries behind; promote it once caught up")));
    }
    Ok(())
}

/// Translates a membership change's outcome at the boundary.
fn map_change(result: ChangeResult) -> Result<(), Error> {
    match result {
        Err(_) => Err(Error::OutcomeUnknown("the membership change was not committed in time".into())),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Err(Error::NoLeader { last_known_leader: forward.leader_id })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(e))))) => {
            // Transient: the next attempt succeeds once the change in flight commits.
            Err(Error::Unavailable(format!("another membership change is in progress: {e}")))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Err(Error::Conflict(e.to_string())),
        Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
            Err(Error::OutcomeUnknown("leadership changed before the membership change was committed".into()))
        }
        Ok(Err(RaftError::APIError(other))) => Err(Error::Internal(other.to_string())),
        Ok(Err(RaftError::Fatal(fatal))) => Err(Error::OutcomeUnknown(format!("raft stopped: {fatal}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a removal is refused unless a quorum of the voters left is healthy, counted among
    /// the voters left only (never the one removed), and the last voter is never removed.
    #[test]
    fn a_removal_needs_a_healthy_quorum_of_the_voters_left() {
        let all_healthy = |_: NodeId| true;
        assert!(check_voter_removal(3, &[1, 2], all_healthy).is_ok());
        // {1,2,3} minus 3 with 2 dead: 1 of 2 healthy, quorum 2.
        assert!(matches!(check_voter_removal(3, &[1, 2], |v| v == 1), Err(Error::Conflict(_))));
        // Five voters minus one: 3 of 4 healthy suffice (quorum 3); 2 do not.
        assert!(check_voter_removal(5, &[1, 2, 3, 4], |v| v != 4).is_ok());
        assert!(check_voter_removal(5, &[1, 2, 3, 4], |v| v <= 2).is_err());
        assert!(
            matches!(check_voter_removal(1, &[], all_healthy), Err(Error::Conflict(m)) if m.contains("last voter"))
        );
        assert_eq!((quorum_of(1), quorum_of(2), quorum_of(3), quorum_of(4), quorum_of(5)), (1, 2, 2, 3, 3));
    }

    /// Goal: promotion waits until the learner is within the named lag, and not one entry more.
    #[test]
    fn promotion_waits_until_the_learner_is_caught_up() {
        assert!(check_promotion_lag(4, 0).is_ok());
        assert!(check_promotion_lag(4, limits::MAX_PROMOTION_LAG_ENTRIES).is_ok());
        let refused = check_promotion_lag(4, limits::MAX_PROMOTION_LAG_ENTRIES + 1);
        assert!(matches!(refused, Err(Error::Conflict(m)) if m.contains("entries behind")));
    }
}
