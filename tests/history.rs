//! Run history end to end: `ds serve` with a local sandbox, the real runner
//! and Agent SDK, the scripted model, and the history in a real SQLite
//! file that outlives the server.
//!
//! Needs bubblewrap and `npm ci --prefix runner`.

mod common;

use common::keys::ANTHROPIC_KEY;
use common::model_server::{ModelServer, Script};
use common::product::{Chain, Cli, Product, Serve};
use serde_json::{Value, json};

/// The scripted model reports these for every answer.
const TOKENS_PER_CALL: u64 = 120;

fn serve(model: &ModelServer, db: &std::path::Path) -> Serve {
    Serve::new(Chain::Local, model).env("SANDSTORM_HISTORY_PATH", &db.display().to_string())
}

/// `GET path` on the server: its status and JSON body.
async fn get(product: &Product, path: &str) -> (u16, Value) {
    get_at(product.url(), path).await
}

/// `GET path` on the server at `base`: its status and JSON body.
async fn get_at(base: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}{path}")).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The runs `GET path` lists, asserting it answered 200.
async fn listed(product: &Product, path: &str) -> (Vec<Value>, Option<String>) {
    let (status, body) = get(product, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    let runs = body["runs"].as_array().cloned().unwrap_or_default();
    (runs, body["next_cursor"].as_str().map(str::to_owned))
}

/// A record for an assertion's message: without its (long) prompt.
fn brief(record: &Value) -> Value {
    let mut brief = record.clone();
    brief["prompt"] = json!("(left out)");
    brief
}

/// The record is written off the run's path: wait for it to land.
async fn record_of(product: &Product, run_id: &str) -> Value {
    record_when(product, run_id, |status| status != "running").await
}

/// The run's record once its status is one `wanted` takes.
async fn record_when(product: &Product, run_id: &str, wanted: impl Fn(&str) -> bool) -> Value {
    for _ in 0..100 {
        let (status, body) = get(product, &format!("/runs/{run_id}")).await;
        if status == 200 && body["status"].as_str().is_some_and(&wanted) {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no such record of {run_id}:\n{}", product.log());
}

#[tokio::test]
async fn a_runs_record_survives_a_restart_of_the_server() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/history.db");

    let prompt = format!("write the file, please. {}", "x".repeat(70 * 1024));
    let run_id = {
        let mut product = serve(&model, &db).start().await;
        let events = product
            .query(json!({
                "prompt": prompt,
                "files": {"data.csv": "a,b\n1,2\n"},
                "outputs": ["*.txt"],
                "team_id": "blue",
                "user_id": "u-7",
                "channel_id": "c-1",
            }))
            .await;
        assert_eq!(events.done["status"], "success", "{}", events.dump());
        let (runs, _) = listed(&product, "/runs").await;
        assert_eq!(runs.len(), 1, "{runs:?}\n{}", product.log());
        let run_id = runs[0]["run_id"].as_str().expect("a run id").to_owned();
        let record = record_of(&product, &run_id).await;
        let result = events.result();
        // What the record says is what the run did.
        assert_eq!(record["status"], "succeeded", "{}", brief(&record));
        assert_eq!(record["turns"], result["num_turns"], "{}", brief(&record));
        assert_eq!(
            record["total_cost_usd"],
            result["total_cost_usd"],
            "{}",
            brief(&record)
        );
        assert_eq!(
            record["model"],
            events.init()["model"],
            "{}",
            brief(&record)
        );
        assert_eq!(
            record["session_id"],
            result["session_id"],
            "{}",
            brief(&record)
        );
        assert_eq!(
            record["usage"]["output_tokens"],
            result["usage"]["output_tokens"],
            "{}",
            brief(&record)
        );
        run_id
    };
    assert!(db.exists(), "the history is a file");

    // A new server on the same file.
    let product = serve(&model, &db).start().await;
    let (runs, next) = listed(&product, "/runs").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "succeeded");
    assert!(next.is_none());
    let (status, record) = get(&product, &format!("/runs/{run_id}")).await;
    assert_eq!(status, 200, "{}", brief(&record));
    assert_eq!(
        record["labels"],
        json!({"team_id": "blue", "user_id": "u-7", "channel_id": "c-1"})
    );
    assert_eq!(record["detached"], false);
    assert!(
        record["ended_at"].is_string() && record["duration_ms"].is_u64(),
        "{}",
        brief(&record)
    );
    // The prompt is kept whole up to 64 KiB, and says it was cut.
    assert_eq!(record["prompt"].as_str().map(str::len), Some(64 * 1024));
    assert_eq!(record["prompt_truncated"], true);
    // The effective config is there, and no key is.
    assert!(record["config"].is_object(), "{}", brief(&record));
    let text = record.to_string();
    assert!(
        !text.contains(ANTHROPIC_KEY),
        "a key in the record: {}",
        brief(&record)
    );
    assert!(!text.contains("owner"), "{}", brief(&record));
    // The sandbox it ran in, and the file it sent.
    assert!(record["sandbox_id"].is_string(), "{}", brief(&record));
    assert_eq!(
        record["outputs"],
        json!(["out.txt"]),
        "{}",
        record["outputs"]
    );

    // `ds runs` reads the same file, with no server.
    drop(product);
    let cli = || {
        Cli::new(&model)
            .without_sandbox_flag()
            .env("SANDSTORM_HISTORY_PATH", &db.display().to_string())
    };
    let out = cli().run(&["runs", "--json-output"]).await;
    assert!(out.status.success(), "{}", out.dump());
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.dump());
    assert_eq!(lines[0]["run_id"], run_id.as_str());
    assert_eq!(lines[0]["turns"], record["turns"]);
    let out = cli().run(&["runs", "--status", "failed"]).await;
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout.is_empty(), "{}", out.dump());
    let out = cli().run(&["runs", "--limit", "0"]).await;
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stderr.contains("limit"), "{}", out.dump());
}

/// What the agent runs: Messages calls of its own with curl, past a cap.
const CURL_LOOP: &str = "for i in $(seq 1 8); do curl -s -o /dev/null -w '%{http_code} ' \
     -H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'content-type: application/json' \
     -H 'anthropic-version: 2023-06-01' \
     -d '{\"model\":\"claude-haiku-4-5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' \
     \"$ANTHROPIC_BASE_URL/v1/messages\"; done";

#[tokio::test]
async fn a_run_ended_by_its_token_cap_is_recorded_as_budget_exceeded() {
    let model = ModelServer::start(Script::Bash {
        command: CURL_LOOP.into(),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut product = serve(&model, &dir.path().join("h.db")).start().await;
    let cap = 3 * TOKENS_PER_CALL;
    let events = product
        .query(json!({"prompt": "call the model yourself", "max_tokens": cap}))
        .await;
    assert_eq!(events.of_type("error")[0]["error_type"], "budget_exceeded");
    let (runs, _) = listed(&product, "/runs?status=failed").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let record = record_of(&product, runs[0]["run_id"].as_str().expect("id")).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error_type"], "budget_exceeded", "{record}");
    let spend = &events.done["sandstorm"]["spend"];
    assert_eq!(&record["spend"], spend, "{record}");
    assert_eq!(
        record["spend"]["exceeded"],
        json!({"cap": "max_tokens", "limit": cap})
    );
    let (succeeded, _) = listed(&product, "/runs?status=succeeded").await;
    assert!(succeeded.is_empty(), "{succeeded:?}");
}

#[tokio::test]
async fn lists_filter_page_and_refuse_bad_input_by_name() {
    let model = ModelServer::start(Script::Bash {
        command: "true".into(),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut product = serve(&model, &dir.path().join("h.db")).start().await;
    let before = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    for team in ["red", "blue", "blue"] {
        let events = product
            .query(json!({"prompt": "hi", "team_id": team}))
            .await;
        assert_eq!(events.done["status"], "success", "{}", events.dump());
    }
    // Newest first, two at a time.
    let (first, next) = listed(&product, "/runs?limit=2").await;
    assert_eq!(first.len(), 2, "{first:?}");
    let next = next.expect("a second page");
    let (second, last) = listed(&product, &format!("/runs?limit=2&cursor={next}")).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(last.is_none());
    let created = |run: &Value| run["created_at"].as_str().unwrap_or_default().to_owned();
    assert!(created(&first[0]) >= created(&first[1]));
    assert!(created(&first[1]) >= created(&second[0]));
    assert_eq!(second[0]["labels"]["team_id"], "red", "the oldest is last");
    let all: std::collections::BTreeSet<_> = first
        .iter()
        .chain(&second)
        .map(|r| r["run_id"].to_string())
        .collect();
    assert_eq!(all.len(), 3);

    let (blue, _) = listed(&product, "/runs?team_id=blue").await;
    assert_eq!(blue.len(), 2);
    let (since, _) = listed(&product, &format!("/runs?since={before}")).await;
    assert_eq!(since.len(), 3);
    let (none, _) = listed(&product, "/runs?since=2999-01-01T00:00:00Z").await;
    assert!(none.is_empty());

    for (query, field) in [
        ("status=done", "status"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=1000", "limit"),
        ("cursor=bm90LW91cnM", "cursor"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = get(&product, &format!("/runs?{query}")).await;
        // Invalid values are 422s naming the field, as a bad `/query` is.
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, _) = get(&product, "/runs/run_00000000000000000000000000000000").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_history_that_cannot_be_opened_fails_no_run() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A folder where the file should be.
    let mut product = serve(&model, dir.path()).start().await;
    let events = product.query(json!({"prompt": "write the file"})).await;
    assert_eq!(events.done["status"], "success", "{}", events.dump());
    assert!(
        product
            .log()
            .contains("run history: the store cannot be opened"),
        "{}",
        product.log()
    );
}

#[tokio::test]
async fn a_locked_history_fails_no_run_and_the_log_says_so() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    let mut product = serve(&model, &db).start().await;
    // Another process holds the file's write lock for the whole run: every
    // write the server tries times out on it.
    let lock = rusqlite::Connection::open(&db).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let events = product.query(json!({"prompt": "write the file"})).await;
    assert_eq!(events.done["status"], "success", "{}", events.dump());
    for _ in 0..100 {
        if product
            .log()
            .contains("run history: the store failed a write")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the log does not say the store failed:\n{}", product.log());
}

#[tokio::test]
async fn a_detached_run_is_recorded_with_its_own_id_and_end() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The sandbox goes with the run's end: what is read after is the record.
    let mut product = serve(&model, &dir.path().join("h.db"))
        .env("SANDSTORM_RUN_LINGER", "0")
        .start()
        .await;
    let events = product
        .query(json!({"prompt": "write the file", "detach": true, "user_id": "u-1"}))
        .await;
    assert_eq!(events.done["status"], "success", "{}", events.dump());
    let run_id = events.of_type("run")[0]["run_id"]
        .as_str()
        .expect("a run id")
        .to_owned();
    let record = record_of(&product, &run_id).await;
    assert_eq!(record["detached"], true, "{record}");
    assert_eq!(record["status"], "succeeded", "{record}");
    assert!(record["ended_at"].is_string(), "{record}");
    assert_eq!(record["turns"], events.result()["num_turns"], "{record}");
    assert_eq!(record["labels"], json!({"user_id": "u-1"}), "{record}");
    // Listed once, though both its sandbox and the history know it.
    let (runs, _) = listed(&product, "/runs?user_id=u-1").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["run_id"], run_id.as_str());
}

/// `GET /runs/{id}` on a server of [`Product::another_instance`].
async fn record_on(server: &common::serve::Server, run_id: &str) -> (u16, Value) {
    get_at(&server.url, &format!("/runs/{run_id}")).await
}

#[tokio::test]
async fn an_attached_run_of_a_killed_server_is_recorded_interrupted_by_the_next() {
    use rustix::process::Signal;
    // A run that is still in its tool when its server is killed (in an
    // `if`, as Claude Code refuses a bare long sleep).
    let model = ModelServer::start(Script::Bash {
        command: "if true; then sleep 60; fi; echo later".to_owned(),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    // On the emulator, so that what the killed server leaves behind is a
    // sandbox in a process this test owns.
    let product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_HISTORY_PATH", &db.display().to_string())
        .start()
        .await;
    let mut first = product.another_instance(&[], &[]).await;
    let url = format!("{}/query", first.url);
    let client = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .json(&json!({"prompt": "sleep a while", "team_id": "blue"}))
            .send()
            .await?;
        response.text().await
    });
    // The run is recorded, and its agent is in its tool.
    let mut run_id = None;
    for _ in 0..300 {
        let (runs, _) = listed(&product, "/runs").await;
        if !model.message_requests().is_empty()
            && let Some(run) = runs.first()
        {
            run_id = run["run_id"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let run_id = run_id.unwrap_or_else(|| panic!("no run recorded:\n{}", first.log()));

    // Another server starting on the file while the first lives leaves the
    // run alone: its relay is alive.
    let second = product.another_instance(&[], &[]).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (status, record) = record_on(&second, &run_id).await;
    assert_eq!(status, 200, "{}", brief(&record));
    assert_eq!(record["status"], "running", "{}", brief(&record));

    // Killed, as the OOM killer or a lost machine would: no word of the
    // run's end is written.
    first.process.signal(Signal::KILL);
    assert!(
        first
            .process
            .wait_for_exit(std::time::Duration::from_secs(10))
            .is_some(),
        "the first server outlived SIGKILL"
    );
    let _ = client.await;
    let (_, record) = record_on(&second, &run_id).await;
    assert_eq!(
        record["status"],
        "running",
        "nothing ends it until a check: {}",
        brief(&record)
    );

    // The next server to start on the file ends it as interrupted, at once.
    let third = product.another_instance(&[], &[]).await;
    let mut record = Value::Null;
    for _ in 0..100 {
        record = record_on(&third, &run_id).await.1;
        if record["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        record["status"],
        "failed",
        "{}\n{}",
        brief(&record),
        third.log()
    );
    assert_eq!(record["error_type"], "interrupted", "{}", brief(&record));
    assert!(record.get("ended_at").is_none(), "{}", brief(&record));
    assert_eq!(record["labels"], json!({"team_id": "blue"}));
    let (runs, _) = listed(&product, "/runs?status=failed").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        third.log().contains("interrupted"),
        "the log says what it did:\n{}",
        third.log()
    );
}

#[tokio::test]
async fn a_ds_run_is_recorded_before_ds_exits_and_ds_runs_shows_it() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db").display().to_string();
    let out = Cli::new(&model)
        .env("SANDSTORM_HISTORY_PATH", &db)
        .run(&["write the file"])
        .await;
    assert!(out.status.success(), "{}", out.dump());
    let out = Cli::new(&model)
        .without_sandbox_flag()
        .env("SANDSTORM_HISTORY_PATH", &db)
        .run(&["runs", "--json-output", "--status", "succeeded"])
        .await;
    assert!(out.status.success(), "{}", out.dump());
    let runs: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(runs.len(), 1, "{}", out.dump());
    assert_eq!(runs[0]["status"], "succeeded", "{}", out.dump());
    assert!(runs[0]["turns"].is_u64(), "{}", out.dump());
}

/// A POST that answers an event stream: the `x-run-id` and its events.
async fn post_events(url: String, body: Value) -> (Option<String>, Vec<Value>) {
    let response = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200, "POST {url}");
    let run_id = response
        .headers()
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("the event stream");
    (run_id, common::sse::json_events(&text))
}

fn num_turns(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|e| e["type"] == "result")
        .filter_map(|e| e["num_turns"].as_u64())
        .sum()
}

#[tokio::test]
async fn a_follow_up_turn_and_a_cancel_update_the_record() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let product = serve(&model, &dir.path().join("h.db"))
        .env("SANDSTORM_RUN_LINGER", "0")
        .start()
        .await;
    let (run_id, first) = post_events(
        format!("{}/query", product.url()),
        json!({"prompt": "write the file", "keep_alive": 60}),
    )
    .await;
    let run_id = run_id.expect("x-run-id");
    let (_, second) = post_events(
        format!("{}/runs/{run_id}/messages", product.url()),
        json!({"prompt": "once more"}),
    )
    .await;
    assert_eq!(second.last().map(|d| &d["status"]), Some(&json!("success")));
    // Ended now, so that what is read after is the record alone.
    let response = reqwest::Client::new()
        .delete(format!("{}/runs/{run_id}", product.url()))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 200);
    let record = record_when(&product, &run_id, |s| s == "cancelled").await;
    assert!(record.get("expires_at").is_none(), "live fields: {record}");
    // The cancel ended it; the turns' figures stay.
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["error_type"], "cancelled", "{record}");
    assert_eq!(
        record["turns"].as_u64(),
        Some(num_turns(&first) + num_turns(&second)),
        "{record}"
    );
}

#[tokio::test]
async fn the_recorded_config_holds_no_secret_filled_into_it() {
    const TOKEN: &str = "mcp-token-from-the-environment-4821";
    let model = ModelServer::start(Script::Bash {
        command: "true".into(),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut product = serve(&model, &dir.path().join("h.db"))
        .config(json!({"mcp_servers": {"tracker": {
            "command": "node", "args": ["-e", "0"], "env": {"TRACKER_TOKEN": "${TRACKER_TOKEN}"}
        }}}))
        .env("TRACKER_TOKEN", TOKEN)
        .start()
        .await;
    let events = product
        .query(json!({"prompt": format!("the token is {TOKEN}")}))
        .await;
    assert!(events.done.is_object(), "{}", events.dump());
    let (runs, _) = listed(&product, "/runs").await;
    let record = record_of(&product, runs[0]["run_id"].as_str().expect("id")).await;
    let text = record.to_string();
    // The server is there, its secret value is not: not in the config, not
    // in the prompt.
    assert!(text.contains("TRACKER_TOKEN"), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(!text.contains(TOKEN), "a secret in the record: {text}");
    assert!(!text.contains(ANTHROPIC_KEY), "a key in the record: {text}");
}

#[tokio::test]
async fn a_record_is_its_owners_alone() {
    let model = ModelServer::start(Script::Bash {
        command: "true".into(),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut product = Serve::new(Chain::E2b, &model)
        .env(
            "SANDSTORM_HISTORY_PATH",
            &dir.path().join("h.db").display().to_string(),
        )
        .start()
        .await;
    let events = product.query(json!({"prompt": "hi"})).await;
    assert_eq!(events.done["status"], "success", "{}", events.dump());
    let (runs, _) = listed(&product, "/runs").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run_id = runs[0]["run_id"].as_str().expect("id").to_owned();
    record_of(&product, &run_id).await;

    // Another tenant, with an E2B key of its own, sees none of it.
    let client = reqwest::Client::new();
    let stranger = |path: String| {
        client
            .get(format!("{}{path}", product.url()))
            .header("x-e2b-api-key", "e2b_another_tenant_key")
            .send()
    };
    let listed: Value = stranger("/runs".to_owned())
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["runs"], json!([]), "{listed}");
    let response = stranger(format!("/runs/{run_id}")).await.expect("GET");
    assert_eq!(response.status(), 404);
}

/// The events of an SSE body as `(id, data)`: an event's own id, not the
/// one the parser carries over, and no comment (keepalive).
fn numbered(body: &str) -> Vec<(Option<String>, String)> {
    let mut last = None;
    common::sse::parse(body)
        .into_iter()
        .map(|event| {
            let id = (event.id != last).then(|| event.id.clone()).flatten();
            last.clone_from(&event.id);
            (id, event.data)
        })
        .collect()
}

/// `GET /runs/{run_id}/events` with `headers`, once it answers 200 (the
/// events are written off the run's path): its `x-events-source` and body.
async fn stored_events(
    product: &Product,
    run_id: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let mut request = client.get(format!("{}/runs/{run_id}/events", product.url()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("GET");
        if response.status() == 200 {
            let source = response
                .headers()
                .get("x-events-source")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            return (source, response.text().await.expect("the stream"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no stored events of {run_id}:\n{}", product.log());
}

/// Every stored blob in the file, decompressed.
fn stored_text(db: &std::path::Path) -> String {
    use std::io::Read as _;
    let connection = rusqlite::Connection::open(db).expect("open");
    let mut statement = connection
        .prepare("SELECT events FROM events")
        .expect("the events table");
    let blobs: Vec<Vec<u8>> = statement
        .query_map([], |row| row.get(0))
        .expect("query")
        .map(|row| row.expect("a row"))
        .collect();
    let mut text = String::new();
    for blob in blobs {
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_string(&mut text)
            .expect("gzip");
    }
    text
}

#[tokio::test]
async fn stored_events_replay_after_a_restart_as_their_clients_got_them() {
    // The agent prints a key: its events are redacted, and so are the
    // stored ones.
    let model = ModelServer::start(Script::Bash {
        command: format!(
            "{} && echo {ANTHROPIC_KEY}",
            common::model_server::BASH_WRITE_FILE
        ),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    let storing = || {
        serve(&model, &db)
            .env("SANDSTORM_STORE_EVENTS", "1")
            .env("SANDSTORM_RUN_LINGER", "0")
    };
    let files = json!({"data.csv": "a,b\n1,2\n"});
    let (attached, detached, attached_id, detached_id) = {
        let mut product = storing().start().await;
        let attached = product
            .query(json!({"prompt": "write the file", "files": files, "outputs": ["*.txt"]}))
            .await;
        assert_eq!(attached.done["status"], "success", "{}", attached.dump());
        let detached = product
            .query(json!({"prompt": "write the file", "files": files, "detach": true}))
            .await;
        assert_eq!(detached.done["status"], "success", "{}", detached.dump());
        let detached_id = detached.of_type("run")[0]["run_id"]
            .as_str()
            .expect("a run id")
            .to_owned();
        let (runs, _) = listed(&product, "/runs").await;
        let attached_id = runs
            .iter()
            .filter_map(|run| run["run_id"].as_str())
            .find(|id| *id != detached_id)
            .expect("the attached run")
            .to_owned();
        // Read back while the server that wrote them runs: the sandboxes
        // are gone (no linger), so these are the stored events already.
        for id in [&attached_id, &detached_id] {
            let (source, _) = stored_events(&product, id, &[]).await;
            assert_eq!(source, "history");
        }
        (attached.raw, detached.raw, attached_id, detached_id)
    };

    // A new server on the same file.
    let product = storing().start().await;
    // A detached run's events come back as its first client got them,
    // ids and all.
    let (_, replayed) = stored_events(&product, &detached_id, &[]).await;
    let first = numbered(&detached);
    assert!(first.iter().all(|(id, _)| id.is_some()), "{first:?}");
    assert_eq!(numbered(&replayed), first);
    // An attached run's, numbered from 1 as a reader of a detached run's
    // are.
    let (_, replayed) = stored_events(&product, &attached_id, &[]).await;
    let first: Vec<(Option<String>, String)> = numbered(&attached)
        .into_iter()
        .enumerate()
        .map(|(i, (_, data))| (Some((i + 1).to_string()), data))
        .collect();
    assert!(
        first
            .iter()
            .any(|(_, data)| data.contains(r#""type":"file""#)),
        "the output file is among them: {first:?}"
    );
    assert_eq!(numbered(&replayed), first);
    // After an id, as for a live run.
    let (_, after) = stored_events(&product, &attached_id, &[("last-event-id", "2")]).await;
    assert_eq!(numbered(&after), first[2..]);
    // No key, in what is served or in the file.
    assert!(replayed.contains("[REDACTED]"), "{replayed}");
    assert!(!replayed.contains(ANTHROPIC_KEY), "a key in the replay");
    let kept = stored_text(&db);
    assert!(kept.contains("[REDACTED]"), "{kept}");
    assert!(!kept.contains(ANTHROPIC_KEY), "a key in the stored events");

    // With the setting off, stored events are not read either: a finished
    // run's events are not found, as before; its record is.
    drop(product);
    let product = serve(&model, &db).start().await;
    let response = reqwest::get(format!("{}/runs/{attached_id}/events", product.url()))
        .await
        .expect("GET");
    assert_eq!(response.status(), 404);
    let (status, _) = get(&product, &format!("/runs/{attached_id}")).await;
    assert_eq!(status, 200);
}

/// A POST that answers an event stream, read whole: its body.
async fn post_raw(url: String, body: Value) -> String {
    let response = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200, "POST {url}");
    response.text().await.expect("the event stream")
}

#[tokio::test]
async fn a_runs_stored_events_hold_every_turn() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let product = serve(&model, &dir.path().join("h.db"))
        .env("SANDSTORM_STORE_EVENTS", "1")
        .env("SANDSTORM_RUN_LINGER", "0")
        .start()
        .await;
    let first = post_raw(
        format!("{}/query", product.url()),
        json!({"prompt": "write the file", "files": {"data.csv": "a,b\n"}, "keep_alive": 60}),
    )
    .await;
    let run_id = common::sse::json_events(&first)[0]["run_id"]
        .as_str()
        .expect("the run event")
        .to_owned();
    let second = post_raw(
        format!("{}/runs/{run_id}/messages", product.url()),
        json!({"prompt": "once more"}),
    )
    .await;
    // Ended now: what is read after is what the history kept.
    let response = reqwest::Client::new()
        .delete(format!("{}/runs/{run_id}", product.url()))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 200);
    // Both turns, each with its `done`, numbered as their streams were.
    let mut both = numbered(&first);
    both.extend(numbered(&second));
    let dones = both
        .iter()
        .filter(|(_, data)| data.contains(r#""type":"done""#))
        .count();
    assert_eq!(dones, 2, "{both:?}");
    // The second turn's write lands off its stream's path: read until it
    // has.
    let mut stored = Vec::new();
    for _ in 0..50 {
        let (source, body) = stored_events(&product, &run_id, &[]).await;
        assert_eq!(source, "history");
        stored = numbered(&body);
        if stored == both {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stored, both);
}
