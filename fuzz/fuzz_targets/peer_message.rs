//! Every message a node decodes from a peer (`quorumkv_wire::protocol`): each request a
//! handler reads on the peer port and each reply a caller reads back, all tried on every
//! input. Whatever decodes must re-encode, and decode again to the same bytes; a decoded
//! command's checks and an error's table row must answer without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::raft::linearizable_read::ReadLogId;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use quorumkv_wire::error::Error;
use quorumkv_wire::limits::MAX_KEY_BYTES_CEILING;
use quorumkv_wire::limits::MAX_VALUE_BYTES_CEILING;
use quorumkv_wire::protocol;
use quorumkv_wire::protocol::AdminCommand;
use quorumkv_wire::protocol::ForwardedWrite;
use quorumkv_wire::protocol::FreshnessReply;
use quorumkv_wire::protocol::ProbeReply;
use quorumkv_wire::protocol::ReadPolicy;
use quorumkv_wire::types::CommandResult;
use quorumkv_wire::types::NodeId;
use quorumkv_wire::types::TypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `bytes` as `T`; if that works, the encoding of what came out must decode again
/// and encode to the same bytes (postcard is not canonical, so the input itself may differ).
fn decodes<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let message: T = protocol::decode(bytes).ok()?;
    let encoded = protocol::encode(&message).expect("a decoded message re-encodes");
    let again: T = protocol::decode(&encoded).expect("a message's own encoding decodes");
    assert_eq!(protocol::encode(&again).expect("re-encodes"), encoded, "the encoding is not stable");
    Some(message)
}

fn judge(error: &Error) {
    let _ = (error.status(), error.code(), error.outcome(), error.retry_after_seconds(), error.to_string());
}

fuzz_target!(|bytes: &[u8]| {
    // Requests, as the peer port's handlers decode them.
    if let Some(request) = decodes::<AppendEntriesRequest<TypeConfig>>(bytes) {
        let _ = format!("{request:?}");
    }
    decodes::<VoteRequest<TypeConfig>>(bytes);
    decodes::<TransferLeaderRequest<TypeConfig>>(bytes);
    if let Some(write) = decodes::<ForwardedWrite>(bytes) {
        // The leader checks a forwarded write again before proposing it.
        let _ = write.command.check(MAX_KEY_BYTES_CEILING, MAX_VALUE_BYTES_CEILING);
        let _ = write.command.to_string();
    }
    decodes::<ReadPolicy>(bytes);
    decodes::<AdminCommand>(bytes);
    decodes::<NodeId>(bytes);
    decodes::<()>(bytes);
    // Replies, as the sending side decodes them.
    decodes::<AppendEntriesResponse<TypeConfig>>(bytes);
    decodes::<VoteResponse<TypeConfig>>(bytes);
    decodes::<SnapshotResponse<TypeConfig>>(bytes);
    decodes::<TransferLeaderResponse<TypeConfig>>(bytes);
    if let Some(Err(error)) = decodes::<Result<CommandResult, Error>>(bytes) {
        judge(&error);
    }
    decodes::<Result<(NodeId, ReadLogId<TypeConfig>), Error>>(bytes);
    decodes::<Result<FreshnessReply, Error>>(bytes);
    decodes::<Result<ProbeReply, Error>>(bytes);
    if let Some(Err(error)) = decodes::<Result<(), Error>>(bytes) {
        judge(&error);
    }
});
