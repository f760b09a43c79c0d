//! Real 3-node clusters of `quorumkv serve` processes: replication, reads, CAS, failover,
//! restarts, bad input. Each test states its goal; all waiting is polling with a deadline.

mod common;

use std::time::Instant;

use common::eventually;
use common::Cluster;
use quorumkv_api::DeleteReply;
use quorumkv_api::ErrorBody;
use quorumkv_api::Outcome;
use quorumkv_api::Page;
use quorumkv_api::PutReply;

/// Goal: a leader is elected, a write to any node (a follower here) is readable from every
/// node: stale reads eventually, linearizable reads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_to_any_node_is_readable_everywhere() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    let revision = cluster.put_ok(follower, "greeting", "hello").await;
    assert!(revision > 0);

    for id in 1..=3 {
        // Linearizable read right after the acknowledged write must see it, on every node.
        assert_eq!(cluster.get(id, "greeting", "linearizable").await, (200, "hello".to_string()), "node {id}");
        assert_eq!(cluster.get(id, "greeting", "lease").await, (200, "hello".to_string()), "node {id}");
        eventually("stale read catches up", || async {
            (cluster.get(id, "greeting", "stale").await == (200, "hello".to_string())).then_some(())
        })
        .await;
    }

    let response = cluster.http.get(cluster.url(1, "/v1/kv/greeting")).send().await.expect("GET");
    assert_eq!(response.headers()["etag"], format!("\"{revision}\"").as_str());

    let status = cluster.cluster_status(follower).await.expect("status");
    assert_eq!(status.members.len(), 3);
    assert_eq!(status.leader_id, Some(leader));
    assert!(status.commit_index >= revision);
    eventually("every member registered its client address", || async {
        let status = cluster.cluster_status(leader).await?;
        status.members.iter().all(|m| m.client_addr.is_some()).then_some(())
    })
    .await;
    for id in 1..=3 {
        let ready = cluster.http.get(cluster.url(id, "/ready")).send().await.expect("ready");
        assert_eq!(ready.status(), 200, "node {id} ready");
    }
}

/// Goal: compare-and-set on the modification revision, create-only, and conditional delete
/// hold, and fail with 412 plus the current revision when they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_create_only_and_delete() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let url = cluster.url(2, "/v1/kv/config/db");
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    };
    let put_reply = |body: &str| serde_json::from_str::<PutReply>(body).expect("a put's answer");
    let delete_reply = |body: &str| serde_json::from_str::<DeleteReply>(body).expect("a delete's answer");
    let error_body = |body: &str| serde_json::from_str::<ErrorBody>(body).expect("an error body");

    let (status, body) = send(cluster.http.put(&url).header("If-None-Match", "*").body("v1")).await;
    assert_eq!(status, 200, "{body}");
    let first = put_reply(&body).revision;

    let (status, body) = send(cluster.http.put(&url).header("If-None-Match", "*").body("v2")).await;
    let refusal = error_body(&body);
    assert_eq!((status, refusal.error.as_str()), (412, "precondition_failed"));
    assert_eq!(refusal.current_revision, Some(Some(first)));

    let (status, body) =
        send(cluster.http.put(&url).header("If-Match", format!("\"{}\"", first + 1000)).body("x")).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(error_body(&body).current_revision, Some(Some(first)));

    let (status, body) = send(cluster.http.put(&url).header("If-Match", format!("\"{first}\"")).body("v3")).await;
    assert_eq!(status, 200, "{body}");
    let second = put_reply(&body).revision;
    assert!(second > first, "revisions increase");
    assert_eq!(cluster.get(3, "config/db", "linearizable").await, (200, "v3".to_string()));

    // The old revision no longer matches: a lost update is refused.
    let (status, _) = send(cluster.http.put(&url).header("If-Match", format!("\"{first}\"")).body("v4")).await;
    assert_eq!(status, 412);

    let (status, _) = send(cluster.http.delete(&url).header("If-Match", format!("\"{first}\""))).await;
    assert_eq!(status, 412);
    let (status, body) = send(cluster.http.delete(&url).header("If-Match", format!("\"{second}\""))).await;
    assert_eq!((status, delete_reply(&body).deleted), (200, true), "{body}");
    let (status, body) = send(cluster.http.delete(&url)).await;
    assert_eq!((status, delete_reply(&body).deleted), (200, false), "{body}");
    assert_eq!(cluster.get(1, "config/db", "linearizable").await.0, 404);

    // If-Match: * requires existence; the key's revision is then `null` (present, no value).
    let (status, body) = send(cluster.http.put(&url).header("If-Match", "*").body("v5")).await;
    assert_eq!(status, 412);
    assert_eq!(error_body(&body).current_revision, Some(None), "{body}");

    // List with a prefix and pagination.
    for i in 0..5 {
        cluster.put_ok(1, &format!("list/k{i}"), &format!("v{i}")).await;
    }
    let page: Page = cluster.get_json(3, "/v1/kv?prefix=list/&limit=2").await;
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].key, "list/k0");
    assert_eq!(page.next_start.as_deref(), Some("list/k2"));
    let rest: Page = cluster.get_json(3, "/v1/kv?prefix=list/&start=list/k2&limit=10").await;
    assert_eq!(rest.items.len(), 3);
    assert_eq!(rest.next_start, None);
}

/// Goal: bad input gets the documented 4xx JSON error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let http = &cluster.http;
    let kv = |key: &str| cluster.url(1, &format!("/v1/kv/{key}"));
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.put(kv("big")).body(vec![b'x'; 1024 * 1024 + 1]), 413, "value_too_large"),
        (http.put(kv(&"k".repeat(1025))).body("v"), 413, "key_too_large"),
        (http.put(kv("bad%01key")).body("v"), 400, "invalid_key"),
        (http.put(kv("h")).header("If-Match", "seven").body("v"), 400, "invalid_header"),
        (http.put(kv("h")).header("If-None-Match", "\"3\"").body("v"), 400, "invalid_header"),
        (http.put(kv("h")).header("If-Match", "\"1\"").header("If-None-Match", "*").body("v"), 400, "invalid_header"),
        (http.get(kv("h") + "?consistency=eventual"), 400, "invalid_parameter"),
        (http.put(kv("h") + "?ttl=5").body("v"), 400, "invalid_parameter"),
        (http.get(cluster.url(1, "/v1/kv?limit=100000")), 400, "invalid_parameter"),
        (http.put(cluster.url(1, "/v1/kv/")).body("v"), 400, "invalid_key"),
        (http.get(cluster.url(1, "/v2/nothing")), 404, "not_found"),
    ];
    for (request, expected_status, expected_code) in cases {
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        let body: ErrorBody = response.json().await.expect("JSON error body");
        assert_eq!(status, expected_status, "{body:?}");
        assert_eq!(body.error, expected_code, "{body:?}");
        assert_eq!(body.outcome, Outcome::Failed, "{body:?}");
        assert!(!body.message.is_empty(), "{body:?}");
    }
    // Nothing was written.
    let page: Page = cluster.get_json(2, "/v1/kv").await;
    assert!(page.items.is_empty(), "bad requests wrote something: {:?}", page.items);
    // An exactly-at-limit value is accepted.
    let response = http.put(kv("max")).body(vec![b'y'; 1024 * 1024]).send().await.expect("sent");
    assert_eq!(response.status(), 200);
}

/// Goal: kill -9 of the leader elects a new one; no acknowledged write is lost; writes go on;
/// the killed node restarts, catches up, and holds everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start_processes(3).await;
    let old_leader = cluster.wait_for_leader().await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let node = 1 + i % 3;
        cluster.put_ok(node, &format!("before/{i}"), &format!("value-{i}")).await;
        acknowledged.push((format!("before/{i}"), format!("value-{i}")));
    }

    let killed_at = Instant::now();
    cluster.kill(old_leader);
    let new_leader = cluster.wait_for_leader().await;
    eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());
    assert_ne!(new_leader, old_leader);

    let survivor = cluster.running_ids()[0];
    for i in 0..10 {
        cluster.put_ok(survivor, &format!("after/{i}"), &format!("value-{i}")).await;
        acknowledged.push((format!("after/{i}"), format!("value-{i}")));
    }
    for id in cluster.running_ids() {
        for (key, value) in &acknowledged {
            assert_eq!(cluster.get(id, key, "linearizable").await, (200, value.clone()), "node {id} key {key}");
        }
    }

    cluster.spawn(old_leader);
    eventually("restarted node catches up", || async {
        let (status, body) = cluster.get(old_leader, "after/9", "stale").await;
        (status == 200 && body == "value-9").then_some(())
    })
    .await;
    for (key, value) in &acknowledged {
        assert_eq!(cluster.get(old_leader, key, "stale").await, (200, value.clone()), "restarted node key {key}");
    }
}

/// Goal: stopping all three nodes (kill -9, so nothing is flushed on the way out) and
/// starting them again keeps every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_all_data() {
    let mut cluster = Cluster::start_processes(3).await;
    cluster.wait_for_leader().await;
    for i in 0..30 {
        cluster.put_ok(1 + i % 3, &format!("k{i}"), &format!("v{i}")).await;
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_for_leader().await;
    for i in 0..30 {
        let id = 1 + (i as u64 + 1) % 3;
        assert_eq!(cluster.get(id, &format!("k{i}"), "linearizable").await, (200, format!("v{i}")));
    }
}

/// Goal: SIGTERM on the leader hands leadership over before exiting, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_transfers_leadership() {
    let mut cluster = Cluster::start_processes(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "k", "v").await;
    let status = cluster.terminate(leader).await;
    assert!(status.success(), "exit status {status:?}\n{}", cluster.log(leader));
    assert!(cluster.log(leader).contains("transferring leadership"), "{}", cluster.log(leader));
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let other = cluster.running_ids().into_iter().find(|id| *id != new_leader).expect("other");
    assert_eq!(cluster.get(other, "k", "linearizable").await, (200, "v".to_string()));
}

/// Goal: a node whose data dir was wiped refuses to start (it could lose committed data as a
/// fresh voter) and says how to rejoin; the cluster is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_is_refused() {
    let (mut cluster, leader, victim) = Cluster::with_wiped_follower().await;
    cluster.spawn(victim);
    let status = cluster.wait_exit(victim).await;
    assert!(!status.success(), "a wiped node must not start");
    let log = cluster.log(victim);
    assert!(log.contains("lost or wiped"), "{log}");
    assert!(log.contains("restore its data dir"), "{log}");
    cluster.put_ok(leader, "k2", "v2").await;
}

/// Goal: the nodes' ports come from below the kernel's ephemeral range, so no node's own
/// outgoing connection can take a port before the node it belongs to binds it (a cluster that
/// then never formed failed `wiped_node_is_refused` under `--test-threads=2`).
#[test]
fn test_ports_stay_below_the_ephemeral_range() {
    let ports: Vec<u16> = (0..50).map(|_| common::free_port()).collect();
    assert!(ports.iter().all(|port| *port < common::ephemeral_range_start()), "{ports:?}");
    let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len(), "{ports:?}");
}

/// Goal: `quorumkv verify` finds a healthy 3-node cluster linearizable, says so with exit 0, and
/// leaves none of its keys behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_live_cluster_and_leaves_no_keys() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let endpoints: Vec<String> = cluster.nodes.iter().map(|node| node.client_addr.clone()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["verify", "--duration-secs", "3", "--endpoints", &endpoints.join(",")])
            .output()
            .expect("run the CLI")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("verdict: Valid"), "{stdout}");
    let page: Page = cluster.get_json(1, "/v1/kv?prefix=_quorumkv/verify/").await;
    assert!(page.items.is_empty(), "verify left keys behind: {:?}", page.items);
}

/// Goal: writes sent at once through a follower reach the leader in batches (fewer batches
/// than writes, counted by the leader), and each write still gets its own answer: every put
/// its own revision, every compare-and-set that cannot match its own 412, each readable after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_go_in_batches_with_one_answer_each() {
    const PUTS: usize = 150;
    const DOOMED_CAS: usize = 50;
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let batched_before = forwarded_batch_totals(&cluster, leader).await;

    let puts = (0..PUTS).map(|i| {
        let request = cluster.http.put(cluster.url(follower, &format!("/v1/kv/batch/{i}"))).body(format!("v{i}"));
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 200, "put {i}: {body}");
            serde_json::from_str::<PutReply>(&body).expect("a put's answer").revision
        }
    });
    let doomed = (0..DOOMED_CAS).map(|i| {
        let request = cluster
            .http
            .put(cluster.url(follower, &format!("/v1/kv/batch-cas/{i}")))
            .header("If-Match", "\"999999999\"")
            .body("never");
        async move { request.send().await.expect("sent").status().as_u16() }
    });
    let (revisions, refusals) = tokio::join!(futures::future::join_all(puts), futures::future::join_all(doomed));
    let distinct: std::collections::BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(distinct.len(), PUTS, "every put its own revision");
    assert!(refusals.iter().all(|status| *status == 412), "{refusals:?}");

    let (batches, writes) = forwarded_batch_totals(&cluster, leader).await;
    let (batches, writes) = (batches - batched_before.0, writes - batched_before.1);
    assert!(writes >= (PUTS + DOOMED_CAS) as u64, "{writes} writes in batches");
    assert!(batches < writes, "{writes} writes in {batches} batches: none shared one");
    // Each answer went to its own write: the revision a put was told is the one its key has.
    for (i, revision) in revisions.iter().enumerate() {
        let response = cluster.http.get(cluster.url(leader, &format!("/v1/kv/batch/{i}"))).send().await.expect("GET");
        assert_eq!(response.headers()["etag"], format!("\"{revision}\"").as_str(), "batch/{i}");
        assert_eq!(response.text().await.expect("body"), format!("v{i}"));
    }
    assert_eq!(cluster.get(follower, "batch-cas/0", "linearizable").await.0, 404);
}

/// The leader's count of forwarded batches and of the writes in them, from `/metrics`.
async fn forwarded_batch_totals(cluster: &Cluster, id: u64) -> (u64, u64) {
    let text = cluster.http.get(cluster.url(id, "/metrics")).send().await.expect("metrics").text().await.expect("body");
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse::<f64>().expect("a number")) as u64
    };
    (value("quorumkv_forwarded_write_batch_writes_count"), value("quorumkv_forwarded_write_batch_writes_sum"))
}
