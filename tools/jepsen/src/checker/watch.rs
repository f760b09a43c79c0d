//! The watch checker: what every watcher saw, against the writes the clients made.
//!
//! For each watcher, over the revisions it received whole (1 to `complete_to`):
//! - no gap: every acknowledged write (its answer gave a revision) is there, at that revision,
//!   with its key and value;
//! - nothing made up: every event is a put of a value some write sent (acknowledged or of
//!   unknown outcome, never a failed one), at the revision its answer gave when it had one;
//! - in order, once: revisions never go back, and no (revision, key) comes twice;
//!
//! and all watchers agree on the event of every (revision, key) they both saw.

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde::Serialize;

use crate::history::OpKind;
use crate::history::Operation;
use crate::history::Status;
use crate::watchers::WatchLog;

/// Anomalies reported at most, per run.
const MAX_ANOMALIES: usize = 20;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WatchAnomaly {
    pub watcher: String,
    pub what: String,
}

/// The events checked and the anomalies found (empty: the watchers are right).
pub fn check(history: &[Operation], logs: &[WatchLog]) -> (usize, Vec<WatchAnomaly>) {
    let writes = history.iter().filter(|op| matches!(op.kind, OpKind::Write | OpKind::Cas));
    // Acknowledged writes by revision and key; values any non-failed write sent, by key.
    let mut acknowledged: BTreeMap<(u64, &str), &str> = BTreeMap::new();
    let mut sent: HashMap<(&str, &str), Option<u64>> = HashMap::new();
    for op in writes.filter(|op| op.status != Status::Fail) {
        let Some(value) = op.value.as_deref() else { continue };
        if let (Status::Ok, Some(revision)) = (op.status, op.revision) {
            acknowledged.insert((revision, op.key.as_str()), value);
        }
        sent.insert((op.key.as_str(), value), if op.status == Status::Ok { op.revision } else { None });
    }
    let mut anomalies = Vec::new();
    let mut checked = 0;
    let mut agreed: HashMap<(u64, &str), (&Option<String>, &str)> = HashMap::new();
    for log in logs {
        let mut report = |what: String| {
            if anomalies.len() < MAX_ANOMALIES {
                anomalies.push(WatchAnomaly { watcher: log.endpoint.clone(), what });
            }
        };
        let mut previous = 0;
        let mut seen: HashMap<(u64, &str), &Option<String>> = HashMap::new();
        for (revision, key, value) in &log.events {
            checked += 1;
            if *revision < previous {
                report(format!("revision {revision} ({key}) came after {previous}"));
            }
            previous = previous.max(*revision);
            if seen.insert((*revision, key.as_str()), value).is_some() {
                report(format!("{key} at revision {revision} came twice"));
            }
            match value {
                Some(value) => match sent.get(&(key.as_str(), value.as_str())) {
                    None => report(format!("{key} = {value:?} at revision {revision}: no write sent that value")),
                    Some(Some(written_at)) if written_at != revision => report(format!(
                        "{key} = {value:?} at revision {revision}, but its write was answered {written_at}"
                    )),
                    Some(_) => {}
                },
                None => report(format!("a delete of {key} at revision {revision}: the workload deletes nothing")),
            }
            match agreed.get(&(*revision, key.as_str())) {
                Some((other, endpoint)) if *other != value => {
                    report(format!("{key} at revision {revision} is {value:?} here and {other:?} at {endpoint}"))
                }
                Some(_) => {}
                None => {
                    agreed.insert((*revision, key.as_str()), (value, log.endpoint.as_str()));
                }
            }
        }
        for ((revision, key), value) in acknowledged.range(..=(log.complete_to, "\u{10FFFF}")) {
            if *revision > log.complete_to {
                continue;
            }
            if seen.get(&(*revision, *key)).is_none_or(|seen| seen.as_deref() != Some(*value)) {
                report(format!("the acknowledged write {key} = {value:?} at revision {revision} never arrived"));
            }
        }
    }
    (checked, anomalies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build;

    fn write(value: &str, revision: Option<u64>, status: Status) -> Operation {
        Operation { revision, ..build::op(0, OpKind::Write, Some(value), status, 0, 1) }
    }

    fn log(events: &[(u64, &str)], complete_to: u64) -> WatchLog {
        WatchLog {
            endpoint: "n1".into(),
            events: events.iter().map(|(r, v)| (*r, "k".to_string(), Some(v.to_string()))).collect(),
            complete_to,
            ..WatchLog::default()
        }
    }

    /// Goal: a watcher that saw exactly the writes passes; a gap, a made-up value, a wrong
    /// revision, a repeat, a step back in time and two watchers disagreeing are each caught.
    #[test]
    fn every_kind_of_watch_anomaly_is_caught() {
        let history = vec![
            write("a", Some(3), Status::Ok),
            write("b", Some(5), Status::Ok),
            write("c", None, Status::Info),
            write("never", None, Status::Fail),
        ];
        let right = log(&[(3, "a"), (5, "b"), (7, "c")], 7);
        assert_eq!(check(&history, std::slice::from_ref(&right)), (3, vec![]));
        assert!(check(&history, &[log(&[(3, "a")], 3)]).1.is_empty(), "what it has not received whole is not a gap");
        for (wrong, what) in [
            (log(&[(3, "a"), (7, "c")], 7), "never arrived"),
            (log(&[(3, "a"), (5, "b"), (6, "never")], 7), "no write sent"),
            (log(&[(4, "a"), (5, "b")], 7), "answered 3"),
            (log(&[(3, "a"), (5, "b"), (5, "b")], 7), "came twice"),
            (log(&[(5, "b"), (3, "a")], 7), "came after"),
        ] {
            let (_, anomalies) = check(&history, &[wrong]);
            assert!(anomalies.iter().any(|a| a.what.contains(what)), "{what}: {anomalies:?}");
        }
        let mut other = log(&[(3, "a"), (5, "b"), (7, "a")], 7);
        other.endpoint = "n2".into();
        let (_, anomalies) = check(&history, &[right, other]);
        assert!(anomalies.iter().any(|a| a.what.contains("here and")), "{anomalies:?}");
    }
}
