//! A fake third provider, wired through the same declarations as E2B and
//! local: the checklist in the module doc, proven.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::app::{AppState, app};
use crate::env::EnvVars;
use crate::sandbox::{
    ExitStatus, ProcessEvent, ProcessSpec, ProcessStream, Sandbox, SandboxError, SandboxFile,
    SandboxSpec, e2b, local,
};
use crate::settings::{Profile, SandboxChoice, Settings};

/// What the fake provider saw: its settings at build, each create's spec.
#[derive(Default)]
struct Seen {
    region: Mutex<Option<String>>,
    credentials: Mutex<Vec<Option<String>>>,
}

static SEEN: std::sync::LazyLock<Seen> = std::sync::LazyLock::new(Seen::default);
/// Tests in this file share [`SEEN`]; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Step 1 of the checklist: the provider's declaration.
const ACME: ProviderDeclaration = ProviderDeclaration {
    name: "acme",
    summary: "an Acme cloud sandbox",
    credential: Some(Credential {
        field: "acme_api_key",
        variable: "ACME_API_KEY",
        description: "Acme key; defaults to `$ACME_API_KEY`.",
    }),
    variables: &["ACME_REGION"],
    serverless: true,
    meters_model: |_| false,
    keeps_cloud_credentials: |_| false,
    build: build_acme,
};

/// Step 3: one line at the door.
const CATALOG: Catalog = &[&e2b::PROVIDER, &local::PROVIDER, &ACME];

#[allow(
    clippy::unnecessary_wraps,
    reason = "it has the BuildProvider signature"
)]
fn build_acme(settings: &ProviderSettings) -> Result<Arc<dyn SandboxProvider>, String> {
    *SEEN.region.lock().expect("lock") = settings.get("ACME_REGION").map(str::to_owned);
    Ok(Arc::new(Acme))
}

struct Acme;
struct AcmeSandbox;

#[async_trait]
impl SandboxProvider for Acme {
    fn name(&self) -> &'static str {
        ACME.name
    }
    async fn create(&self, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let credential = spec.credential.map(|c| c.expose().to_owned());
        SEEN.credentials.lock().expect("lock").push(credential);
        Ok(Arc::new(AcmeSandbox))
    }
}

#[async_trait]
impl Sandbox for AcmeSandbox {
    fn id(&self) -> &str {
        "acme-1"
    }
    async fn upload(&self, _files: Vec<SandboxFile>) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn start(&self, _process: ProcessSpec) -> Result<ProcessStream, SandboxError> {
        let events = vec![
            Ok(ProcessEvent::Stdout(Bytes::from_static(
                b"{\"type\":\"result\",\"subtype\":\"success\"}\n",
            ))),
            Ok(ProcessEvent::Exited(ExitStatus {
                code: Some(0),
                status: "exit status 0".into(),
            })),
        ];
        Ok(Box::pin(futures::stream::iter(events)))
    }
    async fn read_file(&self, _path: &str) -> Result<Bytes, SandboxError> {
        Ok(Bytes::new())
    }
    async fn destroy(&self) -> Result<(), SandboxError> {
        Ok(())
    }
}

fn settings(pairs: &[(&str, &str)], requested: Option<&str>) -> Result<Settings, String> {
    let choice = SandboxChoice {
        catalog: CATALOG,
        requested,
        setup: Setup::CheckOnly,
        executable: None,
    };
    Settings::build(
        &EnvVars::from_pairs(pairs.iter().copied()),
        Path::new("/nonexistent"),
        Profile::Server,
        choice,
    )
}

async fn query(settings: Settings, body: serde_json::Value) -> (http::StatusCode, String) {
    let provider = settings
        .sandbox
        .build_provider()
        .expect("the provider builds");
    let router = app(AppState::new(settings, provider));
    let request = http::Request::post("/query")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = router.oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn a_provider_is_chosen_by_name_by_credential_or_as_the_one_that_needs_none() {
    let by_name = choose(CATALOG, Some("acme"), |_| false).expect("named");
    assert_eq!(by_name.name, "acme");
    let by_key = choose(CATALOG, None, |v| v == "ACME_API_KEY").expect("by key");
    assert_eq!(by_key.name, "acme");
    let keyless = choose(CATALOG, None, |_| false).expect("keyless");
    assert_eq!(keyless.credential, None);
    let err = choose(CATALOG, Some("nope"), |_| false).expect_err("unknown");
    assert!(
        err.contains("\"acme\"") && err.contains("\"nope\""),
        "{err}"
    );
}

#[tokio::test]
async fn the_fake_provider_runs_a_query_with_its_credential_from_the_request_or_the_environment() {
    let _serial = SERIAL.lock().await;
    let env = [
        ("ANTHROPIC_API_KEY", "sk-ant-test"),
        ("ACME_API_KEY", "acme-env-key"),
        ("ACME_REGION", "eu-1"),
        ("UNDECLARED", "never-read"),
    ];
    let settings = settings(&env, None).expect("settings");
    assert_eq!(settings.sandbox.provider.name, "acme");
    assert_eq!(settings.sandbox.options.get("UNDECLARED"), None);

    SEEN.credentials.lock().expect("lock").clear();
    let (status, sse) = query(
        settings.clone(),
        serde_json::json!({"prompt": "hi", "acme_api_key": "acme-request-key"}),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{sse}");
    assert!(sse.contains(r#""type":"done","status":"success""#), "{sse}");
    let (status, _) = query(settings, serde_json::json!({"prompt": "hi"})).await;
    assert_eq!(status, http::StatusCode::OK);

    assert_eq!(SEEN.region.lock().expect("lock").as_deref(), Some("eu-1"));
    assert_eq!(
        *SEEN.credentials.lock().expect("lock"),
        [
            Some("acme-request-key".to_owned()),
            Some("acme-env-key".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_missing_credential_names_the_fake_providers_field_and_variable() {
    let _serial = SERIAL.lock().await;
    let settings =
        settings(&[("ANTHROPIC_API_KEY", "sk-ant-test")], Some("acme")).expect("settings");
    let (status, body) = query(settings, serde_json::json!({"prompt": "hi"})).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["field"], "acme_api_key");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("ACME_API_KEY"), "{message}");
}

#[tokio::test]
async fn the_openapi_document_lists_the_fake_providers_field() {
    let settings = settings(&[], Some("local")).expect("settings");
    let doc = crate::openapi::document(&settings.sandbox.credential_fields);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("json");
    let properties = &doc["components"]["schemas"]["QueryRequest"]["properties"];
    assert!(properties["acme_api_key"].is_object(), "{properties}");
    assert!(properties[e2b::CREDENTIAL.field].is_object());
}

#[test]
fn an_unknown_provider_name_in_the_environment_is_a_start_up_error_naming_the_variable() {
    let err = settings(&[("SANDSTORM_SANDBOX", "nope")], None).expect_err("refused");
    assert!(err.contains("SANDSTORM_SANDBOX"), "{err}");
}
