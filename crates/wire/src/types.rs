//! The Raft type configuration and the commands replicated through the log.
//!
//! Everything here is part of the on-disk and on-wire format (postcard): change it only with a
//! migration plan.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

use crate::auth::AuthCommand;
use crate::auth::Need;
use crate::auth::Principal;
use crate::lease::LeaseCommand;
use crate::lease::LeaseResult;
use crate::txn::Cmp;
use crate::txn::Compare;
use crate::txn::Target;
use crate::txn::Txn;

/// A node's identity in the cluster; never reused for a different data directory.
pub type NodeId = u64;

/// What the cluster knows about a member: where to reach it.
///
/// Stored in every membership log entry, so it is kept small and stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft RPC and node-to-node forwarding address (`host:port`).
    pub peer_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={}", self.peer_addr)
    }
}

/// A condition that must hold at apply time for a write to take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Unconditional write.
    None,
    /// The key exists and its modification revision equals this one (`If-Match: "<rev>"`).
    ModRevision(u64),
    /// The key exists (`If-Match: *`).
    Exists,
    /// The key does not exist (`If-None-Match: *`).
    Absent,
}

impl Precondition {
    /// The condition of `If-Match: "<rev>"` (compare-and-set), `If-Match: *` (must exist) or
    /// `If-None-Match: *` (create only), from the headers' trimmed values (each given once).
    pub fn from_headers(
        if_match: Option<&str>,
        if_none_match: Option<&str>,
    ) -> Result<Precondition, crate::error::Error> {
        use crate::error::Error;
        match (if_match, if_none_match) {
            (None, None) => Ok(Precondition::None),
            (Some(_), Some(_)) => Err(Error::InvalidHeader("use If-Match or If-None-Match, not both".into())),
            (None, Some("*")) => Ok(Precondition::Absent),
            (None, Some(value)) => Err(Error::InvalidHeader(format!("If-None-Match supports only *, got {value:?}"))),
            (Some("*"), None) => Ok(Precondition::Exists),
            (Some(value), None) => {
                let digits = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
                digits.parse::<u64>().map(Precondition::ModRevision).map_err(|_| {
                    Error::InvalidHeader(format!("If-Match must be a revision such as \"42\" or *, got {value:?}"))
                })
            }
        }
    }

    /// The compares of the transaction a write with this precondition on `key` is: the write
    /// runs if they all hold, and nothing happens otherwise.
    pub fn compares(self, key: &str) -> Vec<Compare> {
        let compare = |cmp, target| Compare { key: key.to_string(), cmp, target };
        match self {
            Precondition::None => Vec::new(),
            Precondition::Exists => vec![compare(Cmp::Equal, Target::Exists(true))],
            Precondition::Absent => vec![compare(Cmp::Equal, Target::Exists(false))],
            // The key must exist too: an absent key's revision compares as 0, and `If-Match: "0"`
            // has never matched an absent key.
            Precondition::ModRevision(revision) => {
                vec![compare(Cmp::Equal, Target::Exists(true)), compare(Cmp::Equal, Target::ModRevision(revision))]
            }
        }
    }
}

/// A state-machine command, the application payload of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: Bytes,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// Records a member's client address so any node can tell clients where the leader is.
    RegisterClientAddr {
        node_id: NodeId,
        client_addr: String,
    },
    // Variants are appended, never reordered (postcard numbers them).
    /// A client's command with who sent it: applied only if the sender may, by the users and
    /// roles at this point of the log (`auth::authorize`). A bare `Put`, `Delete` or `Auth`
    /// is a command without a credential, refused while authentication is on.
    As {
        principal: Principal,
        #[serde(deserialize_with = "unwrapped_command")]
        command: Box<Command>,
    },
    /// A change to users, roles or the auth switch.
    Auth(AuthCommand),
    /// Compares, then one of two lists of operations, atomically at one revision.
    Txn(Txn),
    /// A lease granted, renewed, revoked or expired (`crate::lease`).
    Lease(LeaseCommand),
}

thread_local! {
    /// How many `As` wrappers the command being decoded on this thread is inside.
    static WRAPPERS_DECODING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Decodes the command inside an `As`, refusing one that is itself wrapped. Postcard has no
/// depth limit, so without this a message of nested wrappers (two bytes a level) would recurse
/// until the decoding thread's stack overflowed: one request could take a node down. No node
/// proposes a command wrapped twice (`Command::check` refuses it), so no log holds one.
fn unwrapped_command<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Box<Command>, D::Error> {
    struct Unwrap;
    impl Drop for Unwrap {
        fn drop(&mut self) {
            WRAPPERS_DECODING.with(|depth| depth.set(depth.get() - 1));
        }
    }
    let depth = WRAPPERS_DECODING.with(|depth| {
        depth.set(depth.get() + 1);
        depth.get()
    });
    let _unwrap = Unwrap;
    // Refused before reading further: this is a wrapper inside a wrapper.
    if depth > 1 {
        return Err(serde::de::Error::custom("a command wrapped twice"));
    }
    Command::deserialize(deserializer).map(Box::new)
}

/// Longest client address a node may register (a host name of 253 bytes and a port).
pub const MAX_CLIENT_ADDR_BYTES: usize = 260;

/// The rule a registered client address follows (`host:port`, short, no control characters);
/// `ServeConfig::validate` applies it to the advertised address too, so a node never starts
/// with an address its registration would be refused for.
pub fn valid_client_addr(addr: &str) -> bool {
    addr.len() <= MAX_CLIENT_ADDR_BYTES
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok() && !host.chars().any(char::is_control)
        })
}

/// The rules every key follows, wherever the write came from.
pub fn check_key(key: &str, max_key_bytes: usize) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    if key.is_empty() {
        return Err(Error::InvalidKey("the key is empty".into()));
    }
    if key.len() > max_key_bytes {
        return Err(Error::KeyTooLarge { size: key.len(), limit: max_key_bytes });
    }
    if key.chars().any(char::is_control) {
        return Err(Error::InvalidKey("the key contains control characters".into()));
    }
    Ok(())
}

impl Command {
    /// Checks the command against the node's limits before it is proposed. The client API
    /// checks the same on the way in; the leader checks again because a forwarded write comes
    /// from a peer, and a peer's bug (or a stolen peer credential) must not put into the log
    /// what no client could.
    pub fn check(&self, max_key_bytes: usize, max_value_bytes: usize) -> Result<(), crate::error::Error> {
        use crate::error::Error;
        match self {
            Command::Put { key, value, .. } => {
                check_key(key, max_key_bytes)?;
                if value.len() > max_value_bytes {
                    return Err(Error::ValueTooLarge { size: value.len(), limit: max_value_bytes });
                }
                Ok(())
            }
            Command::Delete { key, .. } => check_key(key, max_key_bytes),
            Command::RegisterClientAddr { node_id, client_addr } => {
                if *node_id != 0 && valid_client_addr(client_addr) {
                    Ok(())
                } else {
                    Err(Error::InvalidParameter(format!("invalid client address registration {self}")))
                }
            }
            Command::As { principal, command } => {
                if let Principal::User { name, .. } = principal {
                    crate::auth::check_name("user", name).map_err(Error::InvalidParameter)?;
                }
                match command.as_ref() {
                    Command::As { .. } => Err(Error::InvalidParameter("a command wrapped twice".into())),
                    inner => inner.check(max_key_bytes, max_value_bytes),
                }
            }
            Command::Auth(command) => command.check().map_err(Error::InvalidParameter),
            Command::Txn(txn) => txn.check(max_key_bytes, max_value_bytes),
            Command::Lease(command) => command.check(),
        }
    }

    /// What a client command needs permission for, judged at the edge and again at apply;
    /// `None`: an internal command no client sends (`RegisterClientAddr`, `As` itself).
    pub fn needs(&self) -> Option<Vec<Need<'_>>> {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => Some(vec![Need::Write(key)]),
            Command::Auth(_) => Some(vec![Need::Admin]),
            Command::Txn(txn) => Some(txn.needs()),
            // Revoking also needs write permission on each of the lease's keys, judged at
            // apply (only the state knows them).
            Command::Lease(
                LeaseCommand::Grant { .. } | LeaseCommand::KeepAlive { .. } | LeaseCommand::Revoke { .. },
            ) => Some(vec![Need::Lease]),
            // The leader's own: no client sends it.
            Command::Lease(LeaseCommand::Expire { .. }) => None,
            Command::RegisterClientAddr { .. } | Command::As { .. } => None,
        }
    }
}

/// The deterministic result of applying one log entry.
///
/// A failed precondition is a result, not an error: every replica computes the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A put took effect; `revision` is the new modification revision of the key.
    Put { revision: u64 },
    /// A delete was applied at `revision`; `deleted` says whether the key existed.
    Delete { revision: u64, deleted: bool },
    /// The precondition did not hold; nothing changed. `current_revision` is `None` when absent.
    PreconditionFailed { current_revision: Option<u64> },
    /// Entries that carry no client command (blank, membership, bookkeeping).
    Empty,
    // Appended (postcard numbers variants).
    /// Refused by the users and roles (or an auth change that cannot be made); nothing changed.
    Refused(crate::auth::Refusal),
    /// An auth change took effect at `revision`.
    AuthChanged { revision: u64 },
    /// A transaction ran at `revision`: its `success` branch when every compare held, else
    /// its `failure` branch; one result per operation of that branch.
    Txn { succeeded: bool, revision: u64, results: Vec<crate::txn::TxnOpResult> },
    /// A lease command's result, or `NotFound` for a put naming a lease that does not exist.
    Lease(LeaseResult),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value, precondition } => {
                write!(f, "put {key:?} ({} bytes, {precondition:?})", value.len())
            }
            Command::Delete { key, precondition } => write!(f, "delete {key:?} ({precondition:?})"),
            Command::RegisterClientAddr { node_id, client_addr } => write!(f, "register {node_id} at {client_addr}"),
            Command::As { principal, command } => write!(f, "{command} as {principal}"),
            Command::Auth(command) => write!(f, "{command}"),
            Command::Txn(txn) => write!(f, "{txn}"),
            Command::Lease(command) => write!(f, "{command}"),
        }
    }
}

impl fmt::Display for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

openraft::declare_raft_types!(
    /// quorumkv's Raft types: u64 node ids and terms, postcard-encoded commands.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;

/// A committed log id of `term`, led by `node`, at `index` (for tests).
#[doc(hidden)]
pub fn test_log_id(term: u64, node: NodeId, index: u64) -> LogId {
    use openraft::vote::RaftLeaderIdExt;
    LogId::new(openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new_committed(term, node), index)
}
