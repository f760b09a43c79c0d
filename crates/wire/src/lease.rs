//! Leases: a TTL that keys can be attached to. Revoking a lease, or its expiry, deletes its
//! keys at one revision. A per-key TTL (`PUT ?ttl_ms=`) is a lease of its own, made by the put
//! and gone with its key.
//!
//! Time is the leader's alone (`quorumkv::lease`): the log holds no clock reading. A lease
//! expires by a replicated command the leader proposes once its TTL ran out on the leader's
//! monotonic clock, and that command names the renewal it judged by, so a keepalive applied in
//! between makes it a no-op (every replica decides the same).
//!
//! Everything here is part of the log format (postcard): variants are appended, never
//! reordered, and the apply-time bounds never change.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;

/// A lease's id: the revision of the entry that made it, times 256, plus the position of the
/// put within its branch (1..=128) for a per-key lease, or 0 for a granted one. Unique without
/// any counter, and the same on every replica.
pub type LeaseId = u64;

/// The id of the lease the entry at `revision` made: `slot` 0 for a grant, the put's position
/// plus one for a per-key TTL.
pub fn lease_id(revision: u64, slot: u8) -> LeaseId {
    (revision << 8) | u64::from(slot)
}

/// Shortest TTL: a lease must outlive a failover, during which no keepalive is answered
/// (elections take hundreds of milliseconds; etcd's minimum is of the same order).
pub const MIN_LEASE_TTL_MS: u64 = 1_000;

/// Longest TTL: 30 days. A longer-lived key needs no lease; the bound keeps `now + ttl` far
/// from overflowing any clock.
pub const MAX_LEASE_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Most leases that exist at once, per-key TTLs included. The leader keeps a deadline for
/// each and every node an entry in memory (about 100 bytes each), so the table is bounded. Part
/// of the format: a grant over it is refused at apply, on every replica alike.
pub const MAX_LEASES: usize = 100_000;

/// Most keys attached to one lease: its expiry deletes them all in one write batch, applied
/// while the state machine waits (as [`crate::txn::MAX_DELETE_PREFIX_KEYS`]). Part of the
/// format, as [`MAX_LEASES`].
pub const MAX_LEASE_KEYS: usize = 10_000;

/// Most leases one keepalive renews: one log entry for a client holding many leases.
pub const MAX_KEEPALIVE_LEASES: usize = 1_000;

/// Which lease a put attaches its key to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseRef {
    /// A lease granted before (`POST /v1/leases`).
    Existing(LeaseId),
    /// A new lease of this TTL for this key alone (a per-key TTL, `PUT ?ttl_ms=`).
    New { ttl_ms: u64 },
}

/// A change to leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCommand {
    /// A new lease of this TTL, with no keys; its id is [`lease_id`]`(revision, 0)`.
    Grant { ttl_ms: u64 },
    /// Renews these leases (at most [`MAX_KEEPALIVE_LEASES`]): their TTL starts again.
    KeepAlive { ids: Vec<LeaseId> },
    /// Ends the lease and deletes its keys (a client's revoke: write permission on each).
    Revoke { id: LeaseId },
    /// Proposed by the leader only: the lease's TTL ran out with `renewed_revision` its last
    /// renewal. Ends it like a revoke unless it was renewed since (then nothing happens).
    Expire { id: LeaseId, renewed_revision: u64 },
}

/// The TTL rule, checked before proposing.
pub fn check_ttl(ttl_ms: u64) -> Result<(), Error> {
    if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(Error::InvalidParameter(format!(
            "ttl_ms must be between {MIN_LEASE_TTL_MS} and {MAX_LEASE_TTL_MS} (30 days), got {ttl_ms}"
        )))
    }
}

impl LeaseCommand {
    /// Shape checks before proposing.
    pub fn check(&self) -> Result<(), Error> {
        match self {
            LeaseCommand::Grant { ttl_ms } => check_ttl(*ttl_ms),
            LeaseCommand::KeepAlive { ids } if ids.is_empty() || ids.len() > MAX_KEEPALIVE_LEASES => {
                Err(Error::InvalidParameter(format!("a keepalive renews 1 to {MAX_KEEPALIVE_LEASES} leases")))
            }
            LeaseCommand::KeepAlive { .. } | LeaseCommand::Revoke { .. } | LeaseCommand::Expire { .. } => Ok(()),
        }
    }
}

/// The result of a lease command (or of a transaction naming a lease that does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseResult {
    Granted {
        id: LeaseId,
        ttl_ms: u64,
        revision: u64,
    },
    /// The leases renewed, with their TTLs, and the ids that name no lease.
    KeptAlive {
        renewed: Vec<(LeaseId, u64)>,
        not_found: Vec<LeaseId>,
    },
    /// The lease ended at `revision` (revoked or expired) and `deleted_keys` keys with it.
    Ended {
        id: LeaseId,
        revision: u64,
        deleted_keys: u64,
    },
    /// No such lease (never granted, or ended): nothing changed.
    NotFound {
        id: LeaseId,
    },
    /// An expiry that came too late: the lease was renewed after the renewal it names.
    Renewed {
        id: LeaseId,
    },
}

/// One lease as the state machine keeps it (the keys are kept beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl_ms: u64,
    /// The revision that made it.
    pub granted_revision: u64,
    /// The revision of its last keepalive (its grant's, before any).
    pub renewed_revision: u64,
    /// A per-key TTL's lease: it ends when its key is deleted or put without it.
    pub per_key: bool,
    /// The user who made it (`None`: made without one, auth off or by a member). While auth
    /// is on, only its owner and admins may renew it, revoke it or attach keys to it.
    pub owner: Option<String>,
}

impl fmt::Display for LeaseCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseCommand::Grant { ttl_ms } => write!(f, "grant a lease of {ttl_ms} ms"),
            LeaseCommand::KeepAlive { ids } => write!(f, "keep {} leases alive", ids.len()),
            LeaseCommand::Revoke { id } => write!(f, "revoke lease {id}"),
            LeaseCommand::Expire { id, renewed_revision } => {
                write!(f, "expire lease {id} (last renewed at {renewed_revision})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: ids of different entries, and of different puts of one entry, never collide.
    #[test]
    fn lease_ids_are_unique_per_entry_and_slot() {
        assert_ne!(lease_id(1, 0), lease_id(1, 1));
        assert_ne!(lease_id(1, 255), lease_id(2, 0));
        assert_eq!(lease_id(3, 0) >> 8, 3);
    }

    /// Goal: the TTL and keepalive bounds refuse what they name and accept their edges.
    #[test]
    fn ttl_and_keepalive_bounds() {
        assert!(check_ttl(MIN_LEASE_TTL_MS).is_ok());
        assert!(check_ttl(MAX_LEASE_TTL_MS).is_ok());
        assert!(check_ttl(MIN_LEASE_TTL_MS - 1).is_err());
        assert!(check_ttl(MAX_LEASE_TTL_MS + 1).is_err());
        assert!(LeaseCommand::KeepAlive { ids: vec![] }.check().is_err());
        assert!(LeaseCommand::KeepAlive { ids: vec![1; MAX_KEEPALIVE_LEASES + 1] }.check().is_err());
        assert!(LeaseCommand::KeepAlive { ids: vec![1; MAX_KEEPALIVE_LEASES] }.check().is_ok());
    }
}
