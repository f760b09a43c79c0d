//! `/v1/auth`: the auth switch, login, users and roles (see `auth.rs`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::extract::State;
use axum::Json;
use quorumkv_api::Access;
use quorumkv_api::AuthChangeReply;
use quorumkv_api::AuthStatus;
use quorumkv_api::Permission;
use quorumkv_api::RoleInfo;
use quorumkv_api::RoleRequest;
use quorumkv_api::TokenReply;
use quorumkv_api::TokenRequest;
use quorumkv_api::UserInfo;
use quorumkv_api::UserRequest;

use super::ApiError;
use super::Caller;
use crate::auth;
use crate::auth::AuthCommand;
use crate::auth::AuthState;
use crate::auth::Grant;
use crate::auth::Need;
use crate::error::Error;
use crate::limits;
use crate::node::read_error;
use crate::node::Node;
use crate::protocol::Ack;
use crate::types::Command;
use crate::types::CommandResult;

type NamePath = Result<Path<String>, PathRejection>;

/// `GET /v1/auth`: whether authentication is on (open to all, like `/health`).
pub(super) async fn status(State(node): State<Arc<Node>>) -> Result<Json<AuthStatus>, ApiError> {
    Ok(Json(AuthStatus { enabled: node.auth_records()?.enabled().map_err(read_error)? }))
}

/// `POST /v1/auth/enable`: refused unless a user with role `admin` exists.
pub(super) async fn enable(State(node): State<Arc<Node>>, caller: Caller) -> Result<Json<AuthChangeReply>, ApiError> {
    let signing_key = auth::new_signing_key().map_err(Error::Internal)?;
    change(&node, caller, AuthCommand::Enable { signing_key }).await
}

/// `POST /v1/auth/disable`.
pub(super) async fn disable(State(node): State<Arc<Node>>, caller: Caller) -> Result<Json<AuthChangeReply>, ApiError> {
    change(&node, caller, AuthCommand::Disable).await
}

/// `POST /v1/auth/token {"name", "password"}`: a token for `Authorization: Bearer`.
pub(super) async fn token(State(node): State<Arc<Node>>, body: Body) -> Result<Json<TokenReply>, ApiError> {
    let TokenRequest { name, password } = parse_json(body).await?;
    auth::check_name("user", &name).map_err(Error::InvalidParameter)?;
    check_password(&password)?;
    let _slot = node.admit().await?;
    let (token, expires_in_ms) = node.issue_token(&name, &password).await?;
    Ok(Json(TokenReply { token, expires_in_ms }))
}

/// `PUT /v1/auth/users/{name} {"password"?, "roles"?}`.
pub(super) async fn put_user(
    State(node): State<Arc<Node>>,
    name: NamePath,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<Json<AuthChangeReply>, ApiError> {
    let request: Result<UserRequest, Error> = parse_json(body).await;
    let (name, caller, UserRequest { password, roles }) = (user_name(name)?, caller?, request?);
    if password.is_none() && roles.is_none() {
        return Err(Error::InvalidParameter("give a password, roles, or both".into()).into());
    }
    // Judged before the hash is computed: a stranger must not make the node hash for them.
    node.authorize_or_catch_up(caller.principal(), Need::Admin).await?;
    let password_hash = match password {
        Some(password) => {
            check_password(&password)?;
            Some(node.hash_password(password).await?)
        }
        None => None,
    };
    change(&node, caller, AuthCommand::PutUser { name, password_hash, roles }).await
}

pub(super) async fn delete_user(
    State(node): State<Arc<Node>>,
    name: NamePath,
    caller: Caller,
) -> Result<Json<AuthChangeReply>, ApiError> {
    change(&node, caller, AuthCommand::DeleteUser { name: user_name(name)? }).await
}

pub(super) async fn list_users(State(node): State<Arc<Node>>, caller: Caller) -> Result<Json<Vec<UserInfo>>, ApiError> {
    node.authorize_admin(caller.principal()).await?;
    let records = node.auth_records()?;
    let users = records.users().iter();
    Ok(Json(
        users
            .map(|(name, user)| UserInfo { name: name.clone(), roles: user.roles.clone(), revision: user.revision })
            .collect(),
    ))
}

pub(super) async fn get_user(
    State(node): State<Arc<Node>>,
    name: NamePath,
    caller: Caller,
) -> Result<Json<UserInfo>, ApiError> {
    let name = user_name(name)?;
    // A user may look at itself; anything else is an admin's business.
    let itself = matches!(caller.principal(), Some(auth::Principal::User { name: caller, .. }) if *caller == name);
    if !itself {
        node.authorize_admin(caller.principal()).await?;
    }
    let user = node.auth_records()?.user(&name).map_err(read_error)?.ok_or(Error::RouteNotFound)?;
    Ok(Json(UserInfo { name, roles: user.roles, revision: user.revision }))
}

/// `PUT /v1/auth/roles/{name} {"permissions": [{"prefix", "access"}]}`.
pub(super) async fn put_role(
    State(node): State<Arc<Node>>,
    name: NamePath,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<Json<AuthChangeReply>, ApiError> {
    let request: Result<RoleRequest, Error> = parse_json(body).await;
    let (name, caller, RoleRequest { permissions }) = (role_name(name)?, caller?, request?);
    let grants = permissions
        .into_iter()
        .map(|Permission { prefix, access }| Grant {
            prefix,
            read: matches!(access, Access::Read | Access::Readwrite),
            write: matches!(access, Access::Write | Access::Readwrite),
        })
        .collect();
    change(&node, caller, AuthCommand::PutRole { name, grants }).await
}

pub(super) async fn delete_role(
    State(node): State<Arc<Node>>,
    name: NamePath,
    caller: Caller,
) -> Result<Json<AuthChangeReply>, ApiError> {
    change(&node, caller, AuthCommand::DeleteRole { name: role_name(name)? }).await
}

pub(super) async fn list_roles(State(node): State<Arc<Node>>, caller: Caller) -> Result<Json<Vec<RoleInfo>>, ApiError> {
    node.authorize_admin(caller.principal()).await?;
    let records = node.auth_records()?;
    Ok(Json(records.roles().iter().map(|(name, role)| role_info(name.clone(), role.clone())).collect()))
}

pub(super) async fn get_role(
    State(node): State<Arc<Node>>,
    name: NamePath,
    caller: Caller,
) -> Result<Json<RoleInfo>, ApiError> {
    node.authorize_admin(caller.principal()).await?;
    let name = role_name(name)?;
    let role = node.auth_records()?.role(&name).map_err(read_error)?.ok_or(Error::RouteNotFound)?;
    Ok(Json(role_info(name, role)))
}

fn role_info(name: String, role: auth::RoleRecord) -> RoleInfo {
    let permissions = role
        .grants
        .into_iter()
        .map(|grant| Permission {
            prefix: grant.prefix,
            access: match (grant.read, grant.write) {
                (true, true) => Access::Readwrite,
                (false, true) => Access::Write,
                _ => Access::Read,
            },
        })
        .collect();
    RoleInfo { name, permissions, revision: role.revision }
}

/// Proposes an auth change as `caller`, judged at the edge and again at apply.
async fn change(node: &Node, caller: Caller, command: AuthCommand) -> Result<Json<AuthChangeReply>, ApiError> {
    command.check().map_err(Error::InvalidParameter)?;
    node.authorize_or_catch_up(caller.principal(), Need::Admin).await?;
    let _slot = node.admit().await?;
    match node.write(caller.wrap(Command::Auth(command)), Ack::Quorum).await? {
        CommandResult::AuthChanged { revision } => Ok(Json(AuthChangeReply { revision })),
        CommandResult::Refused(refusal) => Err(Error::from(refusal).into()),
        other => Err(Error::Internal(format!("unexpected auth result {other:?}")).into()),
    }
}

fn user_name(name: NamePath) -> Result<String, Error> {
    let Path(name) = name.map_err(|rejection| Error::InvalidParameter(rejection.body_text()))?;
    auth::check_name("user", &name).map_err(Error::InvalidParameter)?;
    Ok(name)
}

fn role_name(name: NamePath) -> Result<String, Error> {
    let Path(name) = name.map_err(|rejection| Error::InvalidParameter(rejection.body_text()))?;
    auth::check_name("role", &name).map_err(Error::InvalidParameter)?;
    Ok(name)
}

fn check_password(password: &str) -> Result<(), Error> {
    if password.is_empty() || password.len() > auth::MAX_PASSWORD_BYTES {
        return Err(Error::InvalidParameter(format!("a password has 1 to {} bytes", auth::MAX_PASSWORD_BYTES)));
    }
    Ok(())
}

async fn parse_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Error> {
    super::read_json(body, limits::MAX_AUTH_BODY_BYTES).await
}
