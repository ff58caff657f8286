//! The host side of a local sandbox's network: one egress proxy and one
//! keyless model endpoint per sandbox, on a Unix socket.
//!
//! A local sandbox has a network namespace of its own with only `lo` in
//! it. A bridge inside listens on `127.0.0.1:3128` and carries every
//! connection, byte for byte, to this server's Unix socket on the host;
//! `HTTP_PROXY`, `HTTPS_PROXY` and `ANTHROPIC_BASE_URL` point at that port.
//! So the only way out of the sandbox is a socket file the host chose, and
//! everything that leaves goes through code that can say no. A Unix socket
//! rather than a host TCP port: the sandbox cannot reach the host's
//! loopback at all, no other sandbox can reach this one's proxy, and the
//! socket's directory decides who may connect.
//!
//! One HTTP/1.1 connection may carry three kinds of request, told apart by
//! their form:
//!
//! - `CONNECT host:port`: a tunnel ([`proxy`]); HTTPS, git over HTTPS.
//! - `GET http://host/path` (absolute form): plain HTTP forwarded
//!   ([`proxy`]).
//! - `POST /v1/messages` (origin form): the model endpoint ([`model`]).
//!
//! Every destination passes the sandbox's [`policy`] first: public
//! addresses only ([`address`]) unless the operator opened more
//! ([`openings`]), and only the sandbox's allowed domains when it has a
//! list. The proxy resolves names itself and connects to the exact address
//! it checked ([`dial`]), so DNS cannot answer one address for the check
//! and another for the connection.
//!
//! The model key never enters the sandbox. The agent's environment holds a
//! per-process placeholder token ([`keyless`]); the model endpoint
//! swaps it for the real key on the host, for as long as the process's
//! [`RouteGuard`] lives. A compromised agent can use the model through its
//! own run, and cannot carry the key away.
//!
//! [`EgressServer`] owns every task it started: dropping it closes the
//! socket, every connection and every open tunnel, which is what
//! destroying a sandbox must do.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::model_proxy::ModelRoutes;

mod address;
mod dial;
mod openings;
mod policy;
mod proxy;

use dial::{Resolve, SystemResolver};
pub(crate) use openings::{OPEN_VARIABLE, Opening, parse_openings};
pub(crate) use policy::EgressRules;

/// The most a connection's HTTP reader buffers (hyper's default is about
/// 400 KiB). Plenty for any request head; bodies stream through it.
const READ_BUFFER: usize = 64 * 1024;

/// Connections (and the tunnels they became) one sandbox may hold open at
/// once. Past it the server stops accepting until one ends, so a sandbox
/// cannot spend the host's memory and file descriptors on connections.
const MAX_CONNECTIONS: usize = 256;

pub(crate) use crate::model_proxy::relay::{
    Body, Direction, Meter, boxed, metered, strip_hop_by_hop,
};

/// One sandbox's egress server. Dropping it stops the accept loop and
/// closes every connection and tunnel it serves.
#[derive(Debug)]
pub(crate) struct EgressServer {
    /// Never sent on: its drop is the signal every task waits for.
    _stop: watch::Sender<()>,
}

/// Serves `listener` (the sandbox's socket) under `rules`, with the model
/// endpoint answering for `routes`. Must be called inside a Tokio runtime.
/// The socket file stays where it is when the server stops: it goes with
/// the sandbox's directory.
pub(crate) fn serve(
    listener: UnixListener,
    rules: Arc<EgressRules>,
    routes: ModelRoutes,
) -> EgressServer {
    serve_with(listener, rules, Arc::new(SystemResolver), routes)
}

/// [`serve`], with the resolver names are looked up with.
fn serve_with(
    listener: UnixListener,
    rules: Arc<EgressRules>,
    resolver: Arc<dyn Resolve>,
    routes: ModelRoutes,
) -> EgressServer {
    let (stop, stopped) = watch::channel(());
    let tasks = Tasks(stopped);
    let shared = Arc::new(Shared {
        rules,
        resolver,
        routes,
        tasks: tasks.clone(),
    });
    tasks.spawn(accept(listener, shared));
    EgressServer { _stop: stop }
}

/// What every connection of one server shares.
struct Shared {
    rules: Arc<EgressRules>,
    resolver: Arc<dyn Resolve>,
    routes: ModelRoutes,
    tasks: Tasks,
}

/// Spawns tasks that end when the [`EgressServer`] is dropped.
#[derive(Clone)]
struct Tasks(watch::Receiver<()>);

impl Tasks {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut stopped = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = task => {}
                // Only ever an error: the sender is dropped, never sent on.
                _ = stopped.changed() => {}
            }
        });
    }
}

/// One accepted connection: the server's state, and its place among the
/// [`MAX_CONNECTIONS`], held until the connection and any tunnel it became
/// have ended.
struct Connection {
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
}

async fn accept(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let connection = Arc::new(Connection {
                    shared: shared.clone(),
                    _slot: slot,
                });
                shared.tasks.spawn(serve_connection(stream, connection));
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "egress proxy could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, connection: Arc<Connection>) {
    let service = service_fn(move |request| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(dispatch(request, connection).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(READ_BUFFER)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "egress connection ended with an error");
    }
}

/// Sends each request to the handler its form calls for (see the module
/// doc).
async fn dispatch(request: Request<Incoming>, connection: Arc<Connection>) -> Response<Body> {
    if request.method() == Method::CONNECT {
        proxy::connect(request, connection).await
    } else if request.uri().scheme().is_some() {
        proxy::forward(request, &connection).await
    } else {
        crate::model_proxy::serve(request, &connection.shared.routes).await
    }
}

/// A plain-text response: how the proxy tells a client why it said no.
fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(boxed(Full::new(Bytes::from(message.into()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
