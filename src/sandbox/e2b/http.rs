//! The HTTP plumbing both planes share: one pooled client, one way to make a
//! bounded call, and one way to turn a failed answer into a [`SandboxError`]
//! that is safe to show (no key, no token, no unbounded body).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};

use super::options::E2bOptions;
use crate::sandbox::SandboxError;
use crate::secret::Secret;

pub(crate) const PROVIDER: &str = "e2b";

/// Says who we are on every request, whichever client sends it.
pub(crate) const USER_AGENT: &str = concat!("sandstorm/", env!("CARGO_PKG_VERSION"));

/// The idle connections each client keeps per host, for both clients. Every
/// sandbox call goes to one of two hosts (the API, and envd's edge or
/// `E2B_SANDBOX_URL`), so after a burst of N concurrent runs an unbounded
/// pool would hold about N idle connections, their buffers and TLS state,
/// for the pool's idle timeout (90 s) and more: after 500 runs, about
/// 17 MiB of `ds serve`'s memory and 500 descriptors (tests/load.rs). Past
/// this many, a returned connection is closed; a later burst opens new
/// ones.
pub(crate) const POOL_MAX_IDLE_PER_HOST: usize = 32;

/// How much of an error body we read and quote. E2B's errors are one short
/// JSON object; anything longer is a proxy page nobody needs in full.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
const ERROR_MESSAGE_LIMIT: usize = 300;

/// The client every request but a process stream goes through (see
/// `stream_client` for those), so connections to the control plane and to
/// envd are pooled across runs. `tls` is [`tls_config`]'s.
pub(crate) fn client(
    options: &E2bOptions,
    mut tls: rustls::ClientConfig,
) -> Result<reqwest::Client, SandboxError> {
    // What reqwest offers when it builds its own configuration.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(options.connect_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| SandboxError::Other {
            op: "building the e2b http client",
            message: error_chain(&e),
        })
}

/// The client file reads go through: HTTP/1.1 only. E2B's edge pads a
/// download with an empty HTTP/2 DATA frame about every 32 KiB, and the h2
/// crate closes a connection after 100 empty frames as a flood defence, so
/// a download past about 3 MiB fails over HTTP/2. HTTP/1.1 has no frames to
/// pad (`padded_download_tests` reads through a padding edge both ways).
/// `tls` is [`tls_config`]'s.
pub(crate) fn file_client(
    options: &E2bOptions,
    mut tls: rustls::ClientConfig,
) -> Result<reqwest::Client, SandboxError> {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .http1_only()
        .connect_timeout(options.connect_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| SandboxError::Other {
            op: "building the e2b file client",
            message: error_chain(&e),
        })
}

/// The TLS configuration of every E2B connection, made as reqwest makes its
/// own (the process's default crypto provider, else aws-lc-rs; the
/// platform's certificate verifier) but made once, so that reqwest and the
/// process stream client share one TLS stack and load the system's roots
/// once: loading them is a noticeable part of `ds serve`'s cold start.
/// ALPN is left empty for each client to set.
pub(crate) fn tls_config() -> Result<rustls::ClientConfig, SandboxError> {
    use rustls_platform_verifier::BuilderVerifierExt as _;

    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_platform_verifier())
        .map_err(|e| SandboxError::Other {
            op: "building the e2b tls configuration",
            message: e.to_string(),
        })?;
    Ok(config.with_no_client_auth())
}

/// A whole answer: its headers matter to retries (`Retry-After`,
/// `Should-Retry`).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Sends a request and reads its whole answer, all within `limit`.
pub(crate) async fn call(
    request: RequestBuilder,
    op: &'static str,
    limit: Duration,
) -> Result<Answer, SandboxError> {
    let exchange = async {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>(Answer {
            status,
            headers,
            body,
        })
    };
    let _timed = CallTimer::new(op);
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(transport(op, &e, limit)),
        Err(_) => Err(SandboxError::TimedOut { op, after: limit }),
    }
}

/// Sends a request and waits only for the response head; the body is the
/// caller's to stream.
pub(crate) async fn open(
    request: RequestBuilder,
    op: &'static str,
    limit: Duration,
) -> Result<Response, SandboxError> {
    let _timed = CallTimer::new(op);
    match tokio::time::timeout(limit, request.send()).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(transport(op, &e, limit)),
        Err(_) => Err(SandboxError::TimedOut { op, after: limit }),
    }
}

/// Records how long an E2B call took (`sandstorm.e2b.call.duration`, by
/// `call`) when it is dropped: answered, failed or given up.
struct CallTimer {
    op: &'static str,
    started: std::time::Instant,
}

impl CallTimer {
    fn new(op: &'static str) -> Self {
        CallTimer {
            op,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        crate::telemetry::metrics::metrics().e2b_call.record(
            self.started.elapsed().as_secs_f64(),
            &[opentelemetry::KeyValue::new("call", self.op)],
        );
    }
}

/// Reads at most [`ERROR_BODY_LIMIT`] bytes of a failed answer's body.
pub(crate) async fn error_body<E>(body: impl Stream<Item = Result<Bytes, E>>) -> Bytes {
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(Ok(chunk)) = body.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= ERROR_BODY_LIMIT {
            out.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    out.freeze()
}

fn transport(op: &'static str, e: &reqwest::Error, limit: Duration) -> SandboxError {
    if e.is_timeout() {
        SandboxError::TimedOut { op, after: limit }
    } else {
        SandboxError::Transport {
            op,
            message: error_chain(e),
        }
    }
}

/// reqwest's top-level message is "error sending request for url (...)";
/// the reason (refused, reset, DNS) is further down the source chain.
/// URLs carry no credentials here: keys and tokens travel in headers.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

/// Turns a failed answer into an error. A 401 from the control plane means
/// the API key; from envd it means the access token, so only the control
/// plane maps it to [`SandboxError::Unauthorized`].
pub(crate) fn status_error(
    op: &'static str,
    status: StatusCode,
    body: &[u8],
    control_plane: bool,
    secrets: &[&Secret],
) -> SandboxError {
    match status {
        StatusCode::UNAUTHORIZED if control_plane => {
            SandboxError::Unauthorized { provider: PROVIDER }
        }
        StatusCode::TOO_MANY_REQUESTS => SandboxError::RateLimited {
            provider: PROVIDER,
            op,
        },
        _ => SandboxError::Status {
            provider: PROVIDER,
            op,
            status: status.as_u16(),
            message: error_message(status, body, secrets),
        },
    }
}

/// The human part of an error body: E2B's `{"code":404,"message":".."}`,
/// Connect's `{"code":"not_found","message":".."}`, or the text itself.
/// Any secret we sent is blotted out in case a server echoes it back.
pub(crate) fn error_message(status: StatusCode, body: &[u8], secrets: &[&Secret]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let message = v.get("message")?.as_str()?;
        Some(match v.get("code").and_then(|c| c.as_str()) {
            Some(code) => format!("{code}: {message}"),
            None => message.to_owned(),
        })
    });
    let mut message = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_owned();
    }
    for secret in secrets {
        if !secret.is_empty() {
            message = message.replace(secret.expose(), "***");
        }
    }
    if message.chars().count() > ERROR_MESSAGE_LIMIT {
        message = message
            .chars()
            .take(ERROR_MESSAGE_LIMIT)
            .collect::<String>()
            + "...";
    }
    message
}

/// HTTP status for a Connect error code, as the Connect protocol maps them.
pub(crate) fn connect_code_status(code: &str) -> u16 {
    match code {
        "canceled" => 499,
        "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
        "deadline_exceeded" => 504,
        "not_found" => 404,
        "already_exists" | "aborted" => 409,
        "permission_denied" => 403,
        "resource_exhausted" => 429,
        "unimplemented" => 501,
        "unavailable" => 503,
        "unauthenticated" => 401,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_and_connect_error_bodies_become_messages() {
        let e2b = br#"{"code":404,"message":"sandbox not found"}"#;
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, e2b, &[]),
            "sandbox not found"
        );
        let connect = br#"{"code":"invalid_argument","message":"bad cwd"}"#;
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, connect, &[]),
            "invalid_argument: bad cwd"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"  ", &[]),
            "Bad Gateway"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"upstream died\n", &[]),
            "upstream died"
        );
    }

    #[test]
    fn echoed_secrets_are_blotted_out_and_long_bodies_cut() {
        let key = Secret::new("e2b_deadbeef");
        let body = br#"{"message":"key e2b_deadbeef is invalid"}"#;
        assert_eq!(
            error_message(StatusCode::FORBIDDEN, body, &[&key]),
            "key *** is invalid"
        );
        let long = "x".repeat(5000);
        assert!(error_message(StatusCode::BAD_GATEWAY, long.as_bytes(), &[]).len() < 400);
    }

    #[test]
    fn only_the_control_plane_401_blames_the_api_key() {
        let control = status_error("create", StatusCode::UNAUTHORIZED, b"", true, &[]);
        assert!(matches!(control, SandboxError::Unauthorized { .. }));
        let envd = status_error("upload", StatusCode::UNAUTHORIZED, b"", false, &[]);
        assert!(matches!(envd, SandboxError::Status { status: 401, .. }));
        let limited = status_error("create", StatusCode::TOO_MANY_REQUESTS, b"", true, &[]);
        assert_eq!(
            limited.to_string(),
            "create was rate limited by e2b (HTTP 429)"
        );
    }
}
