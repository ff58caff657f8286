//! The control plane: create and kill sandboxes (`spec/openapi.yml` in
//! e2b-dev/E2B).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::http::{self, PROVIDER};
use super::options::E2bOptions;
use super::retry::with_retries;
use crate::sandbox::SandboxError;
use crate::secret::Secret;

/// `NewSandbox` in the OpenAPI spec.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    /// Seconds until E2B kills the sandbox on its own.
    timeout: u64,
    metadata: &'a BTreeMap<String, String>,
    env_vars: BTreeMap<String, String>,
    /// envd then demands the access token create hands back to us.
    secure: bool,
    /// The agent must reach the model API.
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: bool,
    auto_pause: bool,
}

/// The part of `Sandbox` (create's answer) we use.
#[derive(Debug, Deserialize)]
pub(crate) struct Created {
    #[serde(rename = "sandboxID")]
    pub(crate) sandbox_id: String,
    #[serde(rename = "envdAccessToken", default)]
    pub(crate) envd_access_token: Option<Secret>,
    /// Nullable in the spec: where this sandbox's traffic is served.
    #[serde(default)]
    pub(crate) domain: Option<String>,
    #[serde(rename = "envdVersion", default)]
    pub(crate) envd_version: String,
}

/// `POST /sandboxes`, retried on 429, 5xx, dropped connections and hangs.
///
/// A retried create may leave behind a sandbox E2B made but could not tell
/// us about; its `timeout` (the lifetime) is what reclaims it.
pub(crate) async fn create(
    client: &reqwest::Client,
    options: &E2bOptions,
    api_key: &Secret,
    lifetime: Duration,
    metadata: &BTreeMap<String, String>,
) -> Result<Created, SandboxError> {
    let lifetime = if lifetime.is_zero() {
        options.default_lifetime
    } else {
        lifetime
    };
    let body = NewSandbox {
        template_id: &options.template,
        // Round up: a lifetime of 1.5 s must not become 1 s.
        timeout: lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0),
        metadata,
        env_vars: BTreeMap::new(),
        secure: true,
        allow_internet_access: true,
        auto_pause: false,
    };
    let (url, body) = (&format!("{}/sandboxes", options.api_url), &body);
    with_retries(
        &options.retry,
        "create",
        SandboxError::is_transient,
        || async move {
            let request = client
                .post(url)
                .header("X-API-KEY", api_key.expose())
                .json(body);
            let (status, answer) = http::call(request, "create", options.request_timeout).await?;
            if !status.is_success() {
                return Err(http::status_error(
                    "create",
                    status,
                    &answer,
                    true,
                    &[api_key],
                ));
            }
            serde_json::from_slice::<Created>(&answer).map_err(|e| SandboxError::Other {
                op: "create",
                message: format!("{PROVIDER} answered with an unexpected body: {e}"),
            })
        },
    )
    .await
}

/// `DELETE /sandboxes/{id}`. 404 means already gone, which is what we
/// wanted. Any other failure is retried: a sandbox left running costs money
/// until its lifetime runs out.
pub(crate) async fn kill(
    client: &reqwest::Client,
    options: &E2bOptions,
    api_key: &Secret,
    sandbox_id: &str,
) -> Result<(), SandboxError> {
    let url = &format!("{}/sandboxes/{sandbox_id}", options.api_url);
    // The span puts the id on every retry warning: a kill that never
    // succeeds leaves a sandbox someone may want to find.
    let span = tracing::warn_span!("e2b_kill", sandbox = %sandbox_id);
    with_retries(
        &options.retry,
        "destroy",
        |_| true,
        || async move {
            let request = client.delete(url).header("X-API-KEY", api_key.expose());
            let (status, answer) = http::call(request, "destroy", options.request_timeout).await?;
            if status.is_success() || status == StatusCode::NOT_FOUND {
                Ok(())
            } else {
                Err(http::status_error(
                    "destroy",
                    status,
                    &answer,
                    true,
                    &[api_key],
                ))
            }
        },
    )
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_answer_parses_with_and_without_optional_fields() {
        let full: Created = serde_json::from_str(
            r#"{"templateID":"sandstorm","sandboxID":"sbx1","clientID":"c","envdVersion":"0.5.7",
                "envdAccessToken":"tok","domain":null,"alias":"sandstorm"}"#,
        )
        .expect("parses");
        assert_eq!(full.sandbox_id, "sbx1");
        assert_eq!(
            full.envd_access_token.as_ref().map(Secret::expose),
            Some("tok")
        );
        assert_eq!(full.domain, None);
        assert_eq!(full.envd_version, "0.5.7");
        assert!(!format!("{full:?}").contains("tok\""));

        let bare: Created = serde_json::from_str(r#"{"sandboxID":"sbx2"}"#).expect("parses");
        assert!(bare.envd_access_token.is_none());
    }

    #[test]
    fn create_body_matches_the_openapi_field_names() {
        let metadata = BTreeMap::from([("request_id".to_owned(), "r1".to_owned())]);
        let body = NewSandbox {
            template_id: "sandstorm",
            timeout: 300,
            metadata: &metadata,
            env_vars: BTreeMap::new(),
            secure: true,
            allow_internet_access: true,
            auto_pause: false,
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            serde_json::json!({
                "templateID": "sandstorm", "timeout": 300, "metadata": {"request_id": "r1"},
                "envVars": {}, "secure": true, "allow_internet_access": true, "autoPause": false
            })
        );
    }
}
