//! The lease checker: what every lease holder saw (`leases::hold`), against quorumkv's lease
//! guarantee: a lease lives at least `ttl_ms` after the sending of any request that renewed
//! it and was acknowledged (its grant, a keepalive).
//!
//! - **Never early.** An answer showing the lease ended (its key absent to a linearizable
//!   read, among them one sent 300 ms before the TTL since the last acknowledged renewal runs
//!   out, a keepalive or the attaching put refused with `lease_not_found`) that arrived at `c`
//!   means it ended before `c`; with an acknowledged renewal sent at `s`, `c < s + ttl` is a
//!   violation (this also catches a renewal acknowledged after the end was seen).
//! - **Gone at the end.** Every lease was abandoned by the end of the run, so after the
//!   cluster recovered each holder key is absent on every node (checked by the run, which
//!   passes the keys that remained).

use serde::Serialize;

use crate::leases::LeaseLog;

/// Anomalies reported at most, per run.
const MAX_ANOMALIES: usize = 20;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaseAnomaly {
    pub holder: String,
    pub lease: u64,
    pub key: String,
    pub what: String,
}

/// What was checked: leases, and renewals acknowledged.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LeaseCounts {
    pub leases: usize,
    pub renewals_acknowledged: usize,
    pub ends_seen: usize,
    /// Reads just before a TTL ran out that found the key (there must be some, else the
    /// tightest check looked at nothing).
    pub probes_present: usize,
}

/// Checks the holders' logs; `remaining` names keys still present on some node at the end.
pub fn check(logs: &[LeaseLog], remaining: &[(String, String)]) -> (LeaseCounts, Vec<LeaseAnomaly>) {
    let mut counts = LeaseCounts::default();
    let mut anomalies = Vec::new();
    for log in logs {
        for run in &log.leases {
            counts.leases += 1;
            counts.renewals_acknowledged += run.acknowledged_sends_ms.len();
            counts.ends_seen += run.ended_seen.len();
            counts.probes_present += usize::from(run.probe_present);
            let last_renewal = run.acknowledged_sends_ms.iter().max();
            let first_end = run.ended_seen.iter().min_by_key(|(at, _)| *at);
            if let (Some(&renewed), Some(&(ended, how))) = (last_renewal, first_end) {
                if ended < renewed + run.ttl_ms && anomalies.len() < MAX_ANOMALIES {
                    anomalies.push(LeaseAnomaly {
                        holder: log.endpoint.clone(),
                        lease: run.id,
                        key: run.key.clone(),
                        what: format!(
                            "ended early: {how} at {ended} ms, but a renewal sent at {renewed} ms was acknowledged \
                             (TTL {} ms)",
                            run.ttl_ms
                        ),
                    });
                }
            }
        }
    }
    for (node, key) in remaining.iter().take(MAX_ANOMALIES.saturating_sub(anomalies.len())) {
        anomalies.push(LeaseAnomaly {
            holder: node.clone(),
            lease: 0,
            key: key.clone(),
            what: "never expired: the abandoned lease's key is still there after the cluster recovered".into(),
        });
    }
    (counts, anomalies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::LeaseRun;

    fn log(acknowledged: Vec<u64>, ended: Vec<(u64, &'static str)>) -> LeaseLog {
        let run = LeaseRun {
            id: 7,
            key: "k".into(),
            ttl_ms: 2_000,
            acknowledged_sends_ms: acknowledged,
            ended_seen: ended,
            present_reads: 1,
            probe_present: false,
        };
        LeaseLog { endpoint: "e".into(), leases: vec![run], errors: 0 }
    }

    /// Goal: an end seen within the TTL of an acknowledged renewal is an anomaly, one seen
    /// after it is not, and so is a renewal acknowledged after the end; leftovers are named.
    #[test]
    fn early_ends_and_leftovers_are_found() {
        let (_, fine) = check(&[log(vec![0, 500], vec![(2_600, "read")])], &[]);
        assert!(fine.is_empty(), "{fine:?}");
        let (_, early) = check(&[log(vec![0, 500], vec![(2_400, "read")])], &[]);
        assert_eq!(early.len(), 1);
        let (_, after) = check(&[log(vec![0, 5_000], vec![(3_000, "read")])], &[]);
        assert_eq!(after.len(), 1, "a renewal acknowledged after the end was seen");
        let (counts, leftover) = check(&[log(vec![0], vec![])], &[("node 1".into(), "k".into())]);
        assert_eq!((counts.leases, counts.renewals_acknowledged, leftover.len()), (1, 1, 1));
    }
}
