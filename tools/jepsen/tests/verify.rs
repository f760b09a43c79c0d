//! `quorumkv verify` against stand-in servers speaking quorumkv's key-value API: an honest one
//! (one in-memory map: linearizable) and one whose reads lag one write behind. The check must
//! pass the first, catch the second, and delete its keys from both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use quorumkv_jepsen::checker::Verdict;
use quorumkv_jepsen::verify::verify;
use quorumkv_jepsen::verify::VerifyOptions;
use quorumkv_jepsen::verify::RESERVED_PREFIX;

/// Every version each key has had: (revision, value), newest last.
#[derive(Default)]
struct Store {
    versions: Mutex<BTreeMap<String, Vec<(u64, String)>>>,
    revision: Mutex<u64>,
    /// Reads answer with the version before the newest.
    stale_reads: bool,
}

type Shared = Arc<Store>;

async fn read(State(store): State<Shared>, Path(key): Path<String>) -> Response {
    let versions = store.versions.lock().unwrap();
    let Some(history) = versions.get(&key).filter(|history| !history.is_empty()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let shown =
        if store.stale_reads && history.len() >= 2 { &history[history.len() - 2] } else { &history[history.len() - 1] };
    ([("etag", format!("\"{}\"", shown.0))], shown.1.clone()).into_response()
}

async fn write(State(store): State<Shared>, Path(key): Path<String>, headers: HeaderMap, body: String) -> Response {
    let mut versions = store.versions.lock().unwrap();
    let history = versions.entry(key).or_default();
    if let Some(expected) = headers.get("if-match") {
        let expected = expected.to_str().unwrap_or_default().trim_matches('"');
        if history.last().map(|version| version.0.to_string()).as_deref() != Some(expected) {
            return StatusCode::PRECONDITION_FAILED.into_response();
        }
    }
    let mut revision = store.revision.lock().unwrap();
    *revision += 1;
    history.push((*revision, body));
    format!("{{\"revision\":{}}}", *revision).into_response()
}

/// `POST /v1/txn` for what the register workload sends: value compares, puts and gets (a get
/// as stale as a read of this store).
async fn txn(State(store): State<Shared>, body: String) -> Response {
    use quorumkv_api::TxnOpKind;
    let Ok(request) = serde_json::from_str::<quorumkv_api::TxnRequest>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut versions = store.versions.lock().unwrap();
    let current = |versions: &BTreeMap<String, Vec<(u64, String)>>, key: &str| {
        versions.get(key).and_then(|history| history.last()).map(|version| version.1.clone())
    };
    let mut succeeded = true;
    for compare in &request.compare {
        match (&compare.value, compare.cmp) {
            (Some(value), quorumkv_api::CompareOp::Equal) => {
                succeeded &= current(&versions, &compare.key).as_ref() == Some(value)
            }
            _ => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let mut revision = store.revision.lock().unwrap();
    *revision += 1;
    let mut results = Vec::new();
    for op in if succeeded { &request.success } else { &request.failure } {
        let key = op.key.clone().unwrap_or_default();
        match op.op {
            TxnOpKind::Put => {
                versions.entry(key).or_default().push((*revision, op.value.clone().unwrap_or_default()));
                results.push(quorumkv_api::TxnResult::Put { revision: *revision });
            }
            TxnOpKind::Get => {
                let history = versions.get(&key).cloned().unwrap_or_default();
                let shown = if store.stale_reads && history.len() >= 2 {
                    history.get(history.len() - 2)
                } else {
                    history.last()
                };
                let kv = shown.map(|(revision, value)| quorumkv_api::Item {
                    key: key.clone(),
                    revision: *revision,
                    create_revision: history[0].0,
                    value: Some(value.clone()),
                    value_base64: None,
                });
                results.push(quorumkv_api::TxnResult::Get { kv });
            }
            _ => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let reply = quorumkv_api::TxnReply { succeeded, revision: *revision, results };
    serde_json::to_string(&reply).unwrap().into_response()
}

async fn delete(State(store): State<Shared>, Path(key): Path<String>) -> StatusCode {
    match store.versions.lock().unwrap().remove(&key) {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    }
}

/// Serves `store` on a listener bound to port 0 and returns its base URL.
async fn serve(store: Shared) -> String {
    let app = Router::new()
        .route("/v1/kv/{*key}", get(read).put(write).delete(delete))
        .route("/v1/txn", axum::routing::post(txn))
        .with_state(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn options(endpoint: String) -> VerifyOptions {
    VerifyOptions {
        endpoints: vec![endpoint.clone(), endpoint],
        duration: Duration::from_secs(2),
        clients: 4,
        keys: 2,
        step_budget: quorumkv_jepsen::checker::DEFAULT_STEP_BUDGET,
        tls: Default::default(),
        token: None,
    }
}

/// Goal: a linearizable store passes, and every key the check wrote is gone afterwards.
#[tokio::test]
async fn verify_passes_a_linearizable_store_and_deletes_its_keys() {
    let store = Shared::default();
    let report = verify(&options(serve(store.clone()).await)).await.expect("the check ran");
    assert_eq!(report.verdict, Verdict::Valid, "{report:?}");
    assert!(report.ok > 20, "too few operations to mean anything: {report:?}");
    assert_eq!(report.ok + report.cas_refused + report.fail + report.info, report.ops, "{report:?}");
    assert_eq!((report.fail, report.info), (0, 0), "a store that always answers failed nothing: {report:?}");
    assert!(report.prefix.starts_with(RESERVED_PREFIX));
    assert!(report.keys_left.is_empty());
    assert!(store.versions.lock().unwrap().is_empty(), "keys left behind");
}

/// Goal: reads one write behind are caught, with the key and operation that show it.
#[tokio::test]
async fn verify_catches_stale_reads() {
    let store = Arc::new(Store { stale_reads: true, ..Store::default() });
    let report = verify(&options(serve(store.clone()).await)).await.expect("the check ran");
    assert_eq!(report.verdict, Verdict::Invalid, "{report:?}");
    assert!(report.anomalies.iter().all(|anomaly| anomaly.key.starts_with(&report.prefix)));
    assert!(!report.anomalies.is_empty());
    assert!(store.versions.lock().unwrap().is_empty(), "keys left behind");
}

/// Goal: a cluster that cannot be reached is an error, never a valid verdict.
#[tokio::test]
async fn verify_of_an_unreachable_cluster_is_an_error() {
    // Port 1 (tcpmux): nothing listens there, so every connection is refused.
    let endpoint = "http://127.0.0.1:1".to_string();
    let options = VerifyOptions { duration: Duration::from_millis(300), ..options(endpoint) };
    let error = verify(&options).await.expect_err("nothing was checked");
    assert!(error.contains("nothing was checked"), "{error}");
}

/// Goal: a node that answered nothing was not checked, so the check is an error even though the
/// other node's history is linearizable.
#[tokio::test]
async fn verify_of_a_cluster_with_a_silent_node_is_an_error() {
    let store = Shared::default();
    let good = serve(store.clone()).await;
    let options = VerifyOptions { endpoints: vec![good, "http://127.0.0.1:1".to_string()], ..options(String::new()) };
    let error = verify(&options).await.expect_err("one node was not checked");
    assert!(error.contains("127.0.0.1:1") && error.contains("not checked"), "{error}");
    assert!(store.versions.lock().unwrap().is_empty(), "keys left behind");
}
