//! Runs that outlive their request: `POST /query {"detach": true}` and
//! `GET /runs/{id}/events`.
//!
//! A detached run's state lives in its sandbox, not here: the event log
//! ([`log`]) and the sandbox's metadata (the run id's digest, its owner's,
//! its request id and when it expires). Any instance can therefore read any
//! run: it finds the sandbox by a metadata query, connects to it and
//! follows the log from its start. The one thing kept in the process is the
//! [`registry`] of runs started here, which is what serves providers that
//! cannot be reached from elsewhere (local sandboxes).

use axum::http::HeaderMap;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::events::{Redactor, RunStarted};
use crate::keys;
use crate::outputs::{OutputLimits, OutputPlan};
use crate::plan::DETACH_MARGIN;
use crate::request::RequestKeys;
use crate::run::detached::Follow;
use crate::run_id::{self, RunId};
use crate::sandbox::{Sandbox, SandboxError, SandboxSpec, layout};
use crate::secret::Secret;
use crate::settings::Settings;

pub(crate) mod log;
pub(crate) mod registry;

use registry::Registry;

/// The metadata key of the run's expiry (RFC 3339).
pub(crate) const EXPIRES_KEY: &str = "sandstorm_expires_at";
/// The metadata key of the request id that started the run.
pub(crate) const REQUEST_KEY: &str = "sandstorm_request_id";

/// Who owns runs started without a credential of the caller's own: every
/// holder of the endpoint's bearer token (or anyone, on an open endpoint)
/// is the same principal, so a token rotation leaves their runs theirs.
const ENDPOINT_OWNER: &str = "sandstorm-endpoint";

/// Who a request acts as: the sandbox credential it brought itself (runs
/// made with a tenant's own E2B key are that tenant's alone), else the
/// endpoint.
pub(crate) fn owner(brought: Option<&Secret>) -> Secret {
    brought.map_or_else(|| Secret::new(ENDPOINT_OWNER), Clone::clone)
}

/// The sandbox credential a request brought: in the body for `/query`, in
/// a header named after the body field (`x-e2b-api-key`) for `/runs`.
pub(crate) fn brought_credential(settings: &Settings, keys: &RequestKeys) -> Option<Secret> {
    let field = settings.sandbox.provider.credential?.field;
    keys.sandbox(field).cloned()
}

fn credential_header(settings: &Settings, headers: &HeaderMap) -> Option<Secret> {
    let field = settings.sandbox.provider.credential?.field;
    let name = format!("x-{}", field.replace('_', "-"));
    headers
        .get(name.as_str())
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

/// Where a reader starts: after `Last-Event-ID` (the header a browser's
/// `EventSource` resends) or `?after=N`.
pub(crate) fn after(headers: &HeaderMap, query: Option<&str>) -> Result<u64, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let refused = || ApiError::BadRequest {
            message: format!(
                "Last-Event-ID must be an event id (a whole number), got {:?}",
                String::from_utf8_lossy(value.as_bytes())
            ),
        };
        let text = value.to_str().map_err(|_| refused())?.trim();
        // An empty one counts as not sent, as EventSource's first request.
        if !text.is_empty() {
            return text.parse().map_err(|_| refused());
        }
    }
    let Some(query) = query else { return Ok(0) };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "after" {
            return value.parse().map_err(|_| {
                ApiError::invalid(
                    "after",
                    format!("after must be an event id (a whole number), got {value:?}"),
                )
            });
        }
    }
    Ok(0)
}

/// A run found again, ready to be read.
pub(crate) struct Found {
    pub sandbox: std::sync::Arc<dyn Sandbox>,
    pub follow: Follow,
}

/// Finds the run `id` for a caller: in this process's registry, else
/// through the provider. A malformed id, an unknown one, a foreign one and
/// one whose sandbox is gone are all [`ApiError::NoSuchRun`].
pub(crate) async fn find(
    settings: &Settings,
    provider: &dyn crate::sandbox::SandboxProvider,
    registry: &Registry,
    id: &str,
    headers: &HeaderMap,
    stream_deadline: Option<Instant>,
) -> Result<Found, ApiError> {
    let run = RunId::parse(id).map_err(|_| ApiError::NoSuchRun)?;
    let brought = credential_header(settings, headers);
    let owner = owner(brought.as_ref());
    let deadline =
        stream_deadline.map(|d| d.checked_sub(DETACH_MARGIN).unwrap_or_else(Instant::now));
    let digest = run.digest();

    if let Some(registered) = registry.get(&digest) {
        let expected = run_id::metadata(&run, &owner);
        let owned = expected
            .get(run_id::OWNER_KEY)
            .is_some_and(|digest| bool::from(digest.as_bytes().ct_eq(registered.owner.as_bytes())));
        if !owned {
            return Err(ApiError::NoSuchRun);
        }
        let mut follow = registered.follow;
        follow.deadline = deadline.unwrap_or(registered.expires);
        return Ok(Found {
            sandbox: registered.sandbox,
            follow,
        });
    }

    let credential = keys::sandbox_credential(
        brought.as_ref(),
        &settings.keys,
        settings.key_source.as_deref(),
        settings.sandbox.provider.credential,
    )
    .await?;
    let summary = match run_id::find(provider, &run, &owner, credential.clone()).await {
        Ok(Some(summary)) => summary,
        Ok(None) => return Err(ApiError::NoSuchRun),
        Err(e) => match e.cause() {
            SandboxError::Unsupported { .. } => return Err(ApiError::NoSuchRun),
            // A key of the caller's own that the provider refuses is not
            // this server's fault, and the answer must say no more than
            // for a run that is not theirs.
            SandboxError::Unauthorized { .. } if brought.is_some() => {
                return Err(ApiError::NoSuchRun);
            }
            _ => return Err(provider_error(&e)),
        },
    };
    let expires_at = summary
        .metadata
        .get(EXPIRES_KEY)
        .cloned()
        .unwrap_or_default();
    let left = humantime::parse_rfc3339(&expires_at)
        .ok()
        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
        .unwrap_or_default();
    let expires = Instant::now() + left;
    // Connecting never shortens a sandbox's life on E2B; asking for what
    // is left keeps it from being lengthened either.
    let spec = SandboxSpec {
        credential,
        lifetime: left,
        ..SandboxSpec::default()
    };
    let sandbox = provider
        .connect(&summary.id, spec)
        .await
        .map_err(|e| provider_error(&e))?;
    let outputs = outputs_of(sandbox.as_ref()).await;
    let follow = Follow {
        run: RunStarted {
            run_id: run.to_string(),
            expires_at,
        },
        request_id: summary
            .metadata
            .get(REQUEST_KEY)
            .cloned()
            .unwrap_or_default(),
        redactor: Redactor::new(
            settings
                .keys
                .values()
                .chain(brought.as_ref().map(Secret::expose)),
        ),
        outputs,
        deadline: deadline.unwrap_or(expires),
        digest,
        linger: settings.run_linger,
    };
    Ok(Found { sandbox, follow })
}

fn provider_error(e: &SandboxError) -> ApiError {
    ApiError::Provider {
        message: format!("could not reach the run's sandbox: {e}"),
    }
}

/// The output files a run asked for, from the config its runner read: the
/// relay holds a reader to the same patterns and limits as the first.
async fn outputs_of(sandbox: &dyn Sandbox) -> Option<OutputPlan> {
    #[derive(Deserialize)]
    struct Config {
        outputs: Option<Outputs>,
    }
    #[derive(Deserialize)]
    struct Outputs {
        patterns: Vec<String>,
        #[serde(flatten)]
        limits: OutputLimits,
    }
    let bytes = sandbox.read_file(layout::AGENT_CONFIG).await.ok()?;
    let config: Config = serde_json::from_slice(&bytes).ok()?;
    config.outputs.map(|o| OutputPlan {
        patterns: o.patterns,
        limits: o.limits,
    })
}
