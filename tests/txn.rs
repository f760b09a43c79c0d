//! Transactions (`POST /v1/txn`): compares, then one branch of operations, atomically at one
//! revision, from any node; malformed or oversized ones are refused and change nothing; a
//! conditional PUT or DELETE behaves as the transaction it is. In-process nodes.

mod common;

use common::Cluster;
use futures::StreamExt;
use quorumkv_api::ErrorBody;
use quorumkv_api::Item;
use quorumkv_api::Outcome;
use quorumkv_api::Page;
use quorumkv_api::TxnReply;
use quorumkv_api::TxnResult;
use serde_json::json;

async fn txn(cluster: &Cluster, id: u64, body: serde_json::Value) -> (u16, String) {
    let response = cluster.http.post(cluster.url(id, "/v1/txn")).body(body.to_string()).send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn txn_ok(cluster: &Cluster, id: u64, body: serde_json::Value) -> TxnReply {
    let (status, text) = txn(cluster, id, body.clone()).await;
    assert_eq!(status, 200, "{body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("a transaction's answer: {e}: {text}"))
}

fn refused(answer: &(u16, String), status: u16, code: &str) -> ErrorBody {
    assert_eq!(answer.0, status, "expected {status} {code}, got {answer:?}");
    let body: ErrorBody = serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("an error body: {e}: {answer:?}"));
    assert_eq!((body.error.as_str(), body.outcome), (code, Outcome::Failed), "{answer:?}");
    body
}

fn kv(key: &str, value: &str, revision: u64, create_revision: u64) -> TxnResult {
    TxnResult::Get {
        kv: Some(Item { key: key.into(), revision, create_revision, value: Some(value.into()), value_base64: None }),
    }
}

async fn list(cluster: &Cluster, id: u64, prefix: &str) -> Vec<(String, String, u64)> {
    let page: Page = cluster.get_json(id, &format!("/v1/kv?prefix={prefix}")).await;
    page.items.into_iter().map(|item| (item.key, item.value.unwrap_or_default(), item.revision)).collect()
}

/// Goal: a transaction sent to a follower runs on the leader in one log entry: the compares
/// (revision, value, existence) choose the branch, every write of it carries the same
/// revision, each get sees the operations before it, and when the compares fail only the
/// failure branch runs and nothing else changes. Every node then serves the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_runs_one_branch_atomically_at_one_revision() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let created = cluster.put_ok(leader, "a", "1").await;
    let body = json!({
        "compare": [
            {"key": "a", "mod_revision": created}, {"key": "a", "cmp": "=", "value": "1"},
            {"key": "a", "cmp": "<", "create_revision": created + 1}, {"key": "b", "exists": false},
            {"key": "a", "cmp": ">", "value": "0"}, {"key": "c", "cmp": "!=", "exists": true}
        ],
        "success": [
            {"op": "put", "key": "a", "value": "2"}, {"op": "put", "key": "b", "value": "x"},
            {"op": "get", "key": "a"}, {"op": "delete", "key": "c"}, {"op": "get", "key": "c"}
        ],
        "failure": [{"op": "get", "key": "a"}]
    });
    let first = txn_ok(&cluster, follower, body.clone()).await;
    let revision = first.revision;
    assert!(first.succeeded && revision > created, "{first:?}");
    assert_eq!(
        first.results,
        [
            TxnResult::Put { revision },
            TxnResult::Put { revision },
            kv("a", "2", revision, created),
            TxnResult::Delete { deleted: false },
            TxnResult::Get { kv: None },
        ]
    );
    for id in 1..=3 {
        common::eventually("every node applied the transaction", || async {
            (list(&cluster, id, "").await == [("a".into(), "2".into(), revision), ("b".into(), "x".into(), revision)])
                .then_some(())
        })
        .await;
    }

    // The same again: `a` moved on, so only the failure branch runs, and changes nothing.
    let second = txn_ok(&cluster, follower, body).await;
    assert!(!second.succeeded && second.revision > revision, "{second:?}");
    assert_eq!(second.results, [kv("a", "2", revision, created)]);
    assert_eq!(
        list(&cluster, leader, "").await,
        [("a".into(), "2".into(), revision), ("b".into(), "x".into(), revision)]
    );

    // delete_prefix removes exactly the keys under it, with the branch's other writes.
    for key in ["p/1", "p/2", "p/3", "q"] {
        cluster.put_ok(leader, key, "v").await;
    }
    let third = txn_ok(
        &cluster,
        follower,
        json!({"success": [{"op": "put", "key": "p/9", "value": "new"}, {"op": "delete_prefix", "prefix": "p/"},
                           {"op": "put", "key": "p/4", "value": "kept"}]}),
    )
    .await;
    assert!(third.succeeded, "{third:?}");
    assert_eq!(third.results[1], TxnResult::DeletePrefix { deleted: 4 }, "p/1-3 and the p/9 put just before");
    assert_eq!(list(&cluster, leader, "p/").await, [("p/4".into(), "kept".into(), third.revision)]);
    assert_eq!(list(&cluster, leader, "q").await.len(), 1);
}

/// Goal: `If-Match` and create-only are the transactions they stand for, with the answers
/// they always had: 412 with the key's revision (null when absent), `If-Match: "0"` never
/// matching an absent key, and a successful CAS at the new revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_keep_their_answers() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let put_if = |key: &'static str, header: (&'static str, String)| {
        cluster.http.put(cluster.url(leader, &format!("/v1/kv/{key}"))).header(header.0, header.1).body("v").send()
    };
    let answer = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    };
    let absent = refused(
        &answer(put_if("k", ("If-Match", "\"0\"".into())).await.expect("sent")).await,
        412,
        "precondition_failed",
    );
    assert_eq!(absent.current_revision, Some(None));
    refused(&answer(put_if("k", ("If-Match", "*".into())).await.expect("sent")).await, 412, "precondition_failed");
    let (status, _) = answer(put_if("k", ("If-None-Match", "*".into())).await.expect("sent")).await;
    assert_eq!(status, 200);
    let created = list(&cluster, leader, "k").await[0].2;
    let again = refused(
        &answer(put_if("k", ("If-None-Match", "*".into())).await.expect("sent")).await,
        412,
        "precondition_failed",
    );
    assert_eq!(again.current_revision, Some(Some(created)));
    let stale = refused(
        &answer(put_if("k", ("If-Match", format!("\"{}\"", created + 100))).await.expect("sent")).await,
        412,
        "precondition_failed",
    );
    assert_eq!(stale.current_revision, Some(Some(created)));
    let (status, body) = answer(put_if("k", ("If-Match", format!("\"{created}\""))).await.expect("sent")).await;
    assert_eq!(status, 200, "{body}");
    let delete = cluster
        .http
        .delete(cluster.url(leader, "/v1/kv/k"))
        .header("If-Match", format!("\"{created}\""))
        .send()
        .await
        .expect("sent");
    refused(&answer(delete).await, 412, "precondition_failed");
    assert_eq!(list(&cluster, leader, "k").await.len(), 1, "a refused conditional delete deletes nothing");
}

/// Goal: bad transactions are refused before anything is proposed, with a JSON error naming
/// the problem: malformed JSON, unknown fields, a compare or operation missing its parts,
/// too many operations (400), values over the limit in total (413); and one refused at apply
/// (a `delete_prefix` over more keys than one entry may delete) is refused whole: 409, and
/// the branch's other writes did not happen either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_transaction_is_refused_and_changes_nothing() {
    let cluster = Cluster::start_with_args(1, &["--max-value-bytes", "1024"]).await;
    let leader = cluster.wait_for_leader().await;
    let put = |key: &str| json!({"op": "put", "key": key, "value": "v"});
    let too_many: Vec<serde_json::Value> = (0..129).map(|i| put(&format!("many/{i}"))).collect();
    for (body, status, code) in [
        (json!("not a transaction"), 400, "invalid_parameter"),
        (json!({"success": [put("x")], "else": []}), 400, "invalid_parameter"),
        (json!({"compare": [{"key": "x"}], "success": [put("x")]}), 400, "invalid_parameter"),
        (
            json!({"compare": [{"key": "x", "cmp": "<", "exists": true}], "success": [put("x")]}),
            400,
            "invalid_parameter",
        ),
        (json!({"success": [put("x"), {"op": "put", "key": "y"}]}), 400, "invalid_parameter"),
        (
            json!({"success": [put("x"), {"op": "put", "key": "y", "value_base64": "not base64!"}]}),
            400,
            "invalid_parameter",
        ),
        (json!({"success": [put("x"), {"op": "get", "key": ""}]}), 400, "invalid_key"),
        (json!({"success": too_many}), 400, "invalid_parameter"),
        (json!({}), 400, "invalid_parameter"),
        (
            json!({"success": [{"op": "delete_prefix", "prefix": "a/"}, {"op": "delete_prefix", "prefix": "a/b/"}]}),
            400,
            "invalid_parameter",
        ),
        (json!({"success": [{"op": "put", "key": "x", "value": "v".repeat(1025)}]}), 413, "value_too_large"),
        (
            json!({"success": [{"op": "put", "key": "x", "value": "v".repeat(1000)},
                               {"op": "put", "key": "y", "value": "v".repeat(1000)},
                               {"op": "put", "key": "z", "value": "v".repeat(1000)}]}),
            413,
            "value_too_large",
        ),
    ] {
        let error = refused(&txn(&cluster, leader, body.clone()).await, status, code);
        assert!(!error.message.is_empty(), "{body}");
    }
    let oversized_body = json!({"success": [{"op": "put", "key": "x", "value": "v".repeat(1 << 20)}]});
    refused(&txn(&cluster, leader, oversized_body).await, 413, "value_too_large");
    assert_eq!(list(&cluster, leader, "").await, [], "nothing of a refused transaction was written");

    // 128 operations per list is allowed; enough of them to pass the delete_prefix bound.
    let keys = quorumkv::txn::MAX_DELETE_PREFIX_KEYS + 1;
    let batches: Vec<Vec<serde_json::Value>> = (0..keys)
        .map(|i| json!({"op": "put", "key": format!("big/{i:06}"), "value": ""}))
        .collect::<Vec<_>>()
        .chunks(quorumkv::txn::MAX_TXN_OPS)
        .map(<[serde_json::Value]>::to_vec)
        .collect();
    let cluster = &cluster;
    let writes = batches.into_iter().map(|batch| async move {
        assert!(txn_ok(cluster, leader, json!({"success": batch})).await.succeeded);
    });
    futures::stream::iter(writes).buffer_unordered(16).collect::<Vec<()>>().await;
    let over =
        txn(cluster, leader, json!({"success": [put("marker"), {"op": "delete_prefix", "prefix": "big/"}]})).await;
    let error = refused(&over, 409, "conflict");
    assert!(error.message.contains("delete them in parts"), "{error:?}");
    let (status, _) = cluster.get(leader, "marker", "linearizable").await;
    assert_eq!(status, 404, "the put before the refused delete_prefix did not happen");
    let half = txn_ok(cluster, leader, json!({"success": [{"op": "delete_prefix", "prefix": "big/0"}]})).await;
    assert_eq!(half.results, [TxnResult::DeletePrefix { deleted: 100_000 }]);
    assert_eq!(list(cluster, leader, "big/").await.len(), 1, "big/100000 is left");
}

/// Goal: `quorumkv txn` sends the transaction from standard input or a file and prints the
/// answer, exit 0 whichever branch ran; a malformed one is the server's 400 on stderr, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_a_transaction_from_stdin_or_a_file() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let endpoint = cluster.node(leader).client_addr.clone();
    let run = |args: Vec<String>, stdin: String| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"))
                .args(["--endpoints", &endpoint, "txn"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the CLI runs");
            child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("written");
            let output = child.wait_with_output().expect("the CLI ends");
            let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
            (output.status.code(), text(output.stdout), text(output.stderr))
        })
    };
    let create = json!({"compare": [{"key": "cli", "exists": false}],
                        "success": [{"op": "put", "key": "cli", "value": "1"}],
                        "failure": [{"op": "get", "key": "cli"}]});
    let (code, stdout, stderr) = run(vec![], create.to_string()).await.expect("ran");
    assert_eq!(code, Some(0), "{stderr}");
    let reply: TxnReply = serde_json::from_str(&stdout).expect("the answer");
    assert!(reply.succeeded, "{reply:?}");
    let file = cluster.dir().join("txn.json");
    std::fs::write(&file, create.to_string()).expect("written");
    let (code, stdout, stderr) = run(vec![file.display().to_string()], String::new()).await.expect("ran");
    assert_eq!(code, Some(0), "the failure branch is an answer too: {stderr}");
    let reply: TxnReply = serde_json::from_str(&stdout).expect("the answer");
    assert_eq!((reply.succeeded, reply.results.len()), (false, 1), "{reply:?}");
    let (code, stdout, stderr) = run(vec![], "{\"sucess\": []}".into()).await.expect("ran");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stderr.contains("400") && stderr.contains("invalid_parameter"), "{stderr}");
}
