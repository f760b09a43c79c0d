//! Snapshots and log compaction on a real 3-node cluster with a state of a few hundred MB.
//!
//! A follower is stopped; the cluster takes thousands of small writes (the log must stay
//! bounded: snapshots are built and the log purged behind them) and then about 300 MB of
//! values. The follower, restarted far behind a purged log, can only catch up by receiving a
//! streamed snapshot; it must then hold every value, and its memory must stay well below what
//! holding the snapshot in memory would take (it is streamed to disk, never held whole).

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use futures::StreamExt;

const SNAPSHOT_LOG_ENTRIES: u64 = 1_000;
/// openraft keeps this many entries behind a snapshot (`max_in_snapshot_log_to_keep`).
const KEPT_BEHIND_SNAPSHOT: u64 = 1_000;
const SMALL_WRITES: u64 = 3_000;
const LARGE_VALUES: u64 = 1_200;
const LARGE_VALUE_BYTES: usize = 256 * 1024;
const WRITERS: usize = 8;
/// Catching up by a snapshot of a few hundred MB on a loaded 2-core CI machine.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(180);

fn large_value(i: u64) -> Vec<u8> {
    let pattern = format!("value {i} of the snapshot test;");
    pattern.as_bytes().iter().copied().cycle().take(LARGE_VALUE_BYTES).collect()
}

/// PUTs every (key, value) through `id` with a few writers, retrying a write until it is
/// acknowledged (each is idempotent: the same value to the same key).
async fn put_all(cluster: &Cluster, id: u64, items: Vec<(String, Vec<u8>)>) {
    let stream = futures::stream::iter(items).map(|(key, value)| async move {
        let deadline = Instant::now() + common::DEADLINE;
        loop {
            let response = cluster.http.put(cluster.url(id, &format!("/v1/kv/{key}"))).body(value.clone()).send().await;
            match response {
                Ok(response) if response.status() == 200 => return,
                Ok(response) => eprintln!("PUT {key}: {} (retrying)", response.status()),
                Err(error) => eprintln!("PUT {key}: {error} (retrying)"),
            }
            assert!(Instant::now() < deadline, "PUT {key} never acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    stream.buffer_unordered(WRITERS).collect::<Vec<()>>().await;
}

/// Peak resident memory of a process, from /proc (Linux).
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_far_behind_catches_up_by_a_streamed_snapshot_and_the_log_stays_bounded() {
    let snapshot_log_entries = SNAPSHOT_LOG_ENTRIES.to_string();
    let mut cluster = Cluster::start_processes_with_args(3, &["--snapshot-log-entries", &snapshot_log_entries]).await;
    let leader = cluster.wait_for_leader().await;
    let behind = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.put_ok(leader, "first", "before the follower stopped").await;
    let status = common::eventually("the follower applied the first write", || async {
        let status = cluster.cluster_status(behind).await?;
        (status.applied_index >= cluster.cluster_status(leader).await?.commit_index).then_some(status)
    })
    .await;
    let behind_last_log_index = status.last_log_index;
    assert!(cluster.terminate(behind).await.success());

    // A steady load of small writes: snapshots are built and the log is purged behind them.
    let small = (0..SMALL_WRITES).map(|i| (format!("small/{i}"), format!("v{i}").into_bytes())).collect();
    put_all(&cluster, leader, small).await;
    // The leader purges behind a snapshot only when no replication is using the entries; the
    // stopped follower's stream holds them until its next failed attempt: poll, with a deadline.
    let bound = SNAPSHOT_LOG_ENTRIES + KEPT_BEHIND_SNAPSHOT + WRITERS as u64;
    let started = Instant::now();
    let status = common::eventually("the leader purges its log behind a snapshot", || async {
        let status = cluster.cluster_status(leader).await?;
        (status.last_log_index - status.purged_index <= bound).then_some(status)
    })
    .await;
    eprintln!("log bounded {:?} after the writes ended", started.elapsed());
    let (last, purged) = (status.last_log_index, status.purged_index);
    eprintln!(
        "after {SMALL_WRITES} small writes: last log index {last}, purged up to {purged}, snapshot at {}",
        status.snapshot_index
    );
    assert!(status.snapshot_index > 0, "no snapshot built: {status:?}");
    assert!(last - purged <= bound, "the log is not bounded: {} entries kept of {last}", last - purged);
    assert!(purged > behind_last_log_index, "the stopped follower's next entry is still in the log");

    // A few hundred MB of state.
    let large = (0..LARGE_VALUES).map(|i| (format!("large/{i}"), large_value(i))).collect();
    put_all(&cluster, leader, large).await;
    let state_bytes = LARGE_VALUES * LARGE_VALUE_BYTES as u64;
    let commit_index = cluster.cluster_status(leader).await.expect("leader status").commit_index;

    // The follower comes back far behind a purged log: only a snapshot can bring it back.
    // Meanwhile administration requests that succeed on the leader go through it: none may be
    // reported as failed because its own state was being replaced (the CLI would retry them).
    let started = Instant::now();
    cluster.spawn(behind);
    let admin_url = cluster.url(behind, "/v1/cluster/leader");
    let mut misreported = Vec::new();
    let status = loop {
        if let Some(status) = cluster.cluster_status(behind).await {
            if status.applied_index >= commit_index {
                break status;
            }
        }
        assert!(started.elapsed() < CATCH_UP_DEADLINE, "follower did not catch up in {CATCH_UP_DEADLINE:?}");
        // Leadership to the leader itself: a request that always succeeds once it reaches it.
        let answer = cluster.http.post(&admin_url).json(&quorumkv_api::NodeRef { id: leader }).send().await;
        if let Ok(response) = answer {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status != 200 && body.contains("snapshot") {
                misreported.push(format!("{status} {body}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(misreported.is_empty(), "committed admin requests reported as failed: {misreported:?}");
    eprintln!("follower caught up to {commit_index} in {:?}: {status:?}", started.elapsed());
    let installed = status.snapshot_index;
    assert!(installed > behind_last_log_index + SMALL_WRITES, "caught up without a snapshot: {status:?}");
    assert!(cluster.log(behind).contains("snapshot installed"), "no snapshot install in the follower's log");

    // Streamed, never held whole. Holding a snapshot in memory costs at least three times its
    // size at the peak (the received body, the decoded state, the write batch); streamed, the
    // follower needs RocksDB's memtables (up to 2 x 64 MiB per column family) plus a few MiB
    // of buffers, measured at 205-330 MiB for this 300 MiB state.
    let pid = cluster.pid(behind).expect("follower running");
    let peak = peak_rss_bytes(pid);
    eprintln!("follower peak RSS {} MiB for a state of {} MiB", peak >> 20, state_bytes >> 20);
    assert!(peak < 2 * state_bytes, "peak RSS {peak} bytes: the snapshot was not streamed (state {state_bytes})");

    // Every value arrived intact (read locally on the follower).
    for i in (0..LARGE_VALUES).step_by(7).chain([LARGE_VALUES - 1]) {
        let url = cluster.url(behind, &format!("/v1/kv/large/{i}?consistency=stale"));
        let response = cluster.http.get(url).send().await.expect("GET");
        assert_eq!(response.status(), 200, "large/{i} on the follower");
        let body = response.bytes().await.expect("body");
        assert!(body.as_ref() == large_value(i).as_slice(), "large/{i} differs on the follower");
    }
    let (status, body) = cluster.get(behind, "small/2999", "stale").await;
    assert_eq!((status, body.as_str()), (200, "v2999"));
    let (status, body) = cluster.get(behind, "first", "linearizable").await;
    assert_eq!((status, body.as_str()), (200, "before the follower stopped"));
}
