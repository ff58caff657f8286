//! The Lambda door (`bootstrap`) as Lambda runs it.
//!
//! Most tests run it under `cargo lambda watch` (PyPI `cargo-lambda`), which
//! emulates the Runtime API and Function URLs with response streaming, and
//! call the Function URL route against the E2B emulator in synthetic-runner
//! mode. `cargo lambda watch` sends a fixed deadline in 1970, so the deadline
//! test drives the binary through a Runtime API written here instead, which
//! gives the invocation a real, short deadline. A cron trigger's
//! EventBridge Scheduler event, as recorded, goes through `cargo lambda
//! invoke`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::doors::{
    SETTLE, agent_texts, door_command, door_env, port_below_ephemeral_range, real_runner_env,
};
use common::emulator::{self, Knobs, StreamCut, synthetic};
use common::http::serve_router;
use common::model_server::{ModelServer, Script};
use common::process::{self, Process};
use common::sse;
use common::stream::{Stream, read_stream};
use common::tools::{CARGO_LAMBDA_PIP, manifest_dir, tool};
use futures::StreamExt;
use tokio::sync::mpsc;

struct Watch {
    url: String,
    /// Where it takes invocations (`cargo lambda invoke --invoke-port`).
    port: u16,
    proc: Process,
}

impl Watch {
    /// Posts a query to the Function URL and reads the whole stream; a
    /// failure shows what `cargo lambda watch` and the function logged.
    async fn query(&self, body: serde_json::Value) -> Stream {
        let request = reqwest::Client::new()
            .post(format!("{}/query", self.url))
            .json(&body);
        match tokio::spawn(read_stream(request)).await {
            Ok(stream) => stream,
            Err(e) => panic!("{e}\n--- cargo lambda watch:\n{}", self.proc.output()),
        }
    }
}

/// `cargo lambda watch` serving the crate's `bootstrap` with `env`. It
/// builds with the features `cargo test --all-features` already built, so
/// it only starts the binary.
///
/// It cannot listen on port 0: it tells the function it starts where its
/// Runtime API is from the port it was given, and logs that port, not the
/// one it got. So it is given a port drawn below the ephemeral range (see
/// [`port_below_ephemeral_range`]), and started again on another if that
/// one turns out to be taken.
async fn cargo_lambda_watch(env: &[(&str, String)]) -> Watch {
    const ATTEMPTS: usize = 3;
    for _ in 1..ATTEMPTS {
        if let Some(watch) = try_cargo_lambda_watch(env).await {
            return watch;
        }
    }
    try_cargo_lambda_watch(env)
        .await
        .expect("cargo lambda watch found its port taken every time")
}

/// `None` when the port was taken.
async fn try_cargo_lambda_watch(env: &[(&str, String)]) -> Option<Watch> {
    let port = port_below_ephemeral_range();
    let mut command = door_command(tool("cargo-lambda", CARGO_LAMBDA_PIP), env.iter().cloned());
    command
        .args(["lambda", "watch", "--all-features", "--ignore-changes"])
        .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
        .arg(port.to_string())
        .current_dir(manifest_dir());
    let (proc, ()) = Process::start(
        "cargo lambda watch",
        command,
        Duration::from_secs(60),
        |line| line.contains("starting Runtime server").then_some(()),
    )
    .await;
    // It logs the port before it binds it: it is listening once the
    // kernel says so, and the port was taken if it says that instead.
    let bound = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if process::listening_ports(proc.pid()).contains(&port) {
                return true;
            }
            if proc.output().contains("Address in use") {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("cargo lambda watch did not bind {port}:\n{}", proc.output()));
    if !bound {
        return None;
    }
    let url = format!("http://127.0.0.1:{port}/lambda-url/bootstrap");
    // The first invocation starts the function (`cargo run`, which may have
    // to build). One patient request: an invocation whose client gave up
    // leaves the emulated function busy for good.
    let health = reqwest::Client::new()
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap_or_else(|e| panic!("health: {e}\n{}", proc.output()));
    assert_eq!(health.status(), 200, "{}", proc.output());
    Some(Watch { url, port, proc })
}

#[tokio::test]
async fn the_function_url_streams_every_line_in_order_before_the_run_ends() {
    const LINES: u64 = 20_000;
    let e2b = emulator::start(synthetic(LINES, 1_000)).await;
    let watch = cargo_lambda_watch(&door_env(&e2b)).await;

    let destroyed = e2b.first_destroy();
    let stream = watch.query(serde_json::json!({"prompt": "go"})).await;
    stream
        .assert_whole_run(&e2b, destroyed, LINES, "lambda", || watch.proc.output())
        .await;
}

/// The Lambda door turns a recorded EventBridge Scheduler event into a
/// run. tests/data/lambda/eventbridge_scheduler.json is what EventBridge
/// Scheduler delivers for the input `ds schedules --sam` writes for the
/// daily digest of tests/fixtures/schedules/sandstorm.json (09:00 on
/// weekdays in Prague), its context attributes filled in as AWS fills
/// them, for Monday 7 December 2026. `cargo lambda invoke --data-file`
/// sends it to the function under `cargo lambda watch`, whose clock is set
/// just after that time. The invocation answers once the run's agent has
/// started, with the run's id; the real runner's SDK sends the scripted
/// model the trigger's prompt, filled in with the fire time; and the same
/// function still serves HTTP: `GET /runs/{id}` finds the run.
#[tokio::test]
async fn the_lambda_door_turns_a_recorded_eventbridge_scheduler_event_into_a_run() {
    let model = ModelServer::start(Script::Bash {
        command: "echo digest-written".into(),
    })
    .await;
    let (e2b, mut env) = real_runner_env(&model).await;
    env.extend([
        (
            "SANDSTORM_CONFIG",
            manifest_dir()
                .join("tests/fixtures/schedules/sandstorm.json")
                .display()
                .to_string(),
        ),
        // The fixture's webhook trigger reads its secret from here.
        (
            "GITHUB_WEBHOOK_SECRET",
            "github-webhook-secret-for-tests".to_owned(),
        ),
        (
            "SANDSTORM_TEST_CLOCK_START",
            "2026-12-07T08:00:40Z".to_owned(),
        ),
        ("SANDSTORM_RUN_LINGER", "10".to_owned()),
    ]);
    let watch = cargo_lambda_watch(&env).await;

    let mut invoke = door_command(
        tool("cargo-lambda", CARGO_LAMBDA_PIP),
        std::iter::empty::<(&str, &str)>(),
    );
    invoke
        .args(["lambda", "invoke", "bootstrap", "--data-file"])
        .arg(manifest_dir().join("tests/data/lambda/eventbridge_scheduler.json"))
        .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
        .arg(watch.port.to_string())
        .args(["--output-format", "json"]);
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || process::run(invoke, Duration::from_secs(300)))
            .await
            .expect("cargo lambda invoke ran");
    assert!(
        status.success(),
        "cargo lambda invoke: {stdout}\n{stderr}\n--- cargo lambda watch:\n{}",
        watch.proc.output()
    );
    let answer: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", watch.proc.output()));
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert_eq!(answer["trigger"], "daily-digest", "{answer}");
    assert_eq!(answer["scheduled_time"], "2026-12-07T08:00:00Z", "{answer}");
    assert_eq!(answer["execution_id"], "d32c5kddcf5bb8c3", "{answer}");
    let run_id = answer["run_id"].as_str().expect("a run id").to_owned();
    // It answered once the run no longer needed it: its sandbox made and
    // its runner started (a platform may freeze the function from here on).
    assert_eq!(e2b.stats().created, 1);
    assert!(e2b.requests("start") >= 1, "{:?}", e2b.stats());
    // HTTP, in the same function: the run the schedule started, while its
    // sandbox is there (this door keeps no history to answer from after).
    let run: serde_json::Value = reqwest::get(format!("{}/runs/{run_id}", watch.url))
        .await
        .expect("GET /runs/{id}")
        .json()
        .await
        .expect("JSON");
    assert_eq!(run["run_id"], run_id.as_str(), "{run}");

    let prompt = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let texts = agent_texts(&model);
            if texts.contains("Write the daily digest for") {
                return texts;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the model never got the prompt:\n{}\n{}",
            model.describe_requests(),
            watch.proc.output()
        )
    });
    assert!(prompt.contains("2026-12-07T08:00:00Z"), "{prompt}");

    let stats = e2b.settled(Duration::from_secs(120)).await;
    assert_eq!((stats.created, stats.killed), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn a_cut_envd_stream_ends_with_an_in_band_error_event() {
    let e2b = emulator::start(Knobs {
        stream_cut: Some(StreamCut {
            after_frames: 10,
            count: 1,
        }),
        ..synthetic(100_000, 500)
    })
    .await;
    let watch = cargo_lambda_watch(&door_env(&e2b)).await;

    let stream = watch.query(serde_json::json!({"prompt": "go"})).await;

    // The status went out with the first byte; the failure is in-band.
    assert_eq!(stream.status, 200);
    let last = stream.last();
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["error_type"], "stream_cut", "{last}");
    assert!(last["request_id"].is_string(), "{last}");
    let lines = &stream.events[..stream.events.len() - 1];
    assert!(!lines.is_empty(), "lines before the cut are delivered");
    for (i, event) in lines.iter().enumerate() {
        assert_eq!(event["seq"], i as u64);
    }
    let stats = e2b.settled(SETTLE).await;
    assert_eq!((stats.created, stats.killed), (1, 1));
}

#[tokio::test]
async fn the_invocation_request_id_names_the_run_and_its_logs() {
    let e2b = emulator::start(synthetic(3, 200)).await;
    let watch = cargo_lambda_watch(&door_env(&e2b)).await;
    let stream = watch.query(serde_json::json!({"prompt": "go"})).await;
    let request_id = stream.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(stream.last()["type"], "result");
    // The id is the invocation's (a UUID with dashes, as Lambda's are), and
    // the JSON log lines of the run carry it.
    assert_eq!(request_id.len(), 36, "{request_id}");
    let logged = watch
        .proc
        .output()
        .lines()
        .any(|l| l.starts_with('{') && l.contains(&request_id) && l.contains("requestId"));
    assert!(
        logged,
        "no JSON log line with {request_id}:\n{}",
        watch.proc.output()
    );
}

// --- A short deadline, through a Runtime API written here -----------------

/// One invocation: its request id, its deadline (ms since 1970) and its
/// event.
type Invocation = (String, u64, serde_json::Value);
/// One streamed response: its headers and its body, chunk by chunk.
type Streamed = (HeaderMap, mpsc::UnboundedReceiver<bytes::Bytes>);

/// A Runtime API that hands out invocations as the test queues them, each
/// with its own deadline, and passes each streamed response back. With
/// nothing queued, a poll waits, as Lambda freezes the environment between
/// invocations.
struct RuntimeApi {
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    responses: mpsc::UnboundedSender<Streamed>,
}

/// The Runtime API on loopback: its address as `AWS_LAMBDA_RUNTIME_API`
/// takes it (host:port), where to queue invocations, and the responses.
async fn runtime_api() -> (
    String,
    mpsc::UnboundedSender<Invocation>,
    mpsc::UnboundedReceiver<Streamed>,
) {
    let (queue, invocations) = mpsc::unbounded_channel();
    let (responses_tx, responses) = mpsc::unbounded_channel();
    let api = Arc::new(RuntimeApi {
        queue: tokio::sync::Mutex::new(invocations),
        responses: responses_tx,
    });
    let app = axum::Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(invocation_response),
        )
        .with_state(api);
    let url = serve_router(app).await;
    let address = url
        .strip_prefix("http://")
        .expect("an http:// URL")
        .to_owned();
    (address, queue, responses)
}

async fn next_invocation(State(api): State<Arc<RuntimeApi>>) -> axum::response::Response {
    let Some((id, deadline_ms, event)) = api.queue.lock().await.recv().await else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    (
        [
            ("lambda-runtime-aws-request-id", id),
            ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:sandstorm".to_owned(),
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000".to_owned(),
            ),
        ],
        axum::Json(event),
    )
        .into_response()
}

async fn invocation_response(
    State(api): State<Arc<RuntimeApi>>,
    Path(_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = api.responses.send((headers, rx));
    let mut frames = body.into_data_stream();
    while let Some(Ok(chunk)) = frames.next().await {
        let _ = tx.send(chunk);
    }
    StatusCode::ACCEPTED
}

/// What Lambda tells a function about itself and its Runtime API, which
/// listens at `runtime_api` (host:port).
fn lambda_env(runtime_api: String) -> [(&'static str, String); 4] {
    [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api),
        ("AWS_LAMBDA_FUNCTION_NAME", "sandstorm".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
    ]
}

/// A Function URL event (API Gateway payload 2.0) for `POST /query`.
fn function_url_event(body: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/query",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "abcdefghij.lambda-url.us-east-1.on.aws"
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefghij",
            "domainName": "abcdefghij.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abcdefghij",
            "http": {
                "method": "POST",
                "path": "/query",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "lambda-door-test"
            },
            "requestId": "7d2c0b3e-3f1a-4f43-9a27-5c1f6a2b9e10",
            "routeKey": "$default",
            "stage": "$default",
            "time": "27/Nov/2026:06:00:00 +0000",
            "timeEpoch": 1_795_500_000_000u64
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
}

#[tokio::test]
async fn a_short_invocation_deadline_ends_the_run_with_a_timeout_event() {
    // Far more output than the deadline leaves time for.
    let e2b = emulator::start(synthetic(50_000_000, 200)).await;
    // Lambda cuts the stream at the deadline; the run must end itself
    // PLATFORM_MARGIN (10 s) before it, so 13 s leaves it about 3 s.
    let deadline = SystemTime::now() + Duration::from_secs(13);
    let deadline_ms = u64::try_from(
        deadline
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("milliseconds since 1970 fit in u64");
    let (runtime_api, queue, mut responses) = runtime_api().await;
    queue
        .send((
            "a5a0b6a1-5f0e-4b5e-8f6e-0d6c3f0b1c2d".to_owned(),
            deadline_ms,
            function_url_event(&serde_json::json!({"prompt": "go"})),
        ))
        .expect("queue the invocation");

    let mut env = door_env(&e2b);
    env.extend(lambda_env(runtime_api));
    let started = Instant::now();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    command.current_dir(manifest_dir());
    // The runtime logs nothing at start; it is ready when it is running.
    let function = spawn_quiet(command, &env);

    let (headers, mut body) = tokio::time::timeout(Duration::from_secs(30), responses.recv())
        .await
        .expect("the function answers within 30 s")
        .expect("a response");
    assert_eq!(
        headers["lambda-runtime-function-response-mode"], "streaming",
        "a streamed response"
    );
    let needle = b"\"error_type\":\"timeout\"";
    let mut raw = Vec::new();
    let mut timeout_event_at = None;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.recv())
        .await
        .expect("the response ends before the deadline")
    {
        // Only what arrived now (and a needle's length before) can hold a
        // new match; the body is large.
        let from = raw.len().saturating_sub(needle.len());
        raw.extend_from_slice(&chunk);
        if timeout_event_at.is_none() && find_index(&raw[from..], needle).is_some() {
            timeout_event_at = Some(started.elapsed());
        }
    }
    let ended = started.elapsed();

    // The prelude (status and headers as JSON), eight NUL bytes, the body.
    let split = find_index(&raw, &[0u8; 8]).expect("the prelude ends with eight NUL bytes");
    let prelude: serde_json::Value = serde_json::from_slice(&raw[..split]).expect("prelude");
    assert_eq!(prelude["statusCode"], 200, "{prelude}");
    assert_eq!(prelude["headers"]["content-type"], "text/event-stream");
    let body = String::from_utf8_lossy(&raw[split + 8..]).into_owned();
    let all = sse::json_events(&body);
    let (events, done) = sse::split_closing(&all);
    let done = done.expect("the stream ends with its done event");
    assert_eq!(done["status"], "error", "{done}");
    let last = events.last().expect("events");
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["error_type"], "timeout", "{last}");
    assert!(events.len() > 1, "lines streamed before the deadline");

    let at = timeout_event_at.expect("a timeout event");
    assert!(
        at >= Duration::from_secs(2) && ended < Duration::from_secs(12),
        "the run ended itself at {at:?} (stream closed at {ended:?}); the deadline was 13 s \
         away with a 10 s margin"
    );
    // Destroyed before the body ended, not after.
    let stats = e2b.stats();
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (1, 1, 0),
        "{stats:?}"
    );
    drop(function);
}

fn spawn_quiet(mut command: std::process::Command, env: &[(&str, String)]) -> Process {
    command.env_clear();
    for name in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn");
    Process::start_now("bootstrap", command)
}

fn find_index(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// --- The Runtime API connection ---------------------------------------------

/// Every connection the door opens to the Runtime API sends without Nagle's
/// algorithm (patches/lambda_runtime_api_client): with it on, a streamed
/// response's first chunk waited for the ACK of the request head, which the
/// Runtime API's kernel delays 40 ms. `strace` shows the socket options the
/// process sets; the door answers one invocation, so the connections that
/// carry the poll and the streamed response are both seen (one, reused,
/// when the invocation comes while the poll waits).
#[tokio::test]
async fn the_runtime_api_connections_send_without_nagle() {
    let strace = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("strace"))
        .find(|path| path.is_file())
        .expect("strace is not installed; install it with scripts/setup (apt-get install strace)");
    let e2b = emulator::start(synthetic(3, 50)).await;
    let (runtime_api, queue, mut responses) = runtime_api().await;
    let port = runtime_api
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .expect("the Runtime API listens on host:port");

    let dir = tempfile::tempdir().expect("a folder for the trace");
    let trace = dir.path().join("strace.txt");
    let mut env = door_env(&e2b);
    env.extend(lambda_env(runtime_api));
    let mut command = std::process::Command::new(strace);
    command
        .args(["-f", "-qq", "-e", "trace=connect,setsockopt,close", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_bootstrap"))
        .current_dir(manifest_dir());
    let function = spawn_quiet(command, &env);

    let (_, body) = invoke_raw(
        &queue,
        &mut responses,
        function_url_event(&serde_json::json!({"prompt": "go"})),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        find_index(&body, br#""type":"done""#).is_some(),
        "the run streamed to its end: {}",
        String::from_utf8_lossy(&body)
    );
    // Stopping strace (and with it the door) writes out the whole trace.
    drop(function);

    let trace = std::fs::read_to_string(&trace).expect("strace's output");
    let connections = runtime_api_nodelay(&trace, port);
    assert!(
        !connections.is_empty(),
        "the door connected to the Runtime API: {connections:?}\n{trace}"
    );
    assert!(
        connections.iter().all(|nodelay| *nodelay == Some(true)),
        "every Runtime API connection has TCP_NODELAY on: {connections:?}\n{trace}"
    );
}

/// For each connection to `127.0.0.1:port` in an `strace -f` trace of
/// `connect`, `setsockopt` and `close`: the last `TCP_NODELAY` its socket
/// was given while open (before or after the connect), `None` if none.
fn runtime_api_nodelay(trace: &str, port: u16) -> Vec<Option<bool>> {
    use std::collections::HashMap;
    let target = format!("htons({port})");
    // The socket's setting so far, by descriptor, and which connection an
    // open descriptor to the Runtime API is.
    let mut setting: HashMap<&str, bool> = HashMap::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    let mut connections = Vec::new();
    for line in trace.lines() {
        // "PID  call(fd, ...": the pid, then the call.
        let Some(call) = line.split_once(' ').map(|(_, rest)| rest.trim_start()) else {
            continue;
        };
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        let fd = args.split([',', ')']).next().unwrap_or_default().trim();
        match name {
            "setsockopt" if args.contains("TCP_NODELAY") => {
                let on = args.contains("TCP_NODELAY, [1]");
                setting.insert(fd, on);
                if let Some(&index) = open.get(fd) {
                    connections[index] = Some(on);
                }
            }
            "connect" if args.contains(&target) => {
                open.insert(fd, connections.len());
                connections.push(setting.get(fd).copied());
            }
            "close" => {
                setting.remove(fd);
                open.remove(fd);
            }
            _ => {}
        }
    }
    connections
}

// --- A detached run across invocations -------------------------------------

/// A Function URL event for any request.
fn function_url_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut event = function_url_event(body.unwrap_or(&serde_json::Value::Null));
    event["rawPath"] = path.into();
    event["requestContext"]["http"]["method"] = method.into();
    event["requestContext"]["http"]["path"] = path.into();
    for (name, value) in headers {
        event["headers"][*name] = (*value).into();
    }
    match body {
        Some(body) => event["body"] = body.to_string().into(),
        None => {
            event.as_object_mut().map(|e| e.remove("body"));
        }
    }
    event
}

/// One invocation's answer: its prelude (status and headers) and its
/// body, read to the end.
async fn invoke_raw(
    queue: &mpsc::UnboundedSender<Invocation>,
    responses: &mut mpsc::UnboundedReceiver<Streamed>,
    event: serde_json::Value,
    lasts: Duration,
) -> (serde_json::Value, Vec<u8>) {
    let deadline_ms = u64::try_from(
        (SystemTime::now() + lasts)
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    queue
        .send((uuid::Uuid::new_v4().to_string(), deadline_ms, event))
        .expect("queue an invocation");
    let (_, mut body) = tokio::time::timeout(Duration::from_secs(60), responses.recv())
        .await
        .expect("the function answers")
        .expect("a response");
    let mut raw = Vec::new();
    while let Some(chunk) = tokio::time::timeout(lasts + Duration::from_secs(5), body.recv())
        .await
        .expect("the response ends by the deadline")
    {
        raw.extend_from_slice(&chunk);
    }
    let split = find_index(&raw, &[0u8; 8]).expect("the prelude ends with eight NUL bytes");
    let prelude: serde_json::Value = serde_json::from_slice(&raw[..split]).expect("prelude");
    (prelude, raw.split_off(split + 8))
}

/// One invocation's answer: its SSE events (id, JSON; the `detached`
/// event's id is 0) and the raw body.
async fn invoke(
    queue: &mpsc::UnboundedSender<Invocation>,
    responses: &mut mpsc::UnboundedReceiver<Streamed>,
    event: serde_json::Value,
    lasts: Duration,
) -> (serde_json::Value, Vec<(u64, serde_json::Value)>) {
    let (prelude, body) = invoke_raw(queue, responses, event, lasts).await;
    let mut decoder = sse::Decoder::new();
    let events = decoder
        .feed(&body)
        .into_iter()
        .map(|event| {
            let value = event.json();
            let id = if value["type"] == "detached" {
                0
            } else {
                event
                    .id
                    .as_deref()
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| panic!("an event without an id: {value}"))
            };
            (id, value)
        })
        .collect();
    (prelude, events)
}

#[tokio::test]
async fn a_detached_run_outlives_invocations_and_later_ones_read_every_event_once() {
    use common::model_server::{ModelServer, Script};
    // Each invocation's stream detaches 2 s before its 5 s are up; the
    // agent's 9 s command outlasts several.
    const INVOCATION: Duration = Duration::from_secs(5);
    let model = ModelServer::start(Script::Bash {
        command: "sleep 9 && echo later > later.txt".to_owned(),
    })
    .await;
    let work = tempfile::tempdir().expect("emulator folder");
    let mut options = emulator::options();
    options.work_root = Some(work.path().to_owned());
    // The VM's model proxy reaches the model, as a real one does.
    options.egress_open = Some(format!("127.0.0.1:{}", model.port()));
    let e2b = emulator::start_with(options).await;

    let (runtime_api, queue, mut responses) = runtime_api().await;
    let mut env: Vec<(&str, String)> = door_env(&e2b);
    let offline = common::product::offline_env();
    env.extend(offline.iter().map(|(k, v)| (k.as_str(), v.clone())));
    env.extend([
        ("ANTHROPIC_BASE_URL", model.url()),
        ("SANDSTORM_RUN_LINGER", "5".to_owned()),
    ]);
    env.extend(lambda_env(runtime_api));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    command.current_dir(manifest_dir());
    let function = spawn_quiet(command, &env);

    // The first invocation starts the run and detaches before its deadline.
    let query = serde_json::json!({"prompt": "go", "detach": true});
    let (prelude, first) = invoke(
        &queue,
        &mut responses,
        function_url_request(
            "POST",
            "/query",
            &[("content-type", "application/json")],
            Some(&query),
        ),
        INVOCATION,
    )
    .await;
    assert_eq!(
        prelude["statusCode"],
        200,
        "{prelude}\n{}",
        function.output()
    );
    let run_id = first[0].1["run_id"]
        .as_str()
        .expect("a run event first")
        .to_owned();
    assert_eq!(prelude["headers"]["x-run-id"], run_id.as_str());
    let (_, detached) = first.last().cloned().expect("events");
    assert_eq!(detached["type"], "detached", "{first:?}");
    let mut got: Vec<(u64, serde_json::Value)> =
        first.into_iter().filter(|(id, _)| *id > 0).collect();
    assert_eq!(detached["last_event_id"], got.len() as u64);

    // Later invocations read on, each from the last event it was sent.
    let path = format!("/runs/{run_id}/events");
    let mut invocations = 1;
    while got.last().is_none_or(|(_, e)| e["type"] != "done") {
        assert!(invocations < 10, "the run never ended: {got:?}");
        let last = got.last().map_or(0, |(id, _)| *id).to_string();
        let (prelude, events) = invoke(
            &queue,
            &mut responses,
            function_url_request("GET", &path, &[("last-event-id", &last)], None),
            INVOCATION,
        )
        .await;
        assert_eq!(
            prelude["statusCode"],
            200,
            "{prelude}\n{}",
            function.output()
        );
        got.extend(events.into_iter().filter(|(id, _)| *id > 0));
        invocations += 1;
    }
    assert!(
        invocations >= 3,
        "the agent outlasted two invocations: {got:?}\n{}",
        function.output()
    );
    let n = got.len() as u64;
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=n).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        got.last().map(|(_, e)| e["status"].clone()),
        Some("success".into())
    );

    // The run's own log, read from its start while the sandbox lingers:
    // the same events, with the same ids.
    let (_, replay) = invoke(
        &queue,
        &mut responses,
        function_url_request("GET", &path, &[], None),
        INVOCATION,
    )
    .await;
    assert_eq!(replay, got, "the reads add up to the whole log");
    let stats = e2b.settled(Duration::from_secs(10)).await;
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (1, 1, 0),
        "{stats:?}"
    );
    drop(function);
}

// --- The run history in DynamoDB --------------------------------------------

/// The bootstrap under the Runtime API written here, pointed at `e2b` and
/// at the history table on `aws`, and the Runtime API's two ends.
async fn bootstrap_with_history(
    e2b: &common::emulator::RunningEmulator,
    aws: &str,
) -> (
    Process,
    mpsc::UnboundedSender<Invocation>,
    mpsc::UnboundedReceiver<Streamed>,
) {
    bootstrap_with_history_and(e2b, aws, &[]).await
}

/// [`bootstrap_with_history`] with `extra` variables.
async fn bootstrap_with_history_and(
    e2b: &common::emulator::RunningEmulator,
    aws: &str,
    extra: &[(&'static str, String)],
) -> (
    Process,
    mpsc::UnboundedSender<Invocation>,
    mpsc::UnboundedReceiver<Streamed>,
) {
    let (runtime_api, queue, responses) = runtime_api().await;
    let mut env = door_env(e2b);
    env.extend(extra.iter().cloned());
    env.extend(common::moto::aws_env(aws));
    env.extend([(
        "SANDSTORM_HISTORY_TABLE",
        common::moto::HISTORY_TABLE.to_owned(),
    )]);
    env.extend(lambda_env(runtime_api));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    command.current_dir(manifest_dir());
    (spawn_quiet(command, &env), queue, responses)
}

/// A query through the door, read to its end: its status and events.
async fn query_through(
    queue: &mpsc::UnboundedSender<Invocation>,
    responses: &mut mpsc::UnboundedReceiver<Streamed>,
    query: &serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let request = function_url_request(
        "POST",
        "/query",
        &[("content-type", "application/json")],
        Some(query),
    );
    let (prelude, body) = invoke_raw(queue, responses, request, Duration::from_secs(60)).await;
    (prelude, sse::json_events(&String::from_utf8_lossy(&body)))
}

/// `GET path` through the door: its status and JSON body.
async fn get_through(
    queue: &mpsc::UnboundedSender<Invocation>,
    responses: &mut mpsc::UnboundedReceiver<Streamed>,
    path: &str,
) -> (serde_json::Value, serde_json::Value) {
    let request = function_url_request("GET", path, &[], None);
    let (prelude, body) = invoke_raw(queue, responses, request, Duration::from_secs(30)).await;
    (
        prelude["statusCode"].clone(),
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

#[tokio::test]
async fn the_lambda_door_records_its_runs_in_dynamodb_and_answers_from_there() {
    let moto = common::moto::start().await;
    let dynamodb = common::moto::create_history_table(&moto.url).await;
    let e2b = emulator::start(synthetic(5, 200)).await;
    let (function, queue, mut responses) = bootstrap_with_history(&e2b, &moto.url).await;

    let (prelude, events) = query_through(
        &queue,
        &mut responses,
        &serde_json::json!({"prompt": "go", "team_id": "blue"}),
    )
    .await;
    assert_eq!(
        prelude["statusCode"],
        200,
        "{prelude}\n{}",
        function.output()
    );
    let (_, done) = sse::split_closing(&events);
    assert_eq!(
        done.map(|d| d["status"].clone()),
        Some("success".into()),
        "{events:?}"
    );

    // The door lands a run's end before its `done`: the list says how it
    // ended at once.
    let (status, list) = get_through(&queue, &mut responses, "/runs").await;
    assert_eq!(status, 200, "{list}\n{}", function.output());
    let runs = list["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "{list}\n{}", function.output());
    assert_eq!(runs[0]["status"], "succeeded", "{list}");
    let run_id = runs[0]["run_id"].as_str().expect("a run id").to_owned();
    let (status, filtered) = get_through(&queue, &mut responses, "/runs?team_id=red").await;
    assert_eq!(status, 200, "{filtered}");
    assert_eq!(filtered["runs"], serde_json::json!([]), "{filtered}");

    let (status, record) = get_through(&queue, &mut responses, &format!("/runs/{run_id}")).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["prompt"], "go", "{record}");
    assert_eq!(record["labels"], serde_json::json!({"team_id": "blue"}));
    assert!(record["ended_at"].is_string(), "{record}");
    assert!(record["duration_ms"].is_u64(), "{record}");
    assert!(record["sandbox_id"].is_string(), "{record}");
    assert!(record.get("owner").is_none(), "the owner is never shown");

    // The dashboard that reads this history is served by the same door,
    // page and script, as on `ds serve`.
    for (path, kind, holds) in [
        ("/", "text/html", "<title>Sandstorm runs</title>"),
        ("/dashboard/app.js", "javascript", "/runs"),
    ] {
        let request = function_url_request("GET", path, &[], None);
        let (prelude, body) =
            invoke_raw(&queue, &mut responses, request, Duration::from_secs(30)).await;
        assert_eq!(prelude["statusCode"], 200, "{path}: {prelude}");
        let content_type = prelude["headers"]["content-type"]
            .as_str()
            .unwrap_or_default();
        assert!(content_type.contains(kind), "{path}: {prelude}");
        assert!(
            String::from_utf8_lossy(&body).contains(holds),
            "{path} lacks {holds:?}"
        );
    }

    // In the table: one item, whose TTL is the door's default retention
    // (30 days) after its start.
    let item = dynamodb
        .get_item()
        .table_name(common::moto::HISTORY_TABLE)
        .key(
            "run_id",
            aws_sdk_dynamodb::types::AttributeValue::S(run_id.clone()),
        )
        .send()
        .await
        .expect("get the item");
    let item = item.item().expect("the run's item");
    let number = |name: &str| match item.get(name) {
        Some(aws_sdk_dynamodb::types::AttributeValue::N(n)) => n.parse::<u64>().ok(),
        _ => None,
    };
    let created = humantime::parse_rfc3339_weak(record["created_at"].as_str().expect("created"))
        .expect("RFC 3339")
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert_eq!(number("expires_at"), Some(created + 30 * 86_400));
    drop(function);
}

#[tokio::test]
async fn a_history_table_that_is_down_fails_no_run() {
    let moto = common::moto::start().await;
    common::moto::create_history_table(&moto.url).await;
    let url = moto.url.clone();
    // Stopped before the run: every write and read of the history fails.
    drop(moto);
    let e2b = emulator::start(synthetic(5, 200)).await;
    let (function, queue, mut responses) = bootstrap_with_history(&e2b, &url).await;

    let started = Instant::now();
    let (prelude, events) =
        query_through(&queue, &mut responses, &serde_json::json!({"prompt": "go"})).await;
    assert_eq!(
        prelude["statusCode"],
        200,
        "{prelude}\n{}",
        function.output()
    );
    let (lines, done) = sse::split_closing(&events);
    assert_eq!(
        done.map(|d| d["status"].clone()),
        Some("success".into()),
        "{events:?}\n{}",
        function.output()
    );
    assert_eq!(
        lines.last().map(|l| l["type"].clone()),
        Some("result".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the run took {:?}",
        started.elapsed()
    );

    // The log says so.
    let said = tokio::time::timeout(Duration::from_secs(20), async {
        while !function.output().contains("run history: the store") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(said.is_ok(), "no word of the store:\n{}", function.output());

    // A list still answers, with what is live (nothing).
    let (status, list) = get_through(&queue, &mut responses, "/runs").await;
    assert_eq!(status, 200, "{list}\n{}", function.output());
    assert_eq!(list["runs"], serde_json::json!([]), "{list}");
    let stats = e2b.settled(SETTLE).await;
    assert_eq!((stats.created, stats.killed), (1, 1), "{stats:?}");
    drop(function);
}

#[tokio::test]
async fn a_runs_spans_reach_the_collector_before_its_invocation_ends() {
    let e2b = emulator::start(synthetic(20, 100)).await;
    let collector = common::otlp::Receiver::start().await;
    let mut env = door_env(&e2b);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone()));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()));
    let watch = cargo_lambda_watch(&env).await;

    let stream = watch.query(serde_json::json!({"prompt": "go"})).await;
    assert_eq!(stream.status, 200, "{}", watch.proc.output());
    let request_id = stream
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();

    // Read the moment the response is over, when Lambda may freeze the
    // function: every span of the run is here already. The flush waits for
    // the collector's answer, so they came before the response's end; the
    // batch processor on its own would send them five seconds later.
    let spans = collector.spans();
    let root = spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| span["name"] == "sandstorm.run")
        .unwrap_or_else(|| {
            panic!(
                "no run span arrived before the response ended: {spans:?}\n{}",
                watch.proc.output()
            )
        });
    assert_eq!(
        common::otlp::attribute(root, "sandstorm.request.id"),
        Some(serde_json::json!(request_id))
    );
    for name in [
        "sandbox.create",
        "sandbox.upload",
        "sandbox.start",
        "relay",
        "sandbox.destroy",
    ] {
        let span = spans
            .iter()
            .map(|(_, span)| span)
            .find(|span| span["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span: {spans:?}"));
        assert_eq!(
            span["traceId"], root["traceId"],
            "{name} is in another trace"
        );
    }
    // The function's JSON log lines inside the run carry its trace.
    let trace_id = root["traceId"].as_str().expect("a hex trace id");
    assert!(
        watch
            .proc
            .output()
            .contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "no log line carries trace {trace_id}:\n{}",
        watch.proc.output()
    );
    // The metrics went with them.
    assert!(
        collector
            .metric_names()
            .iter()
            .any(|m| m == "sandstorm.runs.finished"),
        "{:?}",
        collector.metric_names()
    );
}

#[tokio::test]
async fn the_lambda_door_keeps_a_runs_events_in_dynamodb_when_asked_to() {
    let moto = common::moto::start().await;
    let dynamodb = common::moto::create_history_table(&moto.url).await;
    let e2b = emulator::start(synthetic(5, 200)).await;
    let (function, queue, mut responses) = bootstrap_with_history_and(
        &e2b,
        &moto.url,
        &[("SANDSTORM_STORE_EVENTS", "1".to_owned())],
    )
    .await;
    let (prelude, live) =
        query_through(&queue, &mut responses, &serde_json::json!({"prompt": "go"})).await;
    assert_eq!(
        prelude["statusCode"],
        200,
        "{prelude}\n{}",
        function.output()
    );
    let (status, list) = get_through(&queue, &mut responses, "/runs").await;
    assert_eq!(status, 200, "{list}\n{}", function.output());
    let run_id = list["runs"][0]["run_id"]
        .as_str()
        .expect("a run id")
        .to_owned();

    // An attached run's sandbox is gone with its end: the door answers
    // from the table, at once (its `done` waited for the write).
    let request = function_url_request("GET", &format!("/runs/{run_id}/events"), &[], None);
    let (prelude, body) =
        invoke_raw(&queue, &mut responses, request, Duration::from_secs(30)).await;
    assert_eq!(
        prelude["statusCode"],
        200,
        "{prelude}\n{}",
        function.output()
    );
    assert_eq!(
        prelude["headers"]["x-events-source"], "history",
        "{prelude}"
    );
    let stored = sse::parse(&String::from_utf8_lossy(&body));
    let ids: Vec<Option<String>> = stored.iter().map(|e| e.id.clone()).collect();
    let expected: Vec<Option<String>> = (1..=live.len()).map(|i| Some(i.to_string())).collect();
    assert_eq!(ids, expected);
    let data: Vec<serde_json::Value> = stored.iter().map(sse::Event::json).collect();
    assert_eq!(data, live);

    // The chunk is an item of the table, with the record's TTL.
    let item = |key: String| {
        dynamodb
            .get_item()
            .table_name(common::moto::HISTORY_TABLE)
            .key("run_id", aws_sdk_dynamodb::types::AttributeValue::S(key))
            .send()
    };
    let record = item(run_id.clone()).await.expect("get the record");
    let chunk = item(format!("{run_id}#events#0"))
        .await
        .expect("get the chunk");
    let ttl = |output: &aws_sdk_dynamodb::operation::get_item::GetItemOutput| {
        output.item().and_then(|i| i.get("expires_at")).cloned()
    };
    assert!(ttl(&chunk).is_some(), "{chunk:?}");
    assert_eq!(ttl(&chunk), ttl(&record));
    drop(function);
}
