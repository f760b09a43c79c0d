//! The peer wire format: every message one node sends another on `--peer-addr`, and how it is
//! encoded. This module is its one owner; `network` only carries the bytes.
//!
//! # Encoding
//!
//! Every path starts with `/p<version>/` and every request and reply body with one byte,
//! [`PROTOCOL_VERSION`], then the message in postcard (varints, raw byte strings), with nothing
//! after it. A node of another version answers `404` (its paths differ; so does an older build
//! of the same version for a message added since, see below), and a body of another
//! version or with bytes left over is refused (`400`), both before anything runs: two builds
//! that disagree about the format fail loudly instead of misreading each other. (Postcard alone
//! cannot tell: a body of one version can decode as a different message of another.) Builds
//! before version 1 used the same paths without the prefix, so they too answer `404`.
//!
//! # Rules for changing it
//!
//! - Enum variants are **appended, never reordered or removed**: postcard encodes a variant by
//!   its position. A peer that does not know a new variant refuses the message (`400`).
//! - Struct and tuple fields are **never reordered, added or removed** without raising
//!   [`PROTOCOL_VERSION`]: postcard encodes fields by position, without names.
//! - A **new message may be added within a version** only if its sender, answered `404` (an
//!   older build of the same version), falls back to messages that build knows; its request
//!   and reply types are then frozen like the rest. ([`ForwardWrites`] is such a message.)
//! - The tests at the bottom pin the bytes of every message. A change that fails them is a
//!   change of the wire format: raise the version or undo it; never just update the bytes.
//!
//! openraft's own messages (appends, votes, transfers, snapshot replies) are part of this
//! format too: openraft is pinned exactly (`Cargo.toml`) and these tests catch an upgrade that
//! changes them.
//!
//! # Messages
//!
//! Each [`Rpc`] ties a path to its request and reply types, so a caller and the handler cannot
//! disagree about either. Paths below without their `/p1` prefix.
//!
//! | rpc | path | request → reply |
//! |---|---|---|
//! | [`Append`] | `/raft/append` | `AppendEntriesRequest` → `AppendEntriesResponse` |
//! | [`RequestVote`], [`PreVote`] | `/raft/vote`, `/raft/pre-vote` | `VoteRequest` → `VoteResponse` |
//! | [`InstallSnapshot`] | `/raft/snapshot` | [`snapshot_header`] then the file, streamed → `SnapshotResponse` |
//! | [`TransferLeader`] | `/raft/transfer-leader` | `TransferLeaderRequest` → `TransferLeaderResponse` |
//! | [`ForwardWrite`] | `/internal/write` | [`ForwardedWrite`] → `Result<CommandResult, Error>` (run on the leader) |
//! | [`ForwardWrites`] | `/internal/writes` | `Vec<ForwardedWrite>` → `Vec<Result<CommandResult, Error>>`, one per write, in order |
//! | [`ReadIndex`] | `/internal/read-index` | [`ReadPolicy`] → `Result<(NodeId, ReadLogId), Error>` |
//! | [`Freshness`] | `/internal/freshness` | `()` → `Result<FreshnessReply, Error>` (bounded staleness) |
//! | [`Admin`] | `/internal/admin` | [`AdminCommand`] → `Result<(), Error>` (run on the leader) |
//! | [`Probe`] | `/internal/probe` | asking `NodeId` → `Result<ProbeReply, Error>` (bootstrap safety) |
//! | [`Announce`] | `/internal/announce` | bootstrapping `NodeId` → `Result<(), Error>` |
//!
//! `Error` (the API's error enum, `error.rs`) crosses this wire inside the replies, and
//! `Command`/`CommandResult` (`types.rs`) inside writes and appends: the same rules bind them.

use openraft::raft::linearizable_read::ReadLogId;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// The first byte of every peer message. Raised for any change the rules above do not allow.
pub const PROTOCOL_VERSION: u8 = 1;

/// One request/reply exchange between peers: where it is sent, and what goes each way.
pub trait Rpc {
    /// The path on the peer port (`POST`).
    const PATH: &'static str;
    type Request: Serialize + DeserializeOwned + Send + Sync;
    type Reply: Serialize + DeserializeOwned + Send;
}

macro_rules! rpc {
    ($(#[$doc:meta])* $name:ident, $path:literal, $request:ty => $reply:ty) => {
        $(#[$doc])*
        pub enum $name {}
        impl Rpc for $name {
            const PATH: &'static str = $path;
            type Request = $request;
            type Reply = $reply;
        }
    };
}

rpc!(/// Raft log replication and heartbeats.
    Append, "/p1/raft/append", AppendEntriesRequest<TypeConfig> => AppendEntriesResponse<TypeConfig>);
rpc!(/// A candidate asks for a vote.
    RequestVote, "/p1/raft/vote", VoteRequest<TypeConfig> => VoteResponse<TypeConfig>);
rpc!(/// A would-be candidate asks whether it could win, before raising its term.
    PreVote, "/p1/raft/pre-vote", VoteRequest<TypeConfig> => VoteResponse<TypeConfig>);
rpc!(/// The leader hands leadership to this node.
    TransferLeader, "/p1/raft/transfer-leader", TransferLeaderRequest<TypeConfig> => TransferLeaderResponse<TypeConfig>);
rpc!(/// A client's write, run on the leader.
    ForwardWrite, "/p1/internal/write", ForwardedWrite => Result<CommandResult, Error>);
rpc!(/// Several clients' writes forwarded together, run on the leader as one proposal of
    /// several entries; one answer per write, in the order sent. At most
    /// [`MAX_FORWARDED_WRITES_PER_BATCH`] writes. Added within version 1: a build before it
    /// answers `404` (nothing ran), and the sender then forwards the writes one by one.
    ForwardWrites, "/p1/internal/writes", Vec<ForwardedWrite> => Vec<Result<CommandResult, Error>>);
rpc!(/// The leader confirms it leads and names the log id a linearizable read waits for.
    ReadIndex, "/p1/internal/read-index", ReadPolicy => Result<(NodeId, ReadLogId<TypeConfig>), Error>);
rpc!(/// How fresh the leader's quorum-confirmed commit point is (bounded-staleness reads).
    Freshness, "/p1/internal/freshness", () => Result<FreshnessReply, Error>);
rpc!(/// A membership or leadership change, run on the leader.
    Admin, "/p1/internal/admin", AdminCommand => Result<(), Error>);
rpc!(/// "Have you seen me hold Raft state?", asked by a node whose data dir is empty.
    Probe, "/p1/internal/probe", NodeId => Result<ProbeReply, Error>);
rpc!(/// "Record that I now hold Raft state", sent (and recorded durably) before bootstrapping.
    Announce, "/p1/internal/announce", NodeId => Result<(), Error>);

/// A streamed snapshot: the body is [`snapshot_header`] then the snapshot file's bytes.
pub enum InstallSnapshot {}

impl InstallSnapshot {
    pub const PATH: &'static str = "/p1/raft/snapshot";
}

/// The reply to [`InstallSnapshot`].
pub type InstallSnapshotReply = SnapshotResponse<TypeConfig>;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Once a quorum of voters has it durable (semi-synchronous; the default).
    Quorum,
    /// Once every voter has it durable (synchronous). A voter that is down makes the write
    /// time out with an unknown outcome (it is committed by the quorum, not acknowledged).
    All,
}

/// A client's write as a follower forwards it to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedWrite {
    pub command: Command,
    pub ack: Ack,
}

/// How a read asks the leader to confirm its leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadPolicy {
    /// ReadIndex: a heartbeat round to a quorum.
    ReadIndex,
    /// Leader lease: no round trip while the lease holds (assumes bounded clock drift).
    Lease,
}

/// A cluster administration request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Add a node as a non-voting learner that receives the log (and snapshots). `fresh`: the
    /// node has no Raft state (a new or wiped data dir); if it is already a learner, the
    /// leader replicates to it from scratch instead of from where its old log reached.
    AddLearner { id: NodeId, peer_addr: String, fresh: bool },
    /// Make a caught-up learner a voter.
    Promote { id: NodeId },
    /// Remove a voter or learner from the cluster.
    Remove { id: NodeId },
    /// Hand leadership to the given voter.
    TransferLeader { to: NodeId },
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
    pub committed_membership: Option<LogId>,
    /// ...and whether the asker is in it: a committed membership newer than the asker's own
    /// that leaves it out means the asker was removed (see `removal.rs`).
    pub asker_in_committed_membership: bool,
}

/// Why a peer message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("peer protocol version {received}; this node speaks version {PROTOCOL_VERSION}")]
    Version { received: u8 },
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
}

/// Most writes one [`ForwardWrites`] carries: a leader refuses more (`400`) before any runs.
/// Enough that a busy follower's forwarded writes go in a few messages per fsync; a batch
/// is also cut at a size (the sender's), so a batch of large values stays one peer message.
pub const MAX_FORWARDED_WRITES_PER_BATCH: usize = 256;

/// One element of a sequence, encoded alone (no version byte): see [`encode_sequence`].
pub fn encode_element<T: Serialize + ?Sized>(element: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(element)
}

/// The message `encode(&vec![a, b, ...])` from the elements [`encode_element`] encoded one by
/// one: a sender encodes each write as it is queued, on the caller's task, and a batch is
/// then only their concatenation (and the exact size of a batch is known before it is sent).
pub fn encode_sequence<E: AsRef<[u8]>>(elements: &[E]) -> Result<Vec<u8>, postcard::Error> {
    // Postcard writes a sequence as its length (a varint, like any usize), then its elements.
    let mut message = postcard::to_extend(&elements.len(), vec![PROTOCOL_VERSION])?;
    for element in elements {
        message.extend_from_slice(element.as_ref());
    }
    Ok(message)
}

/// The message `encode(&element)` from what [`encode_element`] made of it.
pub fn encode_from_element(element: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(element.len() + 1);
    message.push(PROTOCOL_VERSION);
    message.extend_from_slice(element);
    message
}

/// A message as it goes on the wire: the version byte, then postcard.
pub fn encode<T: Serialize + ?Sized>(message: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(message, vec![PROTOCOL_VERSION])
}

/// Reads a message written by [`encode`]: the version must match and nothing may follow it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&PROTOCOL_VERSION, body)) => {
            let (message, rest) = postcard::take_from_bytes(body)?;
            if rest.is_empty() {
                Ok(message)
            } else {
                Err(DecodeError::Trailing(rest.len()))
            }
        }
        Some((&received, _)) => Err(DecodeError::Version { received }),
    }
}

/// Longest vote frame a snapshot transfer may open with: a vote is a few dozen bytes, so a
/// larger length is garbage, refused before anything is buffered for it.
pub const MAX_SNAPSHOT_HEADER_BYTES: usize = 4 * 1024;

/// The frame that opens a snapshot transfer: the length (u32, little-endian) of the encoded
/// vote, then the vote encoded as any message (version byte first).
pub fn snapshot_header(vote: &Vote) -> Result<Vec<u8>, postcard::Error> {
    let encoded = encode(vote)?;
    let mut header = (encoded.len() as u32).to_le_bytes().to_vec();
    header.extend_from_slice(&encoded);
    Ok(header)
}

/// Why the frame opening a snapshot transfer was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotHeaderError {
    #[error("snapshot header of {0} bytes is over the limit of {MAX_SNAPSHOT_HEADER_BYTES}")]
    TooLarge(usize),
    #[error("snapshot header: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads the frame [`snapshot_header`] writes from the start of a transfer's bytes:
/// `Ok(None)` while more bytes are needed, else the vote and the frame's length (the
/// snapshot file follows it).
pub fn read_snapshot_header(bytes: &[u8]) -> Result<Option<(Vote, usize)>, SnapshotHeaderError> {
    let Some(length) = bytes.first_chunk::<4>() else { return Ok(None) };
    let length = u32::from_le_bytes(*length) as usize;
    if length > MAX_SNAPSHOT_HEADER_BYTES {
        return Err(SnapshotHeaderError::TooLarge(length));
    }
    match bytes.get(4..4 + length) {
        None => Ok(None),
        Some(frame) => Ok(Some((decode(frame)?, 4 + length))),
    }
}

#[cfg(test)]
mod tests {
    //! The pinned bytes of every message. When one of these fails, the wire format changed:
    //! read the rules at the top of this module before touching the expected bytes.

    use bytes::Bytes;
    use openraft::entry::RaftEntry;

    use super::*;
    use crate::types::test_log_id as log_id;
    use crate::types::Entry;
    use crate::types::Precondition;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Encodes `message`, compares with `expected` (hex), and decodes the bytes back.
    fn pinned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(message: T, expected: &str) {
        let bytes = encode(&message).expect("encode");
        assert_eq!(hex(&bytes), expected, "the wire bytes of {message:?} changed");
        let back: T = decode(&bytes).expect("decode");
        assert_eq!(back, message);
    }

    /// Like [`pinned`], for openraft's messages (which do not all implement `PartialEq`).
    fn pinned_bytes<T: Serialize + DeserializeOwned + std::fmt::Debug>(message: T, expected: &str) {
        let bytes = encode(&message).expect("encode");
        assert_eq!(hex(&bytes), expected, "the wire bytes of {message:?} changed");
        let back: T = decode(&bytes).expect("decode");
        assert_eq!(hex(&encode(&back).expect("encode")), expected);
    }

    #[test]
    fn forwarded_writes_are_pinned() {
        let put = Command::Put {
            key: "k".into(),
            value: Bytes::from_static(b"v1"),
            precondition: Precondition::ModRevision(7),
        };
        pinned(ForwardedWrite { command: put, ack: Ack::Quorum }, "0100016b027631010700");
        let delete = Command::Delete { key: "k".into(), precondition: Precondition::Absent };
        pinned(ForwardedWrite { command: delete, ack: Ack::All }, "0101016b0301");
        let register = Command::RegisterClientAddr { node_id: 3, client_addr: "127.0.0.1:8083".into() };
        pinned(ForwardedWrite { command: register, ack: Ack::Quorum }, "0102030e3132372e302e302e313a3830383300");
        let principal = crate::auth::Principal::User { name: "a".into(), revision: Some(5) };
        let wrapped = Command::As {
            principal,
            command: Box::new(Command::Delete { key: "k".into(), precondition: Precondition::None }),
        };
        pinned(ForwardedWrite { command: wrapped, ack: Ack::Quorum }, "0103000161010501016b0000");
        let auth = Command::Auth(crate::auth::AuthCommand::DeleteRole { name: "r".into() });
        pinned(ForwardedWrite { command: auth, ack: Ack::All }, "010403017201");
        pinned::<Result<CommandResult, Error>>(
            Ok(CommandResult::Refused(crate::auth::Refusal::Forbidden("f".into()))),
            "010004010166",
        );
        pinned::<Result<CommandResult, Error>>(Ok(CommandResult::Put { revision: 300 }), "010000ac02");
        pinned::<Result<CommandResult, Error>>(
            Ok(CommandResult::Delete { revision: 301, deleted: true }),
            "010001ad0201",
        );
        pinned::<Result<CommandResult, Error>>(
            Ok(CommandResult::PreconditionFailed { current_revision: Some(5) }),
            "0100020105",
        );
        pinned::<Result<CommandResult, Error>>(Ok(CommandResult::Empty), "010003");
        let txn = Command::Txn(crate::txn::Txn {
            compare: vec![crate::txn::Compare {
                key: "k".into(),
                cmp: crate::txn::Cmp::Less,
                target: crate::txn::Target::ModRevision(7),
            }],
            success: vec![crate::txn::TxnOp::Put { key: "k".into(), value: Bytes::from_static(b"v") }],
            failure: vec![crate::txn::TxnOp::DeletePrefix { prefix: "p".into() }],
        });
        pinned(ForwardedWrite { command: txn, ack: Ack::Quorum }, "010501016b0201070100016b01760102017000");
        pinned::<Result<CommandResult, Error>>(
            Ok(CommandResult::Txn {
                succeeded: false,
                revision: 300,
                results: vec![crate::txn::TxnOpResult::Get(None), crate::txn::TxnOpResult::DeletePrefix { deleted: 2 }],
            }),
            "01000600ac020203000202",
        );
    }

    /// Goal: a batch of forwarded writes is pinned, and the sender's way of building one from
    /// writes encoded one by one gives exactly the bytes of the whole batch encoded at once.
    #[test]
    fn forwarded_write_batches_are_pinned() {
        let put = |key: &str| ForwardedWrite {
            command: Command::Put {
                key: key.into(),
                value: Bytes::from_static(b"v"),
                precondition: Precondition::None,
            },
            ack: Ack::Quorum,
        };
        let batch = vec![put("a"), put("b")];
        pinned(batch.clone(), "01020001610176000000016201760000");
        let elements: Vec<Vec<u8>> = batch.iter().map(|write| encode_element(write).expect("encode")).collect();
        assert_eq!(encode_sequence(&elements).expect("encode"), encode(&batch).expect("encode"));
        assert_eq!(encode_from_element(&elements[0]), encode(&batch[0]).expect("encode"));
        // A length past one varint byte, as a full batch has.
        let full: Vec<ForwardedWrite> = (0..MAX_FORWARDED_WRITES_PER_BATCH).map(|i| put(&i.to_string())).collect();
        let elements: Vec<Vec<u8>> = full.iter().map(|write| encode_element(write).expect("encode")).collect();
        assert_eq!(encode_sequence(&elements).expect("encode"), encode(&full).expect("encode"));
        pinned::<Vec<Result<CommandResult, Error>>>(
            vec![Ok(CommandResult::Put { revision: 300 }), Err(Error::NoLeader { last_known_leader: Some(2) })],
            "01020000ac02010a0102",
        );
    }

    #[test]
    fn every_error_variant_is_pinned() {
        let cases: Vec<(Error, &str)> = vec![
            (Error::InvalidKey("k".into()), "010100016b"),
            (Error::InvalidParameter("p".into()), "0101010170"),
            (Error::InvalidHeader("h".into()), "0101020168"),
            (Error::KeyTooLarge { size: 2, limit: 1 }, "0101030201"),
            (Error::ValueTooLarge { size: 2, limit: 1 }, "0101040201"),
            (Error::KeyNotFound, "010105"),
            (Error::PreconditionFailed { current_revision: None }, "01010600"),
            (Error::RouteNotFound, "010107"),
            (Error::MemberNotFound(4), "01010804"),
            (Error::Conflict("c".into()), "0101090163"),
            (Error::NoLeader { last_known_leader: Some(2) }, "01010a0102"),
            (Error::Unavailable("u".into()), "01010b0175"),
            (Error::ShuttingDown, "01010c"),
            (Error::TooStale { lag_ms: Some(9), max_lag_ms: 5 }, "01010d010905"),
            (Error::OutcomeUnknown("o".into()), "01010e016f"),
            (Error::Internal("i".into()), "01010f0169"),
            (Error::Removed { membership_index: 12 }, "0101100c"),
            (Error::RequestTimeout { limit_ms: 30000 }, "010111b0ea01"),
            (Error::Overloaded, "010112"),
            (Error::Unauthorized("a".into()), "0101130161"),
            (Error::Forbidden("a".into()), "0101140161"),
            (Error::Compacted { oldest_revision: 7 }, "01011507"),
        ];
        for (error, expected) in cases {
            pinned::<Result<(), Error>>(Err(error), expected);
        }
    }

    #[test]
    fn read_points_freshness_and_admin_are_pinned() {
        pinned(ReadPolicy::ReadIndex, "0100");
        pinned(ReadPolicy::Lease, "0101");
        // openraft builds a ReadLogId only inside its crate; it encodes as the log id it wraps.
        let read_log_id: ReadLogId<TypeConfig> = decode(&encode(&log_id(2, 1, 40)).expect("encode")).expect("decode");
        pinned_bytes::<Result<(NodeId, ReadLogId<TypeConfig>), Error>>(Ok((1, read_log_id)), "010001020128");
        pinned((), "01");
        pinned::<Result<FreshnessReply, Error>>(
            Ok(FreshnessReply { committed_index: 41, quorum_age_us: 1500 }),
            "010029dc0b",
        );
        pinned(
            AdminCommand::AddLearner { id: 4, peer_addr: "127.0.0.1:9084".into(), fresh: true },
            "0100040e3132372e302e302e313a3930383401",
        );
        pinned(AdminCommand::Promote { id: 4 }, "010104");
        pinned(AdminCommand::Remove { id: 4 }, "010204");
        pinned(AdminCommand::TransferLeader { to: 2 }, "010302");
    }

    #[test]
    fn bootstrap_messages_are_pinned() {
        pinned::<NodeId>(3, "0103");
        pinned::<Result<ProbeReply, Error>>(
            Ok(ProbeReply {
                has_seen_asker: true,
                asker_registered: false,
                members: vec![(1, "10.0.0.1:9080".into()), (2, "10.0.0.2:9080".into())],
                committed_membership: Some(log_id(3, 1, 17)),
                asker_in_committed_membership: true,
            }),
            "0100010002010d31302e302e302e313a39303830020d31302e302e302e323a393038300103011101",
        );
        pinned::<Result<(), Error>>(Ok(()), "0100");
    }

    #[test]
    fn raft_messages_are_pinned() {
        let vote = Vote::new_committed(5, 1);
        let put = Command::Put { key: "k".into(), value: Bytes::from_static(b"v"), precondition: Precondition::None };
        pinned_bytes(
            AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id: Some(log_id(5, 1, 9)),
                entries: vec![Entry::new_blank(log_id(5, 1, 10)), Entry::new_normal(log_id(5, 1, 11), put)],
                leader_commit: Some(log_id(4, 2, 8)),
            },
            "01050101010501090205010a0005010b0100016b01760001040208",
        );
        pinned_bytes(AppendEntriesResponse::<TypeConfig>::Success, "0100");
        pinned_bytes(AppendEntriesResponse::<TypeConfig>::PartialSuccess(Some(log_id(5, 1, 10))), "01010105010a");
        pinned_bytes(AppendEntriesResponse::<TypeConfig>::Conflict, "0102");
        pinned_bytes(AppendEntriesResponse::<TypeConfig>::HigherVote(Vote::new(6, 2)), "0103060200");
        let request = VoteRequest::<TypeConfig>::new(Vote::new(6, 2), Some(log_id(5, 1, 11)));
        pinned_bytes(request, "010602000105010b00");
        pinned_bytes(
            VoteResponse::<TypeConfig>::new(Vote::new(6, 2), Some(log_id(5, 1, 11)), true),
            "01060200010105010b",
        );
        pinned_bytes(TransferLeaderRequest::<TypeConfig>::new(vote, 2, Some(log_id(5, 1, 11))), "01050101020105010b");
        pinned_bytes::<TransferLeaderResponse<TypeConfig>>(Ok(()), "0100");
        pinned_bytes(InstallSnapshotReply::new(vote), "01050101");
        let header = snapshot_header(&vote).expect("encode");
        assert_eq!(hex(&header), "0400000001050101", "the snapshot header's bytes changed");
    }

    /// Goal: a membership entry (and the `Member` it carries) is pinned like any other entry.
    #[test]
    fn membership_entries_are_pinned() {
        let voters = std::collections::BTreeSet::from([1, 2]);
        let nodes = std::collections::BTreeMap::from([
            (1, crate::types::Member { peer_addr: "10.0.0.1:9080".into() }),
            (2, crate::types::Member { peer_addr: "10.0.0.2:9080".into() }),
            (3, crate::types::Member { peer_addr: "10.0.0.3:9080".into() }),
        ]);
        let membership = openraft::Membership::new(vec![voters], nodes).expect("membership");
        pinned_bytes(Entry::new_membership(log_id(7, 2, 30), membership), "0107021e020102010203010d31302e302e302e313a39303830020d31302e302e302e323a39303830030d31302e302e302e333a39303830");
    }

    /// Goal: every path carries the version, so nodes of different versions answer each other 404.
    #[test]
    fn every_path_carries_the_version() {
        let prefix = format!("/p{PROTOCOL_VERSION}/");
        for path in [
            Append::PATH,
            RequestVote::PATH,
            PreVote::PATH,
            TransferLeader::PATH,
            InstallSnapshot::PATH,
            ForwardWrite::PATH,
            ForwardWrites::PATH,
            ReadIndex::PATH,
            Freshness::PATH,
            Admin::PATH,
            Probe::PATH,
            Announce::PATH,
        ] {
            assert!(path.starts_with(&prefix), "{path}");
        }
    }

    /// Goal: a snapshot transfer's opening frame is read as it arrives, in pieces: every
    /// prefix asks for more, the whole frame gives the vote and where the file starts, and a
    /// length over the limit is refused before anything waits for its bytes.
    #[test]
    fn the_snapshot_header_is_read_in_pieces_and_bounded() {
        let vote = Vote::new_committed(5, 1);
        let mut transfer = snapshot_header(&vote).expect("encode");
        let frame_length = transfer.len();
        transfer.extend_from_slice(b"QKVSNAP1");
        for cut in 0..frame_length {
            assert!(matches!(read_snapshot_header(&transfer[..cut]), Ok(None)), "prefix of {cut} bytes");
        }
        let (read, length) = read_snapshot_header(&transfer).expect("valid").expect("complete");
        assert_eq!((read, length), (vote, frame_length));
        let too_long = ((MAX_SNAPSHOT_HEADER_BYTES + 1) as u32).to_le_bytes();
        assert!(matches!(read_snapshot_header(&too_long), Err(SnapshotHeaderError::TooLarge(_))));
        let garbage = [1, 0, 0, 0, 9];
        assert!(matches!(read_snapshot_header(&garbage), Err(SnapshotHeaderError::Decode(_))));
    }

    /// Goal: a command wrapped in `As` more than once is refused when decoded, however deep
    /// the wrapping: postcard has no depth limit, and a message of nested wrappers (two bytes a
    /// level) would otherwise recurse until the decoding thread's stack overflowed, taking the
    /// node down (a forwarded write, an append, a log entry read back from disk).
    #[test]
    fn a_command_wrapped_twice_is_refused_without_recursing() {
        let nested = |levels: usize| {
            let mut bytes = vec![PROTOCOL_VERSION];
            for _ in 0..levels {
                bytes.extend_from_slice(&[0x03, 0x01]); // Command::As { principal: Member, command:
            }
            bytes.extend_from_slice(&[0x01, 0x01, b'k', 0x00]); // Delete { key: "k", precondition: None }
            bytes.push(0x00); // ack: Quorum
            bytes
        };
        assert!(decode::<ForwardedWrite>(&nested(0)).is_ok());
        assert!(decode::<ForwardedWrite>(&nested(1)).is_ok());
        assert!(decode::<ForwardedWrite>(&nested(2)).is_err(), "a command wrapped twice decoded");
        // A million levels on a small stack: any recursion per level would overflow it.
        let deep = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || decode::<ForwardedWrite>(&nested(1_000_000)).is_err())
            .expect("thread")
            .join();
        assert!(matches!(deep, Ok(true)), "a deeply wrapped command was not refused");
    }

    #[test]
    fn another_version_or_trailing_bytes_are_refused() {
        let mut bytes = encode(&ReadPolicy::Lease).expect("encode");
        assert_eq!(decode::<ReadPolicy>(&bytes).expect("decode"), ReadPolicy::Lease);
        bytes.push(0);
        assert!(matches!(decode::<ReadPolicy>(&bytes), Err(DecodeError::Trailing(1))));
        bytes.pop();
        bytes[0] = PROTOCOL_VERSION + 1;
        assert!(matches!(decode::<ReadPolicy>(&bytes), Err(DecodeError::Version { received }) if received == 2));
        assert!(matches!(decode::<ReadPolicy>(&[]), Err(DecodeError::Empty)));
        // Without the version byte (a build before it): the variant index 1 is read as the version.
        let unversioned = postcard::to_allocvec(&ReadPolicy::Lease).expect("encode");
        assert!(decode::<ReadPolicy>(&unversioned).is_err());
    }
}
