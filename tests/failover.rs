//! Failover timing on real processes: how soon writes go through again after the leader dies.
//!
//! Method: writers on the surviving nodes send PUTs back to back; a watcher polls the
//! survivors' `/v1/cluster` every few milliseconds and notes when one first reports a new
//! leader. The leader is killed with SIGKILL; for each writer, the write resume delay is the
//! time from the first report of the new leader to the completion of that writer's first
//! successful write sent after the kill (every client must resume, including those of the new
//! leader itself). Three kills, each of the leader of the moment.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::eventually;
use common::Cluster;

/// The bound the issue sets: writes resume within 100 ms of a leader being elected.
const MAX_RESUME_AFTER_ELECTION: Duration = Duration::from_millis(100);
/// How often the watcher asks the survivors who leads; bounds how late it sees an election.
const WATCH_INTERVAL: Duration = Duration::from_millis(5);
const ROUNDS: usize = 3;

/// (writer, sent, completed) of the writes that succeeded.
type Completions = Arc<Mutex<Vec<(usize, Instant, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_within_100_ms_of_the_new_leaders_election() {
    let mut cluster = Cluster::start_processes(3).await;
    let mut resumes = Vec::new();
    for round in 0..ROUNDS {
        let old = cluster.wait_for_leader().await;
        let survivors: Vec<u64> = cluster.running_ids().into_iter().filter(|id| *id != old).collect();
        let completions: Completions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for (index, survivor) in survivors.iter().enumerate() {
            let (url, http) = (cluster.url(*survivor, ""), cluster.http.clone());
            let (completions, stop) = (completions.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut counter = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    counter += 1;
                    let sent = Instant::now();
                    let key = format!("{url}/v1/kv/failover/{round}-{index}-{counter}");
                    if let Ok(response) = http.put(key).body("x").send().await {
                        if response.status().is_success() {
                            completions.lock().expect("lock").push((index, sent, Instant::now()));
                        }
                    }
                }
            }));
        }
        eventually("writes go through before the kill", || async {
            (completions.lock().expect("lock").len() >= 10).then_some(())
        })
        .await;

        cluster.kill(old);
        let killed_at = Instant::now();
        let elected_at = eventually("a survivor reports a new leader", || async {
            for id in &survivors {
                let leader = cluster.cluster_status(*id).await.and_then(|s| s.leader_id);
                if leader.is_some_and(|leader| leader != old) {
                    return Some(Instant::now());
                }
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
            None
        })
        .await;
        let resumed_at = eventually("every writer has a write sent after the kill succeed", || async {
            let completions = completions.lock().expect("lock");
            let first_of = |writer: usize| {
                let after_kill = completions.iter().filter(|(w, sent, _)| *w == writer && *sent > killed_at);
                after_kill.map(|(_, _, done)| *done).min()
            };
            let firsts: Option<Vec<Instant>> = (0..survivors.len()).map(first_of).collect();
            firsts.and_then(|firsts| firsts.into_iter().max())
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("writer");
        }
        let resume = resumed_at.saturating_duration_since(elected_at);
        eprintln!(
            "round {round}: leader {old} killed; new leader seen after {} ms; every writer resumed within {} ms of that",
            elected_at.duration_since(killed_at).as_millis(),
            resume.as_millis()
        );
        resumes.push(resume);
        cluster.spawn(old);
        cluster.wait_ready(old).await;
    }
    let worst = resumes.iter().max().copied().unwrap_or_default();
    assert!(worst <= MAX_RESUME_AFTER_ELECTION, "writes resumed {resumes:?} after the elections");
}
