//! Prometheus metrics (`GET /metrics`, text format): HTTP requests and their latency by route
//! and status, Raft state, leader changes, replication lag per peer, snapshots, log purges and
//! RocksDB sizes.
//!
//! Request metrics are recorded as requests finish; Raft and storage gauges are read when the
//! endpoint is scraped; changes (leader, snapshot, purge) are counted by a task that watches
//! openraft's metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    part: String,
}

/// Raft figures read at scrape time.
#[derive(Debug, Default)]
pub struct RaftGauges {
    pub term: u64,
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// Leader only: entries each peer is behind.
    pub lag_entries: Vec<(u64, u64)>,
}

/// All of a node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    term: Gauge,
    is_leader: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    replication_lag: Family<PeerLabels, Gauge>,
    storage_bytes: Family<StoreLabels, Gauge>,
    leader_changes: Counter,
    snapshots: Counter,
    purges: Counter,
    forwarded_batch_writes: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("quorumkv");
        // 100 µs to about 13 s: loopback reads through a slow fsync under load.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let metrics = Metrics {
            requests: Family::default(),
            latency,
            term: Gauge::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            replication_lag: Family::default(),
            storage_bytes: Family::default(),
            leader_changes: Counter::default(),
            snapshots: Counter::default(),
            purges: Counter::default(),
            // 1 to 256: one write alone up to a full batch (the peer protocol's limit).
            forwarded_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests by route, method and status", metrics.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and method",
            metrics.latency.clone(),
        );
        registry.register("raft_term", "Current Raft term", metrics.term.clone());
        registry.register("raft_is_leader", "1 when this node is the leader", metrics.is_leader.clone());
        registry.register("raft_commit_index", "Last log index known committed here", metrics.commit_index.clone());
        registry.register("raft_applied_index", "Last log index applied here", metrics.applied_index.clone());
        registry.register("raft_last_log_index", "Last log index in this node's log", metrics.last_log_index.clone());
        registry.register(
            "raft_replication_lag_entries",
            "Leader only: entries each peer is behind the leader's log",
            metrics.replication_lag.clone(),
        );
        registry.register("raft_leader_changes", "Times the known leader changed", metrics.leader_changes.clone());
        registry.register("raft_snapshots", "Snapshots built or installed", metrics.snapshots.clone());
        registry.register("raft_log_purges", "Times the log was purged behind a snapshot", metrics.purges.clone());
        registry.register(
            "storage_bytes",
            "RocksDB SST and memtable bytes by column family",
            metrics.storage_bytes.clone(),
        );
        registry.register(
            "forwarded_write_batch_writes",
            "Writes per batch another node forwarded here (to the leader it believed this node was)",
            metrics.forwarded_batch_writes.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Records one finished HTTP request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels { route: route.to_string(), method: method.to_string(), status };
        self.requests.get_or_create(&labels).inc();
        let route_labels = RouteLabels { route: labels.route, method: labels.method };
        self.latency.get_or_create(&route_labels).observe(elapsed.as_secs_f64());
    }

    pub fn count_leader_change(&self) {
        self.leader_changes.inc();
    }

    pub fn count_snapshot(&self) {
        self.snapshots.inc();
    }

    pub fn count_purge(&self) {
        self.purges.inc();
    }

    /// Records the size of a batch of writes another node forwarded to this leader.
    pub fn observe_forwarded_batch(&self, writes: usize) {
        self.forwarded_batch_writes.observe(writes as f64);
    }

    /// Sets the scrape-time gauges and encodes everything in the Prometheus text format.
    pub fn render(&self, raft: &RaftGauges, storage: &[(String, u64)]) -> Result<String, std::fmt::Error> {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.term.set(gauge(raft.term));
        self.is_leader.set(i64::from(raft.is_leader));
        self.commit_index.set(gauge(raft.commit_index));
        self.applied_index.set(gauge(raft.applied_index));
        self.last_log_index.set(gauge(raft.last_log_index));
        self.replication_lag.clear();
        for (peer, lag) in &raft.lag_entries {
            self.replication_lag.get_or_create(&PeerLabels { peer: *peer }).set(gauge(*lag));
        }
        for (part, bytes) in storage {
            self.storage_bytes.get_or_create(&StoreLabels { part: part.clone() }).set(gauge(*bytes));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
