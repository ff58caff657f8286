//! `ds serve`: the router on a TCP socket until Ctrl-C or SIGTERM.
//!
//! On either signal the server stops accepting connections and lets the
//! running queries finish, for at most the shutdown bound. Then it ends the
//! ones still going (each sends an `error` event of type `shutdown`,
//! destroys its sandbox and closes its stream), gives them
//! [`DESTROY_GRACE`] to do so, and exits whatever is still open.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::sync::oneshot;

use crate::shutdown::ShutdownTrigger;

/// How long runs ended by the bound get to send their last events and
/// destroy their sandboxes before the process exits anyway.
const DESTROY_GRACE: Duration = Duration::from_secs(15);

pub(super) async fn serve(
    addr: SocketAddr,
    router: Router,
    runs: ShutdownTrigger,
    bound: Duration,
) -> Result<(), String> {
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
    let (signalled, stopping) = oneshot::channel();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = signalled.send(());
    });
    let mut server = std::pin::pin!(server.into_future());
    let ended_runs = async {
        if stopping.await.is_ok() {
            tokio::time::sleep(bound).await;
            tracing::warn!(
                ?bound,
                "shutdown bound reached; ending the queries still running"
            );
            runs.trigger();
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = &mut server => return result.map_err(|e| e.to_string()),
        () = ended_runs => {}
    }
    match tokio::time::timeout(DESTROY_GRACE, server).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => {
            tracing::warn!("connections still open after the shutdown bound; exiting");
            Ok(())
        }
    }
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
