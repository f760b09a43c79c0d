//! The cluster under test: started and stopped through `scripts/` (netns, local or compose),
//! its faults installed through `scripts/faults/*` and recorded in the fault ledger, and the
//! observations the checkers need at the end (a ready node, every replica's own state).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use quorumkv_api::client::ClientTls;
use quorumkv_api::limits::MAX_AUTH_TOKEN_TTL_MS;
use quorumkv_api::ClusterStatus;
use quorumkv_api::Page;
use serde_json::json;
use tokio::process::Command;

use crate::faults::FaultStatus;
use crate::faults::Ledger;
use crate::options::ClusterKind;
use crate::options::Nemesis;
use crate::options::Options;

/// How long the cluster may take to elect a leader after healing or a full restart.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

/// With `--auth`, how much longer than the faulty phase the runner's token lives: the final
/// phase (restart, recovery, the final reads and the replicas' comparison) runs on it too.
const TOKEN_MARGIN_SECS: u64 = 15 * 60;
/// The longest `--auth` run: its token, with the margin, within the lifetime a node allows.
pub const MAX_AUTH_RUN_SECS: u64 = MAX_AUTH_TOKEN_TTL_MS / 1000 - TOKEN_MARGIN_SECS;

/// Snapshots every this many entries in a fault run, far below the default (100,000, what a
/// run of a minute writes at most): snapshots, purges and their installs on a node that lagged
/// happen under the faults, several times a run.
const FAULT_RUN_SNAPSHOT_LOG_ENTRIES: u64 = 5_000;

pub struct Cluster {
    pub kind: ClusterKind,
    pub dir: PathBuf,
    pub repo: PathBuf,
    pub nodes: u64,
    pub endpoints: Vec<String>,
    /// Extra `quorumkv serve` arguments for every node (`QUORUMKV_SERVE_ARGS` of the scripts).
    pub serve_args: String,
    /// HTTPS on the client ports, mutual TLS between the nodes (`--tls`).
    pub tls: bool,
    /// Users and roles on; the runner is root (`--auth`).
    pub auth: bool,
    /// Every fault tried and every harness failure, for the verdict's standing.
    pub ledger: Mutex<Ledger>,
}

impl Cluster {
    pub async fn script(&self, name: &str, args: &[&str]) -> Result<String, String> {
        match self.run_script(name, args).await {
            (FaultStatus::Installed | FaultStatus::Skipped, text) => Ok(text),
            (FaultStatus::Indeterminate, text) => Err(text),
        }
    }

    /// Runs a script of `scripts/`; its exit status read as a fault script's, and what it said.
    pub async fn run_script(&self, name: &str, args: &[&str]) -> (FaultStatus, String) {
        let output = Command::new(self.repo.join("scripts").join(name))
            .args(args)
            .env("QUORUMKV_CLUSTER_DIR", &self.dir)
            .env("QUORUMKV_NETNS_STATE_DIR", &self.dir)
            .env("QUORUMKV_STATE_DIR", &self.dir)
            .env("QUORUMKV_SERVE_ARGS", &self.serve_args)
            // The same for containers, which take settings from the environment only.
            .env("QUORUMKV_SNAPSHOT_LOG_ENTRIES", FAULT_RUN_SNAPSHOT_LOG_ENTRIES.to_string())
            .stdin(std::process::Stdio::null())
            // Interrupted (Ctrl-C), the run drops this future and takes the cluster down: the
            // script must not go on beside the teardown. Nodes it started are the teardown's.
            .kill_on_drop(true)
            .output()
            .await;
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

    pub async fn up(options: &Options, dir: &Path, repo: &Path) -> Result<Cluster, String> {
        let voters = if options.cluster == ClusterKind::Local { 3 } else { options.nodes };
        let nodes = voters + options.learners;
        let mut serve_args = match options.nemesis {
            Nemesis::PowerCut => {
                format!("--fault-lose-unsynced-writes --fault-fsync-jitter-ms {}", options.fsync_jitter_ms)
            }
            _ => String::new(),
        };
        serve_args.push_str(&format!(" --snapshot-log-entries {FAULT_RUN_SNAPSHOT_LOG_ENTRIES}"));
        if options.auth {
            // The runner logs in once: its token must outlive the run, its final phase included.
            // Within the node's bound: `validate` keeps the time limit under MAX_AUTH_RUN_SECS.
            let token_ttl_ms = options.time_limit_secs.saturating_add(TOKEN_MARGIN_SECS).saturating_mul(1000);
            serve_args.push_str(&format!(" --auth-token-ttl-ms {}", token_ttl_ms.min(MAX_AUTH_TOKEN_TTL_MS)));
        }
        let mut cluster = Cluster {
            kind: options.cluster,
            dir: dir.to_path_buf(),
            repo: repo.to_path_buf(),
            nodes,
            endpoints: vec![],
            serve_args,
            tls: options.tls,
            auth: options.auth,
            ledger: Mutex::default(),
        };
        match options.cluster {
            ClusterKind::Netns => {
                cluster.script("netns-cluster.sh", &["up", &voters.to_string(), &options.learners.to_string()]).await?
            }
            ClusterKind::Local => {
                let flags: Vec<&str> = [(options.tls, "--tls"), (options.auth, "--auth")]
                    .into_iter()
                    .filter_map(|(on, flag)| on.then_some(flag))
                    .collect();
                cluster.script("start-3-nodes.sh", &flags).await?
            }
            ClusterKind::Compose => cluster.script("compose-cluster.sh", &["up", &voters.to_string()]).await?,
        };
        for id in 1..=nodes {
            let env = std::fs::read_to_string(dir.join(format!("node-{id}.env"))).map_err(|e| e.to_string())?;
            let addr = env
                .lines()
                .find_map(|line| line.strip_prefix("CLIENT_ADDR="))
                .ok_or_else(|| format!("node {id} has no CLIENT_ADDR"))?;
            let scheme = if cluster.tls { "https" } else { "http" };
            cluster.endpoints.push(format!("{scheme}://{addr}"));
        }
        Ok(cluster)
    }

    /// A handle on a cluster left behind (by an interrupted run), only to take it down.
    pub fn stopped(kind: ClusterKind, dir: &Path, repo: &Path) -> Cluster {
        let (dir, repo) = (dir.to_path_buf(), repo.to_path_buf());
        Cluster {
            kind,
            dir,
            repo,
            nodes: 0,
            endpoints: vec![],
            serve_args: String::new(),
            tls: false,
            auth: false,
            ledger: Mutex::default(),
        }
    }

    /// The runner's HTTP client: trusting only the cluster's CA with `--tls`, and with
    /// `--auth` sending root's token (one login; the nodes keep the token valid for the run).
    pub async fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, String> {
        let tls =
            ClientTls { ca_file: self.tls.then(|| self.dir.join("certs").join("ca.pem")), ..ClientTls::default() };
        let mut builder = tls.configure(reqwest::Client::builder().timeout(timeout)).map_err(|e| e.to_string())?;
        if self.auth {
            let password_file = self.dir.join("root-password");
            let password = std::fs::read_to_string(&password_file)
                .map_err(|e| format!("cannot read {}: {e}", password_file.display()))?;
            let client = quorumkv_api::client::Client::with_token(&self.endpoints.join(","), &tls, None)
                .map_err(|e| e.to_string())?;
            // A node may not have applied `auth enable` and root yet, right after the cluster
            // script made them: ask again until the recovery deadline.
            let deadline = Instant::now() + RECOVERY_DEADLINE;
            let token = loop {
                match client.login("root", password.trim()).await {
                    Ok(reply) => break reply.token,
                    Err(error) if Instant::now() > deadline => return Err(format!("login as root: {error}")),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        builder.build().map_err(|e| e.to_string())
    }

    pub async fn down(&self) {
        let result = match self.kind {
            ClusterKind::Netns => self.script("netns-cluster.sh", &["down"]).await,
            ClusterKind::Local => self.script("stop-3-nodes.sh", &[]).await,
            ClusterKind::Compose => self.script("compose-cluster.sh", &["down"]).await,
        };
        if let Err(error) = result {
            eprintln!("warning: cluster teardown: {error}");
        }
    }

    /// Tries to install a fault of `kind` and records what became of it.
    pub async fn fault(
        &self,
        log: &mut std::fs::File,
        start: Instant,
        kind: &'static str,
        script: &str,
        args: &[&str],
    ) {
        let (status, text) = self.run_script(script, args).await;
        self.record(log, start, &format!("{script} {} -> {status:?}: {text}", args.join(" ")));
        self.note(kind, status);
    }

    /// A step the harness needs (healing, restarting, the final kill): its failure makes the run's
    /// verdict meaningless.
    pub async fn harness_step(&self, log: &mut std::fs::File, start: Instant, script: &str, args: &[&str]) {
        let (status, text) = self.run_script(script, args).await;
        self.record(log, start, &format!("{script} {} -> {status:?}: {text}", args.join(" ")));
        if status == FaultStatus::Indeterminate {
            self.harness_failure(text);
        }
    }

    pub fn note(&self, kind: &'static str, status: FaultStatus) {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).record(kind, status);
    }

    pub fn harness_failure(&self, what: String) {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).harness_failure(what);
    }

    pub fn record(&self, log: &mut std::fs::File, start: Instant, line: &str) {
        let _ = writeln!(log, "{:>8.3}s {line}", start.elapsed().as_secs_f64());
    }

    /// The current leader's id, as the fault scripts see it.
    pub async fn leader(&self) -> Result<String, String> {
        self.script("faults/leader.sh", &[]).await
    }

    pub async fn heal_all(&self, log: &mut std::fs::File, start: Instant) {
        self.harness_step(log, start, "faults/heal.sh", &[]).await;
        self.harness_step(log, start, "faults/resume.sh", &["all"]).await;
        self.harness_step(log, start, "faults/restart.sh", &["all"]).await;
    }

    /// Sends a cluster administration request to the first node that answers it with anything
    /// but 503 (a removed node answers `503 removed`, one without a leader `503 no_leader`);
    /// returns the status and body of the last answer.
    pub async fn admin<Body: serde::Serialize>(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<&Body>,
    ) -> Option<(u16, String)> {
        let mut answer = None;
        for endpoint in &self.endpoints {
            let mut request = http.request(method.clone(), format!("{endpoint}{path}"));
            // The cluster scripts' peer token: adding a learner needs it (without peer TLS).
            if let Ok(token) = std::fs::read_to_string(self.dir.join("peer-token")) {
                request = request.bearer_auth(token.trim());
            }
            if let Some(body) = body {
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
    pub async fn ready_node(&self, http: &reqwest::Client) -> Result<(u64, String), String> {
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

    pub async fn wait_for_leader(&self, http: &reqwest::Client) -> Result<(), String> {
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

/// Differences (and stale reads) listed at most, per pair of replicas, before the report stops listing them.
pub const MAX_DIVERGENCES_REPORTED: usize = 20;

/// Every replica must end with the same state. Once every node has applied all the leader
/// committed (no client writes any more), each node's own keys, values and revisions are read
/// (stale reads: its local state) and compared with node 1's. Returns the differences found.
pub async fn replica_divergence(cluster: &Cluster, http: &reqwest::Client) -> Result<Vec<serde_json::Value>, String> {
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
