//! openraft's view of the network: [`PeerNetwork`] hands out one [`RaftConnection`] per peer.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use tokio::io::AsyncSeekExt;

use super::CallError;
use super::PeerClient;
use super::PeerClients;
use crate::limits::PEER_RPC_TIMEOUT_MS;
use crate::limits::PEER_RPC_TIMEOUT_MS_PER_MIB;
use crate::limits::SNAPSHOT_CHUNK_BYTES;
use crate::limits::SNAPSHOT_TRANSFER_TIMEOUT_MS;
use crate::protocol;
use crate::protocol::Rpc;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Snapshot;
use crate::types::SnapshotData;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Whether a failed call is reported to openraft as `Unreachable`, which makes it back off
/// instead of hammering a dead or booting peer (or one this node has no slot for), rather than
/// as a `Network` error, which it retries soon: the request went out and failed (or was
/// refused, e.g. by a peer of another protocol version).
fn backs_off(error: &CallError) -> bool {
    match error {
        CallError::NotSent(..) | CallError::NotReady(_) | CallError::Busy(_) | CallError::Unauthorized(..) => true,
        CallError::NoAnswer(..) | CallError::Refused(..) | CallError::UnknownPath(..) => false,
    }
}

/// The network factory given to openraft.
pub struct PeerNetwork {
    clients: PeerClients,
    /// Shared with the node: until it serves Raft, it sends no Raft RPC either.
    serving: Arc<AtomicBool>,
}

impl PeerNetwork {
    pub fn new(clients: PeerClients, serving: Arc<AtomicBool>) -> Self {
        Self { clients, serving }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = RaftConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        RaftConnection { peer: self.clients.get(target, &node.peer_addr), serving: self.serving.clone() }
    }
}

/// Raft RPCs to one peer.
pub struct RaftConnection {
    peer: PeerClient,
    serving: Arc<AtomicBool>,
}

impl RaftConnection {
    /// A node that does not serve Raft yet sends nothing either: openraft's `initialize` starts
    /// an election at once, whatever `elect` says, and a founder must not campaign before every
    /// founder has recorded it (see `bootstrap.rs`). A node resuming sits out its lease wait.
    fn check_serving(&self) -> Result<(), Unreachable<TypeConfig>> {
        if self.serving.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Unreachable::from_string("this node does not serve Raft yet"))
        }
    }

    async fn raft_call<R: Rpc>(
        &self,
        request: &R::Request,
        timeout: Duration,
    ) -> Result<R::Reply, RPCError<TypeConfig>> {
        let body = protocol::encode(request).map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        self.raft_send::<R>(body, timeout).await
    }

    /// [`Self::raft_call`] with the request already encoded.
    async fn raft_send<R: Rpc>(&self, body: Vec<u8>, timeout: Duration) -> Result<R::Reply, RPCError<TypeConfig>> {
        self.check_serving().map_err(RPCError::Unreachable)?;
        match self.peer.send(R::PATH, body.into(), timeout).await {
            // An answer that could not be recorded is not used (see `note_answered`).
            Ok(response) => match self.peer.note_answered().await {
                Ok(()) => Ok(response),
                Err(error) => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "peer {} answered, but recording it failed: {error}",
                    self.peer.target()
                )))),
            },
            Err(error) if backs_off(&error) => Err(RPCError::Unreachable(Unreachable::from_string(error))),
            Err(error) => Err(RPCError::Network(NetworkError::from_string(error))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for RaftConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft's hard TTL for appends is one heartbeat interval; a large batch plus the
        // follower's fsync can take longer, and a deadline it can never meet stalls replication.
        let body = protocol::encode(&request).map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let mib = (body.len() as u64).div_ceil(1024 * 1024);
        let timeout =
            option.hard_ttl().max(Duration::from_millis(PEER_RPC_TIMEOUT_MS + mib * PEER_RPC_TIMEOUT_MS_PER_MIB));
        self.raft_send::<protocol::Append>(body, timeout).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call::<protocol::RequestVote>(&request, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        request: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call::<protocol::PreVote>(&request, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.check_serving().map_err(StreamingError::Unreachable)?;
        // The body is the vote's frame, then the snapshot file read from disk piece by piece.
        let header = protocol::snapshot_header(&vote)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(format!("encode vote: {e}"))))?;
        let file_error =
            |e: std::io::Error| StreamingError::Network(NetworkError::from_string(format!("snapshot file: {e}")));
        let mut file = tokio::fs::File::from_std(snapshot.snapshot.try_clone_file().map_err(file_error)?);
        // The descriptor's offset is shared with the handle's: start from the first byte.
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(file_error)?;
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, SNAPSHOT_CHUNK_BYTES);
        let body =
            reqwest::Body::wrap_stream(futures::stream::once(async { Ok(bytes::Bytes::from(header)) }).chain(chunks));
        let timeout = option.hard_ttl().max(Duration::from_millis(SNAPSHOT_TRANSFER_TIMEOUT_MS));
        let call = async {
            let response: protocol::InstallSnapshotReply =
                self.peer.send(protocol::InstallSnapshot::PATH, body, timeout).await?;
            self.peer.note_answered().await.map_err(|error| {
                CallError::NotSent(self.peer.target(), format!("answered, but recording it failed: {error}"))
            })?;
            Ok(response)
        };
        tokio::select! {
            result = call => result.map_err(|error| {
                if backs_off(&error) {
                    StreamingError::Unreachable(Unreachable::from_string(error))
                } else {
                    StreamingError::Network(NetworkError::from_string(error))
                }
            }),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call::<protocol::TransferLeader>(&request, option.hard_ttl()).await
    }
}
