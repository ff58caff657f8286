//! Keys from AWS Secrets Manager, against `moto_server` (PyPI `moto[server]`)
//! on loopback: the SDK's real requests, a real JSON secret.
//!
//! The cache is checked with the source's own call counter; the door test
//! goes through the Vercel binary, where the AWS SDK reads the process
//! environment as it does on Lambda.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use common::doors::{SETTLE, start_vercel_function};
use common::emulator::{self, RunningEmulator, synthetic};
use common::http::serve_router;
use common::keys::{ANTHROPIC_KEY, E2B_KEY};
use common::stream::read_stream;
use common::tools::{MOTO_PIP, manifest_dir, tool};
use sandstorm::app::{self, AppState};
use sandstorm::doors::secrets::{SECRET_KEYS, SecretError, SecretsManagerSource};
use sandstorm::doors::{self, Platform};
use sandstorm::env::EnvVars;
use sandstorm::keys::KeySource;
use tokio::process::Command;

const TOKEN: &str = "token-from-the-secret-5678-0123456789";

/// The variables that point the AWS SDK at `endpoint` with dummy
/// credentials (moto checks no signature).
fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ]
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(config)
}

async fn create_secret(endpoint: &str, name: &str, value: &str) {
    client(endpoint)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create the secret in moto");
}

fn the_secret() -> String {
    serde_json::json!({
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "E2B_API_KEY": E2B_KEY,
        "SANDSTORM_API_TOKEN": TOKEN,
    })
    .to_string()
}

/// A door's environment with no key in it: E2B's address, the secret's id
/// and the AWS endpoint.
fn keyless_env(
    e2b: &RunningEmulator,
    endpoint: &str,
    secret_id: &str,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("E2B_API_URL", e2b.url.clone()),
        ("E2B_SANDBOX_URL", e2b.url.clone()),
        ("SANDSTORM_SECRET_ID", secret_id.to_owned()),
    ];
    env.extend(aws_env(endpoint));
    env
}

/// The serverless router with `source` as its key source, on loopback.
async fn serve(env: &[(&'static str, String)], source: Arc<SecretsManagerSource>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = EnvVars::from_pairs(env.iter().cloned());
    let mut settings = doors::serverless_settings(env, dir.path(), Platform::Lambda)
        .await
        .expect("settings");
    settings.key_source = Some(source);
    let provider = settings.sandbox.build_provider().expect("e2b");
    serve_router(app::app(AppState::new(settings, provider))).await
}

async fn source(env: &[(&'static str, String)]) -> Arc<SecretsManagerSource> {
    let env = EnvVars::from_pairs(env.iter().cloned());
    Arc::new(
        SecretsManagerSource::from_env(&env)
            .await
            .expect("valid settings")
            .expect("SANDSTORM_SECRET_ID is set"),
    )
}

/// The emulator accepting `key` only.
async fn emulator_taking_only(key: &str, knobs: emulator::Knobs) -> RunningEmulator {
    let mut options = emulator::options();
    options.knobs = knobs;
    options.api_key = sandstorm::secret::Secret::new(key);
    emulator::start_with(options).await
}

#[tokio::test]
async fn keys_and_the_token_come_from_the_secret_with_one_call_for_many_queries() {
    let moto = common::moto::start().await;
    create_secret(&moto.url, "sandstorm/prod", &the_secret()).await;
    // The emulator takes only the secret's E2B key: a query that succeeds
    // used it.
    let e2b = emulator_taking_only(E2B_KEY, synthetic(10, 200)).await;
    let env = keyless_env(&e2b, &moto.url, "sandstorm/prod");
    let source = source(&env).await;
    let url = serve(&env, source.clone()).await;
    let http = reqwest::Client::new();

    // The token is the secret's: a query without it is refused.
    let refused = http
        .post(format!("{url}/query"))
        .json(&serde_json::json!({"prompt": "go"}))
        .send()
        .await
        .expect("response");
    assert_eq!(refused.status(), 401);

    for _ in 0..3 {
        let stream = read_stream(
            http.post(format!("{url}/query"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"prompt": "go"})),
        )
        .await;
        assert_eq!(stream.status, 200);
        stream.assert_complete(10);
    }
    assert_eq!(e2b.settled(SETTLE).await.created, 3);
    assert_eq!(
        source.fetches(),
        1,
        "one GetSecretValue serves every query within the TTL"
    );
}

#[tokio::test]
async fn concurrent_first_use_makes_one_call_and_a_stale_cache_another() {
    let moto = common::moto::start().await;
    create_secret(&moto.url, "sandstorm/ttl", &the_secret()).await;
    let mut env = aws_env(&moto.url);
    env.push(("SANDSTORM_SECRET_ID", "sandstorm/ttl".to_owned()));
    env.push(("SANDSTORM_SECRET_TTL", "1".to_owned()));
    let source = source(&env).await;

    let lookups = (0..16).map(|i| {
        let source = source.clone();
        let name = ["ANTHROPIC_API_KEY", "E2B_API_KEY", "SANDSTORM_API_TOKEN"][i % 3];
        async move { source.get(name).await }
    });
    for found in futures::future::join_all(lookups).await {
        assert!(found.expect("lookup").is_some());
    }
    assert_eq!(source.fetches(), 1, "16 concurrent first uses, one call");

    // Past the 1 s TTL on the cache's clock (tokio's), without waiting.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(1_100)).await;
    tokio::time::resume();
    let key = source.get("E2B_API_KEY").await.expect("lookup");
    assert_eq!(key.expect("present").expose(), E2B_KEY);
    assert_eq!(
        source.fetches(),
        2,
        "after the TTL the secret is read again"
    );
    assert!(
        source
            .get("OPENROUTER_API_KEY")
            .await
            .expect("lookup")
            .is_none()
    );
    assert_eq!(source.fetches(), 2);
}

#[tokio::test]
async fn a_missing_secret_is_a_config_error_that_names_it() {
    let moto = common::moto::start().await;
    let e2b = emulator::start(synthetic(3, 100)).await;
    let env = keyless_env(&e2b, &moto.url, "sandstorm/missing");
    let url = serve(&env, source(&env).await).await;

    let response = reqwest::Client::new()
        .post(format!("{url}/query"))
        .json(&serde_json::json!({"prompt": "go"}))
        .send()
        .await
        .expect("response");

    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "config_error", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("\"sandstorm/missing\"") && message.contains("not found"),
        "{message}"
    );
    assert_eq!(e2b.stats().created, 0);
}

#[tokio::test]
async fn a_secret_that_is_not_json_is_named_without_its_value() {
    let moto = common::moto::start().await;
    create_secret(&moto.url, "sandstorm/plain", "sk-ant-a-bare-key-0000").await;
    let mut env = aws_env(&moto.url);
    env.push(("SANDSTORM_SECRET_ID", "sandstorm/plain".to_owned()));
    let error = source(&env).await.values().await.expect_err("not JSON");
    assert!(matches!(error, SecretError::NotJson { .. }), "{error:?}");
    let shown = error.to_string();
    assert!(shown.contains("\"sandstorm/plain\""), "{shown}");
    assert!(!shown.contains("sk-ant-a-bare-key"), "{shown}");
}

#[tokio::test]
async fn access_denied_is_named_with_the_permission_to_grant() {
    // Secrets Manager's answer to a role without GetSecretValue.
    let denied = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::BAD_REQUEST,
            [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", "AccessDeniedException"),
            ],
            r#"{"__type":"AccessDeniedException","Message":"User: arn:aws:sts::123456789012:assumed-role/fn/fn is not authorized to perform: secretsmanager:GetSecretValue"}"#,
        )
    });
    let endpoint = serve_router(denied).await;
    let mut env = aws_env(&endpoint);
    env.push(("SANDSTORM_SECRET_ID", "sandstorm/locked".to_owned()));

    let error = source(&env).await.values().await.expect_err("denied");

    assert_eq!(
        error,
        SecretError::AccessDenied {
            id: "sandstorm/locked".into()
        }
    );
    assert!(error.to_string().contains("secretsmanager:GetSecretValue"));
}

#[tokio::test]
async fn the_vercel_door_reads_its_keys_from_the_secret() {
    let moto = common::moto::start().await;
    create_secret(&moto.url, "sandstorm/door", &the_secret()).await;
    let e2b = emulator_taking_only(E2B_KEY, synthetic(5, 200)).await;
    let env = keyless_env(&e2b, &moto.url, "sandstorm/door");
    let (function, url) = start_vercel_function(env!("CARGO_BIN_EXE_vercel-query"), env).await;

    let stream = read_stream(
        reqwest::Client::new()
            .post(format!("{url}/query"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"prompt": "go"})),
    )
    .await;

    assert_eq!(stream.status, 200, "{}", function.output());
    stream.assert_complete(5);
    // Nothing of the secret reached the logs.
    let logs = function.output();
    for value in [E2B_KEY, ANTHROPIC_KEY, TOKEN] {
        assert!(!logs.contains(value), "a secret value in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn put_secret_py_stores_the_keys_from_the_environment() {
    let moto = common::moto::start().await;
    let python = tool("python3", MOTO_PIP);
    let mut env = aws_env(&moto.url);
    env.extend([
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_owned()),
        ("E2B_API_KEY", E2B_KEY.to_owned()),
    ]);
    let run = |env: Vec<(&'static str, String)>| {
        let python = python.clone();
        async move {
            let output = Command::new(python)
                .arg(manifest_dir().join("infra/put_secret.py"))
                .args(["--name", "sandstorm/script", "--generate-token"])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env)
                .output()
                .await
                .expect("python3");
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{stderr}");
            (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
        }
    };

    let (arn, note) = run(env.clone()).await;
    assert!(arn.trim().starts_with("arn:aws:secretsmanager:"), "{arn}");
    assert!(note.contains("created"), "{note}");
    assert!(!note.contains(ANTHROPIC_KEY) && !arn.contains(ANTHROPIC_KEY));

    let mut read = aws_env(&moto.url);
    read.push(("SANDSTORM_SECRET_ID", arn.trim().to_owned()));
    let values = source(&read).await.values().await.expect("a JSON secret");
    assert_eq!(values["ANTHROPIC_API_KEY"].expose(), ANTHROPIC_KEY);
    assert_eq!(values["E2B_API_KEY"].expose(), E2B_KEY);
    assert!(
        values["SANDSTORM_API_TOKEN"].expose().len() >= 32,
        "a generated token"
    );

    // A second run updates the same secret.
    env.push(("SANDSTORM_API_TOKEN", TOKEN.to_owned()));
    let (again, note) = run(env).await;
    assert!(note.contains("updated"), "{note}");
    assert_eq!(again.trim(), arn.trim());
}

#[test]
fn the_infra_files_match_what_the_code_reads() {
    let shape =
        std::fs::read_to_string(manifest_dir().join("infra/secret-shape.json")).expect("shape");
    let values = sandstorm::doors::secrets::parse("shape", &shape).expect("the shape parses");
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&shape).expect("JSON");
    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
    let mut expected = SECRET_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "the shape lists exactly the keys read");
    assert!(values.contains_key("E2B_API_KEY"));

    for (file, action) in [
        ("infra/iam-policy.json", "secretsmanager:GetSecretValue"),
        ("infra/iam-policy-kms.json", "kms:Decrypt"),
    ] {
        let text = std::fs::read_to_string(manifest_dir().join(file)).expect("policy");
        let policy: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let statements = policy["Statement"].as_array().expect("statements");
        assert_eq!(
            statements.len(),
            1,
            "{file}: one statement, least privilege"
        );
        assert_eq!(statements[0]["Action"], action, "{file}");
        assert_ne!(
            statements[0]["Resource"], "*",
            "{file}: scoped to one resource"
        );
    }
}
