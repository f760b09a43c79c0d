//! Leases and per-key TTLs: keys live while their lease is kept alive, go together at one
//! revision when it is revoked or expires, never before the TTL since the last acknowledged
//! keepalive was sent, not even across a failover; and a node caught up by a snapshot keeps
//! the leases. In-process nodes.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::eventually;
use common::Cluster;
use quorumkv_api::client::Client;
use quorumkv_api::client::WatchMessage;
use quorumkv_api::ErrorBody;
use quorumkv_api::KeepAliveReply;
use quorumkv_api::KeptAlive;
use quorumkv_api::LeaseGrantReply;
use quorumkv_api::LeaseInfo;
use quorumkv_api::LeaseRevokeReply;
use quorumkv_api::WatchEventKind;
use serde_json::json;

const TTL_MS: u64 = 1_000;

async fn grant(cluster: &Cluster, id: u64, ttl_ms: u64) -> (LeaseGrantReply, Instant) {
    let sent = Instant::now();
    let response =
        cluster.http.post(cluster.url(id, "/v1/leases")).json(&json!({ "ttl_ms": ttl_ms })).send().await.expect("sent");
    assert_eq!(response.status(), 201);
    (response.json().await.expect("a grant's answer"), sent)
}

async fn put_leased(cluster: &Cluster, id: u64, key: &str, query: &str) -> u64 {
    let url = cluster.url(id, &format!("/v1/kv/{key}?{query}"));
    let response = cluster.http.put(url).body("v").send().await.expect("sent");
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "PUT {key}?{query}: {body}");
    serde_json::from_str::<quorumkv_api::PutReply>(&body).expect("a put's answer").revision
}

async fn keepalive(cluster: &Cluster, id: u64, lease: u64) -> reqwest::Response {
    cluster.http.post(cluster.url(id, &format!("/v1/leases/{lease}/keepalive"))).send().await.expect("sent")
}

/// The status of a key on node `id`, read from its own applied state (no leader needed).
async fn local_status(cluster: &Cluster, id: u64, key: &str) -> u16 {
    cluster.get(id, key, "stale").await.0
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.json::<ErrorBody>().await.expect("an error body").error)
}

/// Goal: keys attached to a lease outlive its TTL many times over while it is kept alive (from
/// a follower), a read names the lease, the lease lists its keys, and a revoke deletes them
/// all at one revision (one watch event each); an ended lease is 404 everywhere after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_a_leases_keys_and_a_revoke_deletes_them_at_one_revision() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let (lease, _) = grant(&cluster, follower, TTL_MS).await;
    assert_eq!(lease.ttl_ms, TTL_MS);
    put_leased(&cluster, follower, "l/a", &format!("lease={}", lease.id)).await;
    let attached = put_leased(&cluster, follower, "l/b", &format!("lease={}", lease.id)).await;
    let response = cluster.http.get(cluster.url(follower, "/v1/kv/l/a")).send().await.expect("sent");
    assert_eq!(response.headers()[quorumkv_api::LEASE_HEADER].to_str().expect("ascii"), lease.id.to_string());

    let held_until = Instant::now() + Duration::from_millis(3 * TTL_MS);
    while Instant::now() < held_until {
        let response = keepalive(&cluster, follower, lease.id).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<KeptAlive>().await.expect("answer"), KeptAlive { id: lease.id, ttl_ms: TTL_MS });
        for key in ["l/a", "l/b"] {
            assert_eq!(cluster.get(follower, key, "linearizable").await.0, 200, "{key} is kept while renewed");
        }
        // The holder's rhythm: a renewal every quarter of the TTL.
        tokio::time::sleep(Duration::from_millis(TTL_MS / 4)).await;
    }
    let info: LeaseInfo = cluster.get_json(leader, &format!("/v1/leases/{}", lease.id)).await;
    assert_eq!(info.keys, ["l/a", "l/b"]);
    assert!(info.remaining_ms.is_some_and(|left| left <= TTL_MS), "the leader tells the time left: {info:?}");
    let from_follower: LeaseInfo = cluster.get_json(follower, &format!("/v1/leases/{}", lease.id)).await;
    assert_eq!(from_follower.remaining_ms, None, "only the leader's clock counts");
    // Many at once: one renewal entry for several leases, unknown ids named.
    let many = cluster
        .http
        .post(cluster.url(follower, "/v1/leases/keepalive"))
        .json(&json!({ "ids": [lease.id, 12345] }))
        .send()
        .await
        .expect("sent");
    assert_eq!(many.status(), 200);
    let many: KeepAliveReply = many.json().await.expect("answer");
    assert_eq!(many.leases, [KeptAlive { id: lease.id, ttl_ms: TTL_MS }]);
    assert_eq!(many.not_found, [12345]);

    let client = Client::new(&cluster.node(follower).client_addr).expect("client");
    // From after the attaching puts (a watcher connects when first asked for an event).
    let mut watcher = client.watch(None, Some("l/"), Some(attached + 1));
    let response = cluster.http.delete(cluster.url(follower, &format!("/v1/leases/{}", lease.id))).send().await;
    let revoked: LeaseRevokeReply = response.expect("sent").json().await.expect("a revoke's answer");
    assert_eq!(revoked.deleted_keys, 2);
    let mut deletes = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while deletes.len() < 2 {
        let message = tokio::time::timeout_at(give_up.into(), watcher.next()).await.expect("both deletes in time");
        if let WatchMessage::Event(event) = message.expect("the watch goes on") {
            assert_eq!(event.kind, WatchEventKind::Delete);
            deletes.push((event.revision, event.key));
        }
    }
    assert_eq!(deletes, [(revoked.revision, "l/a".to_string()), (revoked.revision, "l/b".to_string())]);
    for id in 1..=3 {
        eventually("the revoked keys are gone on every node", || async {
            (local_status(&cluster, id, "l/a").await == 404 && local_status(&cluster, id, "l/b").await == 404)
                .then_some(())
        })
        .await;
    }
    assert_eq!(error_code(keepalive(&cluster, follower, lease.id).await).await, (404, "lease_not_found".into()));
    let again = cluster.http.delete(cluster.url(leader, &format!("/v1/leases/{}", lease.id))).send().await;
    assert_eq!(error_code(again.expect("sent")).await, (404, "lease_not_found".into()));
}

/// Goal: an unrenewed lease, and a per-key TTL, delete their keys on every node, never earlier
/// than the TTL after the grant (or put) was sent; a key put again without a TTL stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_leases_and_key_ttls_expire_everywhere_but_never_early() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // Put again without a TTL before the others: it must outlive them.
    put_leased(&cluster, follower, "t/kept", &format!("ttl_ms={TTL_MS}")).await;
    cluster.put_ok(follower, "t/kept", "no ttl now").await;
    let (lease, granted) = grant(&cluster, follower, TTL_MS).await;
    put_leased(&cluster, follower, "t/leased", &format!("lease={}", lease.id)).await;
    let ttl_sent = Instant::now();
    put_leased(&cluster, follower, "t/ttl", &format!("ttl_ms={TTL_MS}")).await;

    let ttl = Duration::from_millis(TTL_MS);
    for (key, sent) in [("t/leased", granted), ("t/ttl", ttl_sent)] {
        for id in 1..=3 {
            let gone_after = eventually("the key expires on every node", || async {
                let status = local_status(&cluster, id, key).await;
                (status == 404).then(|| sent.elapsed())
            })
            .await;
            assert!(gone_after >= ttl, "{key} was gone on node {id} {gone_after:?} after it was sent, before its TTL");
        }
    }
    let response = cluster.http.get(cluster.url(follower, &format!("/v1/leases/{}", lease.id))).send().await;
    assert_eq!(error_code(response.expect("sent")).await, (404, "lease_not_found".into()));
    for id in 1..=3 {
        assert_eq!(local_status(&cluster, id, "t/kept").await, 200, "a key put again without a TTL stays");
    }
    let response = cluster.http.get(cluster.url(leader, "/v1/kv/t/kept")).send().await.expect("sent");
    assert!(response.headers().get(quorumkv_api::LEASE_HEADER).is_none(), "and has no lease");
}

/// Goal: after the leader dies, the new leader gives each lease a fresh full TTL: a key whose
/// last keepalive was acknowledged just before the failover is present on every survivor for
/// a whole TTL after that keepalive was sent, and expires afterwards without keepalives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_never_expires_a_lease_early() {
    const FAILOVER_TTL_MS: u64 = 3_000;
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (lease, _) = grant(&cluster, survivors[0], FAILOVER_TTL_MS).await;
    put_leased(&cluster, survivors[0], "f/key", &format!("lease={}", lease.id)).await;
    let sent = Instant::now();
    assert_eq!(keepalive(&cluster, survivors[0], lease.id).await.status(), 200);
    cluster.kill(leader);

    let ttl = Duration::from_millis(FAILOVER_TTL_MS);
    while sent.elapsed() < ttl {
        for id in &survivors {
            let status = local_status(&cluster, *id, "f/key").await;
            // Read before the clock: a 404 seen here was there before this elapsed() too.
            let elapsed = sent.elapsed();
            assert!(status == 200 || elapsed >= ttl, "f/key gone on node {id} {elapsed:?} after the last keepalive");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_leader = cluster.wait_for_leader_among(&survivors).await;
    for id in &survivors {
        eventually("the lease expires under the new leader", || async {
            (local_status(&cluster, *id, "f/key").await == 404).then_some(())
        })
        .await;
    }
    let response = cluster.http.get(cluster.url(new_leader, &format!("/v1/leases/{}", lease.id))).send().await;
    assert_eq!(error_code(response.expect("sent")).await, (404, "lease_not_found".into()));
}

/// Goal: a node that was down while a lease was granted and keys attached, and that catches up
/// by a snapshot, holds the lease; once it leads, it keeps the lease's time and expires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_leases_to_a_node_that_then_expires_them() {
    let mut cluster = Cluster::start_with_args(3, &["--snapshot-log-entries", "100"]).await;
    let leader = cluster.wait_for_leader().await;
    let behind = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop(behind).await;
    let (lease, _) = grant(&cluster, leader, 2_000).await;
    put_leased(&cluster, leader, "s/leased", &format!("lease={}", lease.id)).await;
    // Past the 1,000 entries kept behind a snapshot, so the stopped node gets a snapshot.
    for chunk in 0..13 {
        let writes: Vec<_> =
            (0..100).map(|i| cluster.put(leader, "s/filler", if i % 2 == 0 { "a" } else { "b" })).collect();
        for response in futures::future::join_all(writes).await {
            assert_eq!(response.status(), 200, "filler chunk {chunk}");
        }
        assert_eq!(keepalive(&cluster, leader, lease.id).await.status(), 200);
    }
    eventually("the leader purged the start of its log", || async {
        (cluster.cluster_status(leader).await?.purged_index > lease.revision).then_some(())
    })
    .await;
    cluster.spawn(behind);
    eventually("the stopped node was caught up by a snapshot", || async {
        cluster.log(behind).contains("snapshot installed").then_some(())
    })
    .await;
    eventually("the snapshot brought the lease", || async {
        let response = cluster.http.get(cluster.url(behind, &format!("/v1/leases/{}", lease.id))).send().await.ok()?;
        let info: LeaseInfo = response.json().await.ok()?;
        (info.keys == ["s/leased"]).then_some(())
    })
    .await;
    cluster.transfer_leadership(behind).await;
    eventually("the node caught up by a snapshot expires the lease as leader", || async {
        (local_status(&cluster, behind, "s/leased").await == 404).then_some(())
    })
    .await;
}

/// Goal: malformed lease requests are 4xx JSON errors that change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lease_requests_are_refused_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    let node = cluster.wait_for_leader().await;
    let post = |path: &str, body: serde_json::Value| cluster.http.post(cluster.url(node, path)).json(&body).send();
    for body in [
        json!({"ttl_ms": 0}),
        json!({"ttl_ms": 999}),
        json!({"ttl_ms": 40u64 * 24 * 3600 * 1000}),
        json!({}),
        json!({"ttl": 5000}),
    ] {
        let (status, code) = error_code(post("/v1/leases", body.clone()).await.expect("sent")).await;
        assert_eq!((status, code.as_str()), (400, "invalid_parameter"), "{body}");
    }
    for body in [json!({"ids": []}), json!({"ids": vec![1u64; 1001]})] {
        let (status, _) = error_code(post("/v1/leases/keepalive", body).await.expect("sent")).await;
        assert_eq!(status, 400);
    }
    for path in ["/v1/leases/abc/keepalive", "/v1/leases/-1"] {
        let response = cluster.http.post(cluster.url(node, path)).send().await.expect("sent");
        assert!(response.status().is_client_error(), "{path}: {}", response.status());
    }
    for query in ["lease=abc", "lease=1&ttl_ms=5000", "ttl_ms=10", "ttl_ms=x"] {
        let response = cluster.http.put(cluster.url(node, &format!("/v1/kv/bad?{query}"))).body("v").send().await;
        assert_eq!(error_code(response.expect("sent")).await.0, 400, "{query}");
    }
    let response = cluster.http.put(cluster.url(node, "/v1/kv/bad?lease=4242")).body("v").send().await;
    assert_eq!(error_code(response.expect("sent")).await, (404, "lease_not_found".into()));
    let response = cluster.http.delete(cluster.url(node, "/v1/kv/bad?ttl_ms=5000")).send().await;
    assert_eq!(error_code(response.expect("sent")).await.0, 400);
    let txn = json!({"success": [{"op": "get", "key": "bad", "lease": 1}]});
    let (status, _) = error_code(post("/v1/txn", txn).await.expect("sent")).await;
    assert_eq!(status, 400);
    let txn = json!({"success": [{"op": "put", "key": "bad", "value": "v", "lease": 4242}]});
    assert_eq!(error_code(post("/v1/txn", txn).await.expect("sent")).await, (404, "lease_not_found".into()));
    assert_eq!(cluster.get(node, "bad", "linearizable").await.0, 404, "nothing was written");
}

fn cli(cluster: &Cluster, args: &[&str]) -> std::process::Command {
    let endpoints: Vec<String> =
        (1..=cluster.nodes.len() as u64).map(|id| cluster.node(id).client_addr.clone()).collect();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"));
    // Before the arguments: a lock's command comes last, after `--`.
    command.args(["--endpoints", &endpoints.join(",")]).args(args);
    command
}

/// Goal: `quorumkv lock` lets one holder in at a time, in the order they asked, each with a
/// fencing token larger than the one before, and leaves no key behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_admit_one_holder_at_a_time_with_increasing_fencing_tokens() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let journal = cluster.dir().join("critical-sections");
    let script = format!(
        "echo start $QUORUMKV_FENCING_TOKEN >> {0}; sleep 0.3; echo end $QUORUMKV_FENCING_TOKEN >> {0}",
        journal.display()
    );
    let holders: Vec<_> = (0..4)
        .map(|_| {
            cli(&cluster, &["lock", "locks/job", "--ttl-ms", "5000", "--", "sh", "-c", &script]).spawn().expect("run")
        })
        .collect();
    let statuses = tokio::task::spawn_blocking(move || {
        holders.into_iter().map(|mut child| child.wait().expect("wait")).collect::<Vec<_>>()
    })
    .await
    .expect("join");
    assert!(statuses.iter().all(|status| status.success()), "{statuses:?}");
    let journal = std::fs::read_to_string(&journal).expect("journal");
    let lines: Vec<(&str, u64)> = journal
        .lines()
        .map(|line| {
            let (what, token) = line.split_once(' ').expect("what and token");
            (what, token.parse().expect("a numeric token"))
        })
        .collect();
    assert_eq!(lines.len(), 8, "{journal}");
    let mut previous = 0;
    for pair in lines.chunks(2) {
        let [(start, token), (end, same)] = pair else { unreachable!("chunks of two") };
        assert_eq!((*start, *end), ("start", "end"), "critical sections overlapped:\n{journal}");
        assert_eq!(token, same, "critical sections overlapped:\n{journal}");
        assert!(*token > previous, "fencing tokens must increase:\n{journal}");
        previous = *token;
    }
    let page: quorumkv_api::Page = cluster.get_json(1, "/v1/kv?prefix=locks/").await;
    assert!(page.items.is_empty(), "released locks leave no key: {page:?}");
}

/// Goal: a holder whose lease ends (here revoked by someone else) loses the lock: its command
/// is killed and it exits 1, long before the command would have finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_lease_ends_kills_its_command() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let started = Instant::now();
    let mut holder =
        cli(&cluster, &["lock", "locks/lost", "--ttl-ms", "1000", "--", "sleep", "60"]).spawn().expect("run");
    let lease = eventually("the holder's key exists", || async {
        let page: quorumkv_api::Page = cluster.get_json(1, "/v1/kv?prefix=locks/lost/").await;
        let key = page.items.first()?.key.clone();
        let response = cluster.http.get(cluster.url(1, &format!("/v1/kv/{key}"))).send().await.ok()?;
        response.headers().get(quorumkv_api::LEASE_HEADER)?.to_str().ok()?.parse::<u64>().ok()
    })
    .await;
    let response = cluster.http.delete(cluster.url(1, &format!("/v1/leases/{lease}"))).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let status = eventually("the holder gives up its command", || {
        let exited = holder.try_wait().expect("try_wait");
        async move { exited }
    })
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(30), "the command was killed, not waited for");
}

/// Goal: `quorumkv elect` prints the leader, and when the leader dies without resigning, the
/// next candidate is printed as leader once the dead one's lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_moves_to_the_next_candidate_when_the_leader_dies() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let lines = |child: &mut std::process::Child| {
        let stdout = child.stdout.take().expect("piped");
        let (sender, receiver) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        receiver
    };
    let leader_of = |line: &str| -> Option<String> {
        serde_json::from_str::<serde_json::Value>(line).ok()?["leader"].as_str().map(str::to_string)
    };
    let next_leader = |receiver: &std::sync::mpsc::Receiver<String>| {
        let line = receiver.recv_timeout(Duration::from_secs(20)).expect("a line within 20 s");
        leader_of(&line)
    };
    let piped = |args: &[&str]| cli(&cluster, args).stdout(std::process::Stdio::piped()).spawn().expect("run");
    let mut first = piped(&["elect", "e/leader", "A", "--ttl-ms", "1000"]);
    let first_lines = lines(&mut first);
    assert_eq!(next_leader(&first_lines).as_deref(), Some("A"));
    let mut second = piped(&["elect", "e/leader", "B", "--ttl-ms", "1000"]);
    let second_lines = lines(&mut second);
    assert_eq!(next_leader(&second_lines).as_deref(), Some("A"), "B waits behind A");
    let mut observer = piped(&["elect", "e/leader", "--observe"]);
    let observer_lines = lines(&mut observer);
    assert_eq!(next_leader(&observer_lines).as_deref(), Some("A"));
    first.kill().expect("kill A");
    let _ = first.wait();
    assert_eq!(next_leader(&second_lines).as_deref(), Some("B"), "B leads once A's lease expired");
    assert_eq!(next_leader(&observer_lines).as_deref(), Some("B"));
    for mut child in [second, observer] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Goal: a holder that can no longer renew (the whole cluster is gone) gives the lock up before
/// its TTL since the last renewal could run out: it kills its command and exits 1 within the
/// TTL of the cluster going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_cluster_gives_up_within_the_ttl() {
    const LOCK_TTL_MS: u64 = 3_000;
    let mut cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let pid_file = cluster.dir().join("holder.pid");
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let ttl = LOCK_TTL_MS.to_string();
    let mut holder =
        cli(&cluster, &["lock", "locks/cut", "--ttl-ms", &ttl, "--", "sh", "-c", &script]).spawn().expect("run");
    let pid = eventually("the command runs", || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse::<u32>().ok()
    })
    .await;
    let cut_off = Instant::now();
    for id in 1..=3 {
        cluster.kill(id);
    }
    let status = eventually("the holder gives up", || {
        let exited = holder.try_wait().expect("try_wait");
        async move { exited }
    })
    .await;
    let gave_up_after = cut_off.elapsed();
    assert_eq!(status.code(), Some(1));
    assert!(
        gave_up_after < Duration::from_millis(LOCK_TTL_MS),
        "the holder gave up {gave_up_after:?} after the cluster went: later than the lease could have ended"
    );
    eventually("the command was killed", || async {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
}

/// Goal: a signal to `quorumkv lock` reaches its command, and the lock is held until the
/// command has exited: quorumkv does not die first and leave the command running unlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_passes_signals_to_its_command_and_holds_until_it_exits() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let journal = cluster.dir().join("signals");
    let script = format!(
        "trap 'echo terminated >> {0}; exit 7' TERM; echo running >> {0}; while true; do sleep 0.1; done",
        journal.display()
    );
    let mut holder = cli(&cluster, &["lock", "locks/sig", "--", "sh", "-c", &script]).spawn().expect("run");
    eventually("the command runs", || async {
        std::fs::read_to_string(&journal).ok()?.contains("running").then_some(())
    })
    .await;
    let status = std::process::Command::new("kill").args(["-TERM", &holder.id().to_string()]).status();
    assert!(status.expect("kill").success());
    let status = eventually("the holder exits once its command has", || {
        let exited = holder.try_wait().expect("try_wait");
        async move { exited }
    })
    .await;
    assert_eq!(status.code(), Some(7), "the command's own exit status");
    assert!(std::fs::read_to_string(&journal).expect("journal").contains("terminated"), "the command got SIGTERM");
    let page: quorumkv_api::Page = cluster.get_json(1, "/v1/kv?prefix=locks/sig/").await;
    assert!(page.items.is_empty(), "the lock was released: {page:?}");
}

/// Goal: a waiter for a lock keeps waiting for as long as the holder holds, however short its
/// client's request timeout: a blocking read is given its wait on top of it. Before, the
/// recipes' 30 s blocking reads ran into the client's timeout (10 s) on a quiet lock, every
/// attempt failed, and after the client's attempts (about a minute) `quorumkv lock` gave up
/// and `quorumkv elect` resigned. Here the client's timeout is half a second, so the old
/// code gave up within the pause below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_outlasts_its_clients_request_timeout() {
    use quorumkv_api::limits::CLIENT_BACKOFF_MAX_MS;
    use quorumkv_api::limits::CLIENT_MAX_ATTEMPTS;
    use quorumkv_api::recipes;
    use std::sync::Arc;

    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let request_timeout = Duration::from_millis(500);
    let client =
        Arc::new(Client::new(&cluster.node(1).client_addr).expect("client").with_request_timeout(request_timeout));
    let holder = recipes::Session::open(client.clone(), 5_000).await.expect("the holder's session");
    let (holder_key, holder_token) = recipes::enter(&client, &holder, "locks/quiet", "").await.expect("enter");
    recipes::wait_turn(&client, "locks/quiet", &holder_key, holder_token).await.expect("the first holds at once");
    let waiter = recipes::Session::open(client.clone(), 5_000).await.expect("the waiter's session");
    let (waiter_key, waiter_token) = recipes::enter(&client, &waiter, "locks/quiet", "").await.expect("enter");
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { recipes::wait_turn(&client, "locks/quiet", &waiter_key, waiter_token).await })
    };
    // Longer than every attempt of the old code could last: each its timeout and a backoff.
    let give_up_budget = (request_timeout + Duration::from_millis(CLIENT_BACKOFF_MAX_MS)) * CLIENT_MAX_ATTEMPTS;
    // Watched throughout, so a waiter that gives up fails the test when it does.
    let until = Instant::now() + give_up_budget;
    while Instant::now() < until {
        assert!(!waiting.is_finished(), "the waiter stopped waiting while the lock was held: {:?}", waiting.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holder.is_held(), "the holder's session was kept alive meanwhile");
    holder.close().await.expect("release");
    let turn = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the turn comes on release");
    turn.expect("join").expect("the waiter holds the lock");
    assert!(waiter.is_held());
    waiter.close().await.expect("release");
}

/// Goal: a session dropped without `close` (an early return, a timeout around an acquisition)
/// stops renewing, so its lease and any lock under it end within the TTL. Before, its keeper
/// task renewed it for as long as the process ran, and every other contender waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_stops_renewing_its_lease() {
    use quorumkv_api::recipes;
    use std::sync::Arc;

    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let client = Arc::new(Client::new(&cluster.node(2).client_addr).expect("client"));
    let session = recipes::Session::open(client.clone(), TTL_MS).await.expect("session");
    let lease = session.lease;
    let dropped_at = Instant::now();
    drop(session);
    eventually("the dropped session's lease has ended", || async {
        let response = cluster.http.get(cluster.url(1, &format!("/v1/leases/{lease}"))).send().await.ok()?;
        (response.status() == 404).then_some(())
    })
    .await;
    assert!(dropped_at.elapsed() >= Duration::from_millis(TTL_MS) / 2, "not before its keepalives ran out");
}
