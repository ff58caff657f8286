//! E2B's sandbox lifecycle events and the webhooks that carry them: the
//! event a webhook receives, how E2B signs it, and the bodies of the
//! registration API (`/events/webhooks`).
//!
//! The event is E2B's `SandboxEvent` (e2b-dev/infra,
//! `packages/shared/pkg/events/sandbox.go`), whose JSON is snake case.
//! E2B's older documentation shows the same event in camel case
//! (`sandboxId`, `eventData`), and Python Sandstorm 0.9.2's
//! `ds webhook test` sends that shape: the reader takes both.
//!
//! A delivery is signed with the secret given at registration: the
//! `e2b-signature` header is the SHA-256 digest of the secret's bytes
//! followed by the raw body, in base64 with its `=` padding cut off (not an
//! HMAC). E2B's documentation has shown both the standard base64 alphabet
//! and the URL-safe one; [`signature`] writes the standard one and
//! [`signature_matches`] takes either.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// A sandbox was created.
pub const CREATED: &str = "sandbox.lifecycle.created";
/// A sandbox was killed: by a kill call, or by its timeout (`kill_reason`
/// says which).
pub const KILLED: &str = "sandbox.lifecycle.killed";
/// A sandbox was paused.
pub const PAUSED: &str = "sandbox.lifecycle.paused";
/// A paused sandbox was resumed.
pub const RESUMED: &str = "sandbox.lifecycle.resumed";
/// A sandbox's settings changed (its timeout).
pub const UPDATED: &str = "sandbox.lifecycle.updated";
/// A sandbox was checkpointed (snapshotted while it runs).
pub const CHECKPOINTED: &str = "sandbox.lifecycle.checkpointed";

/// Every event type a webhook can subscribe to.
pub const EVENT_TYPES: [&str; 6] = [CREATED, KILLED, PAUSED, RESUMED, UPDATED, CHECKPOINTED];

/// The event structure E2B publishes now.
pub const EVENT_VERSION: &str = "v2";

/// The header with the delivery's signature.
pub const SIGNATURE_HEADER: &str = "e2b-signature";
/// The header naming the signature's scheme.
pub const SIGNATURE_VERSION_HEADER: &str = "e2b-signature-version";
/// The one signature scheme there is.
pub const SIGNATURE_VERSION: &str = "v1";
/// The header with the id of the webhook the delivery is for.
pub const WEBHOOK_ID_HEADER: &str = "e2b-webhook-id";
/// The header with the id of this delivery attempt.
pub const DELIVERY_ID_HEADER: &str = "e2b-delivery-id";

/// `kill_reason` of a sandbox killed by a kill call.
pub const KILL_REASON_REQUEST: &str = "request";
/// `kill_reason` of a sandbox its timeout ended.
pub const KILL_REASON_TIMEOUT: &str = "timeout";

/// The `e2b-signature` of `body` delivered under `secret`: the unpadded
/// standard base64 of SHA-256(secret ‖ body).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    STANDARD_NO_PAD.encode(digest(secret, body))
}

/// SHA-256(secret ‖ body), what the signature encodes.
pub fn digest(secret: &[u8], body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(secret);
    hasher.update(body);
    hasher.finalize().into()
}

/// The digest a signature header carries, whichever base64 alphabet it
/// was written in, padded or not; `None` when it is not 32 bytes of
/// base64.
pub fn signature_digest(header: &str) -> Option<[u8; 32]> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);
    let header = header.trim();
    [STANDARD, URL_SAFE]
        .iter()
        .find_map(|engine| engine.decode(header).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
}

/// Whether `header` is E2B's signature of `body` under `secret`. The
/// digests are compared in constant time.
pub fn signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(given) = signature_digest(header) else {
        return false;
    };
    bool::from(given.ct_eq(&digest(secret, body)))
}

/// One lifecycle event, as a webhook receives it (E2B's `SandboxEvent`).
///
/// Every field but `type` and `sandbox_id` may be missing from what a
/// reader gets (older events, 0.9.2's test event); they read as empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxEvent {
    /// The event's id (a UUID); the same across a delivery's retries.
    #[serde(default)]
    pub id: String,
    /// The event structure's version (`v1`, `v2`).
    #[serde(default)]
    pub version: String,
    /// `sandbox.lifecycle.killed` and the others of [`EVENT_TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened (RFC 3339).
    #[serde(default)]
    pub timestamp: String,
    /// The older name of the type's family (`lifecycle`).
    #[serde(default)]
    pub event_category: String,
    /// The older name of the type (`create`, `kill`, ...).
    #[serde(default)]
    pub event_label: String,
    /// What the event says beyond its type.
    #[serde(default, alias = "eventData", skip_serializing_if = "Option::is_none")]
    pub event_data: Option<EventData>,
    /// The sandbox's id.
    #[serde(alias = "sandboxId", alias = "sandboxID")]
    pub sandbox_id: String,
    /// This run of the sandbox (a UUID).
    #[serde(default, alias = "sandboxExecutionId")]
    pub sandbox_execution_id: String,
    /// The template it was made from.
    #[serde(default, alias = "sandboxTemplateId")]
    pub sandbox_template_id: String,
    /// The template's build.
    #[serde(default, alias = "sandboxBuildId")]
    pub sandbox_build_id: String,
    /// The team that owns it (a UUID).
    #[serde(default, alias = "sandboxTeamId")]
    pub sandbox_team_id: String,
}

/// An event's `event_data`. Which fields are there depends on the type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// The metadata the sandbox was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_metadata: Option<BTreeMap<String, String>>,
    /// How long it ran, on `killed` and `paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// Why it was killed (`request`, `timeout`, ...), on `killed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_reason: Option<String>,
    /// Its new end (RFC 3339), on an `updated` that changed the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_timeout: Option<String>,
}

/// `event_data.execution`: the sandbox's run so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// When this run of it started (RFC 3339).
    #[serde(default)]
    pub started_at: String,
    /// Its virtual CPUs.
    #[serde(default)]
    pub vcpu_count: u32,
    /// Its memory, in MiB.
    #[serde(default)]
    pub memory_mb: u32,
    /// How long it ran, in milliseconds.
    #[serde(default)]
    pub execution_time: u64,
}

/// `POST /events/webhooks` request: a webhook to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewWebhook {
    /// A name for people.
    pub name: String,
    /// Where the events are POSTed.
    pub url: String,
    /// Whether events are delivered; `true` when absent.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The event types delivered, of [`EVENT_TYPES`].
    pub events: Vec<String>,
    /// What each delivery is signed with.
    pub signature_secret: WebhookSecret,
}

fn yes() -> bool {
    true
}

/// `PATCH /events/webhooks/{id}` request: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookUpdate {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Deliver or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// New event types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// A new secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_secret: Option<WebhookSecret>,
}

/// A registered webhook, as the API answers it (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Its id, for get, update and delete.
    pub id: String,
    /// The team it belongs to. E2B's documentation has spelled it
    /// `teamID` and `teamId`.
    #[serde(default, alias = "teamID")]
    pub team_id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// When it was registered (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// Whether events are delivered.
    #[serde(default)]
    pub enabled: bool,
    /// Where the events go.
    pub url: String,
    /// The event types delivered.
    #[serde(default)]
    pub events: Vec<String>,
}

/// A webhook's signing secret. `Debug` redacts it; [`WebhookSecret::expose`]
/// is the one way to the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        WebhookSecret(secret.into())
    }

    /// The secret itself, for the one place that signs or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed apart from this code, with Python's hashlib:
    /// `base64.b64encode(hashlib.sha256(secret + body).digest()).rstrip(b"=")`.
    const SECRET: &[u8] = b"e2b-webhook-secret";
    const BODY: &[u8] = br#"{"type":"sandbox.lifecycle.killed","sandbox_id":"sbx1"}"#;
    const STANDARD: &str = "L0Iwg0BPBb788Zkat7CSfg8SGqgU3hlruxj03SzgM/o";
    const URL_SAFE: &str = "L0Iwg0BPBb788Zkat7CSfg8SGqgU3hlruxj03SzgM_o";

    #[test]
    fn the_signature_is_unpadded_base64_of_sha256_of_secret_then_body() {
        assert_eq!(signature(SECRET, BODY), STANDARD);
    }

    #[test]
    fn either_alphabet_and_padding_match_and_nothing_else_does() {
        for header in [
            STANDARD,
            URL_SAFE,
            &format!("{STANDARD}="),
            " L0Iwg0BPBb788Zkat7CSfg8SGqgU3hlruxj03SzgM/o ",
        ] {
            assert!(signature_matches(SECRET, BODY, header), "{header:?}");
        }
        let mut body = BODY.to_vec();
        body.push(b' ');
        assert!(!signature_matches(SECRET, &body, STANDARD));
        assert!(!signature_matches(b"another secret", BODY, STANDARD));
        for header in [
            "",
            "sha256=abc",
            "L0Iwg0BPBb788Zkat7CSfg8SGqgU3hlruxj03SzgM",
            "not base64!",
        ] {
            assert!(!signature_matches(SECRET, BODY, header), "{header:?}");
        }
    }

    #[test]
    fn an_event_reads_e2b_s_snake_case_and_the_older_camel_case() {
        let snake: SandboxEvent = serde_json::from_str(
            r#"{"id":"e1","version":"v2","type":"sandbox.lifecycle.killed","timestamp":"2026-01-01T00:00:00Z",
                "event_category":"lifecycle","event_label":"kill",
                "event_data":{"sandbox_metadata":{"k":"v"},"kill_reason":"timeout",
                              "execution":{"started_at":"2026-01-01T00:00:00Z","vcpu_count":2,"memory_mb":512,"execution_time":1000}},
                "sandbox_id":"sbx1","sandbox_execution_id":"x","sandbox_template_id":"t",
                "sandbox_build_id":"b","sandbox_team_id":"team","events_ttl_days":7}"#,
        )
        .expect("parses");
        assert_eq!(snake.kind, KILLED);
        assert_eq!(snake.sandbox_id, "sbx1");
        let data = snake.event_data.clone().expect("event data");
        assert_eq!(data.kill_reason.as_deref(), Some(KILL_REASON_TIMEOUT));
        assert_eq!(
            data.sandbox_metadata.and_then(|m| m.get("k").cloned()),
            Some("v".to_owned())
        );
        assert_eq!(data.execution.map(|e| e.execution_time), Some(1000));

        let camel: SandboxEvent = serde_json::from_str(
            r#"{"type":"sandbox.lifecycle.test","sandboxId":"test-sandbox-000",
                "eventData":{"sandbox_metadata":{"request_id":"test0000"}}}"#,
        )
        .expect("parses");
        assert_eq!(camel.sandbox_id, "test-sandbox-000");
        assert!(camel.event_data.is_some());

        // What a writer sends is snake case, and comes back the same.
        let json = serde_json::to_value(&snake).expect("serializes");
        assert_eq!(json["sandbox_team_id"], "team");
        assert_eq!(json["event_data"]["kill_reason"], "timeout");
        assert_eq!(
            serde_json::from_value::<SandboxEvent>(json).expect("back"),
            snake
        );
    }

    #[test]
    fn registration_bodies_have_e2b_s_field_names_and_hide_the_secret() {
        let new = NewWebhook {
            name: "sandstorm".into(),
            url: "https://example.com/webhooks/e2b".into(),
            enabled: true,
            events: vec![KILLED.into()],
            signature_secret: WebhookSecret::new("s3cret"),
        };
        assert_eq!(
            serde_json::to_value(&new).expect("serializes"),
            serde_json::json!({"name": "sandstorm", "url": "https://example.com/webhooks/e2b",
                               "enabled": true, "events": [KILLED], "signatureSecret": "s3cret"})
        );
        assert!(!format!("{new:?}").contains("s3cret"));
        let update: WebhookUpdate = serde_json::from_str(r#"{"enabled":false}"#).expect("parses");
        assert_eq!(update.enabled, Some(false));
        assert_eq!(
            serde_json::to_value(&update).expect("serializes"),
            serde_json::json!({"enabled": false})
        );
        let listed: Webhook = serde_json::from_str(
            r#"{"id":"w1","teamID":"t","name":"n","createdAt":"2026-01-01T00:00:00Z","enabled":true,
                "url":"https://example.com","events":["sandbox.lifecycle.created"]}"#,
        )
        .expect("parses");
        assert_eq!(listed.team_id, "t");
        assert_eq!(
            serde_json::to_value(&listed).expect("serializes")["teamId"],
            "t"
        );
    }
}
