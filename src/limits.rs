//! Every hard limit of quorumkv, each with the reason for its value.
//!
//! Configurable limits have their defaults here and their bounds checked by
//! [`crate::config::ServeConfig::validate`]; the rest are fixed.

/// Default largest key and value, in bytes: part of the API contract (`quorumkv_api::limits`).
pub use quorumkv_api::limits::DEFAULT_MAX_KEY_BYTES;
pub use quorumkv_api::limits::DEFAULT_MAX_VALUE_BYTES;
/// The ceilings of keys and values, and the records built from them: limits of the formats
/// (`quorumkv_wire::limits`, where the reasons are given), checked by their readers.
pub use quorumkv_wire::limits::MAX_KEY_BYTES_CEILING;
pub use quorumkv_wire::limits::MAX_SNAPSHOT_RECORD_BYTES;
pub use quorumkv_wire::limits::MAX_VALUE_BYTES_CEILING;

/// A request body up to this much over the value limit is read (and dropped) before the 413,
/// so a client still sending it gets the answer rather than a broken pipe; a larger one is
/// refused unread and its connection closed.
pub const OVERSIZE_BODY_DRAIN_BYTES: usize = 1024 * 1024;

/// Largest JSON body of `POST /v1/txn`: its keys and values, which may total
/// `--max-key-bytes` plus `--max-value-bytes`, twice over (base64 is 4/3 of a value, JSON text
/// escapes a few bytes), with room for the JSON of three full lists. The transaction itself is
/// then checked against the exact limit (`Txn::check`).
pub fn txn_body_bytes(max_key_bytes: usize, max_value_bytes: usize) -> usize {
    let lists = 3 * quorumkv_wire::txn::MAX_TXN_OPS;
    2 * (max_key_bytes + max_value_bytes) + lists * TXN_BODY_BYTES_PER_ENTRY
}

/// Room in a transaction's body for the JSON of one compare or operation besides its key.
pub const TXN_BODY_BYTES_PER_ENTRY: usize = 256;

/// Default change history a node keeps for watches (`--watch-history-revisions`): a client
/// that reconnects within this many revisions resumes without a gap. About 100 k events of
/// small keys is tens of MB on disk.
pub const DEFAULT_WATCH_HISTORY_REVISIONS: u64 = 100_000;
/// The bounds of `--watch-history-revisions`: at least several apply batches' worth (a batch
/// can hold hundreds of entries, and a watcher caught up must not be pruned under); at most
/// what the disk of a small node holds comfortably.
pub const MIN_WATCH_HISTORY_REVISIONS: u64 = 1_000;
pub const MAX_WATCH_HISTORY_REVISIONS: u64 = 100_000_000;
/// Default age bound of the history (`--watch-history-ms`): an hour, like etcd's default
/// auto-compaction retention in periodic mode.
pub const DEFAULT_WATCH_HISTORY_MS: u64 = 3_600_000;
/// The bounds of `--watch-history-ms`: a second to a week.
pub const MIN_WATCH_HISTORY_MS: u64 = 1_000;
pub const MAX_WATCH_HISTORY_MS: u64 = 7 * 24 * 3_600_000;
/// Watch streams one node serves at once; each holds a connection and a task. More get `429`.
pub const MAX_WATCHERS: usize = 1_024;

/// How often the leader's lease keeper looks at its deadlines: a lease ends at most this much
/// (plus one commit) after its TTL ran out.
pub const LEASE_TICK_MS: u64 = 100;
/// How long, beyond the write timeout, the leader waits after proposing an expiry before it
/// proposes it again (a proposal that timed out may not have run; an expiry is idempotent).
pub const LEASE_EXPIRE_RETRY_MS: u64 = 1_000;
/// Expiries the leader proposes per tick (10,000 a second): a mass expiry, after a client
/// fleet died, goes out in bounded waves rather than as one burst of proposals.
pub const MAX_LEASE_EXPIRIES_PER_TICK: usize = 1_000;
/// Largest lease request body: a keepalive of the most leases (1,000 ids of 20 digits).
pub const LEASE_BODY_BYTES: usize = 64 * 1024;
/// Expiries proposed and not yet answered, at most: while commits are slow, due leases wait
/// for a free slot instead of piling up proposals.
pub const MAX_PENDING_LEASE_EXPIRIES: usize = 2_000;
/// Keys a lease's description lists (`GET /v1/leases/{id}`); the rest are counted.
pub const MAX_LEASE_KEYS_SHOWN: usize = 1_000;
/// An idle watch stream gets a `progress` event this often: the client learns the revision it
/// may resume after, and a dead connection is noticed.
pub const WATCH_PROGRESS_INTERVAL_MS: u64 = 5_000;
/// Events read from the history at a time for one stream (a `delete_prefix` may make many).
pub const WATCH_READ_BATCH_EVENTS: usize = 1_024;
/// ...and at most about this many bytes of them (at least one event): values may be large.
pub const WATCH_READ_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Events a stream holds for a slow client before it stops reading the history (the client
/// then reads at its own pace; nothing is dropped).
pub const WATCH_STREAM_BUFFER_EVENTS: usize = 256;
/// A read of the history overlapped a snapshot install: wait this long and read again.
pub const WATCH_RETRY_PAUSE_MS: u64 = 50;
/// ...at most this many times (5 s): a stream or blocking read does not wait out a long install
/// (or one that failed) but ends, and its client goes to another node.
pub const WATCH_RETRY_ATTEMPTS: u32 = 100;
/// Default and longest wait of a blocking read (`wait_ms`): Consul's default is 5 minutes and
/// its longest 10; a minute keeps proxies' idle timeouts from cutting the wait.
pub const DEFAULT_WAIT_MS: u64 = 60_000;
pub const MAX_WAIT_MS: u64 = 600_000;

/// Default and largest page of a list (`GET /v1/kv?limit=`): a page is built in memory.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;

/// How long a client write may wait for commit before its outcome is reported unknown (504).
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 5_000;
/// How long a read may wait for leadership confirmation and local apply before a 503.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 5_000;

/// While no leader is known, a request waits this long for an election before answering 503;
/// a little over two election timeouts covers one failover.
pub const DEFAULT_LEADER_WAIT_MS: u64 = 2_000;

/// Raft timing defaults (ms). A new leader about 1 s after the old one dies, tolerating two
/// lost heartbeats. openraft's followers refuse votes while the leader lease (the maximum
/// election timeout) runs, so a first candidacy before it expires fails and the election takes
/// one more timeout: about 0.9-1.2 s with these values (1.2-1.6 s measured with 400-800).
/// openraft's own 150-300 ms flap on a loaded 2-core machine; etcd uses 100 ms / 1000 ms.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 100;
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 300;
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 600;

/// Tries at the leader for one request, each ending in an answer or in proof that the request
/// did not run. Bounds the loop; the real bound is `--leader-wait-ms` (pauses double from
/// 10 ms to 100 ms, so about 25 tries fit in the default 2 s).
pub const MAX_LEADER_ATTEMPTS: usize = 32;
/// After "not the leader" from the presumed leader without a better hint, pause this long
/// before looking again, doubling up to the maximum: short, because a leader is usually
/// known again within one heartbeat (writes must resume within 100 ms of an election).
pub const LEADER_RETRY_PAUSE_FIRST_MS: u64 = 10;
pub const LEADER_RETRY_PAUSE_MAX_MS: u64 = 100;

/// Timeout of one Raft RPC to a peer when openraft gives none. A peer that does not answer
/// in this time is treated as unreachable for that round.
pub const PEER_RPC_TIMEOUT_MS: u64 = 2_000;
/// Connecting to a peer must be fast on a LAN; a partitioned peer must not stall replication.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;
/// Replication reads at most this many bytes of log entries into one AppendEntries (at least
/// one entry, however large): big enough to catch a node up at disk speed, small enough to be
/// sent and fsynced well within an RPC's timeout. etcd's per-message cap is 1 MiB.
pub const MAX_APPEND_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// An AppendEntries gets [`PEER_RPC_TIMEOUT_MS`] plus this many milliseconds per MiB it
/// carries: a batch of large values takes longer to send, write and fsync than a heartbeat.
pub const PEER_RPC_TIMEOUT_MS_PER_MIB: u64 = 250;
/// Largest body a peer accepts on the peer port: one batch, or one entry at the value and key
/// ceilings, with room for the encoding. Snapshots are streamed and bounded by
/// `MAX_SNAPSHOT_BYTES` instead.
pub const MAX_PEER_MESSAGE_BYTES: usize = MAX_VALUE_BYTES_CEILING + MAX_KEY_BYTES_CEILING + 1024 * 1024;

/// Largest snapshot a node accepts from a leader. Snapshots are streamed to disk, so this
/// guards the disk against a runaway stream rather than memory; far above any state this
/// store is meant for (etcd's default quota is 2 GiB, its hard ceiling 8 GiB).
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Largest opening frame of a snapshot transfer: a limit of the peer protocol.
pub use quorumkv_wire::protocol::MAX_SNAPSHOT_HEADER_BYTES;
/// A snapshot is sent in pieces of this size: large enough for throughput, small enough that
/// the sender holds little of it in memory.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
/// A whole snapshot transfer, from the first byte sent to the receiver's install, must finish
/// in this time (a few hundred MB take seconds on a LAN; 10 minutes covers tens of GB).
pub const SNAPSHOT_TRANSFER_TIMEOUT_MS: u64 = 600_000;
/// A peer message's body (not a snapshot's: that has [`SNAPSHOT_IDLE_TIMEOUT_MS`]) must arrive
/// within this, or it gets `408`: the largest message at the ceilings takes its sender well
/// under this (which has given up long before), and a trickling body cannot hold its task.
pub const PEER_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// A snapshot receiver gives up when no byte arrives for this long: a sender whose host died
/// or was cut off without closing the connection must not hold a partial file forever.
pub const SNAPSHOT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// A snapshot install writes the state in batches of about this size, so installing a large
/// snapshot never builds one huge batch in memory.
pub const SNAPSHOT_INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Entries per AppendEntries RPC: bounds a message at about this many values.
pub const MAX_PAYLOAD_ENTRIES: u64 = 256;

/// Completed-append callbacks queued for the fsync thread. openraft bounds in-flight appends
/// itself; this bound only guards against a bug turning into unbounded memory.
pub const FLUSH_QUEUE_CAPACITY: usize = 4096;

/// At start-up with an empty data directory, how long a node keeps asking its peers whether
/// they have seen it (and, once bootstrapped, keeps announcing itself) before it gives up and
/// exits for a supervisor to start it again: every peer must answer, because the one that does
/// not may be the only one that remembers this node. Ten minutes covers founders started by
/// hand one after another.
pub const BOOTSTRAP_WAIT_MS: u64 = 600_000;
/// Timeout of one bootstrap question to one peer (a LAN round trip and a synced write).
pub const BOOTSTRAP_PROBE_TIMEOUT_MS: u64 = 1_000;
/// Pause between rounds of asking the peers that have not answered yet.
pub const BOOTSTRAP_RETRY_MS: u64 = 200;
/// How often a node waiting for peers at start-up says which ones it is waiting for.
pub const BOOTSTRAP_REPORT_MS: u64 = 10_000;
/// Largest number of peers a bootstrapping node asks (founders plus the members they name);
/// far above any sensible cluster, it only bounds the loop.
pub const MAX_BOOTSTRAP_PEERS: usize = 256;

/// How often a node looks at whether it was removed from the cluster (or added back).
pub const REMOVAL_WATCH_INTERVAL_MS: u64 = 500;
/// A node that has had no leader for this long asks its peers whether it was removed, and asks
/// again this often while it stays without one: a few election timeouts, so a normal election
/// never triggers it.
pub const REMOVAL_CHECK_AFTER_MS: u64 = 2_000;

/// On graceful shutdown, how long a leader waits for leadership to move to a follower.
pub const LEADER_TRANSFER_WAIT_MS: u64 = 3_000;
/// On graceful shutdown, how long the node keeps its client port open answering every new
/// request with a definite 503 `shutting_down` (and `Connection: close`) before it closes the
/// port. Closing at once would reset requests a client had already sent on a kept-alive
/// connection, which the client must then report as outcome unknown. Longer than the client's
/// largest back-off, so a client sleeping between attempts still hears the refusal.
pub const SHUTDOWN_REFUSE_PERIOD_MS: u64 = 1_500;
/// On graceful shutdown, how long in-flight HTTP requests may take to finish.
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;

/// Client requests doing work at once per node (reads, writes and administration, counted
/// once their body has arrived); a request that finds no slot within
/// [`ADMISSION_WAIT_MS`] gets `429 too_many_requests`, so load sheds instead of piling up
/// work and memory. Bodies still arriving hold a connection, not a slot.
pub const MAX_CONCURRENT_CLIENT_REQUESTS: usize = 4096;
/// How long a client request may wait for a slot before `429`.
pub const ADMISSION_WAIT_MS: u64 = 1_000;

/// Default cap on open client connections per node (`--max-client-connections`); lowered at
/// start-up when the descriptor limit cannot also cover [`RESERVED_DESCRIPTORS`].
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;
/// The client connection cap never goes below this, however low the descriptor limit.
pub const MIN_CLIENT_CONNECTIONS: usize = 64;
/// Descriptors kept from client connections: the peer listener's connections, the connections
/// both listeners answer `503` beyond their caps, this node's own connections to its peers
/// (forwards and Raft streams), RocksDB's open files and the rest. Client load can never cost a
/// node its place in the cluster.
pub const RESERVED_DESCRIPTORS: u64 = MAX_PEER_CONNECTIONS as u64
    + 2 * MAX_REFUSING_CONNECTIONS as u64
    + (MAX_PEERS * (MAX_FORWARDS_IN_FLIGHT_PER_PEER + RAFT_CONNECTIONS_PER_PEER)) as u64
    + ROCKSDB_MAX_OPEN_FILES as u64
    + SNAPSHOT_VIEW_MAX_OPEN_FILES as u64
    + OTHER_DESCRIPTORS;
/// Connections a node holds to one peer for Raft itself (the append stream, votes, snapshot
/// transfers, probes), with room for a pool's reconnects.
pub const RAFT_CONNECTIONS_PER_PEER: usize = 8;
/// Files the read-only view of a checkpoint keeps open while a snapshot is written from it.
pub const SNAPSHOT_VIEW_MAX_OPEN_FILES: i32 = 64;
/// Descriptors for everything else: snapshot files being written or sent, log files, the
/// runtime's own (epoll, eventfds), standard streams.
pub const OTHER_DESCRIPTORS: u64 = 256;
/// Peer connections a node accepts at once: Raft streams and forwarded requests of up to
/// [`MAX_PEERS`] peers.
pub const MAX_PEER_CONNECTIONS: usize = 1_024;
/// The cluster size the descriptor reserve is sized for (a larger one still works; its nodes
/// just reserve less than they might use).
pub const MAX_PEERS: usize = 15;
/// Requests one node forwards to one peer at once (writes and reads through the leader): each
/// takes a connection; more wait on the forwarding node.
pub const MAX_FORWARDS_IN_FLIGHT_PER_PEER: usize = 64;
/// How long a request waits for a forwarding slot to the leader before `429`.
pub const FORWARD_SLOT_WAIT_MS: u64 = 1_000;

/// Batches of forwarded writes one node has in flight to one peer (see
/// `network/write_batches.rs`). While they are all out, writes queue and go together in the
/// next: a few in flight keep the leader's pipeline full (it proposes one batch while the
/// previous is being fsynced and replicated), while more would only make the batches smaller.
pub const MAX_WRITE_BATCHES_IN_FLIGHT_PER_PEER: usize = 4;
/// A batch of forwarded writes is cut at about this many encoded bytes (a larger single write
/// goes alone): one replication batch's worth ([`MAX_APPEND_BATCH_BYTES`]), so a batch of
/// large values is sent, proposed and answered well within a write's timeout and always fits
/// a peer message ([`MAX_PEER_MESSAGE_BYTES`]). (At 1 MiB, 64 KiB values went 16 to a batch,
/// and writes queued behind four slow batches long enough to be refused.)
pub const MAX_FORWARDED_WRITE_BATCH_BYTES: usize = MAX_APPEND_BATCH_BYTES;
/// Most writes per batch: the peer protocol's own limit (a leader refuses more).
pub use quorumkv_wire::protocol::MAX_FORWARDED_WRITES_PER_BATCH;
/// Writes waiting on one node for a batch to one peer: beyond this a write is refused at once
/// (`429`) rather than queued. Four full batches: as many as can be in flight. A queued write
/// waits at most its own timeout for a batch slot (`network/write_batches.rs`), then up to
/// [`FORWARD_SLOT_WAIT_MS`] for a connection and its timeout again for the answer.
pub const MAX_QUEUED_FORWARDED_WRITES_PER_PEER: usize =
    MAX_WRITE_BATCHES_IN_FLIGHT_PER_PEER * MAX_FORWARDED_WRITES_PER_BATCH;

/// A follower's next shared read round begins when the running one ends or, if that one is
/// slow (a leader change, a lossy link), this long after the first read queued for it (with a
/// slot free, below): one slow round does not hold up every read behind it. A round on a
/// healthy network takes a few round trips, far less (see `read_rounds.rs`).
pub const READ_ROUND_OVERLAP_MS: u64 = 100;
/// Shared read rounds of one kind running at once on a follower: the one running and one
/// overlapping it. Each takes a forwarding slot to the leader
/// ([`MAX_FORWARDS_IN_FLIGHT_PER_PEER`]); more would crowd out forwarded writes when the
/// leader is slow.
pub const MAX_READ_ROUNDS_IN_FLIGHT: usize = 2;
/// Forwarded requests the peer port serves at once (Raft RPCs are not counted: one stream per
/// peer bounds them, and they must never wait behind forwarded writes).
pub const MAX_CONCURRENT_FORWARDED_REQUESTS: usize = 1_024;
/// Files RocksDB keeps open (its default is unlimited).
pub const ROCKSDB_MAX_OPEN_FILES: i32 = 512;
/// A client request's headers must arrive within this; a kept-alive connection idle this long
/// is closed. Clients should keep pooled connections idle for less (quorumkv's own: 30 s).
pub const CLIENT_HEADER_TIMEOUT_MS: u64 = 60_000;
/// The same on the peer port (peers keep their pooled connections idle for 30 s at most).
pub const PEER_HEADER_TIMEOUT_MS: u64 = 60_000;
/// How long pooled HTTP connections of quorumkv's own clients (peers, CLI) stay idle before
/// they are dropped: below the servers' header timeouts, so a request never races a close.
pub use quorumkv_api::limits::CLIENT_POOL_IDLE_TIMEOUT_MS;
/// A client request's whole body must arrive within this (a value of 16 MiB at 1 MiB/s), or
/// it gets `408`: a client trickling its body holds a connection for at most this long.
pub const BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// At the client connection cap, a connection idle at least this long may be closed to make
/// room: longer than quorumkv's own clients keep pooled connections, so none of them is caught
/// sending a request into a connection being closed.
pub const EVICTION_MIN_IDLE_MS: u64 = CLIENT_POOL_IDLE_TIMEOUT_MS + 10_000;
/// ...and a connection that never carried a request may be closed once idle this long.
pub const EVICTION_UNUSED_IDLE_MS: u64 = 5_000;
/// At the connection cap, how long accepting waits for an evicted connection to close.
pub const EVICTION_WAIT_MS: u64 = 1_000;
/// Connections past the cap answered `503` at once per listener (each briefly holds a
/// descriptor beyond the cap, so they are bounded, and reserved for); more are closed
/// unanswered.
pub const MAX_REFUSING_CONNECTIONS: usize = 128;
/// How long a refused connection is kept open to read what the client sends, so that closing
/// it does not reset the connection before the client has read the `503`.
pub const REFUSAL_LINGER_MS: u64 = 250;
/// After a failed accept (out of descriptors), how long a listener pauses.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// Registering this node's client address is tried this many times at start-up, this far apart
/// (a minute: a node started long before a quorum of its peers still registers).
pub const REGISTER_CLIENT_ADDR_ATTEMPTS: u32 = 120;
pub const REGISTER_CLIENT_ADDR_INTERVAL_MS: u64 = 500;

/// A learner is promoted to voter only when it is at most this many entries behind the
/// leader's log: a lagging new voter would slow every commit while it catches up.
pub const MAX_PROMOTION_LAG_ENTRIES: u64 = 100;
/// A voter counts as healthy (for refusing unsafe removals) when its replicated log is at most
/// this many entries behind the leader's.
pub const MAX_HEALTHY_LAG_ENTRIES: u64 = 1_000;
/// Before a removal or promotion the leader waits up to this many heartbeat intervals for the
/// members concerned to acknowledge an RPC sent after the request arrived: a voter that died a
/// moment ago still looks caught up, and removing another voter then stalls every write.
pub const HEALTH_CONFIRM_HEARTBEATS: u64 = 5;
/// A joining node asks the cluster to add it this many times, [`JOIN_INTERVAL_MS`] apart, before
/// it gives up, and asks for promotion this many times once caught up (ten minutes: catching
/// up on a large state takes a while).
pub const JOIN_ATTEMPTS: u32 = 60;
pub const PROMOTE_ATTEMPTS: u32 = 600;
pub const JOIN_INTERVAL_MS: u64 = 1_000;
/// An administration request waits at most this long for the one before it on the leader to
/// finish, then gets a definite 503 (it never started): short, so a queued request never
/// outlasts the forwarder's timeout and turns into an unknown outcome.
pub const ADMIN_LOCK_WAIT_MS: u64 = 500;
/// Largest JSON body of a cluster administration request.
pub const MAX_ADMIN_BODY_BYTES: usize = 4 * 1024;

/// Largest injected fsync delay (`--fault-fsync-*`): slow enough to widen every race a test
/// looks for, short of making writes time out.
pub const MAX_FAULT_FSYNC_DELAY_MS: u64 = 10_000;

/// Shortest peer token: 16 random bytes' worth of hex or base64 is beyond guessing; shorter
/// ones are typing mistakes or placeholders.
pub const MIN_PEER_TOKEN_BYTES: usize = 16;
/// Longest peer token: it travels in a header on every peer request.
pub const MAX_PEER_TOKEN_BYTES: usize = 512;
/// Largest `--peer-token-file`: a token and some whitespace; anything bigger is the wrong file.
pub const MAX_PEER_TOKEN_FILE_BYTES: u64 = 4 * 1024;
/// A TLS handshake must finish within this after the connection is accepted, so a client that
/// connects and sends nothing holds a connection slot no longer than one sending no headers.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Largest certificate, key or CA file read: a chain of a few certificates is a few KiB; the
/// files are read every [`CERT_RELOAD_POLL_MS`].
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;
/// How often certificate files are checked for changes (they also reload on SIGHUP): renewed
/// certificates are in use within seconds, and a stat of two files costs nothing.
pub const CERT_RELOAD_POLL_MS: u64 = 5_000;

/// How long one freshness question to the leader may take (bounded-staleness reads).
pub const FRESHNESS_TIMEOUT_MS: u64 = 1_000;
/// The freshness keeper asks the leader once per heartbeat interval while bounded-staleness
/// reads arrive, and stops this long after the last one (idle nodes send nothing).
pub const FRESHNESS_KEEPALIVE_MS: u64 = 30_000;

/// Largest `max_lag_ms` a bounded-staleness read may ask for: one hour.
pub const MAX_STALENESS_BOUND_MS: u64 = 3_600_000;

// The client's limits (`quorumkv_api::limits`), checked here against the server's.
use quorumkv_api::limits::CLIENT_BACKOFF_MAX_MS;
use quorumkv_api::limits::CLIENT_REQUEST_TIMEOUT_MS;

const _: () = assert!(DEFAULT_MAX_KEY_BYTES <= MAX_KEY_BYTES_CEILING);
const _: () = assert!(DEFAULT_MAX_VALUE_BYTES <= MAX_VALUE_BYTES_CEILING);
const _: () = assert!(DEFAULT_LIST_LIMIT <= MAX_LIST_LIMIT);
const _: () = assert!(DEFAULT_HEARTBEAT_INTERVAL_MS < DEFAULT_ELECTION_TIMEOUT_MIN_MS);
const _: () = assert!(DEFAULT_ELECTION_TIMEOUT_MIN_MS < DEFAULT_ELECTION_TIMEOUT_MAX_MS);
const _: () = assert!(CLIENT_REQUEST_TIMEOUT_MS > DEFAULT_WRITE_TIMEOUT_MS);
const _: () = assert!(SHUTDOWN_REFUSE_PERIOD_MS > CLIENT_BACKOFF_MAX_MS);
const _: () = assert!(CLIENT_POOL_IDLE_TIMEOUT_MS < CLIENT_HEADER_TIMEOUT_MS);
const _: () = assert!(CLIENT_POOL_IDLE_TIMEOUT_MS < PEER_HEADER_TIMEOUT_MS);
const _: () = assert!(MIN_CLIENT_CONNECTIONS <= DEFAULT_MAX_CLIENT_CONNECTIONS);
const _: () = assert!(EVICTION_MIN_IDLE_MS < CLIENT_HEADER_TIMEOUT_MS);
const _: () = assert!(MAX_APPEND_BATCH_BYTES < MAX_PEER_MESSAGE_BYTES);
// A batch of several writes stays under its cut (a single larger write goes alone, as it would
// unbatched), with room for the sequence's length.
const _: () = assert!(MAX_FORWARDED_WRITE_BATCH_BYTES + 16 < MAX_PEER_MESSAGE_BYTES);
const _: () = assert!(MAX_VALUE_BYTES_CEILING + MAX_KEY_BYTES_CEILING < MAX_PEER_MESSAGE_BYTES);

/// A list page also stops at about this many value bytes, so a page of large values stays a
/// bounded response (at least one item is always returned).
pub const MAX_LIST_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Argon2 computations (a login's check, a new password's hash) running at once: each takes
/// tens of milliseconds of one core and 19 MiB, so a burst of logins must queue (and get a
/// 429 after `ADMISSION_WAIT_MS`) rather than take the cores from Raft. One: a node may have
/// two cores, and one must stay for replication. Clients log in once per token lifetime.
pub const MAX_CONCURRENT_PASSWORD_HASHES: usize = 1;

/// Default lifetime of a token from `POST /v1/auth/token` (10 minutes; etcd's simple tokens
/// live 5 minutes): short, so a leaked token is soon worthless, long enough that a client
/// logs in rarely. `--auth-token-ttl-ms` within the bounds below.
pub const DEFAULT_AUTH_TOKEN_TTL_MS: u64 = 600_000;
pub use quorumkv_api::limits::MAX_AUTH_TOKEN_TTL_MS;
pub use quorumkv_api::limits::MIN_AUTH_TOKEN_TTL_MS;

/// How long a node waits to apply up to a token's issuer before judging the token: the
/// issuer was ahead by at most a few entries, so this is a replication delay, not a failover.
pub const AUTH_CATCH_UP_WAIT_MS: u64 = 2_000;

/// Largest body of a `/v1/auth/...` request (a role's grants are the largest).
pub const MAX_AUTH_BODY_BYTES: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the descriptors kept from client connections cover everything else a node can hold
    /// open at one time, each counted at its bound: the peer listener's connections, the refused
    /// connections each of the two listeners holds briefly beyond its cap, this node's
    /// connections to its peers, RocksDB's files (the database's and a snapshot's checkpoint
    /// view's) and the rest. It restates the sum, so it guards the accounting, not its inputs:
    /// each input is bounded where it is used (`set_max_open_files`, the listeners' caps).
    #[test]
    fn the_descriptor_reserve_covers_everything_but_client_connections() {
        let listeners = MAX_PEER_CONNECTIONS + 2 * MAX_REFUSING_CONNECTIONS;
        let to_peers = MAX_PEERS * (MAX_FORWARDS_IN_FLIGHT_PER_PEER + RAFT_CONNECTIONS_PER_PEER);
        let rocksdb = ROCKSDB_MAX_OPEN_FILES as usize + SNAPSHOT_VIEW_MAX_OPEN_FILES as usize;
        let needed = (listeners + to_peers + rocksdb) as u64 + OTHER_DESCRIPTORS;
        assert!(RESERVED_DESCRIPTORS >= needed, "{RESERVED_DESCRIPTORS} descriptors reserved, {needed} needed");
    }
}
