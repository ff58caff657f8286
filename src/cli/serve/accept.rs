//! `ds serve`'s accept loop, and its cap on open connections.
//!
//! Every connection holds a file descriptor for as long as its client
//! keeps it. Uncapped, enough idle clients push the process past its
//! open-file limit: `accept` then fails with EMFILE, new connections wait
//! in the kernel's queue, and nothing is answered, `/health` included. So
//! at most `max` connections are served. Past that, [`HEALTH_SLOTS`] more
//! are let in for one request each, which is answered only if it is
//! `GET /health` (anything else gets a 503), so a load balancer still sees
//! a live server while it is full; these give a client at most
//! [`HEALTH_HEADER_TIMEOUT`] to send its request, so silent clients cannot
//! hold them for long. Past those, a connection gets a canned
//! 503 and is closed at once: the accept queue never backs up, and the
//! process keeps a descriptor for no one it does not serve.
//!
//! The trade-off: whoever holds `max` connections locks everyone else out
//! for as long as they hold them. The cap does not prevent that; it keeps
//! the process alive and its running streams whole while it lasts, and the
//! connection timeouts bound how long an idle holder stays. Limits per
//! client belong in front of the server (a load balancer, a firewall).

use std::future::Future;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::connection::{self, Timeouts, Use};
use crate::error::{ApiError, RETRY_AFTER_SECS};

/// Connections let in past the cap for health checks. A few: probes come
/// one at a time from each balancer, and each of these closes after one
/// answer (or at the header timeout).
pub(crate) const HEALTH_SLOTS: usize = 8;

/// The header timeout of a health-check slot, when the configured one is
/// longer: a health check sends its request as soon as it connects, and a
/// client that holds one of these slots silent locks health checks out.
const HEALTH_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait before accepting again after `accept` failed for a
/// reason of the server's own (out of descriptors, say): long enough not to
/// spin on the error, short enough that a freed descriptor is used soon.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the loop needs to serve connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Connections served in full at once.
    pub(super) max_connections: usize,
    /// The clocks of each connection.
    pub(super) timeouts: Timeouts,
}

/// Accepts and serves connections until `shutdown` resolves; then stops
/// accepting, lets each connection finish its request in flight, and
/// returns once every one is closed.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    // Semaphore::new panics past MAX_PERMITS (2^61), which no server
    // reaches: a larger setting means "no cap" in practice.
    let full = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let health = Arc::new(Semaphore::new(HEALTH_SLOTS));
    let refusal = refusal();
    // Each connection holds a receiver: `closed()` below is the moment the
    // last one ends.
    let (stopping, stop_seen) = watch::channel(false);
    let mut at_cap = false;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        let Some((slot, usage)) = take_slot(&full, &health) else {
            refuse(stream, &refusal);
            continue;
        };
        match (usage, at_cap) {
            (Use::HealthOnly, false) => tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached; answering health checks only (SANDSTORM_MAX_CONNECTIONS)"
            ),
            (Use::Full, true) => tracing::info!("below the connection limit again"),
            _ => {}
        }
        at_cap = usage == Use::HealthOnly;
        // Each SSE event is one small write; without TCP_NODELAY, Nagle's
        // algorithm holds it back until the client's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let timeouts = match usage {
            Use::Full => limits.timeouts,
            Use::HealthOnly => Timeouts {
                header: limits.timeouts.header.min(HEALTH_HEADER_TIMEOUT),
                ..limits.timeouts
            },
        };
        tokio::spawn(serve_one(
            stream,
            router.clone(),
            timeouts,
            usage,
            stop_seen.clone(),
            slot,
        ));
    }
    drop(listener);
    stopping.send_replace(true);
    drop(stop_seen);
    stopping.closed().await;
}

async fn serve_one(
    stream: TcpStream,
    router: Router,
    timeouts: Timeouts,
    usage: Use,
    stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    connection::serve(stream, router, timeouts, usage, stopping).await;
}

/// A full slot if one is free, else a health-check slot, else none.
fn take_slot(
    full: &Arc<Semaphore>,
    health: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, Use)> {
    if let Ok(slot) = Arc::clone(full).try_acquire_owned() {
        return Some((slot, Use::Full));
    }
    Arc::clone(health)
        .try_acquire_owned()
        .ok()
        .map(|slot| (slot, Use::HealthOnly))
}

/// Writes `refusal` and closes. Best effort: a fresh socket's send buffer
/// is empty, so it fits in one write; a client that has already sent its
/// request may see a reset instead, which is as fast.
fn refuse(stream: TcpStream, refusal: &[u8]) {
    // Through the std socket: tokio's `try_write` would refuse until its
    // reactor has seen the new socket writable, which it has not yet.
    if let Ok(mut stream) = stream.into_std() {
        let _ = stream.write(refusal);
    }
}

/// An error that belongs to one connection (its client gave up before it
/// was accepted) is skipped; any other is the server's own, and waited out.
async fn accept_failed(error: &io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying");
    tokio::time::sleep(ACCEPT_RETRY).await;
}

/// The whole HTTP answer a connection past every slot gets: the same 503
/// as a health-check slot's, written before the server ever reads.
fn refusal() -> Vec<u8> {
    let body = serde_json::to_vec(&ApiError::Overloaded.body()).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: application/json\r\n\
         content-length: {}\r\n\
         retry-after: {RETRY_AFTER_SECS}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_503_with_the_error_body() {
        let refusal = String::from_utf8(refusal()).expect("text");
        let (head, body) = refusal.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["error"]["type"], "overloaded");
    }

    #[test]
    fn health_slots_are_taken_only_when_the_full_ones_are_gone() {
        let full = Arc::new(Semaphore::new(1));
        let health = Arc::new(Semaphore::new(1));
        let first = take_slot(&full, &health).expect("a slot");
        assert_eq!(first.1, Use::Full);
        let second = take_slot(&full, &health).expect("a slot");
        assert_eq!(second.1, Use::HealthOnly);
        assert!(take_slot(&full, &health).is_none());
        drop(first);
        assert_eq!(take_slot(&full, &health).expect("a slot").1, Use::Full);
    }
}
