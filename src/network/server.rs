//! The server side of node-to-node traffic on `--peer-addr`.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use openraft::raft::AppendEntriesResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits::MAX_CONCURRENT_FORWARDED_REQUESTS;
use crate::limits::MAX_PEER_MESSAGE_BYTES;
use crate::limits::PEER_BODY_READ_TIMEOUT_MS;
use crate::limits::SNAPSHOT_IDLE_TIMEOUT_MS;
use crate::node::Node;
use crate::protocol;
use crate::protocol::decode;
use crate::protocol::encode;
use crate::protocol::Rpc;
use crate::types::NodeId;

/// The router served on `--peer-addr`.
pub fn peer_router(node: Arc<Node>) -> Router {
    // Forwarded client requests share one bound; Raft RPCs never wait behind them.
    let forwarded = Router::new()
        .route(protocol::ForwardWrite::PATH, post(forwarded_write))
        .route(protocol::ForwardWrites::PATH, post(forwarded_writes))
        .route(protocol::ReadIndex::PATH, post(read_index))
        .route(protocol::Admin::PATH, post(forwarded_admin))
        .route(protocol::Freshness::PATH, post(freshness))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_FORWARDED_REQUESTS));
    Router::new()
        .route(protocol::Append::PATH, post(append))
        .route(protocol::RequestVote::PATH, post(vote))
        .route(protocol::PreVote::PATH, post(pre_vote))
        .route(protocol::InstallSnapshot::PATH, post(snapshot))
        .route(protocol::TransferLeader::PATH, post(transfer_leader))
        .route(protocol::Probe::PATH, post(probe))
        .route(protocol::Announce::PATH, post(announce))
        .merge(forwarded)
        .layer(axum::middleware::from_fn_with_state(node.peer_credentials().accepted.clone(), require_peer_token))
        .with_state(node)
}

/// Refuses, before any handler reads the body, a request without the peer token (when one is
/// configured): `401`, which the sender counts as a definite refusal (nothing ran).
async fn require_peer_token(
    State(accepted): State<Arc<[super::TokenDigest]>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = request.headers().get(axum::http::header::AUTHORIZATION);
    if !accepted.is_empty() && !super::bearer_matches_any(&accepted, authorization) {
        let mut response =
            Rejection::new(StatusCode::UNAUTHORIZED, "peer token missing or wrong".into()).into_response();
        // The connection is not kept for a sender without the token.
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// A peer message's whole body, at most [`MAX_PEER_MESSAGE_BYTES`] and read within
/// [`PEER_BODY_READ_TIMEOUT_MS`]: a declared length over the limit is refused (`413`) before a
/// byte is read, and a body that trickles in or never comes (`408`) cannot hold a connection
/// and its task for ever. (axum's body limit counts bytes as they arrive, with no deadline.)
struct PeerBody(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for PeerBody {
    type Rejection = Rejection;

    async fn from_request(request: axum::extract::Request, _state: &S) -> Result<Self, Rejection> {
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let too_large = || Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, "peer message too large".into());
        if declared.is_some_and(|length| length > MAX_PEER_MESSAGE_BYTES as u64) {
            return Err(too_large());
        }
        let read = axum::body::to_bytes(request.into_body(), MAX_PEER_MESSAGE_BYTES);
        match tokio::time::timeout(std::time::Duration::from_millis(PEER_BODY_READ_TIMEOUT_MS), read).await {
            Ok(Ok(body)) => Ok(PeerBody(body)),
            Ok(Err(error)) => match error.into_inner().downcast_ref::<http_body_util::LengthLimitError>() {
                Some(_) => Err(too_large()),
                None => Err(Rejection::new(StatusCode::BAD_REQUEST, "peer message body could not be read".into())),
            },
            Err(_) => Err(Rejection::new(StatusCode::REQUEST_TIMEOUT, "peer message body too slow".into())),
        }
    }
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

/// Records, before the request is acted on, that `sender` holds Raft state: it sent this
/// node a Raft RPC as a leader or candidate (see `bootstrap.rs`).
async fn note_sender(node: &Node, sender: NodeId) -> Result<(), Rejection> {
    if sender == node.id() {
        return Ok(());
    }
    node.bootstrap_record().note_peer_seen(sender).await.map_err(|error| {
        Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot record peer {sender}: {error}"))
    })
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

async fn append(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: <protocol::Append as Rpc>::Request = parse(&body)?;
        note_sender(&node, request.vote.leader_id().node_id).await?;
        let response = node.raft().append_entries(request).await.map_err(fatal)?;
        if matches!(response, AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)) {
            node.note_leader_contact();
        }
        Ok::<_, Rejection>(response)
    };
    answer::<<protocol::Append as Rpc>::Reply>(run.await)
}

async fn vote(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: <protocol::RequestVote as Rpc>::Request = parse(&body)?;
        note_sender(&node, request.vote.leader_id().node_id).await?;
        node.raft().vote(request).await.map_err(fatal)
    };
    answer::<<protocol::RequestVote as Rpc>::Reply>(run.await)
}

async fn pre_vote(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: <protocol::PreVote as Rpc>::Request = parse(&body)?;
        note_sender(&node, request.vote.leader_id().node_id).await?;
        node.raft().pre_vote(request).await.map_err(fatal)
    };
    answer::<<protocol::PreVote as Rpc>::Reply>(run.await)
}

/// The next piece of a snapshot transfer; an error when none arrives within
/// [`SNAPSHOT_IDLE_TIMEOUT_MS`] (the sender died or was cut off without closing the connection).
async fn next_chunk(
    stream: &mut (impl futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
) -> Option<Result<Bytes, std::io::Error>> {
    match tokio::time::timeout(std::time::Duration::from_millis(SNAPSHOT_IDLE_TIMEOUT_MS), stream.next()).await {
        Ok(next) => next.map(|chunk| chunk.map_err(std::io::Error::other)),
        Err(_) => Some(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "snapshot transfer stalled"))),
    }
}

/// Receives a streamed snapshot: the vote's frame, then the file, written to disk as it
/// arrives and checked whole before openraft installs it.
async fn snapshot(State(node): State<Arc<Node>>, body: Body) -> Response {
    let run = async {
        require_raft(&node)?;
        let mut stream = body.into_data_stream();
        let mut buffered = Vec::new();
        let (vote, header_length) = loop {
            match protocol::read_snapshot_header(&buffered) {
                Ok(Some(header)) => break header,
                Ok(None) => {}
                Err(error) => return Err(Rejection::new(StatusCode::BAD_REQUEST, error.to_string())),
            }
            match next_chunk(&mut stream).await {
                Some(Ok(chunk)) => buffered.extend_from_slice(&chunk),
                Some(Err(error)) => return Err(Rejection::new(StatusCode::BAD_REQUEST, format!("body: {error}"))),
                None => return Err(Rejection::new(StatusCode::BAD_REQUEST, "snapshot header cut short".into())),
            }
        };
        note_sender(&node, vote.leader_id().node_id).await?;
        let storage_error =
            |error: std::io::Error| Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string());
        let mut incoming = node.receive_snapshot().await.map_err(storage_error)?;
        let mut received = incoming.write(&buffered[header_length..]).await;
        while received.is_ok() {
            match next_chunk(&mut stream).await {
                Some(Ok(chunk)) => received = incoming.write(&chunk).await,
                Some(Err(error)) => received = Err(error),
                None => break,
            }
        }
        // Dropping `incoming` on an error deletes the partial file.
        received.map_err(|error| Rejection::new(StatusCode::BAD_REQUEST, format!("snapshot transfer: {error}")))?;
        // A truncated or corrupted file is refused here, before openraft sees it; a local disk
        // error is the receiver's fault, not the sender's.
        let snapshot = incoming.finish().await.map_err(|error| {
            let status = match error.kind() {
                std::io::ErrorKind::InvalidData => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Rejection::new(status, format!("snapshot file: {error}"))
        })?;
        let response = node.raft().install_full_snapshot(vote, snapshot).await.map_err(fatal)?;
        // A snapshot this node took from the leader is contact with it, like an append (removal
        // detection); one refused for a stale vote is not.
        if response.vote == vote {
            node.note_leader_contact();
        }
        Ok::<_, Rejection>(response)
    };
    answer(run.await)
}

async fn transfer_leader(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    let run = async {
        require_raft(&node)?;
        let request: <protocol::TransferLeader as Rpc>::Request = parse(&body)?;
        note_sender(&node, request.from_leader().leader_id().node_id).await?;
        node.raft().handle_transfer_leader(request).await.map_err(fatal)
    };
    answer::<<protocol::TransferLeader as Rpc>::Reply>(run.await)
}

/// A forwarded or bootstrap request: the body decoded as `R`'s request and the handler's
/// answer encoded as `R`'s reply, so this side cannot disagree with the sender about either.
async fn serve_rpc<R: Rpc, Answer: Future<Output = R::Reply>>(
    body: &[u8],
    handler: impl FnOnce(R::Request) -> Answer,
) -> Response {
    match parse::<R::Request>(body) {
        Ok(request) => reply(&handler(request).await),
        Err(rejection) => rejection.into_response(),
    }
}

async fn forwarded_write(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    serve_rpc::<protocol::ForwardWrite, _>(&body, |request| async move {
        node.write_as_leader(request.command, request.ack).await
    })
    .await
}

/// A batch over the protocol's count limit is refused whole (`400`) before any of it runs.
async fn forwarded_writes(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    match parse::<<protocol::ForwardWrites as Rpc>::Request>(&body) {
        Ok(writes) if writes.len() > protocol::MAX_FORWARDED_WRITES_PER_BATCH => Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("{} writes in one batch; at most {}", writes.len(), protocol::MAX_FORWARDED_WRITES_PER_BATCH),
        )
        .into_response(),
        Ok(writes) => reply::<<protocol::ForwardWrites as Rpc>::Reply>(&node.write_many_as_leader(writes).await),
        Err(rejection) => rejection.into_response(),
    }
}

async fn forwarded_admin(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    serve_rpc::<protocol::Admin, _>(&body, |command| async move { node.admin_as_leader(command).await }).await
}

async fn read_index(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    serve_rpc::<protocol::ReadIndex, _>(&body, |policy| async move { node.read_index_as_leader(policy).await }).await
}

async fn freshness(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    serve_rpc::<protocol::Freshness, _>(&body, |()| async move { node.freshness_as_leader() }).await
}

async fn probe(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    serve_rpc::<protocol::Probe, _>(&body, |asker| async move { node.probe_reply(asker) }).await
}

async fn announce(State(node): State<Arc<Node>>, PeerBody(body): PeerBody) -> Response {
    serve_rpc::<protocol::Announce, _>(&body, |peer| async move { node.record_announcement(peer).await }).await
}
