//! The one closed error type of quorumkv's API edge.
//!
//! Every failure a client can see is one of these variants. Library errors (openraft,
//! RocksDB, reqwest) are translated into them where they arise, and [`Error::status`] plus
//! [`Error::code`] are the single table that maps them to HTTP (see `api::error_response`).
//! Each variant is either *definite* (the request certainly had no effect) or *indeterminate*
//! (a write may or may not have been committed).

use serde::Deserialize;
use serde::Serialize;

use quorumkv_api::Outcome;

use crate::types::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    #[error("key of {size} bytes exceeds the limit of {limit} bytes")]
    KeyTooLarge { size: usize, limit: usize },
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("key not found")]
    KeyNotFound,
    #[error("precondition failed")]
    PreconditionFailed { current_revision: Option<u64> },
    #[error("no route for this method and path")]
    RouteNotFound,
    #[error("node {0} is not a member of the cluster")]
    MemberNotFound(NodeId),
    #[error("refused: {0}")]
    Conflict(String),
    #[error("no leader is known (election in progress or quorum lost)")]
    NoLeader { last_known_leader: Option<NodeId> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("this replica is staler than max_lag_ms={max_lag_ms} (last leader contact {lag_ms:?} ms ago)")]
    TooStale { lag_ms: Option<u64>, max_lag_ms: u64 },
    #[error("the write may or may not have been committed: {0}")]
    OutcomeUnknown(String),
    #[error("internal error: {0}")]
    Internal(String),
    // Variants are appended, never reordered: this enum crosses the peer wire (postcard).
    #[error(
        "this node was removed from the cluster (membership at log index {membership_index}) and no longer \
         serves clients; use another member, or restart it with --join <a member's client address> to add it back"
    )]
    Removed { membership_index: u64 },
    #[error("the request body did not arrive within {limit_ms} ms")]
    RequestTimeout { limit_ms: u64 },
    #[error("too many requests in flight on this node; retry shortly or use another node")]
    Overloaded,
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error(
        "the events before revision {oldest_revision} are no longer kept on this node: read the current state, \
         then watch from its revision"
    )]
    Compacted { oldest_revision: u64 },
    #[error("lease {id} does not exist (never granted, revoked, or expired)")]
    LeaseNotFound { id: u64 },
}

impl Error {
    /// The one table from error to HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidKey(_) | Error::InvalidParameter(_) | Error::InvalidHeader(_) => 400,
            Error::KeyNotFound | Error::RouteNotFound | Error::MemberNotFound(_) | Error::LeaseNotFound { .. } => 404,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::Compacted { .. } => 410,
            Error::RequestTimeout { .. } => 408,
            Error::Conflict(_) => 409,
            Error::Overloaded => 429,
            Error::PreconditionFailed { .. } => 412,
            Error::KeyTooLarge { .. } | Error::ValueTooLarge { .. } => 413,
            Error::Internal(_) => 500,
            Error::NoLeader { .. }
            | Error::Unavailable(_)
            | Error::ShuttingDown
            | Error::TooStale { .. }
            | Error::Removed { .. } => 503,
            Error::OutcomeUnknown(_) => 504,
        }
    }

    /// The stable machine-readable code sent as `"error"`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidKey(_) => "invalid_key",
            Error::InvalidParameter(_) => "invalid_parameter",
            Error::InvalidHeader(_) => "invalid_header",
            Error::KeyTooLarge { .. } => "key_too_large",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::KeyNotFound => "key_not_found",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::RouteNotFound => "not_found",
            Error::MemberNotFound(_) => "member_not_found",
            Error::Conflict(_) => "conflict",
            Error::NoLeader { .. } => "no_leader",
            Error::Unavailable(_) => "unavailable",
            Error::ShuttingDown => "shutting_down",
            Error::TooStale { .. } => "too_stale",
            Error::OutcomeUnknown(_) => "outcome_unknown",
            Error::Internal(_) => "internal",
            Error::Removed { .. } => "removed",
            Error::RequestTimeout { .. } => "request_timeout",
            Error::Overloaded => "too_many_requests",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "permission_denied",
            Error::Compacted { .. } => "compacted",
            Error::LeaseNotFound { .. } => "lease_not_found",
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Error::OutcomeUnknown(_) => Outcome::Unknown,
            // An internal error can come from anywhere, including after a write was proposed.
            Error::Internal(_) => Outcome::Unknown,
            _ => Outcome::Failed,
        }
    }

    /// Seconds a client should wait before retrying, for the `Retry-After` header.
    pub fn retry_after_seconds(&self) -> Option<u32> {
        match self {
            Error::NoLeader { .. } | Error::Unavailable(_) | Error::TooStale { .. } | Error::Overloaded => Some(1),
            // Not `ShuttingDown`: another node can answer at once; this one will not come back.
            _ => None,
        }
    }
}

/// A refusal at apply, as the client sees it.
impl From<crate::auth::Refusal> for Error {
    fn from(refusal: crate::auth::Refusal) -> Self {
        match refusal {
            crate::auth::Refusal::Unauthenticated(reason) => Error::Unauthorized(reason),
            crate::auth::Refusal::Forbidden(reason) => Error::Forbidden(reason),
            crate::auth::Refusal::Invalid(reason) => Error::Conflict(reason),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
