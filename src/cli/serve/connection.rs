//! One client connection of `ds serve`: HTTP/1 by hyper, with two clocks
//! that keep a slow or idle client from holding a connection for ever.
//!
//! - The header timeout: a request head must arrive whole within it,
//!   counted from its first byte; for a connection's first request, from
//!   the connect, since a client that connects and sends nothing holds a
//!   connection just as one that trickles a head does (slowloris).
//! - The idle timeout: a keep-alive connection with no request in flight
//!   is closed once it has been that long without one.
//!
//! hyper has a header timeout of its own, but its clock starts whenever the
//! connection waits for a head, which between two requests makes it an
//! idle timeout too: the two could not differ. It is off here, and
//! [`Activity`] keeps both clocks. A request is in flight from the moment
//! hyper hands over its head until its response body is finished or
//! dropped, so an event stream, silent for minutes between keep-alive
//! comments while the agent thinks, is never idle.
//!
//! The clocks stop only when the connection is in flight. One gap: when a
//! client pipelines a second request behind the first and stops part-way
//! through its head, the bytes came in while the first was in flight, so
//! that head gets the idle timeout rather than the header timeout.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::response::IntoResponse;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::app::HEALTH_PATH;
use crate::error::ApiError;
use crate::sync::lock;

/// The two clocks of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// For a whole request head.
    pub(super) header: Duration,
    /// For a keep-alive connection with no request in flight.
    pub(super) idle: Duration,
}

/// What a connection may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// Everything the router serves, with keep-alive.
    Full,
    /// One request, then closed: `GET /health` is answered and anything
    /// else gets a 503 (a slot kept for health checks at the cap).
    HealthOnly,
}

/// Serves one connection until the client closes it, a clock runs out, or,
/// once `stopping` turns true, its request in flight (if any) is done.
pub(super) async fn serve(
    stream: TcpStream,
    router: Router,
    timeouts: Timeouts,
    usage: Use,
    mut stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let handler = Handler {
        router: TowerToHyperService::new(router),
        activity: Arc::clone(&activity),
        usage,
    };
    let connection = http1::Builder::new()
        // Off: it would also be an idle timeout (see the module doc).
        .header_read_timeout(None)
        .keep_alive(usage == Use::Full)
        .serve_connection(io, handler);
    let mut connection = std::pin::pin!(connection);
    let expired = activity.expired(timeouts);
    let mut expired = std::pin::pin!(expired);
    let mut asked_to_stop = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            reason = expired.as_mut() => {
                // No request is in flight, so dropping the connection cuts
                // nothing a client was promised.
                tracing::debug!(reason, "closing connection");
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !asked_to_stop => {
                asked_to_stop = true;
                // hyper closes it now if idle, else after the response.
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is between requests, and so which clock runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight and no byte of the next head yet; `first`
    /// until the connection has served a request.
    Waiting { since: Instant, first: bool },
    /// Part of a request head has arrived; its clock started `since`.
    Head { since: Instant },
    /// This many requests in flight.
    Busy(usize),
}

impl Phase {
    /// When the connection is to be closed, and why; `None` while busy.
    fn deadline(self, timeouts: Timeouts) -> Option<(Instant, &'static str)> {
        match self {
            Phase::Waiting { since, first: true } | Phase::Head { since } => {
                Some((since + timeouts.header, "request head not received in time"))
            }
            Phase::Waiting {
                since,
                first: false,
            } => Some((since + timeouts.idle, "idle")),
            Phase::Busy(_) => None,
        }
    }
}

/// A connection's [`Phase`], moved on by its reads, its requests and their
/// responses, and watched by [`Activity::expired`].
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// Wakes the watcher when a deadline may have moved earlier.
    changed: Notify,
}

impl Activity {
    fn new(connected: Instant) -> Self {
        Activity {
            phase: Mutex::new(Phase::Waiting {
                since: connected,
                first: true,
            }),
            changed: Notify::new(),
        }
    }

    /// Bytes came in: when the connection was waiting, a head has begun.
    fn bytes_arrived(&self) {
        let mut phase = lock(&self.phase);
        if let Phase::Waiting { since, first } = *phase {
            // The first request's clock has run since the connect.
            let since = if first { since } else { Instant::now() };
            *phase = Phase::Head { since };
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// hyper handed a request head over: in flight until the returned mark
    /// is dropped.
    fn begin_request(self: &Arc<Self>) -> InFlight {
        let mut phase = lock(&self.phase);
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Waiting { .. } | Phase::Head { .. } => Phase::Busy(1),
        };
        InFlight(Arc::clone(self))
    }

    fn end_request(&self) {
        let mut phase = lock(&self.phase);
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Waiting {
                since: Instant::now(),
                first: false,
            },
        };
        drop(phase);
        self.changed.notify_one();
    }

    /// Resolves, with the reason, once the connection has been waiting past
    /// its deadline; never while a request is in flight.
    async fn expired(&self, timeouts: Timeouts) -> &'static str {
        loop {
            let deadline = lock(&self.phase).deadline(timeouts);
            match deadline {
                Some((at, reason)) if at <= Instant::now() => return reason,
                Some((at, _)) => {
                    // A stale wake-up only costs one more look at the phase.
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// A request in flight, for as long as it lives; it rides in the response
/// body, which hyper drops once it has sent the last of it (or the
/// connection is gone).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The socket, telling [`Activity`] when bytes come in.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router, with each request marked in flight until its response body
/// is done.
struct Handler {
    router: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    usage: Use,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = http::Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin_request();
        let allowed = self.usage == Use::Full || request.uri().path() == HEALTH_PATH;
        let answer = allowed.then(|| self.router.call(request));
        Box::pin(async move {
            let response = match answer {
                Some(answer) => {
                    let Ok(response) = answer.await;
                    response
                }
                None => ApiError::Overloaded.into_response(),
            };
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight while hyper holds it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(75),
    };

    /// Whether `activity` expires within `within` of now (paused time).
    async fn expires_within(activity: &Activity, within: Duration) -> Option<&'static str> {
        tokio::time::timeout(within, activity.expired(TIMEOUTS))
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_gets_the_header_timeout() {
        let activity = Activity::new(Instant::now());
        assert_eq!(
            expires_within(&activity, Duration::from_secs(9)).await,
            None
        );
        assert!(
            expires_within(&activity, Duration::from_secs(2))
                .await
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_first_head_is_timed_from_the_connect() {
        let activity = Activity::new(Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        activity.bytes_arrived();
        assert!(
            expires_within(&activity, Duration::from_secs(2))
                .await
                .is_some(),
            "a byte at 9 s does not buy another 10 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_never_expires_and_then_the_idle_clock_runs() {
        let activity = Arc::new(Activity::new(Instant::now()));
        activity.bytes_arrived();
        let in_flight = activity.begin_request();
        // Far past both timeouts: a long, quiet event stream.
        assert_eq!(
            expires_within(&activity, Duration::from_secs(3600)).await,
            None
        );
        drop(in_flight);
        assert_eq!(
            expires_within(&activity, Duration::from_secs(74)).await,
            None,
            "idle, not a slow head"
        );
        assert_eq!(
            expires_within(&activity, Duration::from_secs(2)).await,
            Some("idle")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_head_is_timed_from_its_first_byte() {
        let activity = Arc::new(Activity::new(Instant::now()));
        drop(activity.begin_request());
        tokio::time::advance(Duration::from_secs(60)).await;
        activity.bytes_arrived();
        assert_eq!(
            expires_within(&activity, Duration::from_secs(9)).await,
            None
        );
        assert_eq!(
            expires_within(&activity, Duration::from_secs(2)).await,
            Some("request head not received in time")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_wakes_when_a_request_ends() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let in_flight = activity.begin_request();
        let watcher = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { activity.expired(TIMEOUTS).await })
        };
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(in_flight);
        let reason = tokio::time::timeout(Duration::from_secs(76), watcher)
            .await
            .expect("expired once idle")
            .expect("watcher task");
        assert_eq!(reason, "idle");
    }
}
