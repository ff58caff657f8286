//! On E2B a run's upload and its runner's start go out together (see
//! `src/sandbox/e2b/launch.rs`): the start reaches envd before the upload
//! is answered, the runner waits in the sandbox until the upload's last
//! file is in place, and still reads every file; an upload that fails ends
//! the run with its own error and the sandbox, with nothing left waiting.
//! The emulator's synthetic runner keeps the same wait, or it would stand
//! in for a runner that starts before its files.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::emulator::{self, Knobs, Snapshot, synthetic};
use common::keys::E2B_KEY;
use common::model_server::{ModelServer, Script};
use common::product::{Chain, Serve};
use common::serve::DsServe;
use common::stream::read_stream;
use futures::StreamExt;
use sandstorm::runs::log::EVENT_LOG;
use sandstorm::sandbox::e2b::{E2bOptions, E2bProvider};
use sandstorm::sandbox::{
    ProcessEvent, ProcessSpec, SandboxFile, SandboxProvider, SandboxSpec, upload_gate,
};
use serde_json::json;

const CSV: &str = "name,qty\napple,3\npear,5\n";
const NOTES: &str = "# notes from a folder";
/// How long the emulator holds each upload before writing it: far longer
/// than a start takes, so the runner is surely waiting for its files.
const UPLOAD_DELAY_MS: u64 = 1500;

const START: &str = "POST /process.Process/Start";
const UPLOAD: &str = "POST /files";
const CREATE: &str = "POST /v2/sandboxes";

/// Where in the emulator's call log `call` first reached `moment`.
fn position(stats: &Snapshot, call: &str, moment: emulator::Moment) -> usize {
    stats
        .calls
        .iter()
        .position(|c| c.call == call && c.moment == moment)
        .unwrap_or_else(|| panic!("no {call} {moment:?} in {:?}", stats.calls))
}

#[tokio::test]
async fn the_runner_starts_beside_its_upload_and_reads_every_uploaded_file() {
    let model = ModelServer::start(Script::Bash {
        command: "cat data.csv docs/notes.md".into(),
    })
    .await;
    let mut product = Serve::new(Chain::E2b, &model).start().await;
    let e2b = product.emulator().expect("the E2B chain has an emulator");
    e2b.emulator.set_knobs(Knobs {
        upload_delay_ms: UPLOAD_DELAY_MS,
        ..Knobs::default()
    });

    let events = product
        .query(json!({
            "prompt": "read the files",
            "files": {"data.csv": CSV, "docs/notes.md": NOTES},
        }))
        .await;

    let results = events.tool_results();
    assert_eq!(results.len(), 1, "{}", events.dump());
    let (output, is_error) = &results[0];
    assert!(!is_error, "the Bash call failed: {output}");
    assert!(
        output.contains(CSV.trim_end()) && output.contains(NOTES),
        "the runner did not see the user's files: {output}"
    );
    assert_eq!(events.result()["subtype"], "success", "{}", events.dump());

    // The runner's start reached envd, and was even answered, while the
    // upload was still being written.
    let stats = product.emulator_now().expect("emulator");
    let upload_answered = position(&stats, UPLOAD, emulator::Moment::Answered);
    assert!(
        position(&stats, START, emulator::Moment::Arrived) < upload_answered,
        "the start waited for the upload: {:?}",
        stats.calls
    );
    assert!(
        position(&stats, START, emulator::Moment::Answered) < upload_answered,
        "the start's answer waited for the upload: {:?}",
        stats.calls
    );
    product.assert_sandboxes_destroyed(1).await;
}

#[tokio::test]
async fn an_upload_that_fails_ends_the_run_with_its_error_and_leaves_nothing_waiting() {
    let model = ModelServer::start(Script::Bash {
        command: "true".into(),
    })
    .await;
    let mut product = Serve::new(Chain::E2b, &model).start().await;
    let e2b = product.emulator().expect("the E2B chain has an emulator");
    e2b.emulator.set_knobs(Knobs {
        upload_failures: 1,
        ..Knobs::default()
    });

    // The gate would wait minutes for a marker that never lands: a run
    // that waited on it would not end within this.
    let events = tokio::time::timeout(
        Duration::from_secs(60),
        product.query(json!({"prompt": "go", "files": {"data.csv": CSV}})),
    )
    .await
    .expect("the run ends once its upload failed");

    let errors = events.of_type("error");
    assert_eq!(errors.len(), 1, "{}", events.dump());
    let message = errors[0]["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("upload") && message.contains("507"),
        "the upload's own error: {}",
        events.dump()
    );
    assert!(
        model.agent_requests().is_empty(),
        "the runner ran without its files: {}",
        model.describe_requests()
    );
    // The sandbox, and the waiting runner with it, is gone.
    let stats = product.emulator_settled().await.expect("emulator");
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));
}

/// The synthetic runner, which runs no shell, keeps the gate's wait: it
/// says nothing (an attached runner) or writes no log (a detached run's
/// wrapper) until the marker its environment names is uploaded. Driven
/// through the client's own start and upload, one at a time.
#[tokio::test]
async fn the_synthetic_runner_answers_only_once_its_marker_is_uploaded() {
    let e2b = emulator::start(synthetic(20, 200)).await;
    let provider = E2bProvider::new(E2bOptions::local(&e2b.url, E2B_KEY)).expect("client builds");
    let sandbox = provider
        .create(SandboxSpec::default())
        .await
        .expect("create");
    let runner = |marker: &str, records: bool| {
        let mut envs =
            BTreeMap::from([(upload_gate::MARKER_VARIABLE.to_owned(), marker.to_owned())]);
        if records {
            envs.insert("SANDSTORM_EVENT_RECORDS".to_owned(), "1".to_owned());
        }
        ProcessSpec {
            cmd: "node".into(),
            args: vec!["/opt/agent-runner/runner.mjs".into()],
            envs,
            cwd: "/home/user".into(),
            ..ProcessSpec::default()
        }
    };
    let upload = |path: &str| {
        vec![SandboxFile {
            path: path.to_owned(),
            content: Default::default(),
        }]
    };

    let mut output = sandbox
        .start(runner("/tmp/.sandstorm/uploaded-a", false))
        .await
        .expect("start");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), output.next())
            .await
            .is_err(),
        "the synthetic runner spoke before its marker was uploaded"
    );
    sandbox
        .upload(upload("/tmp/.sandstorm/uploaded-a"))
        .await
        .expect("upload the marker");
    let first = tokio::time::timeout(Duration::from_secs(10), output.next())
        .await
        .expect("the runner speaks once its marker is in");
    assert!(
        matches!(first, Some(Ok(ProcessEvent::Stdout(_)))),
        "{first:?}"
    );

    let mut wrapper = sandbox
        .start(runner("/tmp/.sandstorm/uploaded-b", true))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sandbox.read_file(EVENT_LOG).await.is_err(),
        "the log was written before the marker was uploaded"
    );
    sandbox
        .upload(upload("/tmp/.sandstorm/uploaded-b"))
        .await
        .expect("upload the marker");
    let end = tokio::time::timeout(Duration::from_secs(10), wrapper.next())
        .await
        .expect("the wrapper ends once its marker is in");
    assert!(
        matches!(&end, Some(Ok(ProcessEvent::Exited(status))) if status.success()),
        "{end:?}"
    );
    assert!(
        !sandbox
            .read_file(EVENT_LOG)
            .await
            .expect("the log")
            .is_empty()
    );
    sandbox.destroy().await.expect("destroy");
}

/// A detached run's wrapper goes out behind the same gate and its
/// synthetic log is read back whole.
#[tokio::test]
async fn a_detached_synthetic_run_behind_a_slow_upload_is_read_whole() {
    let mut knobs = synthetic(20, 200);
    knobs.upload_delay_ms = UPLOAD_DELAY_MS;
    let e2b = emulator::start(knobs).await;
    let server = DsServe::e2b(&e2b)
        .env("SANDSTORM_RUN_LINGER", "0")
        .start()
        .await;
    let detached = read_stream(
        reqwest::Client::new()
            .post(format!("{}/query", server.url))
            .json(&json!({"prompt": "go", "detach": true})),
    )
    .await;
    assert_eq!(detached.events.len(), 21, "the run event and every line");
    assert_eq!(detached.last()["type"], "result");
    let stats = e2b.settled(Duration::from_secs(5)).await;
    assert_eq!((stats.created, stats.killed, stats.alive), (1, 1, 0));
}

/// A burst of runs past `SANDSTORM_E2B_MAX_STARTING` waits its turn (see
/// `src/sandbox/e2b/starting.rs`): in the emulator's call log, no more
/// creates have arrived than the bound plus the starts answered so far,
/// the bound is reached (the starts do overlap), and every run completes
/// with its sandbox destroyed.
#[tokio::test]
async fn a_burst_waits_for_start_slots_and_every_run_completes() {
    const RUNS: usize = 6;
    const MAX_STARTING: usize = 2;
    let mut knobs = synthetic(5, 50);
    // Every call takes this long, so starts in flight overlap.
    knobs.latency_ms = 100;
    let e2b = emulator::start(knobs).await;
    let server = DsServe::e2b(&e2b)
        .env("SANDSTORM_E2B_MAX_STARTING", MAX_STARTING.to_string())
        .start()
        .await;
    let client = reqwest::Client::new();
    let streams = futures::future::join_all((0..RUNS).map(|k| {
        read_stream(
            client
                .post(format!("{}/query", server.url))
                .json(&json!({"prompt": format!("run {k}")})),
        )
    }))
    .await;
    for stream in &streams {
        assert_eq!(stream.last()["type"], "result", "{:?}", stream.events);
    }
    let stats = e2b.settled(Duration::from_secs(10)).await;
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (RUNS as u64, RUNS as u64, 0)
    );

    // A start answered frees a slot; the model proxy's starts count too,
    // which only makes the bound checked here looser than the real one.
    let (mut created, mut started, mut most_starting) = (0, 0, 0);
    for call in &stats.calls {
        match (call.call.as_str(), call.moment) {
            (CREATE, emulator::Moment::Arrived) => created += 1,
            (START, emulator::Moment::Answered) => started += 1,
            _ => continue,
        }
        assert!(
            created <= MAX_STARTING + started,
            "{created} creates arrived with {started} starts answered: {:?}",
            stats.calls
        );
        most_starting = most_starting.max(created.saturating_sub(started));
    }
    assert_eq!(created, RUNS, "{:?}", stats.calls);
    assert_eq!(most_starting, MAX_STARTING, "{:?}", stats.calls);
}
