//! The lease keeper: the leader's clock for leases. Every node runs it; only the leader acts.
//!
//! A lease's time is kept by the leader alone, on its monotonic clock, and never enters the
//! log: when a lease's TTL has run out since its last renewal the leader *seen*, it proposes
//! `LeaseCommand::Expire` naming that renewal, and apply ends the lease only if no keepalive
//! was applied since (`quorumkv_wire::lease`). So:
//!
//! - **No early expiry on the leader.** A lease's deadline is set when the keeper first sees
//!   its grant or renewal applied, which is after the client sent it: the lease lives at least
//!   `ttl_ms` after the client sent its last acknowledged keepalive (or grant).
//! - **No early expiry across a failover.** A new leader starts keeping time only once it has
//!   applied an entry of its own leadership (so every entry before it, every keepalive
//!   acknowledged by an earlier leader among them), and then gives every lease a fresh full TTL
//!   from that moment. Each of those keepalives reached this node before it was elected, so the
//!   fresh TTL ends after theirs would have. A lease may live up to one TTL longer than asked
//!   because of a failover, as in etcd.
//! - **An old leader's expiry cannot overtake a keepalive.** Its `Expire` names the renewal it
//!   judged; a keepalive applied before it makes it a no-op.
//!
//! The guarantee assumes clocks run at about the same rate (not that they agree): a leader whose
//! clock runs fast expires leases early in real time.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::vote::RaftLeaderId;
use openraft::ServerState;

use crate::limits;
use crate::node::Node;
use crate::protocol::Ack;
use crate::store::leases::LeaseClockView;
use crate::types::Command;
use quorumkv_wire::lease::LeaseCommand;
use quorumkv_wire::lease::LeaseId;

/// One lease's time on the leader.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    renewed_revision: u64,
    /// When this leader proposed its expiry (proposed again only after that proposal timed out).
    expiry_proposed: Option<Instant>,
}

/// The leader's deadlines, for the term it keeps time in.
#[derive(Debug, Default)]
pub(crate) struct LeaseClock {
    /// The term this node leads and keeps time in (`None`: not keeping time).
    term: Option<u64>,
    /// The lease table's generation the deadlines were built from.
    generation: u64,
    deadlines: HashMap<LeaseId, Deadline>,
    /// The same deadlines in time order.
    order: BTreeSet<(Instant, LeaseId)>,
}

impl LeaseClock {
    fn set(&mut self, id: LeaseId, view: LeaseClockView, now: Instant) {
        self.remove(id);
        let at = now + Duration::from_millis(view.ttl_ms);
        self.deadlines.insert(id, Deadline { at, renewed_revision: view.renewed_revision, expiry_proposed: None });
        self.order.insert((at, id));
    }

    fn remove(&mut self, id: LeaseId) {
        if let Some(deadline) = self.deadlines.remove(&id) {
            self.order.remove(&(deadline.at, id));
        }
    }

    fn clear(&mut self) {
        self.term = None;
        self.deadlines.clear();
        self.order.clear();
    }

    /// What is left of the lease's TTL on this leader (`None`: not keeping its time).
    pub(crate) fn remaining(&self, id: LeaseId) -> Option<Duration> {
        self.term?;
        self.deadlines.get(&id).map(|deadline| deadline.at.saturating_duration_since(Instant::now()))
    }
}

impl Node {
    /// Keeps leases' time while this node leads, and proposes the expiry of those whose TTL
    /// ran out. Runs until shutdown.
    pub async fn keep_lease_time(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(limits::LEASE_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pending = Arc::new(tokio::sync::Semaphore::new(limits::MAX_PENDING_LEASE_EXPIRIES));
        loop {
            tick.tick().await;
            for (id, renewed_revision) in self.lease_clock_tick(pending.available_permits()) {
                let Ok(permit) = pending.clone().try_acquire_owned() else { break };
                let node = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let command = Command::Lease(LeaseCommand::Expire { id, renewed_revision });
                    match node.write_as_leader(command, Ack::Quorum).await {
                        Ok(result) => tracing::debug!(id, ?result, "lease expiry applied"),
                        // Still marked as proposed: tried again later if still due and leading.
                        Err(error) => tracing::debug!(id, %error, "lease expiry not applied"),
                    }
                });
            }
        }
    }

    /// One turn of the keeper: bring the deadlines up to date with the applied leases, and
    /// return the expiries to propose now (at most [`limits::MAX_LEASE_EXPIRIES_PER_TICK`],
    /// and at most `budget`: the proposals not yet answered are bounded too).
    fn lease_clock_tick(&self, budget: usize) -> Vec<(LeaseId, u64)> {
        let metrics = self.raft_metrics();
        let reader = self.kv_reader();
        let cache = reader.lease_cache();
        let mut clock = self.lease_clock().lock().unwrap_or_else(|p| p.into_inner());
        let (generation, changes) = cache.drain_changes();
        let applied_leader = metrics.last_applied.as_ref().map(|log_id| {
            let leader = log_id.committed_leader_id();
            (leader.term(), *leader.node_id())
        });
        // Keeping time needs this node to lead and to have applied an entry of its own
        // leadership (its first, blank one at least), hence every entry before it.
        let leading = metrics.state == ServerState::Leader
            && metrics.current_leader == Some(self.id())
            && applied_leader == Some((metrics.current_term, self.id()));
        if !leading {
            clock.clear();
            return Vec::new();
        }
        let now = Instant::now();
        if clock.term != Some(metrics.current_term) || clock.generation != generation {
            // Newly leading (or the table was replaced): every lease gets a full TTL from now.
            clock.clear();
            let (generation, all) = cache.all();
            for (id, view) in all {
                clock.set(id, view, now);
            }
            clock.term = Some(metrics.current_term);
            clock.generation = generation;
            tracing::info!(term = metrics.current_term, leases = clock.deadlines.len(), "keeping lease time");
        } else {
            for (id, view) in changes {
                match view {
                    None => clock.remove(id),
                    // A grant, or a renewal this clock has not counted yet.
                    Some(view)
                        if clock.deadlines.get(&id).is_none_or(|d| d.renewed_revision != view.renewed_revision) =>
                    {
                        clock.set(id, view, now)
                    }
                    Some(_) => {}
                }
            }
        }
        // Only once the last proposal has certainly timed out.
        let retry = self.config().write_timeout() + Duration::from_millis(limits::LEASE_EXPIRE_RETRY_MS);
        let due: Vec<LeaseId> = clock.order.iter().take_while(|(at, _)| *at <= now).map(|(_, id)| *id).collect();
        let mut expiries = Vec::new();
        for id in due {
            if expiries.len() >= limits::MAX_LEASE_EXPIRIES_PER_TICK.min(budget) {
                break;
            }
            let Some(deadline) = clock.deadlines.get_mut(&id) else { continue };
            if deadline.expiry_proposed.is_some_and(|at| now.duration_since(at) < retry) {
                continue;
            }
            deadline.expiry_proposed = Some(now);
            expiries.push((id, deadline.renewed_revision));
        }
        expiries
    }
}
