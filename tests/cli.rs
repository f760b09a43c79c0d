//! The `quorumkv` CLI's exit status against a stand-in server in the test process: it must
//! follow the outcome the server states in its error body, because scripts decide from it
//! whether a write may be retried (exit 3: the write may have been applied; exit 1: it was not).

use std::process::Command;

use axum::http::StatusCode;
use axum::routing::put;
use axum::Router;

/// Starts a server that answers every PUT with `status` and an error body stating `outcome`;
/// returns its address.
async fn stand_in(status: StatusCode, outcome: &'static str) -> String {
    let body = format!(r#"{{"error":"internal","message":"stand-in","outcome":"{outcome}"}}"#);
    let router = Router::new().route("/v1/kv/{*key}", put(move || async move { (status, body) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    addr
}

async fn cli_put(endpoint: String) -> (Option<i32>, String) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["put", "k", "v", "--endpoints", &endpoint])
            .output()
            .expect("run the CLI")
    })
    .await
    .expect("join");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Goal: a 500 whose body says `outcome: unknown` exits 3, as the README promises, not 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_exits_3_whatever_the_status() {
    let (code, stderr) = cli_put(stand_in(StatusCode::INTERNAL_SERVER_ERROR, "unknown").await).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("outcome unknown"), "{stderr}");
}

/// Goal: an error that certainly had no effect exits 1 and is not taken for an unknown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_failure_exits_1() {
    let (code, stderr) = cli_put(stand_in(StatusCode::INTERNAL_SERVER_ERROR, "failed").await).await;
    assert_eq!(code, Some(1), "{stderr}");
}

/// A stand-in answering `GET /v1/cluster` with the server's own status type, leader `leader_id`.
async fn stand_in_status(leader_id: Option<u64>) -> String {
    let status = quorumkv_api::ClusterStatus {
        id: 2,
        leader_id,
        term: 7,
        state: quorumkv_api::RaftRole::Follower,
        members: Vec::new(),
        commit_index: 10,
        applied_index: 10,
        last_log_index: 10,
        snapshot_index: 0,
        purged_index: 0,
        removed: false,
    };
    let body = serde_json::to_string(&status).expect("encode");
    let router = Router::new().route("/v1/cluster", axum::routing::get(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    addr
}

async fn cli_leader(endpoint: String) -> (Option<i32>, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["cluster", "leader", "--endpoints", &endpoint])
            .output()
            .expect("run the CLI")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code(), stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Goal: `cluster leader` prints only the leader's id (what scripts read), and exits 1 with
/// a reason when the node knows no leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_leader_prints_the_id_or_exits_1() {
    let (code, stdout, stderr) = cli_leader(stand_in_status(Some(3)).await).await;
    assert_eq!((code, stdout.as_str()), (Some(0), "3\n"), "{stderr}");
    let (code, stdout, stderr) = cli_leader(stand_in_status(None).await).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.is_empty() && stderr.contains("knows no leader"), "{stderr}");
}

/// Goal: `cluster leader` looks once and does not retry (scripts poll it in their own loops;
/// the client's retries and back-off would make each poll take seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_leader_asks_each_endpoint_once() {
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    let router = Router::new().route(
        "/v1/cluster",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"unavailable","message":"m","outcome":"failed"}"#) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    let (code, stdout, stderr) = cli_leader(addr).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "asked more than once: {stderr}");
}

/// Goal: `cluster add-learner --peer-token-file` sends the token a node would send, the first
/// line of a file that holds several during a rotation (it sent an invalid header, and failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_sends_the_first_token_of_a_rotating_file() {
    let router = Router::new().route(
        "/v1/cluster/learners",
        axum::routing::post(|headers: axum::http::HeaderMap| async move {
            match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                Some("Bearer first-token-0123456789") => (StatusCode::OK, "{}"),
                _ => (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized","message":"x","outcome":"failed"}"#),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("peer-token");
    std::fs::write(&file, "\n first-token-0123456789 \nsecond-token-0123456789\n").expect("write");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["--endpoints", &endpoint, "cluster", "add-learner", "5", "127.0.0.1:1", "--peer-token-file"])
            .arg(&file)
            .output()
            .expect("run the CLI")
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}
