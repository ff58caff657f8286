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
async fn a_query_with_two_files_streams_every_line_in_order_with_four_e2b_calls() {
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

    // The run's task destroys the sandbox before it ends the stream.
    let stats = e2b.stats();
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
    // The wrapper and the follower: two starts.
    assert_eq!(stats.requests.get("start").copied(), Some(2), "{stats:?}");
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
