//! `quorumkv verify`: an online self-check of a live cluster. A few clients run the register
//! workload (reads, writes, compare-and-set; linearizable reads) for a short while on keys
//! under a reserved prefix of their own, the history is checked for linearizability with the
//! fault runs' checker, and the keys are deleted. No faults are injected: it checks what the
//! cluster does now, after an upgrade or an incident, without stopping it.
//!
//! A check in which too little succeeded proves nothing, so it is an error, never "valid"
//! (the fault runs' rule for a fault that was never installed): every endpoint gets a client,
//! and every one must have answered something. What it cannot promise: a write whose outcome
//! was unknown may still be applied after the cleanup (its key is then left behind, unnamed),
//! and an interrupted check (Ctrl-C) does not clean up.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use backon::ConstantBuilder;
use backon::Retryable;
use serde::Serialize;

use crate::checker;
use crate::checker::Anomaly;
use crate::checker::Verdict;
use crate::history::OpKind;
use crate::history::Status;
use crate::options::Workload;
use crate::traffic::register_key;
use crate::traffic::Client;
use crate::traffic::History;
use crate::traffic::CLIENT_TIMEOUT;

/// Every key `verify` writes starts with this, then a run id; applications should not use it.
pub const RESERVED_PREFIX: &str = "_quorumkv/verify/";
/// The longest check: it loads a production cluster, so it must end.
pub const MAX_DURATION_SECS: u64 = 600;
/// Clients and keys at most: enough concurrency to find anomalies, bounded so the checker's
/// search (exponential in concurrent operations on a key) stays fast.
pub const MAX_CLIENTS: usize = 32;
pub const MAX_KEYS: usize = 64;
/// Each key's delete at the end is tried this many times, this far apart, before it is
/// reported as left behind (a delete is idempotent, so retrying it is safe).
const CLEANUP_ATTEMPTS: usize = 10;
const CLEANUP_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Client base URLs (`http://host:port`), one client per endpoint in turn.
    pub endpoints: Vec<String>,
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    pub step_budget: u64,
    /// TLS to the client port (`https://` endpoints): the CA, and a client certificate.
    pub tls: quorumkv_api::client::ClientTls,
    /// A token to send as `Authorization: Bearer` (clusters with auth enabled).
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub verdict: Verdict,
    /// The keys used, all under [`RESERVED_PREFIX`].
    pub prefix: String,
    pub ops: usize,
    pub ok: usize,
    /// Compare-and-sets refused because a concurrent write changed the key first (`412`): the
    /// expected answer, not an error.
    pub cas_refused: usize,
    /// Other operations that certainly did not take effect.
    pub fail: usize,
    pub info: usize,
    pub anomalies: Vec<Anomaly>,
    /// Keys whose history the checker could not decide within its budget.
    pub unknown_keys: Vec<String>,
    /// Keys that could not be deleted at the end (empty when the cleanup succeeded).
    pub keys_left: Vec<String>,
}

impl VerifyOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("no endpoints".into());
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(MAX_DURATION_SECS) {
            return Err(format!("the duration must be between 1 and {MAX_DURATION_SECS} seconds"));
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return Err(format!("--clients must be between 1 and {MAX_CLIENTS}"));
        }
        if !(1..=MAX_KEYS).contains(&self.keys) {
            return Err(format!("--keys must be between 1 and {MAX_KEYS}"));
        }
        Ok(())
    }
}

/// Runs the check; an error when the cluster could not be exercised at all.
pub async fn verify(options: &VerifyOptions) -> Result<VerifyReport, String> {
    options.validate()?;
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let prefix = format!("{RESERVED_PREFIX}{run_id:x}-{}/", std::process::id());
    let mut builder = options.tls.configure(reqwest::Client::builder()).map_err(|e| e.to_string())?;
    if let Some(token) = &options.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_string())?;
        value.set_sensitive(true);
        builder = builder.default_headers([(reqwest::header::AUTHORIZATION, value)].into_iter().collect());
    }
    let http = builder.timeout(CLIENT_TIMEOUT).build().map_err(|e| e.to_string())?;
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let deadline = start + options.duration;
    // At least one client per endpoint, so every node is exercised.
    let client_count = options.clients.max(options.endpoints.len()).min(MAX_CLIENTS);
    let mut clients = Vec::new();
    for process in 0..client_count {
        let node = process % options.endpoints.len();
        let client = Client {
            rng: fastrand::Rng::with_seed(run_id as u64 ^ process as u64),
            keys: options.keys,
            prefix: prefix.clone(),
            ..Client::new(
                process,
                node as u64 + 1,
                options.endpoints[node].clone(),
                http.clone(),
                history.clone(),
                start,
            )
        };
        clients.push(tokio::spawn(client.run(Workload::Register, deadline)));
    }
    let mut client_failure = None;
    for client in clients {
        if let Err(error) = client.await {
            client_failure = Some(format!("a client failed: {error}"));
        }
    }
    let mut operations = history.lock().map_err(|_| "history lock poisoned")?.clone();
    for (index, op) in operations.iter_mut().enumerate() {
        op.index = index;
    }
    // Only keys some write may have reached: a failed write certainly did not.
    let mut keys: Vec<String> = (0..options.keys).map(|index| register_key(&prefix, index)).collect();
    keys.retain(|key| {
        operations.iter().any(|op| op.key == *key && op.kind != OpKind::Read && op.status != Status::Fail)
    });
    let keys_left = clean_up(&http, &options.endpoints, &keys).await;

    let left_note = if keys_left.is_empty() { String::new() } else { format!("; keys left behind: {keys_left:?}") };
    if let Some(failure) = client_failure {
        return Err(format!("{failure}{left_note}"));
    }
    let succeeded = |kind: OpKind| operations.iter().filter(|op| op.kind == kind && op.status == Status::Ok).count();
    if succeeded(OpKind::Read) == 0 || succeeded(OpKind::Write) == 0 {
        let errors: Vec<&str> = operations.iter().filter_map(|op| op.error.as_deref()).take(3).collect();
        return Err(format!(
            "no read or no write succeeded in {} operations, so nothing was checked (is the cluster up and \
             does it have a leader?); first errors: {errors:?}{left_note}",
            operations.len()
        ));
    }
    // Some reads and compare-and-sets go as transactions; none succeeding checked none.
    if !operations.iter().any(|op| op.txn && op.status == Status::Ok) {
        return Err(format!("no operation sent as a transaction (POST /v1/txn) succeeded{left_note}"));
    }
    // A node that answered nothing was not checked: say so rather than pass it.
    let silent: Vec<&String> = options
        .endpoints
        .iter()
        .enumerate()
        .filter(|(index, _)| !operations.iter().any(|op| op.node == *index as u64 + 1 && op.status == Status::Ok))
        .map(|(_, endpoint)| endpoint)
        .collect();
    if !silent.is_empty() {
        return Err(format!("no operation through {silent:?} succeeded, so they were not checked{left_note}"));
    }
    let report = checker::check(&operations, options.step_budget);
    let count = |status: Status| operations.iter().filter(|op| op.status == status).count();
    let cas_refused = operations
        .iter()
        .filter(|op| op.kind == OpKind::Cas && op.status == Status::Fail)
        .filter(|op| {
            op.error
                .as_deref()
                .is_some_and(|error| error.starts_with("412") || error == crate::traffic::COMPARE_DID_NOT_HOLD)
        })
        .count();
    Ok(VerifyReport {
        verdict: report.verdict,
        prefix,
        ops: operations.len(),
        ok: count(Status::Ok),
        cas_refused,
        fail: count(Status::Fail) - cas_refused,
        info: count(Status::Info),
        anomalies: report.anomalies,
        unknown_keys: report.unknown_keys,
        keys_left,
    })
}

/// Deletes the check's keys through any endpoint; returns those it could not delete.
async fn clean_up(http: &reqwest::Client, endpoints: &[String], keys: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for key in keys {
        let attempt = || async {
            for endpoint in endpoints {
                let answer = http.delete(format!("{endpoint}/v1/kv/{key}")).send().await;
                // 200: deleted; 404: never written. Anything else is tried again.
                if answer.is_ok_and(|response| matches!(response.status().as_u16(), 200 | 404)) {
                    return Ok(());
                }
            }
            Err(())
        };
        let retries = ConstantBuilder::default().with_delay(CLEANUP_INTERVAL).with_max_times(CLEANUP_ATTEMPTS - 1);
        if attempt.retry(retries).await.is_err() {
            left.push(key.clone());
        }
    }
    left
}
