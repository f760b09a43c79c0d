//! The client side of node-to-node traffic: one reused HTTP client per peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::write_batches::Forwarded;
use super::write_batches::WriteBatches;
use super::PeerCredentials;
use crate::limits::CLIENT_POOL_IDLE_TIMEOUT_MS;
use crate::limits::FORWARD_SLOT_WAIT_MS;
use crate::limits::MAX_FORWARDS_IN_FLIGHT_PER_PEER;
use crate::limits::PEER_CONNECT_TIMEOUT_MS;
use crate::protocol;
use crate::protocol::decode;
use crate::protocol::encode;
use crate::protocol::Ack;
use crate::protocol::ForwardedWrite;
use crate::protocol::Rpc;
use crate::store::BootstrapRecord;
use crate::types::NodeId;

/// Why a call to a peer failed, split by whether the request could have been processed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request never reached the peer (connection refused or not established).
    #[error("peer {0} unreachable: {1}")]
    NotSent(NodeId, String),
    /// The peer is up but not serving Raft yet (still bootstrapping) or shutting down.
    #[error("peer {0} not ready")]
    NotReady(NodeId),
    /// The peer answered a 4xx: a message it cannot read, of another protocol version (a
    /// path it does not know), or over its body limit. A forwarded request is refused so
    /// before it runs (see `protocol.rs`); a snapshot transfer may be refused part-way.
    #[error("peer {0} refused the request: {1}")]
    Refused(NodeId, String),
    /// Sent, but no valid answer arrived in time: the peer may have acted on it.
    #[error("peer {0} did not answer: {1}")]
    NoAnswer(NodeId, String),
    /// The credentials did not match: the peer refused this node's (`401`: another peer
    /// token; or its certificate at the TLS handshake), or this node refused the peer's
    /// certificate. Nothing ran, and nothing will until an operator fixes the configuration.
    #[error("peer {0}: credentials refused ({1})")]
    Unauthorized(NodeId, String),
    /// Not sent: this node already forwards as many requests to the peer as it may.
    #[error("too many requests already forwarded to peer {0}")]
    Busy(NodeId),
    /// The peer answered `404` before anything ran: it does not know the message (a build
    /// from before it was added, or of another protocol version).
    #[error("peer {0} does not know {1}")]
    UnknownPath(NodeId, String),
}

/// A connection pool to one peer. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    target: NodeId,
    base_url: String,
    /// `Err`: the client could not be built (reported as not sent on every call, never as a
    /// request sent without this node's credentials).
    http: Result<reqwest::Client, String>,
    /// Where the peer is recorded as holding Raft state once it answers a Raft RPC.
    bootstrap: BootstrapRecord,
    /// Slots for requests forwarded to this peer ([`MAX_FORWARDS_IN_FLIGHT_PER_PEER`]): each
    /// takes a connection, and the peer's descriptors are budgeted for that many.
    forwards: Arc<tokio::sync::Semaphore>,
    /// Forwarded writes, sent in batches. `None` in the batch sender's own copy (so the task
    /// does not keep its own queue open) and where no runtime was running to start it.
    writes: Option<WriteBatches>,
}

impl PeerClient {
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Sends one [`Rpc`] and reads its reply.
    pub async fn call<R: Rpc>(&self, request: &R::Request, timeout: Duration) -> Result<R::Reply, CallError> {
        let body = encode(request).map_err(|e| CallError::NotSent(self.target, format!("encode: {e}")))?;
        self.send(R::PATH, body.into(), timeout).await
    }

    /// [`Self::call`] for a request forwarded to the leader: first waits (at most
    /// [`FORWARD_SLOT_WAIT_MS`]) for one of this peer's forwarding slots, then sends with the
    /// whole `timeout` ahead of it.
    pub async fn forward<R: Rpc>(&self, request: &R::Request, timeout: Duration) -> Result<R::Reply, CallError> {
        let body = encode(request).map_err(|e| CallError::NotSent(self.target, format!("encode: {e}")))?;
        self.forward_encoded::<R>(body, timeout).await
    }

    /// [`Self::forward`] of a request already encoded.
    pub(crate) async fn forward_encoded<R: Rpc>(
        &self,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<R::Reply, CallError> {
        let wait = Duration::from_millis(FORWARD_SLOT_WAIT_MS);
        let Ok(Ok(_slot)) = tokio::time::timeout(wait, self.forwards.clone().acquire_owned()).await else {
            return Err(CallError::Busy(self.target));
        };
        self.send(R::PATH, body.into(), timeout).await
    }

    /// A client's write forwarded to this peer (the leader), in a batch with whatever other
    /// writes are waiting to go there (see `write_batches.rs`). An `ack=all` write goes alone:
    /// it waits for every voter, and a batch is answered only once all its writes are, so
    /// with a voter down it would hold the quorum writes beside it for the whole timeout.
    pub async fn forward_write(&self, write: &ForwardedWrite, timeout: Duration) -> Forwarded {
        match &self.writes {
            Some(batches) if write.ack == Ack::Quorum => batches.forward(write, timeout).await,
            _ => self.forward::<protocol::ForwardWrite>(write, timeout).await,
        }
    }

    /// POSTs `body` (already encoded, or a stream such as a snapshot) to `path` and decodes the
    /// reply (see [`crate::protocol`]).
    pub async fn send<Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let http = self.http.as_ref().map_err(|error| CallError::NotSent(self.target, error.clone()))?;
        let response = http
            .post(format!("{}{path}", self.base_url))
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        let status = response.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(CallError::NotReady(self.target));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallError::Unauthorized(self.target, "its peer token differs from this node's".into()));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(CallError::UnknownPath(self.target, path.to_string()));
        }
        if status.is_client_error() {
            // Refused before the handler ran, whether or not the reason arrives whole.
            let text = response.text().await.unwrap_or_default();
            return Err(CallError::Refused(self.target, format!("HTTP {status}: {text}")));
        }
        let bytes = response.bytes().await.map_err(|e| CallError::NoAnswer(self.target, e.to_string()))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(CallError::NoAnswer(self.target, format!("HTTP {status}: {text}")));
        }
        decode(&bytes).map_err(|e| CallError::NoAnswer(self.target, format!("decode: {e}")))
    }

    fn classify(&self, error: reqwest::Error) -> CallError {
        if quorumkv_api::client::refused_at_tls_handshake(&error) {
            CallError::Unauthorized(self.target, error.to_string())
        } else if quorumkv_api::client::certainly_not_sent(&error) {
            CallError::NotSent(self.target, error.to_string())
        } else {
            CallError::NoAnswer(self.target, error.to_string())
        }
    }

    /// Records durably that this peer answered a Raft RPC, so it holds Raft state. Must
    /// finish before the answer is used: a peer whose vote or append counted for anything is
    /// then remembered, and refused should it come back with an empty data dir.
    pub(crate) async fn note_answered(&self) -> std::io::Result<()> {
        self.bootstrap.note_peer_seen(self.target).await
    }
}

/// One [`PeerClient`] per peer, created on first use and reused, re-created when the peer's
/// address changes.
#[derive(Clone)]
pub struct PeerClients {
    clients: Arc<Mutex<HashMap<NodeId, PeerClient>>>,
    bootstrap: BootstrapRecord,
    credentials: PeerCredentials,
}

impl PeerClients {
    pub fn new(bootstrap: BootstrapRecord, credentials: PeerCredentials) -> Self {
        Self { clients: Arc::new(Mutex::new(HashMap::new())), bootstrap, credentials }
    }

    pub fn get(&self, target: NodeId, peer_addr: &str) -> PeerClient {
        let scheme = if self.credentials.tls.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{peer_addr}");
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&target) {
            if client.base_url == base_url {
                return client.clone();
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.credentials.token {
            // Checked in `Config::validate` to be printable ASCII, so always a valid header.
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
            .pool_idle_timeout(Duration::from_millis(CLIENT_POOL_IDLE_TIMEOUT_MS))
            .default_headers(headers);
        if let Some(tls) = &self.credentials.tls {
            builder = builder.use_preconfigured_tls(tls.clone());
        }
        // A client that cannot be built would send without credentials: fail every call instead.
        let http = builder.build().map_err(|error| {
            tracing::error!(%error, "cannot build the HTTP client for peer {target}");
            format!("cannot build the HTTP client: {error}")
        });
        let forwards = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_IN_FLIGHT_PER_PEER));
        let mut client =
            PeerClient { target, base_url, http, bootstrap: self.bootstrap.clone(), forwards, writes: None };
        if tokio::runtime::Handle::try_current().is_ok() {
            client.writes = Some(WriteBatches::start(client.clone()));
        }
        clients.insert(target, client.clone());
        client
    }
}
