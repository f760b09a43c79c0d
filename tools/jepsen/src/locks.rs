//! Lock holders beside the register workload's clients: one per node and bound to it (as
//! Jepsen binds its clients: a holder cut off with its node must lose the lock in time), all
//! contending for one lock through the recipe `quorumkv lock` runs
//! (`quorumkv_api::recipes`), each holding it for a few operations on a fenced resource, then
//! releasing it, or abandoning it to expire.
//!
//! The resource is a counter in quorumkv guarded by a fence, as a storage service that honours
//! fencing tokens would guard it (Kleppmann's "How to do distributed locking"): every operation
//! of a holder is a transaction that runs only if the fence is at most the holder's token, and
//! raises the fence to it (the README's fencing example). An increment reads the counter (fenced), then writes one more
//! (fenced). `checker::lock` checks what the holders saw:
//!
//! - the lock: every acquisition has its own token, tokens grow in the order of acquisition,
//!   and no holder's critical section (from the answer that made it holder to the last action it
//!   began believing it held) overlaps another's: one clock, the harness's, measures both;
//! - the fence: the counter's acknowledged writes, in revision order, have growing values and
//!   never-decreasing tokens, and no value was written twice (two holders that read the same
//!   value and both wrote one more: a lost update the fence let through).

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use quorumkv_api::client::Client;
use quorumkv_api::client::Retry;
use quorumkv_api::recipes;
use quorumkv_api::CompareOp;
use quorumkv_api::TxnCompare;
use quorumkv_api::TxnOperation;
use quorumkv_api::TxnReply;
use quorumkv_api::TxnRequest;
use quorumkv_api::TxnResult;
use reqwest::header::HeaderMap;
use reqwest::Method;
use reqwest::StatusCode;
use serde::Serialize;

/// The lock every holder contends for.
pub const LOCK_NAME: &str = "jepsen-lock/mutex";
/// The prefix of the lock's contender keys (each under its session's lease).
pub const LOCK_PREFIX: &str = "jepsen-lock/mutex/";
/// The fenced resource: the highest token it has seen, and the counter it guards (both absent
/// at first: the counter is then 0).
pub const FENCE_KEY: &str = "jepsen-lock-resource/fence";
pub const COUNTER_KEY: &str = "jepsen-lock-resource/counter";
/// A session's TTL: as the lease holders', long enough to renew through an election.
pub const LOCK_TTL_MS: u64 = crate::leases::LEASE_TTL_MS;
/// Increments per critical section: between these two.
const MIN_INCREMENTS: u32 = 1;
const MAX_INCREMENTS: u32 = 3;
/// The pause between two increments of a section, at most: sections then last up to about
/// two TTLs, renewed in the background, and faults land inside them.
const MAX_PAUSE_MS: u64 = LOCK_TTL_MS * 3 / 4;
/// One section in this many is abandoned (no release, no revoke): the next holder waits for
/// the lease to expire, as when a holder dies.
const ABANDON_ONE_IN: u32 = 4;
/// Sections one holder makes in a run, so memory and checking stay bounded.
const MAX_SECTIONS_PER_HOLDER: usize = 10_000;
/// After a failed attempt (no session, no turn), the next comes this much later.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// A token as the fence stores it: zero-padded, so that text order is number order.
fn fence_text(token: u64) -> String {
    format!("{token:020}")
}

/// How an operation on the resource ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran, at this revision.
    Ok { revision: u64 },
    /// The fence was past the token: refused, and the section ended.
    Fenced,
    /// No answer that says: it may have run.
    Unknown,
}

/// One increment: the fenced read, then (if it read) the fenced write of one more.
#[derive(Debug, Clone, Serialize)]
pub struct Increment {
    pub read: Outcome,
    /// The counter's value the read returned.
    pub read_value: Option<u64>,
    pub write: Option<Outcome>,
}

/// One critical section; times in ms since the run started, on the harness's one clock.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// The lock key's create revision.
    pub token: u64,
    /// When the answer that made this holder the first arrived.
    pub acquired_ms: u64,
    /// When the holder stopped believing it held the lock: when it released or abandoned it
    /// (or was fenced out), or when its session stopped holding (nine tenths of the TTL after
    /// the last answered keepalive was sent, or the answer that the lease ended).
    pub end_ms: u64,
    /// `released`, `abandoned`, `lost` (the session ended first) or `fenced`.
    pub ended: &'static str,
    pub increments: Vec<Increment>,
}

/// What one holder did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LockLog {
    pub endpoint: String,
    pub sections: Vec<Section>,
    /// Attempts that ended before holding (no session, no turn before the session ended).
    pub attempts_failed: u64,
    pub errors: Vec<String>,
}

/// Errors kept per holder (the count of failed attempts has the rest).
const MAX_ERRORS_KEPT: usize = 20;

impl LockLog {
    fn error(&mut self, error: impl ToString) {
        self.attempts_failed += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(error.to_string());
        }
    }
}

fn millis_since(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// Takes the lock through `endpoint` only, again and again until `deadline`.
pub async fn hold(
    endpoint: String,
    http: reqwest::Client,
    holder: usize,
    seed: u64,
    start: Instant,
    deadline: Instant,
) -> LockLog {
    let mut log = LockLog { endpoint: endpoint.clone(), ..LockLog::default() };
    let client = match Client::with_http(&endpoint, http) {
        Ok(client) => Arc::new(client),
        Err(error) => {
            log.error(error);
            return log;
        }
    };
    let mut rng = fastrand::Rng::with_seed(seed ^ (holder as u64 + 0x10C4));
    while Instant::now() + Duration::from_millis(LOCK_TTL_MS) < deadline && log.sections.len() < MAX_SECTIONS_PER_HOLDER
    {
        match section(&client, &mut rng, start, deadline).await {
            Ok(Some(section)) => log.sections.push(section),
            Ok(None) => {}
            Err(error) => {
                log.error(error);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    log
}

/// One attempt: a session, a turn, a critical section. `None`: the run ended while waiting.
async fn section(
    client: &Arc<Client>,
    rng: &mut fastrand::Rng,
    start: Instant,
    deadline: Instant,
) -> Result<Option<Section>, String> {
    let session = recipes::Session::open(client.clone(), LOCK_TTL_MS).await.map_err(|e| format!("grant: {e}"))?;
    let acquire = async {
        let (key, token) = recipes::enter(client, &session, LOCK_NAME, "").await?;
        recipes::wait_turn(client, LOCK_NAME, &key, token).await?;
        Ok::<_, quorumkv_api::client::ClientError>(token)
    };
    let acquired = tokio::select! {
        acquired = acquire => acquired.map_err(|e| format!("acquire: {e}")),
        reason = session.lost() => Err(format!("lost before holding: {reason}")),
        () = tokio::time::sleep_until(deadline.into()) => {
            let _ = session.close().await;
            return Ok(None);
        }
    };
    // An answer and the session's deadline can be ready at the same poll (a stalled runtime),
    // and `select!` picks either: a turn that comes after the session ended is no section.
    let acquired = acquired.and_then(|token| {
        session.is_held().then_some(token).ok_or_else(|| "the turn came after the session ended".to_string())
    });
    let token = match acquired {
        Ok(token) => token,
        Err(error) => {
            // Revoked, or left to expire if that fails: the run's end checks it is gone.
            let _ = session.close().await;
            return Err(error);
        }
    };
    let acquired_ms = millis_since(start, Instant::now());
    let mut section = Section { token, acquired_ms, end_ms: acquired_ms, ended: "released", increments: Vec::new() };
    for round in 0..rng.u32(MIN_INCREMENTS..=MAX_INCREMENTS) {
        if round > 0 {
            // Long sections too, renewed meanwhile, so that faults land inside them.
            tokio::time::sleep(Duration::from_millis(rng.u64(0..=MAX_PAUSE_MS))).await;
        }
        if !still_held(&session, start, &mut section) {
            break;
        }
        let (read, read_value) = fenced(client, token, TxnOperation::get(COUNTER_KEY)).await;
        let mut increment = Increment { read, read_value, write: None };
        if let (Outcome::Ok { .. }, Some(value)) = (read, read_value) {
            if still_held(&session, start, &mut section) {
                let put = TxnOperation::put(COUNTER_KEY, &(value + 1).to_string());
                increment.write = Some(fenced(client, token, put).await.0);
            }
        }
        let fenced_out = increment.read == Outcome::Fenced || increment.write == Some(Outcome::Fenced);
        section.increments.push(increment);
        if fenced_out {
            // It believed it held until the answer came (or its session ended first).
            still_held(&session, start, &mut section);
            section.ended = "fenced";
            break;
        }
    }
    if section.ended == "released" && still_held(&session, start, &mut section) && rng.u32(0..ABANDON_ONE_IN) == 0 {
        section.ended = "abandoned";
        session.abandon();
    } else {
        // Released: from here on this holder does nothing as holder.
        let _ = session.close().await;
    }
    Ok(Some(section))
}

/// Whether the session still holds; if so, the section lasts at least until now, else until
/// the session stopped holding (when `quorumkv lock` would have killed its command), whatever
/// the holder was doing meanwhile.
fn still_held(session: &recipes::Session, start: Instant, section: &mut Section) -> bool {
    let now = Instant::now();
    match session.lost_at() {
        None => {
            section.end_ms = millis_since(start, now);
            true
        }
        Some(lost_at) => {
            section.end_ms = section.end_ms.max(millis_since(start, lost_at));
            section.ended = "lost";
            false
        }
    }
}

/// Runs `operation` on the resource unless the fence is past `token`, raising the fence to it;
/// the counter's value (absent: 0) when `operation` is the get. The transaction is the README's
/// fencing example: the compare holds, and nothing runs, only when a later holder has been
/// there, so an absent fence lets the first holder in. Sent again only when it certainly did
/// not run: the put is not idempotent once another holder has run between.
async fn fenced(client: &Client, token: u64, operation: TxnOperation) -> (Outcome, Option<u64>) {
    let request = TxnRequest {
        compare: vec![TxnCompare::value(FENCE_KEY, CompareOp::Greater, &fence_text(token))],
        success: Vec::new(),
        failure: vec![TxnOperation::put(FENCE_KEY, &fence_text(token)), operation],
    };
    let Ok(body) = serde_json::to_vec(&request) else { return (Outcome::Unknown, None) };
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/json"));
    let segments = ["v1".to_string(), "txn".to_string()];
    let answer = client.request(Method::POST, &segments, &[], headers, Some(body.into()), Retry::OnlyIfNotSent).await;
    let Ok(answer) = answer else { return (Outcome::Unknown, None) };
    if answer.status != StatusCode::OK {
        return (Outcome::Unknown, None);
    }
    let Ok(reply) = serde_json::from_slice::<TxnReply>(&answer.body) else { return (Outcome::Unknown, None) };
    if reply.succeeded {
        return (Outcome::Fenced, None);
    }
    let value = reply.results.iter().find_map(|result| match result {
        TxnResult::Get { kv: Some(item) } => item.value.as_deref().and_then(|value| value.parse().ok()),
        TxnResult::Get { kv: None } => Some(0),
        _ => None,
    });
    (Outcome::Ok { revision: reply.revision }, value)
}
