//! Linearizability checker for a history of register operations on many keys.
//!
//! Keys are independent registers, so each key's sub-history is checked on its own
//! (P-compositionality, as Porcupine does). Within a key the search is Wing & Gong's, with
//! Lowe's memoization of (linearized set, state) pairs. An operation whose outcome is unknown
//! (`info`) may take effect at any point after its invocation, or never: its return is placed
//! after every definite event, and the search succeeds once every definite operation is
//! linearized. The search has a step budget and answers `Unknown` instead of running on.

pub mod lease;
pub mod lock;
pub mod set;
pub mod staleness;
pub mod watch;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;

use serde::Serialize;

use crate::history::OpKind;
use crate::history::Operation;
use crate::history::Status;

/// Completed operations shown before a violation, for context.
const ANOMALY_CONTEXT: usize = 5;

/// Steps one key's search may take before the answer is `Unknown`.
pub const DEFAULT_STEP_BUDGET: u64 = 20_000_000;

/// The verdict for a whole history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

/// Why a key's history is not linearizable: the operation no order could place, and the
/// operations concurrent with it.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub key: String,
    pub stuck_operation: Operation,
    /// The last operations on the key that completed before the stuck one began.
    pub preceding: Vec<Operation>,
    pub concurrent: Vec<Operation>,
    pub linearized_before_stuck: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub keys_checked: usize,
    pub anomalies: Vec<Anomaly>,
    pub unknown_keys: Vec<String>,
}

/// Checks every key's register history.
pub fn check(history: &[Operation], step_budget: u64) -> Report {
    // Values some operation observed: read results and the values CAS compared against.
    let observed: HashSet<&str> = history
        .iter()
        .filter(|op| op.status == Status::Ok)
        .filter_map(|op| op.value_read.as_deref().or(op.expected.as_deref()))
        .collect();
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    // Bounded-staleness reads promise less than linearizability: `staleness.rs` checks them.
    for op in history.iter().filter(|op| op.max_lag_ms.is_none()) {
        // A failed operation certainly did not happen; an unanswered read changed nothing. An
        // unknown write whose value nobody observed can be taken not to have happened: if the
        // history is linearizable with it, it is without it too. Dropping such writes keeps the
        // search from branching on every timed-out write of a partition.
        let relevant = match op.status {
            Status::Ok => true,
            Status::Info => match op.kind {
                OpKind::Read => false,
                OpKind::Delete => true,
                OpKind::Write | OpKind::Cas => op.value.as_deref().is_some_and(|v| observed.contains(v)),
            },
            Status::Fail => false,
        };
        if relevant {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
    }
    let mut report =
        Report { verdict: Verdict::Valid, keys_checked: by_key.len(), anomalies: vec![], unknown_keys: vec![] };
    for (key, ops) in by_key {
        match check_key(&ops, step_budget) {
            KeyResult::Linearizable => {}
            KeyResult::Budget => report.unknown_keys.push(key.to_string()),
            KeyResult::Violation { stuck, linearized } => {
                let stuck_op = ops[stuck].clone();
                let concurrent = ops
                    .iter()
                    .filter(|o| o.index != stuck_op.index && overlaps(o, &stuck_op))
                    .map(|o| (*o).clone())
                    .collect();
                let mut preceding: Vec<Operation> = ops
                    .iter()
                    .filter(|o| o.status == Status::Ok && o.complete_ns < stuck_op.invoke_ns)
                    .map(|o| (*o).clone())
                    .collect();
                preceding.sort_by_key(|o| o.complete_ns);
                let preceding = preceding.split_off(preceding.len().saturating_sub(ANOMALY_CONTEXT));
                report.anomalies.push(Anomaly {
                    key: key.to_string(),
                    stuck_operation: stuck_op,
                    preceding,
                    concurrent,
                    linearized_before_stuck: linearized,
                });
            }
        }
    }
    report.verdict = if !report.anomalies.is_empty() {
        Verdict::Invalid
    } else if !report.unknown_keys.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    report
}

fn overlaps(a: &Operation, b: &Operation) -> bool {
    let end = |o: &Operation| if o.status == Status::Info { u64::MAX } else { o.complete_ns };
    a.invoke_ns <= end(b) && b.invoke_ns <= end(a)
}

enum KeyResult {
    Linearizable,
    Budget,
    /// `stuck` indexes the operation whose return could not be reached.
    Violation {
        stuck: usize,
        linearized: usize,
    },
}

/// Register state: the value id currently held (`None` = absent). Values are interned.
type State = Option<u32>;

/// An operation's effect on the register, with interned values.
#[derive(Clone, Copy)]
enum Step {
    Read(Option<u32>),
    Write(u32),
    Delete,
    Cas { from: u32, to: u32 },
}

fn apply(state: State, step: Step) -> Option<State> {
    match step {
        Step::Read(seen) => (seen == state).then_some(state),
        Step::Write(value) => Some(Some(value)),
        Step::Delete => Some(None),
        Step::Cas { from, to } => (state == Some(from)).then_some(Some(to)),
    }
}

fn intern<'a>(interner: &mut HashMap<&'a str, u32>, value: &'a str) -> u32 {
    let next = interner.len() as u32;
    *interner.entry(value).or_insert(next)
}

struct Event {
    op: usize,
    is_call: bool,
}

fn check_key(ops: &[&Operation], step_budget: u64) -> KeyResult {
    let mut interner: HashMap<&str, u32> = HashMap::new();
    let steps: Vec<Step> = ops
        .iter()
        .map(|op| match &op.kind {
            OpKind::Read => Step::Read(op.value_read.as_deref().map(|v| intern(&mut interner, v))),
            OpKind::Write => Step::Write(intern(&mut interner, op.value.as_deref().unwrap_or(""))),
            OpKind::Delete => Step::Delete,
            OpKind::Cas => Step::Cas {
                from: intern(&mut interner, op.expected.as_deref().unwrap_or("")),
                to: intern(&mut interner, op.value.as_deref().unwrap_or("")),
            },
        })
        .collect();

    // Events in time order; at equal times calls go first (the permissive reading).
    let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        timed.push((op.invoke_ns, true, i));
        let end = if op.status == Status::Info { u64::MAX } else { op.complete_ns };
        timed.push((end, false, i));
    }
    timed.sort_by_key(|(time, is_call, op)| (*time, !*is_call, *op));
    let events: Vec<Event> = timed.iter().map(|(_, is_call, op)| Event { op: *op, is_call: *is_call }).collect();

    // Doubly linked list over event positions 0..n, with the head sentinel at position n.
    const NONE: usize = usize::MAX;
    let n = events.len();
    let head = n;
    let mut next: Vec<usize> = (0..=n).map(|i| if i + 1 < n { i + 1 } else { NONE }).collect();
    next[head] = if n > 0 { 0 } else { NONE };
    let mut prev: Vec<usize> = (0..=n).map(|i| if i == 0 { head } else { i - 1 }).collect();
    prev[head] = NONE;
    let mut return_of = vec![0usize; ops.len()];
    for (position, event) in events.iter().enumerate() {
        if !event.is_call {
            return_of[event.op] = position;
        }
    }
    let call_position: Vec<usize> = {
        let mut positions = vec![0usize; ops.len()];
        for (position, event) in events.iter().enumerate() {
            if event.is_call {
                positions[event.op] = position;
            }
        }
        positions
    };

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, position: usize| {
        let (p, q) = (prev[position], next[position]);
        next[p] = q;
        if q != NONE {
            prev[q] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, position: usize| {
        let (p, q) = (prev[position], next[position]);
        next[p] = position;
        if q != NONE {
            prev[q] = position;
        }
    };

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut cursor = next[head];
    let mut budget = step_budget;
    let mut deepest = (0usize, 0usize);

    loop {
        if budget == 0 {
            return KeyResult::Budget;
        }
        budget -= 1;
        if cursor == NONE {
            return KeyResult::Linearizable;
        }
        let event = &events[cursor];
        let op = event.op;
        if event.is_call {
            let applied = apply(state, steps[op]);
            let mut advanced = false;
            if let Some(new_state) = applied {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push((op, state));
                    state = new_state;
                    lift(&mut next, &mut prev, call_position[op]);
                    lift(&mut next, &mut prev, return_of[op]);
                    cursor = next[head];
                    advanced = true;
                } else {
                    linearized[op / 64] &= !(1 << (op % 64));
                }
            }
            if !advanced {
                cursor = next[cursor];
            }
        } else {
            if ops[op].status == Status::Info {
                // Every definite operation is linearized; unknown ones may never have happened.
                return KeyResult::Linearizable;
            }
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), op);
            }
            let Some((undone, previous_state)) = stack.pop() else {
                return KeyResult::Violation { stuck: deepest.1, linearized: deepest.0 };
            };
            state = previous_state;
            linearized[undone / 64] &= !(1 << (undone % 64));
            unlift(&mut next, &mut prev, return_of[undone]);
            unlift(&mut next, &mut prev, call_position[undone]);
            cursor = next[call_position[undone]];
        }
    }
}

#[cfg(test)]
mod tests {
    //! Hand-made histories: the valid ones must pass, each classic anomaly must be caught.
    use super::*;
    use crate::history::build::cas;
    use crate::history::build::numbered;
    use crate::history::build::op;
    use crate::history::OpKind::Read;
    use crate::history::OpKind::Write;
    use crate::history::Status::Fail;
    use crate::history::Status::Info;
    use crate::history::Status::Ok;

    fn verdict(ops: Vec<Operation>) -> Verdict {
        check(&numbered(ops), DEFAULT_STEP_BUDGET).verdict
    }

    #[test]
    fn sequential_history_is_valid() {
        assert_eq!(
            verdict(vec![
                op(0, Read, None, Ok, 0, 1),
                op(0, Write, Some("a"), Ok, 2, 3),
                op(0, Read, Some("a"), Ok, 4, 5),
                cas(0, "a", "b", Ok, 6, 7),
                op(0, Read, Some("b"), Ok, 8, 9),
            ]),
            Verdict::Valid
        );
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        // The write overlaps both reads: the first sees the old value, the second the new one.
        assert_eq!(
            verdict(vec![
                op(0, Write, Some("a"), Ok, 0, 1),
                op(1, Write, Some("b"), Ok, 2, 10),
                op(2, Read, Some("a"), Ok, 3, 4),
                op(3, Read, Some("b"), Ok, 5, 6),
            ]),
            Verdict::Valid
        );
    }

    #[test]
    fn unknown_write_that_happened_is_valid() {
        assert_eq!(
            verdict(vec![op(0, Write, Some("a"), Info, 0, 1), op(1, Read, Some("a"), Ok, 5, 6)]),
            Verdict::Valid
        );
    }

    #[test]
    fn unknown_write_that_did_not_happen_is_valid() {
        assert_eq!(
            verdict(vec![
                op(0, Write, Some("a"), Ok, 0, 1),
                op(1, Write, Some("b"), Info, 2, 3),
                op(2, Read, Some("a"), Ok, 5, 6),
                op(2, Read, Some("a"), Ok, 7, 8),
            ]),
            Verdict::Valid
        );
    }

    #[test]
    fn failed_operations_are_ignored() {
        assert_eq!(verdict(vec![op(0, Write, Some("a"), Fail, 0, 1), op(1, Read, None, Ok, 2, 3)]), Verdict::Valid);
    }

    #[test]
    fn stale_read_is_invalid() {
        assert_eq!(
            verdict(vec![
                op(0, Write, Some("a"), Ok, 0, 1),
                op(0, Write, Some("b"), Ok, 2, 3),
                op(1, Read, Some("a"), Ok, 4, 5),
            ]),
            Verdict::Invalid
        );
    }

    #[test]
    fn lost_acknowledged_write_is_invalid() {
        assert_eq!(verdict(vec![op(0, Write, Some("a"), Ok, 0, 1), op(1, Read, None, Ok, 2, 3)]), Verdict::Invalid);
    }

    #[test]
    fn cas_on_a_stale_value_is_invalid() {
        assert_eq!(
            verdict(vec![
                op(0, Write, Some("a"), Ok, 0, 1),
                op(0, Write, Some("b"), Ok, 2, 3),
                cas(1, "a", "c", Ok, 4, 5),
            ]),
            Verdict::Invalid
        );
    }

    #[test]
    fn read_of_a_never_written_value_is_invalid() {
        assert_eq!(
            verdict(vec![op(0, Write, Some("a"), Ok, 0, 1), op(1, Read, Some("z"), Ok, 2, 3)]),
            Verdict::Invalid
        );
    }

    #[test]
    fn violation_report_names_the_key_and_the_operations_around_it() {
        let report = check(
            &numbered(vec![
                op(0, Write, Some("a"), Ok, 0, 1),
                op(0, Write, Some("b"), Ok, 2, 3),
                op(1, Read, Some("a"), Ok, 4, 5),
            ]),
            DEFAULT_STEP_BUDGET,
        );
        assert_eq!(report.anomalies.len(), 1);
        let anomaly = &report.anomalies[0];
        assert_eq!(anomaly.key, "k");
        assert_eq!(anomaly.stuck_operation.value_read.as_deref(), Some("a"));
        let preceding: Vec<_> = anomaly.preceding.iter().map(|o| o.value.as_deref()).collect();
        assert_eq!(preceding, vec![Some("a"), Some("b")]);
    }

    #[test]
    fn exhausted_budget_answers_unknown() {
        let ops: Vec<Operation> = (0..40).map(|i| op(i, Write, Some(&format!("v{i}")), Ok, 0, 100)).collect();
        let mut ops = ops;
        ops.push(op(99, Read, Some("never"), Ok, 200, 201));
        assert_eq!(check(&numbered(ops), 1_000).verdict, Verdict::Unknown);
    }
}
