//! `quorumkv bench`: a closed-loop load generator, like etcd's `benchmark` tool.
//!
//! Every connection is one worker with its own keep-alive HTTP/1.1 connection to one endpoint
//! (spread over all endpoints, as a client library would), sending its next request as soon as
//! the previous one answers. The same workers drive etcd's v3 HTTP gateway (`--target etcd`:
//! `/v3/kv/put`, `/v3/kv/range`, `/v3/kv/txn`), so both systems meet the same client code.
//! Latencies of successful requests go into an HDR histogram (microsecond resolution).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use clap::Args;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

mod watch;
pub use watch::WatchReport;

/// Largest number of connections: each is a task and a socket on both ends.
pub const MAX_BENCH_CONNECTIONS: usize = 4096;
/// Largest key space (keys are generated, not stored, on the client side).
pub const MAX_BENCH_KEYS: u64 = 100_000_000;
/// Longest run: a benchmark is a measurement, not a soak test.
pub const MAX_BENCH_DURATION_SECS: u64 = 3600;
/// Histogram range: 1 µs to 60 s with 3 significant digits.
pub(crate) const HISTOGRAM_MAX_MICROS: u64 = 60_000_000;
/// One request may take this long before it counts as a timeout error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Writes of random keys.
    Put,
    /// Reads of random keys (`--consistency`, linearizable by default).
    Get,
    /// Reads and writes of random keys, `--read-ratio` of them reads.
    Mixed,
    /// Compare-and-set on keys owned by each connection (read the revision once, then
    /// conditional writes that should all succeed).
    Cas,
    /// Writes every key once (not timed against a deadline): loads a cluster for `get`.
    Populate,
    /// Transactions: a compare on one random key's modification revision (always true), then
    /// puts of that key and the next one, atomically (etcd: the same through `/v3/kv/txn`).
    Txn,
    /// Writes of random keys while `--watchers` watch every key: the events delivered per
    /// second and the delay from a write's sending to its event's arrival (etcd: `/v3/watch`).
    Watch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Quorumkv,
    /// etcd's v3 JSON gateway (etcd 3.4+).
    Etcd,
}

/// `quorumkv bench` options. Endpoints come from the global `--endpoints`.
#[derive(Debug, Clone, Args)]
pub struct BenchOptions {
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// What the endpoints are.
    #[arg(long, value_enum, default_value = "quorumkv")]
    pub target: Target,
    /// Connections, hence requests in flight (HTTP/1.1 carries one at a time per connection).
    #[arg(long, visible_alias = "concurrency", default_value_t = 64)]
    pub connections: usize,
    /// Length of the run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop after this many requests in total (before the duration if reached first).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Size of the key space.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key length in bytes (`bench/` and a zero-padded number).
    #[arg(long, default_value_t = 16)]
    pub key_bytes: usize,
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Reads: linearizable, lease or stale (etcd: stale means serializable).
    #[arg(long, default_value = "linearizable")]
    pub consistency: String,
    /// `mixed`: fraction of requests that are reads.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// `watch`: streams watching every key, spread over the endpoints.
    #[arg(long, default_value_t = 16)]
    pub watchers: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 || self.connections > MAX_BENCH_CONNECTIONS {
            return Err(format!("--connections must be 1 to {MAX_BENCH_CONNECTIONS}"));
        }
        if self.keys == 0 || self.keys > MAX_BENCH_KEYS {
            return Err(format!("--keys must be 1 to {MAX_BENCH_KEYS}"));
        }
        let digits = self.keys.to_string().len();
        if self.key_bytes < "bench/".len() + digits || self.key_bytes > quorumkv_api::limits::DEFAULT_MAX_KEY_BYTES {
            return Err(format!(
                "--key-bytes must be {} to {} for {} keys",
                "bench/".len() + digits,
                quorumkv_api::limits::DEFAULT_MAX_KEY_BYTES,
                self.keys
            ));
        }
        if self.value_bytes > quorumkv_api::limits::DEFAULT_MAX_VALUE_BYTES {
            return Err(format!("--value-bytes must be at most {}", quorumkv_api::limits::DEFAULT_MAX_VALUE_BYTES));
        }
        if self.duration_secs == 0 || self.duration_secs > MAX_BENCH_DURATION_SECS {
            return Err(format!("--duration-secs must be 1 to {MAX_BENCH_DURATION_SECS}"));
        }
        if self.workload == Workload::Txn && self.keys < 2 {
            return Err("--workload txn writes two distinct keys: --keys must be at least 2".into());
        }
        if self.workload == Workload::Watch && !(1..=watch::MAX_BENCH_WATCHERS).contains(&self.watchers) {
            return Err(format!("--watchers must be 1 to {}", watch::MAX_BENCH_WATCHERS));
        }
        if self.workload == Workload::Watch && self.value_bytes < 16 {
            return Err("--workload watch stamps each value with 16 bytes: --value-bytes must be at least 16".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("--read-ratio must be between 0 and 1".into());
        }
        if !["linearizable", "lease", "stale"].contains(&self.consistency.as_str()) {
            return Err("--consistency must be linearizable, lease or stale".into());
        }
        if self.target == Target::Etcd && self.consistency == "lease" {
            return Err("etcd has no lease reads over its gateway: use linearizable or stale".into());
        }
        Ok(())
    }

    fn key(&self, index: u64) -> String {
        let digits = self.key_bytes - "bench/".len();
        format!("bench/{index:0digits$}")
    }
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: Target,
    pub workload: Workload,
    pub connections: usize,
    pub endpoints: usize,
    pub elapsed_secs: f64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput_per_sec: f64,
    pub latency_ms: Latency,
    /// `watch`: what the watchers received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Report {
    pub fn print(&self) {
        println!(
            "target {:?}, workload {:?}, {} connections over {} endpoints, {:.1} s",
            self.target, self.workload, self.connections, self.endpoints, self.elapsed_secs
        );
        let errors: u64 = self.errors.values().sum();
        println!("requests:   {} ok, {errors} errors", self.ok);
        println!("throughput: {:.0} requests/s", self.throughput_per_sec);
        let l = &self.latency_ms;
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2})",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        );
        if errors > 0 {
            let kinds: Vec<String> = self.errors.iter().map(|(kind, n)| format!("{kind}: {n}")).collect();
            println!("errors:     {}", kinds.join(", "));
        }
        if let Some(watch) = &self.watch {
            let d = &watch.delay_ms;
            println!(
                "watch:      {} watchers, {} events ({:.0} /s), {} errors; delay ms p50 {:.2}  p99 {:.2}  max {:.2}",
                watch.watchers, watch.events, watch.events_per_sec, watch.errors, d.p50, d.p99, d.max
            );
        }
    }
}

/// Shared by all workers.
struct Shared {
    options: BenchOptions,
    endpoints: Vec<String>,
    /// TLS to the client port (`--cacert`, `--cert`, `--key` of the CLI).
    tls: quorumkv_api::client::ClientTls,
    started: Instant,
    deadline: Instant,
    /// Requests started, for `--requests` and `populate`.
    issued: AtomicU64,
    /// Requests finished (ok or not), for the progress line.
    finished: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// The next request's number, or `None` when the run is over.
    fn next_request(&self) -> Option<u64> {
        let limit = match self.options.workload {
            Workload::Populate => Some(self.options.keys),
            _ => self.options.requests,
        };
        let number = self.issued.fetch_add(1, Ordering::Relaxed);
        let within_limit = limit.is_none_or(|limit| number < limit);
        let within_time = self.options.workload == Workload::Populate || Instant::now() < self.deadline;
        (within_limit && within_time).then_some(number)
    }
}

/// One worker's results.
struct Tally {
    histogram: Histogram<u64>,
    errors: HashMap<String, u64>,
}

/// Runs the benchmark against `endpoints` (comma-separated `host:port` or URLs).
pub async fn run(
    options: BenchOptions,
    endpoints: &str,
    tls: &quorumkv_api::client::ClientTls,
) -> Result<Report, String> {
    options.validate()?;
    let scheme = if tls.is_on() { "https" } else { "http" };
    let endpoints = quorumkv_api::client::parse_endpoints_with_scheme(endpoints, scheme)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|url| url.as_str().trim_end_matches('/').to_string())
        .collect();
    let started = Instant::now();
    let shared = Arc::new(Shared {
        started,
        deadline: started + Duration::from_secs(options.duration_secs),
        options: options.clone(),
        tls: tls.clone(),
        endpoints,
        issued: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    // The watchers first, each open before any write is sent.
    let mut watchers = Vec::new();
    if options.workload == Workload::Watch {
        for index in 0..options.watchers {
            let endpoint = shared.endpoints[index % shared.endpoints.len()].clone();
            watchers.push(watch::open(&options, tls, endpoint, started, watch::stop_at(shared.deadline)).await?);
        }
    }
    let progress = (!options.quiet).then(|| tokio::spawn(progress_line(shared.clone(), started)));
    let workers: Vec<_> = (0..options.connections).map(|index| tokio::spawn(worker(shared.clone(), index))).collect();
    let mut histogram = new_histogram()?;
    let mut errors = BTreeMap::new();
    for worker in workers {
        let tally = worker.await.map_err(|e| e.to_string())??;
        histogram.add(&tally.histogram).map_err(|e| e.to_string())?;
        for (kind, count) in tally.errors {
            *errors.entry(kind).or_insert(0) += count;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(progress) = progress {
        progress.abort();
    }
    let watch = match options.workload {
        Workload::Watch => Some(watch::report(watchers, started.elapsed()).await?),
        _ => None,
    };
    let ok = histogram.len();
    let report = Report {
        target: options.target,
        workload: options.workload,
        connections: options.connections,
        endpoints: shared.endpoints.len(),
        elapsed_secs: elapsed,
        ok,
        errors,
        throughput_per_sec: ok as f64 / elapsed,
        latency_ms: latency_of(&histogram),
        watch,
    };
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(report)
}

/// The percentiles of a histogram of microseconds, in milliseconds.
pub(crate) fn latency_of(histogram: &Histogram<u64>) -> Latency {
    let millis = |micros: u64| micros as f64 / 1000.0;
    Latency {
        mean: histogram.mean() / 1000.0,
        p50: millis(histogram.value_at_quantile(0.50)),
        p90: millis(histogram.value_at_quantile(0.90)),
        p99: millis(histogram.value_at_quantile(0.99)),
        p99_9: millis(histogram.value_at_quantile(0.999)),
        max: millis(histogram.max()),
    }
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3).map_err(|e| e.to_string())
}

/// A progress bar over the run's duration with the requests finished, the rate of the last
/// second and the errors; indicatif draws it on standard error, and not at all when that is no
/// terminal (CI logs get no carriage-return noise).
async fn progress_line(shared: Arc<Shared>, started: Instant) {
    let bar = indicatif::ProgressBar::new(shared.options.duration_secs);
    let style = indicatif::ProgressStyle::with_template("[{elapsed:>4}/{len}s] {bar:30} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    let mut last = 0u64;
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    loop {
        interval.tick().await;
        let finished = shared.finished.load(Ordering::Relaxed);
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!(
            "{finished} requests, {} /s, {} errors",
            finished - last,
            shared.failed.load(Ordering::Relaxed)
        ));
        last = finished;
    }
}

/// What one request did.
enum RequestResult {
    Ok,
    Error(String),
}

async fn worker(shared: Arc<Shared>, index: usize) -> Result<Tally, String> {
    let options = &shared.options;
    // One connection per worker: a pool of its own, so connections are never shared.
    let builder = shared.tls.configure(reqwest::Client::builder()).map_err(|e| e.to_string())?;
    let http = builder
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = shared.endpoints[index % shared.endpoints.len()].clone();
    let mut tally = Tally { histogram: new_histogram()?, errors: HashMap::new() };
    let mut rng = fastrand::Rng::with_seed(index as u64 + 1);
    let mut value = vec![0u8; options.value_bytes];
    rng.fill(&mut value);
    // Revisions of this worker's CAS keys, learned on first use.
    let mut revisions: HashMap<u64, u64> = HashMap::new();
    let owned_keys = options.keys.div_ceil(options.connections as u64).max(1);
    while let Some(number) = shared.next_request() {
        let key_index = match options.workload {
            Workload::Populate => number,
            Workload::Cas => {
                let k = (rng.u64(..owned_keys) * options.connections as u64 + index as u64) % options.keys;
                if let std::collections::hash_map::Entry::Vacant(entry) = revisions.entry(k) {
                    // Untimed: learn the key's current revision (0 when absent).
                    entry.insert(read_revision(&http, &endpoint, options, &options.key(k)).await.unwrap_or(0));
                }
                k
            }
            _ => rng.u64(..options.keys),
        };
        let key = options.key(key_index);
        let read = match options.workload {
            Workload::Get => true,
            Workload::Mixed => rng.f64() < options.read_ratio,
            _ => false,
        };
        // A different value every time, without allocating per request beyond the body.
        if options.workload == Workload::Watch {
            value = watch::stamped_value(shared.started, options.value_bytes);
        } else if let Some(first) = value.first_mut() {
            *first = first.wrapping_add(1);
        }
        let started = Instant::now();
        let outcome = if options.workload == Workload::Cas {
            let expected = revisions.get(&key_index).copied().unwrap_or(0);
            let (outcome, revision) = cas(&http, &endpoint, options, &key, expected, &value).await;
            if let Some(revision) = revision {
                revisions.insert(key_index, revision);
            } else {
                revisions.remove(&key_index);
            }
            outcome
        } else if options.workload == Workload::Txn {
            let next = options.key((key_index + 1) % options.keys);
            txn(&http, &endpoint, options, [&key, &next], &value).await
        } else if read {
            get(&http, &endpoint, options, &key).await
        } else {
            put(&http, &endpoint, options, &key, &value).await
        };
        let micros = (started.elapsed().as_micros() as u64).clamp(1, HISTOGRAM_MAX_MICROS);
        shared.finished.fetch_add(1, Ordering::Relaxed);
        match outcome {
            RequestResult::Ok => tally.histogram.record(micros).map_err(|e| e.to_string())?,
            RequestResult::Error(kind) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                *tally.errors.entry(kind).or_insert(0) += 1;
            }
        }
    }
    Ok(tally)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn transport_error(error: reqwest::Error) -> RequestResult {
    let kind = if error.is_timeout() {
        "timeout"
    } else if quorumkv_api::client::certainly_not_sent(&error) {
        "connect"
    } else {
        "transport"
    };
    RequestResult::Error(kind.to_string())
}

fn status_error(status: reqwest::StatusCode) -> RequestResult {
    RequestResult::Error(format!("http_{}", status.as_u16()))
}

async fn put(http: &reqwest::Client, endpoint: &str, options: &BenchOptions, key: &str, value: &[u8]) -> RequestResult {
    let request = match options.target {
        Target::Quorumkv => http.put(format!("{endpoint}/v1/kv/{key}")).body(Bytes::copy_from_slice(value)),
        Target::Etcd => http
            .post(format!("{endpoint}/v3/kv/put"))
            .body(json!({ "key": b64(key.as_bytes()), "value": b64(value) }).to_string()),
    };
    match request.send().await {
        Ok(response) if response.status().is_success() => drain(response).await,
        Ok(response) => status_error(response.status()),
        Err(error) => transport_error(error),
    }
}

async fn get(http: &reqwest::Client, endpoint: &str, options: &BenchOptions, key: &str) -> RequestResult {
    let request = match options.target {
        Target::Quorumkv => http.get(format!("{endpoint}/v1/kv/{key}?consistency={}", options.consistency)),
        Target::Etcd => {
            let serializable = options.consistency == "stale";
            http.post(format!("{endpoint}/v3/kv/range"))
                .body(json!({ "key": b64(key.as_bytes()), "serializable": serializable }).to_string())
        }
    };
    match request.send().await {
        // A missing key is an answer too (etcd answers it with 200 and no kvs).
        Ok(response) if response.status().is_success() || response.status() == 404 => drain(response).await,
        Ok(response) => status_error(response.status()),
        Err(error) => transport_error(error),
    }
}

async fn drain(response: reqwest::Response) -> RequestResult {
    match response.bytes().await {
        Ok(_) => RequestResult::Ok,
        Err(error) => transport_error(error),
    }
}

/// A modification revision no key reaches: the benchmark's compare always holds, yet the
/// server must read the key to know it.
const TXN_BENCH_REVISION_BOUND: u64 = 1 << 62;

/// One transaction: compare `keys[0]`'s modification revision, then put both keys.
async fn txn(
    http: &reqwest::Client,
    endpoint: &str,
    options: &BenchOptions,
    keys: [&str; 2],
    value: &[u8],
) -> RequestResult {
    let request = match options.target {
        Target::Quorumkv => {
            let body = json!({
                "compare": [{"key": keys[0], "cmp": "<", "mod_revision": TXN_BENCH_REVISION_BOUND}],
                "success": keys.map(|key| json!({"op": "put", "key": key, "value_base64": b64(value)})),
            });
            http.post(format!("{endpoint}/v1/txn")).body(body.to_string())
        }
        Target::Etcd => {
            let body = json!({
                "compare": [{
                    "key": b64(keys[0].as_bytes()), "result": "LESS", "target": "MOD",
                    "mod_revision": TXN_BENCH_REVISION_BOUND.to_string(),
                }],
                "success": keys.map(|key| json!({"request_put": {"key": b64(key.as_bytes()), "value": b64(value)}})),
            });
            http.post(format!("{endpoint}/v3/kv/txn")).body(body.to_string())
        }
    };
    match request.send().await {
        Ok(response) if response.status().is_success() => match response.json::<serde_json::Value>().await {
            Ok(answer) if answer["succeeded"] == true => RequestResult::Ok,
            Ok(_) => RequestResult::Error("txn_compare_failed".into()),
            Err(error) => transport_error(error),
        },
        Ok(response) => status_error(response.status()),
        Err(error) => transport_error(error),
    }
}

/// The key's current modification revision (`None` on any failure).
async fn read_revision(http: &reqwest::Client, endpoint: &str, options: &BenchOptions, key: &str) -> Option<u64> {
    match options.target {
        Target::Quorumkv => {
            let response = http.get(format!("{endpoint}/v1/kv/{key}")).send().await.ok()?;
            if response.status() == 404 {
                return Some(0);
            }
            let etag = response.headers().get(reqwest::header::ETAG)?.to_str().ok()?;
            etag.trim_matches('"').parse().ok()
        }
        Target::Etcd => {
            let body = json!({ "key": b64(key.as_bytes()) }).to_string();
            let answer: serde_json::Value =
                http.post(format!("{endpoint}/v3/kv/range")).body(body).send().await.ok()?.json().await.ok()?;
            match answer["kvs"].get(0) {
                None => Some(0),
                Some(kv) => kv["mod_revision"].as_str()?.parse().ok(),
            }
        }
    }
}

/// A conditional write expecting `expected` (0: the key must be absent). Returns the outcome
/// and the key's new revision when it succeeded.
async fn cas(
    http: &reqwest::Client,
    endpoint: &str,
    options: &BenchOptions,
    key: &str,
    expected: u64,
    value: &[u8],
) -> (RequestResult, Option<u64>) {
    match options.target {
        Target::Quorumkv => {
            let condition = if expected == 0 {
                (reqwest::header::IF_NONE_MATCH, "*".to_string())
            } else {
                (reqwest::header::IF_MATCH, format!("\"{expected}\""))
            };
            let request =
                http.put(format!("{endpoint}/v1/kv/{key}")).header(condition.0, condition.1).body(value.to_vec());
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let revision = response
                        .headers()
                        .get(reqwest::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim_matches('"').parse().ok());
                    (drain(response).await, revision)
                }
                Ok(response) if response.status() == 412 => (RequestResult::Error("cas_conflict".into()), None),
                Ok(response) => (status_error(response.status()), None),
                Err(error) => (transport_error(error), None),
            }
        }
        Target::Etcd => {
            let compare = json!({
                "key": b64(key.as_bytes()),
                "result": "EQUAL",
                "target": "MOD",
                "mod_revision": expected.to_string(),
            });
            let body = json!({
                "compare": [compare],
                "success": [{ "request_put": { "key": b64(key.as_bytes()), "value": b64(value) } }],
            });
            let response = http.post(format!("{endpoint}/v3/kv/txn")).body(body.to_string()).send().await;
            match response {
                Ok(response) if response.status().is_success() => match response.json::<serde_json::Value>().await {
                    Ok(answer) if answer["succeeded"] == true => {
                        let revision = answer["header"]["revision"].as_str().and_then(|r| r.parse().ok());
                        (RequestResult::Ok, revision)
                    }
                    Ok(_) => (RequestResult::Error("cas_conflict".into()), None),
                    Err(error) => (transport_error(error), None),
                },
                Ok(response) => (status_error(response.status()), None),
                Err(error) => (transport_error(error), None),
            }
        }
    }
}
