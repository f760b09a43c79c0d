//! Bounded-staleness reads (`consistency=stale&max_lag_ms=N`): answered from this node's own
//! state only if that state was the latest committed one at some moment within the last N ms.
//!
//! Freshness is measured against the cluster's real commit point, never against a leader's
//! word alone (a leader cut off from its quorum keeps heartbeating its followers, with a frozen
//! commit index). A leader vouches for a moment only as far back as its leadership was last
//! confirmed by a quorum: openraft stamps that confirmation with the *sending* time of the
//! heartbeat round a quorum acknowledged, and no other leader can have been elected before that
//! moment. The leader's commit index then covers every write acknowledged before it (once the
//! leader has committed an entry of its own term).
//!
//! A follower or learner asks the leader (`/internal/freshness`) and measures on its own clock,
//! so no clock synchronisation is assumed: it sends at `t0`, the leader answers with its commit
//! index `c` and the age `a` of its last quorum confirmation. That confirmation happened after
//! `t0 - a` (the leader answered after `t0`), so once this node has applied `c`, its state was
//! the latest committed one at some moment at or after `t0 - a`. A read is served if that
//! moment is at most N ms ago. While bounded reads keep coming, a keeper task asks once per
//! heartbeat interval, so reads rarely wait for the leader; a read that finds no recent enough
//! answer asks once itself, then refuses with `503 too_stale`.

use std::time::Duration;
use std::time::Instant;

use openraft::ServerState;

use crate::error::Error;
use crate::limits;
use crate::network::CallError;
use crate::node::Node;
use crate::protocol;
use crate::protocol::FreshnessReply;
use crate::types::LogId;

/// How fresh this node's state is known to be.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// Once `committed_index` is applied here, the state was the latest committed one at some
    /// moment at or after this instant (this node's clock).
    pub as_of: Instant,
    pub committed_index: u64,
}

impl Node {
    /// Bounded staleness: succeeds if this node's state was the latest committed one at some
    /// moment within the last `max_lag`; else `503 too_stale`.
    pub(crate) async fn check_staleness(&self, max_lag: Duration) -> Result<(), Error> {
        let max_lag_ms = max_lag.as_millis() as u64;
        if self.raft_metrics().state == ServerState::Leader {
            return self.check_staleness_as_leader(max_lag);
        }
        *self.bounded_read_state().lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let fresh = |freshness: Option<Freshness>| freshness.filter(|f| f.as_of.elapsed() <= max_lag);
        let mut freshness = fresh(self.freshness());
        if freshness.is_none() {
            // The keeper was idle or the leader did not answer lately: ask once.
            self.refresh_freshness().await;
            freshness = fresh(self.freshness());
        }
        let Some(freshness) = freshness else {
            return Err(Error::TooStale {
                lag_ms: self.freshness().map(|f| f.as_of.elapsed().as_millis() as u64),
                max_lag_ms,
            });
        };
        // Fresh enough, but this node may still be applying what the leader said was committed:
        // wait for it while the bound still holds.
        let remaining = max_lag.saturating_sub(freshness.as_of.elapsed());
        let applied = self
            .raft()
            .wait(Some(remaining))
            .metrics(
                |m| m.last_applied.as_ref().is_some_and(|l| l.index() >= freshness.committed_index),
                "applied what the leader had committed",
            )
            .await;
        let lag_ms = freshness.as_of.elapsed().as_millis() as u64;
        if applied.is_ok() && lag_ms <= max_lag_ms {
            Ok(())
        } else {
            Err(Error::TooStale { lag_ms: Some(lag_ms), max_lag_ms })
        }
    }

    /// A leader's state is as fresh as its last confirmation by a quorum, once it has applied
    /// everything it committed, an entry of its own term included.
    fn check_staleness_as_leader(&self, max_lag: Duration) -> Result<(), Error> {
        let max_lag_ms = max_lag.as_millis() as u64;
        match self.freshness_as_leader() {
            Ok(reply) => {
                let applied = self.raft_metrics().last_applied.as_ref().map_or(0, |l| l.index());
                leader_within_bound(reply, applied, max_lag_ms)
            }
            Err(_) => Err(Error::TooStale { lag_ms: None, max_lag_ms }),
        }
    }

    /// On the leader: its committed index and the age of its last confirmation by a quorum.
    pub fn freshness_as_leader(&self) -> Result<FreshnessReply, Error> {
        let metrics = self.raft_metrics();
        if metrics.state != ServerState::Leader {
            return Err(Error::NoLeader { last_known_leader: metrics.current_leader });
        }
        let quorum_age = metrics.last_quorum_acked.map(|confirmed| openraft::Instant::elapsed(&*confirmed));
        leader_freshness(quorum_age, metrics.local_committed.as_ref(), metrics.current_term)
    }

    fn freshness(&self) -> Option<Freshness> {
        *self.freshness_state().lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the leader once how fresh this node can be, and keeps the answer if it is newer.
    async fn refresh_freshness(&self) {
        let Some(leader) = self.current_leader().filter(|leader| *leader != self.id()) else { return };
        let Ok(peer) = self.peer_client(leader) else { return };
        let sent = Instant::now();
        let timeout = Duration::from_millis(limits::FRESHNESS_TIMEOUT_MS);
        let answer: Result<Result<FreshnessReply, Error>, CallError> =
            peer.call::<protocol::Freshness>(&(), timeout).await;
        let Ok(Ok(reply)) = answer else { return };
        let Some(as_of) = sent.checked_sub(Duration::from_micros(reply.quorum_age_us)) else { return };
        let mut freshness = self.freshness_state().lock().unwrap_or_else(|p| p.into_inner());
        if freshness.is_none_or(|known| known.as_of < as_of) {
            *freshness = Some(Freshness { as_of, committed_index: reply.committed_index });
        }
    }

    /// Until shutdown: while bounded-staleness reads arrive (the last within
    /// [`limits::FRESHNESS_KEEPALIVE_MS`]), asks the leader once per heartbeat interval, so such
    /// reads rarely wait for an answer.
    pub async fn keep_fresh(&self) {
        let interval = Duration::from_millis(self.config().heartbeat_interval_ms);
        let keep_alive = Duration::from_millis(limits::FRESHNESS_KEEPALIVE_MS);
        while !self.is_shutting_down() {
            tokio::time::sleep(interval).await;
            let asked = *self.bounded_read_state().lock().unwrap_or_else(|p| p.into_inner());
            if asked.is_some_and(|at| at.elapsed() <= keep_alive) {
                self.refresh_freshness().await;
            }
        }
    }
}

/// A leader's freshness: the age of its last confirmation by a quorum (`None`: never
/// confirmed) and its committed log id, which counts only once it is of the leader's own
/// `term`: until then its commit index may lag writes its predecessor acknowledged.
fn leader_freshness(
    quorum_age: Option<Duration>,
    committed: Option<&LogId>,
    term: u64,
) -> Result<FreshnessReply, Error> {
    let Some(quorum_age) = quorum_age else {
        return Err(Error::Unavailable("leadership not yet confirmed by a quorum".into()));
    };
    let Some(committed) = committed.filter(|log_id| log_id.leader_id.term == term) else {
        return Err(Error::Unavailable("this leader has not committed an entry of its term yet".into()));
    };
    Ok(FreshnessReply { committed_index: committed.index(), quorum_age_us: quorum_age.as_micros() as u64 })
}

/// A leader serves a bounded read when its last quorum confirmation is within the bound and
/// it has applied everything it had committed then.
fn leader_within_bound(reply: FreshnessReply, applied_index: u64, max_lag_ms: u64) -> Result<(), Error> {
    let lag_ms = reply.quorum_age_us / 1_000;
    if lag_ms <= max_lag_ms && applied_index >= reply.committed_index {
        Ok(())
    } else {
        Err(Error::TooStale { lag_ms: Some(lag_ms), max_lag_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        crate::types::test_log_id(term, 1, index)
    }

    /// Goal: a leader vouches for its freshness only once a quorum confirmed it and it
    /// committed an entry of its own term.
    #[test]
    fn a_leader_is_fresh_only_once_confirmed_and_committed_in_its_term() {
        let age = Some(Duration::from_millis(3));
        assert!(matches!(leader_freshness(None, Some(&log_id(2, 9)), 2), Err(Error::Unavailable(_))));
        assert!(matches!(leader_freshness(age, Some(&log_id(1, 9)), 2), Err(Error::Unavailable(_))));
        assert!(matches!(leader_freshness(age, None, 2), Err(Error::Unavailable(_))));
        let reply = leader_freshness(age, Some(&log_id(2, 9)), 2).expect("fresh");
        assert_eq!(reply, FreshnessReply { committed_index: 9, quorum_age_us: 3_000 });
    }

    /// Goal: the bound is inclusive, in milliseconds, and holds only with everything applied.
    #[test]
    fn a_leaders_bounded_read_needs_a_recent_quorum_and_everything_applied() {
        let reply = |age_ms: u64| FreshnessReply { committed_index: 10, quorum_age_us: age_ms * 1_000 + 999 };
        assert!(leader_within_bound(reply(500), 10, 500).is_ok());
        assert!(leader_within_bound(reply(499), 11, 500).is_ok());
        assert!(matches!(
            leader_within_bound(reply(501), 10, 500),
            Err(Error::TooStale { lag_ms: Some(501), max_lag_ms: 500 })
        ));
        assert!(matches!(leader_within_bound(reply(0), 9, 500), Err(Error::TooStale { .. })));
    }
}
