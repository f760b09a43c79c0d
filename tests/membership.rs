//! Membership changes on real clusters: joining with nothing but an address, automatic
//! promotion, learners kept as learners, removal (and refusal when unsafe), leadership
//! transfer. All waiting polls with a deadline.

mod common;

use common::eventually;
use common::Cluster;
use quorumkv_api::AddLearnerRequest;
use quorumkv_api::ErrorBody;
use quorumkv_api::MemberStatus;
use quorumkv_api::NodeRef;
use quorumkv_api::Outcome;

async fn member(cluster: &Cluster, via: u64, id: u64) -> Option<MemberStatus> {
    let status = cluster.cluster_status(via).await?;
    status.members.into_iter().find(|m| m.id == id)
}

/// Goal: a node started with `--join <any member>` is added as a learner, catches up, and
/// becomes a voter by itself; one started with `--auto-promote false` stays a learner but
/// still receives every write (an asynchronous replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nodes_catch_up_and_promote_unless_told_not_to() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..20 {
        cluster.put_ok(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    let voter = cluster.add_joining_node(true);
    let learner = cluster.add_joining_node(false);
    eventually("the joined node becomes a voter", || async {
        member(&cluster, leader, voter).await?.voter.then_some(())
    })
    .await;
    eventually("the learner is a member", || async { member(&cluster, leader, learner).await.map(|_| ()) }).await;
    cluster.put_ok(leader, "after-join", "x").await;
    for id in [voter, learner] {
        eventually("the new node has every write", || async {
            let (status, body) = cluster.get(id, "after-join", "stale").await;
            (status == 200 && body == "x").then_some(())
        })
        .await;
        assert_eq!(cluster.get(id, "k7", "stale").await, (200, "v7".to_string()));
        // Linearizable reads work from any member, learners included.
        assert_eq!(cluster.get(id, "k19", "linearizable").await, (200, "v19".to_string()));
    }
    let learner_entry = member(&cluster, leader, learner).await.expect("learner listed");
    assert!(!learner_entry.voter, "{learner_entry:?}");
    let members: Vec<MemberStatus> = cluster.get_json(leader, "/v1/cluster/members").await;
    assert_eq!(members.iter().filter(|m| m.voter).count(), 4);
}

/// Goal: a voter can be removed and the cluster keeps working; removing a voter when the rest
/// would lack a healthy quorum is refused with 409; leadership moves to a chosen voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_transfer_and_refuse_unsafe_removal() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();

    // Transfer leadership to a chosen follower.
    let target = followers[0];
    let response = cluster
        .http
        .post(cluster.url(followers[1], "/v1/cluster/leader"))
        .json(&NodeRef { id: target })
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    assert_eq!(cluster.wait_for_leader().await, target);

    // Remove a voter through a node that is not the leader.
    let removed = leader;
    let response = cluster
        .http
        .delete(cluster.url(followers[1], &format!("/v1/cluster/members/{removed}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    cluster.kill(removed);
    eventually("the removed node is gone from the membership", || async {
        member(&cluster, target, removed).await.is_none().then_some(())
    })
    .await;
    cluster.put_ok(followers[1], "after-remove", "ok").await;

    // Two voters left; with one of them dead, removing the other would leave no quorum.
    let survivor = followers[1];
    cluster.kill(survivor);
    let response = cluster
        .http
        .delete(cluster.url(target, &format!("/v1/cluster/members/{survivor}")))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.expect("an error body");
    // 409 when the leader sees the dead voter lagging; 503/504 when it has already lost its
    // quorum. Never 200: the removal must not happen.
    assert!(matches!(status, 409 | 503 | 504), "{status} {body:?}");
    assert!(member(&cluster, target, survivor).await.is_some(), "the voter was removed");

    // Unknown members and bad bodies are refused plainly.
    let response = cluster.http.delete(cluster.url(target, "/v1/cluster/members/99")).send().await.expect("sent");
    assert!(matches!(response.status().as_u16(), 404 | 503), "{}", response.status());
    let response = cluster.http.post(cluster.url(target, "/v1/cluster/leader")).body("{").send().await.expect("sent");
    assert_eq!(response.status(), 400);
}

/// Goal: a wiped voter cannot rejoin under its id while it is a voter; once removed, a node
/// started with `--join` takes its place and serves the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_voter_is_replaced_after_removal() {
    let (mut cluster, leader, victim) = Cluster::with_wiped_follower().await;

    // Still a voter: joining under the same id is refused.
    let response = cluster
        .http
        .post(cluster.url(leader, "/v1/cluster/learners"))
        .json(&AddLearnerRequest { id: victim, peer_addr: cluster.node(victim).peer_addr.clone(), fresh: false })
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 409);

    let response =
        cluster.http.delete(cluster.url(leader, &format!("/v1/cluster/members/{victim}"))).send().await.expect("sent");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    let rejoined = cluster.add_joining_node(true);
    eventually("the replacement becomes a voter", || async {
        member(&cluster, leader, rejoined).await?.voter.then_some(())
    })
    .await;
    assert_eq!(cluster.get(rejoined, "k", "linearizable").await, (200, "v".to_string()));
}

/// Goal: a member removed while it runs learns it and stops serving (etcd's removed members do
/// the same): `503 removed` for reads and writes, `/ready` 503, no more campaigning, and a log
/// line saying how to come back. Restarted as before it stays removed; restarted with `--join`
/// it is added back (with its data) and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_serving_and_comes_back_with_join() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let removed = (1..=3).find(|id| *id != leader).expect("follower");
    cluster.put_ok(leader, "before", "1").await;
    let response =
        cluster.http.delete(cluster.url(leader, &format!("/v1/cluster/members/{removed}"))).send().await.expect("sent");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    cluster.put_ok(leader, "after", "2").await;

    let refused = |status: u16, body: &str| status == 503 && body.contains("\"removed\"");
    eventually("the removed node refuses reads", || async {
        let (status, body) = cluster.get(removed, "before", "stale").await;
        refused(status, &body).then_some(())
    })
    .await;
    let response = cluster.put(removed, "through-removed", "x").await;
    let status = response.status().as_u16();
    assert!(refused(status, &response.text().await.unwrap_or_default()), "a write through a removed node: {status}");
    let ready = cluster.http.get(cluster.url(removed, "/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 503);
    let log = cluster.log(removed);
    assert!(log.contains("was removed from the cluster") && log.contains("--join"), "{log}");

    // No campaigning: its term stays put while the remaining two take writes.
    let term = |status: Option<quorumkv_api::ClusterStatus>| status.map(|s| s.term);
    let before = term(cluster.cluster_status(removed).await).expect("term");
    for i in 0..30 {
        cluster.put_ok(leader, &format!("k{i}"), "v").await;
    }
    assert_eq!(term(cluster.cluster_status(removed).await), Some(before), "the removed node campaigned");

    cluster.stop(removed).await;
    cluster.spawn(removed);
    eventually("restarted as before, it is still removed", || async {
        let (status, body) = cluster.get(removed, "before", "stale").await;
        refused(status, &body).then_some(())
    })
    .await;

    cluster.stop(removed).await;
    cluster.set_join(removed, true);
    cluster.spawn(removed);
    cluster.wait_voter(removed).await;
    eventually("added back, it serves the current data", || async {
        (cluster.get(removed, "k29", "linearizable").await == (200, "v".to_string())).then_some(())
    })
    .await;
    assert_eq!(cluster.get(removed, "after", "stale").await, (200, "2".to_string()));
}

/// Goal: a leadership transfer that does not complete in time is reported as `504`, outcome
/// unknown (it was started and may still happen), not as a definite failure; the CLI exits 3.
///
/// Method: the target voter is frozen (SIGSTOP), so it cannot take over within the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_that_times_out_has_an_unknown_outcome() {
    let cluster = Cluster::start_processes(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = (1..=3).find(|id| *id != leader).expect("follower");
    cluster.pause(target);
    let response = cluster
        .http
        .post(cluster.url(leader, "/v1/cluster/leader"))
        .json(&NodeRef { id: target })
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.expect("an error body");
    assert_eq!((status, body.outcome), (504, Outcome::Unknown), "{body:?}");
    let endpoints = cluster.node(leader).client_addr.clone();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(["cluster", "transfer-leader", &target.to_string(), "--endpoints", &endpoints])
        .output()
        .expect("CLI");
    cluster.resume(target);
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Goal: a voter that died a moment ago does not count as healthy. On {1,2,3}, killing one
/// follower and at once removing the other must be refused (409): the change would leave the
/// leader and a dead voter, and every write would stall. Promoting a learner that has just
/// died is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_just_died_does_not_count_as_healthy() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    cluster.put_ok(leader, "k", "v").await;
    cluster.kill(followers[0]);
    let response = cluster
        .http
        .delete(cluster.url(leader, &format!("/v1/cluster/members/{}", followers[1])))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.expect("an error body");
    assert_eq!((status, body.error.as_str()), (409, "conflict"), "{body:?}");
    assert!(member(&cluster, leader, followers[1]).await.is_some(), "the live voter was removed");
    cluster.put_ok(leader, "still-writable", "yes").await;

    let learner = cluster.add_joining_node(false);
    eventually("the learner has caught up", || async {
        (cluster.get(learner, "still-writable", "stale").await == (200, "yes".to_string())).then_some(())
    })
    .await;
    cluster.kill(learner);
    let response =
        cluster.http.post(cluster.url(leader, "/v1/cluster/voters")).json(&NodeRef { id: learner }).send().await;
    let status = response.expect("sent").status().as_u16();
    assert_eq!(status, 409, "a learner that just died was promoted");
}

/// Goal: a learner restarted with its data at another peer address (a container back with a new
/// IP) is reached there: restarted with `--join`, it has the leader replicate to the new
/// address, and it catches up on what was written while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_back_at_a_new_address_is_reached_there() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "before", "1").await;
    let learner = cluster.add_joining_node(false);
    eventually("the learner has the first write", || async {
        (cluster.get(learner, "before", "stale").await == (200, "1".to_string())).then_some(())
    })
    .await;
    cluster.stop(learner).await;
    let new_addr = cluster.move_peer_addr(learner);
    cluster.put_ok(leader, "while-away", "2").await;
    cluster.spawn(learner);
    eventually("the learner at its new address has the write made while it was away", || async {
        (cluster.get(learner, "while-away", "stale").await == (200, "2".to_string())).then_some(())
    })
    .await;
    let listed = member(&cluster, leader, learner).await.expect("the learner is listed");
    assert_eq!((listed.peer_addr.as_str(), listed.voter), (new_addr.as_str(), false), "{listed:?}");
}
