//! From a host and port to a TCP connection, under a sandbox's rules.
//!
//! The proxy resolves names itself, once, checks every address the lookup
//! returned, and connects only to an address that passed: the very one it
//! checked. A client that could make the proxy look a name up twice could
//! have DNS answer with a public address for the check and `127.0.0.1` for
//! the connection (DNS rebinding); with one lookup and the checked address
//! in hand there is no second answer to swap in.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::address::Special;
use super::policy::{EgressRules, Host};

/// How long a lookup and the connection attempts after it may take in all,
/// so a client never waits on a black hole.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How names become addresses: the system's resolver in production, a
/// fixed table in tests (which must never send a DNS query).
pub(crate) trait Resolve: Send + Sync + 'static {
    /// Every address `name` has, with `port`.
    fn lookup(&self, name: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The host's resolver (`getaddrinfo`, through Tokio).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, name: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let name = name.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((name, port)).await?.collect()) })
    }
}

/// Why the proxy did not connect. The message is for the sandbox's client:
/// it names the destination and the reason, never anything of the host's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The host is not on the sandbox's allowlist (403).
    #[error("sandstorm egress proxy refused {target}: {reason}")]
    NotAllowed {
        /// `host:port` as the client named it.
        target: String,
        /// Why the host does not match.
        reason: &'static str,
    },
    /// Every address the host has is off limits (403).
    #[error("sandstorm egress proxy refused {target}: {special}")]
    Refused {
        /// `ip:port`, or `host:port (ip)` for a name.
        target: String,
        /// What the address is.
        special: Special,
    },
    /// The name did not resolve (502).
    #[error("sandstorm egress proxy could not resolve {target}: {reason}")]
    Unresolvable {
        /// `host:port`.
        target: String,
        /// The resolver's answer.
        reason: String,
    },
    /// No allowed address accepted the connection in time (502).
    #[error("sandstorm egress proxy could not connect to {target}: {reason}")]
    Unreachable {
        /// `host:port`.
        target: String,
        /// The last attempt's error.
        reason: String,
    },
}

impl DialError {
    /// The HTTP status the client gets: 403 for a refusal, 502 when the
    /// destination could not be reached.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            DialError::NotAllowed { .. } | DialError::Refused { .. } => StatusCode::FORBIDDEN,
            DialError::Unresolvable { .. } | DialError::Unreachable { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }
}

/// Connects to `host:port` if `rules` allow it, returning the stream and
/// the address it reached.
pub(crate) async fn dial(
    rules: &EgressRules,
    resolver: &dyn Resolve,
    host: &Host,
    port: u16,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let target = format!("{host}:{port}");
    if !rules.check_host(host) {
        let reason = match host {
            Host::Ip(_) => "network.allow is set, and it names domains, never an IP address",
            Host::Name(_) => "the host is not on the sandbox's network.allow list",
        };
        return Err(DialError::NotAllowed { target, reason });
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let candidates = match host {
        Host::Ip(ip) => vec![SocketAddr::new(ip.to_canonical(), port)],
        Host::Name(name) => match timeout_at(deadline, resolver.lookup(name, port)).await {
            Ok(Ok(addrs)) if !addrs.is_empty() => addrs
                .into_iter()
                .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                .collect(),
            Ok(Ok(_)) => return Err(unresolvable(target, "the name has no addresses")),
            Ok(Err(e)) => return Err(unresolvable(target, e.to_string())),
            Err(_) => return Err(unresolvable(target, "the lookup timed out")),
        },
    };

    let mut refused = None;
    let mut allowed = Vec::with_capacity(candidates.len());
    for addr in candidates {
        match rules.check_addr(addr) {
            Ok(()) if !allowed.contains(&addr) => allowed.push(addr),
            Ok(()) => {}
            Err(special) => {
                refused.get_or_insert((addr, special));
            }
        }
    }
    if allowed.is_empty() {
        let Some((addr, special)) = refused else {
            return Err(unresolvable(target, "the name has no addresses"));
        };
        let target = match host {
            Host::Ip(_) => addr.to_string(),
            Host::Name(_) => format!("{target} ({})", addr.ip()),
        };
        return Err(DialError::Refused { target, special });
    }

    let mut reason = String::new();
    for addr in allowed {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Tunnels carry TLS handshakes and small interactive writes.
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(e)) => reason = format!("{addr}: {e}"),
            Err(_) => {
                reason = format!("{addr}: timed out after {CONNECT_TIMEOUT:?}");
                break;
            }
        }
    }
    Err(DialError::Unreachable { target, reason })
}

fn unresolvable(target: String, reason: impl Into<String>) -> DialError {
    DialError::Unresolvable {
        target,
        reason: reason.into(),
    }
}
