//! `--workload watch`: watchers of the whole `bench/` prefix while the workers write. Each
//! written value starts with the time it was sent (nanoseconds since the run started, 16 hex
//! digits), so every watcher can tell how long after the sending of a write its event arrived.
//! quorumkv: `GET /v1/watch?prefix=bench/` (Server-Sent Events); etcd: its gateway's
//! `POST /v3/watch` (a stream of JSON messages).

use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use crate::BenchOptions;
use crate::Latency;
use crate::Target;

/// Largest number of watchers: each holds a connection and a task on both ends (quorumkv
/// serves at most 1,024 watch streams per node).
pub const MAX_BENCH_WATCHERS: usize = 1_000;
/// How long watchers go on after the writers stop, to receive the last events.
const DRAIN: Duration = Duration::from_secs(2);
/// How long a watcher may take to open its stream before the run is refused.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a watcher buffers before giving up on the stream (a 1 MiB value in JSON).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// What the watchers measured.
#[derive(Debug, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    /// Events received, by all watchers together.
    pub events: u64,
    pub events_per_sec: f64,
    /// From the sending of a write to the arrival of its event at a watcher.
    pub delay_ms: Latency,
    pub errors: u64,
}

/// The value a watch run writes: its sending time first, then padding to `value_bytes`.
pub(crate) fn stamped_value(started: Instant, value_bytes: usize) -> Vec<u8> {
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut value = format!("{nanos:016x}").into_bytes();
    value.resize(value_bytes.max(16), b'x');
    value
}

fn sent_at(started: Instant, value: &[u8]) -> Option<Instant> {
    let stamp = std::str::from_utf8(value.get(..16)?).ok()?;
    Some(started + Duration::from_nanos(u64::from_str_radix(stamp, 16).ok()?))
}

/// One watcher's tally.
pub(crate) struct WatcherTally {
    delays: Histogram<u64>,
    errors: u64,
}

/// Opens a watcher on `endpoint`; returns once its stream is open, with the task that reads it
/// until `stop_at`.
pub(crate) async fn open(
    options: &BenchOptions,
    tls: &quorumkv_api::client::ClientTls,
    endpoint: String,
    started: Instant,
    stop_at: Instant,
) -> Result<tokio::task::JoinHandle<WatcherTally>, String> {
    let http =
        tls.configure(reqwest::Client::builder()).map_err(|e| e.to_string())?.build().map_err(|e| e.to_string())?;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let request = match options.target {
        Target::Quorumkv => http.get(format!("{endpoint}/v1/watch?prefix=bench/")),
        Target::Etcd => http
            .post(format!("{endpoint}/v3/watch"))
            .body(json!({"create_request": {"key": b64("bench/"), "range_end": b64("bench0")}}).to_string()),
    };
    let response = tokio::time::timeout(OPEN_TIMEOUT, request.send())
        .await
        .map_err(|_| format!("a watch on {endpoint} did not open within {OPEN_TIMEOUT:?}"))?
        .map_err(|e| format!("a watch on {endpoint}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("a watch on {endpoint}: {}", response.status()));
    }
    let target = options.target;
    Ok(tokio::spawn(read(response, target, started, stop_at)))
}

async fn read(mut response: reqwest::Response, target: Target, started: Instant, stop_at: Instant) -> WatcherTally {
    let mut tally = WatcherTally {
        delays: Histogram::new_with_bounds(1, crate::HISTOGRAM_MAX_MICROS, 3).expect("valid bounds"),
        errors: 0,
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout_at(stop_at.into(), response.chunk()).await {
            Err(_) => return tally,
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) | Ok(Err(_)) => {
                tally.errors += 1;
                return tally;
            }
        };
        let arrived = Instant::now();
        buffer.extend_from_slice(&chunk);
        let values = match target {
            Target::Quorumkv => sse_values(&mut buffer),
            Target::Etcd => etcd_values(&mut buffer),
        };
        for value in values {
            match sent_at(started, &value) {
                Some(sent) => {
                    let micros = u64::try_from(arrived.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    let _ = tally.delays.record(micros.clamp(1, crate::HISTOGRAM_MAX_MICROS));
                }
                None => tally.errors += 1,
            }
        }
        if buffer.len() > MAX_MESSAGE_BYTES {
            tally.errors += 1;
            return tally;
        }
    }
}

/// The values of the complete `put` events at the start of `buffer` (removed from it).
fn sse_values(buffer: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
        let message: Vec<u8> = buffer.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&message);
        if !text.lines().any(|line| line == "event: put") {
            continue;
        }
        for data in text.lines().filter_map(|line| line.strip_prefix("data: ")) {
            if let Ok(event) = serde_json::from_str::<quorumkv_api::WatchEvent>(data) {
                values.extend(event.value.map(String::into_bytes));
            }
        }
    }
    values
}

/// The values of the events of the complete JSON messages at the start of `buffer`.
fn etcd_values(buffer: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(buffer).into_iter::<serde_json::Value>();
    let mut consumed = 0;
    while let Some(Ok(message)) = stream.next() {
        consumed = stream.byte_offset();
        let events = message["result"]["events"].as_array().cloned().unwrap_or_default();
        for event in events {
            if let Some(value) = event["kv"]["value"].as_str() {
                values.extend(base64::engine::general_purpose::STANDARD.decode(value).ok());
            }
        }
    }
    buffer.drain(..consumed);
    values
}

/// Sums the watchers' tallies over the run's `elapsed` time.
pub(crate) async fn report(
    watchers: Vec<tokio::task::JoinHandle<WatcherTally>>,
    elapsed: Duration,
) -> Result<WatchReport, String> {
    let mut delays = Histogram::<u64>::new_with_bounds(1, crate::HISTOGRAM_MAX_MICROS, 3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    let count = watchers.len();
    for watcher in watchers {
        let tally = watcher.await.map_err(|e| e.to_string())?;
        delays.add(&tally.delays).map_err(|e| e.to_string())?;
        errors += tally.errors;
    }
    let events = delays.len();
    Ok(WatchReport {
        watchers: count,
        events,
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        delay_ms: crate::latency_of(&delays),
        errors,
    })
}

/// How long watchers go on after the writers' deadline.
pub(crate) fn stop_at(deadline: Instant) -> Instant {
    deadline + DRAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a stamped value gives back its sending time, and both stream formats give back
    /// the values of complete messages only, keeping a partial one for later.
    #[test]
    fn stamps_and_streams_round_trip() {
        let started = Instant::now();
        let value = stamped_value(started, 64);
        assert_eq!(value.len(), 64);
        let sent = sent_at(started, &value).expect("a stamp");
        assert!(sent >= started && sent <= Instant::now());

        let text = String::from_utf8(value.clone()).expect("ascii");
        let event = json!({"revision": 5, "type": "put", "key": "bench/1", "create_revision": 5, "value": text});
        let mut sse = format!("event: progress\nid: 4\ndata: {{\"revision\":4}}\n\nevent: put\ndata: {event}\nid: 5\n\nevent: put\ndata: {{")
            .into_bytes();
        assert_eq!(sse_values(&mut sse), std::slice::from_ref(&value));
        assert_eq!(sse, b"event: put\ndata: {");

        let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
        let message = json!({"result": {"events": [{"kv": {"key": "YmVuY2gvMQ==", "value": encoded}}]}});
        let mut etcd = format!("{{\"result\":{{\"created\":true}}}}\n{message}\n{{\"result\"").into_bytes();
        assert_eq!(etcd_values(&mut etcd), [value]);
        assert!(etcd.ends_with(b"{\"result\""), "the partial message is kept");
    }
}
