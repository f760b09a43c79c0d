//! Node-to-node transport on `--peer-addr`: HTTP/1.1 carrying the messages of
//! [`crate::protocol`], which owns their paths, types and encoding.
//!
//! A peer that is still deciding whether to bootstrap answers Raft RPCs with 503, so no
//! leader can count it as seen before it has Raft state of its own.

mod factory;
mod peer_client;
mod server;

pub use factory::PeerNetwork;
pub use peer_client::CallError;
pub use peer_client::PeerClient;
pub use peer_client::PeerClients;
pub use server::peer_router;
