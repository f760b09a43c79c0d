//! Nodes whose data dir was lost: they must never come back as fresh voters, because a voter
//! that forgot its vote and its log can elect a leader that lacks acknowledged writes (the
//! openraft FAQ's "data loss" case). Real processes: the tests kill, pause and wipe nodes.

mod common;

use common::eventually;
use common::Cluster;

/// Goal: the scenario that lost an acknowledged write (issue 9). The only nodes that hold a
/// write W are the old leader L and follower B; B's data is wiped and B restarts while L is
/// down and the third node A, which lacks W, is up. B must not bootstrap (it cannot ask L
/// whether L ever saw it), so A cannot be elected without W; once L is back, B refuses to
/// start, and W is still there.
///
/// Method: L and B found a 2-node cluster; A joins it and is promoted, with long election
/// timeouts so that it never campaigns: A never sends B a Raft RPC and has no record of it.
/// SIGSTOP A; PUT W through L (committed on L and B); kill -9 L and B; wipe B; SIGCONT A; start
/// B with its old flags; then start L.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_voter_that_no_live_peer_remembers_does_not_lose_a_write() {
    let mut cluster = Cluster::start_processes(2).await;
    let leader = cluster.wait_for_leader().await;
    let wiped = 3 - leader;
    let slow_elections: &[&str] = &["--election-timeout-min-ms", "5000", "--election-timeout-max-ms", "6000"];
    let paused = cluster.add_joining_node_with(true, slow_elections);
    cluster.wait_voter(paused).await;
    // Every node has registered and replicated before the fault (the steady state).
    cluster.put_ok(leader, "before", "x").await;
    eventually("every node applied the first write", || async {
        for id in [leader, wiped, paused] {
            if cluster.get(id, "before", "stale").await != (200, "x".to_string()) {
                return None;
            }
        }
        Some(())
    })
    .await;

    cluster.pause(paused);
    let revision = cluster.put_ok(leader, "w", "acknowledged").await;
    cluster.kill(leader);
    cluster.kill(wiped);
    cluster.wipe(wiped);
    cluster.resume(paused);
    cluster.spawn(wiped);

    // The wiped node either waits for the unreachable peer (fixed) or bootstraps and lets the
    // node without W lead (the bug). Either way, go on once one of the two has happened.
    eventually("the wiped node waits, or the node without W is elected", || async {
        if cluster.log(wiped).contains("waiting for") {
            return Some(());
        }
        let status = cluster.cluster_status(paused).await?;
        (status.leader_id == Some(paused)).then_some(())
    })
    .await;

    cluster.spawn(leader);
    let current = cluster.wait_for_leader_among(&[leader, paused]).await;
    let (status, body) = cluster.get(current, "w", "linearizable").await;
    assert_eq!((status, body.as_str()), (200, "acknowledged"), "acknowledged write (revision {revision}) lost");
    let exit = cluster.wait_exit(wiped).await;
    assert!(!exit.success(), "the wiped node must refuse to start once a peer remembers it");
    let log = cluster.log(wiped);
    assert!(log.contains("lost or wiped"), "{log}");
}

/// Goal: a learner whose data dir was wiped, restarted as it was (same id, same address,
/// `--join`), is caught up again from scratch. The leader's record of how far the learner's
/// log reached is then ahead of the empty log: it must reset it, not panic or stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_learner_rejoining_as_it_was_is_caught_up_again() {
    let mut cluster = Cluster::start_processes(3).await;
    let leader = cluster.wait_for_leader().await;
    let learner = cluster.add_joining_node(false);
    for i in 0..20 {
        cluster.put_ok(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    eventually("the learner has every write", || async {
        (cluster.get(learner, "k19", "stale").await == (200, "v19".to_string())).then_some(())
    })
    .await;
    cluster.kill(learner);
    cluster.wipe(learner);
    cluster.spawn(learner);
    cluster.put_ok(leader, "after-wipe", "x").await;
    eventually("the wiped learner is caught up again", || async {
        (cluster.get(learner, "after-wipe", "stale").await == (200, "x".to_string())).then_some(())
    })
    .await;
    assert_eq!(cluster.get(learner, "k7", "stale").await, (200, "v7".to_string()));
    for id in 1..=3 {
        assert!(cluster.cluster_status(id).await.is_some(), "node {id} stopped answering:\n{}", cluster.log(id));
    }
    cluster.put_ok(leader, "still-writable", "yes").await;
}
