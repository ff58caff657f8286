//! envd's process service over Connect (JSON codec): `Start` streams a
//! process's life as frames; `SendSignal` and `List` are unary.
//!
//! A `Start` stream is, in order: one `start` frame with the pid, `data`
//! frames (base64 output chunks) with `keepalive` frames in quiet spells,
//! one `end` frame, and the end-of-stream frame (`{}`, or an error such as
//! `deadline_exceeded` when `Connect-Timeout-Ms` ran out). A client that
//! disconnects does not stop the process, as in envd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use e2b_wire::connect::{CONNECT_JSON, FLAG_END_STREAM, FLAG_MESSAGE, FrameDecoder, encode};
use e2b_wire::envd::{
    ConnectError, DataEvent, EndEvent, EndOfStream, KeepAlive, ListResponse, ProcessConfig,
    ProcessEventJson, ProcessInfo, SendSignalRequest, SendSignalResponse, StartEvent, StartRequest,
    StartResponse,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use sandstorm::runs::log::EVENT_LOG;
use sandstorm::sandbox::local::{FsError, Signal};
use sandstorm::sandbox::{ExitStatus, ProcessEvent, ProcessSpec, SandboxError, upload_gate};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::EnvdSandbox;
use super::attach::{Frame, Live};
use crate::stats::route;
use crate::{Emulator, Entry, synthetic};

/// Frames in flight to a client; a slow client slows the process.
pub(super) const FRAME_BUFFER: usize = 16;

/// Where the synthetic output is written for `cat` to print.
const SYNTHETIC_OUTPUT: &str = "/tmp/.synthetic-output";

/// Pids for synthetic runs, far above real ones so they never collide.
static SYNTHETIC_PID: AtomicU32 = AtomicU32::new(4_000_000);

type Events = BoxStream<'static, Result<ProcessEvent, SandboxError>>;

pub(super) async fn start(
    State(emulator): State<Emulator>,
    EnvdSandbox(entry): EnvdSandbox,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    emulator.inner.stats.request(route::START);
    if let Some(refused) = check_connect_headers(&emulator, &headers) {
        return refused;
    }
    let request: StartRequest = match decode_enveloped(&body) {
        Ok(r) => r,
        Err(message) => return stream_error("invalid_argument", message),
    };
    let timeout = header_number(&headers, "connect-timeout-ms").map(Duration::from_millis);
    let keepalive = Some(keepalive_interval(&headers));
    let (synthetic, via_process, cut_after, runner_delay) = {
        let mut knobs = emulator.knobs();
        (
            knobs.synthetic,
            knobs.synthetic_process,
            knobs.take_stream_cut(),
            knobs.runner_start_delay_ms,
        )
    };

    let config = request.process;
    let as_root = runs_as_root(&headers);
    if runner_delay > 0 && synthetic::is_runner(&config.cmd, &config.args) {
        tokio::time::sleep(Duration::from_millis(runner_delay)).await;
    }
    let is_synthetic = synthetic.is_some() && synthetic::is_runner(&config.cmd, &config.args);
    // A runner started beside its upload waits for the upload's marker
    // (see `upload_gate`); a synthetic one, which runs no shell, does too.
    let marker = upload_gate::marker_of(&config.envs).map(str::to_owned);
    // A detached run's wrapper: its runner writes the event log, not stdout.
    let records = config
        .envs
        .get("SANDSTORM_EVENT_RECORDS")
        .is_some_and(|v| v == "1");
    let (pid, events): (u32, Events) = match synthetic {
        Some(spec) if is_synthetic && records => {
            // What the runner in record mode and its wrapper would leave in
            // the log, written at once once its files are in; followers
            // read it back for real.
            let entry = entry.clone();
            let events = futures::stream::once(async move {
                if let Some(gave_up) = synthetic::await_marker(&entry, marker.as_deref()).await {
                    return futures::stream::iter(gave_up.map(Ok)).boxed();
                }
                let log = synthetic::records(spec);
                let ended = match entry.sandbox.write(EVENT_LOG.to_owned(), log).await {
                    Ok(()) => Ok(ProcessEvent::Exited(ExitStatus {
                        code: Some(0),
                        status: "exit status 0".to_owned(),
                    })),
                    Err(e) => Err(SandboxError::Other {
                        op: "synthetic runner",
                        message: e.to_string(),
                    }),
                };
                futures::stream::iter([ended]).boxed()
            })
            .flatten()
            .boxed();
            (SYNTHETIC_PID.fetch_add(1, Ordering::Relaxed), events)
        }
        Some(spec) if is_synthetic && via_process => {
            // The output from a file, through `cat`'s stdout: one real
            // process and pipe, as a runner's output comes.
            let output: Vec<u8> = synthetic::output(spec).collect::<Vec<_>>().await.concat();
            if let Err(e) = entry
                .sandbox
                .write(SYNTHETIC_OUTPUT.to_owned(), output.into())
                .await
            {
                return stream_error("internal", e.to_string());
            }
            let spec = ProcessSpec {
                cmd: "cat".to_owned(),
                args: vec![SYNTHETIC_OUTPUT.to_owned()],
                envs: environment(&emulator, &entry, std::collections::BTreeMap::new()),
                cwd: HOME.to_owned(),
                stdin: false,
                ..ProcessSpec::default()
            };
            // Behind the same gate as the runner it stands in for.
            let spec = match &marker {
                Some(marker) => upload_gate::gated(spec, marker, synthetic::MARKER_WAIT),
                None => spec,
            };
            match entry.sandbox.spawn(spec) {
                Ok((pid, events, _control)) => (pid, events),
                Err(e) => return stream_error("internal", e.to_string()),
            }
        }
        Some(spec) if is_synthetic => {
            let exited = ProcessEvent::Exited(ExitStatus {
                code: Some(0),
                status: "exit status 0".to_owned(),
            });
            let entry = entry.clone();
            let events = futures::stream::once(async move {
                if let Some(gave_up) = synthetic::await_marker(&entry, marker.as_deref()).await {
                    return futures::stream::iter(gave_up.map(Ok)).boxed();
                }
                synthetic::output(spec)
                    .map(|chunk| Ok(ProcessEvent::Stdout(chunk)))
                    .chain(futures::stream::iter([Ok(exited)]))
                    .boxed()
            })
            .flatten()
            .boxed();
            (SYNTHETIC_PID.fetch_add(1, Ordering::Relaxed), events)
        }
        _ if as_root => {
            // A root process of the template's (the model proxy) runs
            // beside the sandbox, out of its user's reach; nothing else
            // may run as root here.
            if !emulator.inner.root_commands.contains_key(&config.cmd) {
                return stream_error(
                    "permission_denied",
                    format!(
                        "the emulator runs as root only its template's root commands ({}), not \
                         {:?}",
                        emulator
                            .inner
                            .root_commands
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                        config.cmd
                    ),
                );
            }
            match entry
                .sandbox
                .spawn_beside(&config.cmd, &config.args, &config.envs, timeout)
            {
                Ok((pid, events, _control)) => (pid, events),
                Err(e) => return stream_error("internal", e.to_string()),
            }
        }
        _ => {
            let cwd = match checked_cwd(&emulator, &entry, config.cwd).await {
                Ok(cwd) => cwd,
                Err(message) => return stream_error("invalid_argument", message),
            };
            let spec = ProcessSpec {
                cmd: config.cmd,
                args: config.args,
                envs: environment(&emulator, &entry, config.envs),
                cwd,
                timeout,
                // envd's rule: a pipe unless Start says `"stdin": false`.
                stdin: request.stdin != Some(false),
                // Tags are envd's to keep: `attach` holds them.
                tag: None,
                // envd hands the model key to the process as it is given.
                spend: None,
                spend_record: None,
                callback: None,
            };
            match entry.sandbox.spawn(spec) {
                Ok((pid, events, _control)) => (pid, events),
                Err(e) => return stream_error("internal", e.to_string()),
            }
        }
    };

    // Synthetic output has no process behind it to outlive its client, so
    // nothing can attach to it, and it stops when its client leaves.
    let live = (!is_synthetic).then(|| entry.processes.register(pid, request.tag));
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    tokio::spawn(relay(tx, pid, events, keepalive, cut_after, entry, live));
    connect_stream(Body::from_stream(ReceiverStream::new(rx)))
}

/// Whether the request names root as its user: `Authorization: Basic`
/// with `root:` (how the SDKs and envd say who runs a process).
fn runs_as_root(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .is_some_and(|credentials| credentials.split(|b| *b == b':').next() == Some(b"root"))
}

/// envd's keepalive interval when `Keepalive-Ping-Interval` names none.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// envd's `PATH` (its own, which systemd's default sets: its unit file
/// names none), behind the local sandbox's `/opt/sandstorm/bin`. That
/// folder holds the execute-only `node` that stands in for the template's
/// `/usr/local/bin/node`: the host's own `node` there would be dumpable,
/// and the agent could then write into the runner's event stream.
const ENVD_PATH: &str =
    "/opt/sandstorm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user envd runs commands as by default, and its home.
const USER: &str = "user";
const HOME: &str = "/home/user";

/// envd pings every 90 s unless `Keepalive-Ping-Interval` names another
/// whole number of seconds (0, which would stop envd's ticker, counts as
/// unset here).
pub(super) fn keepalive_interval(headers: &HeaderMap) -> Duration {
    header_number(headers, "keepalive-ping-interval")
        .filter(|s| *s > 0)
        .map_or(DEFAULT_KEEPALIVE, Duration::from_secs)
}

/// What connect-go checks of a streaming call before the handler runs: a
/// content type it does not speak is 415 with `Accept-Post` and no body;
/// a `Connect-Protocol-Version` other than 1 is `invalid_argument` (for
/// streams the header may be absent). The emulator speaks only the JSON
/// codec of the Connect protocol, where envd also speaks proto and gRPC.
pub(super) fn check_connect_headers(emulator: &Emulator, headers: &HeaderMap) -> Option<Response> {
    if emulator.inner.lenient {
        return None;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case(CONNECT_JSON) {
        let mut response = StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
        response
            .headers_mut()
            .insert("accept-post", HeaderValue::from_static(CONNECT_JSON));
        return Some(response);
    }
    match headers.get("connect-protocol-version") {
        Some(v) if v != "1" => Some(stream_error(
            "invalid_argument",
            format!(
                "Connect-Protocol-Version must be \"1\": got {:?}",
                String::from_utf8_lossy(v.as_bytes())
            ),
        )),
        _ => None,
    }
}

/// The environment envd gives a process: its `PATH`, the user's `HOME`,
/// `USER` and `LOGNAME`, then the sandbox's `envVars`, then the request's
/// own, each overriding the one before.
fn environment(
    emulator: &Emulator,
    entry: &crate::Entry,
    request: std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let mut envs = std::collections::BTreeMap::new();
    if !emulator.inner.lenient {
        for (name, value) in [
            ("PATH", ENVD_PATH),
            ("HOME", HOME),
            ("USER", USER),
            ("LOGNAME", USER),
        ] {
            envs.insert(name.to_owned(), value.to_owned());
        }
    }
    envs.extend(entry.env_vars.clone());
    envs.extend(request);
    envs
}

/// The working folder, as envd resolves it: the user's home when absent,
/// relative to it when relative, and `invalid_argument` (envd's message)
/// when it does not exist.
async fn checked_cwd(
    emulator: &Emulator,
    entry: &crate::Entry,
    cwd: Option<String>,
) -> Result<String, String> {
    let cwd = match cwd.filter(|c| !c.is_empty()) {
        None => return Ok(HOME.to_owned()),
        Some(c) if c.starts_with('/') => c,
        Some(c) => format!("{HOME}/{c}"),
    };
    if emulator.inner.lenient {
        return Ok(cwd);
    }
    // The local sandbox can look only into its writable trees (home, /tmp,
    // the runner folder): reading a folder there says "a folder", a missing
    // one "not found". Elsewhere (the read-only system) the start itself
    // fails if the folder is missing.
    match entry.sandbox.read(cwd.clone()).await {
        Err(FsError::NotFound { .. }) => Err(format!("cwd '{cwd}' does not exist")),
        _ => Ok(cwd),
    }
}

/// Turns process events into Connect frames, for the client of the
/// `Start` and for every client attached since (see `attach`), until the
/// process ends. A `Start` client that leaves, or whose stream the cut
/// fault ends, stops getting frames; the process and its other clients go
/// on, as with envd.
async fn relay(
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    pid: u32,
    mut events: Events,
    keepalive: Option<Duration>,
    cut_after: Option<u32>,
    entry: Arc<Entry>,
    live: Option<Arc<Live>>,
) {
    let publish = |frame: Frame| {
        if let Some(live) = &live {
            live.publish(frame);
        }
    };
    let mut client = Some(tx);
    let started = message_frame(ProcessEventJson {
        start: Some(StartEvent { pid }),
        ..Default::default()
    });
    to_client(&mut client, started).await;
    let mut stdout_frames = 0u32;
    loop {
        if let Some(tx) = client.as_ref()
            && cut_after.is_some_and(|k| stdout_frames >= k)
        {
            cut(tx).await;
            client = None;
        }
        if client.is_none() && live.is_none() {
            return;
        }
        // Keepalives are the Start client's; attached clients send their own.
        let next = match keepalive.filter(|_| client.is_some()) {
            Some(interval) => tokio::time::timeout(interval, events.next()).await,
            None => Ok(events.next().await),
        };
        let last = match next {
            Err(_quiet) => {
                to_client(&mut client, keepalive_frame()).await;
                continue;
            }
            Ok(Some(Ok(ProcessEvent::Stdout(chunk)))) => {
                stdout_frames += 1;
                let frame = message_frame(data(Some(chunk), None));
                publish(Frame {
                    bytes: frame.clone(),
                    last: false,
                });
                to_client(&mut client, frame).await;
                continue;
            }
            Ok(Some(Ok(ProcessEvent::Stderr(chunk)))) => {
                let frame = message_frame(data(None, Some(chunk)));
                publish(Frame {
                    bytes: frame.clone(),
                    last: false,
                });
                to_client(&mut client, frame).await;
                continue;
            }
            Ok(Some(Ok(ProcessEvent::Exited(status)))) => vec![
                message_frame(ProcessEventJson {
                    end: Some(end_event(&status)),
                    ..Default::default()
                }),
                end_of_stream(None),
            ],
            Ok(Some(Err(e))) => vec![end_of_stream(Some(sandbox_error(&e)))],
            Ok(None) => vec![end_of_stream(Some(ConnectError {
                code: "internal".to_owned(),
                message: "the process output ended without an exit".to_owned(),
            }))],
        };
        let count = last.len();
        let frames: Vec<Frame> = last
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| Frame {
                bytes,
                last: i + 1 == count,
            })
            .collect();
        for frame in &frames {
            publish(frame.clone());
            to_client(&mut client, frame.bytes.clone()).await;
        }
        if live.is_some() {
            entry.processes.ended(pid, frames);
        }
        return;
    }
}

/// Sends `frame` to the Start client while it is there.
async fn to_client(client: &mut Option<mpsc::Sender<Result<Bytes, std::io::Error>>>, frame: Bytes) {
    if let Some(tx) = client
        && tx.send(Ok(frame)).await.is_err()
    {
        // The client is gone; the process runs on.
        *client = None;
    }
}

pub(super) fn keepalive_frame() -> Bytes {
    message_frame(ProcessEventJson {
        keepalive: Some(KeepAlive {}),
        ..Default::default()
    })
}

/// Fault injection: drops the connection without the end frames. An error
/// in the body makes hyper abort the connection, discarding whatever it has
/// not written yet; so first let it take and flush the frames already sent,
/// which a real cut connection would have delivered.
async fn cut(tx: &mpsc::Sender<Result<Bytes, std::io::Error>>) {
    while tx.capacity() < tx.max_capacity() {
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tx
        .send(Err(std::io::Error::other("injected stream cut")))
        .await;
}

fn data(stdout: Option<Bytes>, stderr: Option<Bytes>) -> ProcessEventJson {
    let b64 = |b: Bytes| base64::engine::general_purpose::STANDARD.encode(b);
    ProcessEventJson {
        data: Some(DataEvent {
            stdout: stdout.map(b64),
            stderr: stderr.map(b64),
            pty: None,
        }),
        ..Default::default()
    }
}

/// envd's words: `exit status 3`, or exit code -1 and `signal: killed`.
fn end_event(status: &ExitStatus) -> EndEvent {
    match status.code {
        Some(code) => EndEvent {
            exit_code: code,
            exited: true,
            status: status.status.clone(),
            error: (code != 0).then(|| status.status.clone()),
        },
        None => EndEvent {
            exit_code: -1,
            exited: false,
            status: status.status.clone(),
            error: Some(status.status.clone()),
        },
    }
}

fn sandbox_error(e: &SandboxError) -> ConnectError {
    let code = match e {
        SandboxError::TimedOut { .. } => "deadline_exceeded",
        _ => "internal",
    };
    ConnectError {
        code: code.to_owned(),
        message: e.to_string(),
    }
}

pub(super) fn message_frame(event: ProcessEventJson) -> Bytes {
    json_frame(FLAG_MESSAGE, &StartResponse { event })
}

pub(super) fn end_of_stream(error: Option<ConnectError>) -> Bytes {
    json_frame(FLAG_END_STREAM, &EndOfStream { error })
}

fn json_frame(flags: u8, value: &impl Serialize) -> Bytes {
    // Serializing these plain structs cannot fail.
    let payload = serde_json::to_vec(value).unwrap_or_default();
    encode(flags, &payload)
}

pub(super) fn connect_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONNECT_JSON));
    response
}

/// A streaming call that fails before it starts: HTTP 200 with only the
/// end-of-stream frame, as Connect does.
pub(super) fn stream_error(code: &str, message: impl Into<String>) -> Response {
    let error = ConnectError {
        code: code.to_owned(),
        message: message.into(),
    };
    connect_stream(Body::from(end_of_stream(Some(error))))
}

/// The first enveloped message of a streaming request body.
pub(super) fn decode_enveloped<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut decoder = FrameDecoder::new();
    decoder.push(body);
    let frame = decoder
        .next_frame()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the request holds no complete Connect frame".to_owned())?;
    serde_json::from_slice(&frame.payload).map_err(|e| format!("invalid request message: {e}"))
}

pub(super) fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A unary Connect error: HTTP status plus `{"code","message"}`.
fn unary_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ConnectError {
        code: code.to_owned(),
        message: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

pub(super) async fn send_signal(
    State(emulator): State<Emulator>,
    EnvdSandbox(entry): EnvdSandbox,
    body: Bytes,
) -> Response {
    emulator.inner.stats.request(route::SIGNAL);
    let request: SendSignalRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return unary_error(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()),
    };
    let signal = match request.signal.as_str() {
        "SIGNAL_SIGKILL" | "9" => Signal::KILL,
        "SIGNAL_SIGTERM" | "15" => Signal::TERM,
        other => {
            return unary_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("unsupported signal {other}"),
            );
        }
    };
    // By pid, or by the tag its Start gave, as envd selects (and in its
    // words when nothing matches).
    let pid = match (request.process.pid, request.process.tag) {
        (Some(pid), _) => pid,
        (None, Some(tag)) => match entry.processes.pid_of(&tag) {
            Some(pid) => pid,
            None => {
                return unary_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("process with tag {tag} not found"),
                );
            }
        },
        (None, None) => {
            return unary_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "a process selector names a pid or a tag",
            );
        }
    };
    let control = entry
        .sandbox
        .processes()
        .into_iter()
        .find(|(info, _)| info.pid == pid)
        .map(|(_, control)| control);
    match control {
        Some(control) if control.signal(signal) => {
            axum::Json(SendSignalResponse {}).into_response()
        }
        _ => unary_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("process with pid {pid} not found"),
        ),
    }
}

pub(super) async fn list(
    State(emulator): State<Emulator>,
    EnvdSandbox(entry): EnvdSandbox,
) -> Response {
    emulator.inner.stats.request(route::PROCESS_LIST);
    // Environments hold keys: the emulator does not hand them back.
    let processes = entry
        .sandbox
        .processes()
        .into_iter()
        .map(|(info, _)| ProcessInfo {
            pid: info.pid,
            config: ProcessConfig {
                cmd: info.cmd,
                args: info.args,
                envs: Default::default(),
                cwd: Some(info.cwd),
            },
            tag: entry.processes.tag(info.pid),
        })
        .collect();
    axum::Json(ListResponse { processes }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_default_to_envd_s_90_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(keepalive_interval(&headers), Duration::from_secs(90));
        headers.insert("keepalive-ping-interval", HeaderValue::from_static("abc"));
        assert_eq!(keepalive_interval(&headers), Duration::from_secs(90));
        headers.insert("keepalive-ping-interval", HeaderValue::from_static("5"));
        assert_eq!(keepalive_interval(&headers), Duration::from_secs(5));
    }
}
