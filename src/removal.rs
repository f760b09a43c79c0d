//! How a node learns that it was removed from the cluster, and what it does then.
//!
//! The leader stops replicating to a member once a membership without it is committed, so a
//! removed node rarely sees that membership itself: it just stops hearing from a leader. So a
//! node that has had no leader for a while asks its peers for their last *committed*
//! membership. Committed memberships are durable on a quorum and only move forward, so one that
//! is newer than this node's own and leaves it out proves it was removed, provided it is also
//! newer than a membership that listed this node (recorded durably the first time the node sees
//! itself listed): a learner still replaying the history before the membership that added it
//! is left out of every older membership without having been removed from any.
//!
//! A removed node stops serving clients (`503 removed`, `/ready` 503), stops campaigning, says
//! how to come back, and remembers it across restarts. It keeps answering Raft RPCs: a node that
//! was added back while it was away hears from the leader again, sees itself in a newer
//! membership, and serves again. Restarted with `--join`, a removed node asks to be added back
//! as a learner (its data is intact, so that is safe; a wiped node is another matter, see
//! `bootstrap.rs`).

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use crate::error::Error;
use crate::limits;
use crate::network::CallError;
use crate::node::Node;
use crate::protocol;
use crate::protocol::ProbeReply;
use crate::store::MemberSince;
use crate::types::LogId;
use crate::types::NodeId;

impl Node {
    /// The log index of the membership that removed this node, if it was removed.
    pub fn removed_at(&self) -> Option<u64> {
        *self.removal_state().lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_removed(&self) -> bool {
        self.removed_at().is_some()
    }

    /// Until shutdown: once this node has not heard from a leader for
    /// [`limits::REMOVAL_CHECK_AFTER_MS`], asks its peers whether it was removed (and again that
    /// often while the silence lasts); once removed, watches for being added back.
    pub async fn watch_removal(&self) {
        let started = Instant::now();
        let mut asked_at: Option<Instant> = None;
        let quiet = Duration::from_millis(limits::REMOVAL_CHECK_AFTER_MS);
        let mut member_since_noted = false;
        while !self.is_shutting_down() {
            tokio::time::sleep(Duration::from_millis(limits::REMOVAL_WATCH_INTERVAL_MS)).await;
            let (own, own_includes, is_leader) = self.own_membership();
            // As soon as it sees itself listed: the membership that later removes it may well
            // reach it before the silence does.
            if !member_since_noted {
                member_since_noted = matches!(self.member_since().await, Some(MemberSince::Listed(_)));
            }
            let own_index = own.map_or(0, |log_id| log_id.index());
            if let Some(removed_at) = self.removed_at() {
                if own_includes && own_index > removed_at {
                    self.note_member_again(own_index).await;
                }
                continue;
            }
            // A removed follower keeps believing in its last leader; only the silence tells.
            let heard = self.last_leader_contact().unwrap_or(started);
            if is_leader || heard.elapsed() < quiet || asked_at.is_some_and(|at| at.elapsed() < quiet) {
                continue;
            }
            asked_at = Some(Instant::now());
            if let Some(index) = self.removal_evidence().await {
                self.note_removed(index).await;
            }
        }
    }

    /// This node's own membership: its log id, whether it lists this node, and whether this
    /// node is the leader.
    fn own_membership(&self) -> (Option<LogId>, bool, bool) {
        let metrics = self.raft_metrics();
        let membership = &metrics.membership_config;
        let is_leader = metrics.state == openraft::ServerState::Leader;
        (*membership.log_id(), membership.membership().get_node(&self.id()).is_some(), is_leader)
    }

    /// Asks every member this node knows of (and the founders) for their committed membership.
    /// Returns the log index of one that is newer than this node's own and leaves it out.
    pub(crate) async fn removal_evidence(&self) -> Option<u64> {
        let (own, own_includes, _) = self.own_membership();
        // Not part of any cluster yet (a joining node before the leader's first append).
        self.raft_metrics().membership_config.membership().nodes().next()?;
        // Unreadable: no removal can be proven; the node keeps serving, as before.
        let member_since = self.member_since().await?;
        let mut peers: BTreeMap<NodeId, String> = self.config().initial_members().unwrap_or_default();
        let metrics = self.raft_metrics();
        for (id, member) in metrics.membership_config.membership().nodes() {
            peers.insert(*id, member.peer_addr.clone());
        }
        peers.remove(&self.id());
        let calls = peers.iter().map(|(id, addr)| {
            let peer = self.peer_client_at(*id, addr);
            async move {
                let timeout = Duration::from_millis(limits::BOOTSTRAP_PROBE_TIMEOUT_MS);
                let answer: Result<Result<ProbeReply, Error>, CallError> =
                    peer.call::<protocol::Probe>(&self.id(), timeout).await;
                answer.ok().and_then(Result::ok)
            }
        });
        // Log ids, not indexes: an uncommitted membership of a deposed leader at the same index
        // is older than a committed one of a later term.
        let newest = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|reply| (reply.committed_membership, !reply.asker_in_committed_membership))?;
        proves_removal(own, own_includes, member_since, &newest)
    }

    /// What this node knows of the memberships that listed it, after recording (durably, once)
    /// the first one it sees itself in: its own membership, or the committed one. A node that
    /// was never a member, or has not yet replayed the membership that added it, is thus never
    /// taken for a removed one. `None` when the record cannot be read.
    async fn member_since(&self) -> Option<MemberSince> {
        let metrics = self.raft_metrics();
        let listing = [&metrics.membership_config, &metrics.committed_membership_config]
            .into_iter()
            .find(|membership| membership.membership().get_node(&self.id()).is_some())
            .and_then(|membership| *membership.log_id());
        let record = self.bootstrap_record().clone();
        let stored = tokio::task::spawn_blocking(move || {
            if let Some(membership) = listing {
                record.note_member_since(membership)?;
            }
            record.member_since()
        })
        .await;
        match stored {
            Ok(Ok(member_since)) => Some(member_since),
            other => {
                tracing::warn!("cannot read or record the membership that listed this node: {other:?}");
                None
            }
        }
    }

    /// Stops serving clients and campaigning, remembers it, and tells the operator what to do.
    pub(crate) async fn note_removed(&self, membership_index: u64) {
        {
            let mut removed = self.removal_state().lock().unwrap_or_else(|p| p.into_inner());
            if removed.is_some() {
                return;
            }
            *removed = Some(membership_index);
        }
        self.raft().runtime_config().elect(false);
        self.persist_removal(Some(membership_index)).await;
        tracing::warn!(
            "this node was removed from the cluster: the membership committed at log index {membership_index} \
             does not list it. It no longer serves clients (503 removed) and does not campaign. To add it back \
             with its data, restart it with --join <any member's client address> (or run `quorumkv cluster \
             add-learner {id} {peer_addr}`, then promote it). To retire it, stop it and delete its data dir.",
            id = self.id(),
            peer_addr = self.config().advertised_peer_addr(),
        );
    }

    async fn note_member_again(&self, membership_index: u64) {
        *self.removal_state().lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.persist_removal(None).await;
        self.raft().runtime_config().elect(true);
        tracing::info!("this node is a member again (membership at log index {membership_index}); serving clients");
    }

    async fn persist_removal(&self, membership_index: Option<u64>) {
        let record = self.bootstrap_record().clone();
        let stored = tokio::task::spawn_blocking(move || record.set_removed_at(membership_index)).await;
        if !matches!(stored, Ok(Ok(()))) {
            // Only the restart behaviour depends on it: the node learns again from its peers.
            tracing::warn!("could not record the removal state durably: {stored:?}");
        }
    }
}

/// Whether a peer's answer proves this node was removed; the log index of the membership that
/// removed it if so. This node's own membership is `own` (and lists it when `own_includes`);
/// `member_since` is what it knows of the memberships that listed it.
fn proves_removal(
    own: Option<LogId>,
    own_includes: bool,
    member_since: MemberSince,
    answer: &ProbeReply,
) -> Option<u64> {
    let committed = answer.committed_membership?;
    match member_since {
        // Joined and never listed yet: it replays the history from before it was added, so it
        // is not a member yet, and not removed either.
        MemberSince::NotYet => return None,
        // A removal comes after the membership that listed the node.
        MemberSince::Listed(listed) if committed <= listed => return None,
        // A data dir from before the record (or a founder, listed from the start): the rules
        // below alone, as before.
        MemberSince::Listed(_) | MemberSince::Unrecorded => {}
    }
    // The membership at index 0 is the founders' (written by `initialize`): a node it leaves out
    // was never in it, so it cannot have been removed from it. A learner that joined and has
    // not yet received a later membership sees exactly that one.
    if committed.index() == 0 {
        return None;
    }
    // Newer than this node's own membership; or, when its own already leaves it out (it
    // saw its removal, or it is a learner still replaying an older history), at least as new.
    let newer = Some(committed) > own || (!own_includes && Some(committed) >= own);
    (newer && !answer.asker_in_committed_membership).then_some(committed.index())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_log_id;

    fn answer(committed: Option<LogId>, asker_in_committed_membership: bool) -> ProbeReply {
        ProbeReply {
            has_seen_asker: true,
            asker_registered: true,
            members: vec![],
            committed_membership: committed,
            asker_in_committed_membership,
        }
    }

    /// Goal: only a committed membership that leaves this node out, and is newer both than its
    /// own and than one that listed it, proves a removal; the founders' membership (index 0)
    /// never does, and a node that joined and never saw itself listed is never taken for a
    /// removed one.
    #[test]
    fn only_a_newer_committed_membership_without_this_node_proves_removal() {
        use MemberSince::*;
        let founders = test_log_id(0, 1, 0);
        let (added, later, latest) = (test_log_id(1, 1, 4), test_log_id(1, 1, 7), test_log_id(2, 2, 9));
        // A voter listed in `later` that missed its removal at `latest`.
        assert_eq!(proves_removal(Some(later), true, Listed(later), &answer(Some(latest), false)), Some(9));
        // The same with nothing recorded (a data dir from before the record).
        assert_eq!(proves_removal(Some(later), true, Unrecorded, &answer(Some(latest), false)), Some(9));
        // A newer membership that still lists it, or one no newer than its own: not removed.
        assert_eq!(proves_removal(Some(later), true, Listed(later), &answer(Some(latest), true)), None);
        assert_eq!(proves_removal(Some(latest), true, Listed(added), &answer(Some(later), false)), None);
        assert_eq!(proves_removal(Some(later), true, Listed(later), &answer(None, false)), None);
        // It saw the membership that leaves it out after one that listed it (removed, restarted),
        // recorded or not.
        assert_eq!(proves_removal(Some(latest), false, Listed(added), &answer(Some(latest), false)), Some(9));
        assert_eq!(proves_removal(Some(latest), false, Unrecorded, &answer(Some(latest), false)), Some(9));
        // A joining learner that has only the founders' membership, asking founders that have
        // committed nothing since: it was never a member, so it was not removed.
        assert_eq!(proves_removal(Some(founders), false, NotYet, &answer(Some(founders), false)), None);
        assert_eq!(proves_removal(Some(founders), false, Unrecorded, &answer(Some(founders), false)), None);
        assert_eq!(proves_removal(None, false, NotYet, &answer(Some(founders), false)), None);
        // A joining learner replaying history, at `later` (before the membership adding it),
        // while the peers' committed membership is `later` too: not yet a member, not removed.
        assert_eq!(proves_removal(Some(later), false, NotYet, &answer(Some(later), false)), None);
        assert_eq!(proves_removal(Some(later), false, NotYet, &answer(Some(latest), false)), None);
        // A membership no newer than the one that listed it proves nothing, whatever it says.
        assert_eq!(proves_removal(Some(latest), false, Listed(latest), &answer(Some(later), false)), None);
    }
}
