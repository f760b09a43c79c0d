//! Test harness: clusters of quorumkv nodes on loopback ports, each with its own temporary data
//! dir. Everything waits by polling with a deadline.
//!
//! Two kinds of node, one interface. By default ([`Cluster::start`]) every node runs inside the
//! test process, each on its own Tokio runtime and thread, on listeners the harness binds before
//! the node starts and holds for the cluster's life (rqlite's system tests do the same): fast to
//! start, nothing to spawn, the node's logs in its own file. Tests of what only a process shows
//! (kill -9, SIGTERM, SIGSTOP, descriptor limits, wiped data dirs) use
//! [`Cluster::start_processes`]: real `quorumkv serve` processes.

#![allow(dead_code)]

use quorumkv_api::ClusterStatus;
use quorumkv_api::PutReply;
use std::fs::File;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::time::Duration;
use std::time::Instant;

use tempfile::TempDir;

/// Generous bound for anything a healthy cluster does (elections, catch-up) on a loaded CI box.
pub const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// The peer token of every test cluster's nodes, unless a test gives its nodes a peer
/// credential of its own (a token, or mutual TLS alone).
pub const PEER_TOKEN: &str = "quorumkv-test-peer-token-0001";

/// The harness's HTTP client. It sends the peer token to the client ports too: adding a
/// learner needs it (without peer TLS); every other route ignores it.
fn test_http_client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let token = format!("Bearer {PEER_TOKEN}").parse().expect("header value");
    headers.insert(reqwest::header::AUTHORIZATION, token);
    builder.timeout(Duration::from_secs(15)).default_headers(headers).build().expect("http client")
}

fn has_peer_credential(args: &[String]) -> bool {
    args.iter().any(|arg| arg.starts_with("--peer-token") || arg.starts_with("--peer-cert-file"))
}

/// How a cluster's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Threads of the test process, each with its own runtime.
    InProcess,
    /// `quorumkv serve` processes.
    Processes,
}

/// How long an in-process node restarted after [`Cluster::kill`] waits for its previous
/// runtime's last tasks to let go of its RocksDB (a snapshot being written when it was killed).
const IN_PROCESS_REOPEN_DEADLINE: Duration = Duration::from_secs(20);

/// A node running inside the test process. Dropping `stop` ends it abruptly (its runtime is
/// dropped); sending on it, gracefully.
struct InProcessNode {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

pub struct NodeProcess {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// How the node enters the cluster: founding (`--initial-cluster`) or `--join` arguments.
    entry_args: Vec<String>,
    /// Further arguments for this node only (e.g. injected faults), kept across restarts.
    pub node_args: Vec<String>,
    /// A descriptor limit to start this node with (`prlimit --nofile`), kept across restarts.
    pub descriptor_limit: Option<u64>,
    child: Option<Child>,
    /// For [`Backend::InProcess`]: the listeners, bound when the node was added and held until
    /// it first starts, and the running node.
    listeners: Option<(std::net::TcpListener, std::net::TcpListener)>,
    in_process: Option<InProcessNode>,
    /// The in-process node was last stopped by [`Cluster::kill`].
    stopped_abruptly: bool,
}

impl NodeProcess {
    fn running(&self) -> bool {
        self.child.is_some() || self.in_process.is_some()
    }
}

pub struct Cluster {
    pub backend: Backend,
    pub nodes: Vec<NodeProcess>,
    /// Given to every `quorumkv serve` this cluster starts.
    extra_args: Vec<String>,
    pub http: reqwest::Client,
    /// `https` once [`Cluster::use_client_tls`] was called.
    scheme: &'static str,
    _dir: TempDir,
}

/// The lowest port of the kernel's ephemeral range (from which it picks the local port of
/// every outgoing connection, and the port of a `bind(0)`).
pub fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The lowest port handed to a node.
const FIRST_TEST_PORT: u16 = 10_000;

/// A port for a node's listener, unique in this test process. Not `bind(0)`-then-drop: such a
/// port lies in the ephemeral range, where a node's own outgoing connection (to a peer) can
/// take it as its local port before the node binds it, and the cluster never forms. These
/// come from below that range, from a counter whose start depends on the process id (test
/// binaries run one after another; the counter keeps this one's threads apart), and are
/// checked free once.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(ephemeral_range_start().saturating_sub(FIRST_TEST_PORT).max(1_000));
    let base = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let taken = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(taken < span, "no free test port left below the ephemeral range");
        let port = FIRST_TEST_PORT + ((base + taken) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A listener on a port from [`free_port`]'s range, bound now and held: an in-process node
/// serves on it, so no other socket can take its port between choosing and binding it.
pub fn bound_listener() -> std::net::TcpListener {
    loop {
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", free_port())) {
            return listener;
        }
    }
}

/// Polls `condition` until it returns `Some`, or panics with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

impl Cluster {
    /// Starts `size` in-process nodes bootstrapping one new cluster.
    pub async fn start(size: u64) -> Cluster {
        Self::start_with_args(size, &[]).await
    }

    /// Starts `size` in-process nodes bootstrapping one new cluster, each with `extra_args` as well.
    pub async fn start_with_args(size: u64, extra_args: &[&str]) -> Cluster {
        Self::start_configured(size, extra_args, &[]).await
    }

    /// Starts `size` in-process nodes bootstrapping one new cluster, each with `extra_args` as
    /// well, and the nodes listed in `node_args` with their own further arguments.
    pub async fn start_configured(size: u64, extra_args: &[&str], node_args: &[(u64, &[&str])]) -> Cluster {
        Self::start_on(Backend::InProcess, size, extra_args, node_args)
    }

    /// Starts `size` `quorumkv serve` processes bootstrapping one new cluster.
    pub async fn start_processes(size: u64) -> Cluster {
        Self::start_processes_with_args(size, &[]).await
    }

    /// [`Cluster::start_processes`], each node with `extra_args` as well.
    pub async fn start_processes_with_args(size: u64, extra_args: &[&str]) -> Cluster {
        Self::start_processes_configured(size, extra_args, &[]).await
    }

    /// [`Cluster::start_configured`] with `quorumkv serve` processes.
    pub async fn start_processes_configured(size: u64, extra_args: &[&str], node_args: &[(u64, &[&str])]) -> Cluster {
        Self::start_on(Backend::Processes, size, extra_args, node_args)
    }

    fn start_on(backend: Backend, size: u64, extra_args: &[&str], node_args: &[(u64, &[&str])]) -> Cluster {
        let dir = TempDir::new().expect("temp dir");
        let mut nodes: Vec<NodeProcess> = (1..=size).map(|id| new_node(backend, &dir, id, vec![])).collect();
        let initial_cluster = nodes.iter().map(|n| format!("{}={}", n.id, n.peer_addr)).collect::<Vec<_>>().join(",");
        for node in &mut nodes {
            node.entry_args = vec!["--initial-cluster".into(), initial_cluster.clone()];
        }
        let http = test_http_client(reqwest::Client::builder());
        let extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        let mut cluster = Cluster { backend, nodes, extra_args, http, scheme: "http", _dir: dir };
        for (id, args) in node_args {
            cluster.set_node_args(*id, args);
        }
        for id in 1..=size {
            cluster.spawn(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &NodeProcess {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Adds a node that joins the running cluster through the founding nodes' client
    /// addresses, and starts it. Returns its id.
    pub fn add_joining_node(&mut self, auto_promote: bool) -> u64 {
        self.add_joining_node_with(auto_promote, &[])
    }

    /// [`Cluster::add_joining_node`], with further arguments for the new node only.
    pub fn add_joining_node_with(&mut self, auto_promote: bool, node_args: &[&str]) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let join = self.nodes.iter().map(|n| n.client_addr.clone()).collect::<Vec<_>>().join(",");
        let entry_args = vec!["--join".into(), join, "--auto-promote".into(), auto_promote.to_string()];
        let mut node = new_node(self.backend, &self._dir, id, entry_args);
        node.node_args = node_args.iter().map(|a| a.to_string()).collect();
        self.nodes.push(node);
        self.spawn(id);
        id
    }

    /// A 3-node cluster holding `k=v` whose follower `victim` was killed and its data dir
    /// wiped. Returns (cluster, leader, victim).
    pub async fn with_wiped_follower() -> (Cluster, u64, u64) {
        let mut cluster = Cluster::start_processes(3).await;
        let leader = cluster.wait_for_leader().await;
        let victim = (1..=3).find(|id| *id != leader).expect("follower");
        cluster.put_ok(leader, "k", "v").await;
        cluster.kill(victim);
        std::fs::remove_dir_all(&cluster.node(victim).data_dir).expect("wipe");
        (cluster, leader, victim)
    }

    /// Starts (or restarts) node `id` with its data dir.
    pub fn spawn(&mut self, id: u64) {
        let extra_args = self.extra_args.clone();
        let backend = self.backend;
        let node = self.node_mut(id);
        assert!(!node.running(), "node {id} is already running");
        if backend == Backend::InProcess {
            node.in_process = Some(start_in_process(node, &extra_args));
            return;
        }
        let log = File::options().create(true).append(true).open(&node.log_path).expect("log file");
        let mut command = match node.descriptor_limit {
            None => Command::new(env!("CARGO_BIN_EXE_quorumkv")),
            Some(limit) => {
                let mut command = Command::new("prlimit");
                command.arg(format!("--nofile={limit}:{limit}")).arg(env!("CARGO_BIN_EXE_quorumkv"));
                command
            }
        };
        let child = command
            .arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--client-addr", &node.client_addr])
            .args(["--peer-addr", &node.peer_addr])
            .args(&node.entry_args)
            .args(&extra_args)
            .args(&node.node_args)
            .env("QUORUMKV_LOG", "info,openraft=warn")
            .envs(if has_peer_credential(&extra_args) || has_peer_credential(&node.node_args) {
                None
            } else {
                Some(("QUORUMKV_PEER_TOKEN", PEER_TOKEN))
            })
            .stdout(log.try_clone().expect("log clone"))
            .stderr(log)
            .spawn()
            .expect("spawn quorumkv");
        node.child = Some(child);
    }

    /// From its next start on, node `id` enters the cluster with `--join` (every other node's
    /// client address) instead of its founding arguments.
    pub fn set_join(&mut self, id: u64, auto_promote: bool) {
        let join = self.nodes.iter().filter(|n| n.id != id).map(|n| n.client_addr.clone()).collect::<Vec<_>>();
        self.node_mut(id).entry_args =
            vec!["--join".into(), join.join(","), "--auto-promote".into(), auto_promote.to_string()];
    }

    /// From its next start on, node `id` (stopped) listens for peers on another port: a node
    /// that came back at another address. Returns the new address.
    pub fn move_peer_addr(&mut self, id: u64) -> String {
        assert!(!self.is_running(id), "move node {id} only while it is stopped");
        let node = self.node_mut(id);
        node.listeners = None;
        node.peer_addr = format!("127.0.0.1:{}", free_port());
        node.peer_addr.clone()
    }

    /// From its next start on, node `id` runs with at most `limit` open descriptors.
    pub fn set_descriptor_limit(&mut self, id: u64, limit: u64) {
        self.needs_processes();
        self.node_mut(id).descriptor_limit = Some(limit);
    }

    /// Gives node `id` further arguments from its next start on.
    pub fn set_node_args(&mut self, id: u64, args: &[&str]) {
        self.node_mut(id).node_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Hands leadership to `to` and waits until every running node agrees on it.
    pub async fn transfer_leadership(&self, to: u64) {
        let via = self.running_ids()[0];
        let url = self.url(via, "/v1/cluster/leader");
        eventually("leadership moves to the chosen node", || async {
            let response = self.http.post(&url).json(&quorumkv_api::NodeRef { id: to }).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            (self.wait_for_leader().await == to).then_some(())
        })
        .await;
    }

    /// Waits until `id` is a voter in the leader's view.
    pub async fn wait_voter(&self, id: u64) {
        eventually("the node becomes a voter", || async {
            let leader = self.wait_for_leader().await;
            let status = self.cluster_status(leader).await?;
            status.members.iter().find(|m| m.id == id)?.voter.then_some(())
        })
        .await;
    }

    /// Waits until node `id` answers `/ready` with 200.
    pub async fn wait_ready(&self, id: u64) {
        eventually("the node is ready", || async {
            let response = self.http.get(self.url(id, "/ready")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// kill -9: no chance to flush or hand over anything. An in-process node's runtime is dropped
    /// instead: it vanishes without handing over or draining, but RocksDB closes, so tests of what
    /// survives a crash use processes.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut node) = self.node_mut(id).in_process.take() {
            drop(node.stop.take());
            let _ = node.thread.take().map(std::thread::JoinHandle::join);
            self.node_mut(id).stopped_abruptly = true;
            return;
        }
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for exit: the graceful path.
    pub async fn terminate(&mut self, id: u64) -> ExitStatus {
        self.needs_processes();
        let mut child = self.node_mut(id).child.take().expect("node running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM failed");
        eventually("node exits after SIGTERM", || {
            let exited = child.try_wait().expect("try_wait");
            async move { exited }
        })
        .await
    }

    /// Waits for a node process that is expected to exit by itself.
    pub async fn wait_exit(&mut self, id: u64) -> ExitStatus {
        self.needs_processes();
        let mut child = self.node_mut(id).child.take().expect("node running");
        eventually("node exits", || {
            let exited = child.try_wait().expect("try_wait");
            async move { exited }
        })
        .await
    }

    /// SIGSTOP: the process freezes (a GC pause, a stalled VM) without losing anything.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    /// SIGHUP: a node reads its certificates again.
    pub fn hangup(&self, id: u64) {
        self.signal(id, "-HUP");
    }

    fn signal(&self, id: u64, signal: &str) {
        self.needs_processes();
        let pid = self.pid(id).expect("node running").to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Stops node `id` gracefully (it hands leadership away and drains) and waits until it has
    /// stopped: SIGTERM for a process, the stop signal for an in-process node.
    pub async fn stop(&mut self, id: u64) {
        let Some(mut node) = self.node_mut(id).in_process.take() else {
            let status = self.terminate(id).await;
            assert!(status.success(), "node {id} exited with {status} after SIGTERM");
            return;
        };
        let _ = node.stop.take().expect("a running node can be stopped").send(());
        let thread = node.thread.take().expect("a running node has a thread");
        // Within [`DEADLINE`]: the shutdown drains for 1.5 s, then in-flight requests and the peer
        // listener get 5 s each at most.
        eventually("an in-process node stops", || {
            let finished = thread.is_finished();
            async move { finished.then_some(()) }
        })
        .await;
        let result = thread.join().expect("the node's thread did not panic");
        assert!(result.is_ok(), "node {id} stopped with an error: {result:?}");
    }

    fn needs_processes(&self) {
        assert_eq!(self.backend, Backend::Processes, "signals and descriptor limits need Cluster::start_processes");
    }

    /// Deletes a stopped node's data dir: a lost disk, or an operator's mistake.
    pub fn wipe(&self, id: u64) {
        assert!(!self.is_running(id), "wipe node {id} only while it is stopped");
        std::fs::remove_dir_all(&self.node(id).data_dir).expect("wipe data dir");
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(|child| child.id())
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).running()
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.node(id).client_addr)
    }

    /// From now on, talk HTTPS to the client ports, trusting only the CA in `ca_file`.
    pub fn use_client_tls(&mut self, ca_file: &std::path::Path) {
        self.use_client_tls_as(ca_file, None);
    }

    /// [`Cluster::use_client_tls`], presenting a client certificate (`cert`, `key` files).
    pub fn use_client_tls_as(
        &mut self,
        ca_file: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) {
        let pem = std::fs::read(ca_file).expect("CA file");
        let ca = reqwest::Certificate::from_pem(&pem).expect("CA certificate");
        let mut builder = reqwest::Client::builder().add_root_certificate(ca);
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(cert).expect("certificate");
            pem.extend(std::fs::read(key).expect("key"));
            builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
        }
        self.http = test_http_client(builder);
        self.scheme = "https";
    }

    /// The directory the cluster's data dirs and logs live in (removed with the cluster).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// GET a body of the API's type `T` from node `id`; panics when it does not answer one.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, id: u64, path: &str) -> T {
        let response = self.http.get(self.url(id, path)).send().await.expect("GET sent");
        let body = response.text().await.expect("a body");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} on node {id}: {e}: {body}"))
    }

    /// `GET /v1/cluster` on node `id`, as the API's type; `None` when it does not answer one.
    pub async fn cluster_status(&self, id: u64) -> Option<ClusterStatus> {
        let response = self.http.get(self.url(id, "/v1/cluster")).send().await.ok()?;
        response.json().await.ok()
    }

    /// Waits until every running node reports the same leader, which is running too.
    pub async fn wait_for_leader(&self) -> u64 {
        eventually("all running nodes agree on a running leader", || async {
            let mut agreed = None;
            for node in self.nodes.iter().filter(|n| n.running()) {
                let leader = self.cluster_status(node.id).await?.leader_id?;
                if agreed.is_some_and(|a| a != leader) || !self.is_running(leader) {
                    return None;
                }
                agreed = Some(leader);
            }
            agreed
        })
        .await
    }

    /// Waits until the given nodes (running) agree on a leader that is one of them.
    pub async fn wait_for_leader_among(&self, ids: &[u64]) -> u64 {
        eventually("the given nodes agree on a leader among them", || async {
            let mut agreed = None;
            for id in ids {
                let leader = self.cluster_status(*id).await?.leader_id?;
                if agreed.is_some_and(|a| a != leader) || !ids.contains(&leader) {
                    return None;
                }
                agreed = Some(leader);
            }
            agreed
        })
        .await
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.running()).map(|n| n.id).collect()
    }

    pub async fn put(&self, id: u64, key: &str, value: &str) -> reqwest::Response {
        self.http.put(self.url(id, &format!("/v1/kv/{key}"))).body(value.to_string()).send().await.expect("PUT sent")
    }

    /// PUT that must succeed; returns the revision.
    pub async fn put_ok(&self, id: u64, key: &str, value: &str) -> u64 {
        let response = self.put(id, key, value).await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(status, 200, "PUT {key} on node {id}: {body}");
        serde_json::from_str::<PutReply>(&body).expect("a put's answer").revision
    }

    /// GET with a consistency level; returns (status, body), or status 0 and the error when
    /// no answer arrived (e.g. the node is still starting).
    pub async fn get(&self, id: u64, key: &str, consistency: &str) -> (u16, String) {
        let url = self.url(id, &format!("/v1/kv/{key}?consistency={consistency}"));
        let response = match self.http.get(url).send().await {
            Ok(response) => response,
            Err(error) => return (0, error.to_string()),
        };
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_else(|e| e.to_string()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // In-process nodes end abruptly (their runtimes are dropped, RocksDB closes): all told at
        // once, then waited for, so a test's end does not cost a graceful shutdown per node.
        let running: Vec<InProcessNode> = self.nodes.iter_mut().filter_map(|node| node.in_process.take()).collect();
        let threads: Vec<_> = running
            .into_iter()
            .map(|mut node| {
                drop(node.stop.take());
                node.thread.take()
            })
            .collect();
        for thread in threads.into_iter().flatten() {
            let _ = thread.join();
        }
    }
}

/// A node of `backend` with id `id`, its data dir and log in `dir`; in-process nodes get their
/// listeners now, so their ports are theirs from the start.
fn new_node(backend: Backend, dir: &TempDir, id: u64, entry_args: Vec<String>) -> NodeProcess {
    let (client_addr, peer_addr, listeners) = match backend {
        Backend::Processes => (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()), None),
        Backend::InProcess => {
            let (client, peer) = (bound_listener(), bound_listener());
            let addr = |listener: &std::net::TcpListener| listener.local_addr().expect("local addr").to_string();
            (addr(&client), addr(&peer), Some((client, peer)))
        }
    };
    NodeProcess {
        id,
        client_addr,
        peer_addr,
        data_dir: dir.path().join(format!("node-{id}")),
        log_path: dir.path().join(format!("node-{id}.log")),
        entry_args,
        node_args: vec![],
        descriptor_limit: None,
        child: None,
        listeners,
        in_process: None,
        stopped_abruptly: false,
    }
}

/// `quorumkv serve`'s flags, parsed as the binary parses them.
#[derive(clap::Parser)]
struct ServeArgs {
    #[command(flatten)]
    config: quorumkv::config::ServeConfig,
}

/// Starts `node` on a thread of its own with its own runtime, serving on its held listeners,
/// logging to its log file. A stop message ends it gracefully; a dropped sender, abruptly.
fn start_in_process(node: &mut NodeProcess, extra_args: &[String]) -> InProcessNode {
    use clap::Parser;
    let mut args: Vec<String> = vec!["serve".into(), "--id".into(), node.id.to_string()];
    args.extend(["--data-dir".into(), node.data_dir.display().to_string()]);
    args.extend(["--client-addr".into(), node.client_addr.clone(), "--peer-addr".into(), node.peer_addr.clone()]);
    args.extend(node.entry_args.iter().chain(extra_args).chain(&node.node_args).cloned());
    if !has_peer_credential(&args) {
        args.extend(["--peer-token".into(), PEER_TOKEN.into()]);
    }
    let config = ServeArgs::try_parse_from(&args).unwrap_or_else(|e| panic!("serve arguments {args:?}: {e}")).config;
    // First start: the listeners bound when the node was added. A restart binds the same ports
    // again: they lie below the ephemeral range, so no other socket has taken them meanwhile.
    let (client, peer) = node.listeners.take().unwrap_or_else(|| {
        let bind = |addr: &str| std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("rebind {addr}: {e}"));
        (bind(&node.client_addr), bind(&node.peer_addr))
    });
    let (client_addr, peer_addr) = (node.client_addr.clone(), node.peer_addr.clone());
    let after_abrupt_stop = std::mem::take(&mut node.stopped_abruptly);
    let log = File::options().create(true).append(true).open(&node.log_path).expect("log file");
    let dispatch = quorumkv::logging::node_dispatch(node.id, "info,openraft=warn", log);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("node-{}", node.id))
        .spawn(move || {
            let _default = tracing::dispatcher::set_default(&dispatch);
            let on_start = dispatch.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&on_start)))
                .build()
                .map_err(|e| e.to_string())?;
            let result = runtime.block_on(async move {
                let (graceful, graceful_stop) = tokio::sync::watch::channel(false);
                let serving = async {
                    let deadline = Instant::now() + IN_PROCESS_REOPEN_DEADLINE;
                    let (mut client, mut peer) = (Some(client), Some(peer));
                    loop {
                        // The listeners themselves (not duplicates, which would keep the port
                        // accepting after the node closes it); after a refused open, the same
                        // ports bound again.
                        let take = |listener: &mut Option<std::net::TcpListener>, addr: &str| {
                            let listener = match listener.take() {
                                Some(listener) => listener,
                                None => std::net::TcpListener::bind(addr).map_err(|e| format!("rebind {addr}: {e}"))?,
                            };
                            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                            tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())
                        };
                        let (client, peer) = (take(&mut client, &client_addr)?, take(&mut peer, &peer_addr)?);
                        let mut graceful_stop = graceful_stop.clone();
                        let stop = async move {
                            let _ = graceful_stop.wait_for(|stop| *stop).await;
                        };
                        match quorumkv::server::serve_on(config.clone(), client, peer, stop).await {
                            // Only after an abrupt stop may a task of the previous runtime (a
                            // snapshot being written) still hold RocksDB; after a graceful one,
                            // a refused reopen is a shutdown bug and fails the test.
                            Err(error)
                                if after_abrupt_stop
                                    && error.contains("lock hold by current process")
                                    && Instant::now() < deadline =>
                            {
                                tokio::time::sleep(POLL).await;
                            }
                            result => return result,
                        }
                    }
                };
                tokio::pin!(serving);
                tokio::select! {
                    result = &mut serving => result,
                    message = stopped => match message {
                        Ok(()) => {
                            let _ = graceful.send(true);
                            serving.await
                        }
                        Err(_) => Ok(()),
                    },
                }
            });
            if let Err(error) = &result {
                tracing::error!("the node stopped: {error}");
            }
            // Tasks still holding the database are dropped here.
            runtime.shutdown_timeout(Duration::from_secs(5));
            result
        })
        .expect("spawn node thread");
    InProcessNode { stop: Some(stop), thread: Some(thread) }
}
