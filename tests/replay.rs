//! Replay end to end (issue 17): `POST /runs/{id}/replay` on `ds serve` and
//! `ds replay` on the command line, with the real runner and Agent SDK, the
//! scripted model (whose log shows what each call asked for), and the run
//! history in a real SQLite file.
//!
//! Needs bubblewrap and `npm ci --prefix runner`; the fork runs on the E2B
//! emulator.

mod common;

use common::model_server::{ModelServer, RecordedRequest, Script};
use common::product::{Chain, Cli, Product, Serve};
use serde_json::{Value, json};

/// The model the recorded runs ask for, and the one their replays do.
const ORIGINAL_MODEL: &str = "claude-sonnet-4-5";
const REPLAY_MODEL: &str = "claude-haiku-4-5";
/// What the agent's command prints: the first run's tool result.
const MARKER: &str = "first-run-output";

fn script() -> Script {
    Script::Bash {
        command: format!("echo {MARKER}"),
    }
}

fn serve(model: &ModelServer, chain: Chain, db: &std::path::Path) -> Serve {
    Serve::new(chain, model).env("SANDSTORM_HISTORY_PATH", &db.display().to_string())
}

/// `GET path` on the server: its status and JSON body.
async fn get(product: &Product, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{}{path}", product.url()))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The run's record once it has ended.
async fn ended_record(product: &Product, run_id: &str) -> Value {
    for _ in 0..100 {
        let (status, body) = get(product, &format!("/runs/{run_id}")).await;
        if status == 200 && !matches!(body["status"].as_str(), Some("running") | None) {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no ended record of {run_id}:\n{}", product.log());
}

/// The only run the history lists.
async fn only_run(product: &Product) -> String {
    let (status, body) = get(product, "/runs").await;
    assert_eq!(status, 200, "{body}");
    let runs = body["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "{body}");
    runs[0]["run_id"].as_str().expect("a run id").to_owned()
}

/// `POST /runs/{id}/replay` with `body`: the status, the `x-run-id`, and
/// the events (or the error body).
async fn replay(product: &Product, run_id: &str, body: Value) -> (u16, Option<String>, Vec<Value>) {
    let response = reqwest::Client::new()
        .post(format!("{}/runs/{run_id}/replay", product.url()))
        .json(&body)
        .send()
        .await
        .expect("POST replay");
    let status = response.status().as_u16();
    let run = response
        .headers()
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("the answer");
    let events = if status == 200 {
        common::sse::json_events(&text)
    } else {
        vec![serde_json::from_str(&text).unwrap_or_default()]
    };
    (status, run, events)
}

fn conversation(request: &RecordedRequest) -> String {
    request.body["messages"].to_string()
}

/// The replay's report, which must come just before its `done`.
fn report(events: &[Value]) -> &Value {
    let n = events.len();
    assert!(n >= 2, "{events:?}");
    assert_eq!(events[n - 1]["type"], "done", "{events:?}");
    assert_eq!(events[n - 2]["type"], "replay", "{events:?}");
    &events[n - 2]
}

#[tokio::test]
async fn a_replay_runs_the_recorded_prompt_on_the_model_and_budget_it_is_given() {
    let model = ModelServer::start(script()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut product = serve(&model, Chain::Local, &dir.path().join("h.db"))
        .start()
        .await;
    let original = product
        .query(json!({
            "prompt": "run the command, then report",
            "model": ORIGINAL_MODEL,
            "max_turns": 5,
            "team_id": "blue",
        }))
        .await;
    assert_eq!(original.done["status"], "success", "{}", original.dump());
    let run_id = only_run(&product).await;
    let recorded = ended_record(&product, &run_id).await;
    assert_eq!(recorded["status"], "succeeded", "{recorded}");
    let original_calls = model.message_requests().len();
    assert!(
        model
            .agent_requests()
            .iter()
            .all(|r| r.model() == Some(ORIGINAL_MODEL)),
        "{}",
        model.describe_requests()
    );

    // A cap below one call's cost: the call that passes it reaches the
    // model, and the model endpoint refuses the next one.
    let cap = 0.000_001;
    let (status, replay_id, events) = replay(
        &product,
        &run_id,
        json!({"model": REPLAY_MODEL, "max_cost_usd": cap}),
    )
    .await;
    assert_eq!(status, 200, "{events:?}\n{}", product.log());
    assert_eq!(
        replay_id, None,
        "the original was attached, and so is its replay"
    );

    // What the scripted model saw: the recorded prompt, on the new model,
    // and not one call past the cap.
    let calls = model.message_requests();
    let replayed = &calls[original_calls..];
    assert_eq!(
        replayed.len(),
        1,
        "the cap let more than one call through:\n{}",
        model.describe_requests()
    );
    assert!(original_calls > 1, "{}", model.describe_requests());
    assert_eq!(replayed[0].model(), Some(REPLAY_MODEL));
    assert!(
        conversation(&replayed[0]).contains("run the command, then report"),
        "{}",
        model.describe_requests()
    );
    let error = events
        .iter()
        .find(|e| e["type"] == "error")
        .unwrap_or_else(|| panic!("no error event: {events:?}"));
    assert_eq!(error["error_type"], "budget_exceeded", "{error}");

    // The report compares the two.
    let report = report(&events);
    assert_eq!(report["forked"], false, "{report}");
    assert_eq!(report["original"]["run_id"], run_id.as_str(), "{report}");
    assert_eq!(report["original"]["model"], ORIGINAL_MODEL, "{report}");
    assert_eq!(report["original"]["turns"], recorded["turns"], "{report}");
    assert_eq!(report["replay"]["model"], REPLAY_MODEL, "{report}");
    assert_eq!(report["replay"]["max_cost_usd"], cap, "{report}");
    assert_eq!(
        report["replay"]["error_type"], "budget_exceeded",
        "{report}"
    );
    let markdown = report["markdown"].as_str().expect("markdown");
    for row in [
        format!("# Replay report: {run_id} → "),
        format!("| Model | {ORIGINAL_MODEL} | {REPLAY_MODEL} | changed |"),
        "| Result | succeeded | failed: budget_exceeded | changed |".to_owned(),
        "| Cost cap (USD) | n/a | 0.000001 | — |".to_owned(),
        "> Forked session: no".to_owned(),
    ] {
        assert!(markdown.contains(&row), "{row:?} is not in:\n{markdown}");
    }

    // The replay is recorded as one, with the original's labels.
    let replay_run = report["replay"]["run_id"]
        .as_str()
        .expect("the replay's id");
    let record = ended_record(&product, replay_run).await;
    assert_eq!(record["replay_of"], run_id.as_str(), "{record}");
    assert_eq!(record["model"], REPLAY_MODEL, "{record}");
    assert_eq!(record["error_type"], "budget_exceeded", "{record}");
    assert_eq!(record["labels"]["team_id"], "blue", "{record}");
    assert_eq!(record["request"]["max_cost_usd"], cap, "{record}");
    // Both runs' sandboxes are gone.
    product.assert_sandboxes_destroyed(2).await;
}

#[tokio::test]
async fn a_replay_is_refused_by_name_when_it_cannot_run_as_recorded() {
    let model = ModelServer::start(script()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut product = serve(&model, Chain::Local, &dir.path().join("h.db"))
        .start()
        .await;
    let events = product
        .query(json!({"prompt": "read the notes", "files": {"notes.md": "n"}}))
        .await;
    assert_eq!(events.done["status"], "success", "{}", events.dump());
    let run_id = only_run(&product).await;
    ended_record(&product, &run_id).await;
    let calls = model.message_requests().len();

    let refused = |field: &str, body: &Value| -> String {
        assert_eq!(body["error"]["field"], field, "{body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // The history keeps file names, not contents.
    let (status, _, body) = replay(&product, &run_id, json!({})).await;
    assert_eq!(status, 422, "{body:?}");
    assert!(refused("files", &body[0]).contains("notes.md"), "{body:?}");
    // A replay's prompt is the recorded one; it is a run of its own.
    for field in ["prompt", "resume", "fork_session"] {
        let (status, _, body) = replay(&product, &run_id, json!({ field: "x" })).await;
        assert_eq!(status, 422, "{field}: {body:?}");
        refused(field, &body[0]);
    }
    // A bad override is refused as /query refuses it.
    let (status, _, body) = replay(
        &product,
        &run_id,
        json!({"files": {"notes.md": "n"}, "max_turns": 0}),
    )
    .await;
    assert_eq!(status, 422, "{body:?}");
    refused("max_turns", &body[0]);
    let (status, _, _) = replay(&product, "run_00000000000000000000000000000000", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(
        model.message_requests().len(),
        calls,
        "a refused replay reached the model"
    );

    // With the files sent again, it runs.
    let (status, _, events) = replay(&product, &run_id, json!({"files": {"notes.md": "n"}})).await;
    assert_eq!(status, 200, "{events:?}");
    assert_eq!(
        report(&events)["replay"]["status"],
        "succeeded",
        "{events:?}"
    );

    // A server that keeps no history has nothing to replay.
    drop(product);
    let product = Serve::new(Chain::Local, &model)
        .env("SANDSTORM_HISTORY", "0")
        .start()
        .await;
    let (status, _, body) = replay(&product, &run_id, json!({})).await;
    assert_eq!(status, 410, "{body:?}");
    let message = body[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("SANDSTORM_HISTORY_PATH"), "{message}");
}

#[tokio::test]
async fn ds_replay_prints_the_comparison_and_the_model_sees_the_override() {
    let model = ModelServer::start(script()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db").display().to_string();
    let out = Cli::new(&model)
        .env("SANDSTORM_HISTORY_PATH", &db)
        .run(&["run the command, then report", "--model", ORIGINAL_MODEL])
        .await;
    assert!(out.status.success(), "{}", out.dump());
    let out = Cli::new(&model)
        .without_sandbox_flag()
        .env("SANDSTORM_HISTORY_PATH", &db)
        .run(&["runs", "--json-output"])
        .await;
    let run: Value = serde_json::from_str(out.stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|_| panic!("{}", out.dump()));
    let run_id = run["run_id"].as_str().expect("a run id").to_owned();
    let original_calls = model.agent_requests().len();

    // `ds replay` on this machine's history, in this process, as 0.9.2's.
    let report_file = dir.path().join("report.md");
    let out = Cli::new(&model)
        .without_sandbox_flag()
        .env("SANDSTORM_HISTORY_PATH", &db)
        .run(&["replay", &run_id, "--model", REPLAY_MODEL])
        .await;
    assert!(out.status.success(), "{}", out.dump());
    let replayed = &model.agent_requests()[original_calls..];
    assert!(!replayed.is_empty(), "{}", model.describe_requests());
    assert!(
        replayed.iter().all(|r| r.model() == Some(REPLAY_MODEL)),
        "{}",
        model.describe_requests()
    );
    // The answer on stdout, the comparison on stderr.
    assert!(
        out.stdout.contains(common::model_server::FINAL_TEXT),
        "{}",
        out.dump()
    );
    for row in [
        format!("# Replay report: {run_id} → run_"),
        "| Metric | Original | Replay | Δ |".to_owned(),
        format!("| Model | {ORIGINAL_MODEL} | {REPLAY_MODEL} | changed |"),
        "| Result | succeeded | succeeded | = |".to_owned(),
        "| Turns | 2 | 2 | → +0 (+0.0%) |".to_owned(),
    ] {
        assert!(out.stderr.contains(&row), "{row:?}:\n{}", out.dump());
    }

    // With --json-output the report is an event among the others, and
    // --output writes its table to a file.
    let out = Cli::new(&model)
        .without_sandbox_flag()
        .env("SANDSTORM_HISTORY_PATH", &db)
        .run(&[
            "replay",
            &run_id,
            "--json-output",
            "--output",
            &report_file.display().to_string(),
        ])
        .await;
    assert!(out.status.success(), "{}", out.dump());
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("{}", out.dump())))
        .collect();
    let report = report(&events);
    let written = std::fs::read_to_string(&report_file).expect("the report file");
    assert_eq!(report["markdown"].as_str(), Some(written.as_str()));
    assert!(
        written.contains(&format!(
            "| Model | {ORIGINAL_MODEL} | {ORIGINAL_MODEL} | = |"
        )),
        "{written}"
    );

    // An unknown run is refused, and nothing runs.
    let calls = model.message_requests().len();
    let out = Cli::new(&model)
        .without_sandbox_flag()
        .env("SANDSTORM_HISTORY_PATH", &db)
        .run(&["replay", "run_00000000000000000000000000000000"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    assert!(out.stderr.contains("no such run"), "{}", out.dump());
    assert_eq!(model.message_requests().len(), calls);
}

#[tokio::test]
async fn a_replay_forks_the_session_while_the_recorded_runs_sandbox_is_kept() {
    let model = ModelServer::start(script()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let product = serve(&model, Chain::E2b, &dir.path().join("h.db"))
        .start()
        .await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/query", product.url()))
        .json(&json!({
            "prompt": "run the command, then report",
            "model": ORIGINAL_MODEL,
            "detach": true,
            "keep_alive": 120,
        }))
        .send()
        .await
        .expect("POST /query");
    let text = response.text().await.expect("the run's events");
    let events = common::sse::json_events(&text);
    let run_id = events[0]["run_id"]
        .as_str()
        .expect("a run event")
        .to_owned();
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some(json!("success")),
        "{text}"
    );
    let before = model.agent_requests().len();

    let (status, replay_id, events) =
        replay(&product, &run_id, json!({"model": REPLAY_MODEL})).await;
    assert_eq!(status, 200, "{events:?}\n{}", product.log());
    let replay_id = replay_id.expect("a detached run's replay is detached");
    assert_ne!(replay_id, run_id);
    let report = report(&events);
    assert_eq!(report["forked"], true, "{report}");
    assert_eq!(report["replay"]["run_id"], replay_id.as_str(), "{report}");
    assert!(
        report["markdown"]
            .as_str()
            .is_some_and(|m| m.contains("> Forked session: yes")),
        "{report}"
    );
    // The fork's first call carries the first run's transcript: its tool
    // result, which only that run's sandbox printed.
    let requests = model.agent_requests();
    let first = requests[before..]
        .first()
        .unwrap_or_else(|| panic!("no call of the replay:\n{}", model.describe_requests()));
    assert_eq!(first.model(), Some(REPLAY_MODEL));
    assert!(
        conversation(first).contains(MARKER),
        "the fork's first call lacks the original's transcript:\n{}",
        model.describe_requests()
    );
    // The original is untouched; end both runs' sandboxes.
    let (_, status) = get(&product, &format!("/runs/{run_id}")).await;
    assert_eq!(status["status"], "idle", "{status}");
    for run in [&run_id, &replay_id] {
        let response = client
            .delete(format!("{}/runs/{run}", product.url()))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(response.status(), 200, "{run}");
    }
}
