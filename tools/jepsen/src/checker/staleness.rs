//! The bounded-staleness checker: every read made with `max_lag_ms=N` must return a value that
//! was the latest committed one at some moment within N ms (plus [`SLACK_MS`]) before the read
//! ended.
//!
//! The run's clock is the runner's own monotonic clock, so the only slack needed is for the
//! answer's way back from the node (the node judges freshness when it answers, the history
//! records the read's end when the answer arrives). A write's commit lies somewhere between its
//! invocation and its acknowledgement, so the check is conservative: a read of v ending at `e`
//! is stale for sure when some acknowledged write w of the same key was invoked after v's write
//! was acknowledged (so w was committed after v) and was itself acknowledged before
//! `e - N - SLACK_MS` (so from then on v was never the latest). A read of nothing is stale for
//! sure when any write of the key was acknowledged before that point; a read of a value nobody
//! wrote before the read ended is always wrong.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::OpKind;
use crate::history::Operation;
use crate::history::Status;

/// Allowance for the answer's way from the node back to the runner, in milliseconds.
pub const SLACK_MS: u64 = 250;

/// A bounded read that returned something older than its bound allows.
#[derive(Debug, Clone, Serialize)]
pub struct StaleRead {
    pub read: Operation,
    /// The acknowledged write that had replaced the value read before the bound's window began
    /// (`None` for a read of a value never written).
    pub superseded_by: Option<Operation>,
    /// How far before the window's start that write was acknowledged, in milliseconds.
    pub stale_by_ms: u64,
}

/// Checks every ok bounded-staleness read of `history`.
pub fn check(history: &[Operation]) -> Vec<StaleRead> {
    let mut writes: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history.iter().filter(|op| matches!(op.kind, OpKind::Write | OpKind::Cas)) {
        writes.entry(op.key.as_str()).or_default().push(op);
    }
    let mut stale = Vec::new();
    let reads = history.iter().filter(|op| op.kind == OpKind::Read && op.status == Status::Ok);
    for read in reads {
        let Some(max_lag_ms) = read.max_lag_ms else { continue };
        let window_start = read.complete_ns.saturating_sub((max_lag_ms + SLACK_MS) * 1_000_000);
        let key_writes = writes.get(read.key.as_str()).map(Vec::as_slice).unwrap_or_default();
        // Only an acknowledged write orders itself after another for sure.
        let acknowledged = || key_writes.iter().copied().filter(|w| w.status == Status::Ok);
        let superseded_by = match &read.value_read {
            None => acknowledged().filter(|w| w.complete_ns <= window_start).min_by_key(|w| w.complete_ns),
            Some(value) => {
                let source = key_writes.iter().copied().find(|w| w.value.as_ref() == Some(value));
                match source {
                    Some(source) if source.invoke_ns <= read.complete_ns => {
                        // An unknown write may have committed at any time after its invocation.
                        let committed_by = if source.status == Status::Ok { source.complete_ns } else { u64::MAX };
                        acknowledged()
                            .filter(|w| w.invoke_ns >= committed_by && w.complete_ns <= window_start)
                            .min_by_key(|w| w.complete_ns)
                    }
                    _ => {
                        stale.push(StaleRead { read: read.clone(), superseded_by: None, stale_by_ms: 0 });
                        continue;
                    }
                }
            }
        };
        if let Some(write) = superseded_by {
            let stale_by_ms = (window_start - write.complete_ns) / 1_000_000;
            stale.push(StaleRead { read: read.clone(), superseded_by: Some(write.clone()), stale_by_ms });
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::op;

    const MS: u64 = 1_000_000;

    fn bounded(mut read: Operation, max_lag_ms: u64) -> Operation {
        read.max_lag_ms = Some(max_lag_ms);
        read
    }

    /// Goal: a read within its bound passes: the old value was current until the new write
    /// was acknowledged, less than the bound before the read ended.
    #[test]
    fn a_read_within_its_bound_is_fine() {
        let history = vec![
            op(0, OpKind::Write, Some("a"), Status::Ok, 0, 10 * MS),
            op(0, OpKind::Write, Some("b"), Status::Ok, 20 * MS, 30 * MS),
            bounded(op(1, OpKind::Read, Some("a"), Status::Ok, 400 * MS, 410 * MS), 200),
        ];
        assert!(check(&history).is_empty());
    }

    /// Goal: a read of a value replaced longer ago than the bound (plus slack) is caught.
    #[test]
    fn a_read_older_than_its_bound_is_stale() {
        let history = vec![
            op(0, OpKind::Write, Some("a"), Status::Ok, 0, 10 * MS),
            op(0, OpKind::Write, Some("b"), Status::Ok, 20 * MS, 30 * MS),
            bounded(op(1, OpKind::Read, Some("a"), Status::Ok, 1000 * MS, 1010 * MS), 200),
        ];
        let stale = check(&history);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].superseded_by.as_ref().and_then(|w| w.value.clone()).as_deref(), Some("b"));
        assert_eq!(stale[0].stale_by_ms, 1010 - 200 - SLACK_MS - 30);
    }

    /// Goal: writes whose order is not certain never make a read stale (concurrent writes,
    /// an unknown write read back), and a read of nothing is stale only after an acknowledged
    /// write; a value nobody wrote is always wrong.
    #[test]
    fn only_certain_orders_count() {
        let history = vec![
            op(0, OpKind::Write, Some("a"), Status::Ok, 0, 50 * MS),
            op(1, OpKind::Write, Some("b"), Status::Ok, 10 * MS, 40 * MS),
            op(2, OpKind::Write, Some("c"), Status::Info, 60 * MS, 70 * MS),
            op(0, OpKind::Write, Some("d"), Status::Ok, 100 * MS, 110 * MS),
            bounded(op(3, OpKind::Read, Some("a"), Status::Ok, 2000 * MS, 2010 * MS), 100),
            bounded(op(3, OpKind::Read, Some("c"), Status::Ok, 2020 * MS, 2030 * MS), 100),
            bounded(op(3, OpKind::Read, None, Status::Ok, 0, 5 * MS), 100),
        ];
        // "a" was replaced by "d" (invoked after "a" was acknowledged) long before the read.
        let stale = check(&history);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].read.value_read.as_deref(), Some("a"));
        let never_written = vec![bounded(op(3, OpKind::Read, Some("zz"), Status::Ok, 0, 5 * MS), 100)];
        assert_eq!(check(&never_written).len(), 1);
        let absent_late = vec![
            op(0, OpKind::Write, Some("a"), Status::Ok, 0, 10 * MS),
            bounded(op(3, OpKind::Read, None, Status::Ok, 900 * MS, 910 * MS), 100),
        ];
        assert_eq!(check(&absent_late).len(), 1);
    }
}
