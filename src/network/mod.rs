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

/// Whether an `Authorization` header holds `Bearer <one of the tokens>`.
pub fn bearer_matches_any(tokens: &[Arc<str>], header: Option<&axum::http::HeaderValue>) -> bool {
    tokens.iter().any(|token| bearer_matches(token, header))
}

/// Whether an `Authorization` header holds `Bearer <token>`. The SHA-256 digests of both
/// are compared in constant time, so neither the token's bytes nor its length leak.
pub fn bearer_matches(token: &str, header: Option<&axum::http::HeaderValue>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(presented) = header.and_then(|value| value.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    let digest = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes);
    bool::from(digest(presented).as_ref().ct_eq(digest(token.as_bytes()).as_ref()))
}

/// What this node presents to its peers, and demands of them.
#[derive(Clone, Default)]
pub struct PeerCredentials {
    /// The peer token this node sends, when one is configured (the first of `accepted`).
    pub token: Option<Arc<str>>,
    /// Every peer token this node accepts (several while one is being rotated).
    pub accepted: Arc<[Arc<str>]>,
    /// Mutual TLS: the peer CA and this node's certificate (`None`: plain HTTP).
    pub tls: Option<rustls::ClientConfig>,
}

impl PeerCredentials {
    /// `tokens`: the first is sent, all are accepted.
    pub fn new(tokens: Vec<String>, tls: Option<rustls::ClientConfig>) -> Self {
        let accepted: Arc<[Arc<str>]> = tokens.into_iter().map(Arc::from).collect();
        Self { token: accepted.first().cloned(), accepted, tls }
    }
}
