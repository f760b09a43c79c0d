//! One fault run, start to end: cluster up, traffic and nemesis, durability phase, final
//! reads, checks, report, cluster down.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;

use crate::checker;
use crate::checker::staleness;
use crate::checker::Verdict;
use crate::cluster::replica_divergence;
use crate::cluster::Cluster;
use crate::cluster::MAX_AUTH_RUN_SECS;
use crate::cluster::MAX_DIVERGENCES_REPORTED;
use crate::cluster::RECOVERY_DEADLINE;
use crate::history;
use crate::history::Status;
use crate::leases;
use crate::locks;
use crate::nemesis;
use crate::options::ClusterKind;
use crate::options::Nemesis;
use crate::options::Options;
use crate::options::Workload;
use crate::report::RunReport;
use crate::traffic::register_key;
use crate::traffic::Client;
use crate::traffic::History;
use crate::traffic::CLIENT_TIMEOUT;
use crate::watchers;

pub async fn run(options: Options) -> Result<Verdict, String> {
    validate(&options)?;
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let repo = std::env::current_dir().map_err(|e| e.to_string())?;
    let out = options.out.clone().unwrap_or_else(|| repo.join("target/jepsen").join(format!("{seed}")));
    let cluster_dir = out.join("cluster");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    println!(
        "quorumkv-jepsen seed={seed} workload={:?} nemesis={:?} cluster={:?} time={}s out={}",
        options.workload,
        options.nemesis,
        options.cluster,
        options.time_limit_secs,
        out.display()
    );
    // A fresh cluster every run: replaying a seed must not meet the previous run's data.
    if cluster_dir.join("cluster.env").exists() {
        Cluster::stopped(options.cluster, &cluster_dir, &repo).down().await;
    }
    if cluster_dir.exists() {
        std::fs::remove_dir_all(&cluster_dir).map_err(|e| format!("{}: {e}", cluster_dir.display()))?;
    }
    std::fs::create_dir_all(&cluster_dir).map_err(|e| e.to_string())?;
    let cluster = match Cluster::up(&options, &cluster_dir, &repo).await {
        Ok(cluster) => cluster,
        Err(error) => {
            Cluster::stopped(options.cluster, &cluster_dir, &repo).down().await;
            return Err(error);
        }
    };
    let result = tokio::select! {
        result = exercise(&options, seed, &cluster, &out) => result,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    cluster.down().await;
    result
}

/// Rejects options that cannot make a meaningful run.
pub fn validate(options: &Options) -> Result<(), String> {
    if options.cluster == ClusterKind::Local && options.nemesis == Nemesis::Partition {
        return Err("--nemesis partition needs --cluster netns or compose".into());
    }
    if options.cluster != ClusterKind::Local && options.nodes != 3 && options.nodes != 5 {
        return Err("--nodes must be 3 or 5".into());
    }
    if options.keys == 0 || options.clients == 0 {
        return Err("--keys and --clients must be at least 1".into());
    }
    if options.nemesis_interval_secs < 2 {
        return Err("--nemesis-interval-secs must be at least 2".into());
    }
    if options.nemesis == Nemesis::PowerCut && options.cluster == ClusterKind::Compose {
        return Err("--nemesis power-cut needs --cluster local or netns (the nodes' fault flags)".into());
    }
    if options.fsync_jitter_ms > 1_000 {
        return Err("--fsync-jitter-ms must be at most 1000".into());
    }
    if !["linearizable", "lease", "stale", "bounded"].contains(&options.read_consistency.as_str()) {
        return Err("--read-consistency must be linearizable, lease, stale or bounded".into());
    }
    if !(1..=60_000).contains(&options.max_lag_ms) {
        return Err("--max-lag-ms must be between 1 and 60000".into());
    }
    if options.learners > 2 || (options.learners > 0 && options.cluster != ClusterKind::Netns) {
        return Err("--learners takes 0 to 2, and only with --cluster netns".into());
    }
    if (options.tls || options.auth) && options.cluster != ClusterKind::Local {
        // The other clusters' scripts make no certificates and no users.
        return Err("--tls and --auth take --cluster local".into());
    }
    if options.auth && options.time_limit_secs > MAX_AUTH_RUN_SECS {
        return Err(format!("with --auth, --time-limit-secs is at most {MAX_AUTH_RUN_SECS} (the token's lifetime)"));
    }
    Ok(())
}

/// The lease and lock holders' keys (under `prefixes`) still present on some member once every
/// lease should have expired: each member's own state is polled (stale listings) until none is
/// left there, for at most the recovery deadline plus two TTLs (a failover may lengthen a lease
/// by one). As (node, key), with the members that never answered. Only current members count (as for the replica
/// comparison: the membership nemesis may have failed to add one back).
async fn lease_keys_left(
    cluster: &Cluster,
    http: &reqwest::Client,
    prefixes: &[&str],
) -> (Vec<(String, String)>, Vec<String>) {
    let deadline = Instant::now() + RECOVERY_DEADLINE + Duration::from_millis(2 * leases::LEASE_TTL_MS);
    loop {
        let (mut left, mut unanswered) = (Vec::new(), Vec::new());
        for endpoint in lease_members(cluster, http).await {
            for prefix in prefixes {
                let url = format!("{endpoint}/v1/kv?prefix={prefix}&consistency=stale&limit=1000");
                let page = match http.get(url).timeout(Duration::from_secs(2)).send().await {
                    Ok(response) if response.status().is_success() => response.json::<quorumkv_api::Page>().await.ok(),
                    _ => None,
                };
                match page {
                    Some(page) => left.extend(page.items.into_iter().map(|item| (endpoint.clone(), item.key))),
                    None => unanswered.push(endpoint.clone()),
                }
            }
        }
        if (left.is_empty() && unanswered.is_empty()) || Instant::now() > deadline {
            return (left, unanswered);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The endpoints of the members in the leader's view (every endpoint when no leader answers).
async fn lease_members(cluster: &Cluster, http: &reqwest::Client) -> Vec<String> {
    for endpoint in &cluster.endpoints {
        let answer = http.get(format!("{endpoint}/v1/cluster")).timeout(Duration::from_secs(1)).send().await;
        let Ok(response) = answer else { continue };
        let Ok(status) = response.json::<quorumkv_api::ClusterStatus>().await else { continue };
        if status.leader_id == Some(status.id) {
            let ids = status.members.iter().map(|member| member.id as usize);
            return ids.filter_map(|id| cluster.endpoints.get(id.wrapping_sub(1)).cloned()).collect();
        }
    }
    cluster.endpoints.clone()
}

async fn exercise(options: &Options, seed: u64, cluster: &Cluster, out: &Path) -> Result<Verdict, String> {
    let http = cluster.http_client(CLIENT_TIMEOUT).await?;
    cluster.wait_for_leader(&http).await?;
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(options.time_limit_secs);
    let mut nemesis_log = std::fs::File::create(out.join("nemesis.log")).map_err(|e| e.to_string())?;

    // Beside the register clients, a watcher per node (preferring it) of every register key.
    let (stop_watchers, watchers_stop) = tokio::sync::watch::channel(None);
    let mut watchers = Vec::new();
    if options.workload == Workload::Register {
        for index in 0..cluster.endpoints.len() {
            let mut endpoints = cluster.endpoints.clone();
            endpoints.rotate_left(index);
            let stop = watchers_stop.clone();
            watchers.push(tokio::spawn(watchers::watch(
                endpoints,
                http.clone(),
                crate::traffic::register_prefix(""),
                stop,
            )));
        }
    }
    // And a lease holder per node (preferring it).
    let mut holders = Vec::new();
    if options.workload == Workload::Register {
        for index in 0..cluster.endpoints.len() {
            let mut endpoints = cluster.endpoints.clone();
            endpoints.rotate_left(index);
            holders.push(tokio::spawn(leases::hold(endpoints, http.clone(), index, seed, start, deadline)));
        }
    }
    // And a lock holder per node (bound to it), all taking one lock.
    let mut lockers = Vec::new();
    if options.workload == Workload::Register {
        for (index, endpoint) in cluster.endpoints.iter().enumerate() {
            lockers.push(tokio::spawn(locks::hold(endpoint.clone(), http.clone(), index, seed, start, deadline)));
        }
    }
    let mut clients = Vec::new();
    for process in 0..options.clients {
        let endpoint = cluster.endpoints[process % cluster.endpoints.len()].clone();
        let node = (process % cluster.endpoints.len()) as u64 + 1;
        let client = Client {
            rng: fastrand::Rng::with_seed(seed ^ (process as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            keys: options.keys,
            read_consistency: options.read_consistency.clone(),
            max_lag_ms: options.max_lag_ms,
            // With bounded reads, the second round of clients over the nodes only reads: a
            // client blocked on a write to a cut-off node would otherwise leave that node unread
            // exactly while its staleness matters.
            reader_only: options.read_consistency == "bounded" && (process / cluster.endpoints.len()) % 2 == 1,
            ..Client::new(process, node, endpoint, http.clone(), history.clone(), start)
        };
        let workload = options.workload;
        clients.push(tokio::spawn(async move { client.run(workload, deadline).await }));
    }

    let mut schedule = fastrand::Rng::with_seed(seed);
    let half_cycle = Duration::from_millis(options.nemesis_interval_secs * 500);
    while Instant::now() + half_cycle * 2 <= deadline && options.nemesis != Nemesis::None {
        tokio::time::sleep(half_cycle).await;
        let removed = nemesis::inject(options, cluster, &http, &mut schedule, &mut nemesis_log, start).await;
        tokio::time::sleep(half_cycle).await;
        cluster.heal_all(&mut nemesis_log, start).await;
        if let Some(id) = removed {
            nemesis::readd_member(cluster, &http, id, &mut nemesis_log, start).await;
        }
    }
    for client in clients {
        let _ = client.await;
    }
    let mut lease_logs = Vec::new();
    for holder in holders {
        lease_logs.push(holder.await.map_err(|e| e.to_string())?);
    }
    let mut lock_logs = Vec::new();
    for locker in lockers {
        lock_logs.push(locker.await.map_err(|e| e.to_string())?);
    }
    cluster.heal_all(&mut nemesis_log, start).await;
    cluster.wait_for_leader(&http).await?;

    if !options.no_durability {
        for id in 1..=cluster.nodes {
            cluster.harness_step(&mut nemesis_log, start, "faults/kill.sh", &[&id.to_string()]).await;
        }
        cluster.harness_step(&mut nemesis_log, start, "faults/restart.sh", &["all"]).await;
        cluster.wait_for_leader(&http).await?;
    }
    let (ready_node, ready_endpoint) = cluster.ready_node(&http).await?;
    let final_reader = Client {
        rng: fastrand::Rng::with_seed(seed),
        keys: options.keys,
        ..Client::new(options.clients, ready_node, ready_endpoint, http.clone(), history.clone(), start)
    };
    let final_set = match options.workload {
        Workload::Register => {
            for key in 0..options.keys {
                final_reader.final_read(&register_key("", key)).await?;
            }
            None
        }
        Workload::Set => Some(final_reader.read_set().await?),
    };

    // The watchers catch up to the last acknowledged write, then stop.
    let last_acknowledged =
        history.lock().map_err(|_| "history lock poisoned")?.iter().filter_map(|op| op.revision).max();
    let _ = stop_watchers.send(Some((last_acknowledged.unwrap_or(0), Instant::now() + RECOVERY_DEADLINE)));
    let mut watch_logs = Vec::new();
    for watcher in watchers {
        watch_logs.push(watcher.await.map_err(|e| e.to_string())?);
    }
    // Every lease was abandoned, and every lock session released or abandoned, by the end:
    // their keys must go from every node.
    let (remaining_lease_keys, unanswered_lease_listings) = if lease_logs.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        lease_keys_left(cluster, &http, &[leases::LEASE_PREFIX, locks::LOCK_PREFIX]).await
    };
    let divergence = replica_divergence(cluster, &http).await?;
    let mut operations = history.lock().map_err(|_| "history lock poisoned")?.clone();
    for (index, op) in operations.iter_mut().enumerate() {
        op.index = index;
    }
    history::write(out, &operations)?;
    // What the lock holders saw, section by section, to read beside `lock_anomalies`.
    let lock_json = serde_json::to_vec_pretty(&lock_logs).map_err(|e| e.to_string())?;
    std::fs::write(out.join("locks.json"), lock_json).map_err(|e| e.to_string())?;
    let check_started = Instant::now();
    let (verdict, anomalies) = match final_set {
        None => {
            let report = checker::check(&operations, options.step_budget);
            let stale_reads = staleness::check(&operations);
            let mut anomalies = serde_json::to_value(&report.anomalies).map_err(|e| e.to_string())?;
            if !report.unknown_keys.is_empty() || !stale_reads.is_empty() {
                let stale_shown: Vec<_> = stale_reads.iter().take(MAX_DIVERGENCES_REPORTED).collect();
                anomalies = json!({
                    "violations": anomalies,
                    "keys_over_budget": report.unknown_keys,
                    "stale_reads": stale_reads.len(),
                    "stale_reads_first": stale_shown,
                });
            }
            let verdict = if stale_reads.is_empty() { report.verdict.clone() } else { Verdict::Invalid };
            (verdict, anomalies)
        }
        Some(present) => checker::set::check(&operations, &present),
    };
    let (watch_events_checked, watch_anomalies) = checker::watch::check(&operations, &watch_logs);
    let (lease_counts, lease_anomalies) = checker::lease::check(&lease_logs, &remaining_lease_keys);
    let (lock_counts, lock_anomalies) = checker::lock::check(&lock_logs);
    let checker_ms = check_started.elapsed().as_millis();
    let clean = watch_anomalies.is_empty() && lease_anomalies.is_empty() && lock_anomalies.is_empty();
    let verdict = if divergence.is_empty() && clean { verdict } else { Verdict::Invalid };
    // A run in which no keepalive was acknowledged, or no read just before a TTL ran out found
    // its key, checked nothing of the lease guarantee.
    let checked_nothing = lease_counts.renewals_acknowledged <= lease_counts.leases || lease_counts.probes_present == 0;
    if !lease_logs.is_empty() && checked_nothing {
        cluster.harness_failure(format!("the lease holders checked nothing ({lease_counts:?})"));
    }
    // A run in which the lock never changed hands, or no fenced write was acknowledged,
    // checked nothing of the lock or its fence.
    if !lock_logs.is_empty() && (lock_counts.sections < 2 || lock_counts.writes_acknowledged == 0) {
        let errors: Vec<_> = lock_logs.iter().filter_map(|log| log.errors.last()).collect();
        cluster.harness_failure(format!("the lock holders checked nothing ({lock_counts:?}; last errors {errors:?})"));
    }
    for node in &unanswered_lease_listings {
        cluster.harness_failure(format!("{node} did not answer the listing of lease keys at the end"));
    }
    for log in &watch_logs {
        let target = last_acknowledged.unwrap_or(0);
        if log.complete_to < target {
            cluster.harness_failure(format!(
                "the watcher preferring {} received revisions up to {} only, not {target} ({} restarts; {:?})",
                log.endpoint,
                log.complete_to,
                log.restarts,
                log.errors.last()
            ));
        }
    }
    if cluster.auth {
        // Root may do anything and its token outlives the run: a refusal means authentication
        // itself misbehaved, and the operations it failed exercised nothing.
        let refused = operations
            .iter()
            .filter(|op| op.error.as_deref().is_some_and(|error| error.starts_with("401") || error.starts_with("403")))
            .count();
        if refused > 0 {
            cluster.harness_failure(format!("{refused} requests refused root's token (401 or 403)"));
        }
    }
    // The register workload sends some reads and compare-and-sets as transactions: a run in
    // which none succeeded checked none of them, whatever its verdict.
    if options.workload == Workload::Register && !operations.iter().any(|op| op.txn && op.status == Status::Ok) {
        cluster.harness_failure("no operation sent as a transaction succeeded".to_string());
    }
    // Waited for all along, not just taken: the nemesis's requests ran on this task.
    let ledger = std::mem::take(&mut *cluster.ledger.lock().unwrap_or_else(|p| p.into_inner()));
    let problems = ledger.problems(&nemesis::requested_faults(options.nemesis, cluster.kind));
    let count = |status: Status| operations.iter().filter(|o| o.status == status).count();
    let report = RunReport {
        seed,
        workload: format!("{:?}", options.workload).to_lowercase(),
        nemesis: format!("{:?}", options.nemesis).to_lowercase(),
        cluster: format!("{:?}", options.cluster).to_lowercase(),
        nodes: cluster.nodes,
        time_limit_secs: options.time_limit_secs,
        read_consistency: options.read_consistency.clone(),
        bounded_reads_ok: operations.iter().filter(|o| o.max_lag_ms.is_some() && o.status == Status::Ok).count(),
        txn_ok: operations.iter().filter(|o| o.txn && o.status == Status::Ok).count(),
        watch_events_checked,
        watch_restarts: watch_logs.iter().map(|log| log.restarts).sum(),
        watch_anomalies: serde_json::to_value(&watch_anomalies).map_err(|e| e.to_string())?,
        lease_counts,
        lease_anomalies: serde_json::to_value(&lease_anomalies).map_err(|e| e.to_string())?,
        lock_counts,
        lock_anomalies: serde_json::to_value(&lock_anomalies).map_err(|e| e.to_string())?,
        learners: options.learners,
        tls: options.tls,
        auth: options.auth,
        ops: operations.len(),
        ok: count(Status::Ok),
        fail: count(Status::Fail),
        info: count(Status::Info),
        verdict: verdict.clone(),
        checker_ms,
        anomalies,
        replica_divergence: divergence,
        faults: ledger.faults,
        harness_failures: ledger.harness_failures,
        problems,
    };
    report.write(out)?;
    report.print(out);
    // An anomaly found is a finding whatever else went wrong; a "valid" (or unknown) verdict
    // stands only if the faults asked for happened and the harness did its part.
    if verdict != Verdict::Invalid && !report.problems.is_empty() {
        return Err(format!("the run's verdict cannot stand: {}", report.problems.join("; ")));
    }
    Ok(verdict)
}
