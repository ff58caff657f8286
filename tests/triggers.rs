//! Triggers end to end: `ds serve` on the E2B emulator with the real
//! runner and Agent SDK, the scripted model, and sandstorm.json's
//! triggers. A webhook trigger called as GitHub calls it starts a run whose
//! prompt the model receives filled in; a wrong secret and a flood are
//! refused before any sandbox exists; a cron trigger fires on the server's
//! own scheduler, its clock set just before the fire time.
//!
//! Needs bubblewrap and `npm ci --prefix runner`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::model_server::{ModelServer, RecordedRequest, Script};
use common::product::{Chain, Product, Serve};
use serde_json::{Value, json};

/// The webhook trigger's shared secret, as the environment gives it.
const SECRET: &str = "gh-webhook-secret-for-tests";

/// A GitHub `issues` event, as GitHub sends it (trimmed).
fn issue_opened() -> Value {
    json!({
        "action": "opened",
        "issue": {
            "number": 42,
            "title": "Login broken",
            "body": "Users see 500 on /login",
            "labels": [{"name": "bug"}],
        },
        "repository": {"full_name": "acme/web"},
        "sender": {"login": "octocat"},
    })
}

fn config() -> Value {
    json!({
        "triggers": [
            {
                "name": "triage",
                "type": "webhook",
                "path": "/triggers/github-issue",
                "secret": "${GH_WEBHOOK_SECRET}",
                "prompt": "Triage {{body.repository.full_name}}#{{body.issue.number}} \
                           ({{headers.x-github-event}} {{body.action}} by {{body.sender.login}}): \
                           {{body.issue.title}}. Missing: [{{body.issue.milestone.title}}] \
                           Trigger: {{trigger.name}}",
                "wrap_values": false,
                "rate_limit": 3,
                "max_concurrent": 10,
                "max_turns": 4
            },
            {
                "name": "one-at-a-time",
                "type": "webhook",
                "path": "/hooks/serial",
                "secret": "${GH_WEBHOOK_SECRET}",
                "prompt": "Serial work: {{body.n}}",
                "max_concurrent": 1
            },
            {
                "name": "digest",
                "type": "cron",
                "schedule": "0 9 * * MON-FRI",
                "timezone": "Europe/Prague",
                "prompt": "Write the morning digest ({{trigger.name}}, due {{trigger.fired_at}})"
            }
        ]
    })
}

fn serve(model: &ModelServer) -> Serve {
    Serve::new(Chain::E2b, model)
        .config(config())
        .env("GH_WEBHOOK_SECRET", SECRET)
        .env("SANDSTORM_RUN_LINGER", "0")
        .env("SANDSTORM_HISTORY_PATH", "history.db")
}

/// GitHub's `X-Hub-Signature-256` of `body`, computed by Python's `hmac`,
/// not by our code.
fn github_signature(secret: &str, body: &[u8]) -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys; \
             key = sys.argv[1].encode(); body = sys.stdin.buffer.read(); \
             print('sha256=' + hmac.new(key, body, hashlib.sha256).hexdigest())",
            secret,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(body)?;
            child.wait_with_output()
        })
        .expect("python3 computes the signature");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Calls the trigger at `path` with `body` and `headers`: the status, the
/// headers and the JSON answer.
async fn call(
    product: &Product,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", product.url()))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("POST the trigger");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or_default())
}

/// The text of the first user message of a model request: the run's prompt.
fn prompt_of(request: &RecordedRequest) -> String {
    let content = &request.body["messages"][0]["content"];
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Waits until the model has received an agent request whose prompt
/// contains `marker`, and returns that prompt; the server's log is shown
/// if it never comes.
async fn prompt_received(model: &ModelServer, product: &Product, marker: &str) -> String {
    match prompt_within(model, marker).await {
        Some(prompt) => prompt,
        None => panic!(
            "the model never received a prompt with {marker:?}:\n{}\n--- ds serve:\n{}",
            model.describe_requests(),
            product.log()
        ),
    }
}

/// The first agent request's prompt with `marker`, within a minute.
async fn prompt_within(model: &ModelServer, marker: &str) -> Option<String> {
    for _ in 0..600 {
        if let Some(prompt) = model
            .agent_requests()
            .iter()
            .map(prompt_of)
            .find(|p| p.contains(marker))
        {
            return Some(prompt);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The run's status once it is no longer running, from `GET /runs/{id}`.
async fn ended(product: &Product, run_id: &str) -> Value {
    for _ in 0..600 {
        let response = reqwest::get(format!("{}/runs/{run_id}", product.url()))
            .await
            .expect("GET the run");
        if response.status().as_u16() == 200 {
            let body: Value = response.json().await.unwrap_or_default();
            if body["status"].as_str().is_some_and(|s| s != "running") {
                return body;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {run_id} never ended:\n{}", product.log());
}

#[tokio::test]
async fn a_github_webhook_starts_a_run_whose_prompt_the_model_receives_filled_in() {
    let model = ModelServer::start(Script::Bash {
        command: "echo triaged".to_owned(),
    })
    .await;
    let product = serve(&model).start().await;
    let body = serde_json::to_vec(&issue_opened()).expect("json");
    let signature = github_signature(SECRET, &body);

    let (status, headers, answer) = call(
        &product,
        "/triggers/github-issue",
        &body,
        &[
            ("x-github-event", "issues"),
            ("x-hub-signature-256", &signature),
            ("user-agent", "GitHub-Hookshot/abc123"),
        ],
    )
    .await;
    assert_eq!(status, 202, "{answer}\n{}", product.log());
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["trigger"], "triage");
    let run_id = answer["run_id"].as_str().expect("a run id").to_owned();
    assert_eq!(
        headers.get("x-run-id").and_then(|v| v.to_str().ok()),
        Some(run_id.as_str())
    );
    // Answered once the runner started, not before: a serverless
    // invocation is frozen when it answers.
    let at_answer = product.emulator_now().expect("the emulator");
    assert_eq!(at_answer.created, 1, "{at_answer:?}");
    assert!(
        at_answer.requests.get("start").copied().unwrap_or(0) >= 1,
        "{at_answer:?}"
    );

    let prompt = prompt_received(&model, &product, "Triage acme/web#42").await;
    assert!(
        prompt.contains(
            "Triage acme/web#42 (issues opened by octocat): Login broken. Missing: [] \
             Trigger: triage"
        ),
        "{prompt}"
    );

    let run = ended(&product, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Recorded as Python Sandstorm 0.9.2 records a trigger's runs.
    assert_eq!(run["labels"]["team_id"], "__trigger__", "{run}");
    assert_eq!(run["labels"]["user_id"], "triage", "{run}");
    let stats = product.emulator_settled().await.expect("the emulator");
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (1, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_before_any_sandbox_exists() {
    let model = ModelServer::start(Script::Bash {
        command: "echo never".to_owned(),
    })
    .await;
    let product = serve(&model).start().await;
    let body = serde_json::to_vec(&issue_opened()).expect("json");
    let forged = github_signature("not-the-secret", &body);
    let other_body = github_signature(SECRET, b"{\"issue\":{}}");
    for headers in [
        vec![("x-sandstorm-trigger-secret", "not-the-secret")],
        vec![("x-hub-signature-256", forged.as_str())],
        // A signature of another body does not carry over.
        vec![("x-hub-signature-256", other_body.as_str())],
        vec![],
    ] {
        let (status, _, answer) = call(&product, "/triggers/github-issue", &body, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {answer}");
        assert_eq!(answer["error"]["type"], "unauthorized");
        assert!(
            !answer.to_string().contains(SECRET),
            "the secret is in the answer"
        );
    }
    let get = reqwest::get(format!("{}/triggers/github-issue", product.url()))
        .await
        .expect("GET the trigger");
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(
        get.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    // The shared-secret header of Python Sandstorm 0.9.2 is taken too.
    let (status, _, answer) = call(
        &product,
        "/hooks/serial",
        b"{\"n\": 1}",
        &[("x-sandstorm-trigger-secret", SECRET)],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    prompt_received(&model, &product, "Serial work:").await;

    let stats = product.emulator_settled().await.expect("the emulator");
    assert_eq!(
        stats.created, 1,
        "only the good call made a sandbox: {stats:?}"
    );
    assert!(
        !product.log().contains(SECRET),
        "the secret is in the server's log"
    );
}

#[tokio::test]
async fn a_flood_of_calls_gets_429_past_the_triggers_limits() {
    // Each run takes a few seconds, so the serial trigger's first run is
    // still going when its second call comes.
    let model = ModelServer::start(Script::Bash {
        command: "sleep 3; echo done".to_owned(),
    })
    .await;
    let product = serve(&model).start().await;
    let body = serde_json::to_vec(&issue_opened()).expect("json");
    let signature = github_signature(SECRET, &body);
    let headers = [("x-hub-signature-256", signature.as_str())];

    // "rate_limit": 3 per minute: of six calls at once, three start.
    let calls = (0..6).map(|_| call(&product, "/triggers/github-issue", &body, &headers));
    let answers = futures::future::join_all(calls).await;
    let accepted = answers.iter().filter(|(s, _, _)| *s == 202).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!((accepted, limited.len()), (3, 3), "{answers:?}");
    for (_, headers, answer) in &limited {
        assert_eq!(answer["error"]["type"], "too_many_runs", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("rate_limit")),
            "{answer}"
        );
        let retry_after: u64 = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }

    // "max_concurrent": 1: a second call while the first run goes.
    let secret = [("x-sandstorm-trigger-secret", SECRET)];
    let (first, _, answer) = call(&product, "/hooks/serial", b"{\"n\": 1}", &secret).await;
    assert_eq!(first, 202, "{answer}");
    let first_run = answer["run_id"].as_str().expect("run id").to_owned();
    let (second, _, answer) = call(&product, "/hooks/serial", b"{\"n\": 2}", &secret).await;
    assert_eq!(second, 429, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_concurrent")),
        "{answer}"
    );
    // Once it ended, the next call starts.
    ended(&product, &first_run).await;
    let mut third = Value::Null;
    for _ in 0..50 {
        let (status, _, answer) = call(&product, "/hooks/serial", b"{\"n\": 3}", &secret).await;
        if status == 202 {
            third = answer;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third_run = third["run_id"]
        .as_str()
        .expect("the third call started a run");
    ended(&product, third_run).await;

    let stats = product.emulator_settled().await.expect("the emulator");
    assert_eq!(
        stats.created, 5,
        "three triage runs and two serial ones: {stats:?}"
    );
}

#[tokio::test]
async fn a_cron_trigger_fires_on_the_servers_clock_at_its_time_in_its_zone() {
    let model = ModelServer::start(Script::Bash {
        command: "echo digest".to_owned(),
    })
    .await;
    // Monday 2026-12-07, 08:59:57 in Prague (UTC+1): three seconds before
    // the digest is due.
    let product = serve(&model)
        .env("SANDSTORM_TEST_CLOCK_START", "2026-12-07T07:59:57Z")
        .start()
        .await;
    let prompt = prompt_received(&model, &product, "Write the morning digest").await;
    assert!(
        prompt.contains(
            "Write the morning digest (<trigger_value path=\"trigger.name\">digest</trigger_value>, \
             due <trigger_value path=\"trigger.fired_at\">2026-12-07T08:00:00Z</trigger_value>)"
        ),
        "{prompt}"
    );

    // It fires once: the next is Tuesday's.
    let (status, listed) = {
        let response = reqwest::get(format!("{}/triggers", product.url()))
            .await
            .expect("GET /triggers");
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap_or_default(),
        )
    };
    assert_eq!(status, 200, "{listed}");
    let digest = listed["triggers"]
        .as_array()
        .and_then(|all| all.iter().find(|t| t["name"] == "digest"))
        .cloned()
        .expect("the digest is listed");
    assert_eq!(digest["schedule"], "0 9 * * MON-FRI");
    assert_eq!(digest["timezone"], "Europe/Prague");
    let stats = product.emulator_settled().await.expect("the emulator");
    assert_eq!(stats.created, 1, "{stats:?}");
}

#[tokio::test]
async fn ds_triggers_lists_them_and_fires_one_by_hand_here_and_on_a_server() {
    let model = ModelServer::start(Script::Bash {
        command: "echo by-hand".to_owned(),
    })
    .await;
    let config = config().to_string();

    // In this process, on a local sandbox: listed, then fired and followed
    // to its end.
    let cli = || {
        common::product::Cli::new(&model)
            .without_sandbox_flag()
            .env("SANDSTORM_SANDBOX", "local")
            .env("GH_WEBHOOK_SECRET", SECRET)
            .file("sandstorm.json", &config)
    };
    let listed = cli().run(&["triggers", "list"]).await;
    assert!(listed.status.success(), "{}", listed.dump());
    for line in [
        "triage",
        "POST /triggers/github-issue (secret required)",
        "0 9 * * MON-FRI Europe/Prague",
    ] {
        assert!(listed.stdout.contains(line), "{line}: {}", listed.dump());
    }
    let fired = cli()
        .run(&[
            "triggers",
            "fire",
            "triage",
            "--body",
            &issue_opened().to_string(),
        ])
        .await;
    assert!(fired.status.success(), "{}", fired.dump());
    assert!(
        fired.stderr.contains("trigger triage fired: run_"),
        "{}",
        fired.dump()
    );
    assert!(fired.sandboxes_left.is_empty(), "{}", fired.dump());
    // No GitHub headers by hand: {{headers.x-github-event}} is empty.
    let by_hand = prompt_within(&model, "Triage acme/web#42 ( opened by octocat)").await;
    assert!(by_hand.is_some(), "{}", model.describe_requests());

    // On a server: the token, not the trigger's secret; the run's id back.
    let product = serve(&model)
        .env(
            "SANDSTORM_API_TOKEN",
            "operator-token-for-the-trigger-tests-0123",
        )
        .start()
        .await;
    let remote = cli()
        .run(&[
            "triggers",
            "fire",
            "one-at-a-time",
            "--body",
            "{\"n\": 7}",
            "--server",
            product.url(),
            "--token",
            "operator-token-for-the-trigger-tests-0123",
        ])
        .await;
    assert!(remote.status.success(), "{}", remote.dump());
    let run_id = remote.stdout.trim().to_owned();
    assert!(run_id.starts_with("run_"), "{}", remote.dump());
    prompt_received(&model, &product, "Serial work:").await;
    let unknown = cli()
        .run(&[
            "triggers",
            "fire",
            "nope",
            "--server",
            product.url(),
            "--token",
            "operator-token-for-the-trigger-tests-0123",
        ])
        .await;
    assert!(!unknown.status.success(), "{}", unknown.dump());
    assert!(
        unknown.stderr.contains("no trigger is named \"nope\"")
            && unknown.stderr.contains("triage"),
        "{}",
        unknown.dump()
    );
    // Without the token, the server refuses.
    let (status, _, _) = call(&product, "/triggers/fire/triage", b"{}", &[]).await;
    assert_eq!(status, 401);
}
