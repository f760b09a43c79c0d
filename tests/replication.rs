//! Replication modes on real clusters: synchronous `ack=all`, bounded-staleness reads that a
//! lagging replica refuses, and replication lag visible in `/v1/cluster`.

mod common;

use common::eventually;
use common::Cluster;
use quorumkv_api::ErrorBody;
use quorumkv_api::Outcome;
use quorumkv_api::PutReply;

/// Goal: `ack=all` answers only once every voter has the entry durable (the leader's view of
/// each voter's matched index covers it), and with a voter down it times out honestly: 504,
/// outcome unknown, while `ack=quorum` writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_all_waits_for_every_voter_and_times_out_when_one_is_down() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let response = cluster.http.put(cluster.url(leader, "/v1/kv/sync?ack=all")).body("a").send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let revision = response.json::<PutReply>().await.expect("a put's answer").revision;
    let status = cluster.cluster_status(leader).await.expect("status");
    for member in status.members {
        assert!(member.matched_index >= Some(revision), "ack=all answered before {member:?} had it");
    }

    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    cluster.kill(follower);
    let response = cluster.http.put(cluster.url(leader, "/v1/kv/sync?ack=all")).body("b").send().await.expect("sent");
    assert_eq!(response.status(), 504);
    let body: ErrorBody = response.json().await.expect("an error body");
    assert_eq!((body.error.as_str(), body.outcome), ("outcome_unknown", Outcome::Unknown));
    // ack=quorum still succeeds with one voter down.
    cluster.put_ok(leader, "quorum", "ok").await;
    // The timed-out write was committed by the quorum: its outcome was unknown, not failed.
    assert_eq!(cluster.get(leader, "sync", "linearizable").await, (200, "b".to_string()));
}

/// Goal: `ack=all` counts the leader like every other voter: the answer comes only once the
/// leader's own log has the entry fsynced, not just the followers' (which can finish first:
/// entries are replicated as soon as the leader submits them).
///
/// Method: the leader's fsyncs are made 2 s slow (`--fault-fsync-delay-ms`) and what it has
/// not synced is lost when it is killed (`--fault-lose-unsynced-writes`, a power cut). Right
/// after an `ack=all` write is acknowledged the leader reports it fsynced, is power-cut, and
/// restarted alone (no follower can hand the entry back): its own log still has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_all_waits_for_the_leaders_own_fsync() {
    let mut cluster = Cluster::start_processes(3).await;
    let slow = cluster.wait_for_leader().await;
    cluster.terminate(slow).await;
    cluster.set_node_args(slow, &["--fault-fsync-delay-ms", "2000", "--fault-lose-unsynced-writes"]);
    cluster.spawn(slow);
    cluster.wait_ready(slow).await;
    cluster.transfer_leadership(slow).await;

    let response = cluster.http.put(cluster.url(slow, "/v1/kv/sync?ack=all")).body("a").send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let revision = response.json::<PutReply>().await.expect("a put's answer").revision;
    let status = cluster.cluster_status(slow).await.expect("status");
    let own = status.members.iter().find(|m| m.id == slow).expect("leader listed");
    assert!(
        own.matched_index >= Some(revision),
        "ack=all answered before the leader's own fsync of revision {revision}: {own:?}"
    );

    cluster.kill(slow);
    for id in cluster.running_ids() {
        cluster.kill(id);
    }
    cluster.spawn(slow);
    // Until Raft has loaded its state, a node reports openraft's initial metrics (term 0, log
    // index 0): wait for the loaded term (it led, so its term is above 0), then look at its log.
    let last_log_index = eventually("the power-cut leader answers alone, its state loaded", || async {
        cluster.cluster_status(slow).await.filter(|s| s.term > 0).map(|s| s.last_log_index)
    })
    .await;
    assert!(last_log_index >= revision, "the leader lost the ack=all write {revision} (log ends at {last_log_index})");
}

/// Goal: a learner (asynchronous replica) serves stale reads; with `max_lag_ms` it refuses
/// (503 too_stale) once it has not heard from a leader for longer than that, and answers again
/// without the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_refuses_a_too_stale_read() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let learner = cluster.add_joining_node(false);
    cluster.put_ok(leader, "k", "v").await;
    eventually("the learner has the write", || async {
        (cluster.get(learner, "k", "stale").await == (200, "v".to_string())).then_some(())
    })
    .await;
    eventually("a fresh learner answers a bounded read", || async {
        let (status, _) = cluster.get(learner, "k", "stale&max_lag_ms=5000").await;
        (status == 200).then_some(())
    })
    .await;

    // No quorum, no leader: the learner's data ages.
    for id in 1..=3 {
        cluster.kill(id);
    }
    eventually("the learner refuses a read staler than 300 ms", || async {
        let url = cluster.url(learner, "/v1/kv/k?consistency=stale&max_lag_ms=300");
        let response = cluster.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        let body: ErrorBody = response.json().await.ok()?;
        (status == 503 && body.error == "too_stale").then_some(())
    })
    .await;
    assert_eq!(cluster.get(learner, "k", "stale").await, (200, "v".to_string()));
}

/// Goal: the leader reports every member's replicated index and lag; followers report none
/// (they cannot know it); bad replication parameters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_lag_is_visible_and_parameters_are_checked() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let revision = cluster.put_ok(leader, "k", "v").await;
    eventually("the leader sees every member caught up", || async {
        let status = cluster.cluster_status(leader).await?;
        status.members.iter().all(|m| m.matched_index >= Some(revision) && m.last_ack_ms_ago.is_some()).then_some(())
    })
    .await;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let status = cluster.cluster_status(follower).await.expect("status");
    assert!(status.members.iter().all(|m| m.lag_entries.is_none()));

    for (path, expected) in [
        ("/v1/kv/k?consistency=linearizable&max_lag_ms=10", 400),
        ("/v1/kv/k?consistency=stale&max_lag_ms=0", 400),
        ("/v1/kv/k?consistency=stale&max_lag_ms=soon", 400),
    ] {
        let response = cluster.http.get(cluster.url(follower, path)).send().await.expect("sent");
        assert_eq!(response.status(), expected, "{path}");
    }
    let response = cluster.http.put(cluster.url(follower, "/v1/kv/k?ack=most")).body("x").send().await.expect("sent");
    assert_eq!(response.status(), 400);
}

/// Goal: `/metrics` serves Prometheus text with request counts by route and status, Raft
/// state, replication lag per peer (on the leader) and storage sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..3 {
        cluster.put_ok(leader, &format!("m{i}"), "v").await;
    }
    let response =
        cluster.http.put(cluster.url(leader, "/v1/kv/m0")).header("If-None-Match", "*").body("x").send().await;
    assert_eq!(response.expect("sent").status(), 412);
    let text =
        cluster.http.get(cluster.url(leader, "/metrics")).send().await.expect("sent").text().await.expect("text");
    for expected in [
        "quorumkv_http_requests_total{route=\"/v1/kv/{*key}\",method=\"PUT\",status=\"200\"} 3",
        "quorumkv_http_requests_total{route=\"/v1/kv/{*key}\",method=\"PUT\",status=\"412\"} 1",
        "quorumkv_http_request_duration_seconds_count{route=\"/v1/kv/{*key}\",method=\"PUT\"} 4",
        "quorumkv_raft_is_leader 1",
        "quorumkv_raft_replication_lag_entries{peer=",
        "quorumkv_storage_bytes{part=\"log\"}",
        "quorumkv_raft_leader_changes_total",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    let term_line = text.lines().find(|l| l.starts_with("quorumkv_raft_term ")).expect("term");
    assert!(term_line.trim_start_matches("quorumkv_raft_term ").parse::<u64>().expect("number") >= 1);
}

/// Goal: a follower far behind on large values catches up. With 4 MiB values, openraft's batch
/// of up to 256 entries would be a 1 GiB AppendEntries: over the peer body limit (refused with
/// 413, forever) and far over any RPC timeout. Batches are capped by bytes and their timeout
/// grows with their size.
///
/// Method: `--max-value-bytes 4 MiB`; a follower is stopped; 200 distinct 4 MiB values are
/// written; the follower restarts and must hold the last one (and a sample of the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_on_large_values() {
    const VALUE_BYTES: usize = 4 * 1024 * 1024;
    const WRITES: usize = 200;
    let value_limit = VALUE_BYTES.to_string();
    let mut cluster = Cluster::start_with_args(3, &["--max-value-bytes", &value_limit]).await;
    let leader = cluster.wait_for_leader().await;
    let behind = (1..=3).find(|id| *id != leader).expect("follower");
    cluster.put_ok(leader, "first", "x").await;
    eventually("the follower has the first write", || async {
        (cluster.get(behind, "first", "stale").await == (200, "x".to_string())).then_some(())
    })
    .await;
    cluster.stop(behind).await;
    let value =
        |i: usize| -> Vec<u8> { format!("{i:08}").into_bytes().into_iter().cycle().take(VALUE_BYTES).collect() };
    for i in 0..WRITES {
        let url = cluster.url(leader, &format!("/v1/kv/large/{i}"));
        let response = cluster.http.put(url).body(value(i)).send().await.expect("PUT sent");
        assert_eq!(response.status(), 200, "PUT large/{i}");
    }
    cluster.spawn(behind);
    let last = WRITES - 1;
    let started = std::time::Instant::now();
    // About 10 s here; before batches were capped by bytes, replication stalled for minutes
    // (413 from the peer, then retried without end).
    let deadline = started + std::time::Duration::from_secs(60);
    loop {
        let url = cluster.url(behind, &format!("/v1/kv/large/{last}?consistency=stale"));
        if let Ok(response) = cluster.http.get(url).send().await {
            if response.status() == 200 && response.bytes().await.is_ok_and(|body| body.as_ref() == value(last)) {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the follower did not catch up:\n{}", cluster.log(leader));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!("the follower caught up on {WRITES} values of 4 MiB in {:?}", started.elapsed());
    for i in (0..WRITES).step_by(37) {
        let url = cluster.url(behind, &format!("/v1/kv/large/{i}?consistency=stale"));
        let body = cluster.http.get(url).send().await.expect("GET").bytes().await.expect("body");
        assert!(body.as_ref() == value(i), "large/{i} differs on the follower");
    }
}
