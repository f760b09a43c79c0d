//! The Raft type configuration and the replicated commands: defined in `quorumkv-wire`
//! (`quorumkv_wire::types`), the crate that owns every format read from outside, and
//! re-exported here with the aliases that name this server's state machine.

pub use quorumkv_wire::types::*;

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type SnapshotData = crate::store::SnapshotHandle;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
