//! Locks and elections (the CLI's `quorumkv lock` and `quorumkv elect`, and the Jepsen lock
//! workload, so the fault runs test the recipe users run), built from the public
//! API only: a lease kept alive (the session), a create-only key under the lease, and blocking
//! reads to wait for the one key ahead (etcd's `concurrency` recipe).
//!
//! Each contender creates `NAME/<its lease id>`; the holder is the key with the lowest create
//! revision, and that revision is the fencing token: it grows with every acquisition, so a
//! resource that refuses tokens older than the newest it has seen is safe even against a holder
//! that was paused past its TTL and still believes it holds the lock (Jepsen's etcd 3.4.3
//! analysis). A waiter waits for the deletion of the key just ahead of it, not for the holder,
//! so a release wakes one waiter, not all of them.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::client::Client;
use crate::client::ClientError;
use crate::client::Retry;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::header::HeaderValue;
use reqwest::Method;
use reqwest::StatusCode;

/// Waiters listed per page while finding the key ahead: the API's largest page.
const WAITERS_PAGE: usize = 1_000;
/// Pages of waiters read at most (10,000 contenders for one name).
const MAX_WAITER_PAGES: usize = 10;
/// How long one blocking read waits before it is asked again.
const WAIT: Duration = Duration::from_millis(crate::limits::RECIPE_WAIT_MS);
/// The session counts as lost this share of the TTL (a tenth) before the cluster may end the
/// lease, so the command is stopped before anyone else can hold the lock.
const LOSS_MARGIN_DIVISOR: u32 = 10;
/// After a keepalive that failed, the next is tried this soon (not a third of the TTL later).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

fn failed(message: impl Into<String>) -> ClientError {
    ClientError::Failed(message.into())
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

fn error_of(answer: &crate::client::Answer) -> ClientError {
    failed(format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body)))
}

/// A lease kept alive in the background. It counts as lost a tenth of `ttl_ms` before `ttl_ms`
/// has passed since the sending of the last keepalive that was answered (the earliest moment
/// the cluster may end the lease), whatever the cluster may still think: the holder can only be
/// sure of what it was told in time.
pub struct Session {
    client: Arc<Client>,
    pub lease: u64,
    hold: tokio::sync::watch::Receiver<Hold>,
    keeper: tokio::task::JoinHandle<()>,
}

/// What the keeper knows: the session holds until `until` unless it has `ended`. A deadline,
/// not a flag the keeper sets when it passes: a keeper task scheduled late cannot stretch it.
#[derive(Debug, Clone)]
struct Hold {
    until: Instant,
    /// Why, and since when: the deadline, or when the answer saying the lease ended arrived.
    ended: Option<(String, Instant)>,
}

impl Hold {
    /// When the session stopped holding (`None`: it holds now).
    fn lost_at(&self) -> Option<Instant> {
        match &self.ended {
            Some((_, at)) => Some(*at),
            None => Some(self.until).filter(|until| Instant::now() >= *until),
        }
    }
}

impl Session {
    pub async fn open(client: Arc<Client>, ttl_ms: u64) -> Result<Session, ClientError> {
        let body = Bytes::from(serde_json::json!({ "ttl_ms": ttl_ms }).to_string());
        let sent = Instant::now();
        let answer = client
            .request(Method::POST, &segments(&["v1", "leases"]), &[], json_headers(), Some(body), Retry::OnlyIfNotSent)
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(error_of(&answer));
        }
        let granted: crate::LeaseGrantReply =
            serde_json::from_slice(&answer.body).map_err(|e| failed(format!("the grant's answer: {e}")))?;
        let ttl = Duration::from_millis(ttl_ms);
        let (hold_sender, hold) = tokio::sync::watch::channel(Hold { until: held_until(sent, ttl), ended: None });
        let keeper = tokio::spawn(keep_alive(client.clone(), granted.id, ttl, sent, hold_sender));
        Ok(Session { client, lease: granted.id, hold, keeper })
    }

    /// Whether the session still holds now. A holder checks this before each action it takes
    /// as holder (the Jepsen lock workload does).
    pub fn is_held(&self) -> bool {
        self.hold.borrow().lost_at().is_none()
    }

    /// When the session stopped holding (`None`: it holds now): what a holder takes as the end
    /// of its critical section when it finds the session lost.
    pub fn lost_at(&self) -> Option<Instant> {
        self.hold.borrow().lost_at()
    }

    /// Resolves once the session is lost, with the reason.
    pub async fn lost(&self) -> String {
        let mut hold = self.hold.clone();
        loop {
            let current = hold.borrow_and_update().clone();
            if let Some((reason, _)) = current.ended {
                return reason;
            }
            if Instant::now() >= current.until {
                return format!("no keepalive of lease {} was answered in time", self.lease);
            }
            tokio::select! {
                changed = hold.changed() => {
                    if changed.is_err() {
                        // The keeper is gone (it panicked): nothing renews any more.
                        tokio::time::sleep_until(current.until.into()).await;
                        return "the keepalive task ended".into();
                    }
                }
                () = tokio::time::sleep_until(current.until.into()) => {}
            }
        }
    }

    /// Ends the session: stops renewing and revokes the lease (its keys go with it). An error
    /// leaves the lease to expire by itself.
    pub async fn close(self) -> Result<(), ClientError> {
        // First stop renewing, so no keepalive races the revoke.
        self.keeper.abort();
        let lease = self.lease.to_string();
        let path = segments(&["v1", "leases", &lease]);
        self.client.request(Method::DELETE, &path, &[], HeaderMap::new(), None, Retry::Idempotent).await.map(drop)
    }

    /// Stops renewing without revoking: the lease ends by itself after its TTL, as when the
    /// holder dies (the Jepsen lock workload abandons some sessions so). Dropping a session
    /// does the same.
    pub fn abandon(self) {}
}

impl Drop for Session {
    /// A session dropped (an early return, a timeout around an acquisition) stops renewing:
    /// otherwise its keeper would hold the lease, and any lock under it, as long as the
    /// process runs.
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Until when a session whose last answered keepalive was sent at `sent` holds.
fn held_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / LOSS_MARGIN_DIVISOR
}

async fn keep_alive(
    client: Arc<Client>,
    lease: u64,
    ttl: Duration,
    mut last_acknowledged_send: Instant,
    hold: tokio::sync::watch::Sender<Hold>,
) {
    let lease_text = lease.to_string();
    let path = segments(&["v1", "leases", &lease_text, "keepalive"]);
    let mut pause = ttl / 3;
    let mut last_error = String::new();
    loop {
        let lost_at = held_until(last_acknowledged_send, ttl);
        tokio::time::sleep_until((Instant::now() + pause).min(lost_at).into()).await;
        if Instant::now() >= lost_at {
            let reason = format!("no keepalive of lease {lease} was answered in time{last_error}");
            hold.send_modify(|hold| hold.ended = Some((reason, lost_at)));
            return;
        }
        let sent = Instant::now();
        // Renewing twice is renewing once: a keepalive may be sent again.
        let request = client.request(Method::POST, &path, &[], HeaderMap::new(), None, Retry::Idempotent);
        pause = RETRY_PAUSE;
        match tokio::time::timeout_at(lost_at.into(), request).await {
            Ok(Ok(answer)) if answer.status.is_success() => {
                last_acknowledged_send = sent;
                pause = ttl / 3;
                hold.send_modify(|hold| hold.until = held_until(sent, ttl));
            }
            Ok(Ok(answer)) if answer.status == StatusCode::NOT_FOUND => {
                let reason = format!("lease {lease} has ended");
                hold.send_modify(|hold| hold.ended = Some((reason, Instant::now().min(lost_at))));
                return;
            }
            Ok(Ok(answer)) => last_error = format!(" (the last answer: {})", error_of(&answer)),
            Ok(Err(error)) => last_error = format!(" (the last error: {error})"),
            // At the loss deadline: the next turn says so.
            Err(_) => {}
        }
    }
}

fn segments(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| part.to_string()).collect()
}

/// A contender's key under `name`.
fn contender_key(name: &str, lease: u64) -> String {
    format!("{}/{lease:016x}", name.trim_end_matches('/'))
}

/// Creates this session's key under `name` with `value`; returns the key and its create
/// revision (the fencing token once it holds).
pub async fn enter(client: &Client, session: &Session, name: &str, value: &str) -> Result<(String, u64), ClientError> {
    let key = contender_key(name, session.lease);
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::IF_NONE_MATCH, HeaderValue::from_static("*"));
    let query = [("lease", session.lease.to_string())];
    let body = Some(Bytes::from(value.to_string()));
    let answer =
        client.request(Method::PUT, &Client::key_path(&key), &query, headers, body, Retry::OnlyIfNotSent).await?;
    if !answer.status.is_success() {
        return Err(error_of(&answer));
    }
    let put: crate::PutReply =
        serde_json::from_slice(&answer.body).map_err(|e| failed(format!("the put's answer: {e}")))?;
    Ok((key, put.revision))
}

/// The contenders under `name`, in create-revision order, and the index the listing was read at.
async fn contenders(client: &Client, name: &str) -> Result<(Vec<crate::Item>, u64), ClientError> {
    let prefix = format!("{}/", name.trim_end_matches('/'));
    let (mut items, mut start, mut index) = (Vec::new(), String::new(), 0);
    for _ in 0..MAX_WAITER_PAGES {
        let query = [("prefix", prefix.clone()), ("start", start.clone()), ("limit", WAITERS_PAGE.to_string())];
        let answer = client
            .request(Method::GET, &segments(&["v1", "kv"]), &query, HeaderMap::new(), None, Retry::Idempotent)
            .await?;
        if !answer.status.is_success() {
            return Err(error_of(&answer));
        }
        if index == 0 {
            index = header_index(&answer.headers);
        }
        let page: crate::Page =
            serde_json::from_slice(&answer.body).map_err(|e| failed(format!("the listing: {e}")))?;
        items.extend(page.items);
        match page.next_start {
            Some(next) => start = next,
            None => {
                items.sort_by_key(|item| item.create_revision);
                return Ok((items, index));
            }
        }
    }
    Err(failed(format!("more than {} contenders for {name}", WAITERS_PAGE * MAX_WAITER_PAGES)))
}

fn header_index(headers: &HeaderMap) -> u64 {
    headers.get(crate::INDEX_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Waits until the key of create revision `mine` is the first under `name` (this session
/// holds the lock, or leads).
pub async fn wait_turn(client: &Client, name: &str, key: &str, mine: u64) -> Result<(), ClientError> {
    loop {
        let (items, index) = contenders(client, name).await?;
        if !items.iter().any(|item| item.key == key) {
            return Err(failed(format!("{key} is gone: the session's lease ended")));
        }
        let Some(ahead) = items.iter().rfind(|item| item.create_revision < mine) else {
            return Ok(());
        };
        // Block until the key just ahead changes (deleted, usually) after the listing.
        loop {
            let path = Client::key_path(&ahead.key);
            let answer = client.blocking_read(&path, &[], index, WAIT).await?;
            if answer.status == StatusCode::NOT_FOUND || header_index(&answer.headers) > index {
                break;
            }
            if !answer.status.is_success() {
                return Err(error_of(&answer));
            }
        }
    }
}

/// The current leader under `name`: the value and create revision of its first key.
async fn leader(client: &Client, name: &str) -> Result<(Option<(String, u64)>, u64), ClientError> {
    let (items, index) = contenders(client, name).await?;
    let first = items.into_iter().next().map(|item| (item.value.unwrap_or_default(), item.create_revision));
    Ok((first, index))
}

/// Prints the leader under `name` (one JSON line) each time it changes; runs until an error
/// (the caller ends it, on a signal or a lost session).
pub async fn observe(client: &Client, name: &str) -> Result<(), ClientError> {
    let prefix = format!("{}/", name.trim_end_matches('/'));
    let mut printed: Option<Option<(String, u64)>> = None;
    loop {
        let (current, index) = leader(client, name).await?;
        if printed.as_ref() != Some(&current) {
            let line = match &current {
                Some((value, revision)) => serde_json::json!({ "leader": value, "revision": revision }),
                None => serde_json::json!({ "leader": null }),
            };
            println!("{line}");
            printed = Some(current);
        }
        let answer = client.blocking_read(&segments(&["v1", "kv"]), &[("prefix", prefix.clone())], index, WAIT).await?;
        if !answer.status.is_success() {
            // Not a change to print: a refusal (403, say) that asking again would only repeat.
            return Err(error_of(&answer));
        }
    }
}
