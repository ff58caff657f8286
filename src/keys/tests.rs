//! Key resolution order and the provider variables of the original.

use super::*;

/// A sandbox provider's credential, as any provider declares one.
const SANDBOX: Credential = Credential {
    field: "acme_api_key",
    variable: "ACME_API_KEY",
    description: "the Acme sandbox key",
};

fn env_in(pairs: &[(&str, &str)], cwd: &Path) -> KeyEnv {
    let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
    KeyEnv::resolve(|name| map.get(name).copied(), &[SANDBOX], cwd)
}

fn env(pairs: &[(&str, &str)]) -> KeyEnv {
    env_in(pairs, Path::new("/"))
}

fn keys(anthropic: Option<&str>, openrouter: Option<&str>, sandbox: Option<&str>) -> RequestKeys {
    let mut keys = RequestKeys::default();
    keys.anthropic = anthropic.map(Secret::from);
    keys.openrouter = openrouter.map(Secret::from);
    if let Some(key) = sandbox {
        keys.set_sandbox(SANDBOX.field, Secret::from(key));
    }
    keys
}

async fn resolve_ok(given: RequestKeys, env: KeyEnv) -> ResolvedKeys {
    resolve(&given, &env, None, Some(SANDBOX), false)
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
        keys(Some("sk-request"), None, Some("acme_request")),
        env(&[
            ("ANTHROPIC_API_KEY", "sk-env"),
            ("ACME_API_KEY", "acme_env"),
        ]),
    )
    .await;
    assert_eq!(r.runner_env["ANTHROPIC_API_KEY"], "sk-request");
    assert_eq!(r.sandbox.as_ref().map(Secret::expose), Some("acme_request"));
}

#[tokio::test]
async fn the_environment_is_used_when_the_request_has_none() {
    let r = resolve_ok(
        keys(None, None, None),
        env(&[
            ("ANTHROPIC_API_KEY", "sk-env"),
            ("ACME_API_KEY", "acme_env"),
        ]),
    )
    .await;
    assert_eq!(r.runner_env["ANTHROPIC_API_KEY"], "sk-env");
    assert_eq!(r.sandbox.as_ref().map(Secret::expose), Some("acme_env"));
}

#[tokio::test]
async fn the_secret_comes_after_the_environment() {
    let source = FakeSecret(BTreeMap::from([
        ("ANTHROPIC_API_KEY", "sk-secret"),
        ("ACME_API_KEY", "acme_secret"),
    ]));
    let r = resolve(
        &keys(None, None, None),
        &env(&[("ANTHROPIC_API_KEY", "sk-env")]),
        Some(&source),
        Some(SANDBOX),
        false,
    )
    .await
    .expect("resolves");
    assert_eq!(r.runner_env["ANTHROPIC_API_KEY"], "sk-env");
    assert_eq!(r.sandbox.as_ref().map(Secret::expose), Some("acme_secret"));
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
    let mut pairs: Vec<(&str, &str)> = PROVIDER_ENV_KEYS.iter().map(|k| (*k, "v")).collect();
    pairs.push(("UNRELATED_SECRET", "must-not-pass"));
    pairs.retain(|(k, _)| *k != "CLAUDE_CODE_USE_VERTEX");
    let r = resolve_ok(keys(None, None, Some("e")), env(&pairs)).await;
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
    let env = env_in(
        &[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "p"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "sa.json"),
        ],
        dir.path(),
    );
    // Read once, at start-up: the file may go away afterwards.
    drop(dir);
    let r = resolve(
        &keys(None, None, Some("e")),
        &env,
        None,
        Some(SANDBOX),
        false,
    )
    .await
    .expect("resolves");
    let in_sandbox = "/home/user/.config/gcloud/service_account.json";
    assert_eq!(r.runner_env["GOOGLE_APPLICATION_CREDENTIALS"], in_sandbox);
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].path, in_sandbox);
    assert_eq!(&r.files[0].content[..], br#"{"type":"service_account"}"#);
    // Its contents are a secret like the keys.
    assert!(
        r.secrets
            .iter()
            .any(|s| s.expose() == r#"{"type":"service_account"}"#)
    );
}

/// A provider that keeps the model's credentials on the host gets the key
/// file's contents in the environment, for its model endpoint to take out;
/// nothing is uploaded and no variable points into the sandbox.
#[tokio::test]
async fn vertex_hands_the_key_file_to_a_keyless_provider() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sa.json"), br#"{"type":"service_account"}"#).expect("write");
    let env = env_in(
        &[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "sa.json"),
        ],
        dir.path(),
    );
    let r = resolve(
        &keys(None, None, Some("e")),
        &env,
        None,
        Some(SANDBOX),
        true,
    )
    .await
    .expect("resolves");
    assert!(r.files.is_empty());
    assert!(!r.runner_env.contains_key("GOOGLE_APPLICATION_CREDENTIALS"));
    assert_eq!(
        r.runner_env[crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE],
        r#"{"type":"service_account"}"#
    );
    assert!(
        r.secrets
            .iter()
            .any(|s| s.expose() == r#"{"type":"service_account"}"#)
    );
}

#[tokio::test]
async fn vertex_without_a_credentials_file_says_what_to_set() {
    let e = resolve(
        &keys(None, None, Some("e")),
        &env(&[("CLAUDE_CODE_USE_VERTEX", "1")]),
        None,
        Some(SANDBOX),
        false,
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
        Some(SANDBOX),
        false,
    )
    .await
    .expect_err("missing");
    assert_eq!(e.field(), Some("anthropic_api_key"));
    assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("ANTHROPIC_API_KEY"), "{e}");
}

#[tokio::test]
async fn a_missing_sandbox_credential_is_an_error_only_for_a_provider_that_needs_one() {
    let e = resolve(
        &keys(Some("k"), None, None),
        &env(&[]),
        None,
        Some(SANDBOX),
        false,
    )
    .await
    .expect_err("missing");
    assert_eq!(e.field(), Some("acme_api_key"));
    assert!(e.to_string().contains("ACME_API_KEY"), "{e}");
    assert!(
        resolve(&keys(Some("k"), None, None), &env(&[]), None, None, false)
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
        Some(SANDBOX),
        false,
    )
    .await
    .expect_err("missing base url");
    assert!(e.to_string().contains("ANTHROPIC_BASE_URL"), "{e}");
}

#[test]
fn the_credentials_in_the_sandbox_are_those_no_endpoint_holds() {
    let env: BTreeMap<String, String> = [
        ("ANTHROPIC_API_KEY", "sk-ant-x"),
        ("ANTHROPIC_AUTH_TOKEN", ""),
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(
        credentials_in_sandbox(&env, false, false),
        [
            "ANTHROPIC_API_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY"
        ]
    );
    assert_eq!(
        credentials_in_sandbox(&env, true, false),
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    );
    assert!(credentials_in_sandbox(&env, true, true).is_empty());
}
