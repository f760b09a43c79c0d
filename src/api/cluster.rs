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
use serde::Deserialize;
use serde_json::json;

use super::error_response;
use crate::admin::AdminCommand;
use crate::error::Error;
use crate::limits;
use crate::node::Node;
use crate::types::NodeId;

pub(super) async fn status(State(node): State<Arc<Node>>) -> Response {
    match node.status() {
        Ok(status) => Json(status).into_response(),
        Err(error) => error_response(error),
    }
}

/// `GET /v1/backup`: a consistent backup as JSON lines, streamed.
pub(super) async fn backup(State(node): State<Arc<Node>>) -> Response {
    match node.backup().await {
        Ok(receiver) => {
            let stream = futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|chunk| (chunk, receiver))
            });
            ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
        }
        Err(error) => error_response(error),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    match node.render_metrics() {
        Ok(text) => {
            let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response()
        }
        Err(error) => error_response(error),
    }
}

/// Liveness: the process serves HTTP.
pub(super) async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: a leader is known and this node has applied everything it knows committed.
pub(super) async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false}))).into_response()
    }
}

/// `GET /v1/cluster/members`.
pub(super) async fn members(State(node): State<Arc<Node>>) -> Response {
    match node.status() {
        Ok(status) => Json(status.members).into_response(),
        Err(error) => error_response(error),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddLearner {
    id: NodeId,
    peer_addr: String,
    /// Sent by a node joining with an empty data dir (see `AdminCommand::AddLearner`).
    #[serde(default)]
    fresh: bool,
}

#[derive(Deserialize)]
pub(super) struct NodeRef {
    id: NodeId,
}

/// `POST /v1/cluster/learners {"id", "peer_addr"}`.
pub(super) async fn add_learner(State(node): State<Arc<Node>>, body: Body) -> Response {
    let run = async {
        let request: AddLearner = parse_json(body).await?;
        if request.id == 0 || !request.peer_addr.contains(':') {
            return Err(Error::InvalidParameter("id must be at least 1 and peer_addr host:port".into()));
        }
        let AddLearner { id, peer_addr, fresh } = request;
        let _slot = node.admit().await?;
        node.admin(AdminCommand::AddLearner { id, peer_addr, fresh }).await
    };
    admin_response(&node, run.await)
}

/// `POST /v1/cluster/voters {"id"}`: promote a caught-up learner.
pub(super) async fn promote(State(node): State<Arc<Node>>, body: Body) -> Response {
    let run = async {
        let request: NodeRef = parse_json(body).await?;
        let _slot = node.admit().await?;
        node.admin(AdminCommand::Promote { id: request.id }).await
    };
    admin_response(&node, run.await)
}

/// `DELETE /v1/cluster/members/{id}`.
pub(super) async fn remove(State(node): State<Arc<Node>>, id: Result<Path<NodeId>, PathRejection>) -> Response {
    let run = async {
        let Path(id) = id.map_err(|rejection| Error::InvalidParameter(rejection.body_text()))?;
        let _slot = node.admit().await?;
        node.admin(AdminCommand::Remove { id }).await
    };
    admin_response(&node, run.await)
}

/// `POST /v1/cluster/leader {"id"}`: transfer leadership.
pub(super) async fn transfer_leader(State(node): State<Arc<Node>>, body: Body) -> Response {
    let run = async {
        let request: NodeRef = parse_json(body).await?;
        let _slot = node.admit().await?;
        node.admin(AdminCommand::TransferLeader { to: request.id }).await
    };
    admin_response(&node, run.await)
}

/// A change that committed answers 200 with the status, whatever reading the status meets.
fn admin_response(node: &Node, result: Result<(), Error>) -> Response {
    match result {
        Ok(()) => Json(node.status_after_change()).into_response(),
        Err(error) => error_response(error),
    }
}

async fn parse_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Error> {
    let read = axum::body::to_bytes(body, limits::MAX_ADMIN_BODY_BYTES);
    let bytes = tokio::time::timeout(std::time::Duration::from_millis(limits::BODY_READ_TIMEOUT_MS), read)
        .await
        .map_err(|_| Error::RequestTimeout { limit_ms: limits::BODY_READ_TIMEOUT_MS })?
        .map_err(|_| Error::InvalidParameter(format!("body over {} bytes", limits::MAX_ADMIN_BODY_BYTES)))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidParameter(format!("JSON body: {e}")))
}
