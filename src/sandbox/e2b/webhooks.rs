//! E2B's lifecycle webhook registrations (`/events/webhooks` on the API,
//! `X-API-Key` as every control-plane call): what `ds webhook` and
//! `ds serve`'s registration of `e2b_webhook_url` use. The bodies are
//! `e2b_wire::events`', which the emulator serves too.
//!
//! Calls are made once: a registration retried after a lost answer could
//! register twice, and these are commands a person or a start-up makes,
//! which say what failed rather than wait.

use std::time::Duration;

use e2b_wire::events::{NewWebhook, Webhook};
use reqwest::Method;

use super::http;
use super::options::E2bOptions;
use crate::sandbox::SandboxError;
use crate::secret::Secret;

/// The path under the API's base URL.
const PATH: &str = "/events/webhooks";

/// How long one call may take.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// A client of the registration API, for one E2B key.
#[derive(Debug, Clone)]
pub struct WebhooksApi {
    http: reqwest::Client,
    api_url: String,
    api_key: Secret,
}

impl WebhooksApi {
    /// A client of the API `options` point at, with its key.
    ///
    /// # Errors
    /// When `options` has no key, or no HTTP client can be built.
    pub fn new(options: &E2bOptions) -> Result<Self, SandboxError> {
        let api_key = options
            .api_key
            .clone()
            .filter(|key| !key.is_empty())
            .ok_or_else(|| SandboxError::Other {
                op: "manage E2B webhooks",
                message: "no E2B API key: set E2B_API_KEY or pass --e2b-api-key".into(),
            })?;
        Ok(WebhooksApi {
            http: http::client(options, http::tls_config()?)?,
            api_url: options.api_url.clone(),
            api_key,
        })
    }

    /// The API's URL of the webhooks (for messages).
    pub fn url(&self) -> String {
        format!("{}{PATH}", self.api_url)
    }

    /// Registers a webhook; E2B's answer, without the secret.
    ///
    /// # Errors
    /// When E2B refuses it (the message is E2B's, with no secret in it) or
    /// cannot be reached.
    pub async fn register(&self, new: &NewWebhook) -> Result<Webhook, SandboxError> {
        let secret = Secret::new(new.signature_secret.expose());
        let body = self
            .call(
                Method::POST,
                PATH.to_owned(),
                Some(serde_json::to_vec(new).unwrap_or_default()),
                "register a webhook",
                &[&secret],
            )
            .await?;
        parse(&body, "register a webhook")
    }

    /// Every webhook of the key's team.
    ///
    /// # Errors
    /// When E2B refuses or cannot be reached.
    pub async fn list(&self) -> Result<Vec<Webhook>, SandboxError> {
        let body = self
            .call(Method::GET, PATH.to_owned(), None, "list webhooks", &[])
            .await?;
        // E2B answers an empty body, `null` or `[]` when there are none.
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let listed: Option<Vec<Webhook>> = parse(&body, "list webhooks")?;
        Ok(listed.unwrap_or_default())
    }

    /// Deletes the webhook `id`.
    ///
    /// # Errors
    /// When E2B refuses (404 for an unknown id) or cannot be reached.
    pub async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        // The id goes into the path: one segment, encoded.
        let segment: String =
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).collect();
        self.call(
            Method::DELETE,
            format!("{PATH}/{segment}"),
            None,
            "delete a webhook",
            &[],
        )
        .await
        .map(drop)
    }

    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        op: &'static str,
        secrets: &[&Secret],
    ) -> Result<bytes::Bytes, SandboxError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .header("X-API-Key", self.api_key.expose());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let answer = http::call(request, op, CALL_LIMIT).await?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        let mut hidden = vec![&self.api_key];
        hidden.extend_from_slice(secrets);
        Err(http::status_error(
            op,
            answer.status,
            &answer.body,
            true,
            &hidden,
        ))
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], op: &'static str) -> Result<T, SandboxError> {
    serde_json::from_slice(body).map_err(|e| SandboxError::Other {
        op,
        message: format!("E2B's answer is not what its API documents: {e}"),
    })
}
