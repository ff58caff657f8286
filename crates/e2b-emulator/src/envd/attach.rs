//! Attaching to a running process (`process.Process/Connect`), as envd
//! does it (`packages/envd/internal/services/process/connect.go`).
//!
//! Every process started through envd has one [`Live`] entry in its
//! sandbox's [`Processes`]: the task reading the process's output publishes
//! each frame there as well as to the client of its `Start`, and goes on
//! reading when that client leaves. A `Connect` subscribes, sends a `start`
//! frame with the pid, then every frame from that moment on (envd replays
//! nothing), with keepalives of its own, until the end. When a process has
//! ended, its end is kept for 30 s (envd's `terminatedRetentionTTL`) so a
//! client that attaches a moment too late still learns the exit code.
//!
//! A subscriber holds at most [`BACKLOG`] frames it has not read; one that
//! falls further behind is dropped with an error end-of-stream rather than
//! allowed to hold the process or the other clients back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use e2b_wire::envd::{ConnectError, ConnectRequest, ProcessEventJson, ProcessSelector, StartEvent};
use sandstorm::sync::lock;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::EnvdSandbox;
use super::process::{
    check_connect_headers, connect_stream, decode_enveloped, end_of_stream, header_number,
    keepalive_frame, keepalive_interval, message_frame, stream_error,
};
use crate::Emulator;
use crate::stats::route;

/// Frames a subscriber may fall behind by before it is dropped.
pub(crate) const BACKLOG: usize = 1024;

/// How long an ended process's last frames are kept for late attachers.
const RETENTION: Duration = Duration::from_secs(30);

/// One frame of a process's stream, and whether it is the last.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) bytes: Bytes,
    pub(crate) last: bool,
}

/// A running process others may attach to.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) tag: Option<String>,
    frames: broadcast::Sender<Frame>,
}

impl Live {
    /// Hands `frame` to every attached client; none attached is fine.
    pub(crate) fn publish(&self, frame: Frame) {
        let _ = self.frames.send(frame);
    }
}

/// The processes of one sandbox that can be attached to, and the ends of
/// those that stopped lately.
#[derive(Debug, Default)]
pub(crate) struct Processes {
    live: Mutex<HashMap<u32, Arc<Live>>>,
    ended: Mutex<HashMap<u32, Ended>>,
}

/// The last frames of a process that ended, kept for [`RETENTION`].
#[derive(Debug)]
struct Ended {
    at: Instant,
    tag: Option<String>,
    last: Vec<Frame>,
}

impl Processes {
    /// Registers process `pid`, started with `tag`.
    pub(crate) fn register(&self, pid: u32, tag: Option<String>) -> Arc<Live> {
        let (frames, _) = broadcast::channel(BACKLOG);
        let live = Arc::new(Live { tag, frames });
        lock(&self.ended).remove(&pid);
        lock(&self.live).insert(pid, live.clone());
        live
    }

    /// Process `pid` ended with `last` (its end frame and end-of-stream):
    /// kept for late attachers, then forgotten.
    pub(crate) fn ended(&self, pid: u32, last: Vec<Frame>) {
        let tag = lock(&self.live)
            .remove(&pid)
            .and_then(|live| live.tag.clone());
        let mut ended = lock(&self.ended);
        ended.retain(|_, ended| ended.at.elapsed() < RETENTION);
        let at = Instant::now();
        ended.insert(pid, Ended { at, tag, last });
    }

    /// The live process started with `tag`, for `SendSignal`.
    pub(crate) fn pid_of(&self, tag: &str) -> Option<u32> {
        lock(&self.live)
            .iter()
            .find(|(_, live)| live.tag.as_deref() == Some(tag))
            .map(|(pid, _)| *pid)
    }

    /// The tag of live process `pid`, for `List`.
    pub(crate) fn tag(&self, pid: u32) -> Option<String> {
        lock(&self.live).get(&pid).and_then(|live| live.tag.clone())
    }

    fn find(&self, selector: &ProcessSelector) -> Found {
        let matches = |pid: u32, tag: &Option<String>| match (selector.pid, &selector.tag) {
            (Some(wanted), _) => pid == wanted,
            (None, Some(wanted)) => tag.as_ref() == Some(wanted),
            (None, None) => false,
        };
        if let Some((pid, live)) = lock(&self.live)
            .iter()
            .find(|(pid, live)| matches(**pid, &live.tag))
        {
            return Found::Live(*pid, live.frames.subscribe());
        }
        lock(&self.ended)
            .iter()
            .find(|(pid, ended)| ended.at.elapsed() < RETENTION && matches(**pid, &ended.tag))
            .map_or(Found::Nothing, |(pid, ended)| {
                Found::Ended(*pid, ended.last.clone())
            })
    }
}

enum Found {
    Live(u32, broadcast::Receiver<Frame>),
    Ended(u32, Vec<Frame>),
    Nothing,
}

pub(super) async fn connect(
    State(emulator): State<Emulator>,
    EnvdSandbox(entry): EnvdSandbox,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    emulator.inner.stats.request(route::PROCESS_CONNECT);
    if let Some(refused) = check_connect_headers(&emulator, &headers) {
        return refused;
    }
    let request: ConnectRequest = match decode_enveloped(&body) {
        Ok(r) => r,
        Err(message) => return stream_error("invalid_argument", message),
    };
    let selector = request.process;
    let (pid, source) = match entry.processes.find(&selector) {
        Found::Live(pid, frames) => (pid, Source::Live(frames)),
        Found::Ended(pid, last) => (pid, Source::Ended(last)),
        // envd's words.
        Found::Nothing => {
            let message = match (selector.pid, selector.tag) {
                (Some(pid), _) => format!("process with pid {pid} not found"),
                (None, Some(tag)) => format!("process with tag {tag} not found"),
                (None, None) => {
                    return stream_error("unimplemented", "invalid input type <nil>");
                }
            };
            return stream_error("not_found", message);
        }
    };
    // As on Start, the call's own deadline; here it ends only this stream
    // (`deadline_exceeded`), not the process. The SDKs send 60 s.
    let deadline = header_number(&headers, "connect-timeout-ms")
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let (tx, rx) = mpsc::channel(super::process::FRAME_BUFFER);
    tokio::spawn(forward(
        tx,
        pid,
        source,
        keepalive_interval(&headers),
        deadline,
    ));
    connect_stream(Body::from_stream(ReceiverStream::new(rx)))
}

enum Source {
    Live(broadcast::Receiver<Frame>),
    Ended(Vec<Frame>),
}

/// `start`, then the process's frames (with keepalives in quiet spells)
/// to one attached client, until the last frame, the client leaves, or the
/// call's deadline.
async fn forward(
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    pid: u32,
    source: Source,
    keepalive: Duration,
    deadline: Option<tokio::time::Instant>,
) {
    let start = message_frame(ProcessEventJson {
        start: Some(StartEvent { pid }),
        ..Default::default()
    });
    if tx.send(Ok(start)).await.is_err() {
        return;
    }
    let mut frames = match source {
        Source::Live(frames) => frames,
        Source::Ended(last) => {
            for frame in last {
                if tx.send(Ok(frame.bytes)).await.is_err() {
                    return;
                }
            }
            return;
        }
    };
    loop {
        if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
            let error = ConnectError {
                code: "deadline_exceeded".to_owned(),
                message: "the Connect call's deadline passed".to_owned(),
            };
            let _ = tx.send(Ok(end_of_stream(Some(error)))).await;
            return;
        }
        let quiet = deadline.map_or(keepalive, |at| {
            keepalive.min(at.saturating_duration_since(tokio::time::Instant::now()))
        });
        let frame = match tokio::time::timeout(quiet, frames.recv()).await {
            Err(_) if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) => continue,
            Err(_quiet) => keepalive_frame(),
            Ok(Ok(frame)) => {
                let last = frame.last;
                if tx.send(Ok(frame.bytes)).await.is_err() || last {
                    return;
                }
                continue;
            }
            Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                let error = ConnectError {
                    code: "resource_exhausted".to_owned(),
                    message: format!(
                        "this client fell {missed} frames behind the process and was dropped"
                    ),
                };
                let _ = tx.send(Ok(end_of_stream(Some(error)))).await;
                return;
            }
            // The process's relay is gone without a last frame: the
            // sandbox was destroyed under it.
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                let error = ConnectError {
                    code: "unavailable".to_owned(),
                    message: "the process's sandbox is gone".to_owned(),
                };
                let _ = tx.send(Ok(end_of_stream(Some(error)))).await;
                return;
            }
        };
        if tx.send(Ok(frame)).await.is_err() {
            return;
        }
    }
}
