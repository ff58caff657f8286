//! `ds serve`: the router on a TCP socket until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use axum::Router;
use axum::serve::ListenerExt;

pub(super) async fn serve(addr: SocketAddr, router: Router) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %local, "sandstorm listening");
    // Tests and scripts read the bound address (port 0 picks one) from here.
    eprintln!("listening on http://{local}");
    if !local.ip().is_loopback() {
        tracing::warn!("listening beyond loopback; make sure SANDSTORM_API_TOKEN is set");
    }
    // Each SSE event is one small write; without TCP_NODELAY, Nagle's
    // algorithm holds it back until the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Ctrl-C or SIGTERM. In-flight runs finish (each destroys its sandbox)
/// before the server exits.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down; waiting for running queries to end");
}
