//! Key resolution order and the provider variables of the original.

use super::*;

fn env(pairs: &[(&str, &str)]) -> EnvVars {
    EnvVars::from_pairs(pairs.iter().copied())
}

fn keys(anthropic: Option<&str>, openrouter: Option<&str>, e2b: Option<&str>) -> RequestKeys {
    RequestKeys {
        anthropic: anthropic.map(Secret::from),
        openrouter: openrouter.map(Secret::from),
        e2b: e2b.map(Secret::from),
    }
}

async fn resolve_ok(given: RequestKeys, env: EnvVars) -> ResolvedKeys {
    resolve(&given, &env, None, Path::new("/"), true)
        .await
        .expect("resolves")
}

struct FakeSecret(BTreeMap<&'static str, &'static str>);

#[async_trait::async_trait]
impl KeySource for FakeSecret {
    async fn get(&self, name: &str) -> Result<Option<Secret>, KeySourceError> {
        Ok(self.0.get(name).map(|v| Secret::from(*v)))
    }
}

#[tokio::test]
async fn the_request_wins_over_the_environment() {
    let r = resolve_ok(
        keys(Some("sk-request"), None, Some("e2b_request")),
        env(&[("ANTHROPIC_API_KEY", "sk-env"), ("E2B_API_KEY", "e2b_env")]),
    )
    .await;
    assert_eq!(r.runner_env["ANTHROPIC_API_KEY"], "sk-request");
    assert_eq!(r.e2b.as_ref().map(Secret::expose), Some("e2b_request"));
}

#[tokio::test]
async fn the_environment_is_used_when_the_request_has_none() {
    let r = resolve_ok(
        keys(None, None, None),
        env(&[("ANTHROPIC_API_KEY", "sk-env"), ("E2B_API_KEY", "e2b_env")]),
    )
    .await;
    assert_eq!(r.runner_env["ANTHROPIC_API_KEY"], "sk-env");
    assert_eq!(r.e2b.as_ref().map(Secret::expose), Some("e2b_env"));
}

#[tokio::test]
async fn the_secret_comes_after_the_environment() {
    let source = FakeSecret(BTreeMap::from([
        ("ANTHROPIC_API_KEY", "sk-secret"),
        ("E2B_API_KEY", "e2b_secret"),
    ]));
    let r = resolve(
        &keys(None, None, None),
        &env(&[("ANTHROPIC_API_KEY", "sk-env")]),
        Some(&source),
        Path::new("/"),
        true,
    )
    .await
    .expect("resolves");
    assert_eq!(r.runner_env["ANTHROPIC_API_KEY"], "sk-env");
    assert_eq!(r.e2b.as_ref().map(Secret::expose), Some("e2b_secret"));
}

#[tokio::test]
async fn openrouter_gets_a_bearer_token_and_an_empty_api_key() {
    let r = resolve_ok(
        keys(None, None, Some("e")),
        env(&[
            ("ANTHROPIC_BASE_URL", "https://openrouter.ai/api"),
            ("OPENROUTER_API_KEY", "sk-or-env"),
            ("ANTHROPIC_API_KEY", "sk-ant-should-not-leak"),
        ]),
    )
    .await;
    assert_eq!(r.runner_env["ANTHROPIC_AUTH_TOKEN"], "sk-or-env");
    assert_eq!(r.runner_env["ANTHROPIC_API_KEY"], "");
    assert_eq!(
        r.runner_env["ANTHROPIC_BASE_URL"],
        "https://openrouter.ai/api"
    );
}

#[tokio::test]
async fn a_per_request_openrouter_key_is_honoured() {
    let r = resolve_ok(
        keys(None, Some("sk-or-request"), Some("e")),
        env(&[
            ("ANTHROPIC_BASE_URL", "https://openrouter.ai/api"),
            ("OPENROUTER_API_KEY", "sk-or-env"),
        ]),
    )
    .await;
    assert_eq!(r.runner_env["ANTHROPIC_AUTH_TOKEN"], "sk-or-request");
}

#[tokio::test]
async fn provider_variables_are_forwarded_as_the_original_lists_them() {
    let pairs: Vec<(&str, &str)> = PROVIDER_ENV_KEYS.iter().map(|k| (*k, "v")).collect();
    let mut e = env(&pairs);
    e.set("UNRELATED_SECRET", "must-not-pass");
    e.set("CLAUDE_CODE_USE_VERTEX", "");
    let r = resolve_ok(keys(None, None, Some("e")), e).await;
    for key in PROVIDER_ENV_KEYS
        .iter()
        .filter(|k| **k != "CLAUDE_CODE_USE_VERTEX")
    {
        assert_eq!(
            r.runner_env.get(*key).map(String::as_str),
            Some("v"),
            "{key}"
        );
    }
    assert!(!r.runner_env.contains_key("UNRELATED_SECRET"));
}

#[tokio::test]
async fn the_operator_can_forward_more_variables() {
    let r = resolve_ok(
        keys(Some("k"), None, Some("e")),
        env(&[
            (FORWARD_ENV_VAR, "HTTPS_PROXY, NO_PROXY"),
            ("HTTPS_PROXY", "http://p"),
        ]),
    )
    .await;
    assert_eq!(r.runner_env["HTTPS_PROXY"], "http://p");
    assert!(!r.runner_env.contains_key("NO_PROXY"));
}

#[tokio::test]
async fn bedrock_needs_no_anthropic_key() {
    let r = resolve_ok(
        keys(None, None, Some("e")),
        env(&[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "us-east-1"),
        ]),
    )
    .await;
    assert_eq!(r.runner_env["CLAUDE_CODE_USE_BEDROCK"], "1");
    assert!(!r.runner_env.contains_key("ANTHROPIC_API_KEY"));
}

#[tokio::test]
async fn vertex_uploads_the_credentials_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sa.json"), br#"{"type":"service_account"}"#).expect("write");
    let r = resolve(
        &keys(None, None, Some("e")),
        &env(&[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "p"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "sa.json"),
        ]),
        None,
        dir.path(),
        true,
    )
    .await
    .expect("resolves");
    assert_eq!(
        r.runner_env["GOOGLE_APPLICATION_CREDENTIALS"],
        GCP_CREDENTIALS_PATH
    );
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].path, GCP_CREDENTIALS_PATH);
    assert_eq!(&r.files[0].content[..], br#"{"type":"service_account"}"#);
}

#[tokio::test]
async fn vertex_without_a_credentials_file_says_what_to_set() {
    let e = resolve(
        &keys(None, None, Some("e")),
        &env(&[("CLAUDE_CODE_USE_VERTEX", "1")]),
        None,
        Path::new("/"),
        true,
    )
    .await
    .expect_err("needs credentials");
    assert!(
        e.to_string().contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_anthropic_key_names_the_field_and_the_variable() {
    let e = resolve(
        &keys(None, None, Some("e")),
        &env(&[]),
        None,
        Path::new("/"),
        true,
    )
    .await
    .expect_err("missing");
    assert_eq!(e.field(), Some("anthropic_api_key"));
    assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("ANTHROPIC_API_KEY"), "{e}");
}

#[tokio::test]
async fn a_missing_e2b_key_is_an_error_only_for_e2b() {
    let e = resolve(
        &keys(Some("k"), None, None),
        &env(&[]),
        None,
        Path::new("/"),
        true,
    )
    .await
    .expect_err("missing");
    assert_eq!(e.field(), Some("e2b_api_key"));
    assert!(e.to_string().contains("E2B_API_KEY"), "{e}");
    assert!(
        resolve(
            &keys(Some("k"), None, None),
            &env(&[]),
            None,
            Path::new("/"),
            false
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn an_openrouter_key_without_a_base_url_explains_itself() {
    let e = resolve(
        &keys(None, Some("sk-or"), Some("e")),
        &env(&[]),
        None,
        Path::new("/"),
        true,
    )
    .await
    .expect_err("missing base url");
    assert!(e.to_string().contains("ANTHROPIC_BASE_URL"), "{e}");
}
