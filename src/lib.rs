//! quorumkv: a shared-nothing replicated key-value store. Every node runs Raft (openraft)
//! over its own RocksDB and serves the same HTTP API.
//!
//! This crate is the server. The workspace around it (DESIGN.md §15):
//!
//! | member | role |
//! |---|---|
//! | `crates/api` (`quorumkv-api`) | the HTTP contract: parameters, bodies, the error body, the client |
//! | `crates/wire` (`quorumkv-wire`) | every format read from outside a node: commands, peer protocol, snapshot files, backups, auth records |
//! | `.` (`quorumkv`) | this library (the server) and the `quorumkv` binary: serve, the CLI, bench, verify |
//! | `tools/bench` (`quorumkv-bench`) | `quorumkv bench`: load generator for quorumkv and etcd's gateway |
//! | `tools/jepsen` (`quorumkv-jepsen`) | Jepsen-style fault runs, the checkers, and `quorumkv verify` |
//!
//! # Layout
//!
//! | module | role |
//! |---|---|
//! | [`config`] | `ServeConfig`: flags, `QUORUMKV_*` env, optional file, `validate()` |
//! | [`limits`] | every hard limit, named, with the reason for its value |
//! | [`types`] | Raft type configuration; `Command`/`CommandResult`, the replicated payload (from `quorumkv-wire`) |
//! | [`txn`] | transactions: compares, then one of two lists of operations, in one log entry (from `quorumkv-wire`) |
//! | [`error`] | the one closed API error enum and its status table (from `quorumkv-wire`) |
//! | [`api`] | client HTTP handlers on `--client-addr`: authenticate, validate, call `Node`, map to HTTP |
//! | [`auth`] | users, roles, tokens: the policy, checked at the edge and again at apply (from `quorumkv-wire`) |
//! | [`node`] | `Node`: writes via the leader, linearizable reads, status, step-down |
//! | [`read_rounds`] | concurrent linearizable reads share one read point (one round, not one each) |
//! | [`bootstrap`] | how a node starts: resume, join, or bootstrap — never a wiped voter |
//! | [`leader`] | the one way to the leader: run locally or forward, retry only what did not run |
//! | [`removal`] | a removed member learns it, stops serving clients, comes back with `--join` |
//! | [`watch`] | watch streams and blocking reads from this node's change history |
//! | [`lease`] | the leader's clock for leases: fresh TTLs on a new leader, expiry proposed as a command |
//! | [`admin`] | membership and leadership changes on the leader, with safety refusals |
//! | [`staleness`] | bounded-staleness reads, measured against the cluster's real commit point |
//! | [`backup`] | consistent JSON-lines backups streamed from a node |
//! | [`protocol`] | the peer wire format: every message, its path, its version byte, pinned bytes (from `quorumkv-wire`) |
//! | [`network`] | peer HTTP on `--peer-addr`: carries `protocol`'s Raft RPCs and forwarded requests (writes in batches), each proven to come from a member (mutual TLS or peer token) |
//! | [`store`] | RocksDB: Raft log and metadata (group commit), state machine, snapshots |
//! | [`server`] | start-up (on addresses, or on listeners bound already), signals, graceful shutdown |
//! | [`listener`] | accepting connections within limits: a cap per listener, header deadlines, TLS |
//! | [`tls`] | TLS on both ports, mutual TLS between peers, certificates reloaded on change |
//! | [`certs`] | `quorumkv certs init`: a development CA and node certificates |
//! | [`logging`] | tracing output with the node id on every line |
//! | [`metrics`] | Prometheus metrics served on `GET /metrics` |
//!
//! # Request path (peer paths without their `/p1` version prefix)
//!
//! ```text
//! write:  HTTP PUT ─▶ api::kv::put ─▶ Node::write ──(follower)──▶ peer /internal/writes ┐
//!         (POST /v1/txn ─▶ api::txn::txn ─▶ the same, as Command::Txn)                   │
//!                                        │ (leader)                                      │
//!                                        ▼                                               ▼
//!                       Raft::client_write ◀───────── Node::write_as_leader, write_many_as_leader
//!                              │ append: LogStore (WAL write, then one fsync per batch)
//!                              │ replicate: network::RaftConnection ─▶ peers' /raft/append
//!                              ▼ quorum durable ⇒ committed
//!                       StateMachine::apply (one WriteBatch) ─▶ CommandResult ─▶ 200 {"revision"}
//!                         every PUT, DELETE and Txn through apply_txn: compares, then a branch
//!         a follower's concurrent writes reach the leader in batches (network::write_batches)
//!
//! read:   HTTP GET ─▶ api::kv::get ─▶ Node::get
//!            linearizable/lease: read point from the leader (ReadIndex or lease,
//!            via /internal/read-index on a follower; concurrent reads share one, read_rounds)
//!            ─▶ wait until applied here ─▶ KvReader
//!            stale: KvReader directly
//! ```

pub mod admin;
pub mod api;
pub mod backup;
pub mod bootstrap;
pub mod certs;
pub mod config;
pub mod leader;
pub mod lease;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod node;
pub mod read_rounds;
pub mod removal;
pub mod server;
pub mod staleness;
pub mod store;
pub mod tls;
pub mod types;
pub mod watch;

// The formats read from outside a node live in `quorumkv-wire`; under their old names here.
pub use quorumkv_wire::auth;
pub use quorumkv_wire::error;
pub use quorumkv_wire::protocol;
pub use quorumkv_wire::txn;
