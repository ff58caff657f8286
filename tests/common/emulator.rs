//! The E2B emulator, in this process or as the `e2b-emulator` binary.
//!
//! This is the one file of the tests that names the emulator's crate and
//! binary: tests take its types from here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
#[allow(
    unused_imports,
    reason = "re-exported for the test files; each uses some"
)]
pub use e2b_emulator::knobs::{CreateFault, CreateFaultMode, StreamCut, Synthetic};
#[allow(
    unused_imports,
    reason = "re-exported for the test files; each uses some"
)]
pub use e2b_emulator::{Emulator, EmulatorOptions, Knobs, Moment, Snapshot};

use super::keys::{ANTHROPIC_KEY, E2B_KEY};
use super::process::{self, Process};
use super::runner::runner_dir;

/// The `e2b-emulator` binary of this build, next to the test executable.
///
/// It belongs to another package of the workspace, so Cargo gives this
/// test no `CARGO_BIN_EXE_` for it; `cargo test --workspace` (what
/// `scripts/test` runs) builds every member's binaries before any test.
pub fn binary() -> PathBuf {
    let test = std::env::current_exe().expect("the test executable's path");
    let bin = test
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("e2b-emulator"));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "the e2b-emulator binary is missing next to {}: build it with \
             `cargo build -p e2b-emulator` (scripts/test builds every member)",
            test.display()
        ),
    }
}

/// Options with the checked-in runner, any `e2b_` key, no knob turned.
pub fn options() -> EmulatorOptions {
    let mut options = EmulatorOptions::new(runner_dir(), binary());
    options.api_key = sandstorm::secret::Secret::new(E2B_KEY);
    options.root_commands = [(MODEL_PROXY.to_owned(), model_proxy_binary())].into();
    options
}

/// Where the template installs the model proxy.
pub const MODEL_PROXY: &str = "/usr/local/bin/sandstorm-model-proxy";

/// This build's model proxy, which stands in for the template's.
pub fn model_proxy_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sandstorm-model-proxy"))
}

/// Knobs that answer every run with `lines` synthetic lines of `bytes`
/// bytes, the last a `result`, instead of running the runner.
pub fn synthetic(lines: u64, bytes: usize) -> Knobs {
    Knobs {
        synthetic: Some(Synthetic { lines, bytes }),
        ..Knobs::default()
    }
}

/// An emulator serving on loopback until the test's runtime ends.
pub struct RunningEmulator {
    pub url: String,
    pub emulator: Emulator,
}

/// Starts the emulator with `knobs` and the default options.
pub async fn start(knobs: Knobs) -> RunningEmulator {
    let mut options = options();
    options.knobs = knobs;
    start_with(options).await
}

/// Starts the emulator with `options` on a port the system picks.
pub async fn start_with(options: EmulatorOptions) -> RunningEmulator {
    serve(options, |app| app).await
}

/// Starts the emulator with `options`, its router passed through `wrap`
/// (a recording layer, say), on a port the system picks.
async fn serve(
    options: EmulatorOptions,
    wrap: impl FnOnce(axum::Router) -> axum::Router,
) -> RunningEmulator {
    let emulator = Emulator::new(options)
        .expect("start the E2B emulator (is bubblewrap installed? apt-get install bubblewrap)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the emulator to 127.0.0.1:0");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("emulator address")
    );
    // As the binary (and envd) does: TCP_NODELAY unless a knob says not.
    let accepting = emulator.clone();
    let listener = listener.tap_io(move |tcp| e2b_emulator::accepted(&accepting, tcp));
    let app = wrap(e2b_emulator::app(emulator.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    RunningEmulator { url, emulator }
}

impl RunningEmulator {
    pub fn stats(&self) -> Snapshot {
        self.emulator.stats()
    }

    /// How many requests `route` (`create`, `upload`, `start`, `kill`...) got.
    pub fn requests(&self, route: &str) -> u64 {
        self.stats().requests.get(route).copied().unwrap_or(0)
    }

    /// The leak check: the counters once every sandbox created has been
    /// killed and none is alive. A kill may still be in flight when a
    /// stream ends (a create that returned after its run was abandoned is
    /// killed by its own task), so this waits up to `within`, then fails
    /// the test naming what leaked.
    pub async fn settled(&self, within: Duration) -> Snapshot {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            if stats.alive == 0 && stats.created == stats.killed {
                return stats;
            }
            assert!(
                start.elapsed() < within,
                "sandboxes leaked (still alive {within:?} on): {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// When the first sandbox is destroyed, counted from now: the end of a
    /// run as the sandbox side sees it.
    pub fn first_destroy(&self) -> tokio::task::JoinHandle<Duration> {
        let emulator = self.emulator.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            while emulator.stats().killed == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            start.elapsed()
        })
    }

    /// The variables that point a door (or `ds`) at this emulator, with the
    /// test keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("E2B_API_URL", self.url.clone()),
            ("E2B_SANDBOX_URL", self.url.clone()),
            ("E2B_API_KEY", E2B_KEY.to_owned()),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_owned()),
        ]
    }
}

/// `e2b-emulator --port 0 --runner-dir runner`, for more arguments.
pub fn binary_command() -> Command {
    let mut command = Command::new(binary());
    command
        .args(["--port", "0", "--api-key", E2B_KEY, "--runner-dir"])
        .arg(runner_dir())
        .arg("--root-command")
        .arg(format!("{MODEL_PROXY}={}", model_proxy_binary().display()));
    command
}

/// `e2b-emulator` with its sandboxes under `work_root`, plus `args`.
pub fn binary_command_in(work_root: &Path, args: &[&str]) -> Command {
    let mut command = binary_command();
    command.arg("--work-root").arg(work_root).args(args);
    command
}

/// Starts the binary and reads the address it prints.
pub async fn start_binary(command: Command) -> (Process, String) {
    Process::start("e2b-emulator", command, READY_WITHIN, process::listening_on).await
}

/// [`start_binary`] for tests without a runtime.
pub fn start_binary_blocking(command: Command) -> (Process, String) {
    Process::start_blocking("e2b-emulator", command, READY_WITHIN, process::listening_on)
}

const READY_WITHIN: Duration = Duration::from_secs(30);

/// One request as the parity tests compare it: its shape, not its values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query_keys: Vec<String>,
    /// The allow-listed headers: a value where its value is the point, and
    /// `<present>` where only its presence is (keys, tokens).
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: serde_json::Value,
}

/// Headers whose value the parity tests compare.
const VALUE_HEADERS: &[&str] = &[
    "content-type",
    "connect-protocol-version",
    "e2b-sandbox-port",
    "keepalive-ping-interval",
];
/// Headers compared by presence only: they carry secrets or random values.
const PRESENCE_HEADERS: &[&str] = &[
    "e2b-sandbox-id",
    "x-access-token",
    "x-api-key",
    "idempotency-key",
    "connect-timeout-ms",
];

/// JSON value types, recursively: what the tests compare of a body.
pub fn shape(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Null => Value::from("null"),
        Value::Bool(_) => Value::from("bool"),
        Value::Number(_) => Value::from("number"),
        Value::String(_) => Value::from("string"),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), shape(value)))
                .collect(),
        ),
    }
}

/// The body's shape: JSON, Connect envelopes (each decoded to its JSON
/// message), multipart parts (name, filename, content type), or its size.
fn body_shape(content_type: &str, body: &[u8]) -> serde_json::Value {
    use serde_json::Value;
    if body.is_empty() {
        return Value::from("empty");
    }
    if content_type.starts_with("application/connect+json") {
        let mut messages = Vec::new();
        let mut rest = body;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let end = (5 + len).min(rest.len());
            let message = serde_json::from_slice(&rest[5..end])
                .map(|json: Value| shape(&json))
                .unwrap_or_else(|_| Value::from("not json"));
            messages.push(serde_json::json!({"flags": rest[0], "message": message}));
            rest = &rest[end..];
        }
        return Value::Array(messages);
    }
    if let Some(boundary) = content_type
        .split(';')
        .find_map(|part| part.trim().strip_prefix("boundary="))
    {
        let boundary = format!("--{}", boundary.trim_matches('"'));
        let text = String::from_utf8_lossy(body);
        let parts = text
            .split(boundary.as_str())
            .filter_map(|part| part.split_once("\r\n\r\n").map(|(head, _)| head))
            .map(|head| {
                let mut summary = serde_json::Map::new();
                for line in head.lines() {
                    let Some((name, value)) = line.split_once(':') else {
                        continue;
                    };
                    let name = name.trim().to_ascii_lowercase();
                    if name == "content-type" {
                        summary.insert("content-type".into(), Value::from(value.trim()));
                    } else if name == "content-disposition" {
                        for param in value.split(';').skip(1) {
                            if let Some((key, val)) = param.trim().split_once('=') {
                                let val = if key == "filename" {
                                    "<filename>"
                                } else {
                                    val.trim_matches('"')
                                };
                                summary.insert(key.to_owned(), Value::from(val));
                            }
                        }
                    }
                }
                Value::Object(summary)
            })
            .collect();
        return Value::Array(parts);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(json) => shape(&json),
        Err(_) => Value::from("bytes"),
    }
}

/// What a recording emulator has seen, in order.
pub type Recording = std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>;

/// Records each request's shape, then hands the buffered body on unchanged.
async fn record(
    axum::extract::State(recording): axum::extract::State<Recording>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(err) => panic!("the recording layer could not read a body: {err}"),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let mut headers = std::collections::BTreeMap::new();
    for name in VALUE_HEADERS {
        if let Some(value) = header(name) {
            // A multipart boundary is random per request.
            let value = value.split("; boundary=").next().unwrap_or("").to_owned();
            headers.insert((*name).to_owned(), value);
        }
    }
    for name in PRESENCE_HEADERS {
        if header(name).is_some() {
            headers.insert((*name).to_owned(), "<present>".to_owned());
        }
    }
    let content_type = header("content-type").unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        // A sandbox's id differs per run: the path keeps its place only.
        path: match parts.uri.path().split_once("/sandboxes/") {
            Some((head, tail)) => match tail.split_once('/') {
                Some((_, rest)) => format!("{head}/sandboxes/{{id}}/{rest}"),
                None => format!("{head}/sandboxes/{{id}}"),
            },
            None => parts.uri.path().to_owned(),
        },
        query_keys: parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split('=').next().unwrap_or("").to_owned())
            .collect(),
        headers,
        body: body_shape(&content_type, &bytes),
    };
    recording
        .lock()
        .expect("the recording lock is not poisoned")
        .push(recorded);
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    next.run(request).await
}

/// Starts the emulator with every request recorded (see [`Recorded`]).
pub async fn start_recording() -> (RunningEmulator, Recording) {
    let recording = Recording::default();
    let layer = axum::middleware::from_fn_with_state(recording.clone(), record);
    let running = serve(options(), |app| app.layer(layer)).await;
    (running, recording)
}
