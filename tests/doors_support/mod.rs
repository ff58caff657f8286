//! Fixtures shared by the serverless door tests (`lambda_door`,
//! `vercel_door`, `secrets`, `sam_template`): the E2B emulator in-process,
//! tools from PyPI, child processes that die with the test, and SSE read
//! with timings.

#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2b_emulator::knobs::Synthetic;
use e2b_emulator::{Emulator, EmulatorOptions, Knobs, Snapshot};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

pub const E2B_KEY: &str = "e2b_0123456789abcdef0123456789abcdef";
pub const ANTHROPIC_KEY: &str = "sk-ant-door-test-0000";

/// The pinned PyPI packages the tests run; scripts/setup installs them.
pub const CARGO_LAMBDA_PIP: &str = "cargo-lambda==1.9.2";
pub const MOTO_PIP: &str = "moto[server]==5.2.5";
pub const CFN_LINT_PIP: &str = "cfn-lint==1.58.0";

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A command-line tool from PyPI: in the repository's `.venv` (where
/// scripts/setup installs the pinned versions), else on PATH. Missing, the
/// test fails with the command that installs it.
pub fn tool(name: &str, pip_package: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>());
    let venv = manifest_dir().join(".venv/bin");
    std::iter::once(venv)
        .chain(on_path)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed; install it with: \
                 python3 -m venv .venv && .venv/bin/pip install '{pip_package}' \
                 (scripts/setup does this)"
            )
        })
}

/// A free loopback port, for tools that must be told one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct E2b {
    pub url: String,
    pub emulator: Emulator,
}

/// The E2B emulator on loopback, in this process, accepting any `e2b_` key.
pub async fn start_emulator(knobs: Knobs) -> E2b {
    start_emulator_with_key(knobs, None).await
}

/// The E2B emulator accepting only `api_key`, when one is given.
pub async fn start_emulator_with_key(knobs: Knobs, api_key: Option<&str>) -> E2b {
    let mut options = EmulatorOptions::new(manifest_dir().join("runner"));
    options.knobs = knobs;
    options.api_key = api_key.map(sandstorm::secret::Secret::new);
    let emulator = Emulator::new(options).expect("emulator (is bubblewrap installed?)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = e2b_emulator::app(emulator.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    E2b { url, emulator }
}

pub fn synthetic(lines: u64, bytes: usize) -> Knobs {
    Knobs {
        synthetic: Some(Synthetic { lines, bytes }),
        ..Knobs::default()
    }
}

impl E2b {
    /// The variables that point a door at this emulator, with an anonymous
    /// endpoint and keys in the environment.
    pub fn door_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("E2B_API_URL", self.url.clone()),
            ("E2B_SANDBOX_URL", self.url.clone()),
            ("E2B_API_KEY", E2B_KEY.to_owned()),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_owned()),
            ("SANDSTORM_ALLOW_ANONYMOUS", "1".to_owned()),
        ]
    }

    /// The counters once every sandbox is gone (a kill may still be in
    /// flight when the stream ends), or a failure naming what leaked.
    pub async fn settled(&self) -> Snapshot {
        let start = Instant::now();
        loop {
            let stats = self.emulator.stats();
            if stats.alive == 0 && stats.created == stats.killed {
                return stats;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "sandboxes leaked: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl E2b {
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
}

/// A child process in its own process group, ended with the whole group
/// (tools such as `cargo lambda watch` start children of their own) when
/// the test drops it. Its stdout and stderr lines are kept for failures.
pub struct Proc {
    child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.join("\n")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Spawns `command` with a clean environment plus `env`, and waits until
/// one of its output lines passes `ready`.
///
/// PATH, HOME and the Cargo and Rust variables are kept: a tool that runs
/// cargo (`cargo lambda watch`) must build with the toolchain, target
/// directory and flags of this test run, or it rebuilds everything.
pub async fn spawn(
    mut command: Command,
    env: &[(&str, String)],
    ready: impl Fn(&str) -> bool,
    within: Duration,
) -> Proc {
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        let keep = name.to_str().is_some_and(|n| {
            matches!(n, "PATH" | "HOME") || n.starts_with("CARGO") || n.starts_with("RUST")
        });
        if keep {
            command.env(name, value);
        }
    }
    command
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn");
    let output = Arc::new(Mutex::new(Vec::new()));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    pump(stdout, output.clone(), seen_tx.clone());
    pump(stderr, output.clone(), seen_tx);
    let proc = Proc { child, output };
    let found = tokio::time::timeout(within, async {
        while let Some(line) = seen_rx.recv().await {
            if ready(&line) {
                return true;
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => {
            // Keep draining so the child never blocks on a full pipe.
            tokio::spawn(async move { while seen_rx.recv().await.is_some() {} });
            proc
        }
        Ok(false) => panic!("the process exited before it was ready:\n{}", proc.output()),
        Err(elapsed) => panic!(
            "the process was not ready within {within:?} ({elapsed}):\n{}",
            proc.output()
        ),
    }
}

fn pump(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<Vec<String>>>,
    seen: tokio::sync::mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut output) = output.lock() {
                output.push(line.clone());
            }
            let _ = seen.send(line);
        }
    });
}

/// A whole response: its head, the JSON of its `data:` events, and when
/// the first event and the end arrived, counted from the request.
#[derive(Debug)]
pub struct Stream {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub events: Vec<serde_json::Value>,
    pub first_event: Option<Duration>,
    pub ended: Duration,
}

impl Stream {
    /// Streaming, shown by timing: the first event reached the client
    /// while the run was still going, well before the sandbox was destroyed
    /// (which a run does after its last line and before its body ends). A
    /// buffering door delivers nothing until the whole body is done, so its
    /// first event comes after the destroy.
    pub fn assert_streamed(&self, run_ended: Duration) {
        let first = self.first_event.expect("at least one event");
        assert!(
            first + Duration::from_millis(200) < run_ended,
            "the first event came at {first:?}, the run ended at {run_ended:?} and the body at \
             {:?}: the body was buffered, not streamed",
            self.ended
        );
    }

    /// Every synthetic runner line is one event, in order, the last a result.
    pub fn assert_complete(&self, lines: u64) {
        assert_eq!(self.events.len() as u64, lines, "one event per runner line");
        for (i, event) in self.events.iter().enumerate() {
            assert_eq!(event["seq"], i as u64, "event {i} out of order: {event}");
        }
        assert_eq!(self.events.last().expect("events")["type"], "result");
    }

    /// What both doors must show for a whole synthetic run of `lines`: the
    /// run ended (`destroyed` resolved), the answer was a 200 event stream,
    /// complete and in order, its first event came before the run ended,
    /// and the one sandbox was killed. `log` is the door's output, for the
    /// failure message.
    pub async fn assert_whole_run(
        &self,
        e2b: &E2b,
        destroyed: tokio::task::JoinHandle<Duration>,
        lines: u64,
        door: &str,
        log: impl FnOnce() -> String,
    ) {
        let run_ended = tokio::time::timeout(Duration::from_secs(60), destroyed)
            .await
            .expect("the sandbox is destroyed")
            .expect("the run ends");
        assert_eq!(self.status, 200, "{}", log());
        assert_eq!(self.content_type, "text/event-stream");
        self.assert_complete(lines);
        self.assert_streamed(run_ended);
        let stats = e2b.settled().await;
        assert_eq!((stats.created, stats.killed), (1, 1));
        eprintln!(
            "{door}: first event at {:?}, run ended at {run_ended:?}, body ended at {:?}",
            self.first_event, self.ended
        );
    }

    pub fn last(&self) -> &serde_json::Value {
        self.events.last().expect("at least one event")
    }
}

/// Sends the request and reads the SSE body to its end (within 120 s).
pub async fn read_stream(request: reqwest::RequestBuilder) -> Stream {
    let start = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(120), request.send())
        .await
        .expect("the response starts within 120 s")
        .expect("response");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let headers = response.headers().clone();
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    let mut first_event = None;
    let read = async {
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk.expect("body chunk"));
            // A chunk can hold megabytes of events: walk it with a cursor
            // and drop what was read once, not frame by frame.
            let mut read = 0;
            while let Some(end) = find(&buffer[read..], b"\n\n") {
                let frame = std::str::from_utf8(&buffer[read..read + end]).expect("utf-8 events");
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                    first_event.get_or_insert_with(|| start.elapsed());
                    events.push(serde_json::from_str(data).expect("every event is JSON"));
                }
                read += end + 2;
            }
            buffer.drain(..read);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the stream ends within 120 s");
    Stream {
        status,
        content_type,
        headers,
        events,
        first_event,
        ended: start.elapsed(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Polls `url` until it answers 200, for servers that print nothing useful
/// when they are ready.
pub async fn wait_for_ok(url: &str, within: Duration, proc: &Proc) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(response) = client.get(url).timeout(Duration::from_secs(5)).send().await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{url} did not answer 200 within {within:?}:\n{}",
        proc.output()
    );
}
