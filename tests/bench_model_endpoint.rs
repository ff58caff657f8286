//! What the keyless model endpoint costs a model call (issue 14): the
//! latency it adds on loopback, and the host memory an in-flight call
//! holds. A benchmark, not part of a plain `cargo test`: `bench/run` builds
//! it in release (`--features sandstorm/lambda`, in the same cargo
//! invocation as the release binaries), runs it with
//! `--ignored --nocapture --exact model_endpoint_added_latency_and_memory_per_call`
//! and takes its figures (one JSON object, printed on a line of its own
//! and written to the file `SANDSTORM_BENCH_FIGURES` names, when set) into
//! BENCHMARKS.md. It asserts only that every call succeeded; the figures
//! are for the reader.
//!
//! The upstream is a Messages API stand-in (axum) in a child process, this
//! test binary started again as [`upstream`], so that this process's
//! resident memory is the endpoint's host and nothing else. Every call gets
//! the same small streamed answer: `message_start` with usage, a text
//! block of three deltas, `message_delta`, `message_stop`.
//!
//! - **Latency:** one client, `tests/fixtures/model_client.py` (Python's
//!   `http.client` on a kept-alive connection), makes calls one after
//!   another, on the host straight to the upstream and in a local sandbox
//!   through `$ANTHROPIC_BASE_URL`, i.e. the sandbox's bridge, the host's
//!   egress server and the endpoint, which swaps the placeholder for the
//!   key and forwards with reqwest. Rounds alternate which path goes
//!   first; each client process warms up before it times. Through the
//!   endpoint both with the run's spend meter (as `ds` runs on the local
//!   provider) and without. A second series has the upstream pause after
//!   the first event: the first byte must come through before the pause
//!   ends, or the endpoint buffered the stream.
//! - **Memory:** [`HELD`] sandboxes, each running a client that waits
//!   for a go file; this process's `VmRSS` with every client ready, then
//!   with every client's call open (the upstream holds each stream after
//!   its first event). The difference over [`HELD`] is what one
//!   in-flight call costs the endpoint's host: its connection through the
//!   egress server, the request body it holds, its upstream connection
//!   and the streaming answer. It runs first, while nothing freed by the
//!   latency rounds could be reused.
//!
//! Needs bubblewrap, and the `ds` binary cargo builds with this test (the
//! sandbox's shim).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use common::process::{Process, listening_on};
use common::sandbox::collect;
use futures::{StreamExt, stream};
use sandstorm::sandbox::local::{LocalOptions, LocalProvider, LocalSandbox};
use sandstorm::sandbox::{ProcessEvent, ProcessSpec, Sandbox, SandboxSpec};
use sandstorm::spend::{Caps, PriceTable, SpendMeter};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// The client, run with `python3 -c` on both sides.
const CLIENT: &str = include_str!("fixtures/model_client.py");
/// The key the upstream wants; the sandbox's client only ever has a
/// placeholder for it.
const KEY: &str = "sk-ant-bench-upstream-key";
/// Latency: rounds, and per round and path untimed then timed calls.
const ROUNDS: usize = 5;
const WARMUP: usize = 50;
const CALLS: usize = 200;
/// Streaming: calls per path whose answer pauses after its first event.
const PAUSED_CALLS: usize = 20;
const PAUSE: Duration = Duration::from_millis(20);
/// Memory: calls held open at once, one per sandbox.
const HELD: usize = 50;
/// Lets allocations settle before RSS is read.
const SETTLE: Duration = Duration::from_millis(500);
/// The whole benchmark must end within this (it takes under a minute on
/// two cores); past it the test fails instead of hanging.
const TIME_LIMIT: Duration = Duration::from_secs(240);
/// The variable that tells this binary to be the upstream.
const UPSTREAM_VARIABLE: &str = "SANDSTORM_BENCH_UPSTREAM";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/run --only proxy runs it in release"]
async fn model_endpoint_added_latency_and_memory_per_call() {
    let (_upstream, upstream_url) = start_upstream().await;
    let provider = provider();
    let started = Instant::now();
    let figures = tokio::time::timeout(TIME_LIMIT, async {
        let memory = memory(&provider, &upstream_url).await;
        let latency = latency(&provider, &upstream_url).await;
        let streaming = streaming(&provider, &upstream_url).await;
        json!({ "latency": latency, "streaming": streaming, "memory": memory })
    })
    .await
    .expect("the benchmark did not end within its time limit");
    let figures = json!({
        "rounds": ROUNDS,
        "warmup": WARMUP,
        "calls_per_round": CALLS,
        "paused_calls": PAUSED_CALLS,
        "pause_ms": PAUSE.as_millis(),
        "held": HELD,
        "answer_bytes": FIRST_EVENT.len() + LATER_EVENTS.iter().map(|e| e.len()).sum::<usize>(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "figures": figures,
    });
    println!("{figures}");
    if let Some(path) = std::env::var_os("SANDSTORM_BENCH_FIGURES") {
        std::fs::write(path, format!("{figures:#}\n")).expect("write the figures");
    }
}

// --- the paths --------------------------------------------------------------

fn provider() -> LocalProvider {
    let bwrap = PathBuf::from("/usr/bin/bwrap");
    assert!(
        bwrap.is_file(),
        "bubblewrap is missing: install it with `apt-get install -y bubblewrap`"
    );
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_ds"));
    LocalProvider::new(LocalOptions::new(common::runner::runner_dir(), shim))
        .expect("local provider")
}

async fn sandbox(provider: &LocalProvider) -> Arc<LocalSandbox> {
    provider
        .create(SandboxSpec {
            lifetime: Duration::from_secs(300),
            ..SandboxSpec::default()
        })
        .await
        .expect("create a sandbox")
}

/// A fresh spend meter with no caps, as `ds` gives every run on the local
/// provider: it prices each answer's usage.
fn meter() -> Arc<SpendMeter> {
    let prices = PriceTable::new(None).expect("the list prices");
    SpendMeter::new(Caps::default(), Arc::new(prices))
}

/// The client, told to go to `base_url` with the real key: on the host it
/// goes there; in a sandbox the endpoint stands in.
fn client_spec(base_url: &str, args: &[&str], spend: Option<Arc<SpendMeter>>) -> ProcessSpec {
    let mut all = vec!["-c".to_owned(), CLIENT.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    ProcessSpec {
        cmd: "python3".into(),
        args: all,
        envs: BTreeMap::from([
            ("ANTHROPIC_API_KEY".to_owned(), KEY.to_owned()),
            ("ANTHROPIC_BASE_URL".to_owned(), base_url.to_owned()),
        ]),
        spend,
        ..ProcessSpec::default()
    }
}

/// Per-call times, µs: to the first body byte and to the end.
#[derive(Default)]
struct Times {
    first: Vec<f64>,
    end: Vec<f64>,
}

impl Times {
    fn add(&mut self, out: &str) -> f64 {
        let parsed: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("the client printed {out:?}: {e}"));
        let list = |key: &str| -> Vec<f64> {
            parsed[key]
                .as_array()
                .expect("a list of times")
                .iter()
                .map(|v| v.as_f64().expect("a time"))
                .collect()
        };
        let (first, end) = (list("first_us"), list("end_us"));
        let p50 = percentile(&end, 50);
        self.first.extend(first);
        self.end.extend(end);
        p50
    }
}

/// Which way a series of calls goes.
#[derive(Clone, Copy)]
enum Path {
    /// On the host, straight to the upstream.
    Direct,
    /// In a sandbox, through the endpoint, with a spend meter or without.
    Endpoint { metered: bool },
}

impl Path {
    const ALL: [Path; 3] = [
        Path::Direct,
        Path::Endpoint { metered: true },
        Path::Endpoint { metered: false },
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Endpoint { metered: true } => "endpoint",
            Path::Endpoint { metered: false } => "endpoint_unmetered",
        }
    }
}

/// Runs the client to its end on `path` and returns what it printed.
async fn run_client(sandbox: &LocalSandbox, upstream: &str, path: Path, args: &[&str]) -> String {
    match path {
        Path::Direct => {
            let out = tokio::process::Command::new("python3")
                .arg("-c")
                .arg(CLIENT)
                .args(args)
                .env("ANTHROPIC_API_KEY", KEY)
                .env("ANTHROPIC_BASE_URL", upstream)
                .kill_on_drop(true)
                .output()
                .await
                .expect("run the client on the host");
            assert!(
                out.status.success(),
                "the host client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("UTF-8")
        }
        Path::Endpoint { metered } => {
            let spec = client_spec(upstream, args, metered.then(meter));
            let (_, stream, _) = sandbox.spawn(spec).expect("start the client");
            let out = collect(stream).await;
            assert_eq!(
                out.code(),
                Some(0),
                "the sandbox's client failed: {}{:?}",
                out.stderr(),
                out.error
            );
            out.stdout()
        }
    }
}

// --- latency ------------------------------------------------------------------

async fn latency(provider: &LocalProvider, upstream: &str) -> Value {
    let sb = sandbox(provider).await;
    let mut times: BTreeMap<&str, Times> = BTreeMap::new();
    // Per round, the p50 of the end-to-end time through the endpoint
    // minus the direct one's.
    let mut added_per_round = Vec::new();
    let (warmup, calls) = (WARMUP.to_string(), CALLS.to_string());
    let args = ["time", "fast", warmup.as_str(), calls.as_str()];
    for round in 0..ROUNDS {
        let mut order = Path::ALL;
        order.rotate_left(round % Path::ALL.len());
        let mut p50 = BTreeMap::new();
        for path in order {
            let out = run_client(&sb, upstream, path, &args).await;
            p50.insert(path.name(), times.entry(path.name()).or_default().add(&out));
        }
        added_per_round.push(p50["endpoint"] - p50["direct"]);
    }
    sb.destroy().await.expect("destroy");

    let direct = &times["direct"];
    let mut out = json!({ "added_p50_us_per_round": added_per_round });
    for (name, t) in &times {
        out[*name] = json!({ "first_us": summary(&t.first), "end_us": summary(&t.end) });
        if *name != "direct" {
            out[format!("{name}_added_us")] = json!({
                "first": added(&t.first, &direct.first),
                "end": added(&t.end, &direct.end),
            });
        }
    }
    out
}

/// Calls whose answer pauses after its first event: the first byte
/// through the endpoint must not wait for the pause.
async fn streaming(provider: &LocalProvider, upstream: &str) -> Value {
    let sb = sandbox(provider).await;
    let calls = PAUSED_CALLS.to_string();
    let args = ["time", "pause", "2", calls.as_str()];
    let mut out = json!({});
    for path in [Path::Direct, Path::Endpoint { metered: true }] {
        let mut t = Times::default();
        t.add(&run_client(&sb, upstream, path, &args).await);
        out[path.name()] = json!({ "first_us": summary(&t.first), "end_us": summary(&t.end) });
    }
    sb.destroy().await.expect("destroy");
    out
}

// --- memory -------------------------------------------------------------------

/// What a held client reported, by sandbox.
enum Report {
    Line(usize, String),
    Exited(usize, Option<i32>, String),
}

async fn memory(provider: &LocalProvider, upstream: &str) -> Value {
    let control = reqwest::Client::new();
    let start = rss_kib();
    let mut sandboxes = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        sandboxes.push(sandbox(provider).await);
    }
    tokio::time::sleep(SETTLE).await;
    let sandboxes_idle = rss_kib();

    let (tx, mut reports) = mpsc::unbounded_channel();
    for (i, sb) in sandboxes.iter().enumerate() {
        let spec = client_spec(upstream, &["hold", "/tmp/go"], Some(meter()));
        let (_, mut stream, _) = sb.spawn(spec).expect("start the client");
        let tx = tx.clone();
        tokio::spawn(async move {
            let (mut line, mut stderr, mut code) = (Vec::new(), Vec::new(), None);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ProcessEvent::Stdout(bytes)) => {
                        line.extend_from_slice(&bytes);
                        while let Some(at) = line.iter().position(|b| *b == b'\n') {
                            let text = String::from_utf8_lossy(&line[..at]).into_owned();
                            line.drain(..=at);
                            let _ = tx.send(Report::Line(i, text));
                        }
                    }
                    Ok(ProcessEvent::Stderr(bytes)) => stderr.extend_from_slice(&bytes),
                    Ok(ProcessEvent::Exited(status)) => code = status.code,
                    Err(e) => stderr.extend_from_slice(e.to_string().as_bytes()),
                }
            }
            let _ = tx.send(Report::Exited(
                i,
                code,
                String::from_utf8_lossy(&stderr).into_owned(),
            ));
        });
    }
    drop(tx);

    until_each_says(&mut reports, "ready").await;
    tokio::time::sleep(SETTLE).await;
    let clients_ready = rss_kib();

    for sb in &sandboxes {
        sb.write("/tmp/go".to_owned(), Bytes::new())
            .await
            .expect("write the go file");
    }
    until_each_says(&mut reports, "held").await;
    let held_upstream: usize = control
        .get(format!("{upstream}/bench/held"))
        .send()
        .await
        .expect("ask the upstream")
        .text()
        .await
        .expect("its answer")
        .parse()
        .expect("a count");
    assert_eq!(held_upstream, HELD, "the upstream holds every call");
    tokio::time::sleep(SETTLE).await;
    let calls_held = rss_kib();

    control
        .post(format!("{upstream}/bench/release"))
        .send()
        .await
        .expect("release the held answers");
    let (mut done, mut exited) = (0, 0);
    while let Some(report) = reports.recv().await {
        match report {
            Report::Line(_, line) if line == "done" => done += 1,
            Report::Line(i, line) => panic!("client {i} printed {line:?}, not done"),
            Report::Exited(i, code, stderr) => {
                assert_eq!(code, Some(0), "client {i}: {stderr}");
                exited += 1;
            }
        }
    }
    assert_eq!((done, exited), (HELD, HELD), "every call ended whole");
    tokio::time::sleep(SETTLE).await;
    let calls_done = rss_kib();
    for sb in &sandboxes {
        sb.destroy().await.expect("destroy");
    }
    drop(sandboxes);
    tokio::time::sleep(SETTLE).await;
    let destroyed = rss_kib();

    json!({
        "rss_kib": {
            "start": start,
            "sandboxes_idle": sandboxes_idle,
            "clients_ready": clients_ready,
            "calls_held": calls_held,
            "calls_done": calls_done,
            "destroyed": destroyed,
        },
        "per_sandbox_kib": per(sandboxes_idle, start),
        "per_client_kib": per(clients_ready, sandboxes_idle),
        "per_call_kib": per(calls_held, clients_ready),
    })
}

/// Waits until every client has printed `want`.
async fn until_each_says(reports: &mut mpsc::UnboundedReceiver<Report>, want: &str) {
    let mut seen = 0;
    while seen < HELD {
        match reports.recv().await.expect("the clients' reports") {
            Report::Line(_, line) if line == want => seen += 1,
            Report::Line(i, line) => panic!("client {i} printed {line:?}, not {want}"),
            Report::Exited(i, code, stderr) => {
                panic!("client {i} exited ({code:?}) before {want}: {stderr}")
            }
        }
    }
}

fn per(after: u64, before: u64) -> f64 {
    (after as f64 - before as f64) / HELD as f64
}

/// This process's resident memory, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmRSS line")
}

// --- statistics ---------------------------------------------------------------

/// Nearest-rank percentile `p` (0 to 100) of `values`.
fn percentile(values: &[f64], p: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Percentiles of times in µs, and how many took over 10 ms: on loopback
/// a call takes well under one, so those stalled.
fn summary(values: &[f64]) -> Value {
    json!({
        "n": values.len(),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": percentile(values, 0),
        "max": percentile(values, 100),
        "over_10ms": values.iter().filter(|v| **v > 10_000.0).count(),
    })
}

/// Percentile by percentile, what `through` took over `direct`.
fn added(through: &[f64], direct: &[f64]) -> Value {
    let at = |p: usize| percentile(through, p) - percentile(direct, p);
    json!({ "p50": at(50), "p90": at(90), "p99": at(99) })
}

// --- the upstream -------------------------------------------------------------

/// Starts this test binary again as [`upstream`]; its process and URL.
async fn start_upstream() -> (Process, String) {
    let mut command = std::process::Command::new(std::env::current_exe().expect("this binary"));
    command
        .args(["upstream", "--exact", "--ignored", "--nocapture"])
        .env(UPSTREAM_VARIABLE, "1");
    let (process, address) =
        Process::start("upstream", command, Duration::from_secs(30), listening_on).await;
    (process, format!("http://{address}"))
}

/// The Messages API stand-in, when [`start_upstream`] runs this binary
/// for it: serves until it is killed. Run any other way, it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "the benchmark's upstream: model_endpoint_added_latency_and_memory_per_call starts it"]
async fn upstream() {
    if std::env::var_os(UPSTREAM_VARIABLE).is_none() {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    println!(
        "listening on {}",
        listener.local_addr().expect("an address")
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, upstream_app()).await.expect("serve");
}

/// The answer's events, as the Messages API streams them.
const FIRST_EVENT: &str = concat!(
    "event: message_start\n",
    r#"data: {"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
    "\n\n",
);
const LATER_EVENTS: [&str; 7] = [
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", world\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\".\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

#[derive(Clone)]
struct Upstream {
    /// Answers held after their first event right now.
    held: Arc<AtomicUsize>,
    /// Becomes true once the held answers may end.
    released: watch::Receiver<bool>,
    release: Arc<watch::Sender<bool>>,
}

fn upstream_app() -> Router {
    let (release, released) = watch::channel(false);
    let state = Upstream {
        held: Arc::new(AtomicUsize::new(0)),
        released,
        release: Arc::new(release),
    };
    Router::new()
        .route("/v1/messages", post(messages))
        .route(
            "/bench/held",
            get(|State(s): State<Upstream>| async move { s.held.load(Ordering::SeqCst).to_string() }),
        )
        .route(
            "/bench/release",
            post(|State(s): State<Upstream>| async move {
                s.release.send_replace(true);
            }),
        )
        .with_state(state)
}

/// Decrements the held count when a held answer ends, however it ends.
struct HeldGuard(Arc<AtomicUsize>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `POST /v1/messages`: the same answer to every call with the real key,
/// its later events sent at once (`fast`), after [`PAUSE`] (`pause`), or
/// once released (`hold`).
async fn messages(State(s): State<Upstream>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(KEY) {
        return (StatusCode::UNAUTHORIZED, "not the upstream's key").into_response();
    }
    if body.is_empty() {
        return (StatusCode::BAD_REQUEST, "no body").into_response();
    }
    let mode = headers
        .get("x-bench-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("fast")
        .to_owned();
    let wait = async move {
        match mode.as_str() {
            "pause" => tokio::time::sleep(PAUSE).await,
            "hold" => {
                s.held.fetch_add(1, Ordering::SeqCst);
                let _guard = HeldGuard(s.held.clone());
                let mut released = s.released.clone();
                let _ = released.wait_for(|r| *r).await;
            }
            _ => {}
        }
        stream::iter(LATER_EVENTS.map(|e| Ok::<_, Infallible>(Bytes::from_static(e.as_bytes()))))
    };
    let first = stream::iter([Ok::<_, Infallible>(Bytes::from_static(
        FIRST_EVENT.as_bytes(),
    ))]);
    let events = first.chain(stream::once(wait).flatten());
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

#[test]
fn percentiles_are_nearest_rank() {
    let values: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&values, 50), 50.0);
    assert_eq!(percentile(&values, 99), 99.0);
    assert_eq!(percentile(&values, 0), 1.0);
    assert_eq!(percentile(&values, 100), 100.0);
}
