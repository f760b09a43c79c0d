//! The one way to the leader. Writes, read points and administration requests run on the
//! leader; any node accepts them and sends them there: it runs the request itself when it
//! leads, else forwards it over the peer channel, and tries again — against whichever node
//! leads by then — only when the request certainly did not run.
//!
//! Retry rule: "not the leader" (from this node's Raft or the target's answer) and "could not
//! reach the target" (connection refused, peer not serving yet) prove the request did not run.
//! A forwarded request sent without an answer may have run: a write's outcome is then unknown
//! (`504`), never retried; a read, which changes nothing, may be tried again.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use crate::error::Error;
use crate::limits;
use crate::network::CallError;
use crate::network::PeerClient;
use crate::node::Node;
use crate::protocol::Rpc;
use crate::types::NodeId;

/// Whether a request may be sent again after it was sent but no answer came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// It changes nothing (a read point): a request sent without an answer may be retried.
    None,
    /// It may change state (a write, a membership change): only a certain "did not run" may.
    Changes,
}

/// What one try at the presumed leader came to.
enum Attempt<T> {
    Finished(Result<T, Error>),
    /// Certainly not run: the target is not (or not yet) the leader; it may name the leader.
    NotLeader(Option<NodeId>),
    /// Certainly not run: the target could not be reached.
    Unreachable,
}

impl<T> Attempt<T> {
    fn from_result(result: Result<T, Error>) -> Self {
        match result {
            Err(Error::NoLeader { last_known_leader }) => Attempt::NotLeader(last_known_leader),
            other => Attempt::Finished(other),
        }
    }
}

impl Node {
    /// Runs a request on the leader: `local` when this node leads, else `remote`, which sends
    /// it to the leader's peer port (see [`forward_as`]; a write goes in a batch).
    ///
    /// Waits for an election at most `--leader-wait-ms` in all. After "not the leader" from the
    /// node it believed led (a leader that just stepped down, or one elected but not yet sure
    /// of it) it goes to the node named in the answer, else tries again after a short pause,
    /// so a request never sits out a whole leader wait once a leader exists.
    pub(crate) async fn via_leader<T, Local, Remote>(
        &self,
        effect: Effect,
        local: impl Fn() -> Local,
        remote: impl Fn(PeerClient) -> Remote,
    ) -> Result<T, Error>
    where
        Local: Future<Output = Result<T, Error>>,
        Remote: Future<Output = Result<Result<T, Error>, CallError>>,
    {
        let deadline = Instant::now() + self.config().leader_wait();
        let mut pause = Duration::from_millis(limits::LEADER_RETRY_PAUSE_FIRST_MS);
        let mut named: Option<NodeId> = None;
        let mut last_known_leader = None;
        for _ in 0..limits::MAX_LEADER_ATTEMPTS {
            let leader = match named.take() {
                Some(leader) => leader,
                None => self.leader_before(deadline).await?,
            };
            last_known_leader = Some(leader);
            let attempt = if leader == self.id() {
                Attempt::from_result(local().await)
            } else {
                self.forward(leader, effect, &remote).await
            };
            match attempt {
                Attempt::Finished(result) => return result,
                Attempt::NotLeader(hint) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    // Follow a hint to another member at once; else the same node may be about
                    // to lead (or another is being elected): look again shortly.
                    match hint.filter(|hint| *hint != leader && self.is_member(*hint)) {
                        Some(hint) => named = Some(hint),
                        None => {
                            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
                            pause = (pause * 2).min(Duration::from_millis(limits::LEADER_RETRY_PAUSE_MAX_MS));
                        }
                    }
                }
                Attempt::Unreachable => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    self.wait_leader_change_until(leader, deadline).await;
                }
            }
        }
        Err(Error::NoLeader { last_known_leader: self.current_leader().or(last_known_leader) })
    }

    async fn forward<T, Remote>(
        &self,
        leader: NodeId,
        effect: Effect,
        remote: &impl Fn(PeerClient) -> Remote,
    ) -> Attempt<T>
    where
        Remote: Future<Output = Result<Result<T, Error>, CallError>>,
    {
        let peer = match self.peer_client(leader) {
            Ok(peer) => peer,
            // The leader left the membership we know: wait for the next one.
            Err(_) => return Attempt::Unreachable,
        };
        let answer: Result<Result<T, Error>, CallError> = remote(peer).await;
        match answer {
            Ok(result) => Attempt::from_result(result),
            Err(error) => match after_failed_forward(&error, effect) {
                Some(error) => Attempt::Finished(Err(error)),
                None => {
                    tracing::debug!(%error, "forwarding to the leader failed; trying again");
                    Attempt::Unreachable
                }
            },
        }
    }

    /// The current leader, waiting until `deadline` for an election if none is known.
    async fn leader_before(&self, deadline: Instant) -> Result<NodeId, Error> {
        if let Some(leader) = self.current_leader() {
            return Ok(leader);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let waited =
            self.raft().wait(Some(remaining)).metrics(|m| m.current_leader.is_some(), "a leader is known").await;
        match waited {
            Ok(metrics) => metrics.current_leader.ok_or(Error::NoLeader { last_known_leader: None }),
            Err(_) => Err(Error::NoLeader { last_known_leader: None }),
        }
    }

    /// After `old` could not be reached, waits (until `deadline`) until another leader is known.
    async fn wait_leader_change_until(&self, old: NodeId, deadline: Instant) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .raft()
            .wait(Some(remaining))
            .metrics(|m| m.current_leader.is_some_and(|l| l != old), "the leader changed")
            .await;
    }
}

/// The usual `remote` of [`Node::via_leader`]: `request` sent alone as the [`Rpc`] `R`.
pub(crate) async fn forward_as<R: Rpc>(
    peer: PeerClient,
    request: &R::Request,
    timeout: Duration,
) -> Result<R::Reply, CallError> {
    peer.forward::<R>(request, timeout).await
}

/// The retry rule for a forward that got no answer from the leader: `None` when it may be
/// sent again (to whichever node leads by then), else the error the client gets.
fn after_failed_forward(error: &CallError, effect: Effect) -> Option<Error> {
    match error {
        // Not sent, and retrying would only queue again behind the same requests.
        CallError::Busy(_) => Some(Error::Overloaded),
        // Not run, and sending it again would be refused again (e.g. another protocol version).
        CallError::Refused(..) | CallError::UnknownPath(..) | CallError::Unauthorized(..) => {
            Some(Error::Unavailable(error.to_string()))
        }
        // Certainly not run: the leader was unreachable or not serving yet.
        CallError::NotSent(..) | CallError::NotReady(_) => None,
        // It may have run: a read point changes nothing, a write's outcome is unknown.
        CallError::NoAnswer(..) => match effect {
            Effect::None => None,
            Effect::Changes => Some(Error::OutcomeUnknown(error.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: only a request that certainly did not run, or changes nothing, is sent again; a
    /// write sent without an answer is reported as unknown, never retried.
    #[test]
    fn a_forward_is_retried_only_when_it_certainly_did_not_run() {
        let not_sent = CallError::NotSent(2, "connection refused".into());
        let not_ready = CallError::NotReady(2);
        let no_answer = CallError::NoAnswer(2, "timed out".into());
        for effect in [Effect::None, Effect::Changes] {
            assert!(after_failed_forward(&not_sent, effect).is_none());
            assert!(after_failed_forward(&not_ready, effect).is_none());
            assert_eq!(after_failed_forward(&CallError::Busy(2), effect), Some(Error::Overloaded));
            let refused = CallError::Refused(2, "HTTP 400: peer protocol version 2".into());
            assert!(matches!(after_failed_forward(&refused, effect), Some(Error::Unavailable(_))));
            let unknown_path = CallError::UnknownPath(2, "/p1/internal/writes".into());
            assert!(matches!(after_failed_forward(&unknown_path, effect), Some(Error::Unavailable(_))));
            let unauthorized = CallError::Unauthorized(2, "peer token".into());
            assert!(matches!(after_failed_forward(&unauthorized, effect), Some(Error::Unavailable(_))));
        }
        assert!(after_failed_forward(&no_answer, Effect::None).is_none());
        let unknown = after_failed_forward(&no_answer, Effect::Changes).expect("not retried");
        assert!(matches!(unknown, Error::OutcomeUnknown(_)));
        assert_eq!(unknown.outcome(), quorumkv_api::Outcome::Unknown);
    }
}
