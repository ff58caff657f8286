//! What the egress proxy and the model endpoint share when they relay a
//! request: the response body type, hop-by-hop header rules, and the byte
//! counts they log.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Body as HttpBody;

/// A response body of any kind.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

pub(crate) fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Headers that describe one hop rather than the message (RFC 9110 7.6.1),
/// plus what a client says to its proxy: none of them travels on.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, those the `Connection` header names,
/// and every `Proxy-*` header (`Proxy-Connection` included).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Counts the bytes of one request each way, and logs them with its
/// destination and verdict when both bodies are done with (never a header
/// or a body).
#[derive(Debug)]
pub(crate) struct Meter {
    kind: &'static str,
    target: String,
    /// The upstream's status, once it answered.
    status: AtomicU16,
    up: AtomicU64,
    down: AtomicU64,
}

impl Meter {
    pub(crate) fn new(kind: &'static str, target: String) -> Arc<Meter> {
        Arc::new(Meter {
            kind,
            target,
            status: AtomicU16::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        })
    }
}

impl Meter {
    pub(crate) fn answered(&self, status: StatusCode) {
        self.status.store(status.as_u16(), Ordering::Relaxed);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        tracing::debug!(
            kind = self.kind,
            target = %self.target,
            status = self.status.load(Ordering::Relaxed),
            up = self.up.load(Ordering::Relaxed),
            down = self.down.load(Ordering::Relaxed),
            "egress request done"
        );
    }
}

/// Which way a metered body flows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    Up,
    Down,
}

/// `body`, counting its data into `meter`.
pub(crate) fn metered<B>(
    body: B,
    meter: &Arc<Meter>,
    direction: Direction,
) -> impl HttpBody<Data = Bytes, Error = B::Error> + Send + Sync + 'static
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
{
    let meter = meter.clone();
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            let counter = match direction {
                Direction::Up => &meter.up,
                Direction::Down => &meter.down,
            };
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    })
}
