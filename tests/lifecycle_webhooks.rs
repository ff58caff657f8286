//! E2B lifecycle webhooks end to end: `ds serve` on the E2B emulator with a
//! run history, its `/webhooks/e2b` registered in the emulator by
//! `ds webhook register`, and detached runs whose sandboxes die behind the
//! server's back. The emulator's signed `killed` event marks a run that
//! was still running `expired`; a run that ended keeps its ending; a
//! wrong signature changes nothing; Python Sandstorm 0.9.2's signature is
//! accepted. And `ds webhook` and `ds serve`'s `e2b_webhook_url` against
//! the emulator's registration API.
//!
//! Needs bubblewrap and `npm ci --prefix runner` (the runs are real).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::emulator;
use common::keys::E2B_KEY;
use common::model_server::{ModelServer, Script};
use common::process::Signal;
use common::product::{Chain, Product, Serve};
use common::receiver::Receiver;
use common::serve::{DS, DsServe};
use e2b_wire::events;
use futures::StreamExt as _;
use serde_json::{Value, json};

const SECRET: &str = "lifecycle-e2e-secret";
/// A liveness guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

/// `ds serve --sandbox e2b` with a history file and the receiver's secret,
/// logging at info so its lifecycle lines can be read.
async fn serve(model: &ModelServer, db: &std::path::Path, linger: &str) -> Product {
    Serve::new(Chain::E2b, model)
        .env("SANDSTORM_HISTORY_PATH", &db.display().to_string())
        .env("SANDSTORM_E2B_WEBHOOK_SECRET", SECRET)
        .env("SANDSTORM_RUN_LINGER", linger)
        .env("RUST_LOG", "info")
        .start()
        .await
}

/// `ds <args>` in `dir`, with exactly `env` (and `PATH`); its exit code,
/// stdout and stderr.
async fn ds(
    dir: &std::path::Path,
    env: &BTreeMap<String, String>,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(DS)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .await
        .expect("run ds");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `ds webhook register` of the server's `/webhooks/e2b` with E2B (the
/// emulator), as an operator would run it: the secret is the server's,
/// from the environment. The webhook's id.
async fn register_server(product: &Product) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = product.env().clone();
    env.insert("SANDSTORM_E2B_WEBHOOK_SECRET".into(), SECRET.into());
    let (code, out, err) = ds(
        dir.path(),
        &env,
        &["webhook", "register", product.url(), "--events", "killed"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "Using webhook URL: {}/webhooks/e2b",
            product.url()
        )),
        "{err}"
    );
    assert!(
        !err.contains(SECRET),
        "a secret it was given is not shown: {err}"
    );
    let json = out
        .strip_prefix("Webhook registered: ")
        .unwrap_or_else(|| panic!("{out}"));
    let webhook: Value = serde_json::from_str(json).expect("the webhook, as JSON");
    assert_eq!(webhook["events"], json!([events::KILLED]));
    webhook["id"].as_str().expect("an id").to_owned()
}

/// E2B's control plane of the product's emulator.
fn emulator_api(product: &Product, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let env = product.env();
    reqwest::Client::new()
        .request(method, format!("{}{path}", env["E2B_API_URL"]))
        .header("X-API-Key", env["E2B_API_KEY"].as_str())
}

/// Starts a detached run and leaves once its `run` event came, as a client
/// that goes away; the run's id.
async fn start_and_leave(product: &Product) -> String {
    start_with_and_leave(product, &json!({"prompt": "go", "detach": true})).await
}

/// [`start_and_leave`] with `body` as the request.
async fn start_with_and_leave(product: &Product, body: &Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .json(body)
        .send()
        .await
        .expect("POST /query");
    assert_eq!(response.status(), 200);
    let mut decoder = common::sse::Decoder::new();
    let mut body = response.bytes_stream();
    let read = async {
        while let Some(chunk) = body.next().await {
            for event in decoder.feed(&chunk.expect("the stream")) {
                let value = event.json();
                if value["type"] == "run" {
                    return value["run_id"].as_str().expect("a run id").to_owned();
                }
            }
        }
        panic!("the stream ended before its run event");
    };
    tokio::time::timeout(GUARD, read)
        .await
        .expect("a run event")
}

/// `GET /runs/{id}` once its status is one `wanted` takes.
async fn record_when(product: &Product, run_id: &str, wanted: impl Fn(&str) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let response = reqwest::get(format!("{}/runs/{run_id}", product.url()))
            .await
            .expect("GET /runs/{id}");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        if status == 200 && body["status"].as_str().is_some_and(&wanted) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{run_id} never got there; last {status} {body}\n{}",
            product.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The one sandbox the emulator holds: its id and metadata.
async fn only_sandbox(product: &Product) -> (String, Value) {
    let listed: Value = emulator_api(product, reqwest::Method::GET, "/v2/sandboxes")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let [sandbox] = listed.as_array().expect("a list").as_slice() else {
        panic!("one sandbox, not {listed}");
    };
    (
        sandbox["sandboxID"].as_str().expect("an id").to_owned(),
        sandbox["metadata"].clone(),
    )
}

async fn kill(product: &Product, sandbox: &str) {
    let status = emulator_api(
        product,
        reqwest::Method::DELETE,
        &format!("/sandboxes/{sandbox}"),
    )
    .send()
    .await
    .expect("kill")
    .status();
    assert_eq!(status, 204);
}

/// Waits until the server logged the lifecycle event `kind` of `sandbox`.
async fn logged(product: &Product, kind: &str, sandbox: &str) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !product
        .log()
        .lines()
        .any(|l| l.contains("E2B lifecycle event") && l.contains(kind) && l.contains(sandbox))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} of {sandbox} logged:\n{}",
            product.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent busy for 100 s: a run that is still running when its sandbox
/// is killed. (The SDK's Bash tool refuses a bare long `sleep`.)
fn busy_model() -> Script {
    Script::Bash {
        command: "sleep 100 && echo later > later.txt".to_owned(),
    }
}

#[tokio::test]
async fn the_emulator_s_lifecycle_webhook_marks_a_killed_run_expired() {
    let model = ModelServer::start(busy_model()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let product = serve(&model, &dir.path().join("history.db"), "60").await;
    register_server(&product).await;

    let run_id = start_and_leave(&product).await;
    let running = record_when(&product, &run_id, |s| s == "running").await;
    assert_eq!(running["detached"], true, "{running}");
    let (sandbox, _) = only_sandbox(&product).await;

    // Behind the server's back: E2B's API kills the sandbox, and E2B tells.
    kill(&product, &sandbox).await;
    let expired = record_when(&product, &run_id, |s| s != "running").await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["error_type"], "sandbox_killed", "{expired}");
    assert!(
        expired["ended_at"].is_string() && expired["duration_ms"].is_u64(),
        "{expired}"
    );
    logged(&product, events::KILLED, &sandbox).await;
    // A list shows it so too.
    let listed: Value = reqwest::get(format!("{}/runs?status=expired", product.url()))
        .await
        .expect("GET /runs")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["runs"][0]["run_id"], run_id.as_str(), "{listed}");
}

/// A killed event of `sandbox` with `metadata`, as E2B sends it.
fn killed_event(sandbox: &str, metadata: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "0b8a2c71-5d3e-4f0a-9a57-3c2d1e0f9b88", "version": "v2",
        "type": events::KILLED, "timestamp": "2026-01-01T00:00:00Z",
        "event_category": "lifecycle", "event_label": "kill",
        "event_data": {"sandbox_metadata": metadata, "kill_reason": "request"},
        "sandbox_id": sandbox, "sandbox_execution_id": "x", "sandbox_template_id": "sandstorm",
        "sandbox_build_id": "b", "sandbox_team_id": "t"
    }))
    .expect("JSON")
}

/// Python Sandstorm 0.9.2's signature of `body`, computed by Python's own
/// hmac module: `sha256=` and the hex HMAC-SHA256.
fn python_hmac(secret: &str, body: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("body");
    std::fs::write(&path, body).expect("write the body");
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys; print(hmac.new(sys.argv[1].encode(), \
             open(sys.argv[2], 'rb').read(), hashlib.sha256).hexdigest())",
            secret,
        ])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    format!("sha256={}", String::from_utf8_lossy(&output.stdout).trim())
}

async fn post_event(product: &Product, body: &[u8], signature: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/e2b", product.url()))
        .header("content-type", "application/json")
        .header("e2b-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("POST /webhooks/e2b");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_wrong_signature_changes_nothing_and_python_sandstorm_s_is_accepted() {
    let model = ModelServer::start(busy_model()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing is registered with E2B here: the test sends the events.
    let product = serve(&model, &dir.path().join("history.db"), "60").await;
    let run_id = start_and_leave(&product).await;
    record_when(&product, &run_id, |s| s == "running").await;
    // The sandbox's real metadata, as E2B hands it back, and then it goes.
    let (sandbox, metadata) = only_sandbox(&product).await;
    kill(&product, &sandbox).await;
    let body = killed_event(&sandbox, &metadata);

    for signature in [
        String::new(),
        python_hmac("another secret", &body),
        e2b_wire::events::signature(b"another secret", &body),
    ] {
        let (status, answer) = post_event(&product, &body, &signature).await;
        assert_eq!(status, 401, "{signature:?}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_signature");
    }
    let still = record_when(&product, &run_id, |_| true).await;
    assert_eq!(still["status"], "running", "{still}");

    let (status, answer) = post_event(&product, &body, &python_hmac(SECRET, &body)).await;
    assert_eq!((status, &answer), (200, &json!({"status": "ok"})));
    let expired = record_when(&product, &run_id, |_| true).await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["ended_at"], "2026-01-01T00:00:00.000Z", "{expired}");

    // Told again, later and signed as E2B signs: the ending stays.
    let again = String::from_utf8(killed_event(&sandbox, &metadata))
        .expect("UTF-8")
        .replace("2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z");
    let (status, _) = post_event(
        &product,
        again.as_bytes(),
        &e2b_wire::events::signature(SECRET.as_bytes(), again.as_bytes()),
    )
    .await;
    assert_eq!(status, 200);
    let after = record_when(&product, &run_id, |_| true).await;
    assert_eq!(after["ended_at"], "2026-01-01T00:00:00.000Z", "{after}");
}

#[tokio::test]
async fn a_run_that_succeeded_keeps_its_ending_when_its_sandbox_goes() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Its sandbox lingers a second after the run, then its timeout ends it.
    let mut product = serve(&model, &dir.path().join("history.db"), "1").await;
    register_server(&product).await;
    let read = product.query(json!({"prompt": "go", "detach": true})).await;
    assert_eq!(read.done["status"], "success", "{}", read.dump());
    let run_id = read.events[0]["run_id"]
        .as_str()
        .expect("a run event first")
        .to_owned();
    let succeeded = record_when(&product, &run_id, |s| s != "running").await;
    assert_eq!(succeeded["status"], "succeeded", "{succeeded}");
    let sandbox = succeeded["sandbox_id"]
        .as_str()
        .expect("the sandbox it ran in")
        .to_owned();
    // The lingering sandbox's timeout kills it; E2B says so.
    logged(&product, events::KILLED, &sandbox).await;
    let after = record_when(&product, &run_id, |_| true).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    assert_eq!(after["ended_at"], succeeded["ended_at"]);
}

#[tokio::test]
async fn ds_webhook_registers_lists_deletes_and_tests_against_e2b() {
    let emulator = emulator::start(emulator::Knobs::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".env"), "E2B_API_URL=unused\n# mine\n").expect(".env");
    let env: BTreeMap<String, String> = [
        ("E2B_API_URL".to_owned(), emulator.url.clone()),
        ("E2B_API_KEY".to_owned(), E2B_KEY.to_owned()),
    ]
    .into();

    // No secret anywhere: one is made, shown once, and kept in .env.
    let (code, out, err) = ds(
        dir.path(),
        &env,
        &["webhook", "register", "https://sandstorm.example.com/"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    let secret = err
        .lines()
        .find_map(|l| l.strip_prefix("Generated webhook secret: "))
        .unwrap_or_else(|| panic!("the secret is shown: {err}"))
        .to_owned();
    assert_eq!(secret.len(), 64, "{secret}");
    let dotenv = std::fs::read_to_string(dir.path().join(".env")).expect(".env");
    assert_eq!(
        dotenv,
        format!("E2B_API_URL=unused\n# mine\nSANDSTORM_E2B_WEBHOOK_SECRET={secret}\n")
    );
    let registered: Value = serde_json::from_str(
        out.strip_prefix("Webhook registered: ")
            .unwrap_or_else(|| panic!("{out}")),
    )
    .expect("JSON");
    let id = registered["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        registered["url"],
        "https://sandstorm.example.com/webhooks/e2b"
    );
    assert_eq!(
        registered["events"],
        json!([events::CREATED, events::UPDATED, events::KILLED])
    );
    assert!(!out.contains(&secret), "E2B never answers the secret");

    // Listed, by ds and by the API.
    let (code, out, err) = ds(dir.path(), &env, &["webhook", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&id) && out.contains("https://sandstorm.example.com/webhooks/e2b"),
        "{out}"
    );
    assert!(out.contains("enabled=true"), "{out}");
    let (code, out, _) = ds(dir.path(), &env, &["webhook", "list", "--json-output"]).await;
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(listed, json!([registered]));

    // Again with the secret .env now holds: it is reused, not shown.
    let (code, out, err) = ds(
        dir.path(),
        &env,
        &[
            "webhook",
            "register",
            "https://other.example.com/webhooks/e2b",
            "--no-save",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        !err.contains("Generated") && !err.contains(&secret),
        "{err}"
    );
    assert!(!err.contains("Using webhook URL"), "given whole: {err}");

    // Deleted; deleting again is E2B's 404.
    let (code, out, err) = ds(dir.path(), &env, &["webhook", "delete", &id]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("Webhook {id} deleted."));
    let (code, _, err) = ds(dir.path(), &env, &["webhook", "delete", &id]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("404") && err.contains("not found"), "{err}");
    let (code, out, _) = ds(dir.path(), &env, &["webhook", "list"]).await;
    assert_eq!(code, Some(0));
    assert!(!out.contains(&id), "{out}");

    // Usage mistakes are named, before E2B is asked.
    for (args, says) in [
        (vec!["webhook", "register", "sandstorm.example.com"], "http"),
        (
            vec![
                "webhook",
                "register",
                "https://x.example.com",
                "--events",
                "exploded",
            ],
            "exploded",
        ),
    ] {
        let (code, _, err) = ds(dir.path(), &env, &args).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let no_key: BTreeMap<String, String> =
        [("E2B_API_URL".to_owned(), emulator.url.clone())].into();
    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = ds(empty.path(), &no_key, &["webhook", "list"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("E2B_API_KEY"), "{err}");

    // `ds webhook test` signs as E2B does, with the secret .env holds.
    let receiver = Receiver::start().await;
    let (code, out, err) = ds(dir.path(), &env, &["webhook", "test", &receiver.url]).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.starts_with("✓ 200"), "{out}");
    let [delivery] = receiver.received().try_into().expect("one delivery");
    assert!(events::signature_matches(
        secret.as_bytes(),
        &delivery.body,
        delivery.header("e2b-signature")
    ));
    assert_eq!(delivery.header("e2b-signature-version"), "v1");
    let event = delivery.json();
    assert_eq!(event["type"], "sandbox.lifecycle.test");
    assert_eq!(event["sandbox_id"], "test-sandbox-000");
    // A receiver that refuses is a failure.
    let refusing = Receiver::answering(&[401]).await;
    let (code, _, err) = ds(dir.path(), &env, &["webhook", "test", &refusing.url]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("✗ 401"), "{err}");
}

// Two threads: the emulator in this process must answer the server's
// deletion while the test waits for the server to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ds_serve_registers_e2b_webhook_url_while_it_runs() {
    let emulator = emulator::start(emulator::Knobs::default()).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("sandstorm.json"),
        json!({"e2b_webhook_url": receiver.url}).to_string(),
    )
    .expect("sandstorm.json");
    let mut server = DsServe::e2b(&emulator)
        .current_dir(dir.path())
        .env("SANDSTORM_E2B_WEBHOOK_SECRET", SECRET)
        .start()
        .await;
    let http = reqwest::Client::new();
    let list = || async {
        let listed: Value = http
            .get(format!("{}/events/webhooks", emulator.url))
            .header("X-API-Key", E2B_KEY)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("JSON");
        listed
    };
    let deadline = tokio::time::Instant::now() + GUARD;
    let registered = loop {
        let listed = list().await;
        if let [webhook] = listed.as_array().expect("a list").as_slice() {
            break webhook.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not registered: {listed}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(registered["name"], "sandstorm-auto");
    assert_eq!(
        registered["url"],
        format!("{}/webhooks/e2b", receiver.url).as_str()
    );
    // Signed with the server's secret: a sandbox made now is told about.
    let created: Value = http
        .post(format!("{}/v2/sandboxes", emulator.url))
        .header("X-API-Key", E2B_KEY)
        .json(&json!({"templateID": "base"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("JSON");
    let received = receiver
        .until(GUARD, "the created event", |got| !got.is_empty())
        .await;
    assert_eq!(received[0].path, "/webhooks/e2b");
    assert_eq!(received[0].json()["sandbox_id"], created["sandboxID"]);
    assert!(events::signature_matches(
        SECRET.as_bytes(),
        &received[0].body,
        received[0].header("e2b-signature")
    ));

    let status = http
        .delete(format!(
            "{}/sandboxes/{}",
            emulator.url,
            created["sandboxID"].as_str().unwrap_or_default()
        ))
        .header("X-API-Key", E2B_KEY)
        .send()
        .await
        .expect("kill")
        .status();
    assert_eq!(status, 204);

    // A stopping server takes its registration away.
    server.process.signal(Signal::TERM);
    assert!(
        server.process.wait_for_exit(GUARD).is_some(),
        "ds serve stops"
    );
    assert_eq!(list().await, json!([]), "{}", server.log());
}

/// The key completion notices are signed with, in Standard Webhooks' form.
const NOTICE_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn a_run_expired_by_its_killed_sandbox_is_told_to_its_webhook() {
    let model = ModelServer::start(busy_model()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = common::webhooks::Receiver::start(Vec::new()).await;
    let product = Serve::new(Chain::E2b, &model)
        .env(
            "SANDSTORM_HISTORY_PATH",
            &dir.path().join("history.db").display().to_string(),
        )
        .env("SANDSTORM_E2B_WEBHOOK_SECRET", SECRET)
        .env("SANDSTORM_WEBHOOK_SECRET", NOTICE_SECRET)
        .env("SANDSTORM_RUN_LINGER", "60")
        .start()
        .await;
    register_server(&product).await;

    // A detached run with a webhook, whose client leaves once it has the
    // run's id.
    let run_id = start_with_and_leave(
        &product,
        &json!({"prompt": "go", "detach": true, "webhook_url": receiver.url()}),
    )
    .await;
    record_when(&product, &run_id, |s| s == "running").await;
    let (sandbox, _) = only_sandbox(&product).await;

    kill(&product, &sandbox).await;
    let expired = record_when(&product, &run_id, |s| s != "running").await;
    assert_eq!(expired["status"], "expired", "{expired}");
    let told = receiver.wait_for(1, GUARD).await;
    let notice = common::webhooks::verify(NOTICE_SECRET, &told[0])
        .await
        .unwrap_or_else(|why| panic!("the notice does not verify: {why}"));
    assert_eq!(notice["data"]["run_id"], run_id.as_str(), "{notice}");
    assert_eq!(notice["data"]["status"], "expired", "{notice}");
    // Told once, however many readers saw it end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "{:?}", receiver.received());
}
