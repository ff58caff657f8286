//! The dashboard at `GET /`.
//!
//! - On `ds serve`, the page answers with its security headers and needs no
//!   token, while the API beside it does (quick, in the normal suite).
//! - In a real browser (`#[ignore]`, run on its own by `.ci/run`): Debian's
//!   `chromium` driven by `playwright-core` (`tests/dashboard/check.mjs`)
//!   against `ds serve` on the E2B emulator. It signs in, lists the runs
//!   made here, follows a slow detached run live and cancels it; the test
//!   then sees the emulator destroy that run's sandbox. Screenshots go to
//!   `target/dashboard-artifacts/`; with `SANDSTORM_UPDATE_README_IMAGE=1`
//!   the desktop list also replaces `docs/images/dashboard.png`, the
//!   README's (left alone otherwise, so a test run leaves the tree clean).
//!
//! The browser test needs `apt-get install chromium` and
//! `npm ci --prefix tests/dashboard` (both in `scripts/setup`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::model_server::{ModelServer, Script};
use common::product::{Chain, Product, Serve};
use common::serve::DsServe;
use common::stream::read_stream;
use common::tools::manifest_dir;
use futures::StreamExt;
use serde_json::{Value, json};

/// The server's bearer token: long enough for `ds serve` to take it.
const TOKEN: &str = "dashboard-token-7c1e94b2a05d-0123456789";

/// The agent's one command: it sleeps only in the run that uploads
/// `slow.txt`, so the finished runs are quick and the live one is slow
/// enough to watch and cancel.
const COMMAND: &str = "if [ -f slow.txt ]; then sleep 90; fi; echo ok";

/// The browser's whole check, bounded.
const BROWSER_LIMIT: Duration = Duration::from_secs(180);

/// `GET url` with the token or without: status and headers.
async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("GET")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_page_needs_no_token_and_the_api_beside_it_does() {
    // Local sandboxes: listing the runs asks no cloud.
    let server = DsServe::new(["serve", "--sandbox", "local"])
        .env("SANDSTORM_API_TOKEN", TOKEN)
        .env("SANDSTORM_HISTORY", "0")
        .start()
        .await;
    let page = get(&format!("{}/", server.url), None).await;
    assert_eq!(page.status(), 200, "{}", server.log());
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let csp = header(&page, "content-security-policy").to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    let html = page.text().await.expect("the page");
    assert!(html.contains("<title>Sandstorm runs</title>"), "{html}");
    assert!(!html.contains(TOKEN), "the page holds no secret");

    for asset in ["/dashboard/app.js", "/dashboard/app.css"] {
        let response = get(&format!("{}{asset}", server.url), None).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    }

    // The API is behind the token as before; the page only reads it.
    let runs = format!("{}/runs", server.url);
    assert_eq!(get(&runs, None).await.status(), 401);
    assert_eq!(get(&runs, Some("not-the-token")).await.status(), 401);
    assert_eq!(get(&runs, Some(TOKEN)).await.status(), 200);
    let health = get(&format!("{}/health", server.url), None).await;
    assert_eq!(health.status(), 200);
    assert!(header(&health, "content-security-policy").is_empty());
}

/// `POST /query` with the token, read to its end; fails unless the run
/// succeeded.
async fn finished_run(product: &Product, prompt: &str) {
    let stream = read_stream(
        reqwest::Client::new()
            .post(format!("{}/query", product.url()))
            .bearer_auth(TOKEN)
            .json(&json!({"prompt": prompt})),
    )
    .await;
    assert_eq!(stream.status, 200, "{stream:?}\n{}", product.log());
    let done = stream.closing.clone().unwrap_or_default();
    assert_eq!(done["status"], "success", "{stream:?}\n{}", product.log());
}

/// Starts the slow detached run and leaves once it has its sandbox (its
/// `run` event); its id.
async fn slow_detached_run(product: &Product) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .bearer_auth(TOKEN)
        .json(&json!({
            "prompt": "Watch this one live, then cancel it",
            "detach": true,
            "files": {"slow.txt": "1"},
        }))
        .send()
        .await
        .expect("POST /query");
    assert_eq!(response.status(), 200, "{}", product.log());
    let mut decoder = common::sse::Decoder::new();
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            if let Some(event) = decoder.feed(&chunk.expect("a chunk")).first() {
                return event.json();
            }
        }
        Value::Null
    })
    .await
    .expect("the run event within 60 s");
    assert_eq!(first["type"], "run", "{first}");
    first["run_id"].as_str().expect("a run id").to_owned()
}

fn artifacts() -> PathBuf {
    let dir = manifest_dir().join("target/dashboard-artifacts");
    std::fs::create_dir_all(&dir).expect("the artifacts folder");
    dir
}

fn require(path: &Path, how: &str) {
    assert!(path.exists(), "{} is missing: {how}", path.display());
}

#[tokio::test]
#[ignore = "a real browser: cargo test --all-features --test dashboard -- --ignored"]
async fn in_a_browser_the_runs_are_listed_followed_live_and_cancelled() {
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    require(&chromium, "apt-get install chromium (scripts/setup)");
    let script = manifest_dir().join("tests/dashboard/check.mjs");
    require(
        &manifest_dir().join("tests/dashboard/node_modules/playwright-core"),
        "npm ci --prefix tests/dashboard (scripts/setup)",
    );

    let model = ModelServer::start(Script::Bash {
        command: COMMAND.to_owned(),
    })
    .await;
    let product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_API_TOKEN", TOKEN)
        .env("SANDSTORM_HISTORY_PATH", "history.db")
        // A cancelled run's sandbox goes a second after its runner.
        .env("SANDSTORM_RUN_LINGER", "1")
        .start()
        .await;

    // Two finished runs; the second prompt is markup, which the page must
    // show as text.
    tokio::join!(
        finished_run(&product, "Write a haiku about sandstorms into poem.md"),
        finished_run(&product, "Summarize <b>report.csv</b> <img src=x>"),
    );
    let run_id = slow_detached_run(&product).await;

    let images = artifacts();
    let mut node = Command::new("node");
    node.arg(&script)
        .env("DASHBOARD_URL", product.url())
        .env("DASHBOARD_TOKEN", TOKEN)
        .env("DASHBOARD_RUN_ID", &run_id)
        .env("DASHBOARD_ARTIFACTS", &images)
        .env("CHROMIUM", &chromium);
    if std::env::var("SANDSTORM_UPDATE_README_IMAGE").is_ok_and(|v| v == "1") {
        node.env(
            "DASHBOARD_README_IMAGE",
            manifest_dir().join("docs/images/dashboard.png"),
        );
    }
    let output = tokio::time::timeout(
        BROWSER_LIMIT,
        tokio::process::Command::from(node)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser check ends within its limit")
    .expect("run node");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the browser check failed:\n{said}\n--- ds serve log ---\n{}",
        product.log()
    );
    assert!(!said.contains(TOKEN), "the token was printed:\n{said}");

    // The cancel the page sent ended the run's sandbox on the emulator:
    // three runs, three sandboxes created, three killed, none alive.
    let stats = product
        .emulator_settled()
        .await
        .expect("the E2B chain has an emulator");
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (3, 3, 0),
        "{stats:?}"
    );
    // The record is written off the run's path: it lands shortly.
    let mut record = Value::Null;
    for _ in 0..50 {
        let response = get(&format!("{}/runs/{run_id}", product.url()), Some(TOKEN)).await;
        record = response.json().await.unwrap_or_default();
        if record["status"] == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(record["status"], "cancelled", "{record}");
    for name in [
        "list-desktop.png",
        "live-desktop.png",
        "list-phone.png",
        "live-phone.png",
    ] {
        require(&images.join(name), "the browser check saves it");
    }
}
