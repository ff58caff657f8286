//! E2B faults through the whole server: the app on a real socket, our E2B
//! client, the emulator with injected faults. Each fault ends in exactly one
//! `error` event that names the cause, and the emulator's counters show that
//! every sandbox created was killed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::emulator::{
    CreateFault, CreateFaultMode, Knobs, RunningEmulator, StreamCut, Synthetic,
};
use common::http::serve_router;
use common::keys::{ANTHROPIC_KEY, E2B_KEY};
use sandstorm::app::{AppState, app};
use sandstorm::doors::PROVIDERS;
use sandstorm::env::EnvVars;
use sandstorm::sandbox::e2b::{E2bOptions, E2bProvider, RetryPolicy};
use sandstorm::sandbox::provider::Setup;
use sandstorm::settings::{Profile, SandboxChoice, Settings};

struct Stack {
    emulator: RunningEmulator,
    url: String,
}

/// The emulator and our server, both on loopback; E2B timeouts shrunk so a
/// hanging create costs a second, not minutes.
async fn stack(knobs: Knobs, settings_env: &[(&str, &str)]) -> Stack {
    stack_with_timeout(knobs, settings_env, Duration::from_millis(500)).await
}

async fn stack_with_timeout(
    knobs: Knobs,
    settings_env: &[(&str, &str)],
    request_timeout: Duration,
) -> Stack {
    let emulator = common::emulator::start(knobs).await;

    let mut e2b = E2bOptions::local(&emulator.url, E2B_KEY);
    e2b.request_timeout = request_timeout;
    e2b.retry = RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        budget: Duration::from_secs(30),
    };
    let provider = Arc::new(E2bProvider::new(e2b).expect("provider"));
    let mut pairs = vec![
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
        ("E2B_API_KEY", E2B_KEY),
    ];
    pairs.extend_from_slice(settings_env);
    let choice = SandboxChoice {
        catalog: PROVIDERS,
        requested: Some("e2b"),
        setup: Setup::CheckOnly,
        executable: None,
    };
    let settings = Settings::build(
        &EnvVars::from_pairs(pairs),
        Path::new("/nonexistent"),
        Profile::Server,
        choice,
    )
    .expect("settings");
    let url = serve_router(app(AppState::new(settings, provider))).await;
    Stack { emulator, url }
}

async fn query(stack: &Stack, body: serde_json::Value) -> Vec<serde_json::Value> {
    common::stream::query(&stack.url, body).await
}

fn the_error(events: &[serde_json::Value]) -> &serde_json::Value {
    let errors: Vec<_> = events.iter().filter(|e| e["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "exactly one error event in {events:?}");
    let last = events.last().expect("events");
    assert_eq!(last["type"], "error", "the error event is the last");
    assert!(last["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    last
}

/// Kills are awaited before the stream ends, except for a sandbox whose
/// create was still in flight when the run ended: its own task kills it
/// when the create returns. Give the counters time to settle.
async fn assert_no_leak(emulator: &RunningEmulator) {
    emulator.settled(Duration::from_secs(10)).await;
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "it fills Knobs::synthetic, an Option"
)]
fn synthetic(lines: u64) -> Option<Synthetic> {
    Some(Synthetic { lines, bytes: 200 })
}

#[tokio::test]
async fn a_create_that_is_unavailable_twice_is_retried_and_the_run_succeeds() {
    let s = stack(
        Knobs {
            create_fault: Some(CreateFault {
                mode: CreateFaultMode::Unavailable,
                count: 2,
            }),
            synthetic: synthetic(20),
            ..Knobs::default()
        },
        &[],
    )
    .await;
    let events = query(&s, serde_json::json!({"prompt": "go"})).await;
    assert_eq!(events.len(), 20);
    assert_eq!(events[19]["type"], "result");
    assert_eq!(s.emulator.stats().requests.get("create").copied(), Some(3));
    assert_no_leak(&s.emulator).await;
}

/// A create that keeps failing in `mode` ends the run in one `sandbox`
/// error event whose message contains `cause`, after `attempts`.
async fn create_keeps_failing(mode: CreateFaultMode, cause: &str, attempts: u64) {
    let s = stack(
        Knobs {
            create_fault: Some(CreateFault { mode, count: 100 }),
            ..Knobs::default()
        },
        &[],
    )
    .await;
    let events = query(&s, serde_json::json!({"prompt": "go"})).await;
    let error = the_error(&events);
    assert_eq!(error["error_type"], "sandbox");
    let message = error["error"].as_str().expect("text");
    assert!(message.contains(cause), "{message}");
    assert_eq!(
        s.emulator.stats().requests.get("create").copied(),
        Some(attempts)
    );
    assert_no_leak(&s.emulator).await;
}

#[tokio::test]
async fn a_rate_limited_create_ends_in_one_error_event_naming_429() {
    create_keeps_failing(CreateFaultMode::RateLimit, "429", 3).await;
}

#[tokio::test]
async fn a_create_that_stays_unavailable_names_the_status() {
    create_keeps_failing(CreateFaultMode::Unavailable, "503", 3).await;
}

/// A 500 is not retried (E2B's SDKs do not either), so it fails at once.
#[tokio::test]
async fn a_failing_create_names_the_status() {
    create_keeps_failing(CreateFaultMode::Error, "500", 1).await;
}

#[tokio::test]
async fn a_hanging_create_times_out_into_one_error_event() {
    create_keeps_failing(CreateFaultMode::Hang, "timed out", 3).await;
}

#[tokio::test]
async fn a_cut_envd_stream_is_an_error_event() {
    let s = stack(
        Knobs {
            stream_cut: Some(StreamCut {
                after_frames: 2,
                count: 1,
            }),
            synthetic: synthetic(100_000),
            ..Knobs::default()
        },
        &[],
    )
    .await;
    let events = query(&s, serde_json::json!({"prompt": "go"})).await;
    assert!(events.len() > 1, "some lines arrived before the cut");
    let error = the_error(&events);
    assert_eq!(error["error_type"], "stream_cut");
    assert_no_leak(&s.emulator).await;
}

#[tokio::test]
async fn a_failing_kill_is_retried() {
    let s = stack(
        Knobs {
            kill_failures: 1,
            synthetic: synthetic(5),
            ..Knobs::default()
        },
        &[],
    )
    .await;
    let events = query(&s, serde_json::json!({"prompt": "go"})).await;
    assert_eq!(events.last().expect("events")["type"], "result");
    assert_no_leak(&s.emulator).await;
    assert_eq!(s.emulator.stats().requests.get("kill").copied(), Some(2));
}

#[tokio::test]
async fn a_runner_that_exits_non_zero_reports_its_last_stderr_lines() {
    // Not synthetic: the real runner starts in bubblewrap, finds no model
    // API at the dead address, and exits non-zero.
    let s = stack(
        Knobs::default(),
        &[
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
            ("SANDSTORM_FORWARD_ENV", "CLAUDE_CODE_MAX_RETRIES"),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ],
    )
    .await;
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("runner/node_modules/@anthropic-ai/claude-agent-sdk");
    assert!(
        sdk.is_dir(),
        "the runner is not installed: run npm ci --prefix runner"
    );
    let events = query(&s, serde_json::json!({"prompt": "go", "timeout": 60})).await;
    let last = events.last().expect("events");
    // The SDK turns an unreachable API into an error result, or the runner
    // into an error line: either way the run must say it failed.
    let failed = last["type"] == "error" || (last["type"] == "result" && last["is_error"] == true);
    assert!(failed, "{events:?}");
    assert_no_leak(&s.emulator).await;
}

#[tokio::test]
async fn the_platform_deadline_ends_the_run_with_a_timeout_event() {
    // SANDSTORM_MAX_DURATION=11 leaves 1 s before the 10 s safety margin;
    // every E2B call takes 3 s, so the deadline strikes while the sandbox is
    // still being created, and that sandbox must still be killed.
    let s = stack_with_timeout(
        Knobs {
            latency_ms: 3000,
            ..Knobs::default()
        },
        &[("SANDSTORM_MAX_DURATION", "11")],
        Duration::from_secs(10),
    )
    .await;
    let started = std::time::Instant::now();
    let events = query(&s, serde_json::json!({"prompt": "go"})).await;
    let error = the_error(&events);
    assert_eq!(error["error_type"], "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "the timeout event came before the platform's limit"
    );
    // The create was still in flight; once it returns, its sandbox dies.
    for _ in 0..1000 {
        if s.emulator.stats().created == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.emulator.stats().created, 1, "the create did complete");
    assert_no_leak(&s.emulator).await;
}
