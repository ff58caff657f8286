//! The egress proxy proper: `CONNECT` tunnels and plain-HTTP forwarding.
//!
//! Both dial through [`dial`](super::dial), so both obey the sandbox's
//! rules; a refusal reaches the client as a 403 (or a 502 when the
//! destination cannot be reached) with a one-line text body that says what
//! was refused and why, never as a hang or a bare reset.
//!
//! A tunnel is bytes both ways and nothing else: the proxy never sees
//! inside TLS. Plain HTTP is forwarded one request per upstream
//! connection, with hop-by-hop and `Proxy-*` headers removed and both
//! bodies streamed. Upgrades (a WebSocket over `ws://`) are not forwarded:
//! `Upgrade` is hop-by-hop; `wss://` goes through `CONNECT` and works.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::Scheme;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::dial::{DialError, dial};
use super::policy::Host;
use super::{
    Body, Connection, Direction, Meter, READ_BUFFER, boxed, metered, strip_hop_by_hop, text,
};

/// Each way's copy buffer in a tunnel.
const TUNNEL_BUFFER: usize = 16 * 1024;

/// `CONNECT host:port`: dials, answers 200 and copies bytes both ways once
/// hyper hands over the connection.
pub(super) async fn connect(
    mut request: Request<Incoming>,
    connection: Arc<Connection>,
) -> Response<Body> {
    let Some(authority) = request.uri().authority() else {
        return text(
            StatusCode::BAD_REQUEST,
            "sandstorm egress proxy: CONNECT needs a host:port target",
        );
    };
    let (Some(host), Some(port)) = (Host::parse(authority.host()), authority.port_u16()) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("sandstorm egress proxy: {authority} is not a host:port target"),
        );
    };
    let shared = &connection.shared;
    let (upstream, addr) = match dial(&shared.rules, &*shared.resolver, &host, port).await {
        Ok(dialed) => dialed,
        Err(e) => return refused("connect", &e),
    };
    let target = format!("{host}:{port} ({})", addr.ip());
    tracing::debug!(kind = "connect", %target, verdict = "allowed", "egress tunnel opening");
    let upgrade = hyper::upgrade::on(&mut request);
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        tunnel(upgrade, upstream, &target).await;
        // The connection's slot is held until the tunnel is done.
        drop(connection);
    });
    Response::new(boxed(http_body_util::Empty::new()))
}

async fn tunnel(upgrade: hyper::upgrade::OnUpgrade, mut upstream: TcpStream, target: &str) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(%target, error = %e, "egress tunnel: the client went away");
            return;
        }
    };
    let mut client = TokioIo::new(upgraded);
    match tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        TUNNEL_BUFFER,
        TUNNEL_BUFFER,
    )
    .await
    {
        Ok((up, down)) => {
            tracing::debug!(kind = "connect", %target, up, down, "egress tunnel closed");
        }
        Err(e) => {
            tracing::debug!(kind = "connect", %target, error = %e, "egress tunnel broke");
        }
    }
}

/// `GET http://host/path`: dials, sends the request on in origin form, and
/// streams the answer back.
pub(super) async fn forward(request: Request<Incoming>, connection: &Connection) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    if parts.uri.scheme() != Some(&Scheme::HTTP) {
        return text(
            StatusCode::BAD_REQUEST,
            "sandstorm egress proxy forwards only http:// URLs; https:// goes through CONNECT",
        );
    }
    let Some(authority) = parts.uri.authority() else {
        return text(
            StatusCode::BAD_REQUEST,
            "sandstorm egress proxy: the URL has no host",
        );
    };
    let Some(host) = Host::parse(authority.host()) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("sandstorm egress proxy: {authority} is not a valid host"),
        );
    };
    let port = authority.port_u16().unwrap_or(80);
    let shared = &connection.shared;
    let (upstream, addr) = match dial(&shared.rules, &*shared.resolver, &host, port).await {
        Ok(dialed) => dialed,
        Err(e) => return refused("http", &e),
    };
    let target = format!("{host}:{port} ({})", addr.ip());

    let handshake = hyper::client::conn::http1::Builder::new()
        .max_buf_size(READ_BUFFER)
        .handshake::<_, Body>(TokioIo::new(upstream))
        .await;
    let (mut sender, upstream_connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => return bad_gateway(&target, &e),
    };
    shared.tasks.spawn(async move {
        let _ = upstream_connection.await;
    });

    // RFC 9112 3.2.2: a proxy replaces Host with the target's authority
    // (minus any user info) and sends the path on in origin form.
    let host_header = if port == 80 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    strip_hop_by_hop(&mut parts.headers);
    match HeaderValue::try_from(host_header) {
        Ok(value) => {
            parts.headers.insert(header::HOST, value);
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "sandstorm egress proxy: bad host"),
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    parts.version = Version::HTTP_11;

    let meter = Meter::new("http", target.clone());
    let body = boxed(metered(body, &meter, Direction::Up));
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            meter.answered(response.status());
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, boxed(metered(body, &meter, Direction::Down)))
        }
        Err(e) => bad_gateway(&target, &e),
    }
}

/// The client's answer to a dial that failed, logged with its verdict.
fn refused(kind: &'static str, e: &DialError) -> Response<Body> {
    tracing::debug!(kind, verdict = "refused", reason = %e, "egress request refused");
    crate::telemetry::metrics::metrics().proxy_denied.add(
        1,
        &[opentelemetry::KeyValue::new("sandstorm.egress.kind", kind)],
    );
    text(e.status(), e.to_string())
}

fn bad_gateway(target: &str, e: &hyper::Error) -> Response<Body> {
    tracing::debug!(kind = "http", %target, error = %e, "egress upstream failed");
    text(
        StatusCode::BAD_GATEWAY,
        format!("sandstorm egress proxy: {target} failed: {e}"),
    )
}
