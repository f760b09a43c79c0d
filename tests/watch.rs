//! Watches (`GET /v1/watch`, Server-Sent Events) and blocking reads (`wait_revision`): every
//! change once, in revision order, from any node; resumed without gaps or repeats; refused
//! with `410` rather than served with a gap; kept across a restart. In-process nodes.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::eventually;
use common::Cluster;
use quorumkv_api::client::Client;
use quorumkv_api::client::WatchMessage;
use quorumkv_api::ErrorBody;
use quorumkv_api::WatchEventKind;
use serde_json::json;

/// (revision, put or delete, key, value) of each event, until one at `last` or later.
async fn events_until(
    watcher: &mut quorumkv_api::client::Watcher<'_>,
    last: u64,
) -> Vec<(u64, String, String, String)> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), watcher.next())
            .await
            .expect("an event within 20 s")
            .expect("the watch goes on");
        if let WatchMessage::Event(event) = message {
            let kind = match event.kind {
                WatchEventKind::Put => "put",
                WatchEventKind::Delete => "delete",
            };
            seen.push((event.revision, kind.to_string(), event.key, event.value.unwrap_or_default()));
            if event.revision >= last {
                return seen;
            }
        }
    }
}

async fn txn(cluster: &Cluster, id: u64, body: serde_json::Value) -> u64 {
    let response = cluster.http.post(cluster.url(id, "/v1/txn")).body(body.to_string()).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    response.json::<quorumkv_api::TxnReply>().await.expect("an answer").revision
}

fn event(revision: u64, kind: &str, key: &str, value: &str) -> (u64, String, String, String) {
    (revision, kind.to_string(), key.to_string(), value.to_string())
}

/// Goal: a watch on a follower sends every change under its prefix (puts, deletes, a
/// transaction's writes, a delete_prefix) in revision order, nothing else; it starts with the
/// revision it starts after; a second watch from a later revision, and a raw stream resumed
/// with `Last-Event-ID`, get exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_every_change_in_order_and_resumes_without_gaps() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let first = cluster.put_ok(leader, "w/a", "1").await;
    let client = Client::new(&cluster.node(follower).client_addr).expect("client");
    let mut watcher = client.watch(None, Some("w/"), Some(first));
    let started = tokio::time::timeout(Duration::from_secs(20), watcher.next()).await.expect("answered");
    assert_eq!(started.expect("open"), WatchMessage::Progress(first - 1), "the stream says where it starts");

    let second = cluster.put_ok(leader, "w/b", "2").await;
    cluster.put_ok(leader, "other", "not watched").await;
    let response = cluster.http.delete(cluster.url(leader, "/v1/kv/w/a")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let third = response.json::<quorumkv_api::DeleteReply>().await.expect("answer").revision;
    let fourth = txn(
        &cluster,
        leader,
        json!({"success": [{"op": "put", "key": "w/d", "value": "4"},
                                                        {"op": "put", "key": "w/c", "value": "3"}]}),
    )
    .await;
    let fifth = txn(&cluster, leader, json!({"success": [{"op": "delete_prefix", "prefix": "w/"}]})).await;
    let expected = vec![
        event(first, "put", "w/a", "1"),
        event(second, "put", "w/b", "2"),
        event(third, "delete", "w/a", ""),
        event(fourth, "put", "w/c", "3"),
        event(fourth, "put", "w/d", "4"),
        event(fifth, "delete", "w/b", ""),
        event(fifth, "delete", "w/c", ""),
        event(fifth, "delete", "w/d", ""),
    ];
    let mut seen = events_until(&mut watcher, fifth).await;
    while seen.len() < expected.len() {
        seen.extend(events_until(&mut watcher, fifth).await);
    }
    assert_eq!(seen, expected);

    let mut later = client.watch(None, Some("w/"), Some(third));
    let mut rest = events_until(&mut later, fifth).await;
    while rest.len() < expected.len() - 2 {
        rest.extend(events_until(&mut later, fifth).await);
    }
    assert_eq!(rest, expected[2..]);

    // A raw stream resumed after revision `fourth`: only the fifth's events, each once, and
    // the revision marked complete once, on its last event.
    let url = cluster.url(follower, "/v1/watch?prefix=w/");
    let mut response = cluster.http.get(url).header("last-event-id", fourth.to_string()).send().await.expect("opened");
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while text.matches("event: delete").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk()).await.expect("data");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream").expect("open")));
    }
    assert!(!text.contains("event: put"), "{text}");
    assert_eq!(text.matches(&format!("id: {fifth}\n")).count(), 1, "{text}");
    let last_delete = text.rfind("event: delete").expect("a delete");
    assert!(text[last_delete..].contains(&format!("id: {fifth}")), "the id comes with the last event: {text}");
}

/// Goal: a watch from before the history a node keeps is refused with `410 compacted` and the
/// oldest revision kept (never served with a gap); from that revision it works. Bad requests
/// are 400s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_before_the_history_is_refused_with_410() {
    let cluster = Cluster::start_with_args(1, &["--watch-history-revisions", "1000"]).await;
    let leader = cluster.wait_for_leader().await;
    let cluster = &cluster;
    let writes: Vec<_> =
        (0..1_200).map(|index| async move { cluster.put(leader, &format!("h/{index}"), "v").await }).collect();
    for response in futures::future::join_all(writes).await {
        assert_eq!(response.status(), 200);
    }
    // The history is pruned at most once a second: writes go on until it has been.
    let (body, last) = eventually("the history is pruned to its bound", || async {
        let last = cluster.put_ok(leader, "h/last", "v").await;
        let url = cluster.url(leader, "/v1/watch?prefix=h/&start_revision=1");
        let response = cluster.http.get(url).send().await.expect("sent");
        if response.status() != 410 {
            return None;
        }
        Some((response.json::<ErrorBody>().await.expect("an error body"), last))
    })
    .await;
    assert_eq!(body.error, "compacted");
    let oldest = body.oldest_revision.expect("the oldest revision kept");
    assert!(oldest > 1 && oldest + 1_000 > last, "oldest {oldest}, last {last}");
    let client = Client::new(&cluster.node(leader).client_addr).expect("client");
    let mut watcher = client.watch(None, Some("h/"), Some(oldest));
    let events = events_until(&mut watcher, oldest).await;
    assert_eq!(events.first().map(|e| e.0), Some(oldest));
    for bad in ["/v1/watch", "/v1/watch?key=a&prefix=b", "/v1/watch?prefix=a&start=3", "/v1/watch?key="] {
        let response = cluster.http.get(cluster.url(leader, bad)).send().await.expect("sent");
        assert_eq!(response.status(), 400, "{bad}");
        let _: ErrorBody = response.json().await.expect("an error body");
    }
    let response = cluster
        .http
        .get(cluster.url(leader, "/v1/watch?prefix=h/"))
        .header("last-event-id", "x")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
}

/// Goal: a blocking read answers as soon as its key changes after the given index, with the
/// new value and an index at least that change's revision; without a change it answers after
/// its wait; a listing waits on its prefix; an absent key answers 404 with an index too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_read_answers_on_change_or_after_its_wait() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.put_ok(leader, "b/key", "old").await;
    let response = cluster.http.get(cluster.url(follower, "/v1/kv/b/key")).send().await.expect("sent");
    let index: u64 = response.headers()[quorumkv_api::INDEX_HEADER].to_str().expect("ascii").parse().expect("index");

    let url = cluster.url(follower, &format!("/v1/kv/b/key?wait_revision={index}&wait_ms=20000"));
    let waiting = tokio::spawn(cluster.http.get(url).send());
    // Nothing changed yet: the read must still be waiting (a wait that proves a negative).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered before any change");
    cluster.put_ok(leader, "b/other", "not this key").await;
    let changed = cluster.put_ok(leader, "b/key", "new").await;
    let started = Instant::now();
    let response = waiting.await.expect("joined").expect("answered");
    assert!(started.elapsed() < Duration::from_secs(10), "answered at the change, not at the end of the wait");
    let new_index: u64 =
        response.headers()[quorumkv_api::INDEX_HEADER].to_str().expect("ascii").parse().expect("index");
    assert!(new_index >= changed, "{new_index} < {changed}");
    assert_eq!(response.text().await.expect("body"), "new");

    let started = Instant::now();
    let url = cluster.url(follower, &format!("/v1/kv/b/key?wait_revision={new_index}&wait_ms=400"));
    let response = cluster.http.get(url).send().await.expect("answered");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(response.text().await.expect("body"), "new", "no change: the current value after the wait");

    let url = cluster.url(follower, &format!("/v1/kv?prefix=b/&wait_revision={new_index}&wait_ms=20000"));
    let waiting = tokio::spawn(cluster.http.get(url).send());
    let added = cluster.put_ok(leader, "b/third", "3").await;
    let page: quorumkv_api::Page = waiting.await.expect("joined").expect("answered").json().await.expect("a page");
    assert!(page.items.iter().any(|item| item.key == "b/third" && item.revision == added), "{page:?}");

    let response = cluster.http.get(cluster.url(follower, "/v1/kv/b/absent?wait_revision=1&wait_ms=1")).send().await;
    let response = response.expect("answered");
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key(quorumkv_api::INDEX_HEADER));
    for bad in ["wait_ms=5", "wait_revision=1&wait_ms=0", "wait_revision=1&wait_ms=600001", "wait_revision=x"] {
        let response = cluster.http.get(cluster.url(follower, &format!("/v1/kv/b/key?{bad}"))).send().await;
        assert_eq!(response.expect("answered").status(), 400, "{bad}");
    }
}

/// Goal: the history is kept with the state: after a node restarts, a watch from before the
/// restart gets the same events, and the stream of a killed node's watcher resumes on
/// another node where it left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_survives_a_restart_and_a_watch_moves_to_another_node() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let other = (1..=3).find(|id| *id != leader && *id != follower).expect("another follower");
    let first = cluster.put_ok(leader, "r/1", "a").await;
    let second = cluster.put_ok(leader, "r/2", "b").await;
    let endpoints = format!("{},{}", cluster.node(follower).client_addr, cluster.node(other).client_addr);
    let client = Client::new(&endpoints).expect("client");
    let mut watcher = client.watch(None, Some("r/"), Some(first));
    assert_eq!(events_until(&mut watcher, second).await.len(), 2);

    cluster.kill(follower);
    let third = cluster.put_ok(leader, "r/3", "c").await;
    let moved = events_until(&mut watcher, third).await;
    assert_eq!(moved, [event(third, "put", "r/3", "c")], "resumed on the other node after {second}, no repeat");

    cluster.spawn(follower);
    cluster.wait_ready(follower).await;
    let restarted = Client::new(&cluster.node(follower).client_addr).expect("client");
    let mut replay = restarted.watch(None, Some("r/"), Some(first));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(events_until(&mut replay, third).await);
    }
    assert_eq!(
        seen,
        [event(first, "put", "r/1", "a"), event(second, "put", "r/2", "b"), event(third, "put", "r/3", "c")]
    );
    eventually("the restarted node serves", || async { cluster.cluster_status(follower).await.map(|_| ()) }).await;
}

/// Goal: `quorumkv watch` prints one line per event from the given revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_one_line_per_event() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let first = cluster.put_ok(leader, "c/x", "1").await;
    let response = cluster.http.delete(cluster.url(leader, "/v1/kv/c/x")).send().await.expect("sent");
    let second = response.json::<quorumkv_api::DeleteReply>().await.expect("answer").revision;
    let endpoint = cluster.node(leader).client_addr.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args([
                "--endpoints",
                &endpoint,
                "watch",
                "--prefix",
                "c/",
                "--rev",
                &first.to_string(),
                "--max-events",
                "2",
            ])
            .output()
            .expect("the CLI runs")
    })
    .await
    .expect("joined");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{first} put c/x 1\n{second} delete c/x\n"));
}

/// Goal: a node caught up by a snapshot has no history before it: a watch from an earlier
/// revision is `410` with the first revision after the snapshot, and one from there sends
/// the changes after it. A history bounded by age drops what is older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_or_the_age_bound_starts_the_history_later() {
    let mut cluster =
        Cluster::start_with_args(3, &["--snapshot-log-entries", "100", "--watch-history-ms", "1000"]).await;
    let leader = cluster.wait_for_leader().await;
    let first = cluster.put_ok(leader, "s/first", "v").await;
    // Past the 1,000 entries kept behind a snapshot, so a new node gets a snapshot.
    let writes: Vec<_> = (0..1_300).map(|i| cluster.put(leader, "s/key", if i % 2 == 0 { "a" } else { "b" })).collect();
    for response in futures::future::join_all(writes).await {
        assert_eq!(response.status(), 200);
    }
    eventually("the leader purged the start of its log", || async {
        (cluster.cluster_status(leader).await?.purged_index > 10).then_some(())
    })
    .await;
    let joined = cluster.add_joining_node(true);
    cluster.wait_ready(joined).await;
    eventually("the joined node was caught up by a snapshot", || async {
        cluster.log(joined).contains("snapshot installed").then_some(())
    })
    .await;
    let url = cluster.url(joined, &format!("/v1/watch?key=s/first&start_revision={first}"));
    let response = cluster.http.get(url).send().await.expect("sent");
    assert_eq!(response.status(), 410);
    let oldest = response.json::<ErrorBody>().await.expect("an error body").oldest_revision.expect("oldest");
    assert!(oldest > first + 1_000, "the history starts after the snapshot: {oldest}");
    let client = Client::new(&cluster.node(joined).client_addr).expect("client");
    let mut watcher = client.watch(Some("s/next"), None, Some(oldest));
    let next = cluster.put_ok(leader, "s/next", "after").await;
    assert_eq!(events_until(&mut watcher, next).await, [event(next, "put", "s/next", "after")]);

    // On the leader, the age bound (1 s) drops the first revision once later writes apply.
    let url = cluster.url(leader, &format!("/v1/watch?key=s/first&start_revision={first}"));
    eventually("the age bound drops the first revision", || async {
        cluster.put_ok(leader, "s/later", "v").await;
        (cluster.http.get(&url).send().await.expect("sent").status() == 410).then_some(())
    })
    .await;
}
