//! quorumkv-wire: every format a quorumkv node reads from outside itself, and the types they
//! carry. A node decodes these bytes from peers (Raft RPCs, forwarded writes, streamed
//! snapshots), from its own disk (log entries, snapshot files) and from operators (backups),
//! so they are one crate, free of RocksDB and of the HTTP server: its decoders build in
//! seconds and are fuzzed on their own (`fuzz/`, DESIGN.md §18).
//!
//! | module | format |
//! |---|---|
//! | [`types`] | Raft type configuration; `Command`/`CommandResult`, the replicated payload (postcard, in the log) |
//! | [`txn`] | transactions: compares and operations, applied in one log entry; every conditional write is one |
//! | [`lease`] | leases and per-key TTLs: the commands, ids, records and bounds (expiry is a replicated command) |
//! | [`auth`] | users, roles, grants and tokens: the records replicated through the log, the policy, Argon2id and HMAC |
//! | [`error`] | the one closed API error enum and its status table (it crosses the peer wire inside replies) |
//! | [`protocol`] | the peer wire format: every message, its path, its version byte, pinned bytes |
//! | [`snapshot`] | the snapshot file: framed, checksummed records, streamed as is between peers |
//! | [`backup`] | the backup file: JSON lines with a header and a counted trailer |
//! | [`limits`] | the ceilings every one of these formats is read within |
//!
//! The server (`quorumkv`) re-exports these modules under the same names.

pub mod auth;
pub mod backup;
pub mod error;
pub mod lease;
pub mod limits;
pub mod protocol;
pub mod snapshot;
pub mod txn;
pub mod types;
