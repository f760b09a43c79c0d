//! The one configuration of a node: flags, `QUORUMKV_*` environment variables and an optional
//! file, in that order of precedence, over the documented defaults.
//!
//! The file (`--config FILE` or `QUORUMKV_CONFIG`) holds `QUORUMKV_NAME=value` lines, like an
//! etcd or systemd environment file; it fills only variables the environment does not set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::ValueEnum;

use crate::limits;
use crate::types::NodeId;

/// Whether an empty data directory may bootstrap a new cluster (as etcd's flag of that name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitialClusterState {
    /// Bootstrap from `--initial-cluster` when the data directory is empty and no peer has
    /// ever seen this node.
    New,
    /// Never bootstrap: an empty data directory is an error.
    Existing,
}

/// The peer token as given on the command line: its `Debug` shows no secret, so a logged or
/// printed configuration never carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerToken(pub String);

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerToken(<redacted>)")
    }
}

impl std::str::FromStr for PeerToken {
    type Err = std::convert::Infallible;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        Ok(PeerToken(token.to_string()))
    }
}

/// `quorumkv serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// This node's id, unique in the cluster and never reused for another data directory.
    #[arg(long, env = "QUORUMKV_ID")]
    pub id: NodeId,

    /// Directory for this node's RocksDB and snapshot. Created when missing.
    #[arg(long, env = "QUORUMKV_DATA_DIR", default_value = "quorumkv-data")]
    pub data_dir: PathBuf,

    /// Address (`host:port`) the HTTP client API listens on.
    #[arg(long, env = "QUORUMKV_CLIENT_ADDR", default_value = "127.0.0.1:8081")]
    pub client_addr: String,

    /// Address (`host:port`) for Raft and node-to-node traffic. Firewall it from clients.
    #[arg(long, env = "QUORUMKV_PEER_ADDR", default_value = "127.0.0.1:9081")]
    pub peer_addr: String,

    /// Client address other nodes and clients should use, when it differs from
    /// `--client-addr` (e.g. listening on 0.0.0.0). Defaults to `--client-addr`.
    #[arg(long, env = "QUORUMKV_ADVERTISE_CLIENT_ADDR")]
    pub advertise_client_addr: Option<String>,

    /// Peer address other nodes should use, when it differs from `--peer-addr`.
    /// Defaults to `--peer-addr`.
    #[arg(long, env = "QUORUMKV_ADVERTISE_PEER_ADDR")]
    pub advertise_peer_addr: Option<String>,

    /// Join an existing cluster instead of bootstrapping: client addresses (`host:port`,
    /// comma-separated) of any of its members. The node is added as a learner and catches up.
    #[arg(long, env = "QUORUMKV_JOIN")]
    pub join: Option<String>,

    /// With `--join`: become a voter once caught up (`false` keeps the node a learner, an
    /// asynchronous replica that does not count for commit).
    #[arg(long, env = "QUORUMKV_AUTO_PROMOTE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_promote: bool,

    /// The founding members, `id=peer_host:port` separated by commas, identical on every node.
    /// Defaults to a one-node cluster of this node.
    #[arg(long, env = "QUORUMKV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new`: an empty data directory may bootstrap; `existing`: it may not.
    #[arg(long, env = "QUORUMKV_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: InitialClusterState,

    /// Shared secret every member presents on the peer port (at least 16 bytes, printable
    /// ASCII). Required when the peer port has no TLS. Prefer `--peer-token-file`: a flag's
    /// value shows in the process list.
    #[arg(long, env = "QUORUMKV_PEER_TOKEN", hide_env_values = true, conflicts_with = "peer_token_file")]
    pub peer_token: Option<PeerToken>,

    /// File holding the peer token (surrounding whitespace ignored).
    #[arg(long, env = "QUORUMKV_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,

    /// PEM certificate (chain) this node presents on the peer port and to the peers it calls.
    /// With `--peer-key-file` and `--peer-trusted-ca-file`: mutual TLS between peers.
    #[arg(long, env = "QUORUMKV_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// PEM private key of `--peer-cert-file`.
    #[arg(long, env = "QUORUMKV_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// PEM CA certificate(s) that sign every member's peer certificate; a peer presenting no
    /// certificate signed by it gets a failed handshake.
    #[arg(long, env = "QUORUMKV_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// PEM certificate (chain) of the client port: with `--client-key-file`, clients speak HTTPS.
    #[arg(long, env = "QUORUMKV_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,

    /// PEM private key of `--client-cert-file`.
    #[arg(long, env = "QUORUMKV_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,

    /// PEM CA certificate(s) for client certificates: with it, every client must present a
    /// certificate it signed.
    #[arg(long, env = "QUORUMKV_CLIENT_TRUSTED_CA_FILE")]
    pub client_trusted_ca_file: Option<PathBuf>,

    /// Leader heartbeat period.
    #[arg(long, env = "QUORUMKV_HEARTBEAT_INTERVAL_MS", default_value_t = limits::DEFAULT_HEARTBEAT_INTERVAL_MS)]
    pub heartbeat_interval_ms: u64,

    /// Lower bound of the randomized election timeout.
    #[arg(long, env = "QUORUMKV_ELECTION_TIMEOUT_MIN_MS", default_value_t = limits::DEFAULT_ELECTION_TIMEOUT_MIN_MS)]
    pub election_timeout_min_ms: u64,

    /// Upper bound of the randomized election timeout; also the leader lease length.
    #[arg(long, env = "QUORUMKV_ELECTION_TIMEOUT_MAX_MS", default_value_t = limits::DEFAULT_ELECTION_TIMEOUT_MAX_MS)]
    pub election_timeout_max_ms: u64,

    /// How long a write waits for commit before answering 504 with an unknown outcome.
    #[arg(long, env = "QUORUMKV_WRITE_TIMEOUT_MS", default_value_t = limits::DEFAULT_WRITE_TIMEOUT_MS)]
    pub write_timeout_ms: u64,

    /// How long a linearizable or lease read waits before answering 503.
    #[arg(long, env = "QUORUMKV_READ_TIMEOUT_MS", default_value_t = limits::DEFAULT_READ_TIMEOUT_MS)]
    pub read_timeout_ms: u64,

    /// How long a request waits for an election when no leader is known, before a 503.
    #[arg(long, env = "QUORUMKV_LEADER_WAIT_MS", default_value_t = limits::DEFAULT_LEADER_WAIT_MS)]
    pub leader_wait_ms: u64,

    /// Largest key, in bytes.
    #[arg(long, env = "QUORUMKV_MAX_KEY_BYTES", default_value_t = limits::DEFAULT_MAX_KEY_BYTES)]
    pub max_key_bytes: usize,

    /// Largest value, in bytes.
    #[arg(long, env = "QUORUMKV_MAX_VALUE_BYTES", default_value_t = limits::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,

    /// Client connections open at once; the oldest is closed to make room for a new one.
    /// Lowered at start-up if the descriptor limit cannot also cover what Raft needs.
    #[arg(long, env = "QUORUMKV_MAX_CLIENT_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_CLIENT_CONNECTIONS)]
    pub max_client_connections: usize,

    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    /// etcd's default (`--snapshot-count`): each snapshot copies the whole state, so at 10,000
    /// a node under 10k writes/s spent a tenth of its CPU re-copying it every second. The cost
    /// is disk: up to this many entries stay in the log (size it for large values); a restart
    /// re-applies only the entries not yet applied.
    #[arg(long, env = "QUORUMKV_SNAPSHOT_LOG_ENTRIES", default_value_t = 100_000)]
    pub snapshot_log_entries: u64,

    /// Change history kept for watches: the events of this many latest revisions at most.
    #[arg(long, env = "QUORUMKV_WATCH_HISTORY_REVISIONS", default_value_t = limits::DEFAULT_WATCH_HISTORY_REVISIONS)]
    pub watch_history_revisions: u64,

    /// ...and none applied longer ago than this (checked as later writes are applied).
    #[arg(long, env = "QUORUMKV_WATCH_HISTORY_MS", default_value_t = limits::DEFAULT_WATCH_HISTORY_MS)]
    pub watch_history_ms: u64,

    /// Lifetime of the tokens `POST /v1/auth/token` issues (once auth is enabled).
    #[arg(long, env = "QUORUMKV_AUTH_TOKEN_TTL_MS", default_value_t = limits::DEFAULT_AUTH_TOKEN_TTL_MS)]
    pub auth_token_ttl_ms: u64,

    /// Log filter, e.g. `info` or `quorumkv=debug,openraft=info`.
    #[arg(long, env = "QUORUMKV_LOG", default_value = "info")]
    pub log: String,

    /// Fault injection for tests, never for production: keep write-ahead-log writes in the
    /// process until they are synced, so that SIGKILL loses what a power cut would lose.
    #[arg(long, env = "QUORUMKV_FAULT_LOSE_UNSYNCED_WRITES", hide = true)]
    pub fault_lose_unsynced_writes: bool,

    /// Fault injection for tests: every fsync of the Raft log first waits this long.
    #[arg(long, env = "QUORUMKV_FAULT_FSYNC_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_fsync_delay_ms: u64,

    /// Fault injection for tests: every fsync of the Raft log waits a random extra of up to
    /// this long (a disk whose latency varies).
    #[arg(long, env = "QUORUMKV_FAULT_FSYNC_JITTER_MS", hide = true, default_value_t = 0)]
    pub fault_fsync_jitter_ms: u64,
}

impl ServeConfig {
    /// Rejects configurations that cannot work, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id must be at least 1".into());
        }
        if !(limits::MIN_AUTH_TOKEN_TTL_MS..=limits::MAX_AUTH_TOKEN_TTL_MS).contains(&self.auth_token_ttl_ms) {
            return Err(format!(
                "--auth-token-ttl-ms must be between {} and {}",
                limits::MIN_AUTH_TOKEN_TTL_MS,
                limits::MAX_AUTH_TOKEN_TTL_MS
            ));
        }
        check_addr("--client-addr", &self.client_addr)?;
        check_addr("--peer-addr", &self.peer_addr)?;
        check_addr("--advertise-client-addr", self.advertised_client_addr())?;
        if !crate::types::valid_client_addr(self.advertised_client_addr()) {
            return Err(format!(
                "--advertise-client-addr {:?} is not a host:port of at most {} bytes",
                self.advertised_client_addr(),
                crate::types::MAX_CLIENT_ADDR_BYTES
            ));
        }
        check_addr("--advertise-peer-addr", self.advertised_peer_addr())?;
        if let Some(join) = &self.join {
            if self.initial_cluster.is_some() {
                return Err(
                    "--join and --initial-cluster exclude each other: join an existing cluster or found one".into()
                );
            }
            for addr in join_addrs(join) {
                check_addr("--join", addr)?;
            }
            if join_addrs(join).next().is_none() {
                return Err("--join names no address".into());
            }
        }
        if self.client_addr == self.peer_addr {
            return Err("--client-addr and --peer-addr must differ".into());
        }
        let members = self.initial_members()?;
        match members.get(&self.id) {
            None => return Err(format!("--initial-cluster does not list this node's --id {}", self.id)),
            Some(addr) if port_of(addr) != port_of(&self.peer_addr) => {
                return Err(format!(
                    "--initial-cluster gives node {} the peer address {addr}, but --peer-addr is {}",
                    self.id, self.peer_addr
                ))
            }
            Some(_) => {}
        }
        if self.heartbeat_interval_ms == 0 {
            return Err("--heartbeat-interval-ms must be positive".into());
        }
        if self.election_timeout_min_ms < 3 * self.heartbeat_interval_ms {
            return Err("--election-timeout-min-ms must be at least 3 heartbeat intervals".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("--election-timeout-max-ms must exceed --election-timeout-min-ms".into());
        }
        for (flag, value) in [
            ("--write-timeout-ms", self.write_timeout_ms),
            ("--read-timeout-ms", self.read_timeout_ms),
            ("--leader-wait-ms", self.leader_wait_ms),
        ] {
            if !(100..=600_000).contains(&value) {
                return Err(format!("{flag} must be between 100 and 600000"));
            }
        }
        if !(1..=limits::MAX_KEY_BYTES_CEILING).contains(&self.max_key_bytes) {
            return Err(format!("--max-key-bytes must be between 1 and {}", limits::MAX_KEY_BYTES_CEILING));
        }
        if !(1024..=limits::MAX_VALUE_BYTES_CEILING).contains(&self.max_value_bytes) {
            return Err(format!("--max-value-bytes must be between 1024 and {}", limits::MAX_VALUE_BYTES_CEILING));
        }
        if !(limits::MIN_CLIENT_CONNECTIONS..=1_000_000).contains(&self.max_client_connections) {
            return Err(format!(
                "--max-client-connections must be between {} and 1000000",
                limits::MIN_CLIENT_CONNECTIONS
            ));
        }
        if self.snapshot_log_entries < 100 {
            return Err("--snapshot-log-entries must be at least 100".into());
        }
        if !(limits::MIN_WATCH_HISTORY_REVISIONS..=limits::MAX_WATCH_HISTORY_REVISIONS)
            .contains(&self.watch_history_revisions)
        {
            return Err(format!(
                "--watch-history-revisions must be between {} and {}",
                limits::MIN_WATCH_HISTORY_REVISIONS,
                limits::MAX_WATCH_HISTORY_REVISIONS
            ));
        }
        if !(limits::MIN_WATCH_HISTORY_MS..=limits::MAX_WATCH_HISTORY_MS).contains(&self.watch_history_ms) {
            return Err(format!(
                "--watch-history-ms must be between {} and {}",
                limits::MIN_WATCH_HISTORY_MS,
                limits::MAX_WATCH_HISTORY_MS
            ));
        }
        if self.fault_fsync_delay_ms + self.fault_fsync_jitter_ms > limits::MAX_FAULT_FSYNC_DELAY_MS {
            return Err(format!(
                "--fault-fsync-delay-ms plus --fault-fsync-jitter-ms must be at most {}",
                limits::MAX_FAULT_FSYNC_DELAY_MS
            ));
        }
        let peer_tls = [&self.peer_cert_file, &self.peer_key_file, &self.peer_trusted_ca_file];
        if peer_tls.iter().any(|file| file.is_some()) && !peer_tls.iter().all(|file| file.is_some()) {
            return Err("peer TLS needs all of --peer-cert-file, --peer-key-file and --peer-trusted-ca-file".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err("--client-cert-file and --client-key-file go together".into());
        }
        if self.client_trusted_ca_file.is_some() && self.client_cert_file.is_none() {
            return Err("--client-trusted-ca-file needs client TLS (--client-cert-file, --client-key-file)".into());
        }
        if !self.peer_tls() && self.peer_token.is_none() && self.peer_token_file.is_none() {
            return Err("the peer port needs a credential: --peer-token-file (or --peer-token), the same on every \
                        member, or mutual TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file); \
                        `quorumkv certs init` makes both for a test cluster"
                .into());
        }
        if let Some(PeerToken(token)) = &self.peer_token {
            check_peer_token(token)?;
        }
        let client_port_ca = self.client_trusted_ca_file.is_some() || self.peer_trusted_ca_file.is_some();
        if self.join.is_some() && self.client_cert_file.is_some() && !client_port_ca {
            return Err("joining a cluster whose client ports speak TLS needs a CA to check them: \
                        --client-trusted-ca-file or --peer-trusted-ca-file"
                .into());
        }
        Ok(())
    }

    /// Whether the peer port speaks mutual TLS.
    pub fn peer_tls(&self) -> bool {
        self.peer_cert_file.is_some()
    }

    /// The peer tokens, from `--peer-token` or read from `--peer-token-file`: one token per
    /// line (blank lines and surrounding whitespace ignored). The first is the one this node
    /// sends; every one is accepted, so a token can be rotated by a rolling restart (add the new
    /// one second, then move it first, then drop the old one). Empty without a token.
    pub fn load_peer_tokens(&self) -> Result<Vec<String>, String> {
        let tokens = match (&self.peer_token, &self.peer_token_file) {
            (Some(PeerToken(token)), _) => vec![token.clone()],
            (None, Some(file)) => {
                let metadata =
                    std::fs::metadata(file).map_err(|e| format!("--peer-token-file {}: {e}", file.display()))?;
                if metadata.len() > limits::MAX_PEER_TOKEN_FILE_BYTES {
                    return Err(format!("--peer-token-file {} is larger than a token can be", file.display()));
                }
                let text =
                    std::fs::read_to_string(file).map_err(|e| format!("--peer-token-file {}: {e}", file.display()))?;
                let tokens: Vec<String> =
                    text.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_string).collect();
                if tokens.is_empty() {
                    return Err(format!("--peer-token-file {} holds no token", file.display()));
                }
                tokens
            }
            (None, None) => return Ok(Vec::new()),
        };
        for token in &tokens {
            check_peer_token(token)?;
        }
        Ok(tokens)
    }

    pub fn advertised_client_addr(&self) -> &str {
        self.advertise_client_addr.as_deref().unwrap_or(&self.client_addr)
    }

    pub fn advertised_peer_addr(&self) -> &str {
        self.advertise_peer_addr.as_deref().unwrap_or(&self.peer_addr)
    }

    /// The client addresses given to `--join`.
    pub fn join_addrs(&self) -> Vec<String> {
        self.join.as_deref().map(|join| join_addrs(join).map(str::to_string).collect()).unwrap_or_default()
    }

    /// The founding members by id, parsed from `--initial-cluster`.
    pub fn initial_members(&self) -> Result<BTreeMap<NodeId, String>, String> {
        let Some(spec) = &self.initial_cluster else {
            return Ok(BTreeMap::from([(self.id, self.advertised_peer_addr().to_string())]));
        };
        let mut members = BTreeMap::new();
        for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (id, addr) =
                item.split_once('=').ok_or_else(|| format!("--initial-cluster item {item:?} is not id=host:port"))?;
            let id: NodeId = id.trim().parse().map_err(|_| format!("--initial-cluster id {id:?} is not a number"))?;
            if id == 0 {
                return Err("--initial-cluster ids must be at least 1".into());
            }
            check_addr("--initial-cluster", addr.trim())?;
            if members.insert(id, addr.trim().to_string()).is_some() {
                return Err(format!("--initial-cluster lists node {id} twice"));
            }
        }
        if members.is_empty() {
            return Err("--initial-cluster is empty".into());
        }
        Ok(members)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    pub fn leader_wait(&self) -> Duration {
        Duration::from_millis(self.leader_wait_ms)
    }

    /// The storage faults the `--fault-*` flags ask for (none by default).
    pub fn storage_faults(&self) -> crate::store::FaultOptions {
        crate::store::FaultOptions {
            lose_unsynced_writes: self.fault_lose_unsynced_writes,
            fsync_delay: Duration::from_millis(self.fault_fsync_delay_ms),
            fsync_jitter: Duration::from_millis(self.fault_fsync_jitter_ms),
        }
    }

    /// openraft's configuration, every option that matters set explicitly.
    pub fn raft_config(&self) -> Result<openraft::Config, String> {
        let config = openraft::Config {
            cluster_name: "quorumkv".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            max_payload_entries: limits::MAX_PAYLOAD_ENTRIES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_log_entries),
            max_in_snapshot_log_to_keep: 1_000,
            install_snapshot_timeout: limits::PEER_RPC_TIMEOUT_MS * 10,
            enable_pre_vote: Some(true),
            // Replicate entries as soon as the leader has submitted them to its log, so the
            // leader's fsync and the followers' run at the same time instead of one after the
            // other (commit still needs a durable quorum; the leader's own entry counts only
            // once flushed).
            broadcast_submitted_on_append: Some(true),
            // A restarted leader must win an election again. openraft's default lets it resume
            // its term at once; a leader that lost its unsynced log tail (power cut, kernel
            // crash) would then propose new entries under log ids its followers already hold
            // with other contents, and the replicas diverge (DESIGN.md §12).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config.validate().map_err(|error| format!("raft configuration: {error}"))
    }
}

fn join_addrs(join: &str) -> impl Iterator<Item = &str> {
    join.split(',')
        .map(|a| a.trim().trim_start_matches("http://").trim_start_matches("https://"))
        .filter(|a| !a.is_empty())
}

/// A token long enough not to be guessed, and sendable in an HTTP header.
fn check_peer_token(token: &str) -> Result<(), String> {
    if token.len() < limits::MIN_PEER_TOKEN_BYTES {
        return Err(format!("the peer token must be at least {} bytes", limits::MIN_PEER_TOKEN_BYTES));
    }
    if token.len() > limits::MAX_PEER_TOKEN_BYTES {
        return Err(format!("the peer token must be at most {} bytes", limits::MAX_PEER_TOKEN_BYTES));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the peer token must be printable ASCII without spaces".into());
    }
    Ok(())
}

fn check_addr(flag: &str, addr: &str) -> Result<(), String> {
    let (host, _) = addr.rsplit_once(':').ok_or_else(|| format!("{flag} {addr:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{flag} {addr:?} has no host"));
    }
    port_of(addr).map(|_| ()).ok_or_else(|| format!("{flag} {addr:?} has no valid port"))
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, port)| port.parse().ok())
}

/// Loads `QUORUMKV_*=value` lines from the config file named by `--config` or
/// `QUORUMKV_CONFIG` into the environment, without overriding variables already set.
/// Must run before any thread starts.
pub fn load_config_file(args: &[String]) -> Result<(), String> {
    let from_args = args.windows(2).find(|pair| pair[0] == "--config").map(|pair| pair[1].clone());
    let from_flag_eq = args.iter().find_map(|arg| arg.strip_prefix("--config=").map(str::to_string));
    let Some(path) = from_args.or(from_flag_eq).or_else(|| std::env::var("QUORUMKV_CONFIG").ok()) else {
        return Ok(());
    };
    for (name, value) in read_config_file(std::path::Path::new(&path))? {
        if std::env::var_os(&name).is_none() {
            std::env::set_var(name, value);
        }
    }
    Ok(())
}

/// The `QUORUMKV_NAME=value` pairs of a config file, in the env-file syntax `dotenvy` reads
/// (comments, blank lines, quotes, `export`); a name outside `QUORUMKV_*` is an error, so a
/// typo or another program's variable is never silently taken up.
fn read_config_file(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let shown = path.display();
    let lines = dotenvy::from_path_iter(path).map_err(|e| format!("config file {shown}: {e}"))?;
    let mut pairs = Vec::new();
    for line in lines {
        let (name, value) = line.map_err(|e| format!("config file {shown}: {e}"))?;
        if !name.starts_with("QUORUMKV_") {
            return Err(format!("config file {shown}: {name} does not start with QUORUMKV_"));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        config: ServeConfig,
    }

    /// `args`, with a peer token unless they give a peer credential themselves.
    fn parse(args: &[&str]) -> ServeConfig {
        let mut argv = args.to_vec();
        if !args.iter().any(|arg| arg.starts_with("--peer-token") || arg.starts_with("--peer-cert")) {
            argv.extend_from_slice(&["--peer-token", TOKEN]);
        }
        parse_exact(&argv)
    }

    fn parse_exact(args: &[&str]) -> ServeConfig {
        let mut argv = vec!["quorumkv"];
        argv.extend_from_slice(args);
        Wrapper::try_parse_from(argv).expect("parse").config
    }

    /// Goal: the file's syntax is dotenv's (comments, quotes, `export`), and only
    /// `QUORUMKV_*` names are taken.
    #[test]
    fn a_config_file_holds_quorumkv_variables_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.env");
        let text =
            "# node 1\nQUORUMKV_ID=1\n\nexport QUORUMKV_PEER_ADDR=\"10.0.0.1:9080\"\nQUORUMKV_LOG='info' # quiet\n";
        std::fs::write(&path, text).expect("write");
        let pairs = read_config_file(&path).expect("valid file");
        let expected = [("QUORUMKV_ID", "1"), ("QUORUMKV_PEER_ADDR", "10.0.0.1:9080"), ("QUORUMKV_LOG", "info")];
        let expected: Vec<(String, String)> = expected.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(pairs, expected);
        std::fs::write(&path, "QUORUMKV_ID=1\nPATH=/tmp\n").expect("write");
        assert!(read_config_file(&path).expect_err("refused").contains("PATH does not start with QUORUMKV_"));
        std::fs::write(&path, "QUORUMKV_ID 1\n").expect("write");
        assert!(read_config_file(&path).is_err());
        assert!(read_config_file(&dir.path().join("missing.env")).is_err());
    }

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn defaults_with_a_peer_token_are_valid() {
        parse_exact(&["--id", "1", "--peer-token", TOKEN]).validate().expect("defaults validate");
    }

    /// Goal: no node starts with a peer port anyone can write through.
    #[test]
    fn the_peer_port_needs_a_token_or_mutual_tls() {
        let error = parse_exact(&["--id", "1"]).validate().expect_err("no credential");
        assert!(error.contains("--peer-token-file"), "{error}");
        let tls = ["--peer-cert-file", "c.pem", "--peer-key-file", "k.pem", "--peer-trusted-ca-file", "ca.pem"];
        let mut args = vec!["--id", "1"];
        args.extend_from_slice(&tls);
        parse(&args).validate().expect("mutual TLS without a token");
        let error = parse(&["--id", "1", "--peer-cert-file", "c.pem"]).validate().expect_err("half TLS");
        assert!(error.contains("--peer-trusted-ca-file"), "{error}");
        let error = parse(&["--id", "1", "--peer-token", "short"]).validate().expect_err("short token");
        assert!(error.contains("at least 16"), "{error}");
        let error = parse(&["--id", "1", "--peer-token", "has space in it 0123"]).validate().expect_err("space");
        assert!(error.contains("printable"), "{error}");
        let error = parse(&["--id", "1", "--peer-token", TOKEN, "--client-trusted-ca-file", "ca.pem"])
            .validate()
            .expect_err("client CA without client TLS");
        assert!(error.contains("--client-cert-file"), "{error}");
    }

    #[test]
    fn the_peer_token_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).expect("write");
        let path_text = path.to_str().expect("utf-8");
        let config = parse(&["--id", "1", "--peer-token-file", path_text]);
        config.validate().expect("valid");
        assert_eq!(config.load_peer_tokens().expect("loads"), [TOKEN]);
        // Several tokens, one per line: for rotation.
        std::fs::write(&path, format!("\n  {TOKEN}  \n\nsecond-token-0123456789\n")).expect("write");
        assert_eq!(config.load_peer_tokens().expect("loads"), [TOKEN, "second-token-0123456789"]);
        std::fs::write(&path, format!("{TOKEN}\nshort\n")).expect("write");
        assert!(config.load_peer_tokens().expect_err("short").contains("at least 16"));
        std::fs::write(&path, "\n \n").expect("write");
        assert!(config.load_peer_tokens().expect_err("empty").contains("holds no token"));
    }

    #[test]
    fn rejects_nonsense_with_the_flag_named() {
        let cases: [(&[&str], &str); 6] = [
            (&["--id", "0"], "--id"),
            (&["--id", "1", "--peer-addr", "nohost"], "--peer-addr"),
            (&["--id", "4", "--initial-cluster", "1=a:1,2=b:2"], "does not list"),
            (&["--id", "1", "--initial-cluster", "1=a:9081,1=b:2"], "twice"),
            (&["--id", "1", "--election-timeout-min-ms", "100"], "--election-timeout-min-ms"),
            (&["--id", "1", "--max-value-bytes", "999999999"], "--max-value-bytes"),
        ];
        for (args, expected) in cases {
            let error = parse(args).validate().expect_err("must be rejected");
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn initial_cluster_parses() {
        let config = parse(&["--id", "2", "--peer-addr", "h:9082", "--initial-cluster", "1=h:9081, 2=h:9082,3=h:9083"]);
        config.validate().expect("valid");
        let members = config.initial_members().expect("members");
        assert_eq!(members.len(), 3);
        assert_eq!(members[&3], "h:9083");
    }
}
