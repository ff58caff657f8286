//! Completion webhooks, end to end: `ds serve` as a real process, the real
//! runner and Agent SDK in the sandbox, a scripted model, and a receiver on
//! loopback whose every POST the official Standard Webhooks verifier
//! checks under the server's `SANDSTORM_WEBHOOK_SECRET`.

mod common;

use std::time::Duration;

use common::emulator;
use common::model_server::{FINAL_TEXT, ModelServer, Script};
use common::process::{Process, listening_on};
use common::product::{Chain, Serve};
use common::sse::Decoder;
use common::tools::{manifest_dir, tool};
use common::webhooks::{Receiver, SECRET, verify};
use futures::StreamExt;
use serde_json::{Value, json};

/// How long a notice may take to arrive: a run, and the retries' delays.
const ARRIVES_WITHIN: Duration = Duration::from_secs(120);
/// A secret that is not the server's.
const OTHER_SECRET: &str = "whsec_b3RoZXItc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM=";

/// Starts a detached run of `body` and reads its stream up to the `run`
/// event, then drops the connection, as a client that goes away; the run's
/// id.
async fn start_and_leave(base: &str, body: Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/query"))
        .json(&body)
        .send()
        .await
        .expect("POST /query");
    assert_eq!(response.status(), 200);
    let mut decoder = Decoder::new();
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = stream.next().await {
            if let Some(event) = decoder.feed(&chunk.expect("read")).into_iter().next() {
                return event.json();
            }
        }
        panic!("the stream ended before its first event")
    })
    .await
    .expect("the run event within a minute");
    assert_eq!(first["type"], "run", "{first}");
    first["run_id"].as_str().expect("a run id").to_owned()
}

#[tokio::test]
async fn a_detached_run_s_end_reaches_a_receiver_that_failed_twice_after_its_client_left() {
    let model = ModelServer::start(Script::Bash {
        command: "sleep 3 && echo later > later.txt".to_owned(),
    })
    .await;
    let receiver = Receiver::start(vec![500, 503]).await;
    let history = tempfile::tempdir().expect("a folder for the history");
    let product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        .env("SANDSTORM_WEBHOOK_RETRY_SCHEDULE", "1s,1s")
        .env("SANDSTORM_RUN_LINGER", "2")
        .env(
            "SANDSTORM_HISTORY_PATH",
            &history.path().join("history.db").display().to_string(),
        )
        .start()
        .await;

    let run_id = start_and_leave(
        product.url(),
        json!({
            "prompt": "go",
            "detach": true,
            "webhook_url": receiver.url(),
            "team_id": "blue",
        }),
    )
    .await;
    // The client is gone, and the run is not over yet.
    assert!(receiver.received().is_empty());

    let got = receiver.wait_for(3, ARRIVES_WITHIN).await;
    let answered: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 503, 200], "{}", product.log());
    for received in &got {
        verify(SECRET, received)
            .await
            .unwrap_or_else(|why| panic!("the verifier refused {received:?}: {why}"));
        assert_eq!(received.header("webhook-id"), got[0].header("webhook-id"));
        assert_eq!(received.header("content-type"), Some("application/json"));
    }
    let notice = got[2].json();
    assert_eq!(notice["type"], "run.ended", "{notice}");
    let data = &notice["data"];
    assert_eq!(data["run_id"], run_id.as_str(), "{notice}");
    assert_eq!(data["status"], "succeeded", "{notice}");
    assert_eq!(data["detached"], true, "{notice}");
    assert_eq!(data["turn"], 1, "{notice}");
    assert_eq!(data["result"], FINAL_TEXT, "{notice}");
    assert_eq!(data["labels"]["team_id"], "blue", "{notice}");
    assert!(data["turns"].as_u64().is_some_and(|t| t >= 1), "{notice}");
    assert!(
        data["duration_ms"].as_u64().is_some_and(|ms| ms >= 3000),
        "{notice}"
    );
    assert_eq!(data["error"], Value::Null, "{notice}");
    assert!(
        data["created_at"].as_str() < data["ended_at"].as_str(),
        "{notice}"
    );
    // The id is the notice's, not the run's capability.
    let id = got[0].header("webhook-id").expect("an id");
    assert!(!id.contains(run_id.trim_start_matches("run_")), "{id}");

    // A body changed on the way is refused: the verifier is no rubber
    // stamp.
    let mut forged = got[2].clone();
    forged.body = String::from_utf8_lossy(&forged.body)
        .replace("succeeded", "cancelled")
        .into_bytes()
        .into();
    assert!(verify(SECRET, &forged).await.is_err());
    // And so is the right body under another secret.
    assert!(verify(OTHER_SECRET, &got[2]).await.is_err());

    // The server read the run to its end with nobody else reading: its
    // history says how it ended, and never shows where it was told.
    let record: Value = reqwest::get(format!("{}/runs/{run_id}", product.url()))
        .await
        .expect("GET /runs/{id}")
        .json()
        .await
        .expect("a record");
    assert_eq!(record["status"], "succeeded", "{record}");
    assert!(!record.to_string().contains("receiver-token"), "{record}");

    // Taken once, told once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.received().len(), 3);
    assert!(
        !product.log().contains("receiver-token"),
        "the receiver's token is in the server's log:\n{}",
        product.log()
    );
}

#[tokio::test]
async fn an_attached_run_tells_sandstorm_json_s_receiver_its_structured_output() {
    let output = json!({ "fruits": 3, "summary": "apples, pears and plums" });
    let model = ModelServer::start(Script::StructuredOutput {
        output: output.clone(),
    })
    .await;
    let schema = json!({
        "type": "object",
        "properties": {
            "fruits": { "type": "integer" },
            "summary": { "type": "string" },
        },
        "required": ["fruits", "summary"],
        "additionalProperties": false,
    });
    let receiver = Receiver::start(Vec::new()).await;
    let mut product = Serve::new(Chain::Local, &model)
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        .config(json!({
            "webhook_url": receiver.url(),
            "output_format": { "type": "json_schema", "schema": schema },
        }))
        .start()
        .await;

    let events = product.query(json!({"prompt": "count the fruit"})).await;
    assert_eq!(events.result()["structured_output"], output);

    let got = receiver.wait_for(1, ARRIVES_WITHIN).await;
    let notice = verify(SECRET, &got[0]).await.expect("verified");
    let data = &notice["data"];
    assert_eq!(data["status"], "succeeded", "{notice}");
    assert_eq!(data["detached"], false, "{notice}");
    assert_eq!(data["structured_output"], output, "{notice}");
    assert!(
        data["run_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("run_")),
        "{notice}"
    );
    assert_eq!(
        data["total_cost_usd"],
        events.result()["total_cost_usd"],
        "{notice}"
    );
}

#[tokio::test]
async fn a_webhook_url_the_server_cannot_sign_for_is_refused_before_a_sandbox() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let receiver = Receiver::start(Vec::new()).await;
    let product = Serve::new(Chain::E2b, &model).start().await;

    let answer = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .json(&json!({"prompt": "go", "webhook_url": receiver.url()}))
        .send()
        .await
        .expect("POST /query");
    assert_eq!(answer.status(), 422);
    let body: Value = answer.json().await.expect("a JSON error");
    assert_eq!(body["error"]["field"], "webhook_url", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("SANDSTORM_WEBHOOK_SECRET"), "{body}");
    assert!(!message.contains("receiver-token"), "{body}");

    let stats = product.emulator_settled().await.expect("emulator");
    assert_eq!(stats.created, 0, "{stats:?}");
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn the_documented_receiver_takes_a_real_notice_and_refuses_a_forged_one() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let mut receiver = std::process::Command::new(tool("python3", "standardwebhooks==1.3.0"));
    receiver
        .arg(manifest_dir().join("docs/examples/webhook_receiver.py"))
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        .env("PORT", "0");
    let (receiver, url) = Process::start(
        "docs/examples/webhook_receiver.py",
        receiver,
        Duration::from_secs(60),
        listening_on,
    )
    .await;
    let mut product = Serve::new(Chain::Local, &model)
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        .start()
        .await;

    product
        .query(json!({"prompt": "go", "webhook_url": format!("{url}/done")}))
        .await;
    let notice = tokio::time::timeout(ARRIVES_WITHIN, async {
        loop {
            if let Some(line) = receiver.output().lines().find(|l| l.starts_with('{')) {
                return serde_json::from_str::<Value>(line).expect("a JSON line");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no notice printed:\n{}", receiver.output()));
    assert_eq!(notice["status"], "succeeded", "{notice}");
    assert_eq!(notice["result"], FINAL_TEXT, "{notice}");

    let forged = reqwest::Client::new()
        .post(format!("{url}/done"))
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", "1700000000")
        .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body(r#"{"type":"run.ended","data":{"status":"succeeded"}}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(forged.status(), 401);
}

#[tokio::test]
async fn each_turn_of_a_detached_run_is_told_with_its_own_id() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let receiver = Receiver::start(Vec::new()).await;
    let product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        .env("SANDSTORM_PAUSE_IDLE", "0")
        .env("SANDSTORM_RUN_LINGER", "2")
        .start()
        .await;
    let client = reqwest::Client::new();

    let run_id = start_and_leave(
        product.url(),
        json!({"prompt": "first", "keep_alive": 60, "webhook_url": receiver.url()}),
    )
    .await;
    let first = receiver.wait_for(1, ARRIVES_WITHIN).await;
    let turn = client
        .post(format!("{}/runs/{run_id}/messages", product.url()))
        .json(&json!({"prompt": "second"}))
        .send()
        .await
        .expect("a follow-up");
    assert_eq!(turn.status(), 200);
    // Its client leaves at once: the turn is told all the same.
    drop(turn);
    let got = receiver.wait_for(2, ARRIVES_WITHIN).await;
    let notices: Vec<Value> = got.iter().map(common::webhooks::Received::json).collect();
    for received in &got {
        verify(SECRET, received).await.expect("verified");
    }
    assert_eq!(first.len(), 1);
    let turns: Vec<&Value> = notices.iter().map(|n| &n["data"]["turn"]).collect();
    assert_eq!(turns, [1, 2], "{notices:?}");
    assert!(
        notices
            .iter()
            .all(|n| n["data"]["run_id"] == run_id.as_str())
    );
    assert!(notices.iter().all(|n| n["data"]["status"] == "succeeded"));
    assert_ne!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    // A follow-up cannot move the run's notices elsewhere.
    let moved = client
        .post(format!("{}/runs/{run_id}/messages", product.url()))
        .json(&json!({"prompt": "third", "webhook_url": "http://127.0.0.1:9/elsewhere"}))
        .send()
        .await
        .expect("a follow-up");
    assert_eq!(moved.status(), 422);
    let body: Value = moved.json().await.expect("a JSON error");
    assert_eq!(body["error"]["field"], "webhook_url", "{body}");
}

#[tokio::test]
async fn a_private_receiver_is_refused_without_the_setting_and_never_sent_to() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let receiver = Receiver::start(Vec::new()).await;
    let mut product = Serve::new(Chain::Local, &model)
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        .env("SANDSTORM_WEBHOOK_ALLOW_PRIVATE", "0")
        .env("SANDSTORM_WEBHOOK_RETRY_SCHEDULE", "none")
        .start()
        .await;

    // Written as an address: refused with the request, before a sandbox.
    let answer = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .json(&json!({"prompt": "go", "webhook_url": receiver.url()}))
        .send()
        .await
        .expect("POST /query");
    assert_eq!(answer.status(), 422);
    let body: Value = answer.json().await.expect("a JSON error");
    assert_eq!(body["error"]["field"], "webhook_url", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("SANDSTORM_WEBHOOK_ALLOW_PRIVATE")),
        "{body}"
    );

    // A name that resolves to it: the run goes, its notice does not, and
    // the log says why.
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let events = product
        .query(json!({"prompt": "go", "webhook_url": by_name}))
        .await;
    assert_eq!(events.result()["subtype"], "success");
    let mut log = product.log();
    for _ in 0..100 {
        if log.contains("webhook given up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = product.log();
    }
    assert!(log.contains("resolves only to"), "{log}");
    assert!(!log.contains("receiver-token"), "{log}");
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn a_stopping_server_gives_a_notice_waiting_for_its_retry_a_last_attempt() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let receiver = Receiver::start(vec![503]).await;
    let mut product = Serve::new(Chain::Local, &model)
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        // The retry would be an hour away.
        .env("SANDSTORM_WEBHOOK_RETRY_SCHEDULE", "1h")
        .start()
        .await;
    product
        .query(json!({"prompt": "go", "webhook_url": receiver.url()}))
        .await;
    receiver.wait_for(1, ARRIVES_WITHIN).await;

    product.signal(common::process::Signal::TERM);
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got[1].answered, 200);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    verify(SECRET, &got[1]).await.expect("verified");
}

#[tokio::test]
async fn a_run_that_outlasts_its_stream_is_read_to_its_end_and_told() {
    let model = ModelServer::start(Script::Bash {
        command: "sleep 7 && echo later > later.txt".to_owned(),
    })
    .await;
    let receiver = Receiver::start(Vec::new()).await;
    let history = tempfile::tempdir().expect("a folder for the history");
    let product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_WEBHOOK_SECRET", SECRET)
        // The stream detaches two seconds before this, while the agent
        // still works.
        .env("SANDSTORM_MAX_DURATION", "5")
        .env("SANDSTORM_RUN_LINGER", "2")
        .env(
            "SANDSTORM_HISTORY_PATH",
            &history.path().join("history.db").display().to_string(),
        )
        .start()
        .await;
    let text = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .json(&json!({"prompt": "go", "detach": true, "webhook_url": receiver.url()}))
        .send()
        .await
        .expect("POST /query")
        .text()
        .await
        .expect("the stream");
    let events = common::sse::json_events(&text);
    let last = events.last().expect("events");
    assert_eq!(last["type"], "detached", "{text}");
    let run_id = last["run_id"].as_str().expect("a run id").to_owned();
    assert!(receiver.received().is_empty());

    let got = receiver.wait_for(1, ARRIVES_WITHIN).await;
    let notice = verify(SECRET, &got[0]).await.expect("verified");
    assert_eq!(notice["data"]["run_id"], run_id.as_str(), "{notice}");
    assert_eq!(notice["data"]["status"], "succeeded", "{notice}");
    assert_eq!(notice["data"]["result"], FINAL_TEXT, "{notice}");
    let record: Value = reqwest::get(format!("{}/runs/{run_id}", product.url()))
        .await
        .expect("GET /runs/{id}")
        .json()
        .await
        .expect("a record");
    assert_eq!(record["status"], "succeeded", "{record}");
}

/// `host:port` of an http URL.
fn authority(url: &str) -> String {
    let url = reqwest::Url::parse(url).expect("a URL");
    format!(
        "{}:{}",
        url.host_str().expect("a host"),
        url.port_or_known_default().expect("a port")
    )
}

/// The Vercel door, in this process, on the E2B emulator, at an address its
/// sandboxes may call (as a function URL is open to an E2B VM), with
/// `SANDSTORM_PUBLIC_URL` set to it and `extra` beside the usual settings:
/// its URL, and a count of the calls the runs' sandboxes make to it.
struct ServerlessDoor {
    url: String,
    ended_calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _e2b: emulator::RunningEmulator,
    _cwd: tempfile::TempDir,
}

impl ServerlessDoor {
    async fn start(model: &ModelServer, extra: &[(&str, String)]) -> ServerlessDoor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the door");
        let door = format!("http://{}", listener.local_addr().expect("an address"));
        let mut options = emulator::options();
        options.egress_open = Some(format!("{},{}", authority(&model.url()), authority(&door)));
        let e2b = emulator::start_with(options).await;
        let mut env: Vec<(String, String)> = common::product::offline_env();
        env.extend(e2b.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
        env.extend(
            [
                ("ANTHROPIC_BASE_URL", model.url().as_str()),
                ("SANDSTORM_ALLOW_ANONYMOUS", "1"),
                ("SANDSTORM_WEBHOOK_SECRET", SECRET),
                ("SANDSTORM_WEBHOOK_ALLOW_PRIVATE", "1"),
                ("SANDSTORM_PUBLIC_URL", door.as_str()),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let cwd = tempfile::tempdir().expect("the function's folder");
        let router = sandstorm::doors::serverless_app(
            sandstorm::env::EnvVars::from_pairs(env),
            cwd.path(),
            sandstorm::doors::Platform::Vercel,
        )
        .await
        .expect("the Vercel door");
        let ended_calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = ended_calls.clone();
        let router = router.layer(axum::middleware::map_request(
            move |request: axum::extract::Request| {
                let counted = counted.clone();
                async move {
                    if request.uri().path().ends_with("/ended") {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    request
                }
            },
        ));
        tokio::spawn(async move { axum::serve(listener, router).await });
        ServerlessDoor {
            url: door,
            ended_calls,
            _e2b: e2b,
            _cwd: cwd,
        }
    }

    fn ended_calls(&self) -> usize {
        self.ended_calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_serverless_detached_run_s_sandbox_calls_back_and_its_notice_goes_out() {
    let model = ModelServer::start(Script::Bash {
        command: "sleep 2 && echo later > later.txt".to_owned(),
    })
    .await;
    let receiver = Receiver::start(Vec::new()).await;
    let function = ServerlessDoor::start(&model, &[]).await;
    let door = function.url.as_str();

    let run_id = start_and_leave(
        door,
        json!({"prompt": "go", "detach": true, "webhook_url": receiver.url()}),
    )
    .await;
    // Nothing of the door reads the run now; its sandbox will say.
    let got = receiver.wait_for(1, ARRIVES_WITHIN).await;
    let notice = verify(SECRET, &got[0]).await.expect("verified");
    assert_eq!(notice["data"]["run_id"], run_id.as_str(), "{notice}");
    assert_eq!(notice["data"]["status"], "succeeded", "{notice}");
    assert_eq!(notice["data"]["result"], FINAL_TEXT, "{notice}");
    assert!(function.ended_calls() >= 1);

    // A call with another run's token, or none, is refused, and tells
    // nothing.
    let forged = reqwest::Client::new()
        .post(format!("{door}/runs/{run_id}/ended?turn=1"))
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .expect("POST");
    assert_eq!(forged.status(), 401);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1);
}

/// A detached run on a serverless door with no webhook, that nobody reads
/// to its end: nothing of the door is alive when it ends, so its record in
/// the history table would say `running` until a reader came. Its sandbox
/// calls the door back for the record alone.
#[cfg(feature = "aws-dynamodb")]
#[tokio::test]
async fn a_serverless_detached_run_without_a_webhook_is_recorded_ended_by_its_sandbox() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let model = ModelServer::start(Script::Bash {
        command: "sleep 2 && echo later > later.txt".to_owned(),
    })
    .await;
    let moto = common::moto::start().await;
    let dynamodb = common::moto::create_history_table(&moto.url).await;
    let mut extra = common::moto::aws_env(&moto.url);
    extra.push((
        "SANDSTORM_HISTORY_TABLE",
        common::moto::HISTORY_TABLE.to_owned(),
    ));
    let function = ServerlessDoor::start(&model, &extra).await;
    let run_id = start_and_leave(&function.url, json!({"prompt": "go", "detach": true})).await;

    // The record in the table, as the door's store left it: no reader of
    // the run and no list lays anything over it.
    let status = || async {
        let item = dynamodb
            .get_item()
            .table_name(common::moto::HISTORY_TABLE)
            .key("run_id", AttributeValue::S(run_id.clone()))
            .send()
            .await
            .expect("get the item");
        match item.item().and_then(|item| item.get("status")) {
            Some(AttributeValue::S(status)) => status.clone(),
            _ => String::new(),
        }
    };
    let deadline = std::time::Instant::now() + ARRIVES_WITHIN;
    let mut last = status().await;
    while last != "succeeded" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = status().await;
    }
    assert_eq!(
        last,
        "succeeded",
        "the record of {run_id} was never ended; the sandbox called back {} times",
        function.ended_calls()
    );
    assert!(function.ended_calls() >= 1);
}
