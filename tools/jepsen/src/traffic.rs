//! The traffic: concurrent clients running a workload against the nodes, each recording every
//! operation it invokes and how it ended (ok, fail, or info when the outcome is unknown).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use quorumkv_api::CompareOp;
use quorumkv_api::Page;
use quorumkv_api::TxnCompare;
use quorumkv_api::TxnOperation;
use quorumkv_api::TxnReply;
use quorumkv_api::TxnRequest;
use quorumkv_api::TxnResult;

use crate::cluster::RECOVERY_DEADLINE;
use crate::history::OpKind;
use crate::history::Operation;
use crate::history::Status;
use crate::options::Workload;

/// A client request that has not answered in this time is recorded as `info` (unknown):
/// longer than the server's leader wait (2 s) plus a forwarded write's timeout (6 s), so the
/// server's own 503 or 504 normally arrives first.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(12);
/// Pause after a failed operation, so a client of a dead node does not spin.
const FAILURE_BACKOFF: Duration = Duration::from_millis(50);
/// Pause between the reads of a client that only reads (bounded-staleness runs).
const READER_PAUSE: Duration = Duration::from_millis(10);
/// Cap on operations per client, so a run's history (and the checker's work) stays bounded.
const MAX_OPS_PER_CLIENT: usize = 20_000;

/// How a write's exchange ended: the body of a 200, else its status in the history and why.
/// 504 and 500 may have been applied, as may a request sent without an answer; everything else
/// was refused.
fn write_outcome(exchange: Exchange) -> Result<String, (Status, String)> {
    match exchange {
        Exchange::Answered(200, _, body) => Ok(body),
        Exchange::Answered(status @ (500 | 504), _, body) => Err((Status::Info, format!("{status} {body}"))),
        Exchange::Answered(status, _, body) => Err((Status::Fail, format!("{status} {body}"))),
        Exchange::NotSent(error) => Err((Status::Fail, error)),
        Exchange::Lost(error) => Err((Status::Info, error)),
    }
}

/// The error of a transaction's compare-and-set whose compare did not hold (its 412).
pub const COMPARE_DID_NOT_HOLD: &str = "the compare did not hold";

/// Every client's operations, in the order they completed.
pub type History = Arc<Mutex<Vec<Operation>>>;

/// The key of register `index` under `prefix`.
pub fn register_key(prefix: &str, index: usize) -> String {
    format!("{}{index}", register_prefix(prefix))
}

/// The prefix every register key under `prefix` starts with.
pub fn register_prefix(prefix: &str) -> String {
    format!("{prefix}register/")
}

pub struct Client {
    pub process: usize,
    pub node: u64,
    pub endpoint: String,
    pub http: reqwest::Client,
    pub history: History,
    pub start: Instant,
    pub rng: fastrand::Rng,
    pub keys: usize,
    pub read_consistency: String,
    /// The bound of reads when `read_consistency` is `bounded`.
    pub max_lag_ms: u64,
    /// This client only reads.
    pub reader_only: bool,
    /// Keys this client touches start with this (empty in fault runs; a reserved prefix in
    /// `verify`, so its keys never meet an application's).
    pub prefix: String,
    /// Whether this client's previous operation did not succeed (for the back-off).
    pub(crate) last_failed: std::sync::atomic::AtomicBool,
}

/// What an HTTP exchange came to.
pub enum Exchange {
    Answered(u16, reqwest::header::HeaderMap, String),
    /// Refused before anything was sent: certainly not applied.
    NotSent(String),
    /// Sent, no answer: unknown.
    Lost(String),
}

impl Client {
    /// A client of the node `node` at `endpoint`, running the register workload on one key
    /// with linearizable reads; the fields say otherwise where a run needs it.
    pub fn new(
        process: usize,
        node: u64,
        endpoint: String,
        http: reqwest::Client,
        history: History,
        start: Instant,
    ) -> Self {
        Client {
            process,
            node,
            endpoint,
            http,
            history,
            start,
            rng: fastrand::Rng::with_seed(process as u64),
            keys: 1,
            read_consistency: "linearizable".into(),
            max_lag_ms: 0,
            reader_only: false,
            prefix: String::new(),
            last_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn last_failed(&self) -> bool {
        self.last_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn record(&self, mut op: Operation) {
        op.complete_ns = self.now();
        self.last_failed.store(op.status != Status::Ok, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut history) = self.history.lock() {
            history.push(op);
        }
    }

    fn begin(&self, key: &str, kind: OpKind) -> Operation {
        Operation {
            index: 0,
            process: self.process,
            node: self.node,
            key: key.to_string(),
            kind,
            value: None,
            expected: None,
            value_read: None,
            status: Status::Info,
            invoke_ns: self.now(),
            complete_ns: 0,
            error: None,
            max_lag_ms: None,
            txn: false,
            revision: None,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Exchange {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                match response.text().await {
                    Ok(body) => Exchange::Answered(status, headers, body),
                    Err(error) => Exchange::Lost(error.to_string()),
                }
            }
            Err(error) if quorumkv_api::client::certainly_not_sent(&error) => Exchange::NotSent(error.to_string()),
            Err(error) => Exchange::Lost(error.to_string()),
        }
    }

    pub async fn run(mut self, workload: Workload, deadline: Instant) {
        let mut counter = 0usize;
        while Instant::now() < deadline && counter < MAX_OPS_PER_CLIENT {
            counter += 1;
            // A client whose node is down or without a leader backs off instead of spinning.
            let failed_before = self.last_failed();
            if failed_before {
                tokio::time::sleep(FAILURE_BACKOFF).await;
            } else if self.reader_only {
                // Local reads answer in microseconds: without a pause a reader would use up its
                // operations in seconds and leave the rest of the run unread.
                tokio::time::sleep(READER_PAUSE).await;
            }
            let value = format!("p{}-{counter}", self.process);
            match workload {
                Workload::Set => self.write(&format!("{}set/{value}", self.prefix), &value).await,
                Workload::Register => {
                    let key = register_key(&self.prefix, self.rng.usize(..self.keys));
                    let choice = if self.reader_only { 0 } else { self.rng.u8(..10) };
                    match choice {
                        0..=3 => {
                            self.read(&key).await;
                        }
                        4 => self.txn_read(&key).await,
                        5..=7 => self.write(&key, &value).await,
                        8 => self.cas(&key, &value).await,
                        _ => self.txn_cas(&key, &value).await,
                    }
                }
            }
        }
    }

    /// Linearizable (or the configured) read; returns the value and its revision when present.
    pub async fn read(&self, key: &str) -> Option<(String, String)> {
        let mut op = self.begin(key, OpKind::Read);
        let url = if self.read_consistency == "bounded" {
            op.max_lag_ms = Some(self.max_lag_ms);
            format!("{}/v1/kv/{key}?consistency=stale&max_lag_ms={}", self.endpoint, self.max_lag_ms)
        } else {
            format!("{}/v1/kv/{key}?consistency={}", self.endpoint, self.read_consistency)
        };
        let result = match self.send(self.http.get(url)).await {
            Exchange::Answered(200, headers, body) => {
                op.status = Status::Ok;
                op.value_read = Some(body.clone());
                let etag = headers.get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
                etag.map(|etag| (body, etag))
            }
            Exchange::Answered(404, _, _) => {
                op.status = Status::Ok;
                None
            }
            Exchange::Answered(status, _, body) => {
                op.status = Status::Fail;
                op.error = Some(format!("{status} {body}"));
                None
            }
            Exchange::NotSent(error) | Exchange::Lost(error) => {
                op.status = Status::Fail;
                op.error = Some(error);
                None
            }
        };
        self.record(op);
        result
    }

    async fn write(&self, key: &str, value: &str) {
        let mut op = self.begin(key, OpKind::Write);
        op.value = Some(value.to_string());
        let request = self.http.put(format!("{}/v1/kv/{key}", self.endpoint)).body(value.to_string());
        self.finish_write(op, request).await;
    }

    async fn cas(&self, key: &str, value: &str) {
        let Some((current, etag)) = self.read(key).await else { return };
        let mut op = self.begin(key, OpKind::Cas);
        op.value = Some(value.to_string());
        op.expected = Some(current);
        let request =
            self.http.put(format!("{}/v1/kv/{key}", self.endpoint)).header("If-Match", etag).body(value.to_string());
        self.finish_write(op, request).await;
    }

    /// A read as a transaction's get: through the log, so linearizable whatever
    /// `read_consistency` says.
    async fn txn_read(&self, key: &str) {
        let mut op = self.begin(key, OpKind::Read);
        op.txn = true;
        let body = TxnRequest { success: vec![TxnOperation::get(key)], ..TxnRequest::default() };
        match self.send(self.txn_request(&body)).await {
            Exchange::Answered(200, _, text) => match serde_json::from_str::<TxnReply>(&text) {
                Ok(TxnReply { succeeded: true, results, .. }) if results.len() == 1 => {
                    op.status = Status::Ok;
                    op.value_read = match &results[0] {
                        // A value that is not UTF-8 (never one of ours) reads as its base64.
                        TxnResult::Get { kv: Some(item) } => item.value.clone().or(item.value_base64.clone()),
                        _ => None,
                    };
                }
                _ => {
                    op.status = Status::Fail;
                    op.error = Some(format!("unexpected answer {text}"));
                }
            },
            Exchange::Answered(status, _, text) => {
                op.status = Status::Fail;
                op.error = Some(format!("{status} {text}"));
            }
            // A read that did not answer changed nothing.
            Exchange::NotSent(error) | Exchange::Lost(error) => {
                op.status = Status::Fail;
                op.error = Some(error);
            }
        }
        self.record(op);
    }

    /// Compare-and-set as a transaction: if the value is still the one just read, put the new
    /// one. The failure branch running is a definite failure, as a 412.
    async fn txn_cas(&self, key: &str, value: &str) {
        let Some((current, _)) = self.read(key).await else { return };
        let mut op = self.begin(key, OpKind::Cas);
        op.txn = true;
        op.value = Some(value.to_string());
        op.expected = Some(current.clone());
        let body = TxnRequest {
            compare: vec![TxnCompare::value(key, CompareOp::Equal, &current)],
            success: vec![TxnOperation::put(key, value)],
            failure: Vec::new(),
        };
        match write_outcome(self.send(self.txn_request(&body)).await) {
            Ok(text) => match serde_json::from_str::<TxnReply>(&text) {
                Ok(TxnReply { succeeded: true, revision, .. }) => {
                    op.status = Status::Ok;
                    op.revision = Some(revision);
                }
                Ok(TxnReply { succeeded: false, .. }) => {
                    op.status = Status::Fail;
                    op.error = Some(COMPARE_DID_NOT_HOLD.into());
                }
                // A 200 that does not parse: whether the put ran is unknown.
                Err(error) => {
                    op.status = Status::Info;
                    op.error = Some(format!("unreadable answer {text}: {error}"));
                }
            },
            Err((status, error)) => {
                op.status = status;
                op.error = Some(error);
            }
        }
        self.record(op);
    }

    fn txn_request(&self, body: &TxnRequest) -> reqwest::RequestBuilder {
        let json = serde_json::to_string(body).unwrap_or_default();
        self.http.post(format!("{}/v1/txn", self.endpoint)).header("content-type", "application/json").body(json)
    }

    async fn finish_write(&self, mut op: Operation, request: reqwest::RequestBuilder) {
        match write_outcome(self.send(request).await) {
            Ok(body) => {
                op.status = Status::Ok;
                op.revision = serde_json::from_str::<quorumkv_api::PutReply>(&body).ok().map(|reply| reply.revision);
            }
            Err((status, error)) => {
                op.status = status;
                op.error = Some(error);
            }
        }
        self.record(op);
    }

    /// A final linearizable read after recovery, retried until it answers.
    pub async fn final_read(&self, key: &str) -> Result<(), String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        while Instant::now() < deadline {
            let before = self.history.lock().map_err(|_| "poisoned")?.len();
            self.read(key).await;
            let answered = {
                let history = self.history.lock().map_err(|_| "poisoned")?;
                history.len() > before && history[history.len() - 1].status == Status::Ok
            };
            if answered {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("final read of {key} never succeeded"))
    }

    /// Every element of the set, through linearizable paginated listing.
    pub async fn read_set(&self) -> Result<BTreeSet<String>, String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let mut present = BTreeSet::new();
        let mut start = String::new();
        loop {
            if Instant::now() > deadline {
                return Err("final set read did not complete".into());
            }
            let url = format!("{}/v1/kv?prefix={}set/&limit=1000&start={start}", self.endpoint, self.prefix);
            let Exchange::Answered(200, _, body) = self.send(self.http.get(url)).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let page: Page = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            for item in page.items {
                let set_prefix = format!("{}set/", self.prefix);
                present.insert(item.key.strip_prefix(set_prefix.as_str()).unwrap_or(&item.key).to_string());
            }
            match page.next_start {
                Some(next) => start = next,
                None => return Ok(present),
            }
        }
    }
}
