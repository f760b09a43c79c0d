//! The set workload's checker: every acknowledged add must be present at the end; nothing may
//! appear that was never attempted or that certainly failed.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde_json::json;

use crate::checker::Verdict;
use crate::history::OpKind;
use crate::history::Operation;
use crate::history::Status;

/// Set workload: every acknowledged add must be present; nothing may appear that was never
/// attempted or that certainly failed.
pub fn check(operations: &[Operation], present: &BTreeSet<String>) -> (Verdict, serde_json::Value) {
    let mut status_of: BTreeMap<String, Status> = BTreeMap::new();
    for op in operations.iter().filter(|o| o.kind == OpKind::Write) {
        if let Some(value) = &op.value {
            status_of.insert(value.clone(), op.status);
        }
    }
    let lost: Vec<&String> =
        status_of.iter().filter(|(v, s)| **s == Status::Ok && !present.contains(*v)).map(|(v, _)| v).collect();
    let unexpected: Vec<&String> =
        present.iter().filter(|v| matches!(status_of.get(*v), None | Some(Status::Fail))).collect();
    let recovered = status_of.iter().filter(|(v, s)| **s == Status::Info && present.contains(*v)).count();
    let verdict = if lost.is_empty() && unexpected.is_empty() { Verdict::Valid } else { Verdict::Invalid };
    (
        verdict,
        json!({ "lost": lost, "unexpected": unexpected, "info_adds_present": recovered, "present": present.len() }),
    )
}
