//! `ds serve` as a real process, on a real socket, against the E2B emulator
//! (synthetic runner): the lines stream in order, a query costs exactly
//! create + one upload + one start + one delete, and a client that leaves
//! gets its sandbox destroyed.

mod common;

use std::time::{Duration, Instant};

use common::emulator::{self, synthetic};
use common::keys::E2B_KEY;
use common::serve::{DS, DsServe, Server};
use common::stream::read_stream;
use futures::StreamExt;
use tokio::process::Command;

/// Starts `ds serve --port 0` pointed at the emulator.
async fn start_ds_serve(e2b: &emulator::RunningEmulator) -> Server {
    let server = DsServe::e2b(e2b).start().await;
    // No --host given: ds serve must stay on loopback.
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "ds serve listens on {} by default",
        server.url
    );
    server
}

#[tokio::test]
async fn a_query_with_two_files_streams_every_line_in_order_with_five_e2b_calls() {
    let e2b = emulator::start(synthetic(500, 300)).await;
    let server = start_ds_serve(&e2b).await;
    let stream = read_stream(
        reqwest::Client::new()
            .post(format!("{}/query", server.url))
            .json(&serde_json::json!({
                "prompt": "analyze",
                "files": {"data.csv": "a,b\n1,2\n", "src/notes.md": "# notes"}
            })),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.content_type, "text/event-stream");
    let events = stream.events;
    assert_eq!(events.len(), 500, "every runner line is one event");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], i as u64, "in order");
    }
    assert_eq!(events[499]["type"], "result");

    // The run's task destroys the sandbox before it ends the stream. The
    // runner and its model proxy: two starts.
    let stats = e2b.stats();
    for (route, count) in [("create", 1), ("upload", 1), ("start", 2), ("kill", 1)] {
        assert_eq!(
            stats.requests.get(route).copied().unwrap_or(0),
            count,
            "{route} in {:?}",
            stats.requests
        );
    }
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));
}

#[tokio::test]
async fn a_client_that_disconnects_gets_its_sandbox_destroyed_within_a_second() {
    // Enough output that the run is far from done when the client leaves.
    let e2b = emulator::start(synthetic(50_000_000, 200)).await;
    let server = start_ds_serve(&e2b).await;
    let response = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .json(&serde_json::json!({"prompt": "go"}))
        .send()
        .await
        .expect("response");
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a chunk").expect("ok");
    assert!(first.starts_with(b"data: "));
    assert_eq!(e2b.stats().alive, 1);
    drop(body);
    let left = Instant::now();
    e2b.settled(Duration::from_secs(5)).await;
    let elapsed = left.elapsed();
    assert!(
        elapsed <= Duration::from_secs(1),
        "destroyed {elapsed:?} after the client left (limit 1 s)"
    );
    eprintln!("sandbox destroyed {elapsed:?} after disconnect");
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_sandbox_exists() {
    let e2b = emulator::start(synthetic(10, 100)).await;
    let server = start_ds_serve(&e2b).await;
    let response = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .json(&serde_json::json!({"prompt": "x", "files": {"../../etc/passwd": "x"}}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["field"], "files.../../etc/passwd");
    assert_eq!(e2b.stats().created, 0);
}

#[tokio::test]
async fn ds_serve_refuses_to_start_with_an_invalid_sandstorm_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sandstorm.json"), r#"{"max_turns": "ten"}"#).expect("write");
    let output = Command::new(DS)
        .args(["serve", "--port", "0", "--sandbox", "e2b"])
        .current_dir(dir.path())
        .env("E2B_API_KEY", E2B_KEY)
        .output()
        .await
        .expect("run ds");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("max_turns") && stderr.contains("expected a JSON number"),
        "{stderr}"
    );
}

/// The benchmark's detached workload (bench/harness.py, `detached`): the
/// emulator writes the synthetic lines to the run's event log as records,
/// and the real follower reads them back, so every line still arrives, in
/// order, each with its id.
#[tokio::test]
async fn a_detached_synthetic_run_streams_every_line_through_the_event_log() {
    let e2b = emulator::start(synthetic(500, 300)).await;
    let server = DsServe::e2b(&e2b)
        .env("SANDSTORM_RUN_LINGER", "0")
        .start()
        .await;
    let stream = read_stream(
        reqwest::Client::new()
            .post(format!("{}/query", server.url))
            .json(&serde_json::json!({"prompt": "analyze", "detach": true})),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.events.len(), 501, "the run event and every line");
    assert_eq!(stream.events[0]["type"], "run");
    for (i, event) in stream.events[1..].iter().enumerate() {
        assert_eq!(event["seq"], i as u64, "in order");
    }
    assert_eq!(stream.last()["type"], "result");
    let stats = e2b.settled(Duration::from_secs(5)).await;
    // The wrapper, its model proxy and the follower: three starts.
    assert_eq!(stats.requests.get("start").copied(), Some(3), "{stats:?}");
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));
}

/// The benchmark's attached baseline for detached runs: with
/// `synthetic_process`, the synthetic output comes from a real `cat` in
/// the sandbox, and still arrives whole and in order.
#[tokio::test]
async fn synthetic_output_through_a_real_process_arrives_whole() {
    let mut knobs = synthetic(500, 300);
    knobs.synthetic_process = true;
    let e2b = emulator::start(knobs).await;
    let server = start_ds_serve(&e2b).await;
    let stream = read_stream(
        reqwest::Client::new()
            .post(format!("{}/query", server.url))
            .json(&serde_json::json!({"prompt": "analyze"})),
    )
    .await;
    assert_eq!(stream.events.len(), 500);
    for (i, event) in stream.events.iter().enumerate() {
        assert_eq!(event["seq"], i as u64, "in order");
    }
    assert_eq!(stream.last()["type"], "result");
    let stats = e2b.settled(Duration::from_secs(5)).await;
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));
}

/// `GET /health?deep=true`, with `token` as the bearer if any: the status
/// and the JSON body.
async fn deep_health(server: &Server, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(format!("{}/health?deep=true", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /health?deep=true");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test]
async fn deep_health_checks_keys_config_and_e2b_behind_the_token_and_says_why_it_is_degraded() {
    const TOKEN: &str = "health-token-0123456789abcdef012345";
    let e2b = emulator::start(synthetic(3, 100)).await;
    let server = DsServe::e2b(&e2b)
        .env("SANDSTORM_API_TOKEN", TOKEN)
        .start()
        .await;
    // The plain check stays open and checks nothing.
    let plain: serde_json::Value = reqwest::get(format!("{}/health", server.url))
        .await
        .expect("GET /health")
        .json()
        .await
        .expect("JSON");
    assert_eq!(plain["status"], "ok");
    assert_eq!(plain.get("checks"), None);
    // The deep one needs the token.
    assert_eq!(deep_health(&server, None).await.0, 401);
    let (status, body) = deep_health(&server, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["checks"],
        serde_json::json!({"keys": true, "config": true, "sandbox": true}),
        "{body}"
    );
    assert_eq!(body["status"], "ok", "{body}");

    // No model key, and E2B unreachable: degraded, each with its reason,
    // and neither key's value anywhere.
    let closed = common::http::Refused::new();
    let server = DsServe::e2b(&e2b)
        .env("SANDSTORM_API_TOKEN", TOKEN)
        .env_remove("ANTHROPIC_API_KEY")
        .env("E2B_API_URL", closed.url())
        .start()
        .await;
    let (status, body) = deep_health(&server, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(
        body["checks"],
        serde_json::json!({"keys": false, "config": true, "sandbox": false}),
        "{body}"
    );
    let reason = body["reason"].as_str().expect("a reason");
    assert!(reason.contains("ANTHROPIC_API_KEY"), "{reason}");
    assert!(reason.contains("sandbox: e2b"), "{reason}");
    let text = body.to_string();
    for secret in [E2B_KEY, TOKEN] {
        assert!(!text.contains(secret), "a key in the health body: {text}");
    }
}

/// `POST /query` asking for the subagent `x` (which only a sandstorm.json
/// that defines it has), with `token` if any: the status.
async fn asks_for_agent_x(server: &Server, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .json(&serde_json::json!({"prompt": "p", "allowed_agents": ["x"]}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /query");
    let status = response.status().as_u16();
    // Read to the end: an accepted run is over before the next request.
    let _ = response.bytes().await;
    status
}

/// Polls `check` for up to 10 s, until it gives `want`.
async fn eventually(want: u16, mut check: impl AsyncFnMut() -> u16) -> u16 {
    let mut got = check().await;
    for _ in 0..40 {
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        got = check().await;
    }
    got
}

#[tokio::test]
async fn serve_reload_applies_a_valid_change_and_keeps_the_config_over_an_invalid_one() {
    const TOKEN: &str = "reload-token-0123456789abcdef012345";
    let e2b = emulator::start(synthetic(3, 100)).await;
    let dir = tempfile::tempdir().expect("a working folder");
    let config = dir.path().join("sandstorm.json");
    std::fs::write(&config, "{}").expect("write sandstorm.json");
    let server = DsServe::new(["serve", "--sandbox", "e2b", "--reload"])
        .envs(e2b.env())
        .current_dir(dir.path())
        .start()
        .await;
    assert_eq!(asks_for_agent_x(&server, None).await, 422, "no agent x yet");

    // A valid change serves the next run.
    std::fs::write(
        &config,
        r#"{"agents": {"x": {"description": "X", "prompt": "Be x."}}}"#,
    )
    .expect("write sandstorm.json");
    assert_eq!(
        eventually(200, async || asks_for_agent_x(&server, None).await).await,
        200,
        "the new sandstorm.json was not applied:\n{}",
        server.log()
    );

    // An invalid one is logged, and the config in use stays.
    std::fs::write(&config, r#"{"agents": {"x": {"prompt": 3}}}"#).expect("write");
    let mut logged = false;
    for _ in 0..40 {
        logged = server.log().contains("keeping");
        if logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        logged,
        "the invalid change was not logged:\n{}",
        server.log()
    );
    assert!(server.log().contains("agents.x"), "{}", server.log());
    assert_eq!(
        asks_for_agent_x(&server, None).await,
        200,
        "the old config stays"
    );

    // .env too: 0.9.2's token name in it closes the endpoint (once
    // sandstorm.json loads again: a reload takes both or neither).
    std::fs::write(
        &config,
        r#"{"agents": {"x": {"description": "X", "prompt": "Be x."}}}"#,
    )
    .expect("write sandstorm.json");
    std::fs::write(
        dir.path().join(".env"),
        format!("SANDSTORM_API_KEY={TOKEN}\n"),
    )
    .expect("write .env");
    assert_eq!(
        eventually(401, async || asks_for_agent_x(&server, None).await).await,
        401,
        "the token in .env was not applied:\n{}",
        server.log()
    );
    assert_eq!(asks_for_agent_x(&server, Some(TOKEN)).await, 200);
}

#[tokio::test]
async fn webhook_url_and_triggers_load_and_ds_serve_lists_the_triggers() {
    let e2b = emulator::start(synthetic(3, 100)).await;
    let dir = tempfile::tempdir().expect("a working folder");
    std::fs::write(
        dir.path().join("sandstorm.json"),
        // 0.9.2's meaning of webhook_url (E2B's lifecycle events): no
        // run's notice goes there. A completion URL would need the secret.
        r#"{"webhook_url": "https://my-server.example.com/webhooks/e2b",
            "triggers": [{"name": "daily", "type": "cron", "schedule": "0 9 * * 1-5",
                          "prompt": "Write the digest"}]}"#,
    )
    .expect("write sandstorm.json");
    let server = DsServe::e2b(&e2b).current_dir(dir.path()).start().await;
    let listed: serde_json::Value = reqwest::get(format!("{}/triggers", server.url))
        .await
        .expect("GET /triggers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["triggers"][0]["name"], "daily", "{listed}");
    assert_eq!(listed["triggers"][0]["schedule"], "0 9 * * 1-5", "{listed}");
    assert!(
        !server.log().contains("`triggers` does nothing yet"),
        "{}",
        server.log()
    );
    // And it serves.
    let health = reqwest::get(format!("{}/health", server.url))
        .await
        .expect("GET /health");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn deep_health_of_a_local_sandbox_server_is_ok_with_nothing_to_reach() {
    let server = DsServe::new(["serve", "--sandbox", "local"])
        .env("ANTHROPIC_API_KEY", common::keys::ANTHROPIC_KEY)
        .start()
        .await;
    let (status, body) = deep_health(&server, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["checks"]["sandbox"], true, "{body}");
}
