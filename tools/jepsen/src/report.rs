//! What a run leaves behind and prints: `result.json` (counts, verdict, anomalies, faults,
//! problems), next to `history.jsonl` and `nemesis.log`; and one line a person can read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::checker::Verdict;
use crate::faults::Counts;

/// `result.json`: one run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub workload: String,
    pub nemesis: String,
    pub cluster: String,
    pub nodes: u64,
    pub time_limit_secs: u64,
    pub read_consistency: String,
    pub bounded_reads_ok: usize,
    /// Operations sent as transactions (`POST /v1/txn`) that succeeded: reads and cas.
    pub txn_ok: usize,
    /// Events the watchers received, all checked (`checker::watch`), and how often a watcher
    /// had to start again after its client gave up.
    pub watch_events_checked: usize,
    pub watch_restarts: u32,
    pub watch_anomalies: serde_json::Value,
    /// Leases the holders made, renewals acknowledged and ends seen, all checked
    /// (`checker::lease`), and what was wrong.
    pub lease_counts: crate::checker::lease::LeaseCounts,
    pub lease_anomalies: serde_json::Value,
    /// Critical sections the lock holders had, how they ended, the fenced counter's writes,
    /// all checked (`checker::lock`), and what was wrong.
    pub lock_counts: crate::checker::lock::LockCounts,
    pub lock_anomalies: serde_json::Value,
    pub learners: u64,
    /// HTTPS and mutual TLS (`--tls`), and users and roles on (`--auth`).
    pub tls: bool,
    pub auth: bool,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub verdict: Verdict,
    pub checker_ms: u128,
    /// The checkers' findings (their shape is the checker's: register, set or staleness).
    pub anomalies: serde_json::Value,
    pub replica_divergence: Vec<serde_json::Value>,
    pub faults: BTreeMap<&'static str, Counts>,
    pub harness_failures: Vec<String>,
    /// Why the verdict cannot stand, if it cannot (see `faults::Ledger::problems`).
    pub problems: Vec<String>,
}

impl RunReport {
    pub fn write(&self, out: &Path) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(out.join("result.json"), json).map_err(|e| e.to_string())
    }

    /// Where everything is, the counts and verdict, the anomalies of an invalid run and how to
    /// replay it, then the summary as one JSON line (without the anomalies of a valid run).
    pub fn print(&self, out: &Path) {
        println!("nemesis schedule: {}", out.join("nemesis.log").display());
        println!("history: {}  node logs: {}", out.join("history.jsonl").display(), out.join("cluster").display());
        println!(
            "ops={} ok={} fail={} info={} checker={}ms verdict={:?}",
            self.ops, self.ok, self.fail, self.info, self.checker_ms, self.verdict
        );
        let valid = self.verdict == Verdict::Valid;
        if !valid {
            println!("anomalies: {}", serde_json::to_string_pretty(&self.anomalies).unwrap_or_default());
            println!("replay: quorumkv-jepsen --seed {} (same options)", self.seed);
            if !self.replica_divergence.is_empty() {
                let divergence = serde_json::to_string_pretty(&self.replica_divergence).unwrap_or_default();
                println!("replicas diverged: {divergence}");
            }
        }
        let mut compact = self.clone();
        if valid {
            compact.anomalies = serde_json::json!([]);
        }
        println!("{}", serde_json::to_string(&compact).unwrap_or_default());
    }
}
