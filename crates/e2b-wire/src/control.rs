//! The control plane's JSON bodies (`spec/openapi.yml`): create, connect,
//! set-timeout, get, list and errors, authenticated by `X-API-KEY`.
//!
//! Types carry the spec's names. Readers are tolerant: a field the spec
//! marks required but that a reader can do without has a default, so an
//! older or newer E2B does not break a client that does not need the field.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `POST /sandboxes` (and `/v2/sandboxes`) request: `NewSandbox`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// The template to boot; E2B's `base` when absent.
    #[serde(
        rename = "templateID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub template_id: Option<String>,
    /// Seconds until E2B kills the sandbox on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Labels E2B keeps with the sandbox; list filters on them.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The default environment of every process in the sandbox.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// envd then demands the access token create hands back. Absent
    /// means not secure on v1; v2 sandboxes are always secure, and the
    /// SDKs no longer send it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Absent means allowed. The spec spells this one in snake case.
    #[serde(
        rename = "allow_internet_access",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    /// Whether E2B pauses the sandbox at its timeout instead of killing
    /// it. Absent means no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
}

/// The answer of create and connect: `Sandbox`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sandbox {
    /// The template the sandbox was made from.
    #[serde(rename = "templateID", default)]
    pub template_id: String,
    /// The sandbox's id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// The cluster node E2B placed the sandbox on.
    #[serde(rename = "clientID", default)]
    pub client_id: String,
    /// The template's alias, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Clients switch features on it (see `e2b_wire::envd`).
    #[serde(rename = "envdVersion", default)]
    pub envd_version: String,
    /// What envd demands in `X-Access-Token` of a `secure` sandbox.
    #[serde(rename = "envdAccessToken", default)]
    pub envd_access_token: Option<AccessToken>,
    /// Where this sandbox's traffic is served; `null` means E2B's default.
    #[serde(default)]
    pub domain: Option<String>,
}

/// One entry of the list endpoints: `ListedSandbox`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    /// The template the sandbox was made from.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The sandbox's id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// The cluster node E2B placed the sandbox on.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The template's alias, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: when the sandbox's timeout kills it.
    pub end_at: String,
    /// Virtual CPUs.
    pub cpu_count: u32,
    /// Memory, in MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Disk size, in MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    /// Running or paused.
    pub state: SandboxState,
    /// The envd version inside it.
    pub envd_version: String,
    /// The metadata given at creation.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `GET /sandboxes/{id}`: a listed sandbox plus how to reach its envd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxDetail {
    /// Everything the list endpoints show.
    #[serde(flatten)]
    pub listed: ListedSandbox,
    /// What envd demands in `X-Access-Token` of a `secure` sandbox.
    #[serde(rename = "envdAccessToken", default)]
    pub envd_access_token: Option<AccessToken>,
    /// Where this sandbox's traffic is served; `null` means E2B's default.
    #[serde(default)]
    pub domain: Option<String>,
}

/// Whether a sandbox runs or is paused.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// It runs.
    Running,
    /// It is paused.
    Paused,
}

/// `POST /sandboxes/{id}/timeout` request: the sandbox now ends `timeout`
/// seconds from now, earlier or later than before.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetTimeout {
    /// Seconds from now.
    pub timeout: u64,
}

/// `POST /sandboxes/{id}/connect` (and `/v2/...`) request: the sandbox ends
/// no earlier than `timeout` seconds from now.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectSandbox {
    /// Seconds from now; E2B's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// The body of every control-plane failure: `{"code":404,"message":".."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Error {
    /// The HTTP status again.
    pub code: u16,
    /// What went wrong, for people.
    pub message: String,
}

/// envd's access token. `Debug` redacts it; [`AccessToken::expose`] is the
/// one way to the value, which keeps every use easy to find.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        AccessToken(token.into())
    }

    /// The token itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token itself, moved out.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sandbox_has_the_openapi_field_names() {
        let body = NewSandbox {
            template_id: Some("sandstorm".into()),
            timeout: Some(300),
            metadata: BTreeMap::from([("request_id".into(), "r1".into())]),
            env_vars: BTreeMap::new(),
            secure: Some(true),
            allow_internet_access: Some(true),
            auto_pause: Some(false),
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            serde_json::json!({
                "templateID": "sandstorm", "timeout": 300, "metadata": {"request_id": "r1"},
                "envVars": {}, "secure": true, "allow_internet_access": true, "autoPause": false
            })
        );
    }

    #[test]
    fn an_empty_new_sandbox_means_every_default() {
        let body: NewSandbox = serde_json::from_str("{}").expect("parses");
        assert_eq!(body, NewSandbox::default());
    }

    #[test]
    fn sandbox_parses_with_and_without_optional_fields() {
        let full: Sandbox = serde_json::from_str(
            r#"{"templateID":"sandstorm","sandboxID":"sbx1","clientID":"c","envdVersion":"0.5.7",
                "envdAccessToken":"tok","domain":null,"alias":"sandstorm"}"#,
        )
        .expect("parses");
        assert_eq!(full.sandbox_id, "sbx1");
        assert_eq!(
            full.envd_access_token.as_ref().map(AccessToken::expose),
            Some("tok")
        );
        assert_eq!(full.domain, None);
        assert_eq!(full.envd_version, "0.5.7");
        assert!(!format!("{full:?}").contains("tok\""));

        let bare: Sandbox = serde_json::from_str(r#"{"sandboxID":"sbx2"}"#).expect("parses");
        assert!(bare.envd_access_token.is_none());
    }

    #[test]
    fn sandbox_detail_is_the_listed_fields_plus_envd_access() {
        let detail = SandboxDetail {
            listed: ListedSandbox {
                template_id: "base".into(),
                sandbox_id: "sbx1".into(),
                client_id: "c".into(),
                alias: None,
                started_at: "2026-01-01T00:00:00.000Z".into(),
                end_at: "2026-01-01T00:05:00.000Z".into(),
                cpu_count: 2,
                memory_mb: 512,
                disk_size_mb: 1024,
                state: SandboxState::Running,
                envd_version: "0.5.7".into(),
                metadata: BTreeMap::new(),
            },
            envd_access_token: Some(AccessToken::new("tok")),
            domain: None,
        };
        let json = serde_json::to_value(&detail).expect("serializes");
        assert_eq!(json["sandboxID"], "sbx1");
        assert_eq!(json["memoryMB"], 512);
        assert_eq!(json["state"], "running");
        assert_eq!(json["envdAccessToken"], "tok");
        assert!(json["domain"].is_null());
        let back: SandboxDetail = serde_json::from_value(json).expect("parses back");
        assert_eq!(back, detail);
    }

    #[test]
    fn connect_takes_an_optional_timeout_and_set_timeout_a_required_one() {
        let connect: ConnectSandbox = serde_json::from_str("{}").expect("parses");
        assert_eq!(connect.timeout, None);
        assert!(serde_json::from_str::<SetTimeout>("{}").is_err());
        let set: SetTimeout = serde_json::from_str(r#"{"timeout":60}"#).expect("parses");
        assert_eq!(set.timeout, 60);
    }
}
