//! Watchers beside the register workload's clients: one per node, each watching every
//! register key from revision 1 through quorumkv's own client (`Watcher`, which reconnects to
//! the next endpoint and resumes with `Last-Event-ID`). What they saw is checked against the
//! acknowledged writes by `checker::watch`.

use std::time::Duration;
use std::time::Instant;

use quorumkv_api::client::Client;
use quorumkv_api::client::WatchMessage;
use quorumkv_api::WatchEventKind;
use serde::Serialize;

/// A watcher that gave up (every endpoint failed in a row, e.g. during a partition of its
/// node) starts again after this pause, from the last revision it received whole.
const RESTART_PAUSE: Duration = Duration::from_millis(500);
/// Events one watcher keeps, so a run's memory and checking stay bounded.
const MAX_EVENTS_PER_WATCHER: usize = 2_000_000;

/// What one watcher saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchLog {
    /// The endpoint it preferred.
    pub endpoint: String,
    /// (revision, key, value; `None`: a delete), in the order received.
    pub events: Vec<(u64, String, Option<String>)>,
    /// Every event up to this revision was received.
    pub complete_to: u64,
    /// Times it had to start again after its client gave up.
    pub restarts: u32,
    pub errors: Vec<String>,
}

/// Watches `prefix` on `endpoints` (the first preferred) until `stop` names a revision and
/// the watcher has everything up to it, or `give_up_at`.
pub async fn watch(
    endpoints: Vec<String>,
    http: reqwest::Client,
    prefix: String,
    mut stop: tokio::sync::watch::Receiver<Option<(u64, Instant)>>,
) -> WatchLog {
    let mut log = WatchLog { endpoint: endpoints.first().cloned().unwrap_or_default(), ..WatchLog::default() };
    let client = match Client::with_http(&endpoints.join(","), http) {
        Ok(client) => client,
        Err(error) => {
            log.errors.push(error.to_string());
            return log;
        }
    };
    let mut start = 1;
    loop {
        let mut watcher = client.watch(None, Some(&prefix), Some(start));
        loop {
            if let Some((target, give_up_at)) = *stop.borrow_and_update() {
                if log.complete_to >= target || Instant::now() >= give_up_at {
                    return log;
                }
            }
            let next = tokio::select! {
                next = watcher.next() => next,
                _ = stop.changed() => continue,
            };
            match next {
                Ok(WatchMessage::Event(event)) => {
                    if log.events.len() < MAX_EVENTS_PER_WATCHER {
                        let value = match event.kind {
                            WatchEventKind::Put => Some(event.value.or(event.value_base64).unwrap_or_default()),
                            WatchEventKind::Delete => None,
                        };
                        log.events.push((event.revision, event.key, value));
                    }
                }
                Ok(WatchMessage::Progress(revision)) => log.complete_to = log.complete_to.max(revision),
                Err(error) => {
                    log.errors.push(error.to_string());
                    break;
                }
            }
            if let Some(complete) = watcher.last_complete() {
                log.complete_to = log.complete_to.max(complete);
            }
        }
        start = watcher.last_complete().map_or(start, |complete| complete + 1);
        log.restarts += 1;
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}
