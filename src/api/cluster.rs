//! `/v1/cluster` (status, members, learners, voters, leader), `/health`, `/ready`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use quorumkv_api::AddLearnerRequest;
use quorumkv_api::ClusterStatus;
use quorumkv_api::Health;
use quorumkv_api::MemberStatus;
use quorumkv_api::NodeRef;
use quorumkv_api::Ready;

use super::ApiError;
use super::Caller;
use crate::error::Error;
use crate::limits;
use crate::node::Node;
use crate::protocol::AdminCommand;
use crate::types::NodeId;

pub(super) async fn status(State(node): State<Arc<Node>>) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(node.status()?))
}

/// `GET /v1/backup`: a consistent backup as JSON lines, streamed.
pub(super) async fn backup(State(node): State<Arc<Node>>, caller: Caller) -> Result<Response, ApiError> {
    node.authorize_admin(caller.principal()).await?;
    let receiver = node.backup().await?;
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let text = node.render_metrics()?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Liveness: the process serves HTTP.
pub(super) async fn health() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: a leader is known and this node has applied everything it knows committed.
pub(super) async fn ready(State(node): State<Arc<Node>>) -> (StatusCode, Json<Ready>) {
    let ready = node.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Ready { ready }))
}

/// `GET /v1/cluster/members`.
pub(super) async fn members(State(node): State<Arc<Node>>) -> Result<Json<Vec<MemberStatus>>, ApiError> {
    Ok(Json(node.status()?.members))
}

/// `POST /v1/cluster/learners {"id", "peer_addr"}`.
pub(super) async fn add_learner(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<ClusterStatus>, ApiError> {
    node.authorize_admin(caller?.principal()).await?;
    // Without peer TLS, the leader will hand the new address the peer token on every message:
    // only a holder of the token may name one (or anyone could collect it). With peer TLS, a
    // stranger's address has no certificate of the peer CA and gets nothing.
    let accepted = &node.peer_credentials().accepted;
    let authorization = headers.get(axum::http::header::AUTHORIZATION);
    if !node.config().peer_tls() && !accepted.is_empty() && !crate::network::bearer_matches_any(accepted, authorization)
    {
        return Err(Error::Unauthorized(
            "without peer TLS, adding a learner needs the peer token (Authorization: Bearer; the CLI's \
             --peer-token-file), since the cluster will send it to the new node"
                .into(),
        )
        .into());
    }
    let request: AddLearnerRequest = parse_json(body).await?;
    if request.id == 0 || !request.peer_addr.contains(':') {
        return Err(Error::InvalidParameter("id must be at least 1 and peer_addr host:port".into()).into());
    }
    let AddLearnerRequest { id, peer_addr, fresh } = request;
    let _slot = node.admit().await?;
    node.admin(AdminCommand::AddLearner { id, peer_addr, fresh }).await?;
    Ok(changed(&node))
}

/// `POST /v1/cluster/voters {"id"}`: promote a caught-up learner.
pub(super) async fn promote(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<Json<ClusterStatus>, ApiError> {
    node.authorize_admin(caller?.principal()).await?;
    let NodeRef { id } = parse_json(body).await?;
    let _slot = node.admit().await?;
    node.admin(AdminCommand::Promote { id }).await?;
    Ok(changed(&node))
}

/// `DELETE /v1/cluster/members/{id}`.
pub(super) async fn remove(
    State(node): State<Arc<Node>>,
    id: Result<Path<NodeId>, PathRejection>,
    caller: Caller,
) -> Result<Json<ClusterStatus>, ApiError> {
    node.authorize_admin(caller.principal()).await?;
    let Path(id) = id.map_err(|rejection| Error::InvalidParameter(rejection.body_text()))?;
    let _slot = node.admit().await?;
    node.admin(AdminCommand::Remove { id }).await?;
    Ok(changed(&node))
}

/// `POST /v1/cluster/leader {"id"}`: transfer leadership.
pub(super) async fn transfer_leader(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<Json<ClusterStatus>, ApiError> {
    node.authorize_admin(caller?.principal()).await?;
    let NodeRef { id } = parse_json(body).await?;
    let _slot = node.admit().await?;
    node.admin(AdminCommand::TransferLeader { to: id }).await?;
    Ok(changed(&node))
}

/// A change that committed answers 200 with the status, whatever reading the status meets.
fn changed(node: &Node) -> Json<ClusterStatus> {
    Json(node.status_after_change())
}

async fn parse_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Error> {
    super::read_json(body, limits::MAX_ADMIN_BODY_BYTES).await
}
