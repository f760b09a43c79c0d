//! Node-to-node transport on `--peer-addr`: HTTP/1.1 carrying the messages of
//! [`crate::protocol`], which owns their paths, types and encoding.
//!
//! A peer that is still deciding whether to bootstrap answers Raft RPCs with 503, so no
//! leader can count it as seen before it has Raft state of its own.
//!
//! Every request proves the sender is a member ([`PeerCredentials`]): with mutual TLS, by a
//! certificate signed by the peer CA (checked in the handshake, `tls.rs`); with a peer token,
//! by `Authorization: Bearer <token>`, checked before any handler reads the body.

mod factory;
mod peer_client;
mod server;

pub use factory::PeerNetwork;
pub use peer_client::CallError;
pub use peer_client::PeerClient;
pub use peer_client::PeerClients;
pub use server::peer_router;

use std::sync::Arc;

/// What this node presents to its peers, and demands of them.
#[derive(Clone, Default)]
pub struct PeerCredentials {
    /// The shared peer token, when one is configured.
    pub token: Option<Arc<str>>,
    /// Mutual TLS: the peer CA and this node's certificate (`None`: plain HTTP).
    pub tls: Option<rustls::ClientConfig>,
}
