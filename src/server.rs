//! Running one node: listeners, bootstrap, signal handling and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::client_router;
use crate::config::ServeConfig;
use crate::limits;
use crate::listener;
use crate::listener::ListenerLimits;
use crate::network::peer_router;
use crate::node::Node;

/// Runs a node until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn serve(config: ServeConfig) -> Result<(), String> {
    serve_until(config, shutdown_signal()).await
}

/// Runs a node until `stop` completes.
pub async fn serve_until(config: ServeConfig, stop: impl Future<Output = ()>) -> Result<(), String> {
    config.validate()?;
    let bind = |addr: String| async move {
        TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let client_listener = bind(config.client_addr.clone()).await?;
    let peer_listener = bind(config.peer_addr.clone()).await?;
    serve_on(config, client_listener, peer_listener, stop).await
}

/// Runs a node on listeners bound already (so a test can start several nodes in one process on
/// ports it holds from the start), until `stop` completes. The config's `client_addr` and
/// `peer_addr` must be the listeners' addresses: they are what the node advertises.
pub async fn serve_on(
    config: ServeConfig,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    config.validate()?;
    // First of all: from here on a SIGHUP (a certificate renewal's reload) is handled, not fatal.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let client_limits = ListenerLimits {
        max_connections: client_connection_cap(config.max_client_connections),
        header_timeout: Duration::from_millis(limits::CLIENT_HEADER_TIMEOUT_MS),
        evict_idle_after: Some(Duration::from_millis(limits::EVICTION_MIN_IDLE_MS)),
    };
    let peer_limits = ListenerLimits {
        max_connections: limits::MAX_PEER_CONNECTIONS,
        header_timeout: Duration::from_millis(limits::PEER_HEADER_TIMEOUT_MS),
        evict_idle_after: None,
    };
    let node = Node::open(config).await?;

    let (stop_peer, peer_stopped) = watch::channel(false);
    let (stop_client, client_stopped) = watch::channel(false);
    let acceptor = |tls: &Option<crate::tls::ListenerTls>| {
        tls.as_ref().map(|tls| listener::Tls { acceptor: tls.acceptor.clone(), identify: tls.identify.clone() })
    };
    let peer_server = tokio::spawn(listener::serve(
        "peer",
        peer_listener,
        peer_router(node.clone()),
        peer_limits,
        acceptor(&node.tls().peer),
        peer_stopped,
    ));
    let client_server = tokio::spawn(listener::serve(
        "client",
        client_listener,
        client_router(node.clone()),
        client_limits,
        acceptor(&node.tls().client),
        client_stopped,
    ));

    // The node's background loops run until shutdown cancels them, tracked so shutdown knows
    // they are gone before the node closes its store.
    let background = TaskTracker::new();
    let cancel = CancellationToken::new();
    let beside = |task: fn(Arc<Node>) -> BoxFuture<'static, ()>| {
        let (cancel, task) = (cancel.clone(), task(node.clone()));
        background.spawn(async move { cancel.run_until_cancelled(task).await });
    };
    // Before bootstrapping, which can wait long for the founders: certificates renewed
    // meanwhile are picked up.
    let (reload, tls) = (cancel.clone(), node.tls().clone());
    background.spawn(async move { reload.run_until_cancelled(tls.reload_on_change(hangup)).await });
    if let Err(error) = node.bootstrap_or_resume().await {
        cancel.cancel();
        background.close();
        background.wait().await;
        node.shutdown().await;
        return Err(error);
    }
    tracing::info!(
        client_addr = %node.config().client_addr,
        peer_addr = %node.config().peer_addr,
        "node {} serving", node.id()
    );
    beside(|node| Box::pin(async move { node.register_client_addr().await }));
    beside(|node| Box::pin(async move { node.watch_raft_changes().await }));
    beside(|node| Box::pin(async move { node.watch_removal().await }));
    beside(|node| Box::pin(async move { node.keep_fresh().await }));
    beside(|node| Box::pin(async move { node.reregister_if_moved().await }));
    beside(|node| Box::pin(async move { node.keep_lease_time().await }));
    if node.config().join.is_some() && node.config().auto_promote {
        beside(|node| Box::pin(async move { node.promote_self_when_caught_up().await }));
    }
    background.close();

    stop.await;
    tracing::info!("shutting down");
    node.transfer_leadership_away().await;
    node.start_draining();
    tokio::time::sleep(Duration::from_millis(limits::SHUTDOWN_REFUSE_PERIOD_MS)).await;
    let _ = stop_client.send(true);
    // In-flight requests finish (a leader forwards to the new leader) or are cut at the bound.
    if tokio::time::timeout(Duration::from_millis(limits::SHUTDOWN_DRAIN_MS), client_server).await.is_err() {
        tracing::warn!("in-flight client requests did not finish in time");
    }
    cancel.cancel();
    background.wait().await;
    node.shutdown().await;
    let _ = stop_peer.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(limits::SHUTDOWN_DRAIN_MS), peer_server).await;
    tracing::info!("stopped");
    Ok(())
}

/// The client listener's connection cap: `--max-client-connections`, but never so many that
/// client connections could take the descriptors the peer port, RocksDB and the peer clients
/// need ([`limits::RESERVED_DESCRIPTORS`]). Raises the process's descriptor limit to its hard
/// limit first, as etcd's Go runtime does.
fn client_connection_cap(configured: usize) -> usize {
    let descriptors = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the descriptor limit; assuming 1024");
            1024
        }
    };
    let budget = descriptors.saturating_sub(limits::RESERVED_DESCRIPTORS) as usize;
    let cap = configured.min(budget).max(limits::MIN_CLIENT_CONNECTIONS);
    if cap < configured {
        tracing::warn!(
            "the descriptor limit is {descriptors}: at most {cap} client connections (not {configured}); \
             raise it (ulimit -n, LimitNOFILE=) to {} for {configured}",
            configured as u64 + limits::RESERVED_DESCRIPTORS
        );
    }
    cap
}

async fn shutdown_signal() {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
