//! Accepting HTTP connections within limits, on the client and on the peer port.
//!
//! axum's `serve` accepts every connection and waits forever for headers. Here each listener
//! has its own cap on open connections, sized below the process's descriptor limit so that
//! client load can never take the descriptors Raft needs (see `server.rs`). At the cap, the
//! client listener closes the oldest connection that has been idle for longer than clients keep
//! pooled connections (so no client is caught sending its next request into it), or that never
//! carried a request for a few seconds; when there is none, the new connection is answered `503`
//! with `Connection: close` (a definite refusal, never a reset the client could not interpret;
//! on a TLS listener, where a plain-text answer would read as a broken handshake, it is closed). Request headers must arrive within a deadline, which
//! also closes connections left idle. On stop, the listening socket is closed at once (new
//! connections are refused, not left unread in the backlog), and open connections finish.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::limits;
use crate::tls::ClientIdentity;
use crate::tls::Identify;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this long after the connection (or its previous
    /// request) is ready for them: bounds slow clients and idle kept-alive connections alike.
    pub header_timeout: Duration,
    /// At the cap, a connection idle for longer than this may be closed to make room; `None`:
    /// never (the peer port, whose connections are few and long-lived Raft streams).
    pub evict_idle_after: Option<Duration>,
}

/// One open connection, as the accept loop sees it.
struct Connection {
    /// Asks it to close once its current request is answered.
    close: Arc<Notify>,
    activity: Arc<Activity>,
}

/// Whether a connection is serving a request, whether it ever did, and since when it has not.
struct Activity {
    in_flight: AtomicUsize,
    used: AtomicBool,
    idle_since: Mutex<Instant>,
}

impl Activity {
    /// May this connection be closed to make room? Only if idle: for longer than clients keep
    /// pooled connections, or, if it never carried a request, for a few seconds (a client sends
    /// its first request right after connecting; one that sends nothing is squatting).
    fn evictable(&self, idle_enough: Duration) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let idle = self.idle_since.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        let used = self.used.load(Ordering::Acquire);
        idle >= idle_enough || (!used && idle >= Duration::from_millis(limits::EVICTION_UNUSED_IDLE_MS))
    }
}

/// A request in progress on a connection, from its arrival until its response body is sent
/// (or dropped): the connection is not idle meanwhile.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.used.store(true, Ordering::Release);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request [`Busy`] until it is finished with.
struct BodyWhileBusy {
    body: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for BodyWhileBusy {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The open connections of a listener, oldest first.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, Connection>,
}

/// A listener's TLS: the acceptor, and (on a client port requiring client certificates) how
/// to read who a certificate names; every request of the connection carries that
/// [`ClientIdentity`] as an extension.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub identify: Option<Arc<Identify>>,
}

/// Serves `router` on `listener` until `stop` turns true, then closes the listening socket,
/// lets open connections finish their requests (closing idle ones at once) and returns when
/// all have closed.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    tls: Option<Tls>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(limits::MAX_REFUSING_CONNECTIONS));
    let connections = Arc::new(Mutex::new(Connections::default()));
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or a transient network error: pause, do not spin.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(limits::ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Some(permit) = make_room(&permits, &connections, limits.evict_idle_after).await else {
            if tls.is_some() {
                // A plain-text 503 would read as a broken handshake to a TLS client: close.
                tracing::warn!(listener = name, "connection limit reached; closed a TLS connection unanswered");
                drop(stream);
            } else {
                refuse(name, stream, &refusals, &tracker);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let close = Arc::new(Notify::new());
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let id = {
            let mut connections = connections.lock().unwrap_or_else(|p| p.into_inner());
            let id = connections.next_id;
            connections.next_id += 1;
            connections.open.insert(id, Connection { close: close.clone(), activity: activity.clone() });
            id
        };
        let (router, stop, connections, tls) = (router.clone(), stop.clone(), connections.clone(), tls.clone());
        tracker.spawn(async move {
            match tls {
                None => serve_connection(stream, router, limits, close, activity, stop, None).await,
                Some(Tls { acceptor, identify }) => {
                    // The handshake has its own deadline (hyper's header timeout starts after
                    // it), and gives way to an eviction or a stop like an idle connection.
                    let deadline = Duration::from_millis(limits::TLS_HANDSHAKE_TIMEOUT_MS);
                    let mut stopping = stop.clone();
                    let handshake = tokio::select! {
                        handshake = tokio::time::timeout(deadline, acceptor.accept(stream)) => Some(handshake),
                        _ = close.notified() => None,
                        () = stopped(&mut stopping) => None,
                    };
                    match handshake {
                        Some(Ok(Ok(stream))) => {
                            // Idle from now, not from the accept: the handshake was not idleness.
                            *activity.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                            let identity =
                                identify.and_then(|identify| identify.of(stream.get_ref().1.peer_certificates()?));
                            serve_connection(stream, router, limits, close, activity, stop, identity).await
                        }
                        // An untrusted or absent certificate ends here: nothing was served.
                        Some(Ok(Err(error))) => tracing::debug!(listener = name, %error, "TLS handshake failed"),
                        Some(Err(_)) => tracing::debug!(listener = name, "TLS handshake timed out"),
                        None => {}
                    }
                }
            }
            connections.lock().unwrap_or_else(|p| p.into_inner()).open.remove(&id);
            drop(permit);
        });
    }
    // Refuse new connections at once rather than leave them unread in the backlog until exit.
    drop(listener);
    for connection in connections.lock().unwrap_or_else(|p| p.into_inner()).open.values() {
        connection.close.notify_one();
    }
    tracker.close();
    tracker.wait().await;
}

/// A connection slot: free at once, or freed by closing the oldest connection idle for longer
/// than `evict_idle_after`; `None` when neither happened within [`limits::EVICTION_WAIT_MS`].
async fn make_room(
    permits: &Arc<Semaphore>,
    connections: &Mutex<Connections>,
    evict_idle_after: Option<Duration>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    let idle_enough = evict_idle_after?;
    let evicted = {
        let mut connections = connections.lock().unwrap_or_else(|p| p.into_inner());
        let oldest_idle = connections.open.iter().find(|(_, c)| c.activity.evictable(idle_enough)).map(|(id, _)| *id);
        oldest_idle.and_then(|id| connections.open.remove(&id))
    }?;
    evicted.close.notify_one();
    let wait = Duration::from_millis(limits::EVICTION_WAIT_MS);
    match tokio::time::timeout(wait, permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

/// Answers a connection that found no slot with `503` and closes it, reading (and dropping)
/// what the client sends for a moment so the close is not a reset that would hide the answer.
/// At most [`limits::MAX_REFUSING_CONNECTIONS`] at once; beyond that the connection is closed.
fn refuse(name: &'static str, mut stream: TcpStream, refusals: &Arc<Semaphore>, tracker: &TaskTracker) {
    let Ok(slot) = refusals.clone().try_acquire_owned() else {
        tracing::warn!(listener = name, "connection limit reached; closed a connection unanswered");
        return;
    };
    tracing::warn!(listener = name, "connection limit reached; refused a connection with 503");
    tracker.spawn(async move {
        let body = r#"{"error":"unavailable","message":"too many connections to this node; use another one or retry","outcome":"failed"}"#;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let linger = Duration::from_millis(limits::REFUSAL_LINGER_MS);
        let _ = tokio::time::timeout(linger, async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(slot);
    });
}

async fn serve_connection(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    router: Router,
    limits: ListenerLimits,
    close: Arc<Notify>,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    identity: Option<ClientIdentity>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        let busy = Busy::begin(activity.clone());
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            let response = response.unwrap_or_else(|never| match never {});
            // Busy until the whole response body is sent (a backup streams for minutes).
            Ok::<_, Infallible>(response.map(|body| axum::body::Body::new(BodyWhileBusy { body, _busy: busy })))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => break,
            _ = close.notified(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = stopped(&mut stop), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Completes once `stop` is true (the guard `wait_for` returns must not live across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
