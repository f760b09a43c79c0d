//! quorumkv's HTTP API contract, in one place: every request parameter and response body the
//! client port speaks, the error body, and a [`client::Client`] built on them.
//!
//! The server serializes these types and the CLI, `quorumkv bench`, the tests and the Jepsen
//! runner deserialize them, so a field renamed here is renamed for all of them. The crate
//! depends only on serde and reqwest (and tokio for the client's back-off), so a program that
//! talks to quorumkv does not build RocksDB; without its default feature `client`, only on
//! serde (what `quorumkv-wire` needs).
//!
//! | path | request | answer (200) |
//! |---|---|---|
//! | `GET /v1/kv/{key}` | [`ReadParams`] | the value's bytes; `ETag: "<revision>"` |
//! | `PUT /v1/kv/{key}` | [`WriteParams`]; `If-Match`, `If-None-Match`; the value as body | [`PutReply`] |
//! | `DELETE /v1/kv/{key}` | [`WriteParams`]; `If-Match` | [`DeleteReply`] |
//! | `GET /v1/kv` | [`ListParams`] | [`Page`] |
//! | `POST /v1/txn` | [`WriteParams`]; [`TxnRequest`] | [`TxnReply`] |
//! | `GET /v1/cluster` | | [`ClusterStatus`] |
//! | `GET /v1/cluster/members` | | `[`[`MemberStatus`]`]` |
//! | `POST /v1/cluster/learners` | [`AddLearnerRequest`] | [`ClusterStatus`] |
//! | `POST /v1/cluster/voters`, `POST /v1/cluster/leader` | [`NodeRef`] | [`ClusterStatus`] |
//! | `DELETE /v1/cluster/members/{id}` | | [`ClusterStatus`] |
//! | `GET /health`, `GET /ready` | | [`Health`], [`Ready`] |
//! | `GET /v1/auth` | | [`AuthStatus`] |
//! | `POST /v1/auth/enable`, `POST /v1/auth/disable` | | [`AuthChangeReply`] |
//! | `POST /v1/auth/token` | [`TokenRequest`] | [`TokenReply`] |
//! | `GET /v1/auth/users`, `GET /v1/auth/users/{name}` | | `[`[`UserInfo`]`]`, [`UserInfo`] |
//! | `PUT /v1/auth/users/{name}` | [`UserRequest`] | [`AuthChangeReply`] |
//! | `GET /v1/auth/roles`, `GET /v1/auth/roles/{name}` | | `[`[`RoleInfo`]`]`, [`RoleInfo`] |
//! | `PUT /v1/auth/roles/{name}` | [`RoleRequest`] | [`AuthChangeReply`] |
//! | `DELETE /v1/auth/users/{name}`, `DELETE /v1/auth/roles/{name}` | | [`AuthChangeReply`] |
//!
//! Every error answer is an [`ErrorBody`]; its `outcome` says whether the request may have
//! taken effect, and the client decides retries from it.

#[cfg(feature = "client")]
pub mod client;
pub mod limits;
#[cfg(feature = "client")]
pub mod recipes;

use serde::Deserialize;
use serde::Serialize;

/// A node's identity in the cluster.
pub type NodeId = u64;

/// Query of `GET /v1/kv/{key}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// Default: linearizable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyParam>,
    /// Bounded staleness (with `consistency=stale` only): refuse data older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<u64>,
    /// A blocking query: answer once the key has changed after this revision (an
    /// `X-Quorumkv-Index` of an earlier answer), or after `wait_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_revision: Option<u64>,
    /// With `wait_revision`: the longest wait (default 60 s, at most 10 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyParam {
    /// Confirmed with a quorum (ReadIndex): never stale.
    Linearizable,
    /// The leader's lease: no quorum round while it holds; relies on bounded clock drift.
    Lease,
    /// This node's applied state, optionally bounded by `max_lag_ms`.
    Stale,
}

/// Query of `PUT` and `DELETE /v1/kv/{key}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// Default: quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckParam>,
    /// A put attaches the key to this lease (`POST /v1/leases`); it goes when the lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// A put gives the key a TTL of its own: it is deleted this long after the put, unless put
    /// again (a lease of its own, without keepalives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckParam {
    /// Once a quorum of voters has it durable.
    Quorum,
    /// Once every voter has it durable.
    All,
}

/// Query of `GET /v1/kv` (a page of keys in order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The first key of the page (a previous page's `next_start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyParam>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<u64>,
    /// A blocking query, as for one key: answer once a key under the prefix has changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// `PUT /v1/kv/{key}`: the key's new modification revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReply {
    pub revision: u64,
}

/// `DELETE /v1/kv/{key}`: the revision of the delete, and whether the key existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReply {
    pub revision: u64,
    pub deleted: bool,
}

/// `GET /v1/kv`: one page of keys in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<Item>,
    /// The `start` of the next page; `null` on the last one.
    pub next_start: Option<String>,
}

/// One key of a [`Page`]: its value as text when it is UTF-8, else as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub key: String,
    pub revision: u64,
    pub create_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// `POST /v1/txn`: if every compare holds, the `success` operations run, else the `failure`
/// ones, atomically, at one revision. Each list may be empty or missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<TxnCompare>,
    #[serde(default)]
    pub success: Vec<TxnOperation>,
    #[serde(default)]
    pub failure: Vec<TxnOperation>,
}

/// One compare: the key, the operator (`=` when absent) and exactly one of `value` (text),
/// `value_base64`, `mod_revision`, `create_revision` or `exists`. An absent key has revisions
/// 0 and fails every value compare; `exists` takes `=` and `!=` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnCompare {
    pub key: String,
    #[serde(default)]
    pub cmp: CompareOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

impl TxnCompare {
    /// The key's value (text) compared with `value`.
    pub fn value(key: &str, cmp: CompareOp, value: &str) -> Self {
        TxnCompare { key: key.into(), cmp, value: Some(value.into()), ..Default::default() }
    }

    /// The key's modification revision compared with `revision` (an absent key's is 0).
    pub fn mod_revision(key: &str, cmp: CompareOp, revision: u64) -> Self {
        TxnCompare { key: key.into(), cmp, mod_revision: Some(revision), ..Default::default() }
    }

    /// The key exists (`true`) or not.
    pub fn exists(key: &str, exists: bool) -> Self {
        TxnCompare { key: key.into(), exists: Some(exists), ..Default::default() }
    }
}

/// The operator of a [`TxnCompare`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    #[default]
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = ">")]
    Greater,
}

/// One operation of a branch: `put` (`key` and `value` or `value_base64`), `delete` (`key`),
/// `delete_prefix` (`prefix`; `""` is every key) or `get` (`key`). A get sees the branch's
/// earlier operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnOperation {
    pub op: TxnOpKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// A put attaches its key to this lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// A put gives its key a TTL of its own (as `PUT ?ttl_ms=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl TxnOperation {
    fn of(op: TxnOpKind, key: &str) -> Self {
        TxnOperation {
            op,
            key: Some(key.into()),
            prefix: None,
            value: None,
            value_base64: None,
            lease: None,
            ttl_ms: None,
        }
    }

    pub fn put(key: &str, value: &str) -> Self {
        TxnOperation { value: Some(value.into()), ..Self::of(TxnOpKind::Put, key) }
    }

    pub fn delete(key: &str) -> Self {
        Self::of(TxnOpKind::Delete, key)
    }

    pub fn delete_prefix(prefix: &str) -> Self {
        TxnOperation { key: None, prefix: Some(prefix.into()), ..Self::of(TxnOpKind::DeletePrefix, "") }
    }

    pub fn get(key: &str) -> Self {
        Self::of(TxnOpKind::Get, key)
    }
}

/// The kind of a [`TxnOperation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpKind {
    Put,
    Delete,
    DeletePrefix,
    Get,
}

/// The answer to `POST /v1/txn` (200 whichever branch ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReply {
    /// Every compare held, so `success` ran; else `failure` did.
    pub succeeded: bool,
    /// The revision (log index) the transaction ran at: every key it wrote has it as its
    /// modification revision, and its gets saw the state there.
    pub revision: u64,
    /// One per operation of the branch that ran, in order.
    pub results: Vec<TxnResult>,
}

/// The result of one operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnResult {
    Put {
        revision: u64,
    },
    /// Whether the key existed.
    Delete {
        deleted: bool,
    },
    /// How many keys were deleted.
    DeletePrefix {
        deleted: u64,
    },
    /// The key (`null`: absent).
    Get {
        kv: Option<Item>,
    },
}

/// Query of `GET /v1/watch`: `key` or `prefix` (`""`: every key), and where to start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The first revision to send events of (default: the next one this node applies). A
    /// `Last-Event-ID` header (a reconnecting client's) starts after its revision instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_revision: Option<u64>,
}

/// The `data` of a `put` or `delete` event of `GET /v1/watch` (its `id` is the revision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: u64,
    #[serde(rename = "type")]
    pub kind: WatchEventKind,
    pub key: String,
    /// Of a put: the key's creation revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<u64>,
    /// Of a put: the value, as text when it is UTF-8, else as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// What happened to the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchEventKind {
    Put,
    Delete,
}

/// The `data` of a `progress` event: every event up to `revision` has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchProgress {
    pub revision: u64,
}

/// The header of every key read and listing: the revision this node had applied when it
/// answered. Give it back as `wait_revision` to wait for the next change.
pub const INDEX_HEADER: &str = "x-quorumkv-index";

/// The header of a key read when the key is attached to a lease: the lease's id.
pub const LEASE_HEADER: &str = "x-quorumkv-lease";

/// `POST /v1/leases`: a lease of this TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrantRequest {
    pub ttl_ms: u64,
}

/// `POST /v1/leases`: the new lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantReply {
    pub id: u64,
    pub ttl_ms: u64,
    pub revision: u64,
}

/// `POST /v1/leases/keepalive`: renew many leases in one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepAliveRequest {
    pub ids: Vec<u64>,
}

/// One lease renewed: its TTL starts again from when the keepalive was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptAlive {
    pub id: u64,
    pub ttl_ms: u64,
}

/// `POST /v1/leases/keepalive`: the leases renewed, and the ids that name no lease (ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAliveReply {
    pub leases: Vec<KeptAlive>,
    pub not_found: Vec<u64>,
}

/// `DELETE /v1/leases/{id}`: the revision at which the lease and its keys went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeReply {
    pub id: u64,
    pub revision: u64,
    pub deleted_keys: u64,
}

/// `GET /v1/leases/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
    pub granted_revision: u64,
    pub renewed_revision: u64,
    /// A per-key TTL's lease (made by `PUT ?ttl_ms=`).
    pub per_key: bool,
    /// The attached keys, the first 1,000 in key order.
    pub keys: Vec<String>,
    pub keys_truncated: bool,
    /// What is left of the TTL by the leader's clock: only from the leader (the one clock
    /// that counts); absent from other nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
}

/// Whether a failed request could have taken effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It certainly did not take effect; retrying is safe.
    Failed,
    /// It may have taken effect; only an idempotent request may be retried blindly. Any
    /// outcome this version does not know reads as this one: the safe assumption.
    #[serde(other)]
    Unknown,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code (`key_not_found`, `no_leader`, ...; see the README).
    pub error: String,
    /// For people.
    pub message: String,
    pub outcome: Outcome,
    /// With `precondition_failed`: the key's revision now (`null`: the key is absent).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub current_revision: Option<Option<u64>>,
    /// With `no_leader`: the leader this node knew last (`null`: none).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub last_known_leader: Option<Option<NodeId>>,
    /// With `compacted` (410): the oldest revision whose events this node still has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_revision: Option<u64>,
}

/// A field that is present, even as `null`, is `Some`: tells "absent" from "null".
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `GET /v1/cluster`: one node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    /// `null` while no leader is known (an election, or no quorum).
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub state: RaftRole,
    pub members: Vec<MemberStatus>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// Last log index covered by this node's current snapshot (0: none yet).
    pub snapshot_index: u64,
    /// Log entries up to this index have been purged here (they live on only in snapshots).
    pub purged_index: u64,
    /// This node learned that it was removed from the cluster: it serves no client requests.
    pub removed: bool,
}

impl ClusterStatus {
    /// The client address of the leader, when this node knows both.
    pub fn leader_client_addr(&self) -> Option<&str> {
        let leader = self.leader_id?;
        self.members.iter().find(|member| member.id == leader)?.client_addr.as_deref()
    }
}

/// A node's part in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    /// Receives the log but does not vote; also a node not yet (or no longer) in a cluster.
    Learner,
    Shutdown,
}

/// One member in [`ClusterStatus`]; the three replication fields are the leader's view only
/// (`null` on other nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    /// `null` until the member has registered it (shortly after it first joins).
    pub client_addr: Option<String>,
    pub peer_addr: String,
    pub voter: bool,
    /// The last log index this member has durable (the leader's own fsync included).
    pub matched_index: Option<u64>,
    /// How many entries this member is behind the leader's log.
    pub lag_entries: Option<u64>,
    /// Milliseconds since this member last acknowledged the leader.
    pub last_ack_ms_ago: Option<u64>,
}

/// `POST /v1/cluster/learners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerRequest {
    pub id: NodeId,
    /// `host:port` of the node's peer listener.
    pub peer_addr: String,
    /// Sent by a node joining with an empty data dir: replicate to it from scratch.
    #[serde(default)]
    pub fresh: bool,
}

/// `POST /v1/cluster/voters` (promote) and `POST /v1/cluster/leader` (transfer leadership).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub id: NodeId,
}

/// `GET /health`: the process serves HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// `GET /ready` (200 when ready, 503 when not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub ready: bool,
}

/// `GET /v1/auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStatus {
    pub enabled: bool,
}

/// The answer to a change of users, roles or the auth switch: the revision (log index) at
/// which it took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthChangeReply {
    pub revision: u64,
}

/// `POST /v1/auth/token`: log in.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A bearer token (`Authorization: Bearer <token>`), valid on every node until it expires
/// or its user changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    pub token: String,
    pub expires_in_ms: u64,
}

/// `PUT /v1/auth/users/{name}`: creates a user (a password is then required) or changes
/// one; an absent field keeps its value. Any change revokes the user's tokens.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Role names; `admin` is built in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

impl std::fmt::Debug for UserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRequest").field("roles", &self.roles).finish_non_exhaustive()
    }
}

/// A user as `GET /v1/auth/users` shows it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub roles: Vec<String>,
    /// The revision of its last change.
    pub revision: u64,
}

/// What a permission allows on the keys under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Readwrite,
}

/// One permission of a role: `access` to every key starting with `prefix` (`""`: all keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    pub prefix: String,
    pub access: Access,
}

/// `PUT /v1/auth/roles/{name}`: creates or replaces a role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    pub permissions: Vec<Permission>,
}

/// A role as `GET /v1/auth/roles` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the error body tells a `null` detail from an absent one, both ways.
    #[test]
    fn error_details_keep_null_apart_from_absent() {
        let absent_key = r#"{"error":"precondition_failed","message":"m","outcome":"failed","current_revision":null}"#;
        let body: ErrorBody = serde_json::from_str(absent_key).expect("decode");
        assert_eq!(body.current_revision, Some(None));
        assert_eq!(serde_json::to_string(&body).expect("encode"), absent_key);
        let plain: ErrorBody =
            serde_json::from_str(r#"{"error":"internal","message":"m","outcome":"unknown"}"#).expect("decode");
        assert_eq!((plain.current_revision, plain.outcome), (None, Outcome::Unknown));
        assert!(!serde_json::to_string(&plain).expect("encode").contains("current_revision"));
        let newer: ErrorBody =
            serde_json::from_str(r#"{"error":"x","message":"m","outcome":"partial"}"#).expect("decode");
        assert_eq!(newer.outcome, Outcome::Unknown, "an outcome this version does not know is unknown");
    }

    /// Goal: every body is spelled exactly as the README documents it. The server and the tests
    /// share these types, so a renamed field would pass both: these pins catch it.
    #[test]
    fn bodies_are_spelled_as_documented() {
        let member = MemberStatus {
            id: 2,
            client_addr: Some("127.0.0.1:8082".into()),
            peer_addr: "127.0.0.1:9082".into(),
            voter: true,
            matched_index: Some(9),
            lag_entries: Some(1),
            last_ack_ms_ago: None,
        };
        let status = ClusterStatus {
            id: 1,
            leader_id: Some(1),
            term: 3,
            state: RaftRole::Leader,
            members: vec![member],
            commit_index: 10,
            applied_index: 10,
            last_log_index: 11,
            snapshot_index: 0,
            purged_index: 0,
            removed: false,
        };
        assert_eq!(
            serde_json::to_value(&status).expect("encode"),
            serde_json::json!({
                "id": 1, "leader_id": 1, "term": 3, "state": "Leader",
                "members": [{"id": 2, "client_addr": "127.0.0.1:8082", "peer_addr": "127.0.0.1:9082", "voter": true,
                             "matched_index": 9, "lag_entries": 1, "last_ack_ms_ago": null}],
                "commit_index": 10, "applied_index": 10, "last_log_index": 11, "snapshot_index": 0,
                "purged_index": 0, "removed": false
            })
        );
        assert_eq!(serde_json::to_value(PutReply { revision: 7 }).expect("encode"), serde_json::json!({"revision": 7}));
        assert_eq!(
            serde_json::to_value(DeleteReply { revision: 8, deleted: true }).expect("encode"),
            serde_json::json!({"revision": 8, "deleted": true})
        );
        let page = Page {
            items: vec![
                Item { key: "a".into(), revision: 5, create_revision: 4, value: Some("x".into()), value_base64: None },
                Item {
                    key: "b".into(),
                    revision: 6,
                    create_revision: 6,
                    value: None,
                    value_base64: Some("/w==".into()),
                },
            ],
            next_start: None,
        };
        assert_eq!(
            serde_json::to_value(&page).expect("encode"),
            serde_json::json!({"items": [
                {"key": "a", "revision": 5, "create_revision": 4, "value": "x"},
                {"key": "b", "revision": 6, "create_revision": 6, "value_base64": "/w=="}
            ], "next_start": null})
        );
        let error = ErrorBody {
            error: "no_leader".into(),
            message: "m".into(),
            outcome: Outcome::Failed,
            current_revision: None,
            last_known_leader: Some(None),
            oldest_revision: None,
        };
        assert_eq!(
            serde_json::to_value(&error).expect("encode"),
            serde_json::json!({"error": "no_leader", "message": "m", "outcome": "failed", "last_known_leader": null})
        );
        assert_eq!(serde_json::to_value(Ready { ready: false }).expect("encode"), serde_json::json!({"ready": false}));
        let txn = TxnReply {
            succeeded: true,
            revision: 9,
            results: vec![
                TxnResult::Put { revision: 9 },
                TxnResult::Delete { deleted: false },
                TxnResult::DeletePrefix { deleted: 2 },
                TxnResult::Get { kv: None },
            ],
        };
        assert_eq!(
            serde_json::to_value(&txn).expect("encode"),
            serde_json::json!({"succeeded": true, "revision": 9, "results": [
                {"op": "put", "revision": 9}, {"op": "delete", "deleted": false},
                {"op": "delete_prefix", "deleted": 2}, {"op": "get", "kv": null}
            ]})
        );
    }

    /// Goal: a transaction request is spelled as the README shows it; `cmp` defaults to `=`,
    /// and a misspelt field is refused rather than ignored.
    #[test]
    fn transactions_are_spelled_as_documented() {
        let request: TxnRequest = serde_json::from_value(serde_json::json!({
            "compare": [{"key": "a", "mod_revision": 5}, {"key": "b", "cmp": "!=", "value": "x"},
                        {"key": "c", "exists": false}],
            "success": [{"op": "put", "key": "a", "value": "1"}, {"op": "delete_prefix", "prefix": "tmp/"}],
            "failure": [{"op": "get", "key": "a"}]
        }))
        .expect("decode");
        assert_eq!(
            request,
            TxnRequest {
                compare: vec![
                    TxnCompare::mod_revision("a", CompareOp::Equal, 5),
                    TxnCompare::value("b", CompareOp::NotEqual, "x"),
                    TxnCompare::exists("c", false),
                ],
                success: vec![TxnOperation::put("a", "1"), TxnOperation::delete_prefix("tmp/")],
                failure: vec![TxnOperation::get("a")],
            }
        );
        for bad in [
            serde_json::json!({"compares": []}),
            serde_json::json!({"compare": [{"key": "a", "cmp": "==", "value": "x"}]}),
            serde_json::json!({"success": [{"op": "increment", "key": "a"}]}),
            serde_json::json!({"success": [{"op": "put", "key": "a", "val": "x"}]}),
        ] {
            assert!(serde_json::from_value::<TxnRequest>(bad.clone()).is_err(), "{bad}");
        }
    }

    /// Goal: parameters are spelled as the README says, and unknown ones are refused.
    #[test]
    fn parameters_are_spelled_as_documented() {
        let read =
            ReadParams { consistency: Some(ConsistencyParam::Stale), max_lag_ms: Some(250), ..Default::default() };
        assert_eq!(
            serde_json::to_value(read).expect("encode"),
            serde_json::json!({"consistency": "stale", "max_lag_ms": 250})
        );
        assert!(serde_json::from_str::<WriteParams>(r#"{"ack":"all","ttl":5}"#).is_err());
        assert_eq!(serde_json::from_str::<WriteParams>(r#"{"ack":"all"}"#).expect("decode").ack, Some(AckParam::All));
    }
}
