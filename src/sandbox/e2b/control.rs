//! The control plane: create and kill sandboxes (`spec/openapi.yml` in
//! e2b-dev/E2B).

use std::collections::BTreeMap;
use std::time::Duration;

use e2b_wire::control::{NewSandbox, Sandbox};
use reqwest::StatusCode;
use tracing::Instrument as _;

use super::http::{self, PROVIDER};
use super::options::E2bOptions;
use super::retry::with_retries;
use crate::sandbox::SandboxError;
use crate::secret::Secret;

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
) -> Result<Sandbox, SandboxError> {
    let lifetime = if lifetime.is_zero() {
        options.default_lifetime
    } else {
        lifetime
    };
    let body = new_sandbox(&options.template, lifetime, metadata);
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
            serde_json::from_slice::<Sandbox>(&answer).map_err(|e| SandboxError::Other {
                op: "create",
                message: format!("{PROVIDER} answered with an unexpected body: {e}"),
            })
        },
    )
    .await
}

/// What create asks for: the template, for `lifetime`, with `metadata`.
fn new_sandbox(
    template: &str,
    lifetime: Duration,
    metadata: &BTreeMap<String, String>,
) -> NewSandbox {
    NewSandbox {
        template_id: Some(template.to_owned()),
        // Round up: a lifetime of 1.5 s must not become 1 s.
        timeout: Some(lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0)),
        metadata: metadata.clone(),
        env_vars: BTreeMap::new(),
        // envd then demands the access token create hands back to us.
        secure: true,
        // The agent must reach the model API.
        allow_internet_access: Some(true),
        auto_pause: false,
    }
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
    fn create_asks_for_a_secure_sandbox_with_internet_that_does_not_pause() {
        let metadata = BTreeMap::from([("request_id".to_owned(), "r1".to_owned())]);
        let body = new_sandbox("sandstorm", Duration::from_secs(300), &metadata);
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            serde_json::json!({
                "templateID": "sandstorm", "timeout": 300, "metadata": {"request_id": "r1"},
                "envVars": {}, "secure": true, "allow_internet_access": true, "autoPause": false
            })
        );
    }

    #[test]
    fn a_lifetime_with_a_fraction_of_a_second_rounds_up() {
        let body = new_sandbox("t", Duration::from_millis(1500), &BTreeMap::new());
        assert_eq!(body.timeout, Some(2));
    }
}
