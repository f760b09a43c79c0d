//! What the nemesis did: every fault it tried, as installed, skipped or indeterminate, and
//! every failure of the harness itself (a heal, a restart, the final kill that checks
//! durability). A run is only worth its verdict if the faults it asked for happened and the
//! harness did its part: otherwise "valid" would mean "nothing was tested", so the run
//! exits 2 instead (see `Ledger::problems`).

use std::collections::BTreeMap;

use serde::Serialize;

/// What became of one attempt to install a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultStatus {
    /// The fault script (or the cluster, for a membership change) says it took effect.
    Installed,
    /// It could not apply (the node was already down, the cluster refused the removal).
    Skipped,
    /// The script failed part-way, or the cluster gave no clear answer: it may or may not hold.
    Indeterminate,
}

impl FaultStatus {
    /// A fault script's exit status: 0 installed, 3 skipped (`scripts/faults/lib.sh`), else error.
    pub fn from_exit_code(code: Option<i32>) -> Self {
        match code {
            Some(0) => FaultStatus::Installed,
            Some(3) => FaultStatus::Skipped,
            _ => FaultStatus::Indeterminate,
        }
    }
}

/// Counts per status of one fault kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub installed: u64,
    pub skipped: u64,
    pub indeterminate: u64,
}

/// Which fault kinds a run asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// No faults (`--nemesis none`).
    Nothing,
    /// Each of these kinds must be installed at least once.
    Each(Vec<&'static str>),
    /// At least one of these kinds must be installed (a mix: the schedule picks among them).
    AnyOf(Vec<&'static str>),
}

/// The run's record of faults and harness failures, written to `result.json`.
#[derive(Debug, Default, Serialize)]
pub struct Ledger {
    pub faults: BTreeMap<&'static str, Counts>,
    pub harness_failures: Vec<String>,
}

impl Ledger {
    pub fn record(&mut self, kind: &'static str, status: FaultStatus) {
        let counts = self.faults.entry(kind).or_default();
        match status {
            FaultStatus::Installed => counts.installed += 1,
            FaultStatus::Skipped => counts.skipped += 1,
            FaultStatus::Indeterminate => counts.indeterminate += 1,
        }
    }

    pub fn harness_failure(&mut self, what: String) {
        self.harness_failures.push(what);
    }

    fn installed(&self, kind: &str) -> u64 {
        self.faults.get(kind).map_or(0, |counts| counts.installed)
    }

    /// Why this run's verdict cannot stand (empty: it can): a requested fault kind that was
    /// never installed, or a failure of the harness.
    pub fn problems(&self, requested: &Requested) -> Vec<String> {
        let mut problems: Vec<String> =
            self.harness_failures.iter().map(|failure| format!("harness failed: {failure}")).collect();
        match requested {
            Requested::Nothing => {}
            Requested::Each(kinds) => {
                for kind in kinds.iter().filter(|kind| self.installed(kind) == 0) {
                    problems.push(format!("no {kind} fault was ever installed"));
                }
            }
            Requested::AnyOf(kinds) => {
                if kinds.iter().all(|kind| self.installed(kind) == 0) {
                    problems.push(format!("none of the faults {kinds:?} was ever installed"));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a run stands only if what it asked for was installed and the harness never failed;
    /// skipped and indeterminate attempts do not count as installed.
    #[test]
    fn a_run_stands_only_with_its_faults_installed_and_no_harness_failure() {
        let mut ledger = Ledger::default();
        ledger.record("partition", FaultStatus::Skipped);
        ledger.record("partition", FaultStatus::Indeterminate);
        let partition = Requested::Each(vec!["partition"]);
        assert_eq!(ledger.problems(&partition), ["no partition fault was ever installed"]);
        ledger.record("partition", FaultStatus::Installed);
        assert!(ledger.problems(&partition).is_empty());
        assert_eq!(ledger.faults["partition"], Counts { installed: 1, skipped: 1, indeterminate: 1 });

        let mix = Requested::AnyOf(vec!["kill", "pause"]);
        assert_eq!(Ledger::default().problems(&mix).len(), 1);
        let mut paused = Ledger::default();
        paused.record("pause", FaultStatus::Installed);
        assert!(paused.problems(&mix).is_empty());
        paused.harness_failure("restart.sh all: exit 1".into());
        assert_eq!(paused.problems(&mix), ["harness failed: restart.sh all: exit 1"]);
        assert!(Ledger::default().problems(&Requested::Nothing).is_empty());
    }

    #[test]
    fn script_exit_codes_map_to_statuses() {
        assert_eq!(FaultStatus::from_exit_code(Some(0)), FaultStatus::Installed);
        assert_eq!(FaultStatus::from_exit_code(Some(3)), FaultStatus::Skipped);
        assert_eq!(FaultStatus::from_exit_code(Some(1)), FaultStatus::Indeterminate);
        assert_eq!(FaultStatus::from_exit_code(None), FaultStatus::Indeterminate);
    }
}
