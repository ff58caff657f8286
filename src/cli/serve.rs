//! `ds serve`: the router on a TCP socket until Ctrl-C or SIGTERM.
//!
//! On either signal the server stops accepting connections and lets the
//! running queries finish, for at most the shutdown bound. Then it ends the
//! ones still going (each sends an `error` event of type `shutdown`,
//! destroys its sandbox and closes its stream), gives them
//! [`DESTROY_GRACE`] to do so, and exits whatever is still open.
//!
//! Connections are served by [`accept`] and [`connection`] rather than
//! `axum::serve`, which has no header or idle timeout and no cap on open
//! connections: without them, idle and slow clients hold descriptors until
//! the process runs out and stops answering anyone.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::sync::oneshot;

use crate::settings::ConnectionSettings;
use crate::shutdown::ShutdownTrigger;

mod accept;
mod connection;
mod open_files;
pub(super) mod reload;

/// How long runs ended by the bound get to send their last events and
/// destroy their sandboxes before the process exits anyway.
const DESTROY_GRACE: Duration = Duration::from_secs(15);

pub(super) async fn serve(
    addr: SocketAddr,
    router: Router,
    runs: ShutdownTrigger,
    bound: Duration,
    connections: ConnectionSettings,
) -> Result<(), String> {
    let open_files = open_files::raise_limit();
    let limits = accept::Limits {
        max_connections: open_files::max_connections(connections.max_connections, open_files),
        timeouts: connection::Timeouts {
            header: connections.header_timeout,
            idle: connections.idle_timeout,
        },
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        address = %local,
        max_connections = limits.max_connections,
        header_timeout = ?limits.timeouts.header,
        idle_timeout = ?limits.timeouts.idle,
        "sandstorm listening"
    );
    // Tests and scripts read the bound address (port 0 picks one) from here.
    eprintln!("listening on http://{local}");
    if !local.ip().is_loopback() {
        tracing::warn!("listening beyond loopback; make sure SANDSTORM_API_TOKEN is set");
    }
    let (signalled, stopping) = oneshot::channel();
    let server = accept::serve(listener, router, limits, async move {
        shutdown_signal().await;
        let _ = signalled.send(());
    });
    let mut server = std::pin::pin!(server);
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
        () = &mut server => return Ok(()),
        () = ended_runs => {}
    }
    if tokio::time::timeout(DESTROY_GRACE, server).await.is_err() {
        tracing::warn!("connections still open after the shutdown bound; exiting");
    }
    Ok(())
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
