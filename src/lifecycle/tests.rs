//! `POST /webhooks/e2b` through the router, without a socket: the checks
//! before anything is read, and a signed kill expiring a running run in a
//! real SQLite history.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::signature::hmac_header;
use crate::app::{AppState, app};
use crate::doors::PROVIDERS;
use crate::env::EnvVars;
use crate::history::sqlite::SqliteStore;
use crate::history::{History, RecordStatus, RunStore};
use crate::run_id::{self, RunId};
use crate::sandbox::provider::Setup;
use crate::sandbox::scripted::{Scripted, Then};
use crate::secret::Secret;
use crate::settings::{Profile, SandboxChoice, Settings};

const SECRET: &str = "lifecycle-test-secret";

fn settings(pairs: &[(&str, &str)]) -> Settings {
    let choice = SandboxChoice {
        catalog: PROVIDERS,
        requested: None,
        setup: Setup::CheckOnly,
        executable: None,
    };
    Settings::build(
        &EnvVars::from_pairs(pairs.iter().copied()),
        std::path::Path::new("/nonexistent"),
        Profile::Server,
        choice,
    )
    .expect("settings")
}

struct Harness {
    router: Router,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

fn harness(pairs: &[(&str, &str)]) -> Harness {
    harness_with(pairs, |_| {})
}

fn harness_with(pairs: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Harness {
    let mut settings = settings(pairs);
    tweak(&mut settings);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("history.db")).expect("open"));
    let history = History::spawn(store.clone(), None);
    let provider = Arc::new(Scripted::new(Vec::new(), Then::Exit(0)));
    Harness {
        router: app(AppState::new(settings, provider).with_history(history)),
        store,
        _dir: dir,
    }
}

impl Harness {
    async fn post(&self, body: &[u8], signature: Option<&str>) -> (u16, Value) {
        let mut request = Request::post("/webhooks/e2b").header("content-type", "application/json");
        if let Some(signature) = signature {
            request = request.header("e2b-signature", signature);
        }
        let request = request.body(Body::from(body.to_vec())).expect("request");
        let response = self.router.clone().oneshot(request).await.expect("answer");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A detached run of `owner`'s, started `created_ms` after 1970,
    /// recorded as running; its id and its sandbox's metadata.
    async fn running_run(&self, owner: &Secret, created_ms: u64) -> (RunId, Value) {
        let id = RunId::generate().expect("an id");
        let record =
            crate::history::tests::record(id.as_str(), &run_id::owner_digest(owner), created_ms);
        self.store.started(&record).await.expect("start");
        let mut metadata = run_id::metadata(&id, owner);
        metadata.insert(crate::runs::CREATED_KEY.to_owned(), record.created_at);
        (id, serde_json::to_value(metadata).expect("json"))
    }

    async fn status(&self, owner: &Secret, id: &RunId) -> RecordStatus {
        self.store
            .get(&run_id::owner_digest(owner), id.as_str())
            .await
            .expect("read")
            .expect("a record")
            .status
    }
}

/// A `killed` event of sandbox `sbx1` with `metadata`, as E2B sends it.
fn killed(metadata: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "7d5c3d3e-1f0b-4b55-9a54-5c1b8c0d0e11", "version": "v2",
        "type": "sandbox.lifecycle.killed", "timestamp": "2026-01-01T00:00:00Z",
        "event_category": "lifecycle", "event_label": "kill",
        "event_data": {"sandbox_metadata": metadata, "kill_reason": "timeout",
                       "execution": {"started_at": "2026-01-01T00:00:00Z", "vcpu_count": 2,
                                     "memory_mb": 512, "execution_time": 1000}},
        "sandbox_id": "sbx1", "sandbox_execution_id": "x", "sandbox_template_id": "sandstorm",
        "sandbox_build_id": "b", "sandbox_team_id": "t"
    }))
    .expect("json")
}

fn signed(body: &[u8]) -> String {
    e2b_wire::events::signature(SECRET.as_bytes(), body)
}

#[tokio::test]
async fn a_signed_kill_expires_a_running_run_and_nothing_else_does() {
    let h = harness(&[("SANDSTORM_E2B_WEBHOOK_SECRET", SECRET)]);
    let owner = Secret::new("owner");
    let (id, metadata) = h.running_run(&owner, 1_700_000_000_000).await;
    let body = killed(&metadata);

    // Unsigned, or signed with another secret: 401, and nothing changes.
    for signature in [
        None,
        Some("bm90IGl0".to_owned()),
        Some(e2b_wire::events::signature(b"other", &body)),
    ] {
        let (status, answer) = h.post(&body, signature.as_deref()).await;
        assert_eq!(status, 401, "{signature:?}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_signature");
        assert_eq!(h.status(&owner, &id).await, RecordStatus::Running);
    }
    // Another event type changes nothing.
    let created = serde_json::to_vec(&json!({
        "type": "sandbox.lifecycle.created", "sandbox_id": "sbx1",
        "event_data": {"sandbox_metadata": metadata}
    }))
    .expect("json");
    let (status, _) = h.post(&created, Some(&signed(&created))).await;
    assert_eq!(status, 200);
    assert_eq!(h.status(&owner, &id).await, RecordStatus::Running);

    let (status, answer) = h.post(&body, Some(&signed(&body))).await;
    assert_eq!((status, &answer), (200, &json!({"status": "ok"})));
    let record = h
        .store
        .get(&run_id::owner_digest(&owner), id.as_str())
        .await
        .expect("read")
        .expect("a record");
    assert_eq!(record.status, RecordStatus::Expired);
    assert_eq!(record.error_type.as_deref(), Some("sandbox_killed"));
    assert_eq!(record.ended_at.as_deref(), Some("2026-01-01T00:00:00.000Z"));
}

#[tokio::test]
async fn python_sandstorm_s_hmac_is_accepted_too() {
    let h = harness(&[("SANDSTORM_WEBHOOK_SECRET", SECRET)]);
    let owner = Secret::new("owner");
    let (id, metadata) = h.running_run(&owner, 1_700_000_000_000).await;
    let body = killed(&metadata);
    let (status, answer) = h
        .post(&body, Some(&hmac_header(&Secret::new(SECRET), &body)))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(h.status(&owner, &id).await, RecordStatus::Expired);
    // 0.9.2's own test event: camel case, an unknown type.
    let test_event = br#"{"type":"sandbox.lifecycle.test","sandboxId":"test-sandbox-000","eventData":{"sandbox_metadata":{"request_id":"test0000"}}}"#;
    let (status, answer) = h
        .post(
            test_event,
            Some(&hmac_header(&Secret::new(SECRET), test_event)),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn without_a_secret_the_route_is_not_configured_unless_told_to_accept_unsigned_events() {
    let h = harness(&[]);
    let body = killed(&json!({}));
    let (status, answer) = h.post(&body, Some(&signed(&body))).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["type"], "not_configured");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("SANDSTORM_E2B_WEBHOOK_SECRET")),
        "{answer}"
    );

    let h = harness(&[("SANDSTORM_E2B_WEBHOOK_INSECURE", "1")]);
    let owner = Secret::new("owner");
    let (id, metadata) = h.running_run(&owner, 1_700_000_000_000).await;
    let (status, answer) = h.post(&killed(&metadata), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(h.status(&owner, &id).await, RecordStatus::Expired);
}

#[tokio::test]
async fn what_is_not_an_event_is_a_400_naming_the_field() {
    let h = harness(&[("SANDSTORM_E2B_WEBHOOK_SECRET", SECRET)]);
    for (body, field) in [
        (json!({"sandbox_id": "sbx1"}), Some("type")),
        (
            json!({"type": "sandbox.lifecycle.killed"}),
            Some("sandbox_id"),
        ),
        (
            json!({"type": "sandbox.lifecycle.killed", "sandbox_id": ""}),
            Some("sandbox_id"),
        ),
        (json!({"type": 7, "sandbox_id": "sbx1"}), Some("type")),
        (
            json!({"type": "sandbox.lifecycle.killed", "sandbox_id": "sbx1",
                   "event_data": {"sandbox_metadata": {"k": 1}}}),
            Some("event_data.sandbox_metadata.k"),
        ),
        (
            json!({"type": "t", "sandbox_id": "s", "event_data": [null, null]}),
            Some("event_data"),
        ),
        (
            json!({"type": "t", "sandbox_id": "s", "event_data": {"execution": [1]}}),
            Some("event_data.execution"),
        ),
        (json!([1, 2]), None),
    ] {
        let bytes = serde_json::to_vec(&body).expect("json");
        let (status, answer) = h.post(&bytes, Some(&signed(&bytes))).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "bad_request", "{answer}");
        assert_eq!(answer["error"]["field"].as_str(), field, "{body}: {answer}");
    }
    let not_json = b"not json";
    let (status, _) = h.post(not_json, Some(&signed(not_json))).await;
    assert_eq!(status, 400);
    // Larger than any event: refused before its signature is checked.
    let huge = vec![b' '; super::MAX_BODY + 1];
    let (status, _) = h.post(&huge, Some(&signed(&huge))).await;
    assert_eq!(status, 413);
}

#[test]
fn every_answer_is_in_the_openapi_document() {
    use super::LifecycleError;
    use crate::error::ApiError;
    let doc: Value = serde_json::from_str(crate::openapi::TEMPLATE).expect("the document");
    let operation = &doc["paths"]["/webhooks/e2b"]["post"];
    assert_eq!(operation["security"], json!([]), "no bearer token");
    let kinds = &doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["properties"]["type"]
        ["enum"];
    // A new variant stops this compiling until it is listed below.
    let _every_variant_is_listed = |e: &LifecycleError| match e {
        LifecycleError::NotConfigured
        | LifecycleError::BadSignature
        | LifecycleError::Malformed { .. }
        | LifecycleError::Request(_)
        | LifecycleError::Internal(_) => (),
    };
    for error in [
        LifecycleError::NotConfigured,
        LifecycleError::BadSignature,
        LifecycleError::Malformed {
            field: None,
            message: "m".into(),
        },
        LifecycleError::Request(ApiError::TooLarge {
            field: None,
            message: "m".into(),
        }),
        LifecycleError::Internal("d".into()),
    ] {
        let status = error.status().as_u16().to_string();
        assert!(
            operation["responses"][&status].is_object(),
            "status {status} is documented"
        );
        assert!(
            kinds
                .as_array()
                .expect("enum")
                .contains(&json!(error.kind())),
            "error type {} is documented",
            error.kind()
        );
    }
}

/// An AWS secret, as the serverless doors read it, holding `name`.
struct OneSecret(&'static str, &'static str);

#[async_trait::async_trait]
impl crate::keys::KeySource for OneSecret {
    async fn get(&self, name: &str) -> Result<Option<Secret>, crate::keys::KeySourceError> {
        Ok((name == self.0).then(|| Secret::new(self.1)))
    }
}

#[tokio::test]
async fn a_serverless_door_reads_the_secret_from_its_aws_secret() {
    for name in ["SANDSTORM_E2B_WEBHOOK_SECRET", "SANDSTORM_WEBHOOK_SECRET"] {
        let h = harness_with(&[], |settings| {
            settings.key_source = Some(Arc::new(OneSecret(name, SECRET)));
        });
        let owner = Secret::new("owner");
        let (id, metadata) = h.running_run(&owner, 1_700_000_000_000).await;
        let body = killed(&metadata);
        let (status, answer) = h.post(&body, None).await;
        assert_eq!(status, 401, "{name}: the secret is there: {answer}");
        let (status, answer) = h.post(&body, Some(&signed(&body))).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(h.status(&owner, &id).await, RecordStatus::Expired, "{name}");
    }
}
