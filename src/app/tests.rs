//! The router without a socket: validation, auth, SSE framing and the run
//! lifecycle against a scripted in-memory sandbox.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::doors::PROVIDERS;
use crate::env::EnvVars;
use crate::keys::KeyEnv;
use crate::sandbox::ProcessEvent;
use crate::sandbox::provider::Setup;
use crate::sandbox::scripted::{Counters, Scripted, Then};
use crate::settings::AuthSettings;
use crate::settings::{Profile, SandboxChoice};

// The test toolkit's SSE parser, so these tests read streams exactly as the
// integration tests do.
#[allow(
    dead_code,
    unreachable_pub,
    reason = "a shared file; this crate uses a part"
)]
#[path = "../../tests/common/sse.rs"]
mod sse;

mod stored_events;

fn out(s: &str) -> ProcessEvent {
    ProcessEvent::Stdout(Bytes::copy_from_slice(s.as_bytes()))
}

fn err(s: &str) -> ProcessEvent {
    ProcessEvent::Stderr(Bytes::copy_from_slice(s.as_bytes()))
}

struct Harness {
    router: Router,
    counters: Arc<Counters>,
}

fn harness_with(
    output: Vec<ProcessEvent>,
    then: Then,
    tweak: impl FnOnce(&mut Settings),
) -> Harness {
    let provider = Arc::new(Scripted::new(output, then));
    let counters = provider.counters();
    let mut settings = settings_from(&[("ANTHROPIC_API_KEY", "sk-ant-test-key-123")]);
    tweak(&mut settings);
    Harness {
        router: app(AppState::new(settings, provider)),
        counters,
    }
}

impl Harness {
    /// Sends one request through the router.
    async fn send(&self, request: Request) -> Response {
        self.router
            .clone()
            .oneshot(request)
            .await
            .expect("response")
    }

    /// POSTs `body` to /query and reads the whole SSE stream.
    async fn stream(&self, body: &str) -> String {
        body_text(self.send(post(body)).await).await
    }
}

/// Server settings from `pairs` as the environment, with the door's
/// providers; with no provider credential set, the one that needs none.
fn settings_from(pairs: &[(&str, &str)]) -> Settings {
    let choice = SandboxChoice {
        catalog: PROVIDERS,
        requested: None,
        setup: Setup::CheckOnly,
        executable: None,
    };
    Settings::build(
        &EnvVars::from_pairs(pairs.iter().copied()),
        std::path::Path::new("/nonexistent"),
        Profile::Server,
        choice,
    )
    .expect("settings")
}

/// The keys part of settings, from `pairs` as the environment.
fn key_env(pairs: &[(&str, &str)]) -> KeyEnv {
    settings_from(pairs).keys
}

fn harness(output: Vec<ProcessEvent>, then: Then) -> Harness {
    harness_with(output, then, |_| {})
}

fn post(body: &str) -> Request {
    Request::post("/query")
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

async fn body_text(response: Response) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("stream ends")
        .expect("body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// Every event of the stream, the closing `done` included (see
/// [`pop_done`]).
fn events(body: &str) -> Vec<serde_json::Value> {
    sse::json_events(body)
}

/// Removes the stream's last event after checking that it is the `done`
/// event every run ends with, with `status`.
fn pop_done(events: &mut Vec<serde_json::Value>, status: &str) {
    let done = events.pop().expect("a done event");
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(done["status"], status, "{done}");
    assert!(done["request_id"].is_string(), "{done}");
    assert!(
        events.iter().all(|e| e["type"] != "done"),
        "one done event, last"
    );
}

async fn error_body(response: Response) -> (StatusCode, serde_json::Value) {
    let status = response.status();
    let text = body_text(response).await;
    (status, serde_json::from_str(&text).expect("json error"))
}

const SYSTEM: &str = r#"{"type":"system","subtype":"init"}"#;
const RESULT: &str = r#"{"type":"result","subtype":"success","num_turns":1}"#;

#[tokio::test]
async fn health_reports_ok_and_the_version_and_nothing_about_keys() {
    let h = harness(vec![], Then::Exit(0));
    let response = h
        .router
        .oneshot(
            Request::get("/health")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["status"], "ok");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert!(!text.contains("KEY") && !text.contains("sk-ant"), "{text}");
}

#[tokio::test]
async fn a_run_streams_each_line_as_one_sse_event_in_order_then_ends() {
    let h = harness(
        vec![
            out(&format!("{SYSTEM}\n{{\"type\":\"assis")),
            out("tant\",\"n\":1}\n"),
            out(&format!("{RESULT}\n")),
        ],
        Then::Exit(0),
    );
    let response = h.send(post(r#"{"prompt":"hi"}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let text = body_text(response).await;
    assert_eq!(
        text,
        format!(
            "data: {SYSTEM}\n\ndata: {{\"type\":\"assistant\",\"n\":1}}\n\ndata: {RESULT}\n\n\
             data: {{\"type\":\"done\",\"status\":\"success\",\"request_id\":\"{request_id}\",\
             \"sandstorm\":{{\"spend\":{{\"calls\":0,\"refused_calls\":0,\"input_tokens\":0,\
             \"output_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\
             \"cost_usd\":0.0}}}}}}\n\n"
        )
    );
    assert_eq!(h.counters.created.load(Ordering::SeqCst), 1);
    assert_eq!(h.counters.destroyed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn one_upload_carries_everything() {
    let h = harness(vec![out(&format!("{RESULT}\n"))], Then::Exit(0));
    let response = h
        .router
        .oneshot(post(
            r#"{"prompt":"hi","files":{"a.csv":"1,2","src/b.py":"print()"}}"#,
        ))
        .await
        .expect("response");
    body_text(response).await;
    let uploads = h.counters.uploads.lock().expect("lock").clone();
    assert_eq!(uploads.len(), 1, "exactly one upload");
    assert!(uploads[0].contains(&"/home/user/a.csv".to_owned()));
    assert!(uploads[0].contains(&"/home/user/src/b.py".to_owned()));
    assert!(uploads[0].contains(&"/opt/agent-runner/runner.mjs".to_owned()));
}

#[tokio::test]
async fn stderr_lines_become_stderr_events() {
    let h = harness(
        vec![err("warn: slow\n"), out(&format!("{RESULT}\n"))],
        Then::Exit(0),
    );
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    let events = events(&text);
    assert_eq!(
        events[0],
        serde_json::json!({"type":"stderr","data":"warn: slow"})
    );
    assert_eq!(events[1]["type"], "result");
}

#[tokio::test]
async fn a_failing_runner_ends_with_one_error_event_carrying_stderr_and_the_request_id() {
    let h = harness(
        vec![out(SYSTEM), out("\n"), err("boom: it broke\n")],
        Then::Exit(3),
    );
    let request = Request::post("/query")
        .header("x-request-id", "req-42")
        .body(Body::from(r#"{"prompt":"hi"}"#))
        .expect("request");
    let text = body_text(h.send(request).await).await;
    let mut events = events(&text);
    pop_done(&mut events, "error");
    let last = events.last().expect("events");
    assert_eq!(last["type"], "error");
    assert_eq!(last["error_type"], "runner_failed");
    assert_eq!(last["request_id"], "req-42");
    let message = last["error"].as_str().expect("message");
    assert!(
        message.contains("code 3") && message.contains("boom: it broke"),
        "{message}"
    );
    assert_eq!(events.iter().filter(|e| e["type"] == "error").count(), 1);
    assert_eq!(h.counters.destroyed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_runners_own_error_line_becomes_the_single_error_event() {
    let line = r#"{"type":"error","error":{"type":"runner_error","message":"SDK exploded"}}"#;
    let h = harness(vec![out(&format!("{line}\n"))], Then::Exit(1));
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    let mut events = events(&text);
    pop_done(&mut events, "error");
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["error_type"], "runner_error");
    assert_eq!(events[0]["error"], "SDK exploded");
    assert!(events[0]["request_id"].is_string());
}

#[tokio::test]
async fn an_exit_without_a_result_is_an_error() {
    let h = harness(vec![out(&format!("{SYSTEM}\n"))], Then::Exit(0));
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    let mut events = events(&text);
    pop_done(&mut events, "error");
    let last = events.pop().expect("events");
    assert_eq!(last["error_type"], "runner_failed");
}

#[tokio::test]
async fn a_cut_process_stream_is_an_error_event_and_the_sandbox_is_destroyed() {
    let h = harness(vec![out(&format!("{SYSTEM}\n"))], Then::Cut);
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    let mut events = events(&text);
    pop_done(&mut events, "error");
    let last = events.pop().expect("events");
    assert_eq!(last["error_type"], "stream_cut");
    assert_eq!(h.counters.destroyed.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_ends_the_run_with_a_timeout_event_and_destroys_the_sandbox() {
    let h = harness(vec![out(&format!("{SYSTEM}\n"))], Then::Hang);
    let response = h.send(post(r#"{"prompt":"hi","timeout":5}"#)).await;
    let text = body_text(response).await;
    let mut events = events(&text);
    pop_done(&mut events, "error");
    let last = events.pop().expect("events");
    assert_eq!(last["type"], "error");
    assert_eq!(last["error_type"], "timeout");
    assert!(last["error"].as_str().expect("text").contains("5 s"));
    assert_eq!(h.counters.destroyed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_gets_its_sandbox_destroyed() {
    let h = harness(vec![out(&format!("{SYSTEM}\n"))], Then::Hang);
    let response = h.send(post(r#"{"prompt":"hi"}"#)).await;
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("ok");
    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: ")));
    drop(body);
    for _ in 0..100 {
        if h.counters.destroyed.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sandbox not destroyed within 1 s of the client leaving");
}

#[tokio::test]
async fn keys_are_redacted_from_every_event() {
    let h = harness(
        vec![
            out("{\"type\":\"user\",\"text\":\"ANTHROPIC_API_KEY=sk-ant-test-key-123\"}\n"),
            err("leaked sk-ant-test-key-123\n"),
            out(&format!("{RESULT}\n")),
        ],
        Then::Exit(0),
    );
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    assert!(!text.contains("sk-ant-test-key-123"), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
}

#[tokio::test]
async fn validation_errors_are_json_and_create_no_sandbox() {
    let h = harness(vec![], Then::Exit(0));
    let response = h.send(post(r#"{"prompt":"hi","timeout":1}"#)).await;
    let (status, body) = error_body(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "timeout");
    assert_eq!(body["error"]["type"], "invalid_request");
    assert_eq!(h.counters.created.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_non_json_content_type_is_415() {
    let h = harness(vec![], Then::Exit(0));
    let request = Request::post("/query")
        .header("content-type", "text/plain")
        .body(Body::from(r#"{"prompt":"hi"}"#))
        .expect("request");
    let (status, body) = error_body(h.send(request).await).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["type"], "unsupported_media_type");
}

#[tokio::test]
async fn curl_d_without_a_content_type_is_accepted_like_the_original() {
    let h = harness(vec![out(&format!("{RESULT}\n"))], Then::Exit(0));
    let request = Request::post("/query")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(r#"{"prompt":"hi"}"#))
        .expect("request");
    let response = h.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_naming_the_limit() {
    let h = harness_with(vec![], Then::Exit(0), |s| s.max_body_bytes = 1000);
    let big = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(2000));
    let (status, body) = error_body(h.send(post(&big)).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("1000-byte limit")
    );
}

#[tokio::test]
async fn a_body_cut_by_the_client_is_400_not_413() {
    let h = harness(vec![], Then::Exit(0));
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(br#"{"prompt":"#)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )),
    ];
    let request = Request::post("/query")
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("request");
    let (status, body) = error_body(h.send(request).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("could not read the request body"),
        "{message}"
    );
    assert_eq!(h.counters.created.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_field_given_twice_is_refused_naming_it() {
    let h = harness(vec![], Then::Exit(0));
    let (status, body) = error_body(h.send(post(r#"{"prompt":"a","prompt":"b"}"#)).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("duplicate field `prompt`"), "{message}");
}

#[tokio::test]
async fn a_missing_key_is_400_naming_the_field() {
    let h = harness_with(vec![], Then::Exit(0), |s| s.keys = KeyEnv::default());
    let (status, body) = error_body(h.send(post(r#"{"prompt":"hi"}"#)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "anthropic_api_key");
    assert_eq!(h.counters.created.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_invalid_sandstorm_json_answers_a_config_error() {
    let h = harness_with(vec![], Then::Exit(0), |s| {
        s.config = Err(crate::config::ConfigError::Field {
            path: "sandstorm.json".into(),
            field: "max_turns".into(),
            message: "invalid type: string \"x\", expected u32".into(),
        });
    });
    let (status, body) = error_body(h.send(post(r#"{"prompt":"hi"}"#)).await).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["type"], "config_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("max_turns")
    );
}

#[tokio::test]
async fn with_a_token_configured_queries_need_it() {
    let h = harness_with(vec![out(&format!("{RESULT}\n"))], Then::Exit(0), |s| {
        s.auth = AuthSettings {
            tokens: vec!["tok-123".into()],
            allow_anonymous: false,
        };
    });
    let (status, body) = error_body(h.send(post(r#"{"prompt":"hi"}"#)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["type"], "unauthorized");
    assert_eq!(h.counters.created.load(Ordering::SeqCst), 0);

    let mut request = post(r#"{"prompt":"hi"}"#);
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer tok-123"),
    );
    let response = h.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let h = harness(vec![], Then::Exit(0));
    let response = h
        .router
        .oneshot(Request::get("/nope").body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let (status, body) = error_body(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "not_found");
}

#[tokio::test]
async fn cors_is_off_by_default_and_configurable() {
    let preflight = || {
        Request::options("/query")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .expect("request")
    };
    let h = harness(vec![], Then::Exit(0));
    let response = h.send(preflight()).await;
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let h = harness_with(vec![], Then::Exit(0), |s| {
        s.cors_origins = vec!["https://app.example.com".into()];
    });
    let response = h.send(preflight()).await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_key_value_appears_in_logs_errors_or_events() {
    const ANTHROPIC: &str = "sk-ant-hygiene-AAAA1111";
    const SANDBOX_KEY: &str = "sandbox-hygiene-BBBB2222";
    const OPENROUTER: &str = "sk-or-hygiene-CCCC3333";
    const TOKEN: &str = "tok-hygiene-DDDD4444-0123456789abcd";
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let leaky = vec![
        out(&format!(
            "{{\"type\":\"user\",\"content\":\"{ANTHROPIC} {OPENROUTER}\"}}\n"
        )),
        err(&format!(
            "env: ANTHROPIC_API_KEY={ANTHROPIC} SANDBOX={SANDBOX_KEY}\n"
        )),
    ];
    // Every provider's credential field, each carrying the same key.
    let mut body = serde_json::json!({
        "prompt": "hi",
        "anthropic_api_key": ANTHROPIC,
        "openrouter_api_key": OPENROUTER,
    });
    for credential in crate::sandbox::provider::credential_fields(PROVIDERS) {
        body[credential.field] = SANDBOX_KEY.into();
    }
    let body = body.to_string();
    let mut seen = String::new();
    for (output, then) in [
        (vec![out(&format!("{RESULT}\n"))], Then::Exit(0)),
        (leaky.clone(), Then::Exit(1)),
        (leaky.clone(), Then::Cut),
        (leaky, Then::Exit(0)),
    ] {
        let h = harness_with(output, then, |s| {
            s.keys = key_env(&[
                ("ANTHROPIC_API_KEY", "sk-ant-test-key-123"),
                ("ANTHROPIC_BASE_URL", "https://openrouter.ai/api"),
            ]);
            s.auth.tokens = vec![TOKEN.into()];
        });
        let mut request = post(&body);
        request.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("header"),
        );
        seen.push_str(&body_text(h.send(request).await).await);
        // Failures before the stream: a wrong token, a bad field.
        let mut wrong = post(&body);
        wrong.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok-hygiene-wrong"),
        );
        seen.push_str(&body_text(h.send(wrong).await).await);
        let mut invalid = post(&body.replace(r#""prompt":"hi""#, r#""prompt":"hi","timeout":1"#));
        invalid.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("header"),
        );
        seen.push_str(&body_text(h.send(invalid).await).await);
    }
    let logs = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(
        seen.contains("runner_failed") && seen.contains("stream_cut"),
        "{seen}"
    );
    assert!(
        logs.contains("run failed"),
        "the failures were logged: {logs}"
    );
    for secret in [ANTHROPIC, SANDBOX_KEY, OPENROUTER, TOKEN] {
        assert!(
            !seen.contains(secret),
            "{secret} leaked into a response: {seen}"
        );
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the log: {logs}"
        );
    }
}

#[test]
fn debug_of_everything_that_holds_a_key_redacts_it() {
    const KEY: &str = "sk-ant-debug-EEEE5555-0123456789abcd";
    let credentials = crate::sandbox::provider::credential_fields(PROVIDERS);
    let mut body =
        serde_json::json!({"prompt": "p", "anthropic_api_key": KEY, "files": {"a": KEY}});
    for credential in &credentials {
        body[credential.field] = KEY.into();
    }
    let query = Query::from_json(body.to_string().as_bytes(), &credentials).expect("valid");
    let mut pairs = vec![("ANTHROPIC_API_KEY", KEY), ("SANDSTORM_API_TOKEN", KEY)];
    pairs.extend(credentials.iter().map(|c| (c.variable, KEY)));
    let settings = settings_from(&pairs);
    let plan = crate::plan::build(
        "r".into(),
        &query,
        &crate::config::SandstormConfig::default(),
        crate::sandbox::Limits::DEFAULT,
        crate::keys::ResolvedKeys {
            runner_env: [("ANTHROPIC_API_KEY".to_owned(), KEY.to_owned())].into(),
            files: vec![],
            sandbox: Some(KEY.into()),
            secrets: vec![KEY.into()],
        },
        None,
        &|_| None,
    )
    .expect("plan");
    let state = AppState::new(
        settings.clone(),
        Arc::new(Scripted::new(vec![], Then::Exit(0))),
    );
    for shown in [
        format!("{query:?}"),
        format!("{settings:?}"),
        format!("{plan:?}"),
        format!("{:?}", settings.sandbox.options),
        format!("{state:?}"),
    ] {
        assert!(!shown.contains(KEY), "{shown}");
    }
}

#[tokio::test]
async fn file_events_pass_only_when_outputs_were_asked_for() {
    let file = r#"{"type":"file","path":"output/a.txt","size":2,"mime":"text/plain","content_base64":"aGk="}"#;
    let script = || vec![out(&format!("{RESULT}\n{file}\n"))];

    let h = harness(script(), Then::Exit(0));
    let text = h.stream(r#"{"prompt":"hi","outputs":["output/**"]}"#).await;
    let sent = events(&text);
    assert_eq!(sent[1]["type"], "file");
    assert_eq!(sent[1]["data"], "aGk=");

    // Without `outputs`, a runner that sends files anyway is not believed.
    let h = harness(script(), Then::Exit(0));
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    let sent = events(&text);
    assert_eq!(sent[1]["type"], "warning");
    assert_eq!(sent[1]["path"], "output/a.txt");
}

#[tokio::test]
async fn a_returned_file_holding_a_key_is_withheld_with_a_warning() {
    use base64::Engine as _;
    // What `env > output/env.txt` makes, the harness's key among it.
    let content = base64::engine::general_purpose::STANDARD
        .encode("PATH=/usr/bin\nANTHROPIC_API_KEY=sk-ant-test-key-123\n");
    let file = format!(
        r#"{{"type":"file","path":"output/env.txt","size":52,"mime":"text/plain","content_base64":"{content}"}}"#
    );
    let h = harness(vec![out(&format!("{RESULT}\n{file}\n"))], Then::Exit(0));
    let text = h.stream(r#"{"prompt":"hi","outputs":["output/**"]}"#).await;
    let events = events(&text);
    assert_eq!(events[1]["type"], "warning", "{text}");
    assert_eq!(events[1]["path"], "output/env.txt");
    let message = events[1]["message"].as_str().expect("message");
    assert!(message.contains("contains a key"), "{message}");
    assert!(!text.contains(&content), "the file went out: {text}");
}

#[tokio::test]
async fn the_relay_holds_file_events_to_the_size_limit() {
    let huge = "A".repeat(crate::outputs::DEFAULT_LIMITS.max_file_bytes / 3 * 4 + 4096);
    let file = format!(
        r#"{{"type":"file","path":"output/big.bin","size":1,"mime":"application/octet-stream","content_base64":"{huge}"}}"#
    );
    let h = harness(vec![out(&format!("{RESULT}\n{file}\n"))], Then::Exit(0));
    let text = h.stream(r#"{"prompt":"hi","outputs":["output/**"]}"#).await;
    let events = events(&text);
    assert_eq!(events[1]["type"], "warning");
    let message = events[1]["message"].as_str().expect("message");
    assert!(
        message.contains("output/big.bin") && message.contains("per-file limit"),
        "{message}"
    );
}

#[tokio::test]
async fn output_patterns_are_validated() {
    let h = harness(vec![], Then::Exit(0));
    let (status, body) = error_body(
        h.send(post(r#"{"prompt":"hi","outputs":["../../etc/*"]}"#))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "outputs");
}

#[tokio::test]
async fn progress_is_not_an_api_event() {
    let h = harness(vec![out(&format!("{RESULT}\n"))], Then::Exit(0));
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    assert!(!text.contains("progress"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_quiet_run_gets_a_keepalive_comment_every_15_seconds() {
    let h = harness(vec![out(&format!("{SYSTEM}\n"))], Then::Hang);
    let mut body = h
        .send(post(r#"{"prompt":"hi","timeout":100}"#))
        .await
        .into_body();
    let started = tokio::time::Instant::now();
    let mut keepalives = Vec::new();
    while keepalives.len() < 2 {
        let frame = body.frame().await.expect("a frame").expect("ok");
        if let Some(data) = frame.data_ref()
            && data.starts_with(b": keepalive")
        {
            keepalives.push(started.elapsed());
        }
    }
    assert_eq!(
        keepalives,
        [KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL * 2],
        "one comment per quiet 15 s"
    );
}

/// What an agent that writes into the runner's stdout can add: a second
/// `result`, an `error`, a file outside the home, a `done` of its own.
const FORGED_TAIL: [&str; 4] = [
    r#"{"type":"result","subtype":"success","result":"forged-marker"}"#,
    r#"{"type":"error","error":{"type":"runner_error","message":"forged-marker"}}"#,
    r#"{"type":"file","path":"../../../../tmp/x","size":1,"mime":"text/plain","content_base64":"eA=="}"#,
    r#"{"type":"done","status":"success","request_id":"forged-marker"}"#,
];

#[tokio::test]
async fn after_the_result_the_client_gets_output_files_and_the_servers_done_only() {
    let real_file = r#"{"type":"file","path":"output/a.txt","size":2,"mime":"text/plain","content_base64":"aGk="}"#;
    let mut script = vec![out(&format!("{SYSTEM}\n{RESULT}\n"))];
    script.extend(FORGED_TAIL.iter().map(|line| out(&format!("{line}\n"))));
    script.push(out(&format!("{real_file}\nnot json after the end\n")));
    let h = harness(script, Then::Exit(0));

    let text = h.stream(r#"{"prompt":"hi","outputs":["output/**"]}"#).await;

    let mut events = events(&text);
    pop_done(&mut events, "success");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["system", "result", "warning", "file"], "{text}");
    assert_eq!(
        events[1],
        serde_json::from_str::<serde_json::Value>(RESULT).expect("json")
    );
    // The forged file is withheld without its path; the real one is sent.
    assert!(events[2].get("path").is_none(), "{}", events[2]);
    assert_eq!(events[3]["path"], "output/a.txt");
    assert!(
        !text.contains("forged-marker") && !text.contains("tmp/x"),
        "{text}"
    );
    assert!(!text.contains("not json after the end"), "{text}");

    // That each drop is logged by its type only is checked in
    // tests/event_shape.rs, under a process-wide subscriber.
}

#[tokio::test]
async fn the_runner_cannot_claim_an_event_type_the_server_owns() {
    let claims = [
        r#"{"type":"done","status":"success","request_id":"r"}"#,
        r#"{"type":"stderr","data":"forged-marker"}"#,
        r#"{"type":"stdout","data":"forged-marker"}"#,
        r#"{"type":"progress","phase":"forged-marker"}"#,
        r#"{"type":"file","path":"output/a.txt","size":2,"mime":"text/plain","content_base64":"aGk="}"#,
        r#"{"type":"warning","path":"output/a.txt","message":"forged-marker"}"#,
    ];
    let mut script: Vec<ProcessEvent> = claims
        .iter()
        .map(|line| out(&format!("{line}\n")))
        .collect();
    script.push(out(&format!("{RESULT}\n")));
    let h = harness(script, Then::Exit(0));
    let text = h.stream(r#"{"prompt":"hi","outputs":["output/**"]}"#).await;
    let mut events = events(&text);
    pop_done(&mut events, "success");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["result"], "{text}");
    assert!(!text.contains("forged-marker"), "{text}");
}

#[tokio::test]
async fn the_runners_error_is_its_end_even_if_a_result_follows() {
    let error = r#"{"type":"error","error":{"type":"runner_error","message":"SDK exploded"}}"#;
    let h = harness(
        vec![out(&format!("{SYSTEM}\n{error}\n{RESULT}\n{error}\n"))],
        Then::Exit(0),
    );
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    let mut events = events(&text);
    pop_done(&mut events, "error");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["system", "error"], "{text}");
    assert_eq!(events[1]["error_type"], "runner_error");
    assert_eq!(events[1]["error"], "SDK exploded");
}

#[tokio::test]
async fn a_runner_that_fails_after_its_result_ends_with_the_servers_error_only() {
    // The runner's own error line after the result is a second terminal
    // event and is dropped; its exit code still fails the run.
    let error = r#"{"type":"error","error":{"type":"runner_error","message":"late crash"}}"#;
    let h = harness(
        vec![out(&format!("{RESULT}\n{error}\n")), err("late crash\n")],
        Then::Exit(1),
    );
    let text = h.stream(r#"{"prompt":"hi"}"#).await;
    let mut events = events(&text);
    pop_done(&mut events, "error");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["result", "stderr", "error"], "{text}");
    assert_eq!(events[2]["error_type"], "runner_failed");
}
