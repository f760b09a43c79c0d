//! A rolling restart under steady client load completes with zero failed client requests.
//!
//! Method: clients write and read continuously through `quorumkv_api::client::Client` (the CLI's
//! client: it moves to another endpoint on a refused connection and retries 503s, and never
//! retries a write whose outcome is unknown). Each node in turn, followers first and the
//! leader last (after handing leadership away), gets SIGTERM, is restarted, and must be ready
//! and caught up before the next. Every client request must succeed.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use common::eventually;
use common::Cluster;
use quorumkv_api::client::Client;
use quorumkv_api::client::Retry;
use reqwest::header::HeaderMap;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_fails_no_request() {
    let mut cluster = Cluster::start_processes(3).await;
    let mut leader = cluster.wait_for_leader().await;
    let endpoints = cluster.nodes.iter().map(|n| n.client_addr.clone()).collect::<Vec<_>>().join(",");
    let stop = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for process in 0..4u64 {
        let (endpoints, stop, succeeded) = (endpoints.clone(), stop.clone(), succeeded.clone());
        clients.push(tokio::spawn(async move {
            let client = Client::new(&endpoints).expect("client");
            let mut failures = Vec::new();
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                counter += 1;
                let key = vec!["v1".to_string(), "kv".to_string(), format!("rolling/{process}")];
                let value = Bytes::from(format!("{process}-{counter}"));
                let write = client.request(Method::PUT, &key, &[], HeaderMap::new(), Some(value), Retry::OnlyIfNotSent);
                match write.await {
                    Ok(answer) if answer.status == 200 => {}
                    Ok(answer) => {
                        failures.push(format!("PUT {}: {}", answer.status, String::from_utf8_lossy(&answer.body)))
                    }
                    Err(error) => failures.push(format!("PUT: {error}")),
                }
                let read = client.request(Method::GET, &key, &[], HeaderMap::new(), None, Retry::Idempotent);
                match read.await {
                    Ok(answer) if answer.status == 200 => {}
                    Ok(answer) => {
                        failures.push(format!("GET {}: {}", answer.status, String::from_utf8_lossy(&answer.body)))
                    }
                    Err(error) => failures.push(format!("GET: {error}")),
                }
                succeeded.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    let order: Vec<u64> = (1..=3).filter(|id| *id != leader).chain([leader]).collect();
    for id in order {
        if id == leader {
            let target = (1..=3).find(|other| *other != id).expect("another voter");
            let response = cluster
                .http
                .post(cluster.url(target, "/v1/cluster/leader"))
                .json(&quorumkv_api::NodeRef { id: target })
                .send()
                .await
                .expect("sent");
            let status = response.status();
            assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
            leader = cluster.wait_for_leader().await;
            assert_ne!(leader, id);
        }
        let status = cluster.terminate(id).await;
        assert!(status.success(), "node {id} exit {status:?}");
        cluster.spawn(id);
        eventually("the restarted node is ready and caught up", || async {
            let ready = cluster.http.get(cluster.url(id, "/ready")).send().await.ok()?.status() == 200;
            let mine = cluster.cluster_status(id).await?;
            let theirs = cluster.cluster_status(leader).await?;
            (ready && mine.applied_index >= theirs.commit_index.saturating_sub(50)).then_some(())
        })
        .await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }
    let rounds = succeeded.load(Ordering::Relaxed);
    eprintln!("rolling restart: {rounds} write+read rounds, {} failed requests", failures.len());
    assert!(rounds > 20, "too little load to mean anything: {rounds} rounds");
    assert!(failures.is_empty(), "{} failed requests of {rounds} rounds: {failures:#?}", failures.len());
}
