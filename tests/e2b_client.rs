//! The E2B client against E2B-protocol servers on loopback.
//!
//! Flows and faults run against the real emulator (`common::emulator`, the `e2b_emulator` crate,
//! in-process, backed by bubblewrap sandboxes) and are checked on its
//! counters. The small `fake` at the bottom stays for what the emulator
//! does not show: every request's exact headers and body, old envd
//! versions, Connect errors at the end of a stream or instead of one, and
//! a stream that ends cleanly but early.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::emulator::{
    self, CreateFault, CreateFaultMode, EmulatorOptions, Knobs, RunningEmulator, Snapshot,
    StreamCut, Synthetic,
};
use common::http::Refused;
use common::keys::E2B_KEY as KEY;
use futures::StreamExt;
use sandstorm::lines::LineSplitter;
use sandstorm::sandbox::e2b::{E2bOptions, E2bProvider, RetryPolicy};
use sandstorm::sandbox::{
    ExitStatus, ProcessEvent, ProcessRef, ProcessSpec, Sandbox, SandboxError, SandboxFile,
    SandboxProvider, SandboxSpec,
};
use sandstorm::secret::Secret;

use fake::{Fake, StartAnswer};

/// Where the template installs its model proxy.
const MODEL_PROXY: &str = "/usr/local/bin/sandstorm-model-proxy";

/// The fake's access tokens start with this; the emulator's are random.
const TOKEN_PREFIX: &str = "envd-token-";

/// Client options for a server at `url`, with waits shrunk so fault tests
/// take milliseconds.
fn options(url: &str) -> E2bOptions {
    let mut options = E2bOptions::local(url, KEY);
    options.template = "sandstorm-test".into();
    options.request_timeout = Duration::from_secs(10);
    options.retry = RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        budget: Duration::from_secs(30),
    };
    options
}

fn provider(url: &str) -> E2bProvider {
    E2bProvider::new(options(url)).expect("client builds")
}

async fn create(provider: &E2bProvider) -> Result<Arc<dyn Sandbox>, SandboxError> {
    provider
        .create(SandboxSpec {
            lifetime: Duration::from_secs(600),
            metadata: BTreeMap::from([("request_id".into(), "req-1".into())]),
            ..SandboxSpec::default()
        })
        .await
}

/// The runner as the run lifecycle starts it: argv, no shell.
fn runner() -> ProcessSpec {
    ProcessSpec {
        cmd: "node".into(),
        args: vec!["/opt/agent-runner/runner.mjs".into()],
        envs: BTreeMap::from([("ANTHROPIC_API_KEY".into(), "sk-ant-test".into())]),
        cwd: "/home/user".into(),
        timeout: Some(Duration::from_secs(30)),
        stdin: false,
        tag: None,
        spend: None,
        spend_record: None,
        callback: None,
    }
}

/// A shell script as a process (for the emulator, which really runs it).
fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        cwd: "/home/user".into(),
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    }
}

fn file(path: &str, content: impl Into<Bytes>) -> SandboxFile {
    SandboxFile {
        path: path.into(),
        content: content.into(),
    }
}

/// Every event of a stream; bounded so a hung stream fails the test.
async fn drain(
    sandbox: &dyn Sandbox,
    process: ProcessSpec,
) -> Vec<Result<ProcessEvent, SandboxError>> {
    let stream = sandbox.start(process).await.expect("process starts");
    tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .expect("stream ends")
}

/// stdout as whole lines, stderr as text, and the exit, from a stream.
fn split(
    events: &[Result<ProcessEvent, SandboxError>],
) -> (Vec<String>, String, Option<ExitStatus>) {
    let mut lines = LineSplitter::new();
    let mut stdout = Vec::new();
    let mut stderr = String::new();
    let mut exit = None;
    for event in events {
        match event {
            Ok(ProcessEvent::Stdout(chunk)) => {
                stdout.extend(lines.push(chunk).expect("short lines"))
            }
            Ok(ProcessEvent::Stderr(chunk)) => stderr.push_str(&String::from_utf8_lossy(chunk)),
            Ok(ProcessEvent::Exited(status)) => exit = Some(status.clone()),
            Err(_) => {}
        }
    }
    stdout.extend(lines.finish());
    let stdout = stdout
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    (stdout, stderr, exit)
}

/// Everything the client logs in this test binary. One global subscriber,
/// because tracing caches per-callsite interest process-wide and a
/// thread-local one misses events when tests run in parallel; tests pick
/// their own lines out by sandbox id, which is unique per fake.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn global() -> &'static Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
            logs
        })
    }

    /// The lines that mention `needle`.
    fn lines_with(&self, needle: &str) -> String {
        let all = String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned();
        all.lines()
            .filter(|line| line.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_no_secrets(text: &str) {
    assert!(!text.contains(KEY), "API key leaked: {text}");
    assert!(!text.contains(TOKEN_PREFIX), "access token leaked: {text}");
    assert!(!text.contains("sk-ant-test"), "process env leaked: {text}");
}

/// An in-process emulator of its own per test, so counters and knobs do
/// not mix between tests.
struct Emu {
    running: RunningEmulator,
    url: String,
}

impl Emu {
    async fn start() -> Emu {
        Emu::with(emulator::options()).await
    }

    async fn with(options: EmulatorOptions) -> Emu {
        let running = emulator::start_with(options).await;
        Emu {
            url: running.url.clone(),
            running,
        }
    }

    fn knobs(&self, knobs: Knobs) {
        self.running.emulator.set_knobs(knobs);
    }

    fn stats(&self) -> Snapshot {
        self.running.stats()
    }

    fn requests(&self, route: &str) -> u64 {
        self.running.requests(route)
    }
}

fn create_fault(mode: CreateFaultMode, count: u32) -> Knobs {
    Knobs {
        create_fault: Some(CreateFault { mode, count }),
        ..Knobs::default()
    }
}

#[tokio::test]
async fn a_run_on_the_emulator_is_create_one_upload_start_and_kill() {
    let emu = Emu::start().await;
    let provider = provider(&emu.url);
    let sandbox = create(&provider).await.expect("created");
    sandbox
        .upload(vec![
            file("/opt/agent-runner/agent_config.json", &b"{}"[..]),
            file("/home/user/data/a.csv", &b"x,y\n1,2\n"[..]),
            file("/home/user/.claude/settings.json", vec![0u8, 255, 1]),
        ])
        .await
        .expect("uploaded");

    // A line printed in two writes a moment apart arrives in two frames.
    let events = drain(
        sandbox.as_ref(),
        sh("cat /home/user/data/a.csv; printf 'half a'; sleep 0.2; printf ' line\n'; echo warn >&2; exit 3"),
    )
    .await;
    let (stdout, stderr, exit) = split(&events);
    assert_eq!(stdout, ["x,y", "1,2", "half a line"]);
    assert_eq!(stderr, "warn\n");
    assert_eq!(exit.expect("exit reported").code, Some(3));
    assert!(matches!(events.last(), Some(Ok(ProcessEvent::Exited(_)))));

    assert_eq!(
        sandbox
            .read_file("/home/user/.claude/settings.json")
            .await
            .expect("downloaded"),
        Bytes::from(vec![0u8, 255, 1])
    );
    sandbox.destroy().await.expect("destroyed");

    let stats = emu.stats();
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));
    assert_eq!(
        stats.requests,
        BTreeMap::from([
            ("create", 1),
            ("upload", 1),
            ("start", 1),
            ("download", 1),
            ("kill", 1)
        ])
    );
}

#[tokio::test]
async fn runner_lines_split_across_frames_reassemble_in_order() {
    let emu = Emu::start().await;
    emu.knobs(Knobs {
        synthetic: Some(Synthetic {
            lines: 300,
            bytes: 777,
        }),
        ..Knobs::default()
    });
    let sandbox = create(&provider(&emu.url)).await.expect("created");
    let events = drain(sandbox.as_ref(), runner()).await;
    let (stdout, _, exit) = split(&events);
    assert_eq!(stdout.len(), 300);
    for (seq, line) in stdout.iter().enumerate() {
        assert_eq!(line.len(), 776, "line {seq} whole");
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(value["seq"], seq, "lines in order");
    }
    assert_eq!(exit.and_then(|e| e.code), Some(0));
    sandbox.destroy().await.expect("destroyed");
}

#[tokio::test]
async fn create_unavailable_twice_is_retried_until_it_succeeds() {
    let emu = Emu::start().await;
    emu.knobs(create_fault(CreateFaultMode::Unavailable, 2));
    let sandbox = create(&provider(&emu.url))
        .await
        .expect("third create succeeds");
    assert_eq!(emu.requests("create"), 3);
    assert_eq!(emu.stats().created, 1);
    sandbox.destroy().await.expect("destroyed");
    assert_eq!(emu.stats().alive, 0);
}

/// A 500 is E2B failing, not E2B busy: as the SDKs do, it is reported at
/// once rather than tried again.
#[tokio::test]
async fn a_create_that_fails_with_500_is_not_retried() {
    let emu = Emu::start().await;
    emu.knobs(create_fault(CreateFaultMode::Error, 2));
    let Err(err) = create(&provider(&emu.url)).await else {
        panic!("created despite the 500");
    };
    assert_eq!(emu.requests("create"), 1);
    assert_eq!(
        err.to_string(),
        "create failed: e2b answered HTTP 500: injected create failure"
    );
}

/// `Should-Retry`, when E2B sends it, overrules the status either way.
#[tokio::test]
async fn should_retry_decides_over_the_status() {
    let fake = Fake::start().await;
    fake.refuse_creates(1, 500, &[("should-retry", "true")]);
    create(&provider(&fake.url))
        .await
        .expect("a 500 marked Should-Retry: true is tried again");
    assert_eq!(fake.count("POST", "/v2/sandboxes"), 2);

    let fake = Fake::start().await;
    fake.refuse_creates(1, 503, &[("should-retry", "false")]);
    let Err(err) = create(&provider(&fake.url)).await else {
        panic!("a 503 marked Should-Retry: false was tried again");
    };
    assert_eq!(fake.count("POST", "/v2/sandboxes"), 1);
    assert!(err.to_string().contains("HTTP 503"), "{err}");
}

/// The tests' backoff is milliseconds; E2B's `Retry-After: 1` is a second.
#[tokio::test]
async fn a_rate_limited_create_waits_as_long_as_retry_after_says() {
    let fake = Fake::start().await;
    fake.refuse_creates(1, 429, &[("retry-after", "1")]);
    create(&provider(&fake.url))
        .await
        .expect("created on the second try");
    let creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v2/sandboxes")
        .collect();
    assert_eq!(creates.len(), 2);
    let waited = creates[1].at - creates[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

/// A process start is not idempotent: a second try could run the agent
/// twice. So neither a status that would get a create retried (503) nor a
/// connection cut once the request is sent makes us send it again.
#[tokio::test]
async fn a_failed_start_is_not_sent_again() {
    let fake = Fake::start().await;
    let provider = provider(&fake.url);
    let sandbox = create(&provider).await.expect("created");

    fake.script(StartAnswer::Refused {
        status: 503,
        code: "unavailable",
        message: "envd is busy",
    });
    let Err(err) = sandbox.start(runner()).await else {
        panic!("started despite the 503");
    };
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(fake.count("POST", "/process.Process/Start"), 1);

    fake.script(StartAnswer::aborts_mid_frame());
    let events = drain(sandbox.as_ref(), runner()).await;
    assert!(
        matches!(events.last(), Some(Err(_))),
        "a cut start ends in an error: {events:?}"
    );
    // The runner was started once more, for the second try (its model
    // proxy beside it at most once, which is not the runner's start).
    let started: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/process.Process/Start")
        .map(|r| fake::start_request(r).process.cmd)
        .filter(|cmd| cmd != MODEL_PROXY)
        .collect();
    assert_eq!(started, ["node", "node"], "{started:?}");
    sandbox.destroy().await.expect("destroyed");
}

#[tokio::test]
async fn create_rate_limited_every_time_gives_up_naming_429() {
    let emu = Emu::start().await;
    emu.knobs(create_fault(CreateFaultMode::RateLimit, 10));
    let Err(err) = create(&provider(&emu.url)).await else {
        panic!("created despite rate limiting");
    };
    assert_eq!(emu.requests("create"), 3, "attempts are bounded");
    assert_eq!(emu.stats().created, 0);
    assert_eq!(
        err.to_string(),
        "create was rate limited by e2b (HTTP 429); gave up after 3 attempts"
    );
    assert!(matches!(err.cause(), SandboxError::RateLimited { .. }));
    assert_no_secrets(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn create_that_hangs_times_out_per_attempt_then_fails() {
    let emu = Emu::start().await;
    emu.knobs(create_fault(CreateFaultMode::Hang, 10));
    let mut options = options(&emu.url);
    options.request_timeout = Duration::from_millis(300);
    options.retry.attempts = 2;
    let provider = E2bProvider::new(options).expect("client builds");
    // A liveness guard, not a timing assertion.
    let outcome = tokio::time::timeout(Duration::from_secs(30), create(&provider)).await;
    let Ok(Err(err)) = outcome else {
        panic!("create should fail on its own, not hang or succeed");
    };
    assert!(
        matches!(err.cause(), SandboxError::TimedOut { op: "create", .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "create timed out after 300ms; gave up after 2 attempts"
    );
    assert_eq!(emu.requests("create"), 2);
}

#[tokio::test]
async fn a_template_without_the_model_proxy_fails_the_start_and_names_the_way_out() {
    let mut options = emulator::options();
    options.root_commands.clear();
    let emu = Emu::with(options).await;
    let sandbox = create(&provider(&emu.url)).await.expect("created");
    // The runner starts; its stream ends with why it cannot go on.
    let events = drain(sandbox.as_ref(), runner()).await;
    let Some(Err(err)) = events.last() else {
        panic!("ran without a model proxy for the key: {events:?}");
    };
    let text = err.to_string();
    assert!(text.contains(MODEL_PROXY), "{text}");
    assert!(text.contains("SANDSTORM_E2B_MODEL_PROXY=0"), "{text}");
    assert_no_secrets(&format!("{err} {err:?}"));
    sandbox.destroy().await.expect("destroyed");
}

#[tokio::test]
async fn a_rejected_key_is_not_retried() {
    let mut options = emulator::options();
    options.api_key = Secret::new("e2b_someoneelse");
    let emu = Emu::with(options).await;
    let Err(err) = create(&provider(&emu.url)).await else {
        panic!("created with a rejected key");
    };
    assert!(matches!(err, SandboxError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.to_string(), "e2b rejected the API key (HTTP 401)");
    assert_no_secrets(&format!("{err} {err:?}"));
    assert_eq!(emu.stats().created, 0);
    // The emulator does not count refused requests; the fake does.
    let fake = Fake::start().await;
    fake.reject_keys();
    let Err(err) = create(&provider(&fake.url)).await else {
        panic!("the fake created with a rejected key");
    };
    assert!(matches!(err, SandboxError::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        fake.count("POST", "/v2/sandboxes"),
        1,
        "a 401 is not retried"
    );
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_in_stream_cut() {
    let emu = Emu::start().await;
    let sandbox = create(&provider(&emu.url)).await.expect("created");
    emu.knobs(Knobs {
        stream_cut: Some(StreamCut {
            after_frames: 1,
            count: 1,
        }),
        ..Knobs::default()
    });
    let events = drain(
        sandbox.as_ref(),
        sh("echo one; sleep 0.3; echo two; sleep 0.3; echo three"),
    )
    .await;
    let (stdout, _, exit) = split(&events);
    assert_eq!(stdout, ["one"], "output before the cut arrives");
    assert!(exit.is_none());
    assert!(
        matches!(events.last(), Some(Err(SandboxError::StreamCut))),
        "{events:?}"
    );
    sandbox.destroy().await.expect("destroyed");
    let stats = emu.stats();
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));
}

#[tokio::test]
async fn a_kill_that_fails_once_is_retried_and_logged() {
    let emu = Emu::start().await;
    let logs = Logs::global();
    let sandbox = create(&provider(&emu.url)).await.expect("created");
    emu.knobs(Knobs {
        kill_failures: 1,
        ..Knobs::default()
    });
    sandbox.destroy().await.expect("second kill works");
    assert_eq!(emu.requests("kill"), 2);
    let stats = emu.stats();
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));

    let logged = logs.lines_with(sandbox.id());
    assert!(
        logged.contains("WARN") && logged.contains("injected kill failure"),
        "the failed kill is logged with the sandbox id: {logged}"
    );
    // Nor anywhere in what this binary logged so far, whatever ran first.
    assert_no_secrets(&logs.lines_with(""));
}

#[tokio::test]
async fn a_kill_that_keeps_failing_is_an_error_after_the_bound() {
    let emu = Emu::start().await;
    let sandbox = create(&provider(&emu.url)).await.expect("created");
    emu.knobs(Knobs {
        kill_failures: 10,
        ..Knobs::default()
    });
    let err = sandbox.destroy().await.expect_err("kill keeps failing");
    assert_eq!(emu.requests("kill"), 3);
    assert_eq!(emu.stats().alive, 1);
    assert_eq!(
        err.to_string(),
        "destroy failed: e2b answered HTTP 503: injected kill failure; gave up after 3 attempts"
    );
    emu.knobs(Knobs::default());
    sandbox.destroy().await.expect("works once E2B recovers");
    assert_eq!(emu.stats().alive, 0);
}

#[tokio::test]
async fn killing_a_sandbox_that_is_already_gone_succeeds_at_once() {
    let emu = Emu::start().await;
    let sandbox = create(&provider(&emu.url)).await.expect("created");
    sandbox.destroy().await.expect("destroyed");
    sandbox.destroy().await.expect("a 404 means already gone");
    assert_eq!(emu.requests("kill"), 2);
    assert_eq!(emu.stats().killed, 1);
}

#[tokio::test]
async fn a_missing_file_is_an_error_naming_the_status() {
    let emu = Emu::start().await;
    let sandbox = create(&provider(&emu.url)).await.expect("created");
    let err = sandbox
        .read_file("/home/user/nope")
        .await
        .expect_err("no such file");
    assert!(
        matches!(
            err,
            SandboxError::Status {
                status: 404,
                op: "read_file",
                ..
            }
        ),
        "{err:?}"
    );
    sandbox.destroy().await.expect("destroyed");
}

// --- Against the fake: the exact wire shape, and faults the emulator lacks.

#[tokio::test]
async fn the_wire_shape_of_a_run_matches_the_sdks() {
    let fake = Fake::start().await;
    fake.script(StartAnswer::runner_lines(
        &[
            r#"{"type":"system","subtype":"init"}"#,
            r#"{"type":"assistant","text":"hi"}"#,
            r#"{"type":"result","is_error":false}"#,
        ],
        "node: warning\n",
        3,
    ));
    let provider = provider(&fake.url);
    let sandbox = create(&provider).await.expect("created");

    let files = vec![
        SandboxFile {
            path: "/opt/agent-runner/agent_config.json".into(),
            content: Bytes::from_static(b"{\"model\":\"m\"}"),
        },
        SandboxFile {
            path: "/home/user/data/a.csv".into(),
            content: Bytes::from_static(b"x,y\n1,2\n"),
        },
        SandboxFile {
            path: "/home/user/.claude/settings.json".into(),
            content: Bytes::from(vec![0u8, 255, 1]),
        },
    ];
    sandbox.upload(files.clone()).await.expect("uploaded");
    let events = drain(sandbox.as_ref(), runner()).await;
    let (stdout, stderr, exit) = split(&events);
    assert_eq!(
        stdout,
        [
            r#"{"type":"system","subtype":"init"}"#,
            r#"{"type":"assistant","text":"hi"}"#,
            r#"{"type":"result","is_error":false}"#
        ]
    );
    assert_eq!(stderr, "node: warning\n");
    let exit = exit.expect("exit reported");
    assert_eq!(exit.code, Some(3));
    assert!(!exit.success());
    assert!(
        matches!(events.last(), Some(Ok(ProcessEvent::Exited(_)))),
        "exit is last"
    );

    assert_eq!(
        sandbox
            .read_file("/home/user/data/a.csv")
            .await
            .expect("downloaded"),
        Bytes::from_static(b"x,y\n1,2\n")
    );
    sandbox.destroy().await.expect("destroyed");

    let seen = fake.requests();
    let calls: Vec<String> = seen
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let id = sandbox.id();
    assert_eq!(
        calls,
        [
            "POST /v2/sandboxes".to_owned(),
            "POST /files".to_owned(),
            "POST /process.Process/Start".to_owned(),
            "POST /process.Process/Start".to_owned(),
            "GET /files".to_owned(),
            format!("DELETE /sandboxes/{id}"),
        ]
    );
    assert_eq!(fake.alive(), 0);

    // Every request says who we are.
    for request in &seen {
        assert!(
            request.header("user-agent").starts_with("sandstorm/"),
            "{request:?}"
        );
    }

    // Control plane: the key, the template, the lifetime in seconds.
    let create = &seen[0];
    assert_eq!(create.header("x-api-key"), KEY);
    let body: serde_json::Value = serde_json::from_slice(&create.body).expect("json body");
    assert_eq!(body["templateID"], "sandstorm-test");
    assert_eq!(body["timeout"], 600);
    // v2 sandboxes are always secure; the SDKs send no `secure` there.
    assert_eq!(body.get("secure"), None, "{body}");
    // Absent means allowed, as the SDKs leave it.
    assert_eq!(body.get("allow_internet_access"), None, "{body}");
    assert!(!create.header("idempotency-key").is_empty());
    assert_eq!(body["metadata"]["request_id"], "req-1");
    assert_eq!(seen[5].header("x-api-key"), KEY);

    // envd: routed by header and authorized by the token create returned;
    // never the API key.
    let token = format!("{TOKEN_PREFIX}{id}");
    for envd in &seen[1..5] {
        assert_eq!(envd.header("e2b-sandbox-id"), id);
        assert_eq!(envd.header("e2b-sandbox-port"), "49983");
        assert_eq!(envd.header("x-access-token"), token);
        assert_eq!(envd.header("x-api-key"), "");
    }

    // One upload carried all three files, each named by its full path.
    let upload = &seen[1];
    assert_eq!(
        upload.query, None,
        "several files: no path or username query"
    );
    let parts = fake::multipart_files(upload);
    let sent: Vec<(String, Bytes)> = files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone()))
        .collect();
    assert_eq!(parts, sent);

    // The process: Connect streaming headers, argv as given, no shell.
    let start = &seen[2];
    assert_eq!(start.header("content-type"), "application/connect+json");
    assert_eq!(start.header("connect-protocol-version"), "1");
    assert_eq!(start.header("connect-timeout-ms"), "30000");
    assert!(
        start
            .header("keepalive-ping-interval")
            .parse::<u64>()
            .is_ok()
    );
    let request = fake::start_request(start);
    assert_eq!(request.process.cmd, "node");
    assert_eq!(request.process.args, ["/opt/agent-runner/runner.mjs"]);
    assert_eq!(request.process.cwd.as_deref(), Some("/home/user"));
    // As the SDKs send it: no stdin pipe left open.
    assert_eq!(request.stdin, Some(false));
    // As the template's default user (no Basic user named), holding a
    // placeholder that points at the model proxy, never the key.
    assert_eq!(start.header("authorization"), "");
    let placeholder = &request.process.envs["ANTHROPIC_API_KEY"];
    assert!(
        placeholder.starts_with("sk-ant-sandstorm-placeholder-"),
        "{placeholder}"
    );
    assert_eq!(
        request.process.envs["ANTHROPIC_BASE_URL"],
        "http://127.0.0.1:880"
    );

    // Then the template's model proxy, as root, with the key, the
    // placeholder it answers to and the runner's pid (which the fake's
    // start event gave), whose end ends it.
    let proxy = &seen[3];
    assert_eq!(proxy.header("authorization"), "Basic cm9vdDo=");
    let proxy = fake::start_request(proxy).process;
    assert_eq!(proxy.cmd, MODEL_PROXY);
    assert_eq!(proxy.envs["ANTHROPIC_API_KEY"], "sk-ant-test");
    assert_eq!(&proxy.envs["SANDSTORM_PROXY_TOKEN"], placeholder);
    assert_eq!(proxy.envs["SANDSTORM_PROXY_WATCH_PID"], "4242");
}

#[tokio::test]
async fn one_create_sends_the_same_idempotency_key_on_every_retry() {
    let fake = Fake::start().await;
    fake.rate_limit_creates(2);
    let provider = provider(&fake.url);
    create(&provider).await.expect("created on the third try");
    create(&provider).await.expect("a second create");
    let keys: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/sandboxes")
        .map(|r| r.header("idempotency-key").to_owned())
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(!keys[0].is_empty());
    // The SDKs' rule for a key: lowercase letters, digits and hyphens.
    assert!(
        keys[0]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{keys:?}"
    );
    assert_eq!(
        (&keys[1], &keys[2]),
        (&keys[0], &keys[0]),
        "one key per create"
    );
    assert_ne!(keys[2], keys[3], "a fresh key for a new create");
}

#[tokio::test]
async fn a_run_longer_than_the_plan_allows_is_created_at_the_limit_and_extended() {
    // An hour's request plus grace against a plan limit of an hour: create
    // must ask for the hour, which E2B accepts, not 3660 s, which it refuses.
    let fake = Fake::start().await;
    fake.limit_timeout(3600);
    let provider = provider(&fake.url);
    let sandbox = provider
        .create(SandboxSpec {
            lifetime: Duration::from_secs(3660),
            ..SandboxSpec::default()
        })
        .await
        .expect("created within the plan's limit");
    let body: serde_json::Value =
        serde_json::from_slice(&fake.requests()[0].body).expect("json body");
    assert_eq!(body["timeout"], 3600);
    sandbox.destroy().await.expect("destroyed");

    // With a 2 s limit, a 5 s lifetime is created for 2 s and extended
    // twice, each time for at most the limit, before it runs out.
    let fake = Fake::start().await;
    fake.limit_timeout(2);
    let mut options = options(&fake.url);
    options.max_timeout = Duration::from_secs(2);
    let provider = E2bProvider::new(options).expect("client builds");
    let sandbox = provider
        .create(SandboxSpec {
            lifetime: Duration::from_secs(5),
            ..SandboxSpec::default()
        })
        .await
        .expect("created");
    let id = sandbox.id().to_owned();
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let extensions: Vec<serde_json::Value> = fake
        .requests()
        .iter()
        .filter(|r| r.path == format!("/sandboxes/{id}/timeout"))
        .map(|r| serde_json::from_slice(&r.body).expect("json body"))
        .collect();
    assert_eq!(
        extensions,
        [
            serde_json::json!({"timeout": 2}),
            serde_json::json!({"timeout": 2})
        ]
    );
    sandbox.destroy().await.expect("destroyed");
    // Destroyed: no more extensions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.count("POST", &format!("/sandboxes/{id}/timeout")), 2);
}

#[tokio::test]
async fn an_envd_older_than_0_1_0_is_refused_and_its_sandbox_killed() {
    let fake = Fake::start().await;
    fake.set_envd_version("0.0.9");
    let Err(err) = create(&provider(&fake.url)).await else {
        panic!("used a sandbox whose envd is too old");
    };
    let message = err.to_string();
    assert!(message.contains("0.0.9"), "{message}");
    assert!(message.contains("0.1.0"), "{message}");
    assert_eq!(fake.count("DELETE", "/sandboxes/sbx1"), 1);
    assert_eq!(fake.alive(), 0);
}

#[tokio::test]
async fn debug_mode_neither_creates_nor_kills() {
    let fake = Fake::start().await;
    let mut options = options(&fake.url);
    options.debug = true;
    let provider = E2bProvider::new(options).expect("client builds");
    let sandbox = create(&provider).await.expect("the local stack's sandbox");
    assert_eq!(sandbox.id(), "debug_sandbox_id");
    sandbox.destroy().await.expect("destroyed");
    assert_eq!(fake.requests().len(), 0, "{:?}", fake.requests());
}

#[tokio::test]
async fn a_request_key_overrides_the_configured_one_for_create_and_delete() {
    let fake = Fake::start().await;
    let provider = provider(&fake.url);
    let sandbox = provider
        .create(SandboxSpec {
            credential: Some(Secret::new("e2b_feedface")),
            ..Default::default()
        })
        .await
        .expect("created");
    sandbox.destroy().await.expect("destroyed");
    let seen = fake.requests();
    assert_eq!(seen[0].header("x-api-key"), "e2b_feedface");
    assert_eq!(seen[1].header("x-api-key"), "e2b_feedface");
    // No lifetime asked for: the default, not E2B's 15 s.
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json body");
    assert_eq!(body["timeout"], 300);
}

#[tokio::test]
async fn a_stream_that_stops_before_the_exit_ends_in_stream_cut() {
    let fake = Fake::start().await;
    let provider = provider(&fake.url);

    for answer in [StartAnswer::ends_early(), StartAnswer::aborts_mid_frame()] {
        fake.script(answer);
        let sandbox = create(&provider).await.expect("created");
        let events = drain(sandbox.as_ref(), runner()).await;
        let (stdout, _, exit) = split(&events);
        assert_eq!(
            stdout,
            [r#"{"type":"system"}"#],
            "output before the cut arrives"
        );
        assert!(exit.is_none());
        assert!(
            matches!(events.last(), Some(Err(SandboxError::StreamCut))),
            "{events:?}"
        );
        sandbox.destroy().await.expect("destroyed");
    }
    assert_eq!(fake.alive(), 0);
}

#[tokio::test]
async fn an_envd_error_at_the_end_of_the_stream_is_reported() {
    let fake = Fake::start().await;
    fake.script(StartAnswer::end_of_stream_error(
        "invalid_argument",
        "cwd does not exist",
    ));
    let sandbox = create(&provider(&fake.url)).await.expect("created");
    let events = drain(sandbox.as_ref(), runner()).await;
    let [Err(err)] = events.as_slice() else {
        panic!("expected one error, got {events:?}");
    };
    assert_eq!(
        err.to_string(),
        "start failed: e2b answered HTTP 400: invalid_argument: cwd does not exist"
    );
}

#[tokio::test]
async fn a_refused_start_reports_status_and_connect_message() {
    let fake = Fake::start().await;
    fake.script(StartAnswer::Refused {
        status: 401,
        code: "unauthenticated",
        message: "invalid access token",
    });
    let provider = provider(&fake.url);
    let sandbox = create(&provider).await.expect("created");
    let Err(err) = sandbox.start(runner()).await else {
        panic!("start succeeded");
    };
    assert!(
        matches!(err, SandboxError::Status { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "start failed: e2b answered HTTP 401: unauthenticated: invalid access token"
    );
    assert_no_secrets(&format!("{err} {err:?} {provider:?}"));
}

#[tokio::test]
async fn an_upload_cut_off_is_tried_once_more() {
    let fake = Fake::start().await;
    let sandbox = create(&provider(&fake.url)).await.expect("created");
    let files = || {
        vec![
            file("/home/user/a", &b"a"[..]),
            file("/home/user/b", &b"b"[..]),
        ]
    };

    fake.break_uploads(1);
    sandbox.upload(files()).await.expect("the second try works");
    assert_eq!(fake.count("POST", "/files"), 2);
    assert_eq!(sandbox.read_file("/home/user/b").await.expect("read"), "b");

    fake.break_uploads(2);
    let err = sandbox.upload(files()).await.expect_err("broken twice");
    assert!(
        matches!(err, SandboxError::Transport { op: "upload", .. }),
        "{err:?}"
    );
    assert_eq!(fake.count("POST", "/files"), 4, "only one retry");
    assert_no_secrets(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn one_file_is_uploaded_with_its_path_in_the_query_like_the_sdks() {
    let fake = Fake::start().await;
    let sandbox = create(&provider(&fake.url)).await.expect("created");
    sandbox
        .upload(vec![SandboxFile {
            path: "/home/user/only.txt".into(),
            content: Bytes::from_static(b"one"),
        }])
        .await
        .expect("uploaded");
    let upload = &fake.requests()[1];
    assert_eq!(
        upload.query.as_deref(),
        Some("path=%2Fhome%2Fuser%2Fonly.txt")
    );
    assert_eq!(
        sandbox
            .read_file("/home/user/only.txt")
            .await
            .expect("downloaded"),
        Bytes::from_static(b"one")
    );
}

#[tokio::test]
async fn an_old_envd_is_told_the_user_explicitly() {
    let fake = Fake::start().await;
    fake.set_envd_version("0.3.0");
    fake.script(StartAnswer::runner_lines(&["ok"], "", 0));
    let sandbox = create(&provider(&fake.url)).await.expect("created");
    sandbox
        .upload(vec![
            SandboxFile {
                path: "/home/user/a".into(),
                content: Bytes::from_static(b"a"),
            },
            SandboxFile {
                path: "/home/user/b".into(),
                content: Bytes::from_static(b"b"),
            },
        ])
        .await
        .expect("uploaded");
    let events = drain(sandbox.as_ref(), runner()).await;
    assert_eq!(split(&events).2.and_then(|e| e.code), Some(0));
    let seen = fake.requests();
    assert_eq!(seen[1].query.as_deref(), Some("username=user"));
    assert_eq!(seen[2].header("authorization"), "Basic dXNlcjo=");
}

#[tokio::test]
async fn an_unreachable_e2b_is_a_transport_error_after_retries() {
    // Nothing answers there.
    let nothing = Refused::new();
    let mut options = E2bOptions::local(&nothing.url(), KEY);
    options.retry = RetryPolicy {
        attempts: 2,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        budget: Duration::from_secs(30),
    };
    let provider = E2bProvider::new(options).expect("client builds");
    let Err(err) = provider.create(SandboxSpec::default()).await else {
        panic!("created against nothing");
    };
    assert!(
        matches!(err.cause(), SandboxError::Transport { op: "create", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("2 attempts"), "{err}");
    assert_no_secrets(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn a_start_that_cannot_reach_envd_is_a_transport_error_naming_the_cause() {
    let fake = Fake::start().await;
    let nothing = Refused::new();
    let mut options = options(&fake.url);
    options.sandbox_url = Some(nothing.url());
    let provider = E2bProvider::new(options).expect("client builds");
    let sandbox = create(&provider).await.expect("created");
    let Err(err) = sandbox.start(runner()).await else {
        panic!("started a process on nothing");
    };
    let SandboxError::Transport {
        op: "start",
        message,
    } = &err
    else {
        panic!("expected a transport error, got {err:?}");
    };
    assert!(message.contains("refused"), "{message}");
    assert_no_secrets(&format!("{err} {err:?}"));
    sandbox.destroy().await.expect("destroyed");
}

/// A small E2B: both planes on one loopback port, every request recorded
/// (refused ones too), scripted process answers.
mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::Duration;

    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::{Path, Query, Request, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{delete, post};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use bytes::Bytes;
    use e2b_wire::connect::{FLAG_END_STREAM, FLAG_MESSAGE, FrameDecoder, encode};
    use e2b_wire::envd::StartRequest;
    use futures::StreamExt as _;
    use serde_json::json;

    use super::TOKEN_PREFIX;

    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub method: String,
        pub path: String,
        pub query: Option<String>,
        pub headers: HeaderMap,
        pub body: Bytes,
        /// When it arrived, to tell how long a client waited between tries.
        pub at: std::time::Instant,
    }

    impl Seen {
        /// A header's value, or "" when absent.
        pub(crate) fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        }
    }

    /// What `process.Process/Start` answers.
    #[derive(Debug, Clone)]
    pub(crate) enum StartAnswer {
        /// HTTP 200 with these body chunks, then `abort` a transport error.
        Stream { chunks: Vec<Bytes>, abort: bool },
        /// A Connect error answer.
        Refused {
            status: u16,
            code: &'static str,
            message: &'static str,
        },
    }

    impl StartAnswer {
        /// start, the lines on stdout cut into frames that split lines, a
        /// keepalive, stderr, the end with `code`, end of stream; the body
        /// cut into chunks that split frames.
        pub(crate) fn runner_lines(lines: &[&str], stderr: &str, code: i32) -> Self {
            let stdout: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut frames = vec![message(json!({"event": {"start": {"pid": 4242}}}))];
            for piece in stdout.as_bytes().chunks(11) {
                frames.push(data("stdout", piece));
            }
            frames.push(message(json!({"event": {"keepalive": {}}})));
            if !stderr.is_empty() {
                frames.push(data("stderr", stderr.as_bytes()));
            }
            frames.push(message(end(code)));
            frames.push(encode(FLAG_END_STREAM, b"{}"));
            StartAnswer::Stream {
                chunks: rechunk(&frames, 13),
                abort: false,
            }
        }

        /// A line of output, then the body ends cleanly without an `end`.
        pub(crate) fn ends_early() -> Self {
            let frames = [
                message(json!({"event": {"start": {"pid": 1}}})),
                data("stdout", b"{\"type\":\"system\"}\n"),
            ];
            StartAnswer::Stream {
                chunks: rechunk(&frames, 64),
                abort: false,
            }
        }

        /// A line of output, half a frame, then the connection breaks.
        pub(crate) fn aborts_mid_frame() -> Self {
            let frames = [
                message(json!({"event": {"start": {"pid": 1}}})),
                data("stdout", b"{\"type\":\"system\"}\n"),
            ];
            let mut chunks = rechunk(&frames, 1024);
            let next = data("stdout", b"{\"type\":\"assistant\"}\n");
            chunks.push(next.slice(..next.len() / 2));
            StartAnswer::Stream {
                chunks,
                abort: true,
            }
        }

        pub(crate) fn end_of_stream_error(code: &str, text: &str) -> Self {
            let frames = [
                message(json!({"event": {"start": {"pid": 1}}})),
                encode(
                    FLAG_END_STREAM,
                    json!({"error": {"code": code, "message": text}})
                        .to_string()
                        .as_bytes(),
                ),
            ];
            StartAnswer::Stream {
                chunks: rechunk(&frames, 1024),
                abort: false,
            }
        }
    }

    #[allow(clippy::needless_pass_by_value, reason = "callers pass json! literals")]
    fn message(value: serde_json::Value) -> Bytes {
        encode(FLAG_MESSAGE, value.to_string().as_bytes())
    }

    fn data(stream: &str, bytes: &[u8]) -> Bytes {
        message(json!({"event": {"data": {stream: BASE64.encode(bytes)}}}))
    }

    /// An `end` event as envd writes it: proto JSON drops a zero exit code.
    fn end(code: i32) -> serde_json::Value {
        let status = format!("exit status {code}");
        if code == 0 {
            json!({"event": {"end": {"exited": true, "status": status}}})
        } else {
            json!({"event": {"end": {"exitCode": code, "exited": true, "status": status, "error": status}}})
        }
    }

    fn rechunk(frames: &[Bytes], size: usize) -> Vec<Bytes> {
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        wire.chunks(size).map(Bytes::copy_from_slice).collect()
    }

    #[derive(Debug)]
    struct World {
        requests: Vec<Seen>,
        envd_version: String,
        /// Answer create with 401.
        reject_keys: bool,
        /// How the next creates are refused, first first: a status and
        /// headers.
        refused_creates: std::collections::VecDeque<(u16, Vec<(&'static str, &'static str)>)>,
        /// The plan's longest lifetime in seconds, as E2B enforces it.
        max_timeout: Option<u64>,
        /// Break the connection of this many next uploads.
        broken_uploads: u32,
        start: StartAnswer,
        next_id: u32,
        /// Live sandboxes and their files.
        alive: BTreeMap<String, BTreeMap<String, Bytes>>,
    }

    #[derive(Clone)]
    pub(crate) struct Fake {
        pub(crate) url: String,
        world: Arc<Mutex<World>>,
    }

    impl Fake {
        pub(crate) async fn start() -> Fake {
            let world = Arc::new(Mutex::new(World {
                requests: Vec::new(),
                envd_version: "0.5.7".into(),
                reject_keys: false,
                refused_creates: Default::default(),
                max_timeout: None,
                broken_uploads: 0,
                start: StartAnswer::runner_lines(&[], "", 0),
                next_id: 0,
                alive: BTreeMap::new(),
            }));
            let app = Router::new()
                .route("/v2/sandboxes", post(create))
                .route("/sandboxes/{id}", delete(kill))
                .route("/sandboxes/{id}/timeout", post(set_timeout))
                .route("/files", post(upload).get(download))
                .route("/process.Process/Start", post(start))
                .layer(middleware::from_fn_with_state(world.clone(), record))
                .with_state(world.clone());
            let url = crate::common::http::serve_router(app).await;
            Fake { url, world }
        }

        fn world(&self) -> MutexGuard<'_, World> {
            self.world.lock().expect("fake state")
        }

        pub(crate) fn requests(&self) -> Vec<Seen> {
            self.world().requests.clone()
        }

        pub(crate) fn count(&self, method: &str, path: &str) -> usize {
            self.world()
                .requests
                .iter()
                .filter(|r| r.method == method && r.path == path)
                .count()
        }

        pub(crate) fn alive(&self) -> usize {
            self.world().alive.len()
        }

        pub(crate) fn break_uploads(&self, times: u32) {
            self.world().broken_uploads = times;
        }

        pub(crate) fn reject_keys(&self) {
            self.world().reject_keys = true;
        }

        pub(crate) fn rate_limit_creates(&self, times: u32) {
            self.refuse_creates(times, 429, &[]);
        }

        /// Refuse the next `times` creates with `status` and `headers`.
        pub(crate) fn refuse_creates(
            &self,
            times: u32,
            status: u16,
            headers: &[(&'static str, &'static str)],
        ) {
            let mut world = self.world();
            for _ in 0..times {
                world.refused_creates.push_back((status, headers.to_vec()));
            }
        }

        pub(crate) fn limit_timeout(&self, seconds: u64) {
            self.world().max_timeout = Some(seconds);
        }

        pub(crate) fn set_envd_version(&self, version: &str) {
            self.world().envd_version = version.into();
        }

        pub(crate) fn script(&self, answer: StartAnswer) {
            self.world().start = answer;
        }
    }

    type Shared = State<Arc<Mutex<World>>>;

    fn lock(world: &Arc<Mutex<World>>) -> MutexGuard<'_, World> {
        world.lock().expect("fake state")
    }

    /// Records the request (buffering its body), then hands it on.
    async fn record(State(world): Shared, request: Request, next: Next) -> Response {
        let (parts, body) = request.into_parts();
        let body = to_bytes(body, usize::MAX).await.expect("request body");
        lock(&world).requests.push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
            at: std::time::Instant::now(),
        });
        next.run(Request::from_parts(parts, Body::from(body))).await
    }

    fn e2b_error(status: u16, message: &str) -> Response {
        let status = StatusCode::from_u16(status).expect("status");
        (
            status,
            axum::Json(json!({"code": status.as_u16(), "message": message})),
        )
            .into_response()
    }

    /// E2B's refusal of a lifetime past the plan's limit.
    fn too_long(w: &World, body: &[u8]) -> Option<Response> {
        let asked: serde_json::Value = serde_json::from_slice(body).ok()?;
        let limit = w.max_timeout?;
        (asked["timeout"].as_u64()? > limit).then(|| {
            e2b_error(
                400,
                &format!("Timeout cannot be greater than {} hours", limit / 3600),
            )
        })
    }

    async fn create(State(world): Shared, body: Bytes) -> Response {
        let mut w = lock(&world);
        if w.reject_keys {
            return e2b_error(401, "invalid API key");
        }
        if let Some((status, headers)) = w.refused_creates.pop_front() {
            let mut refusal = e2b_error(status, "refused by the test");
            for (name, value) in headers {
                refusal.headers_mut().insert(
                    axum::http::HeaderName::from_static(name),
                    axum::http::HeaderValue::from_static(value),
                );
            }
            return refusal;
        }
        if let Some(refused) = too_long(&w, &body) {
            return refused;
        }
        w.next_id += 1;
        let id = format!("sbx{}", w.next_id);
        w.alive.insert(id.clone(), BTreeMap::new());
        let answer = json!({
            "templateID": "sandstorm-test", "sandboxID": id, "clientID": "fake",
            "envdVersion": w.envd_version, "envdAccessToken": format!("{TOKEN_PREFIX}{id}"),
            "domain": null, "alias": "sandstorm-test"
        });
        (StatusCode::CREATED, axum::Json(answer)).into_response()
    }

    async fn kill(State(world): Shared, Path(id): Path<String>) -> Response {
        let mut w = lock(&world);
        match w.alive.remove(&id) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => e2b_error(404, "sandbox not found"),
        }
    }

    async fn set_timeout(State(world): Shared, Path(id): Path<String>, body: Bytes) -> Response {
        let w = lock(&world);
        if let Some(refused) = too_long(&w, &body) {
            return refused;
        }
        if w.alive.contains_key(&id) {
            StatusCode::NO_CONTENT.into_response()
        } else {
            e2b_error(404, "sandbox not found")
        }
    }

    /// envd's auth: the sandbox named by the header must be alive and the
    /// token must be the one create gave out.
    fn envd_sandbox(world: &World, headers: &HeaderMap) -> Result<String, Box<Response>> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let id = get("e2b-sandbox-id").to_owned();
        if !world.alive.contains_key(&id) {
            return Err(Box::new(e2b_error(502, "no such sandbox")));
        }
        if get("x-access-token") != format!("{TOKEN_PREFIX}{id}") {
            return Err(Box::new(e2b_error(401, "bad access token")));
        }
        Ok(id)
    }

    async fn upload(
        State(world): Shared,
        Query(query): Query<BTreeMap<String, String>>,
        request: Request,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let body = to_bytes(body, usize::MAX).await.expect("body");
        let seen = Seen {
            method: "POST".into(),
            path: "/files".into(),
            query: None,
            headers: parts.headers.clone(),
            body,
            at: std::time::Instant::now(),
        };
        let mut w = lock(&world);
        let id = match envd_sandbox(&w, &parts.headers) {
            Ok(id) => id,
            Err(response) => return *response,
        };
        if w.broken_uploads > 0 {
            // The connection breaks before the answer is complete.
            w.broken_uploads -= 1;
            let broken = futures::stream::iter([Err::<Bytes, _>(std::io::Error::other("cut"))]);
            return Body::from_stream(broken).into_response();
        }
        let mut files = multipart_files(&seen);
        if let (Some(path), [only]) = (query.get("path"), files.as_mut_slice()) {
            only.0 = path.clone();
        }
        let answer: Vec<_> = files
            .iter()
            .map(|(path, _)| json!({"path": path, "name": path.rsplit('/').next(), "type": "file"}))
            .collect();
        w.alive.entry(id).or_default().extend(files);
        axum::Json(answer).into_response()
    }

    async fn download(
        State(world): Shared,
        Query(query): Query<BTreeMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        let w = lock(&world);
        let id = match envd_sandbox(&w, &headers) {
            Ok(id) => id,
            Err(response) => return *response,
        };
        let path = query.get("path").cloned().unwrap_or_default();
        match w.alive[&id].get(&path) {
            Some(content) => content.clone().into_response(),
            None => e2b_error(404, "file not found"),
        }
    }

    async fn start(State(world): Shared, headers: HeaderMap) -> Response {
        let answer = {
            let w = lock(&world);
            if let Err(response) = envd_sandbox(&w, &headers) {
                return *response;
            }
            w.start.clone()
        };
        match answer {
            StartAnswer::Refused {
                status,
                code,
                message,
            } => (
                StatusCode::from_u16(status).expect("status"),
                axum::Json(json!({"code": code, "message": message})),
            )
                .into_response(),
            StartAnswer::Stream { chunks, abort } => {
                // A pause between chunks so they reach the client as
                // separate reads, as envd's output does.
                let body = futures::stream::iter(chunks.into_iter().map(Ok))
                    .then(|chunk| async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        chunk
                    })
                    .chain(futures::stream::iter(
                        abort.then(|| Err(std::io::Error::other("injected cut"))),
                    ));
                (
                    [(header::CONTENT_TYPE, "application/connect+json")],
                    Body::from_stream(body),
                )
                    .into_response()
            }
        }
    }

    /// The files of a multipart upload as (filename, content), in order.
    pub(crate) fn multipart_files(request: &Seen) -> Vec<(String, Bytes)> {
        let content_type = request.header("content-type");
        let boundary = content_type
            .split("boundary=")
            .nth(1)
            .expect("multipart boundary")
            .trim_matches('"');
        let delimiter = format!("--{boundary}");
        let body = &request.body[..];
        let mut files = Vec::new();
        let mut rest = body;
        while let Some(at) = find(rest, delimiter.as_bytes()) {
            rest = &rest[at + delimiter.len()..];
            if rest.starts_with(b"--") {
                break;
            }
            rest = rest.strip_prefix(b"\r\n").expect("CRLF after boundary");
            let head_end = find(rest, b"\r\n\r\n").expect("part headers end");
            let head = std::str::from_utf8(&rest[..head_end]).expect("utf-8 headers");
            assert!(
                head.contains("name=\"file\""),
                "part must be named file: {head}"
            );
            let filename = head
                .split("filename=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("filename")
                .to_owned();
            let content_start = head_end + 4;
            let end = find(
                &rest[content_start..],
                format!("\r\n{delimiter}").as_bytes(),
            )
            .expect("part end");
            files.push((
                filename,
                Bytes::copy_from_slice(&rest[content_start..content_start + end]),
            ));
            rest = &rest[content_start + end + 2..];
        }
        files
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// The one message a Start request carries.
    pub(crate) fn start_request(request: &Seen) -> StartRequest {
        let mut decoder = FrameDecoder::new();
        decoder.push(&request.body);
        let frame = decoder
            .next_frame()
            .expect("valid frame")
            .expect("one whole frame");
        assert_eq!(frame.flags, FLAG_MESSAGE);
        assert_eq!(
            decoder.next_frame().expect("valid"),
            None,
            "exactly one frame"
        );
        serde_json::from_slice(&frame.payload).expect("StartRequest JSON")
    }
}

/// What a detached run needs of E2B: another provider (as another server
/// instance would) finds the run's sandbox by its metadata, connects to it
/// and reads what the first one left; a paused sandbox is listed as paused
/// and resumed by connect, its files and processes intact.
#[tokio::test]
async fn another_instance_finds_connects_to_and_resumes_a_sandbox() {
    let emu = Emu::start().await;
    let run = BTreeMap::from([("run".to_owned(), "r-42".to_owned())]);
    let first = provider(&emu.url);
    let sandbox = first
        .create(SandboxSpec {
            lifetime: Duration::from_secs(600),
            metadata: run.clone(),
            ..SandboxSpec::default()
        })
        .await
        .expect("created");
    let other = create(&first).await.expect("another run's sandbox");
    sandbox
        .upload(vec![SandboxFile {
            path: "/home/user/events.jsonl".into(),
            content: bytes::Bytes::from_static(b"{\"seq\":1}\n"),
        }])
        .await
        .expect("uploaded");

    let second = provider(&emu.url);
    let listed = second.list(&run, None).await.expect("listed");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].paused),
        (sandbox.id(), false)
    );
    assert_eq!(listed[0].metadata, run);

    assert!(sandbox.pause().await.expect("paused"));
    assert!(
        !sandbox.pause().await.expect("a second pause"),
        "already paused"
    );
    let listed = second.list(&run, None).await.expect("listed");
    assert!(listed[0].paused, "{listed:?}");
    assert!(
        sandbox.read_file("/home/user/events.jsonl").await.is_err(),
        "envd is out of reach while paused"
    );

    let again = second
        .connect(&listed[0].id, SandboxSpec::default())
        .await
        .expect("connected, and so resumed");
    assert_eq!(again.id(), sandbox.id());
    assert_eq!(
        &again
            .read_file("/home/user/events.jsonl")
            .await
            .expect("the first instance's file")[..],
        b"{\"seq\":1}\n"
    );
    assert!(!second.list(&run, None).await.expect("listed")[0].paused);

    again.destroy().await.expect("destroyed");
    other.destroy().await.expect("destroyed");
    let gone = second.connect(sandbox.id(), SandboxSpec::default()).await;
    let Err(err) = gone else {
        panic!("connected to a killed sandbox");
    };
    assert!(
        matches!(err.cause(), SandboxError::Status { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(emu.stats().alive, 0);
}

/// A run is found by its id's digest and its owner's, on any instance, and
/// a wrong owner or another id finds nothing: the same answer as a run that
/// never was.
#[tokio::test]
async fn a_run_is_found_only_by_its_id_and_its_owner() {
    use sandstorm::run_id::{self, RunId};

    let emu = Emu::start().await;
    let run = RunId::generate().expect("randomness");
    let owner = Secret::new("token-of-tenant-a");
    let provider = provider(&emu.url);
    let sandbox = provider
        .create(SandboxSpec {
            metadata: run_id::metadata(&run, &owner),
            ..SandboxSpec::default()
        })
        .await
        .expect("created");

    let other_instance = self::provider(&emu.url);
    let found = run_id::find(&other_instance, &run, &owner, None)
        .await
        .expect("listed")
        .expect("found by its owner");
    assert_eq!(found.id, sandbox.id());

    let stranger = Secret::new("token-of-tenant-b");
    let by_stranger = run_id::find(&other_instance, &run, &stranger, None).await;
    assert!(by_stranger.expect("listed").is_none());
    let another = RunId::generate().expect("randomness");
    let unknown = run_id::find(&other_instance, &another, &owner, None).await;
    assert!(unknown.expect("listed").is_none());

    sandbox.destroy().await.expect("destroyed");
    let gone = run_id::find(&other_instance, &run, &owner, None).await;
    assert!(gone.expect("listed").is_none(), "a killed run is gone");
}

/// A process outlives the stream that started it, and a second provider
/// (another instance) attaches to it by tag, then by pid, and reads the
/// rest of its output and its exit: how a detached run is followed.
#[tokio::test]
async fn another_instance_attaches_to_a_running_process() {
    let emu = Emu::start().await;
    let first = provider(&emu.url);
    let sandbox = create(&first).await.expect("created");
    let mut started = sandbox
        .start(ProcessSpec {
            tag: Some("runner".into()),
            ..sh("echo one; sleep 1; echo two; sleep 1; echo three")
        })
        .await
        .expect("started");
    // Until `one`, then the first client goes away.
    loop {
        match started.next().await {
            Some(Ok(ProcessEvent::Stdout(chunk))) if chunk.starts_with(b"one") => break,
            Some(Ok(_)) => {}
            other => panic!("no `one` before {other:?}"),
        }
    }
    drop(started);

    let second = provider(&emu.url);
    let again = second
        .connect(sandbox.id(), SandboxSpec::default())
        .await
        .expect("connected");
    let by_tag = again
        .attach(ProcessRef::Tag("runner".into()))
        .await
        .expect("attached by tag");
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(10), by_tag.collect())
        .await
        .expect("the stream ends");
    let (stdout, _, exit) = split(&events);
    assert_eq!(stdout, ["two", "three"], "from attaching on: {events:?}");
    assert_eq!(exit.and_then(|e| e.code), Some(0));

    // envd answers a stream that ends at once with its `not_found`.
    let none = match again.attach(ProcessRef::Pid(999_999)).await {
        Ok(stream) => stream.collect::<Vec<_>>().await.pop(),
        Err(err) => Some(Err(err)),
    };
    let Some(Err(err)) = none else {
        panic!("attached to no process: {none:?}");
    };
    assert!(
        err.to_string()
            .contains("process with pid 999999 not found"),
        "{err}"
    );
    again.destroy().await.expect("destroyed");
}
