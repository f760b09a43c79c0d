//! Accepting HTTP connections within limits, on the client and on the peer port.
//!
//! axum's `serve` accepts every connection and waits forever for headers. Here each listener
//! has its own cap on open connections, sized below the process's descriptor limit so that
//! client load can never take the descriptors Raft needs (see `server.rs`). At the cap the
//! oldest connection is asked to close (an idle one closes at once, a busy one after its
//! request) to make room; only when none frees a slot in time is the new one closed unserved.
//! Request headers must arrive within a deadline, which also closes connections left idle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::limits;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this long after the connection (or its previous
    /// request) is ready for them: bounds slow clients and idle kept-alive connections alike.
    pub header_timeout: Duration,
}

/// The open connections of a listener, oldest first, each with a way to ask it to close.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, Arc<Notify>>,
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections finish
/// their requests (closing idle ones at once) and returns when all have closed.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
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
        let Some(permit) = make_room(name, &permits, &connections).await else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let close = Arc::new(Notify::new());
        let id = {
            let mut connections = connections.lock().unwrap_or_else(|p| p.into_inner());
            let id = connections.next_id;
            connections.next_id += 1;
            connections.open.insert(id, close.clone());
            id
        };
        let (router, stop, connections) = (router.clone(), stop.clone(), connections.clone());
        tracker.spawn(async move {
            serve_connection(stream, router, limits, close, stop).await;
            connections.lock().unwrap_or_else(|p| p.into_inner()).open.remove(&id);
            drop(permit);
        });
    }
    // Ask every connection to finish; idle ones close at once.
    for close in connections.lock().unwrap_or_else(|p| p.into_inner()).open.values() {
        close.notify_one();
    }
    tracker.close();
    tracker.wait().await;
}

/// A connection slot: free at once, or freed by closing the oldest connection within
/// [`limits::EVICTION_WAIT_MS`]; `None` when neither happened.
async fn make_room(
    name: &'static str,
    permits: &Arc<Semaphore>,
    connections: &Mutex<Connections>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    let oldest = connections.lock().unwrap_or_else(|p| p.into_inner()).open.pop_first();
    if let Some((_, close)) = oldest {
        close.notify_one();
    }
    let wait = Duration::from_millis(limits::EVICTION_WAIT_MS);
    match tokio::time::timeout(wait, permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Some(permit),
        _ => {
            tracing::warn!(listener = name, "connection limit reached and no connection closed in time; refused one");
            None
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: ListenerLimits,
    close: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(router);
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
