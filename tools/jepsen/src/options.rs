//! What a run is asked to do: the `quorumkv-jepsen` flags.

use clap::Parser;
use clap::ValueEnum;

use crate::checker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Reads, unique writes and compare-and-set on a few keys; checked for linearizability.
    Register,
    /// Unique adds, then one final read; checked for lost and unexpected elements.
    Set,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Nemesis {
    None,
    /// kill -9 a random node or the leader, restart it later.
    Kill,
    /// SIGSTOP a random node or the leader, SIGCONT it later.
    Pause,
    /// Random majority/minority splits, leader isolation, and bridge/ring on 5 nodes.
    Partition,
    /// Kills and pauses.
    KillPause,
    /// Remove a random follower voter from the membership, later add it back and promote it.
    Membership,
    /// Power cut: kill -9 the leader (sometimes another node) and restart it at once. The nodes
    /// run with `--fault-lose-unsynced-writes` (a killed node loses whatever it had not
    /// fsynced, as after a power cut) on a disk whose fsync latency jitters. Not in `mix`.
    PowerCut,
    /// Any of the above.
    Mix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterKind {
    /// Nodes in network namespaces (scripts/netns-cluster.sh): all faults. Needs root.
    Netns,
    /// Three nodes on loopback (scripts/start-3-nodes.sh): no partitions.
    Local,
    /// Containers under Docker Compose (scripts/compose-cluster.sh): all faults. Needs root
    /// for partitions (iptables in the containers' namespaces).
    Compose,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "quorumkv-jepsen", about = "Seeded fault-injection test with a checked history")]
pub struct Options {
    /// Seed of the schedule and the operation mix (printed; reuse it to replay a run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Length of the faulty phase.
    #[arg(long, default_value_t = 60)]
    pub time_limit_secs: u64,
    #[arg(long, value_enum, default_value = "register")]
    pub workload: Workload,
    #[arg(long, value_enum, default_value = "mix")]
    pub nemesis: Nemesis,
    /// Seconds per nemesis cycle: a fault for half of it, then healing.
    #[arg(long, default_value_t = 8)]
    pub nemesis_interval_secs: u64,
    #[arg(long, value_enum, default_value = "netns")]
    pub cluster: ClusterKind,
    /// Nodes of a netns or compose cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Concurrent clients, spread over all nodes.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Keys of the register workload.
    #[arg(long, default_value_t = 4)]
    pub keys: usize,
    /// Consistency of the register workload's reads: linearizable, lease, stale (which
    /// demonstrates what the checker catches) or bounded (`stale&max_lag_ms=--max-lag-ms`,
    /// checked against its bound instead of for linearizability).
    #[arg(long, default_value = "linearizable")]
    pub read_consistency: String,
    /// With `--read-consistency bounded`: the staleness bound of every read.
    #[arg(long, default_value_t = 500)]
    pub max_lag_ms: u64,
    /// Learners (asynchronous replicas) that join a netns cluster besides its voters; clients
    /// and faults reach them like any node.
    #[arg(long, default_value_t = 0)]
    pub learners: u64,
    /// HTTPS on the client ports and mutual TLS between the nodes (`start-3-nodes.sh --tls`,
    /// development certificates): the runner trusts only the cluster's CA. `--cluster local` only.
    #[arg(long)]
    pub tls: bool,
    /// Users and roles on (`start-3-nodes.sh --auth`): the runner logs in as root once and
    /// every client sends the token. `--cluster local` only.
    #[arg(long)]
    pub auth: bool,
    /// Skip the final kill-all-and-restart phase.
    #[arg(long)]
    pub no_durability: bool,
    /// Search steps per key before the checker answers unknown.
    #[arg(long, default_value_t = checker::DEFAULT_STEP_BUDGET)]
    pub step_budget: u64,
    /// With `--nemesis power-cut`: every fsync of a node's Raft log waits a random 0..N ms, so a
    /// leader's own fsync often finishes after its followers' (the window a power cut exploits).
    #[arg(long, default_value_t = 20)]
    pub fsync_jitter_ms: u64,
    /// Directory for the history, logs and summary (default target/jepsen/<seed>).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}
