//! The server side of node-to-node traffic on `--peer-addr`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::decode;
use super::encode;
use super::ReadPolicy;
use crate::admin::AdminCommand;
use crate::limits::MAX_PEER_MESSAGE_BYTES;
use crate::node::Ack;
use crate::node::Node;
use crate::types::Command;
use crate::types::NodeId;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::TypeConfig;
use crate::types::Vote;

/// The router served on `--peer-addr`.
pub fn peer_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/transfer-leader", post(transfer_leader))
        .route("/internal/write", post(forwarded_write))
        .route("/internal/read-index", post(read_index))
        .route("/internal/probe", post(probe))
        .route("/internal/admin", post(forwarded_admin))
        .layer(DefaultBodyLimit::max(MAX_PEER_MESSAGE_BYTES))
        .with_state(node)
}

fn reply<T: Serialize>(value: &T) -> Response {
    match encode(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {error}")).into_response(),
    }
}

/// A Raft RPC's reply: the postcard-encoded response, or the rejection's status and reason.
fn answer<T: Serialize>(result: Result<T, Rejection>) -> Response {
    match result {
        Ok(response) => reply(&response),
        Err(rejection) => rejection.into_response(),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    decode(body).map_err(|error| Rejection::new(StatusCode::BAD_REQUEST, format!("decode: {error}")))
}

/// Raft RPCs are refused until the node has decided how it starts (see `Node::start`).
fn require_raft(node: &Node) -> Result<(), Rejection> {
    if node.is_serving_raft() {
        Ok(())
    } else {
        Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "not serving Raft yet".into()))
    }
}

fn fatal(error: impl std::fmt::Display) -> Rejection {
    Rejection::new(StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {error}"))
}

/// A refused peer request: status and a plain-text reason.
struct Rejection {
    status: StatusCode,
    reason: String,
}

impl Rejection {
    fn new(status: StatusCode, reason: String) -> Self {
        Self { status, reason }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.status, self.reason).into_response()
    }
}

async fn append(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: AppendEntriesRequest<TypeConfig> = parse(&body)?;
        let response = node.raft().append_entries(request).await.map_err(fatal)?;
        if matches!(response, AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)) {
            node.note_leader_contact();
        }
        Ok::<_, Rejection>(response)
    };
    answer(run.await)
}

async fn vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: VoteRequest<TypeConfig> = parse(&body)?;
        node.raft().vote(request).await.map_err(fatal)
    };
    answer(run.await)
}

async fn pre_vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: VoteRequest<TypeConfig> = parse(&body)?;
        node.raft().pre_vote(request).await.map_err(fatal)
    };
    answer(run.await)
}

async fn snapshot(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let run = async {
        require_raft(&node)?;
        let (vote, meta, data): (Vote, SnapshotMeta, Vec<u8>) = parse(&body)?;
        // A snapshot that does not decode must be refused here: failing inside openraft's
        // install would stop the node.
        if let Err(error) = crate::store::check_snapshot_data(&data) {
            return Err(Rejection::new(StatusCode::BAD_REQUEST, format!("snapshot data: {error}")));
        }
        let snapshot = Snapshot { meta, snapshot: std::io::Cursor::new(data) };
        node.raft().install_full_snapshot(vote, snapshot).await.map_err(fatal)
    };
    answer(run.await)
}

async fn transfer_leader(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: TransferLeaderRequest<TypeConfig> = parse(&body)?;
        node.raft().handle_transfer_leader(request).await.map_err(fatal)
    };
    answer(run.await)
}

async fn forwarded_write(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let (command, ack): (Command, Ack) = match parse(&body) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    reply(&node.write_as_leader(command, ack).await)
}

async fn forwarded_admin(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let command: AdminCommand = match parse(&body) {
        Ok(command) => command,
        Err(rejection) => return rejection.into_response(),
    };
    reply(&node.admin_as_leader(command).await)
}

async fn read_index(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let policy: ReadPolicy = match parse(&body) {
        Ok(policy) => policy,
        Err(rejection) => return rejection.into_response(),
    };
    reply(&node.read_index_as_leader(policy).await)
}

async fn probe(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let asker: NodeId = match parse(&body) {
        Ok(asker) => asker,
        Err(rejection) => return rejection.into_response(),
    };
    match node.probe_reply(asker) {
        Ok(answer) => reply(&answer),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
