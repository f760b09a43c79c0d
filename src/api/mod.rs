//! The client HTTP API on `--client-addr`. Handlers validate input, call [`Node`], and map
//! results to HTTP; they never touch storage or Raft directly.

mod auth;
mod cluster;
mod kv;
mod lease;
mod txn;
mod watch;

use std::sync::Arc;

use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use axum::Router;
use quorumkv_api::ErrorBody;

use crate::auth::Principal;
use crate::error::Error;
use crate::limits;
use crate::node::Node;
use crate::tls::ClientIdentity;
use crate::types::Command;

/// The router served on `--client-addr`.
pub fn client_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route("/v1/kv/", get(kv::empty_key).put(kv::empty_key).delete(kv::empty_key))
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/txn", axum::routing::post(txn::txn))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/leases", axum::routing::post(lease::grant))
        .route("/v1/leases/keepalive", axum::routing::post(lease::keepalive_many))
        .route("/v1/leases/{id}", get(lease::describe).delete(lease::revoke))
        .route("/v1/leases/{id}/keepalive", axum::routing::post(lease::keepalive_one))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/members", get(cluster::members))
        .route("/v1/cluster/members/{id}", axum::routing::delete(cluster::remove))
        .route("/v1/cluster/learners", axum::routing::post(cluster::add_learner))
        .route("/v1/cluster/voters", axum::routing::post(cluster::promote))
        .route("/v1/cluster/leader", axum::routing::post(cluster::transfer_leader))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/metrics", get(cluster::metrics))
        .route("/v1/backup", get(cluster::backup))
        .route("/v1/auth", get(auth::status))
        .route("/v1/auth/enable", axum::routing::post(auth::enable))
        .route("/v1/auth/disable", axum::routing::post(auth::disable))
        .route("/v1/auth/token", axum::routing::post(auth::token))
        .route("/v1/auth/users", get(auth::list_users))
        .route("/v1/auth/users/{name}", get(auth::get_user).put(auth::put_user).delete(auth::delete_user))
        .route("/v1/auth/roles", get(auth::list_roles))
        .route("/v1/auth/roles/{name}", get(auth::get_role).put(auth::put_role).delete(auth::delete_role))
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), record_request))
        .fallback(|| async { error_response(Error::RouteNotFound) })
        .method_not_allowed_fallback(|| async {
            let error = Error::InvalidParameter("method not allowed for this path".into());
            let mut response = error_response(error);
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
        })
        .layer(axum::middleware::from_fn_with_state(node.clone(), refuse_while_draining_or_removed))
        .with_state(node)
}

/// Counts every routed request by its route pattern (not the raw path, to bound cardinality),
/// method and status, and records its latency.
async fn record_request(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    node.prometheus_metrics().observe_request(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// In a graceful shutdown's drain phase, refuses new requests with a definite 503 (except
/// `/health` and `/metrics`, which observers keep polling) and closes every connection after
/// its response, so no client is left with a kept-alive connection that the node will reset.
/// A node removed from the cluster refuses the same requests with `503 removed` (and also
/// answers `/v1/cluster`, so an operator sees why; `/ready` says 503 by itself).
async fn refuse_while_draining_or_removed(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let observer = matches!(path, "/health" | "/metrics");
    let removed = node.removed_at().filter(|_| !observer && !matches!(path, "/v1/cluster" | "/ready"));
    let mut response = if node.is_draining() && !observer {
        error_response(Error::ShuttingDown)
    } else if let Some(membership_index) = removed {
        error_response(Error::Removed { membership_index })
    } else {
        next.run(request).await
    };
    if node.is_draining() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The error half of the one table: status from [`Error::status`], the API's
/// [`ErrorBody`] (`{"error", "message", "outcome"}` plus any details), and `Retry-After` when
/// retrying helps.
pub fn error_response(error: Error) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = error_body(&error);
    let mut response = (status, Json(body)).into_response();
    if let Some(seconds) = error.retry_after_seconds() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The body of an error answer (also the data of a watch stream's `error` event).
pub(crate) fn error_body(error: &Error) -> ErrorBody {
    ErrorBody {
        error: error.code().to_string(),
        message: error.to_string(),
        outcome: error.outcome(),
        current_revision: match error {
            Error::PreconditionFailed { current_revision } => Some(*current_revision),
            _ => None,
        },
        last_known_leader: match error {
            Error::NoLeader { last_known_leader } => Some(*last_known_leader),
            _ => None,
        },
        oldest_revision: match error {
            Error::Compacted { oldest_revision } => Some(*oldest_revision),
            _ => None,
        },
    }
}

/// What a handler answers when it fails: an [`Error`] through the one table
/// ([`error_response`]). A newtype only because `Error` belongs to `quorumkv-wire` (it crosses
/// the peer wire inside replies) and `IntoResponse` to axum; `?` makes one from an `Error`.
pub(crate) struct ApiError(pub(crate) Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.0)
    }
}

/// Who sent a request (`None`: no credential, or auth is off), established once per request
/// from its `Authorization` header and its connection's client certificate; a credential
/// that does not hold is a `401` before the handler runs.
pub(crate) struct Caller(Option<Principal>);

impl Caller {
    pub(crate) fn principal(&self) -> Option<&Principal> {
        self.0.as_ref()
    }

    /// The command as this caller's: checked against the users and roles when applied.
    pub(crate) fn wrap(&self, command: Command) -> Command {
        match &self.0 {
            Some(principal) => Command::As { principal: principal.clone(), command: Box::new(command) },
            None => command,
        }
    }
}

impl axum::extract::FromRequestParts<Arc<Node>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let authorization = parts.headers.get(header::AUTHORIZATION);
        let certificate = parts.extensions.get::<ClientIdentity>();
        Ok(node.authenticate(authorization, certificate).await.map(Caller)?)
    }
}

/// Reads a request body of at most `limit` bytes within the body deadline; a larger one is a
/// `413`.
pub(crate) async fn read_body(
    headers: &header::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, Error> {
    let declared: Option<usize> =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    match declared {
        // Far over the limit: refuse without reading; the connection is closed after the 413.
        Some(size) if size > limit + limits::OVERSIZE_BODY_DRAIN_BYTES => Err(Error::ValueTooLarge { size, limit }),
        _ => {
            // A whole-body deadline: a client trickling its body must not hold on for ever.
            let read = axum::body::to_bytes(body, limit + limits::OVERSIZE_BODY_DRAIN_BYTES);
            let deadline = std::time::Duration::from_millis(limits::BODY_READ_TIMEOUT_MS);
            let read = tokio::time::timeout(deadline, read)
                .await
                .map_err(|_| Error::RequestTimeout { limit_ms: limits::BODY_READ_TIMEOUT_MS })?;
            let bytes = read.map_err(|error| {
                // Over the limit is the client's body; anything else is a broken upload.
                if error.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    Error::ValueTooLarge { size: declared.unwrap_or(limit + 1), limit }
                } else {
                    Error::InvalidParameter("the request body could not be read".into())
                }
            })?;
            if bytes.len() > limit {
                return Err(Error::ValueTooLarge { size: bytes.len(), limit });
            }
            Ok(bytes)
        }
    }
}

/// Reads a JSON body of at most `limit` bytes, within the body deadline.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: axum::body::Body,
    limit: usize,
) -> Result<T, Error> {
    let read = axum::body::to_bytes(body, limit);
    let bytes = tokio::time::timeout(std::time::Duration::from_millis(limits::BODY_READ_TIMEOUT_MS), read)
        .await
        .map_err(|_| Error::RequestTimeout { limit_ms: limits::BODY_READ_TIMEOUT_MS })?
        .map_err(|_| Error::InvalidParameter(format!("body over {limit} bytes")))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidParameter(format!("JSON body: {e}")))
}

/// A query string decoded into the API's parameter type `T`, whose unknown fields are refused:
/// a misspelt or unsupported parameter is a `400 invalid_parameter`, never silently ignored.
pub(crate) struct Params<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(params)| Params(params))
            .map_err(|rejection| Error::InvalidParameter(rejection.body_text()).into())
    }
}
