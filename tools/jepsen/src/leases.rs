//! Lease holders beside the register workload's clients: one per node (preferring it), each
//! granting a lease, attaching a key to it, renewing it for a few rounds while reading the key,
//! then abandoning it to expire, again and again. What they saw is checked by
//! `checker::lease`: no lease ends (its key absent, a keepalive refused) before `ttl_ms` after
//! the sending of a keepalive that was acknowledged, and every abandoned lease's key is gone
//! from every node at the end.

use std::time::Duration;
use std::time::Instant;

use quorumkv_api::client::Client;
use quorumkv_api::client::Retry;
use reqwest::header::HeaderMap;
use reqwest::Method;
use reqwest::StatusCode;
use serde::Serialize;

/// The TTL of every lease: long enough to renew through an election, short enough that many
/// leases expire in a run.
pub const LEASE_TTL_MS: u64 = 2_000;
/// Renewals (and reads) a lease gets before it is abandoned: between these two.
const MIN_ROUNDS: u32 = 2;
const MAX_ROUNDS: u32 = 8;
/// Leases one holder makes in a run, so memory and checking stay bounded.
const MAX_LEASES_PER_HOLDER: usize = 10_000;
/// After abandoning a lease, its key is read once more this long before the TTL since the
/// last acknowledged renewal runs out: it must still be there (an expiry a few hundred ms early
/// is caught, not only one a whole renewal interval early).
const PROBE_BEFORE_END_MS: u64 = 300;
/// The prefix of the holders' keys.
pub const LEASE_PREFIX: &str = "jepsen-lease/";

/// One lease as its holder saw it; times in ms since the run started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeaseRun {
    pub id: u64,
    pub key: String,
    pub ttl_ms: u64,
    /// When each request that renewed the lease (its grant, then keepalives) was sent, for
    /// those that were acknowledged.
    pub acknowledged_sends_ms: Vec<u64>,
    /// When an answer showing the lease ended arrived (its key absent, a keepalive or the
    /// attaching put refused with `lease_not_found`), and which.
    pub ended_seen: Vec<(u64, &'static str)>,
    /// Reads that found the key.
    pub present_reads: u32,
    /// The read just before the TTL ran out found the key.
    pub probe_present: bool,
}

/// What one holder did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeaseLog {
    pub endpoint: String,
    pub leases: Vec<LeaseRun>,
    pub errors: u64,
}

fn millis_since(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// Holds leases through `endpoints` (the first preferred) until `deadline`.
pub async fn hold(
    endpoints: Vec<String>,
    http: reqwest::Client,
    holder: usize,
    seed: u64,
    start: Instant,
    deadline: Instant,
) -> LeaseLog {
    let mut log = LeaseLog { endpoint: endpoints.first().cloned().unwrap_or_default(), ..LeaseLog::default() };
    let client = match Client::with_http(&endpoints.join(","), http) {
        Ok(client) => client,
        Err(_) => {
            log.errors += 1;
            return log;
        }
    };
    let mut rng = fastrand::Rng::with_seed(seed ^ (holder as u64 + 0x1EA5E));
    let pause = Duration::from_millis(LEASE_TTL_MS / 4);
    let client = std::sync::Arc::new(client);
    let mut probes = Vec::new();
    while Instant::now() + pause < deadline && log.leases.len() < MAX_LEASES_PER_HOLDER {
        let Some(mut run) = grant(&client, start, &mut log).await else {
            tokio::time::sleep(pause).await;
            continue;
        };
        run.key = format!("{LEASE_PREFIX}{holder}/{}", log.leases.len());
        if attach(&client, start, &mut run, &mut log).await {
            for _ in 0..rng.u32(MIN_ROUNDS..=MAX_ROUNDS) {
                if Instant::now() + pause >= deadline || !run.ended_seen.is_empty() {
                    break;
                }
                tokio::time::sleep(pause).await;
                renew(&client, start, &mut run, &mut log).await;
                read(&client, start, &mut run, &mut log).await;
            }
            if run.ended_seen.is_empty() {
                let last = run.acknowledged_sends_ms.iter().max().copied().unwrap_or(0);
                let probe_at = start + Duration::from_millis(last + run.ttl_ms - PROBE_BEFORE_END_MS);
                let (client, key) = (client.clone(), run.key.clone());
                probes.push((log.leases.len(), tokio::spawn(probe(client, key, start, probe_at))));
            }
        }
        log.leases.push(run);
    }
    for (index, probe) in probes {
        match probe.await {
            Ok(Some(Probe::Present)) => log.leases[index].probe_present = true,
            Ok(Some(Probe::Absent { answered_ms })) => {
                log.leases[index].ended_seen.push((answered_ms, "read just before the TTL ran out: key absent"))
            }
            _ => log.errors += 1,
        }
    }
    log
}

enum Probe {
    Present,
    /// Absent, in the answer that arrived then (ms since the run started).
    Absent {
        answered_ms: u64,
    },
}

/// Reads `key` (linearizable) at `at` (`None`: no answer).
async fn probe(client: std::sync::Arc<Client>, key: String, start: Instant, at: Instant) -> Option<Probe> {
    tokio::time::sleep_until(at.into()).await;
    let path = Client::key_path(&key);
    let answer = client.request(Method::GET, &path, &[], HeaderMap::new(), None, Retry::Idempotent).await.ok()?;
    match answer.status {
        StatusCode::OK => Some(Probe::Present),
        StatusCode::NOT_FOUND => Some(Probe::Absent { answered_ms: millis_since(start, Instant::now()) }),
        _ => None,
    }
}

async fn grant(client: &Client, start: Instant, log: &mut LeaseLog) -> Option<LeaseRun> {
    let sent = Instant::now();
    let body = serde_json::json!({ "ttl_ms": LEASE_TTL_MS });
    let segments = ["v1".to_string(), "leases".to_string()];
    let answer = client.request(Method::POST, &segments, &[], json_headers(), body_bytes(body), Retry::OnlyIfNotSent);
    match answer.await {
        Ok(answer) if answer.status == StatusCode::CREATED => {
            let granted: quorumkv_api::LeaseGrantReply = serde_json::from_slice(&answer.body).ok()?;
            Some(LeaseRun {
                id: granted.id,
                ttl_ms: granted.ttl_ms,
                acknowledged_sends_ms: vec![millis_since(start, sent)],
                ..LeaseRun::default()
            })
        }
        _ => {
            log.errors += 1;
            None
        }
    }
}

/// Puts the run's key with its lease; false when that did not certainly happen.
async fn attach(client: &Client, start: Instant, run: &mut LeaseRun, log: &mut LeaseLog) -> bool {
    let query = [("lease", run.id.to_string())];
    let value = Some(bytes::Bytes::from_static(b"held"));
    let path = Client::key_path(&run.key);
    let answer = client.request(Method::PUT, &path, &query, HeaderMap::new(), value, Retry::OnlyIfNotSent);
    match answer.await {
        Ok(answer) if answer.status.is_success() => true,
        Ok(answer) if lease_not_found(&answer) => {
            run.ended_seen.push((millis_since(start, Instant::now()), "put refused: lease_not_found"));
            false
        }
        _ => {
            log.errors += 1;
            false
        }
    }
}

async fn renew(client: &Client, start: Instant, run: &mut LeaseRun, log: &mut LeaseLog) {
    let sent = Instant::now();
    let segments = ["v1".to_string(), "leases".to_string(), run.id.to_string(), "keepalive".to_string()];
    let answer = client.request(Method::POST, &segments, &[], HeaderMap::new(), None, Retry::Idempotent);
    match answer.await {
        Ok(answer) if answer.status.is_success() => run.acknowledged_sends_ms.push(millis_since(start, sent)),
        Ok(answer) if lease_not_found(&answer) => {
            run.ended_seen.push((millis_since(start, Instant::now()), "keepalive refused: lease_not_found"))
        }
        _ => log.errors += 1,
    }
}

async fn read(client: &Client, start: Instant, run: &mut LeaseRun, log: &mut LeaseLog) {
    let path = Client::key_path(&run.key);
    let answer = client.request(Method::GET, &path, &[], HeaderMap::new(), None, Retry::Idempotent);
    match answer.await {
        Ok(answer) if answer.status.is_success() => run.present_reads += 1,
        Ok(answer) if answer.status == StatusCode::NOT_FOUND => {
            run.ended_seen.push((millis_since(start, Instant::now()), "linearizable read: key absent"))
        }
        _ => log.errors += 1,
    }
}

fn lease_not_found(answer: &quorumkv_api::client::Answer) -> bool {
    answer.status == StatusCode::NOT_FOUND
        && serde_json::from_slice::<quorumkv_api::ErrorBody>(&answer.body)
            .is_ok_and(|body| body.error == "lease_not_found")
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/json"));
    headers
}

fn body_bytes(value: serde_json::Value) -> Option<bytes::Bytes> {
    Some(bytes::Bytes::from(value.to_string()))
}
