//! The control plane: create and kill sandboxes (`spec/openapi.yml` in
//! e2b-dev/E2B).

use std::collections::BTreeMap;
use std::time::Duration;

use e2b_wire::control::{ConnectSandbox, ListedSandbox, NewSandbox, Sandbox};
use reqwest::StatusCode;
use tracing::Instrument as _;

use super::http::{self, PROVIDER};
use super::options::E2bOptions;
use super::retry::{Failure, with_retries};
use crate::sandbox::SandboxError;
use crate::secret::Secret;

/// The oldest envd the SDKs (and so we) still talk to; E2B's SDKs refuse
/// anything older with "You need to update the template".
const MIN_ENVD_VERSION: (u64, u64, u64) = (0, 1, 0);

/// The id the SDKs give the one sandbox of a local E2B stack
/// (`E2B_DEBUG=true`), which is never created nor killed.
pub(crate) const DEBUG_SANDBOX_ID: &str = "debug_sandbox_id";

/// `POST /v2/sandboxes`, retried as [`with_retries`] says: when E2B turns it
/// away for now (429, 502, 503, 504 or `Should-Retry: true`), when the
/// connection drops, and when it hangs.
///
/// Every attempt of one create carries the same `Idempotency-Key`, so a
/// retry after a lost answer gets the sandbox the first attempt made
/// instead of a second one. The lifetime asked for is clamped to
/// `options.max_timeout` (the plan's limit; E2B refuses more with a 400);
/// the caller extends it with [`set_timeout`] while the run lasts.
pub(crate) async fn create(
    client: &reqwest::Client,
    options: &E2bOptions,
    api_key: &Secret,
    lifetime: Duration,
    metadata: &BTreeMap<String, String>,
    pause_at_end: bool,
) -> Result<Sandbox, SandboxError> {
    let lifetime = lifetime.min(options.max_timeout);
    let mut body = new_sandbox(&options.template, lifetime, metadata);
    // As the SDKs' `lifecycle: {on_timeout: "pause"}` asks for it.
    if pause_at_end {
        body.auto_pause = Some(true);
    }
    let (url, body) = (&format!("{}/v2/sandboxes", options.api_url), &body);
    // Lowercase letters, digits and hyphens: the SDKs' rule for the key.
    let key = &uuid::Uuid::new_v4().to_string();
    let created = with_retries(&options.retry, "create", || async move {
        let request = client
            .post(url)
            .header("X-API-KEY", api_key.expose())
            .header("Idempotency-Key", key.as_str())
            .json(body);
        let answer = send(request, "create", options, api_key).await?;
        sandbox_answer("create", &answer)
    })
    .await?;
    if let Some(version) = too_old(&created.envd_version) {
        // Like the SDKs: the sandbox exists and costs money, so kill it
        // before refusing it. A failed kill is logged by `kill`; the
        // lifetime reclaims the sandbox in the end.
        let _ = kill(client, options, api_key, &created.sandbox_id).await;
        return Err(SandboxError::Other {
            op: "create",
            message: format!(
                "template {} runs envd {version}, older than the minimum {}.{}.{}; rebuild the template",
                options.template, MIN_ENVD_VERSION.0, MIN_ENVD_VERSION.1, MIN_ENVD_VERSION.2
            ),
        });
    }
    Ok(created)
}

/// A sandbox id from outside (a caller's, or a list's) before it goes into
/// a URL path: E2B's ids are letters and digits, so anything else, such as
/// a `/` or a `?`, is refused rather than sent somewhere unintended.
fn checked_id<'a>(id: &'a str, op: &'static str) -> Result<&'a str, SandboxError> {
    let valid = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(id)
    } else {
        Err(SandboxError::Other {
            op,
            message: "a sandbox id is 1 to 128 letters, digits, '-' or '_'".to_owned(),
        })
    }
}

/// `Some(version)` when envd `version` is older than [`MIN_ENVD_VERSION`].
/// An unreadable version is let through, as `needs_explicit_user` does.
fn too_old(version: &str) -> Option<&str> {
    let mut parts = version.trim_start_matches('v').split('.').map(|p| {
        p.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or("")
            .parse::<u64>()
    });
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch)))
            if (major, minor, patch) < MIN_ENVD_VERSION =>
        {
            Some(version)
        }
        _ => None,
    }
}

/// `POST /sandboxes/{id}/timeout {"timeout": N}`: the sandbox now ends
/// `lifetime` from now (clamped to the plan's limit). Retried like kill:
/// setting the same deadline twice is harmless.
pub(crate) async fn set_timeout(
    client: &reqwest::Client,
    options: &E2bOptions,
    api_key: &Secret,
    sandbox_id: &str,
    lifetime: Duration,
) -> Result<(), SandboxError> {
    let lifetime = lifetime.min(options.max_timeout);
    let url = &format!("{}/sandboxes/{sandbox_id}/timeout", options.api_url);
    let body = &serde_json::json!({ "timeout": whole_seconds(lifetime) });
    with_retries(&options.retry, "set_timeout", || async move {
        let request = client
            .post(url)
            .header("X-API-KEY", api_key.expose())
            .json(body);
        send(request, "set_timeout", options, api_key)
            .await
            .map(drop)
    })
    .await
}

/// One attempt of a control-plane call: its body on success, else the
/// error its status means, with `api_key` blotted out of the message, and
/// whether the answer invites another attempt.
async fn send(
    request: reqwest::RequestBuilder,
    op: &'static str,
    options: &E2bOptions,
    api_key: &Secret,
) -> Result<bytes::Bytes, Failure> {
    let answer = http::call(request, op, options.request_timeout).await?;
    if answer.status.is_success() {
        Ok(answer.body)
    } else {
        Err(failed(op, &answer, api_key))
    }
}

/// The sandbox create and connect answer with; a body that is not one is
/// final (another attempt would get the same).
fn sandbox_answer(op: &'static str, body: &[u8]) -> Result<Sandbox, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::last(SandboxError::Other {
            op,
            message: format!("{PROVIDER} answered with an unexpected body: {e}"),
        })
    })
}

fn failed(op: &'static str, answer: &http::Answer, api_key: &Secret) -> Failure {
    let error = http::status_error(op, answer.status, &answer.body, true, &[api_key]);
    Failure::answer(error, answer.status, &answer.headers)
}

/// Round up: a lifetime of 1.5 s must not become 1 s.
fn whole_seconds(lifetime: Duration) -> u64 {
    lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0)
}

/// What create asks for: the template, for `lifetime`, with `metadata`,
/// and nothing the SDKs leave out: v2 sandboxes are always secure (envd
/// demands the access token create hands back), internet access is allowed
/// unless refused (the agent must reach the model API), and a sandbox is
/// killed, not paused, at its timeout, unless asked otherwise.
/// `tests/e2b_parity.rs` compares this body with the SDKs'.
fn new_sandbox(
    template: &str,
    lifetime: Duration,
    metadata: &BTreeMap<String, String>,
) -> NewSandbox {
    NewSandbox {
        template_id: Some(template.to_owned()),
        timeout: Some(whole_seconds(lifetime)),
        metadata: metadata.clone(),
        env_vars: BTreeMap::new(),
        secure: None,
        allow_internet_access: None,
        auto_pause: None,
    }
}

/// `POST /v2/sandboxes/{id}/connect {"timeout": N}`, as the SDKs'
/// `Sandbox.connect`: the sandbox again, with a fresh envd access token,
/// resumed if it was paused, and living at least `lifetime` from now
/// (clamped to the plan's limit). Retried as create is: connecting twice
/// is harmless. A sandbox that is gone is E2B's 404.
pub(crate) async fn connect(
    client: &reqwest::Client,
    options: &E2bOptions,
    api_key: &Secret,
    sandbox_id: &str,
    lifetime: Duration,
) -> Result<Sandbox, SandboxError> {
    let sandbox_id = checked_id(sandbox_id, "connect")?;
    let lifetime = lifetime.min(options.max_timeout);
    let url = &format!("{}/v2/sandboxes/{sandbox_id}/connect", options.api_url);
    let body = &ConnectSandbox {
        timeout: Some(whole_seconds(lifetime)),
    };
    with_retries(&options.retry, "connect", || async move {
        let request = client
            .post(url)
            .header("X-API-KEY", api_key.expose())
            .json(body);
        let answer = send(request, "connect", options, api_key).await?;
        sandbox_answer("connect", &answer)
    })
    .await
}

/// `POST /sandboxes/{id}/pause`: `true` once paused, `false` when it
/// already was (E2B's 409, which the SDKs report the same way).
pub(crate) async fn pause(
    client: &reqwest::Client,
    options: &E2bOptions,
    api_key: &Secret,
    sandbox_id: &str,
) -> Result<bool, SandboxError> {
    let url = &format!("{}/sandboxes/{sandbox_id}/pause", options.api_url);
    with_retries(&options.retry, "pause", || async move {
        let request = client
            .post(url)
            .header("X-API-KEY", api_key.expose())
            .json(&serde_json::json!({}));
        let answer = http::call(request, "pause", options.request_timeout).await?;
        match answer.status {
            status if status.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(failed("pause", &answer, api_key)),
        }
    })
    .await
}

/// The most pages of a list followed: a server handing out page tokens
/// forever must not keep us listing forever.
const LIST_PAGES: usize = 100;

/// `GET /v2/sandboxes`: every running or paused sandbox whose metadata
/// holds all of `metadata`, page after page (`nextToken`), as the SDKs'
/// `Sandbox.list` with a metadata query: no `state` (E2B then lists both)
/// and no `limit` (E2B's page size).
pub(crate) async fn list(
    client: &reqwest::Client,
    options: &E2bOptions,
    api_key: &Secret,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<ListedSandbox>, SandboxError> {
    // The filter is a query string inside the query, encoded once here and
    // once more as a query value, as the SDKs send it.
    let filter: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(metadata)
        .finish();
    let url = &format!("{}/v2/sandboxes", options.api_url);
    let mut listed = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..LIST_PAGES {
        let (filter, next_token) = (&filter, &next);
        let answer = with_retries(&options.retry, "list", || async move {
            let mut query = Vec::new();
            if !filter.is_empty() {
                query.push(("metadata", filter.as_str()));
            }
            if let Some(token) = next_token {
                query.push(("nextToken", token.as_str()));
            }
            let request = client
                .get(url)
                .header("X-API-KEY", api_key.expose())
                .query(&query);
            let answer = http::call(request, "list", options.request_timeout).await?;
            if answer.status.is_success() {
                Ok(answer)
            } else {
                Err(failed("list", &answer, api_key))
            }
        })
        .await?;
        let page: Vec<ListedSandbox> =
            serde_json::from_slice(&answer.body).map_err(|e| SandboxError::Other {
                op: "list",
                message: format!("{PROVIDER} answered with an unexpected body: {e}"),
            })?;
        listed.extend(page);
        next = answer
            .headers
            .get("x-next-token")
            .and_then(|v| v.to_str().ok())
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        if next.is_none() {
            return Ok(listed);
        }
    }
    Err(SandboxError::Other {
        op: "list",
        message: format!("{PROVIDER} had more than {LIST_PAGES} pages of sandboxes to list"),
    })
}

/// `DELETE /sandboxes/{id}`. 404 means already gone, which is what we
/// wanted. Retried as create is, since a sandbox left running costs money
/// until its lifetime runs out; a failure that no retry can mend (a 500, a
/// refused key) is reported at once, and the lifetime reclaims the sandbox.
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
    with_retries(&options.retry, "destroy", || async move {
        let request = client.delete(url).header("X-API-KEY", api_key.expose());
        let answer = http::call(request, "destroy", options.request_timeout).await?;
        if answer.status.is_success() || answer.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(failed("destroy", &answer, api_key))
        }
    })
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_sends_only_what_the_sdks_send_on_v2() {
        let metadata = BTreeMap::from([("request_id".to_owned(), "r1".to_owned())]);
        let body = new_sandbox("sandstorm", Duration::from_secs(300), &metadata);
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            serde_json::json!({
                "templateID": "sandstorm", "timeout": 300, "metadata": {"request_id": "r1"},
                "envVars": {}
            })
        );
    }

    #[test]
    fn a_lifetime_with_a_fraction_of_a_second_rounds_up() {
        let body = new_sandbox("t", Duration::from_millis(1500), &BTreeMap::new());
        assert_eq!(body.timeout, Some(2));
    }

    #[test]
    fn only_plain_sandbox_ids_reach_a_url() {
        assert!(checked_id("i1a2b3c4d5e6f7g8h9j0", "connect").is_ok());
        assert!(checked_id(DEBUG_SANDBOX_ID, "connect").is_ok());
        for bad in ["", "../sandboxes", "a/b", "a?b=1", "a b", "ä"] {
            let err = checked_id(bad, "connect").expect_err(bad);
            assert!(err.to_string().contains("sandbox id"), "{err}");
        }
    }

    #[test]
    fn envd_older_than_0_1_0_is_too_old() {
        assert_eq!(too_old("0.0.9"), Some("0.0.9"));
        assert_eq!(too_old("v0.0.1"), Some("v0.0.1"));
        assert_eq!(too_old("0.1.0"), None);
        assert_eq!(too_old("0.5.7"), None);
        assert_eq!(too_old("1.0.0-rc1"), None);
        assert_eq!(too_old(""), None);
    }
}
