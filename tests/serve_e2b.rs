//! `ds serve` as a real process, on a real socket, against the E2B emulator
//! (synthetic runner): the lines stream in order, a query costs exactly
//! create + one upload + one start + one delete, and a client that leaves
//! gets its sandbox destroyed.

mod support;

use std::time::{Duration, Instant};

use e2b_emulator::{Knobs, knobs::Synthetic};
use futures::StreamExt;
use support::emulator::{self, E2B_KEY};
use tokio::process::Command;

fn synthetic(lines: u64, bytes: usize) -> Knobs {
    Knobs {
        synthetic: Some(Synthetic { lines, bytes }),
        ..Knobs::default()
    }
}

struct Server {
    url: String,
    _listening: emulator::Listening,
    _dir: tempfile::TempDir,
}

/// Starts `ds serve --port 0` pointed at the emulator.
async fn start_ds_serve(emulator_url: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ds"));
    command
        .args(["serve", "--port", "0", "--sandbox", "e2b"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("E2B_API_URL", emulator_url)
        .env("E2B_SANDBOX_URL", emulator_url)
        .env("E2B_API_KEY", E2B_KEY)
        .env("ANTHROPIC_API_KEY", "sk-ant-test-0000")
        .env("RUST_LOG", "warn");
    let listening = emulator::listen(command).await;
    // No --host given: ds serve must stay on loopback.
    assert!(
        listening.url.starts_with("http://127.0.0.1:"),
        "ds serve listens on {} by default",
        listening.url
    );
    Server {
        url: listening.url.clone(),
        _listening: listening,
        _dir: dir,
    }
}

/// Reads a whole SSE body into the JSON of its `data:` events.
async fn read_events(response: reqwest::Response) -> Vec<serde_json::Value> {
    let text = tokio::time::timeout(Duration::from_secs(60), response.text())
        .await
        .expect("stream ends within 60 s")
        .expect("body");
    text.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).expect("every event is JSON"))
        .collect()
}

async fn wait_for(mut check: impl FnMut() -> bool, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn a_query_with_two_files_streams_every_line_in_order_with_four_e2b_calls() {
    let e2b = emulator::start(synthetic(500, 300), None).await;
    let server = start_ds_serve(&e2b.url).await;
    let response = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .json(&serde_json::json!({
            "prompt": "analyze",
            "files": {"data.csv": "a,b\n1,2\n", "src/notes.md": "# notes"}
        }))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = read_events(response).await;
    assert_eq!(events.len(), 500, "every runner line is one event");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], i as u64, "in order");
    }
    assert_eq!(events[499]["type"], "result");

    // The run's task destroys the sandbox before it ends the stream.
    let stats = e2b.emulator.stats();
    for (route, count) in [("create", 1), ("upload", 1), ("start", 1), ("kill", 1)] {
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
    let e2b = emulator::start(synthetic(50_000_000, 200), None).await;
    let server = start_ds_serve(&e2b.url).await;
    let response = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .json(&serde_json::json!({"prompt": "go"}))
        .send()
        .await
        .expect("response");
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a chunk").expect("ok");
    assert!(first.starts_with(b"data: "));
    assert_eq!(e2b.emulator.stats().alive, 1);
    drop(body);
    let left = Instant::now();
    let destroyed = wait_for(
        || {
            let stats = e2b.emulator.stats();
            stats.alive == 0 && stats.killed == stats.created
        },
        Duration::from_secs(5),
    )
    .await;
    let elapsed =
        destroyed.unwrap_or_else(|| panic!("sandbox still alive 5 s after the client left"));
    assert!(
        elapsed <= Duration::from_secs(1),
        "destroyed {elapsed:?} after the client left (limit 1 s)"
    );
    eprintln!("sandbox destroyed {:?} after disconnect", left.elapsed());
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_sandbox_exists() {
    let e2b = emulator::start(synthetic(10, 100), None).await;
    let server = start_ds_serve(&e2b.url).await;
    let response = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .json(&serde_json::json!({"prompt": "x", "files": {"../../etc/passwd": "x"}}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["field"], "files.../../etc/passwd");
    assert_eq!(e2b.emulator.stats().created, 0);
}

#[tokio::test]
async fn ds_serve_refuses_to_start_with_an_invalid_sandstorm_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sandstorm.json"), r#"{"max_turns": "ten"}"#).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_ds"))
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
