//! The HTTP client a process's output stream is read through.
//!
//! A process stream must stop being read when its consumer stops, so that a
//! slow client slows the sandbox down through TCP backpressure and nothing
//! piles up here. reqwest's hyper does stop reading then, but while output
//! arrives fast its HTTP/1 read buffer doubles up to hyper's default limit
//! of about 400 KiB, and a stalled stream keeps the last such read: with a
//! thousand stalled clients that was most of half a gigabyte (see
//! BENCHMARKS.md). reqwest cannot cap that buffer, so `Process/Start` goes
//! through a hyper client of its own:
//!
//! - its read buffer holds at most [`READ_BUFFER`], so what a stalled
//!   stream has not taken waits in the kernel's socket buffers and, past
//!   those, in envd;
//! - HTTP/1.1 only: over HTTP/2 a stalled stream would hold its flow-control
//!   window (megabytes by default) instead, and share the connection's
//!   window with every other stream on it;
//! - `TCP_NODELAY` and TCP keepalive as reqwest sets them (envd answers with
//!   `TCP_NODELAY` too), and reqwest's rustls configuration.
//!
//! Connections are pooled like reqwest's; one goes back to the pool only
//! when its stream was read to the very end, so most runs open their own.
//!
//! This client does not talk to proxies. When reqwest would reach envd
//! through one (`HTTPS_PROXY` and the like, read the way reqwest reads
//! them), the stream goes through reqwest as before, large buffer and all.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::http;
use super::options::E2bOptions;
use crate::sandbox::SandboxError;

/// The most a process stream's connection reads ahead of its consumer:
/// hyper's minimum. Output is decoded as each read arrives
/// ([`super::process_frames`]), so a read need not hold a whole frame
/// (envd sends up to 32 KiB of output per frame, about 44 KiB of base64 in
/// JSON); a thousand stalled streams hold 8 MiB here in all.
pub(crate) const READ_BUFFER: usize = 8 * 1024;

/// As reqwest: idle connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// As reqwest: TCP keepalive probes after 15 s of silence, every 15 s,
/// three times.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// A response body from either client.
pub(crate) type StreamBody = UnsyncBoxBody<Bytes, Box<dyn Error + Send + Sync>>;

/// Opens process streams. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StreamClient {
    hyper: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// For envd behind a proxy.
    reqwest: reqwest::Client,
    /// Which destinations reqwest sends through a proxy.
    proxies: std::sync::Arc<Matcher>,
}

impl fmt::Debug for StreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamClient")
            .field("read_buffer", &READ_BUFFER)
            .finish_non_exhaustive()
    }
}

impl StreamClient {
    /// `tls` is [`http::tls_config`]'s; `reqwest` the provider's client.
    pub(crate) fn new(
        options: &E2bOptions,
        tls: rustls::ClientConfig,
        reqwest: reqwest::Client,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(options.connect_timeout));
        tcp.set_keepalive(Some(TCP_KEEPALIVE));
        tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
        tcp.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        StreamClient {
            hyper: builder().build(connector),
            reqwest,
            // The same question reqwest asks of the environment when it is
            // built; asked here once, as there.
            proxies: std::sync::Arc::new(Matcher::from_system()),
        }
    }

    /// Sends `request` and waits, at most `limit`, for the response head.
    /// The body is the caller's to read.
    pub(crate) async fn open(
        &self,
        request: ::http::Request<Bytes>,
        op: &'static str,
        limit: Duration,
    ) -> Result<::http::Response<StreamBody>, SandboxError> {
        if self.proxies.intercept(request.uri()).is_some() {
            let request = reqwest::Request::try_from(request).map_err(|e| SandboxError::Other {
                op,
                message: http::error_chain(&e),
            })?;
            let request = reqwest::RequestBuilder::from_parts(self.reqwest.clone(), request);
            let response = http::open(request, op, limit).await?;
            return Ok(::http::Response::from(response).map(box_body));
        }
        match tokio::time::timeout(limit, self.hyper.request(request.map(Full::new))).await {
            Ok(Ok(response)) => Ok(response.map(box_body)),
            Ok(Err(e)) => Err(failure(op, &e, limit)),
            Err(_) => Err(SandboxError::TimedOut { op, after: limit }),
        }
    }
}

/// The hyper client's settings, apart from how it connects.
fn builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(http::POOL_MAX_IDLE_PER_HOST)
        .http1_max_buf_size(READ_BUFFER);
    builder
}

fn box_body<B>(body: B) -> StreamBody
where
    B: ::http_body_util::BodyExt<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A failed exchange, worded like reqwest's failures: a connect timeout is
/// a timeout, anything else a transport error with its causes.
fn failure(
    op: &'static str,
    e: &hyper_util::client::legacy::Error,
    limit: Duration,
) -> SandboxError {
    if timed_out_somewhere(e) {
        SandboxError::TimedOut { op, after: limit }
    } else {
        SandboxError::Transport {
            op,
            message: http::error_chain(e),
        }
    }
}

/// Whether an I/O timeout is among `e`'s causes (hyper-util reports a
/// connect timeout that way).
fn timed_out_somewhere(e: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(inner) = cause {
        if inner
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = inner.source();
    }
    false
}

#[cfg(test)]
mod tests;
