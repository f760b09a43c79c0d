//! Node-to-node traffic on `--peer-addr`: Raft RPCs and the forwarding of client requests to
//! the leader, all encoded with postcard over HTTP/1.1.
//!
//! | path | body → reply |
//! |---|---|
//! | `POST /raft/append` | `AppendEntriesRequest` → `AppendEntriesResponse` |
//! | `POST /raft/vote`, `/raft/pre-vote` | `VoteRequest` → `VoteResponse` |
//! | `POST /raft/snapshot` | `[u32 LE length][Vote]` then the snapshot file, streamed → `SnapshotResponse` |
//! | `POST /raft/transfer-leader` | `TransferLeaderRequest` → `TransferLeaderResponse` |
//! | `POST /internal/write` | `(Command, Ack)` → `Result<CommandResult, Error>` (run on the leader) |
//! | `POST /internal/read-index` | `ReadPolicy` → `Result<ReadLogId, Error>` (leader confirms) |
//! | `POST /internal/freshness` | `()` → `Result<FreshnessReply, Error>` (leader; bounded staleness) |
//! | `POST /internal/probe` | asking `NodeId` → `Result<ProbeReply, Error>` (bootstrap safety) |
//! | `POST /internal/announce` | bootstrapping `NodeId` → `Result<(), Error>` (recorded durably first) |
//! | `POST /internal/admin` | `AdminCommand` → `Result<(), Error>` (run on the leader) |
//!
//! A peer that is still deciding whether to bootstrap answers Raft RPCs with 503, so no
//! leader can count it as seen before it has Raft state of its own.

mod factory;
mod peer_client;
mod server;

pub use factory::PeerNetwork;
pub use peer_client::CallError;
pub use peer_client::PeerClient;
pub use peer_client::PeerClients;
use serde::Deserialize;
use serde::Serialize;
pub use server::peer_router;

use crate::types::NodeId;

/// How a read asks the leader to confirm its leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadPolicy {
    /// ReadIndex: a heartbeat round to a quorum.
    ReadIndex,
    /// Leader lease: no round trip while the lease holds (assumes bounded clock drift).
    Lease,
}

/// The leader's answer to a node that serves bounded-staleness reads (see `staleness.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreshnessReply {
    /// The leader's committed index when it answered.
    pub committed_index: u64,
    /// How long before answering the leader's leadership was last confirmed by a quorum:
    /// since the sending of the heartbeat round (or append) that a quorum acknowledged.
    pub quorum_age_us: u64,
}

/// A peer's answer to "have you ever seen me?", asked by a node whose data dir is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The answering node recorded the asker as holding Raft state: the asker announced itself
    /// when it bootstrapped, answered a Raft RPC of the answering node, or sent it one.
    pub has_seen_asker: bool,
    /// The asker's client address is in the answering node's applied state: the asker ran as a
    /// member of this cluster (every node registers its address once it serves).
    pub asker_registered: bool,
    /// The answering node's current members (id, peer address), so the asker asks them too.
    pub members: Vec<(NodeId, String)>,
    /// The log id of the answering node's last committed membership (None: none)...
    pub committed_membership: Option<crate::types::LogId>,
    /// ...and whether the asker is in it: a committed membership newer than the asker's own
    /// that leaves it out means the asker was removed (see `removal.rs`).
    pub asker_in_committed_membership: bool,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The frame that opens a snapshot transfer: the length of the encoded vote, then the vote.
pub(crate) fn snapshot_header(vote: &crate::types::Vote) -> Result<Vec<u8>, postcard::Error> {
    let encoded = encode(vote)?;
    let mut header = (encoded.len() as u32).to_le_bytes().to_vec();
    header.extend_from_slice(&encoded);
    Ok(header)
}
