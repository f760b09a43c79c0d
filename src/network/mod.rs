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
mod write_batches;

pub use factory::PeerNetwork;
pub use peer_client::CallError;
pub use peer_client::PeerClient;
pub use peer_client::PeerClients;
pub use server::peer_router;

use std::sync::Arc;

/// The SHA-256 digest of a peer token: what is kept to check presented tokens against.
pub type TokenDigest = [u8; 32];

fn token_digest(token: &[u8]) -> TokenDigest {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    digest
}

/// Whether an `Authorization` header holds `Bearer <a token whose digest is accepted>`. The
/// presented token is hashed once and the digests compared in constant time, so neither the
/// tokens' bytes nor their length leak; the accepted digests are computed once, at start-up,
/// not on every peer request.
pub fn bearer_matches_any(accepted: &[TokenDigest], header: Option<&axum::http::HeaderValue>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(presented) = header.and_then(|value| value.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    let presented = token_digest(presented);
    accepted.iter().any(|digest| bool::from(presented.ct_eq(digest)))
}

/// What this node presents to its peers, and demands of them.
#[derive(Clone)]
pub struct PeerCredentials {
    /// The peer token this node sends, when one is configured (the first accepted one).
    pub token: Option<Arc<str>>,
    /// The digests of every peer token this node accepts (several while one is being rotated).
    pub accepted: Arc<[TokenDigest]>,
    /// Mutual TLS: the peer CA and this node's certificate (`None`: plain HTTP).
    pub tls: Option<rustls::ClientConfig>,
}

impl PeerCredentials {
    /// `tokens`: the first is sent, all are accepted.
    pub fn new(tokens: Vec<String>, tls: Option<rustls::ClientConfig>) -> Self {
        let accepted: Arc<[TokenDigest]> = tokens.iter().map(|token| token_digest(token.as_bytes())).collect();
        Self { token: tokens.into_iter().next().map(Arc::from), accepted, tls }
    }
}
