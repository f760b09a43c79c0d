//! The lock checker: what every lock holder saw (`locks::hold`).
//!
//! - **One holder at a time.** In order of acquisition (when the answer that made a holder the
//!   first arrived), each section must begin after every earlier one ended (the last action its
//!   holder began believing it held the lock): the harness's one clock measures both, so an
//!   overlap is two holders at once, not clock skew.
//! - **Tokens grow.** Each acquisition has its own token, larger than every earlier one's.
//! - **The fence holds** (checked by token, whatever the clock says): the counter's
//!   acknowledged writes, in revision order, have strictly growing values and never-decreasing
//!   tokens; no value is written twice (a lost update); a fenced read never returns less than an
//!   acknowledged write before it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::locks::LockLog;
use crate::locks::Outcome;

/// Anomalies reported at most, per run.
const MAX_ANOMALIES: usize = 20;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LockAnomaly {
    pub holder: String,
    pub token: u64,
    pub what: String,
}

/// What was checked.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LockCounts {
    pub sections: usize,
    /// Sections that ended so: released, abandoned (left to expire), lost (the session ended
    /// first), fenced (the resource refused the token).
    pub released: usize,
    pub abandoned: usize,
    pub lost: usize,
    pub fenced: usize,
    /// The counter's writes acknowledged, and operations whose outcome is unknown.
    pub writes_acknowledged: usize,
    pub outcomes_unknown: usize,
}

struct Write {
    revision: u64,
    token: u64,
    value: u64,
    holder: String,
}

/// Checks the holders' logs.
pub fn check(logs: &[LockLog]) -> (LockCounts, Vec<LockAnomaly>) {
    let mut counts = LockCounts::default();
    let mut anomalies = Vec::new();
    let report = |anomalies: &mut Vec<LockAnomaly>, holder: &str, token: u64, what: String| {
        if anomalies.len() < MAX_ANOMALIES {
            anomalies.push(LockAnomaly { holder: holder.to_string(), token, what });
        }
    };
    let mut sections: Vec<_> =
        logs.iter().flat_map(|log| log.sections.iter().map(move |s| (&log.endpoint, s))).collect();
    sections.sort_by_key(|(_, section)| (section.acquired_ms, section.token));
    let mut tokens = BTreeMap::new();
    let mut latest_end: Option<(u64, u64, &String)> = None;
    let mut largest_token: Option<u64> = None;
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for &(holder, section) in &sections {
        counts.sections += 1;
        match section.ended {
            "released" => counts.released += 1,
            "abandoned" => counts.abandoned += 1,
            "lost" => counts.lost += 1,
            _ => counts.fenced += 1,
        }
        if let Some(other) = tokens.insert(section.token, holder) {
            let what = format!("token {} was given twice (also to the holder on {other})", section.token);
            report(&mut anomalies, holder, section.token, what);
        }
        if let Some((end_ms, token, other)) = latest_end {
            if end_ms > section.acquired_ms {
                let what = format!(
                    "two holders at once: acquired at {} ms while the holder on {other} (token {token}) held \
                     until {end_ms} ms",
                    section.acquired_ms
                );
                report(&mut anomalies, holder, section.token, what);
            }
        }
        if largest_token.is_some_and(|largest| largest >= section.token) {
            let what = format!(
                "token {} is not larger than an earlier acquisition's ({})",
                section.token,
                largest_token.unwrap_or_default()
            );
            report(&mut anomalies, holder, section.token, what);
        }
        largest_token = largest_token.max(Some(section.token));
        if latest_end.is_none_or(|(end_ms, _, _)| section.end_ms > end_ms) {
            latest_end = Some((section.end_ms, section.token, holder));
        }
        for increment in &section.increments {
            let outcomes = std::iter::once(increment.read).chain(increment.write);
            counts.outcomes_unknown += outcomes.filter(|outcome| *outcome == Outcome::Unknown).count();
            if let (Outcome::Ok { revision }, Some(value)) = (increment.read, increment.read_value) {
                reads.push((revision, value, section.token, holder));
                if let Some(Outcome::Ok { revision }) = increment.write {
                    counts.writes_acknowledged += 1;
                    writes.push(Write { revision, token: section.token, value: value + 1, holder: holder.clone() });
                }
            }
        }
    }
    writes.sort_by_key(|write| write.revision);
    for pair in writes.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.value <= before.value {
            let what = format!(
                "lost update: wrote {} at revision {} after {} was written at revision {} (token {})",
                after.value, after.revision, before.value, before.revision, before.token
            );
            report(&mut anomalies, &after.holder, after.token, what);
        }
        if after.token < before.token {
            let what = format!(
                "the fence let token {} write at revision {} after token {} wrote at revision {}",
                after.token, after.revision, before.token, before.revision
            );
            report(&mut anomalies, &after.holder, after.token, what);
        }
    }
    for (revision, value, token, holder) in reads {
        let before = writes.iter().take_while(|write| write.revision < revision).map(|write| write.value).max();
        if before.is_some_and(|written| value < written) {
            let what = format!(
                "a fenced read at revision {revision} returned {value}, below {} written before it",
                before.unwrap_or_default()
            );
            report(&mut anomalies, holder, token, what);
        }
    }
    (counts, anomalies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::Increment;
    use crate::locks::Section;

    fn section(token: u64, acquired_ms: u64, end_ms: u64, increments: Vec<Increment>) -> Section {
        Section { token, acquired_ms, end_ms, ended: "released", increments }
    }

    /// A fenced read of `value` at `revision`, then its write acknowledged at `revision + 1`.
    fn increment(revision: u64, value: u64) -> Increment {
        Increment {
            read: Outcome::Ok { revision },
            read_value: Some(value),
            write: Some(Outcome::Ok { revision: revision + 1 }),
        }
    }

    fn logs(sections: Vec<Vec<Section>>) -> Vec<LockLog> {
        let holder = |(index, sections)| LockLog { endpoint: format!("n{index}"), sections, ..LockLog::default() };
        sections.into_iter().enumerate().map(holder).collect()
    }

    #[test]
    fn holders_one_after_another_with_a_fenced_counter_are_valid() {
        let first = section(10, 100, 200, vec![increment(11, 0), increment(13, 1)]);
        let second = section(20, 250, 300, vec![increment(21, 2)]);
        let (counts, anomalies) = check(&logs(vec![vec![first], vec![second]]));
        assert_eq!(anomalies, vec![]);
        assert_eq!((counts.sections, counts.writes_acknowledged, counts.released), (2, 3, 2));
    }

    #[test]
    fn two_holders_at_once_are_caught_even_when_the_fence_kept_the_counter_right() {
        let first = section(10, 100, 300, vec![increment(11, 0)]);
        let second = section(20, 250, 400, vec![increment(21, 1)]);
        let (_, anomalies) = check(&logs(vec![vec![first], vec![second]]));
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        assert!(anomalies[0].what.contains("two holders at once"), "{anomalies:?}");
    }

    #[test]
    fn a_token_given_twice_or_going_back_is_caught() {
        let twice = logs(vec![vec![section(10, 100, 200, vec![])], vec![section(10, 300, 400, vec![])]]);
        let (_, anomalies) = check(&twice);
        assert!(anomalies.iter().any(|a| a.what.contains("given twice")), "{anomalies:?}");
        let back = logs(vec![vec![section(20, 100, 200, vec![])], vec![section(10, 300, 400, vec![])]]);
        let (_, anomalies) = check(&back);
        assert!(anomalies.iter().any(|a| a.what.contains("not larger")), "{anomalies:?}");
    }

    #[test]
    fn a_lost_update_and_a_stale_fenced_read_are_caught_by_token() {
        // Both read 0 and both wrote 1: the fence let the older token through.
        let first = section(10, 100, 200, vec![increment(11, 0)]);
        let mut late = increment(14, 0);
        late.write = Some(Outcome::Ok { revision: 16 });
        let second = section(20, 250, 300, vec![late]);
        let (_, anomalies) = check(&logs(vec![vec![first], vec![second]]));
        assert!(anomalies.iter().any(|a| a.what.contains("lost update")), "{anomalies:?}");
        assert!(anomalies.iter().any(|a| a.what.contains("fenced read")), "{anomalies:?}");
    }

    #[test]
    fn an_older_token_writing_after_a_newer_one_is_caught() {
        let newer = section(20, 100, 200, vec![increment(21, 0)]);
        let older = section(30, 250, 300, vec![]);
        let mut logs = logs(vec![vec![newer], vec![older]]);
        // A write of token 10 acknowledged after token 20's, as a broken fence would allow.
        logs[1].sections[0].token = 30;
        logs[1].sections.push(section(10, 400, 500, vec![increment(40, 1)]));
        let (_, anomalies) = check(&logs);
        assert!(anomalies.iter().any(|a| a.what.contains("the fence let token 10")), "{anomalies:?}");
    }

    #[test]
    fn unknown_outcomes_are_counted_not_held_against_the_lock() {
        let mut maybe = increment(11, 0);
        maybe.write = Some(Outcome::Unknown);
        // The unknown write did run: the next read sees 1.
        let first = section(10, 100, 200, vec![maybe, increment(13, 1)]);
        let (counts, anomalies) = check(&logs(vec![vec![first]]));
        assert_eq!(anomalies, vec![]);
        assert_eq!((counts.outcomes_unknown, counts.writes_acknowledged), (1, 1));
    }
}
