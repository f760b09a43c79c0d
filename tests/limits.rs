//! Connection limits on real processes: a flood of slow or idle connections must not cost a
//! node its service, nor its place in the cluster.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::eventually;
use common::Cluster;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Opens `count` connections to `addr`, each sending `opening` and then nothing more; returns
/// them (dropping them closes them).
async fn open_connections(addr: &str, count: usize, opening: &[u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let Ok(mut stream) = TcpStream::connect(addr).await else { break };
        if !opening.is_empty() && stream.write_all(opening).await.is_err() {
            continue;
        }
        streams.push(stream);
    }
    streams
}

/// A request through a fresh connection, answered within `within`: its status.
async fn answered_within(url: &str, within: Duration) -> Option<u16> {
    let http = reqwest::Client::builder().timeout(within).pool_max_idle_per_host(0).build().expect("client");
    http.get(url).send().await.ok().map(|response| response.status().as_u16())
}

/// Goal: 4096 connections trickling PUT bodies (headers sent, the body never finishes) leave
/// the node answering `/health`, reads and writes. Before, every request of a route shared one
/// semaphore of 4096 slots, held while the body was still arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_do_not_starve_the_node() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "k", "v").await;
    let target = (1..=3).find(|id| *id != leader).expect("follower");
    let addr = cluster.node(target).client_addr.clone();
    let opening = b"PUT /v1/kv/trickle HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nsome";
    let streams = open_connections(&addr, 4096, opening).await;
    assert_eq!(streams.len(), 4096, "could not open the connections");
    let within = Duration::from_secs(5);
    assert_eq!(answered_within(&cluster.url(target, "/health"), within).await, Some(200));
    assert_eq!(answered_within(&cluster.url(target, "/v1/kv/k"), within).await, Some(200), "a read starved");
    let response = cluster.put(target, "during-trickle", "ok").await;
    assert_eq!(response.status(), 200, "a write starved");
    drop(streams);
}

/// Goal: more idle connections than a node has descriptors for do not take its service or its
/// place in the cluster: client connections are capped below the descriptor limit (the oldest
/// closes to make room), and the descriptors Raft needs stay reserved. Before, the node ran
/// out of descriptors: `/health` timed out and it fell behind the leader.
///
/// Method: a follower restarts with a limit of 4096 descriptors; 6000 idle connections are
/// opened to its client port; meanwhile writes go on through the leader. `/health` answers 200
/// once the squatting connections (idle 5 s without a request) are closed to make room (before
/// that, new connections are refused with 503, or closed when too many are being refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_descriptor_limit_cost_no_service() {
    let mut cluster = Cluster::start_processes(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = (1..=3).find(|id| *id != leader).expect("follower");
    cluster.terminate(target).await;
    cluster.set_descriptor_limit(target, 4096);
    cluster.spawn(target);
    cluster.wait_ready(target).await;
    let addr = cluster.node(target).client_addr.clone();
    let streams = open_connections(&addr, 6000, b"").await;
    eprintln!("opened {} idle connections", streams.len());
    for i in 0..50 {
        cluster.put_ok(leader, &format!("during/{i}"), "v").await;
    }
    let started = Instant::now();
    let first = answered_within(&cluster.url(target, "/health"), Duration::from_secs(5)).await;
    eventually("/health answers 200", || async {
        (answered_within(&cluster.url(target, "/health"), Duration::from_secs(5)).await == Some(200)).then_some(())
    })
    .await;
    eprintln!("/health first answered {first:?}, 200 after {:?}", started.elapsed());
    eventually("the follower keeps up with the leader", || async {
        let (status, body) = cluster.get(target, "during/49", "stale").await;
        (status == 200 && body == "v").then_some(())
    })
    .await;
    drop(streams);
}
