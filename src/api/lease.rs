//! `/v1/leases`: grant, renew, revoke and describe leases. A key is attached to a lease by a
//! put with `?lease=ID` (`kv.rs`); `?ttl_ms=` gives it a lease of its own.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use quorumkv_api::KeepAliveReply;
use quorumkv_api::KeepAliveRequest;
use quorumkv_api::KeptAlive;
use quorumkv_api::LeaseGrantReply;
use quorumkv_api::LeaseGrantRequest;
use quorumkv_api::LeaseInfo;
use quorumkv_api::LeaseRevokeReply;
use quorumkv_wire::lease::LeaseCommand;
use quorumkv_wire::lease::LeaseId;
use quorumkv_wire::lease::LeaseResult;

use super::kv::write_result_error;
use super::ApiError;
use super::Caller;
use crate::auth::Need;
use crate::error::Error;
use crate::limits;
use crate::node::Consistency;
use crate::node::Node;
use crate::protocol::Ack;
use crate::types::Command;
use crate::types::CommandResult;

type IdPath = Result<Path<LeaseId>, PathRejection>;

fn lease_id(path: IdPath) -> Result<LeaseId, Error> {
    path.map(|Path(id)| id)
        .map_err(|_| Error::InvalidParameter("a lease id is a number, as POST /v1/leases gave".into()))
}

/// Runs a lease command from any node (forwarded to the leader like every write).
async fn run(node: &Node, caller: &Caller, command: LeaseCommand) -> Result<LeaseResult, Error> {
    command.check()?;
    node.authorize_or_catch_up(caller.principal(), Need::Lease).await?;
    let _slot = node.admit().await?;
    match node.write(caller.wrap(Command::Lease(command)), Ack::Quorum).await? {
        CommandResult::Lease(LeaseResult::NotFound { id }) => Err(Error::LeaseNotFound { id }),
        CommandResult::Lease(result) => Ok(result),
        other => Err(write_result_error(other)),
    }
}

fn unexpected(result: LeaseResult) -> Error {
    Error::Internal(format!("unexpected lease result {result:?}"))
}

pub(super) async fn grant(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: LeaseGrantRequest = super::read_json(body, limits::LEASE_BODY_BYTES).await?;
    let caller = caller?;
    match run(&node, &caller, LeaseCommand::Grant { ttl_ms: request.ttl_ms }).await? {
        LeaseResult::Granted { id, ttl_ms, revision } => {
            Ok((StatusCode::CREATED, Json(LeaseGrantReply { id, ttl_ms, revision })).into_response())
        }
        other => Err(unexpected(other).into()),
    }
}

pub(super) async fn keepalive_one(
    State(node): State<Arc<Node>>,
    id: IdPath,
    caller: Result<Caller, ApiError>,
) -> Result<Json<KeptAlive>, ApiError> {
    let id = lease_id(id)?;
    let caller = caller?;
    match run(&node, &caller, LeaseCommand::KeepAlive { ids: vec![id] }).await? {
        LeaseResult::KeptAlive { renewed, .. } => match renewed.first() {
            Some(&(id, ttl_ms)) => Ok(Json(KeptAlive { id, ttl_ms })),
            None => Err(Error::LeaseNotFound { id }.into()),
        },
        other => Err(unexpected(other).into()),
    }
}

pub(super) async fn keepalive_many(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<Json<KeepAliveReply>, ApiError> {
    let request: KeepAliveRequest = super::read_json(body, limits::LEASE_BODY_BYTES).await?;
    let caller = caller?;
    match run(&node, &caller, LeaseCommand::KeepAlive { ids: request.ids }).await? {
        LeaseResult::KeptAlive { renewed, not_found } => {
            let leases = renewed.into_iter().map(|(id, ttl_ms)| KeptAlive { id, ttl_ms }).collect();
            Ok(Json(KeepAliveReply { leases, not_found }))
        }
        other => Err(unexpected(other).into()),
    }
}

pub(super) async fn revoke(
    State(node): State<Arc<Node>>,
    id: IdPath,
    caller: Result<Caller, ApiError>,
) -> Result<Json<LeaseRevokeReply>, ApiError> {
    let id = lease_id(id)?;
    let caller = caller?;
    match run(&node, &caller, LeaseCommand::Revoke { id }).await? {
        LeaseResult::Ended { id, revision, deleted_keys } => Ok(Json(LeaseRevokeReply { id, revision, deleted_keys })),
        other => Err(unexpected(other).into()),
    }
}

/// A linearizable description: every grant, keepalive and end acknowledged before is seen.
/// Needs read permission on each key it lists.
pub(super) async fn describe(
    State(node): State<Arc<Node>>,
    id: IdPath,
    caller: Result<Caller, ApiError>,
) -> Result<Json<LeaseInfo>, ApiError> {
    let id = lease_id(id)?;
    let caller = caller?;
    node.authorize_or_catch_up(caller.principal(), Need::Lease).await?;
    let _slot = node.admit().await?;
    let (lease, remaining) = node.lease(id, Consistency::Linearizable).await?;
    // The keys' names are theirs to see who may read them (etcd's TimeToLive with keys).
    for key in &lease.keys {
        node.authorize(caller.principal(), Need::Read(key))?;
    }
    Ok(Json(LeaseInfo {
        id: lease.id,
        ttl_ms: lease.record.ttl_ms,
        granted_revision: lease.record.granted_revision,
        renewed_revision: lease.record.renewed_revision,
        per_key: lease.record.per_key,
        keys: lease.keys,
        keys_truncated: lease.keys_truncated,
        remaining_ms: remaining.map(|left| u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
    }))
}
