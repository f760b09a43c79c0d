//! One run: cluster up, workload and nemesis, durability phase, check, report, cluster down.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use quorumkv_api::ClusterStatus;
use quorumkv_api::Page;
use serde_json::json;

use crate::checker;
use crate::faults::FaultStatus;
use crate::faults::Ledger;
use crate::faults::Requested;
use crate::history::OpKind;
use crate::history::Operation;
use crate::history::Status;
use crate::staleness;
use crate::ClusterKind;
use crate::Nemesis;
use crate::Options;
use crate::Workload;

/// A client request that has not answered in this time is recorded as `info` (unknown):
/// longer than the server's leader wait (2 s) plus a forwarded write's timeout (6 s), so the
/// server's own 503 or 504 normally arrives first.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(12);
/// How long the cluster may take to elect a leader after healing or a full restart.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
/// Pause after a failed operation, so a client of a dead node does not spin.
const FAILURE_BACKOFF: Duration = Duration::from_millis(50);
/// Pause between the reads of a client that only reads (bounded-staleness runs).
const READER_PAUSE: Duration = Duration::from_millis(10);
/// Cap on operations per client, so a run's history (and the checker's work) stays bounded.
const MAX_OPS_PER_CLIENT: usize = 20_000;

type History = Arc<Mutex<Vec<Operation>>>;

struct Cluster {
    kind: ClusterKind,
    dir: PathBuf,
    repo: PathBuf,
    nodes: u64,
    endpoints: Vec<String>,
    /// Extra `quorumkv serve` arguments for every node (`QUORUMKV_SERVE_ARGS` of the scripts).
    serve_args: String,
    /// Every fault tried and every harness failure, for the verdict's standing.
    ledger: Mutex<Ledger>,
}

impl Cluster {
    fn script(&self, name: &str, args: &[&str]) -> Result<String, String> {
        match self.run_script(name, args) {
            (FaultStatus::Installed | FaultStatus::Skipped, text) => Ok(text),
            (FaultStatus::Indeterminate, text) => Err(text),
        }
    }

    /// Runs a script of `scripts/`; its exit status read as a fault script's, and what it said.
    fn run_script(&self, name: &str, args: &[&str]) -> (FaultStatus, String) {
        let output = Command::new(self.repo.join("scripts").join(name))
            .args(args)
            .env("QUORUMKV_CLUSTER_DIR", &self.dir)
            .env("QUORUMKV_NETNS_STATE_DIR", &self.dir)
            .env("QUORUMKV_STATE_DIR", &self.dir)
            .env("QUORUMKV_SERVE_ARGS", &self.serve_args)
            .output();
        let output = match output {
            Ok(output) => output,
            Err(error) => return (FaultStatus::Indeterminate, format!("{name}: {error}")),
        };
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        match FaultStatus::from_exit_code(output.status.code()) {
            FaultStatus::Indeterminate => (
                FaultStatus::Indeterminate,
                format!("{name} {args:?}: {text} {}", String::from_utf8_lossy(&output.stderr).trim()),
            ),
            status => (status, text),
        }
    }

    fn up(options: &Options, dir: &Path, repo: &Path) -> Result<Cluster, String> {
        let voters = if options.cluster == ClusterKind::Local { 3 } else { options.nodes };
        let nodes = voters + options.learners;
        let serve_args = match options.nemesis {
            Nemesis::PowerCut => {
                format!("--fault-lose-unsynced-writes --fault-fsync-jitter-ms {}", options.fsync_jitter_ms)
            }
            _ => String::new(),
        };
        let mut cluster = Cluster {
            kind: options.cluster,
            dir: dir.to_path_buf(),
            repo: repo.to_path_buf(),
            nodes,
            endpoints: vec![],
            serve_args,
            ledger: Mutex::default(),
        };
        match options.cluster {
            ClusterKind::Netns => {
                cluster.script("netns-cluster.sh", &["up", &voters.to_string(), &options.learners.to_string()])?
            }
            ClusterKind::Local => cluster.script("start-3-nodes.sh", &[])?,
            ClusterKind::Compose => cluster.script("compose-cluster.sh", &["up", &voters.to_string()])?,
        };
        for id in 1..=nodes {
            let env = std::fs::read_to_string(dir.join(format!("node-{id}.env"))).map_err(|e| e.to_string())?;
            let addr = env
                .lines()
                .find_map(|line| line.strip_prefix("CLIENT_ADDR="))
                .ok_or_else(|| format!("node {id} has no CLIENT_ADDR"))?;
            cluster.endpoints.push(format!("http://{addr}"));
        }
        Ok(cluster)
    }

    /// A handle on a cluster left behind (by an interrupted run), only to take it down.
    fn stopped(kind: ClusterKind, dir: &Path, repo: &Path) -> Cluster {
        let (dir, repo) = (dir.to_path_buf(), repo.to_path_buf());
        Cluster { kind, dir, repo, nodes: 0, endpoints: vec![], serve_args: String::new(), ledger: Mutex::default() }
    }

    fn down(&self) {
        let result = match self.kind {
            ClusterKind::Netns => self.script("netns-cluster.sh", &["down"]),
            ClusterKind::Local => self.script("stop-3-nodes.sh", &[]),
            ClusterKind::Compose => self.script("compose-cluster.sh", &["down"]),
        };
        if let Err(error) = result {
            eprintln!("warning: cluster teardown: {error}");
        }
    }

    /// Tries to install a fault of `kind` and records what became of it.
    fn fault(&self, log: &mut std::fs::File, start: Instant, kind: &'static str, script: &str, args: &[&str]) {
        let (status, text) = self.run_script(script, args);
        self.record(log, start, &format!("{script} {} -> {status:?}: {text}", args.join(" ")));
        self.note(kind, status);
    }

    /// A step the harness needs (healing, restarting, the final kill): its failure makes the run's
    /// verdict meaningless.
    fn harness_step(&self, log: &mut std::fs::File, start: Instant, script: &str, args: &[&str]) {
        let (status, text) = self.run_script(script, args);
        self.record(log, start, &format!("{script} {} -> {status:?}: {text}", args.join(" ")));
        if status == FaultStatus::Indeterminate {
            self.harness_failure(text);
        }
    }

    fn note(&self, kind: &'static str, status: FaultStatus) {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).record(kind, status);
    }

    fn harness_failure(&self, what: String) {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).harness_failure(what);
    }

    fn record(&self, log: &mut std::fs::File, start: Instant, line: &str) {
        let _ = writeln!(log, "{:>8.3}s {line}", start.elapsed().as_secs_f64());
    }

    /// The current leader's id, as the fault scripts see it.
    fn leader(&self) -> Result<String, String> {
        self.script("faults/leader.sh", &[])
    }

    fn heal_all(&self, log: &mut std::fs::File, start: Instant) {
        self.harness_step(log, start, "faults/heal.sh", &[]);
        self.harness_step(log, start, "faults/resume.sh", &["all"]);
        self.harness_step(log, start, "faults/restart.sh", &["all"]);
    }

    /// Sends a cluster administration request to the first node that answers it with anything
    /// but 503 (a removed node answers `503 removed`, one without a leader `503 no_leader`);
    /// returns the status and body of the last answer.
    async fn admin(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Option<(u16, String)> {
        let mut answer = None;
        for endpoint in &self.endpoints {
            let mut request = http.request(method.clone(), format!("{endpoint}{path}"));
            if let Some(body) = &body {
                request = request.json(body);
            }
            if let Ok(response) = request.send().await {
                let status = response.status().as_u16();
                answer = Some((status, response.text().await.unwrap_or_default()));
                if status != 503 {
                    break;
                }
            }
        }
        answer
    }

    /// A node that answers `/ready` (so it is a member with a leader), for the final reads.
    async fn ready_node(&self, http: &reqwest::Client) -> Result<(u64, String), String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        while Instant::now() < deadline {
            for (index, endpoint) in self.endpoints.iter().enumerate() {
                let answer = http.get(format!("{endpoint}/ready")).timeout(Duration::from_secs(1)).send().await;
                if answer.is_ok_and(|response| response.status().is_success()) {
                    return Ok((index as u64 + 1, endpoint.clone()));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err("no node became ready after recovery".into())
    }

    /// Membership nemesis: removes a random voter that is not the leader.
    async fn remove_member(
        &self,
        http: &reqwest::Client,
        rng: &mut fastrand::Rng,
        log: &mut std::fs::File,
        start: Instant,
    ) -> Option<u64> {
        let chosen = async {
            let status = self.admin(http, reqwest::Method::GET, "/v1/cluster", None).await?;
            let status: ClusterStatus = serde_json::from_str(&status.1).ok()?;
            let leader = status.leader_id?;
            let mut followers: Vec<u64> =
                status.members.iter().filter(|m| m.voter).map(|m| m.id).filter(|id| *id != leader).collect();
            followers.sort_unstable();
            followers.get(rng.usize(..followers.len().max(1))).copied()
        };
        let Some(id) = chosen.await else {
            self.record(log, start, "membership remove -> Skipped: no leader or no follower voter known");
            self.note("membership", FaultStatus::Skipped);
            return None;
        };
        let answer = self.admin(http, reqwest::Method::DELETE, &format!("/v1/cluster/members/{id}"), None).await;
        // 200: removed. A 4xx or 503 is a definite refusal; anything else (504, no answer) may
        // or may not have removed it.
        let status = match answer.as_ref().map(|a| a.0) {
            Some(200) => FaultStatus::Installed,
            Some(code) if (400..500).contains(&code) || code == 503 => FaultStatus::Skipped,
            _ => FaultStatus::Indeterminate,
        };
        self.record(log, start, &format!("membership remove {id} -> {status:?}: HTTP {:?}", answer.map(|a| a.0)));
        self.note("membership", status);
        (status == FaultStatus::Installed).then_some(id)
    }

    /// Adds a removed node back as a learner, then promotes it once it has caught up.
    async fn readd_member(&self, http: &reqwest::Client, id: u64, log: &mut std::fs::File, start: Instant) {
        let env = std::fs::read_to_string(self.dir.join(format!("node-{id}.env"))).unwrap_or_default();
        let Some(peer_addr) = env.lines().find_map(|line| line.strip_prefix("PEER_ADDR=")) else { return };
        let request = json!({ "id": id, "peer_addr": peer_addr });
        let mut outcome = None;
        // Bounded: each step is retried while a change is in flight or the node catches up.
        for _ in 0..40 {
            let added = self.admin(http, reqwest::Method::POST, "/v1/cluster/learners", Some(request.clone())).await;
            let promoted = match added {
                Some((200, _)) => {
                    self.admin(http, reqwest::Method::POST, "/v1/cluster/voters", Some(json!({ "id": id }))).await
                }
                other => other,
            };
            outcome = promoted.clone();
            if matches!(promoted, Some((200, _))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let status = outcome.as_ref().map(|a| a.0);
        self.record(log, start, &format!("membership re-add {id} -> HTTP {status:?}"));
        if status != Some(200) {
            self.harness_failure(format!("node {id} was not added back (last answer HTTP {status:?})"));
        }
    }

    async fn wait_for_leader(&self, http: &reqwest::Client) -> Result<(), String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        while Instant::now() < deadline {
            for endpoint in &self.endpoints {
                let answer = http.get(format!("{endpoint}/v1/cluster")).timeout(Duration::from_secs(1)).send().await;
                if let Ok(response) = answer {
                    if let Ok(status) = response.json::<ClusterStatus>().await {
                        if status.leader_id.is_some() {
                            return Ok(());
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err("no leader after recovery".into())
    }
}

pub async fn run(options: Options) -> Result<checker::Verdict, String> {
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
        Cluster::stopped(options.cluster, &cluster_dir, &repo).down();
    }
    if cluster_dir.exists() {
        std::fs::remove_dir_all(&cluster_dir).map_err(|e| format!("{}: {e}", cluster_dir.display()))?;
    }
    std::fs::create_dir_all(&cluster_dir).map_err(|e| e.to_string())?;
    let cluster = match Cluster::up(&options, &cluster_dir, &repo) {
        Ok(cluster) => cluster,
        Err(error) => {
            Cluster::stopped(options.cluster, &cluster_dir, &repo).down();
            return Err(error);
        }
    };
    let result = tokio::select! {
        result = exercise(&options, seed, &cluster, &out) => result,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    cluster.down();
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
    Ok(())
}

async fn exercise(options: &Options, seed: u64, cluster: &Cluster, out: &Path) -> Result<checker::Verdict, String> {
    let http = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build().map_err(|e| e.to_string())?;
    cluster.wait_for_leader(&http).await?;
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(options.time_limit_secs);
    let mut nemesis_log = std::fs::File::create(out.join("nemesis.log")).map_err(|e| e.to_string())?;

    let mut clients = Vec::new();
    for process in 0..options.clients {
        let endpoint = cluster.endpoints[process % cluster.endpoints.len()].clone();
        let node = (process % cluster.endpoints.len()) as u64 + 1;
        let client = Client {
            process,
            node,
            endpoint,
            http: http.clone(),
            history: history.clone(),
            start,
            rng: fastrand::Rng::with_seed(seed ^ (process as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            keys: options.keys,
            read_consistency: options.read_consistency.clone(),
            max_lag_ms: options.max_lag_ms,
            // With bounded reads, the second round of clients over the nodes only reads: a
            // client blocked on a write to a cut-off node would otherwise leave that node unread
            // exactly while its staleness matters.
            reader_only: options.read_consistency == "bounded" && (process / cluster.endpoints.len()) % 2 == 1,
            last_failed: std::sync::atomic::AtomicBool::new(false),
        };
        let workload = options.workload;
        clients.push(tokio::spawn(async move { client.run(workload, deadline).await }));
    }

    let mut schedule = fastrand::Rng::with_seed(seed);
    let half_cycle = Duration::from_millis(options.nemesis_interval_secs * 500);
    while Instant::now() + half_cycle * 2 <= deadline && options.nemesis != Nemesis::None {
        tokio::time::sleep(half_cycle).await;
        let removed = inject(options, cluster, &http, &mut schedule, &mut nemesis_log, start).await;
        tokio::time::sleep(half_cycle).await;
        cluster.heal_all(&mut nemesis_log, start);
        if let Some(id) = removed {
            cluster.readd_member(&http, id, &mut nemesis_log, start).await;
        }
    }
    for client in clients {
        let _ = client.await;
    }
    cluster.heal_all(&mut nemesis_log, start);
    cluster.wait_for_leader(&http).await?;

    if !options.no_durability {
        for id in 1..=cluster.nodes {
            cluster.harness_step(&mut nemesis_log, start, "faults/kill.sh", &[&id.to_string()]);
        }
        cluster.harness_step(&mut nemesis_log, start, "faults/restart.sh", &["all"]);
        cluster.wait_for_leader(&http).await?;
    }
    let (ready_node, ready_endpoint) = cluster.ready_node(&http).await?;
    let final_reader = Client {
        process: options.clients,
        node: ready_node,
        endpoint: ready_endpoint,
        http: http.clone(),
        history: history.clone(),
        start,
        rng: fastrand::Rng::with_seed(seed),
        keys: options.keys,
        read_consistency: "linearizable".into(),
        max_lag_ms: options.max_lag_ms,
        reader_only: false,
        last_failed: std::sync::atomic::AtomicBool::new(false),
    };
    let final_set = match options.workload {
        Workload::Register => {
            for key in 0..options.keys {
                final_reader.final_read(&register_key(key)).await?;
            }
            None
        }
        Workload::Set => Some(final_reader.read_set().await?),
    };

    let divergence = replica_divergence(cluster, &http).await?;
    let operations = history.lock().map_err(|_| "history lock poisoned")?.clone();
    let mut operations = operations;
    for (index, op) in operations.iter_mut().enumerate() {
        op.index = index;
    }
    write_history(out, &operations)?;
    let counts = |status: Status| operations.iter().filter(|o| o.status == status).count();
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
            let verdict = if stale_reads.is_empty() { report.verdict.clone() } else { checker::Verdict::Invalid };
            (verdict, anomalies)
        }
        Some(present) => check_set(&operations, &present),
    };
    let bounded_reads = operations.iter().filter(|o| o.max_lag_ms.is_some() && o.status == Status::Ok).count();
    let checker_ms = check_started.elapsed().as_millis();
    let verdict = if divergence.is_empty() { verdict } else { checker::Verdict::Invalid };
    let valid = verdict == checker::Verdict::Valid;
    // Waited for all along, not just taken: the nemesis's requests ran on this task.
    let ledger = std::mem::take(&mut *cluster.ledger.lock().unwrap_or_else(|p| p.into_inner()));
    let problems = ledger.problems(&requested_faults(options.nemesis, cluster.kind));
    let summary = json!({
        "seed": seed,
        "workload": format!("{:?}", options.workload).to_lowercase(),
        "nemesis": format!("{:?}", options.nemesis).to_lowercase(),
        "cluster": format!("{:?}", options.cluster).to_lowercase(),
        "nodes": cluster.nodes,
        "time_limit_secs": options.time_limit_secs,
        "read_consistency": options.read_consistency,
        "bounded_reads_ok": bounded_reads,
        "learners": options.learners,
        "ops": operations.len(),
        "ok": counts(Status::Ok),
        "fail": counts(Status::Fail),
        "info": counts(Status::Info),
        "verdict": verdict,
        "checker_ms": checker_ms,
        "anomalies": anomalies,
        "replica_divergence": divergence,
        "faults": ledger.faults,
        "harness_failures": ledger.harness_failures,
        "problems": problems,
    });
    std::fs::write(out.join("result.json"), serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    println!("nemesis schedule: {}", out.join("nemesis.log").display());
    println!("history: {}  node logs: {}", out.join("history.jsonl").display(), out.join("cluster").display());
    println!(
        "ops={} ok={} fail={} info={} checker={}ms verdict={:?}",
        operations.len(),
        counts(Status::Ok),
        counts(Status::Fail),
        counts(Status::Info),
        checker_ms,
        verdict
    );
    if !valid {
        println!("anomalies: {}", serde_json::to_string_pretty(&summary["anomalies"]).unwrap_or_default());
        println!("replay: quorumkv-jepsen --seed {seed} (same options)");
    }
    let mut compact = summary.clone();
    if valid {
        compact["anomalies"] = json!([]);
    } else if !divergence.is_empty() {
        println!("replicas diverged: {}", serde_json::to_string_pretty(&divergence).unwrap_or_default());
    }
    println!("{compact}");
    // An anomaly found is a finding whatever else went wrong; a "valid" (or unknown) verdict
    // stands only if the faults asked for happened and the harness did its part.
    if verdict != checker::Verdict::Invalid && !problems.is_empty() {
        return Err(format!("the run's verdict cannot stand: {}", problems.join("; ")));
    }
    Ok(verdict)
}

/// Picks and installs one fault, as the schedule's seed dictates. Returns the node removed
/// from the membership, if that was the fault, so the healing step adds it back.
async fn inject(
    options: &Options,
    cluster: &Cluster,
    http: &reqwest::Client,
    rng: &mut fastrand::Rng,
    log: &mut std::fs::File,
    start: Instant,
) -> Option<u64> {
    let kinds = fault_kinds(options.nemesis, cluster.kind);
    let kind = kinds[rng.usize(..kinds.len())];
    let target = if rng.bool() { "leader".to_string() } else { rng.u64(1..=cluster.nodes).to_string() };
    match kind {
        Nemesis::Kill => cluster.fault(log, start, "kill", "faults/kill.sh", &[&target]),
        Nemesis::PowerCut => {
            // Mostly the leader: its unsynced tail is what followers may already have committed.
            let chosen = if rng.u8(..4) == 0 { Ok(rng.u64(1..=cluster.nodes).to_string()) } else { cluster.leader() };
            match chosen {
                Ok(id) => {
                    cluster.fault(log, start, "power-cut", "faults/kill.sh", &[&id]);
                    // At once: a leader back before anyone else is elected is the case that
                    // lost writes while openraft's leader restore was on.
                    cluster.harness_step(log, start, "faults/restart.sh", &[&id]);
                }
                Err(error) => {
                    cluster.record(log, start, &format!("power-cut -> Skipped: {error}"));
                    cluster.note("power-cut", FaultStatus::Skipped);
                }
            }
        }
        Nemesis::Pause => cluster.fault(log, start, "pause", "faults/pause.sh", &[&target]),
        Nemesis::Membership => return cluster.remove_member(http, rng, log, start).await,
        _ => {
            let spec = partition_spec(cluster.nodes, rng);
            let spec = match spec.as_str() {
                "leader-and-one" => match cluster.leader().ok().and_then(|l| l.parse::<u64>().ok()) {
                    Some(leader) => leader_and_one_spec(cluster.nodes, leader, rng),
                    None => "isolate-leader".to_string(),
                },
                _ => spec,
            };
            cluster.fault(log, start, "partition", "faults/partition.sh", &[&spec]);
        }
    }
    None
}

/// The fault kinds the schedule picks from for a `--nemesis` on a kind of cluster.
fn fault_kinds(nemesis: Nemesis, cluster: ClusterKind) -> &'static [Nemesis] {
    match nemesis {
        Nemesis::Mix if cluster != ClusterKind::Local => {
            &[Nemesis::Kill, Nemesis::Pause, Nemesis::Partition, Nemesis::Membership]
        }
        Nemesis::Mix => &[Nemesis::Kill, Nemesis::Pause, Nemesis::Membership],
        Nemesis::KillPause => &[Nemesis::Kill, Nemesis::Pause],
        Nemesis::Kill => &[Nemesis::Kill],
        Nemesis::Pause => &[Nemesis::Pause],
        Nemesis::Membership => &[Nemesis::Membership],
        Nemesis::PowerCut => &[Nemesis::PowerCut],
        Nemesis::Partition | Nemesis::None => &[Nemesis::Partition],
    }
}

/// The name a fault kind is counted under in `result.json`.
fn fault_name(kind: Nemesis) -> &'static str {
    match kind {
        Nemesis::Kill => "kill",
        Nemesis::Pause => "pause",
        Nemesis::Partition => "partition",
        Nemesis::Membership => "membership",
        Nemesis::PowerCut => "power-cut",
        Nemesis::KillPause | Nemesis::Mix | Nemesis::None => "mixed",
    }
}

/// What a run must have installed for its verdict to stand: the one kind it names, or for a
/// mix at least one of the kinds the schedule picks from.
fn requested_faults(nemesis: Nemesis, cluster: ClusterKind) -> Requested {
    let kinds: Vec<&'static str> = fault_kinds(nemesis, cluster).iter().map(|kind| fault_name(*kind)).collect();
    match nemesis {
        Nemesis::None => Requested::Nothing,
        Nemesis::Mix | Nemesis::KillPause => Requested::AnyOf(kinds),
        _ => Requested::Each(kinds),
    }
}

/// A random partition: majority/minority, leader isolation, and on 5 nodes or more bridge,
/// ring, or the leader with one other node (`leader-and-one`, resolved by the caller).
fn partition_spec(nodes: u64, rng: &mut fastrand::Rng) -> String {
    let mut ids: Vec<u64> = (1..=nodes).collect();
    rng.shuffle(&mut ids);
    let choices = if nodes >= 5 { 5 } else { 2 };
    match rng.usize(..choices) {
        0 => "isolate-leader".to_string(),
        1 => {
            let minority = (nodes as usize - 1) / 2;
            format!("{}/{}", join_ids(&ids[..minority]), join_ids(&ids[minority..]))
        }
        // Bridge: two halves that both see one node in the middle (a non-transitive split).
        2 => format!("{}/{}", join_ids(&ids[..3]), join_ids(&ids[2..])),
        // Ring: each node sees only its two neighbours.
        3 => (0..ids.len()).map(|i| join_ids(&[ids[i], ids[(i + 1) % ids.len()]])).collect::<Vec<_>>().join("/"),
        // The deposed-leader case: a node still connected to an old leader that lost its
        // quorum keeps hearing from it while the majority elects another and moves on.
        _ => "leader-and-one".to_string(),
    }
}

/// The leader and one random other node, cut off from the rest.
fn leader_and_one_spec(nodes: u64, leader: u64, rng: &mut fastrand::Rng) -> String {
    let others: Vec<u64> = (1..=nodes).filter(|id| *id != leader).collect();
    let companion = others[rng.usize(..others.len())];
    let rest: Vec<u64> = others.into_iter().filter(|id| *id != companion).collect();
    format!("{leader},{companion}/{}", join_ids(&rest))
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn register_key(index: usize) -> String {
    format!("register/{index}")
}

struct Client {
    process: usize,
    node: u64,
    endpoint: String,
    http: reqwest::Client,
    history: History,
    start: Instant,
    rng: fastrand::Rng,
    keys: usize,
    read_consistency: String,
    /// The bound of reads when `read_consistency` is `bounded`.
    max_lag_ms: u64,
    /// This client only reads.
    reader_only: bool,
    /// Whether this client's previous operation did not succeed (for the back-off).
    last_failed: std::sync::atomic::AtomicBool,
}

/// What an HTTP exchange came to.
enum Exchange {
    Answered(u16, reqwest::header::HeaderMap, String),
    /// Refused before anything was sent: certainly not applied.
    NotSent(String),
    /// Sent, no answer: unknown.
    Lost(String),
}

impl Client {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn last_failed(&self) -> bool {
        self.last_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn record(&self, mut op: Operation) {
        op.complete_ns = self.now();
        self.last_failed.store(op.status != Status::Ok, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut history) = self.history.lock() {
            history.push(op);
        }
    }

    fn begin(&self, key: &str, kind: OpKind) -> Operation {
        Operation {
            index: 0,
            process: self.process,
            node: self.node,
            key: key.to_string(),
            kind,
            value: None,
            expected: None,
            value_read: None,
            status: Status::Info,
            invoke_ns: self.now(),
            complete_ns: 0,
            error: None,
            max_lag_ms: None,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Exchange {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                match response.text().await {
                    Ok(body) => Exchange::Answered(status, headers, body),
                    Err(error) => Exchange::Lost(error.to_string()),
                }
            }
            Err(error) if error.is_connect() => Exchange::NotSent(error.to_string()),
            Err(error) => Exchange::Lost(error.to_string()),
        }
    }

    async fn run(mut self, workload: Workload, deadline: Instant) {
        let mut counter = 0usize;
        while Instant::now() < deadline && counter < MAX_OPS_PER_CLIENT {
            counter += 1;
            // A client whose node is down or without a leader backs off instead of spinning.
            let failed_before = self.last_failed();
            if failed_before {
                tokio::time::sleep(FAILURE_BACKOFF).await;
            } else if self.reader_only {
                // Local reads answer in microseconds: without a pause a reader would use up its
                // operations in seconds and leave the rest of the run unread.
                tokio::time::sleep(READER_PAUSE).await;
            }
            let value = format!("p{}-{counter}", self.process);
            match workload {
                Workload::Set => self.write(&format!("set/{value}"), &value).await,
                Workload::Register => {
                    let key = register_key(self.rng.usize(..self.keys));
                    let choice = if self.reader_only { 0 } else { self.rng.u8(..10) };
                    match choice {
                        0..=4 => {
                            self.read(&key).await;
                        }
                        5..=7 => self.write(&key, &value).await,
                        _ => self.cas(&key, &value).await,
                    }
                }
            }
        }
    }

    /// Linearizable (or the configured) read; returns the value and its revision when present.
    async fn read(&self, key: &str) -> Option<(String, String)> {
        let mut op = self.begin(key, OpKind::Read);
        let url = if self.read_consistency == "bounded" {
            op.max_lag_ms = Some(self.max_lag_ms);
            format!("{}/v1/kv/{key}?consistency=stale&max_lag_ms={}", self.endpoint, self.max_lag_ms)
        } else {
            format!("{}/v1/kv/{key}?consistency={}", self.endpoint, self.read_consistency)
        };
        let result = match self.send(self.http.get(url)).await {
            Exchange::Answered(200, headers, body) => {
                op.status = Status::Ok;
                op.value_read = Some(body.clone());
                let etag = headers.get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
                etag.map(|etag| (body, etag))
            }
            Exchange::Answered(404, _, _) => {
                op.status = Status::Ok;
                None
            }
            Exchange::Answered(status, _, body) => {
                op.status = Status::Fail;
                op.error = Some(format!("{status} {body}"));
                None
            }
            Exchange::NotSent(error) | Exchange::Lost(error) => {
                op.status = Status::Fail;
                op.error = Some(error);
                None
            }
        };
        self.record(op);
        result
    }

    async fn write(&self, key: &str, value: &str) {
        let mut op = self.begin(key, OpKind::Write);
        op.value = Some(value.to_string());
        let request = self.http.put(format!("{}/v1/kv/{key}", self.endpoint)).body(value.to_string());
        self.finish_write(op, request).await;
    }

    async fn cas(&self, key: &str, value: &str) {
        let Some((current, etag)) = self.read(key).await else { return };
        let mut op = self.begin(key, OpKind::Cas);
        op.value = Some(value.to_string());
        op.expected = Some(current);
        let request =
            self.http.put(format!("{}/v1/kv/{key}", self.endpoint)).header("If-Match", etag).body(value.to_string());
        self.finish_write(op, request).await;
    }

    async fn finish_write(&self, mut op: Operation, request: reqwest::RequestBuilder) {
        match self.send(request).await {
            Exchange::Answered(200, _, _) => op.status = Status::Ok,
            // 504 and 500 may have been applied; everything else was refused.
            Exchange::Answered(status @ (500 | 504), _, body) => {
                op.status = Status::Info;
                op.error = Some(format!("{status} {body}"));
            }
            Exchange::Answered(status, _, body) => {
                op.status = Status::Fail;
                op.error = Some(format!("{status} {body}"));
            }
            Exchange::NotSent(error) => {
                op.status = Status::Fail;
                op.error = Some(error);
            }
            Exchange::Lost(error) => {
                op.status = Status::Info;
                op.error = Some(error);
            }
        }
        self.record(op);
    }

    /// A final linearizable read after recovery, retried until it answers.
    async fn final_read(&self, key: &str) -> Result<(), String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        while Instant::now() < deadline {
            let before = self.history.lock().map_err(|_| "poisoned")?.len();
            self.read(key).await;
            let answered = {
                let history = self.history.lock().map_err(|_| "poisoned")?;
                history.len() > before && history[history.len() - 1].status == Status::Ok
            };
            if answered {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("final read of {key} never succeeded"))
    }

    /// Every element of the set, through linearizable paginated listing.
    async fn read_set(&self) -> Result<BTreeSet<String>, String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let mut present = BTreeSet::new();
        let mut start = String::new();
        loop {
            if Instant::now() > deadline {
                return Err("final set read did not complete".into());
            }
            let url = format!("{}/v1/kv?prefix=set/&limit=1000&start={start}", self.endpoint);
            let Exchange::Answered(200, _, body) = self.send(self.http.get(url)).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let page: Page = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            for item in page.items {
                present.insert(item.key.trim_start_matches("set/").to_string());
            }
            match page.next_start {
                Some(next) => start = next,
                None => return Ok(present),
            }
        }
    }
}

/// Differences found at most, per pair of replicas, before the report stops listing them.
const MAX_DIVERGENCES_REPORTED: usize = 20;

/// Every replica must end with the same state. Once every node has applied all the leader
/// committed (no client writes any more), each node's own keys, values and revisions are read
/// (stale reads: its local state) and compared with node 1's. Returns the differences found.
async fn replica_divergence(cluster: &Cluster, http: &reqwest::Client) -> Result<Vec<serde_json::Value>, String> {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    // Nodes 1..=N at `endpoints[N-1]`; only current members are compared (the membership
    // nemesis may have failed to add one back).
    let members: Vec<usize> = loop {
        let mut statuses = Vec::new();
        for endpoint in &cluster.endpoints {
            let answer = http.get(format!("{endpoint}/v1/cluster")).timeout(Duration::from_secs(1)).send().await;
            statuses.push(match answer {
                Ok(response) => response.json::<ClusterStatus>().await.ok(),
                Err(_) => None,
            });
        }
        let leader_view = statuses.iter().flatten().find(|s| s.leader_id == Some(s.id));
        let members: Vec<usize> =
            leader_view.map(|s| s.members.iter().map(|m| m.id as usize).collect()).unwrap_or_default();
        let status_of = |n: usize| statuses.get(n - 1).and_then(|s| s.as_ref());
        let highest_commit = members.iter().filter_map(|n| status_of(*n).map(|s| s.commit_index)).max();
        let converged = highest_commit.is_some()
            && members
                .iter()
                .all(|n| *n <= cluster.endpoints.len() && status_of(*n).map(|s| s.applied_index) == highest_commit);
        if converged {
            break members;
        }
        if Instant::now() > deadline {
            let applied: Vec<_> = (1..=statuses.len()).map(|n| (n, status_of(n).map(|s| s.applied_index))).collect();
            return Ok(vec![json!({ "not_converged": format!("members {members:?}, applied {applied:?}") })]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut states = Vec::new();
    for node in &members {
        states.push((*node, local_state(http, &cluster.endpoints[node - 1]).await?));
    }
    let mut differences = Vec::new();
    let Some(((first_node, first), rest)) = states.split_first() else { return Ok(differences) };
    for (node, state) in rest {
        let missing: Vec<&String> = first.keys().filter(|k| !state.contains_key(*k)).collect();
        let extra: Vec<&String> = state.keys().filter(|k| !first.contains_key(*k)).collect();
        let different: Vec<&String> =
            state.iter().filter(|(k, v)| first.get(*k).is_some_and(|v1| v1 != *v)).map(|(k, _)| k).collect();
        if !(missing.is_empty() && extra.is_empty() && different.is_empty()) {
            let listed =
                |keys: Vec<&String>| keys.into_iter().take(MAX_DIVERGENCES_REPORTED).cloned().collect::<Vec<_>>();
            differences.push(json!({
                "node": node,
                "compared_with": first_node,
                "missing": listed(missing),
                "extra": listed(extra),
                "different": listed(different),
            }));
        }
    }
    Ok(differences)
}

/// One node's whole key-value state from its own applied state: key → "revision:value".
async fn local_state(http: &reqwest::Client, endpoint: &str) -> Result<BTreeMap<String, String>, String> {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    let mut state = BTreeMap::new();
    let mut start = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!("could not read the state of {endpoint}"));
        }
        let url = format!("{endpoint}/v1/kv");
        let query = [("limit", "1000"), ("consistency", "stale"), ("start", start.as_str())];
        let page = match http.get(url).query(&query).send().await {
            Ok(response) if response.status().is_success() => response.json::<Page>().await.ok(),
            _ => None,
        };
        let Some(page) = page else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for item in page.items {
            let value = item.value.or(item.value_base64).unwrap_or_default();
            state.insert(item.key, format!("{}:{value}", item.revision));
        }
        match page.next_start {
            Some(next) => start = next,
            None => return Ok(state),
        }
    }
}

/// Set workload: every acknowledged add must be present; nothing may appear that was never
/// attempted or that certainly failed.
fn check_set(operations: &[Operation], present: &BTreeSet<String>) -> (checker::Verdict, serde_json::Value) {
    let mut status_of: BTreeMap<String, Status> = BTreeMap::new();
    for op in operations.iter().filter(|o| o.kind == OpKind::Write) {
        if let Some(value) = &op.value {
            status_of.insert(value.clone(), op.status);
        }
    }
    let lost: Vec<&String> =
        status_of.iter().filter(|(v, s)| **s == Status::Ok && !present.contains(*v)).map(|(v, _)| v).collect();
    let unexpected: Vec<&String> =
        present.iter().filter(|v| matches!(status_of.get(*v), None | Some(Status::Fail))).collect();
    let recovered = status_of.iter().filter(|(v, s)| **s == Status::Info && present.contains(*v)).count();
    let verdict =
        if lost.is_empty() && unexpected.is_empty() { checker::Verdict::Valid } else { checker::Verdict::Invalid };
    (
        verdict,
        json!({ "lost": lost, "unexpected": unexpected, "info_adds_present": recovered, "present": present.len() }),
    )
}

fn write_history(out: &Path, operations: &[Operation]) -> Result<(), String> {
    let mut file = std::fs::File::create(out.join("history.jsonl")).map_err(|e| e.to_string())?;
    for op in operations {
        let line = serde_json::to_string(op).map_err(|e| e.to_string())?;
        writeln!(file, "{line}").map_err(|e| e.to_string())?;
    }
    Ok(())
}
