//! The Vercel functions as Vercel runs them: the built binary is an HTTP
//! server on `127.0.0.1:$VERCEL_DEV_PORT` (Vercel's proxy, and `vercel dev`,
//! call it there). Queries go to the E2B emulator in synthetic-runner mode.
//! The deploy files (`vercel.json`, `build.sh`) are checked against the
//! code they configure. A cron trigger is fired as Vercel Cron calls it,
//! with the real runner and a scripted model.

mod common;

use std::time::Duration;

use common::doors::{
    SETTLE, agent_texts, door_env, ds_schedules, real_runner_env, start_vercel_function,
};
use common::emulator::{self, synthetic};
use common::model_server::{ModelServer, Script};
use common::process::Process;
use common::stream::{Stream, read_stream};
use common::tools::manifest_dir;
use sandstorm::doors::VERCEL_MAX_DURATION;
use tokio::process::Command;

struct Function {
    url: String,
    proc: Process,
}

/// Starts a Vercel function binary with `env`, on the port it is given
/// (`VERCEL_DEV_PORT`), 0: the system picks one.
async fn start_function(binary: &str, env: &[(&str, String)]) -> Function {
    let (proc, url) = start_vercel_function(binary, env.iter().cloned()).await;
    Function { url, proc }
}

impl Function {
    async fn query(&self, request: reqwest::RequestBuilder) -> Stream {
        match tokio::spawn(read_stream(request)).await {
            Ok(stream) => stream,
            Err(e) => panic!("{e}\n--- the function's output:\n{}", self.proc.output()),
        }
    }

    #[allow(clippy::needless_pass_by_value, reason = "callers pass json! literals")]
    fn post(&self, body: serde_json::Value) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(format!("{}/query", self.url))
            .json(&body)
    }
}

#[tokio::test]
async fn the_function_serves_health_and_streams_a_query_in_order() {
    const LINES: u64 = 20_000;
    let e2b = emulator::start(synthetic(LINES, 1_000)).await;
    let function = start_function(env!("CARGO_BIN_EXE_vercel-query"), &door_env(&e2b)).await;

    let client = reqwest::Client::new();
    for path in ["/health", "/api/health"] {
        let health = client
            .get(format!("{}{path}", function.url))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), 200, "{path}");
        let body: serde_json::Value = health.json().await.expect("json");
        assert_eq!(body["status"], "ok", "{path}");
    }

    let destroyed = e2b.first_destroy();
    let stream = function
        .query(function.post(serde_json::json!({"prompt": "go"})))
        .await;
    stream
        .assert_whole_run(&e2b, destroyed, LINES, "vercel", || function.proc.output())
        .await;
}

#[tokio::test]
async fn the_health_function_is_the_same_door() {
    let e2b = emulator::start(synthetic(5, 200)).await;
    let function = start_function(env!("CARGO_BIN_EXE_vercel-health"), &door_env(&e2b)).await;
    let health = reqwest::get(format!("{}/api/health", function.url))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let stream = function
        .query(function.post(serde_json::json!({"prompt": "go"})))
        .await;
    stream.assert_complete(5);
}

#[tokio::test]
async fn a_run_ends_itself_before_max_duration() {
    let e2b = emulator::start(synthetic(50_000_000, 200)).await;
    let mut env = door_env(&e2b);
    // 13 s with the 10 s margin leaves the run about 3 s.
    env.push(("SANDSTORM_MAX_DURATION", "13".to_owned()));
    let function = start_function(env!("CARGO_BIN_EXE_vercel-query"), &env).await;

    let stream = function
        .query(function.post(serde_json::json!({"prompt": "go"})))
        .await;

    assert_eq!(stream.status, 200);
    let last = stream.last();
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["error_type"], "timeout", "{last}");
    assert!(
        stream.ended >= Duration::from_secs(2) && stream.ended < Duration::from_secs(12),
        "the stream ended at {:?}; maxDuration was 13 s with a 10 s margin",
        stream.ended
    );
    let stats = e2b.settled(SETTLE).await;
    assert_eq!((stats.created, stats.killed), (1, 1));
}

#[tokio::test]
async fn queries_need_a_token_unless_anonymous_access_is_turned_on() {
    let e2b = emulator::start(synthetic(3, 200)).await;
    let env: Vec<_> = door_env(&e2b)
        .into_iter()
        .filter(|(name, _)| *name != "SANDSTORM_ALLOW_ANONYMOUS")
        .collect();

    // No token and no SANDSTORM_ALLOW_ANONYMOUS: refused, saying why.
    let closed = start_function(env!("CARGO_BIN_EXE_vercel-query"), &env).await;
    let refused = closed
        .post(serde_json::json!({"prompt": "go"}))
        .send()
        .await
        .expect("response");
    assert_eq!(refused.status(), 500);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["type"], "config_error", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("SANDSTORM_API_TOKEN") && message.contains("SANDSTORM_ALLOW_ANONYMOUS"),
        "{message}"
    );

    // With a token: a bearer is required, and enough.
    let mut with_token = env.clone();
    with_token.push((
        "SANDSTORM_API_TOKEN",
        "door-token-1234-0123456789abcdef0123".to_owned(),
    ));
    let open = start_function(env!("CARGO_BIN_EXE_vercel-query"), &with_token).await;
    let no_bearer = open
        .post(serde_json::json!({"prompt": "go"}))
        .send()
        .await
        .expect("response");
    assert_eq!(no_bearer.status(), 401);
    // Python Sandstorm 0.9.2's name for the token closes the door as well.
    let mut with_old_name = env.clone();
    with_old_name.push((
        "SANDSTORM_API_KEY",
        "door-token-1234-0123456789abcdef0123".to_owned(),
    ));
    let moved = start_function(env!("CARGO_BIN_EXE_vercel-query"), &with_old_name).await;
    let no_bearer = moved
        .post(serde_json::json!({"prompt": "go"}))
        .send()
        .await
        .expect("response");
    assert_eq!(no_bearer.status(), 401);
    assert_eq!(e2b.stats().created, 0, "no sandbox for a refusal");
    let stream = open
        .query(
            open.post(serde_json::json!({"prompt": "go"}))
                .bearer_auth("door-token-1234-0123456789abcdef0123"),
        )
        .await;
    stream.assert_complete(3);
}

#[tokio::test]
async fn a_local_sandbox_is_refused_at_startup() {
    let output = Command::new(env!("CARGO_BIN_EXE_vercel-query"))
        .env_clear()
        .env("SANDSTORM_SANDBOX", "local")
        .env("VERCEL_DEV_PORT", "0")
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SANDSTORM_SANDBOX=local") && stderr.contains("E2B"),
        "{stderr}"
    );
}

#[test]
fn vercel_json_routes_both_paths_to_functions_that_cargo_builds() {
    let text = std::fs::read_to_string(manifest_dir().join("vercel.json")).expect("vercel.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let cargo_toml = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).expect("Cargo");

    // A rewritten request keeps the path the client asked for (the
    // rewrite's parameters are added to its query), so the one router
    // behind api/query.rs serves a run's events too.
    for (source, function) in [
        ("/query", "api/query.rs"),
        ("/runs", "api/query.rs"),
        ("/runs/:id", "api/query.rs"),
        ("/runs/:id/cancel", "api/query.rs"),
        ("/runs/:id/events", "api/query.rs"),
        ("/runs/:id/messages", "api/query.rs"),
        // Where a detached run's sandbox says a turn ended.
        ("/runs/:id/ended", "api/query.rs"),
        ("/health", "api/health.rs"),
        // E2B's lifecycle webhooks.
        ("/webhooks/e2b", "api/query.rs"),
        // The dashboard and its assets.
        ("/", "api/query.rs"),
        ("/dashboard/:file", "api/query.rs"),
        ("/runs/:id/replay", "api/query.rs"),
        ("/openapi.json", "api/query.rs"),
        // The triggers, and the cron jobs' paths.
        ("/triggers", "api/query.rs"),
        ("/triggers/fire/:name", "api/query.rs"),
        ("/triggers/cron/:name", "api/query.rs"),
    ] {
        let rewrites = config["rewrites"].as_array().expect("rewrites");
        let destination = format!("/{}", function.trim_end_matches(".rs"));
        assert!(
            rewrites
                .iter()
                .any(|r| r["source"] == source && r["destination"] == destination.as_str()),
            "{source} is rewritten to {destination}"
        );
        assert!(
            config["functions"][function]["maxDuration"].is_u64(),
            "{function} has a maxDuration"
        );
        assert!(manifest_dir().join(function).is_file(), "{function} exists");
        // Vercel builds `cargo build --bin <name>` for the [[bin]] whose
        // path is the function's file.
        let declared = cargo_toml.split("[[bin]]").any(|bin| {
            bin.contains(&format!("path = \"{function}\""))
                && bin.contains("required-features = [\"vercel\"]")
        });
        assert!(
            declared,
            "{function} is a [[bin]] that needs the vercel feature"
        );
    }
    // The deadline the code ends runs before is the one Vercel enforces.
    assert_eq!(
        config["functions"]["api/query.rs"]["maxDuration"],
        VERCEL_MAX_DURATION.as_secs()
    );
}

#[test]
fn build_sh_turns_the_vercel_feature_on_for_vercels_build_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["build.sh", "Cargo.toml"] {
        std::fs::copy(manifest_dir().join(file), dir.path().join(file)).expect("copy");
    }
    let run = |vercel: Option<&str>| {
        let mut command = std::process::Command::new("sh");
        command
            .arg(dir.path().join("build.sh"))
            .env_remove("VERCEL");
        if let Some(value) = vercel {
            command.env("VERCEL", value);
        }
        let status = command.status().expect("sh");
        assert!(status.success());
        std::fs::read_to_string(dir.path().join("Cargo.toml")).expect("read")
    };
    let untouched = run(None);
    assert!(
        untouched.contains("\ndefault = []\n"),
        "outside Vercel nothing changes"
    );
    let on_vercel = run(Some("1"));
    assert!(on_vercel.contains("\ndefault = [\"vercel\"]\n"));
    // Running it again (once per function) changes nothing more.
    assert_eq!(run(Some("1")), on_vercel);
}

/// Vercel keeps no disk either: the same DynamoDB table as Lambda, through
/// the same AWS variables, records its runs and answers `/runs`.
#[tokio::test]
async fn the_function_records_its_runs_in_the_shared_dynamodb_table() {
    let moto = common::moto::start().await;
    common::moto::create_history_table(&moto.url).await;
    let e2b = emulator::start(synthetic(5, 200)).await;
    let mut env = door_env(&e2b);
    env.extend(common::moto::aws_env(&moto.url));
    env.push((
        "SANDSTORM_HISTORY_TABLE",
        common::moto::HISTORY_TABLE.to_owned(),
    ));
    let function = start_function(env!("CARGO_BIN_EXE_vercel-query"), &env).await;

    let stream = function
        .query(function.post(serde_json::json!({"prompt": "go", "user_id": "u-7"})))
        .await;
    assert_eq!(stream.status, 200);
    let client = reqwest::Client::new();
    let list: serde_json::Value = client
        .get(format!("{}/api/runs?user_id=u-7", function.url))
        .send()
        .await
        .expect("GET /runs")
        .json()
        .await
        .expect("JSON");
    let runs = list["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "{list}\n{}", function.proc.output());
    assert_eq!(runs[0]["status"], "succeeded", "{list}");
    let run_id = runs[0]["run_id"].as_str().expect("a run id");
    let record: serde_json::Value = client
        .get(format!("{}/runs/{run_id}", function.url))
        .send()
        .await
        .expect("GET /runs/{id}")
        .json()
        .await
        .expect("JSON");
    assert_eq!(record["prompt"], "go", "{record}");
    assert_eq!(record["labels"], serde_json::json!({"user_id": "u-7"}));
    let stats = e2b.settled(SETTLE).await;
    assert_eq!((stats.created, stats.killed), (1, 1), "{stats:?}");
}

/// The repository has no sandstorm.json: its vercel.json has no crons and
/// every route's rewrite, as `--check` (what CI runs) says. For a
/// sandstorm.json with cron triggers, `ds schedules --vercel` writes one
/// cron job each, in Vercel's form (five fields, numbers only, UTC), and a
/// rewrite for the webhook trigger's path; an edited job fails `--check`.
#[test]
fn vercel_json_matches_sandstorm_json_and_its_crons_are_vercels() {
    let (code, said) = ds_schedules(manifest_dir(), &["--vercel", "--check"]);
    assert_eq!(code, 0, "{said}");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        manifest_dir().join("vercel.json"),
        dir.path().join("vercel.json"),
    )
    .expect("copy vercel.json");
    std::fs::copy(
        manifest_dir().join("tests/fixtures/schedules/sandstorm.json"),
        dir.path().join("sandstorm.json"),
    )
    .expect("copy sandstorm.json");
    let (code, said) = ds_schedules(dir.path(), &["--vercel"]);
    assert_eq!(code, 0, "{said}");
    // 09:00 in Prague is called at 07:00 and 08:00 UTC: twice a day, which
    // Vercel's Hobby plan refuses; and jitter is not applied there.
    assert!(said.contains("Hobby") && said.contains("jitter"), "{said}");
    let (code, said) = ds_schedules(dir.path(), &["--vercel", "--check"]);
    assert_eq!(code, 0, "{said}");

    let path = dir.path().join("vercel.json");
    let text = std::fs::read_to_string(&path).expect("read");
    let config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let crons = config["crons"].as_array().expect("crons");
    let jobs: Vec<(&str, &str)> = crons
        .iter()
        .map(|c| {
            (
                c["path"].as_str().expect("a path"),
                c["schedule"].as_str().expect("a schedule"),
            )
        })
        .collect();
    assert_eq!(
        jobs,
        [
            ("/triggers/cron/daily-digest", "0 7,8 * * 1-5"),
            ("/triggers/cron/heartbeat", "*/15 * * * *"),
        ]
    );
    for (path, schedule) in jobs {
        let fields: Vec<&str> = schedule.split(' ').collect();
        assert_eq!(fields.len(), 5, "{path}: {schedule}");
        assert!(
            fields
                .iter()
                .all(|f| f.chars().all(|c| c.is_ascii_digit() || "*,-/".contains(c))),
            "{path}: {schedule} is not numbers only"
        );
    }
    let rewrites = config["rewrites"].as_array().expect("rewrites");
    assert!(
        rewrites.contains(
            &serde_json::json!({"source": "/github/issues", "destination": "/api/query"})
        )
    );

    std::fs::write(&path, text.replace("0 7,8 * * 1-5", "0 8 * * 1-5")).expect("write");
    let (code, said) = ds_schedules(dir.path(), &["--vercel", "--check"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("/triggers/cron/daily-digest has schedule \"0 8 * * 1-5\""),
        "{said}"
    );
}

const CRON_SECRET: &str = "vercel-cron-secret-0123456789";

/// The daily digest, 09:00 on weekdays in Prague, called as Vercel Cron
/// calls it: with `CRON_SECRET` as a bearer, by `vercel-cron/1.0`, at
/// 08:00 UTC on a Monday in December (the function's clock is set there).
/// Without the secret, or with another, the call is refused and no sandbox
/// is made; with it, the run starts and the scripted model gets the
/// trigger's prompt, filled in with the fire time.
#[tokio::test]
async fn vercel_cron_with_the_cron_secret_fires_the_trigger_and_nothing_else_does() {
    let model = ModelServer::start(Script::Bash {
        command: "echo digest-written".into(),
    })
    .await;
    let (e2b, mut env) = real_runner_env(&model).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sandstorm.json");
    std::fs::write(
        &config,
        serde_json::json!({"triggers": [{
            "name": "daily-digest", "type": "cron", "schedule": "0 9 * * MON-FRI",
            "timezone": "Europe/Prague",
            "prompt": "Write the daily digest for {{trigger.fired_at}}"
        }]})
        .to_string(),
    )
    .expect("write sandstorm.json");
    env.extend([
        ("SANDSTORM_CONFIG", config.display().to_string()),
        ("CRON_SECRET", CRON_SECRET.to_owned()),
        (
            "SANDSTORM_TEST_CLOCK_START",
            "2026-12-07T08:00:20Z".to_owned(),
        ),
        ("SANDSTORM_RUN_LINGER", "0".to_owned()),
    ]);
    let function = start_function(env!("CARGO_BIN_EXE_vercel-query"), &env).await;
    let url = format!("{}/triggers/cron/daily-digest", function.url);
    let client = reqwest::Client::new();

    for bearer in [None, Some("vercel-cron-secret-0123456780")] {
        let mut call = client.get(&url).header("user-agent", "vercel-cron/1.0");
        if let Some(bearer) = bearer {
            call = call.bearer_auth(bearer);
        }
        let refused = call.send().await.expect("response");
        assert_eq!(refused.status(), 401, "{bearer:?}");
    }
    assert_eq!(e2b.stats().created, 0, "no sandbox for a refused call");

    let answer = client
        .get(&url)
        .header("user-agent", "vercel-cron/1.0")
        .bearer_auth(CRON_SECRET)
        .send()
        .await
        .expect("response");
    assert_eq!(answer.status(), 202, "{}", function.proc.output());
    let run_id_header = answer
        .headers()
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(body["status"], "accepted", "{body}");
    assert_eq!(body["fired_at"], "2026-12-07T08:00:00Z", "{body}");
    assert_eq!(run_id_header.as_deref(), body["run_id"].as_str(), "{body}");
    // It answered once the run no longer needed it: its sandbox made and
    // its runner started (a platform may freeze the function from here on).
    assert_eq!(e2b.stats().created, 1);
    assert!(e2b.requests("start") >= 1, "{:?}", e2b.stats());

    // The answer came once the agent ran; the model gets the prompt.
    let prompt = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let texts = agent_texts(&model);
            if texts.contains("Write the daily digest for") {
                return texts;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the model never got the prompt:\n{}\n{}",
            model.describe_requests(),
            function.proc.output()
        )
    });
    assert!(prompt.contains("2026-12-07T08:00:00Z"), "{prompt}");
    let stats = e2b.settled(Duration::from_secs(120)).await;
    assert_eq!((stats.created, stats.killed), (1, 1), "{stats:?}");
}
