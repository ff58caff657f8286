//! `POST /webhooks/e2b`: E2B's sandbox lifecycle events (issue 19), as
//! Python Sandstorm 0.9.2 received them, and one thing more: a detached
//! run whose sandbox was killed, or ran out its lifetime, while its record
//! still said `running` is marked `expired` in the run history.
//!
//! Why the last: a detached run's end is recorded by whoever reads it (its
//! first stream, `GET /runs/{id}/events`). On a serverless door the first
//! stream ends at the platform's deadline; when nobody reads the run after
//! that, or the sandbox dies under it, nothing else would ever tell the
//! history, and the run would stay `running` for good. E2B tells: its
//! webhook names the sandbox and hands back the metadata the run put on it,
//! which leads to the record (`history::expiry`).
//!
//! What arrives is checked before anything is read from it:
//! - the body is signed (`e2b-signature`, see [`signature`]) with the
//!   secret registered with E2B: `SANDSTORM_E2B_WEBHOOK_SECRET`, else
//!   0.9.2's `SANDSTORM_WEBHOOK_SECRET`, else (serverless doors) either
//!   name in the AWS secret. A missing or wrong signature is a 401 and
//!   changes nothing;
//! - with no secret anywhere the route answers 503, "not configured":
//!   0.9.2 accepted unsigned events with a warning, but these change the
//!   history, and a public URL that anyone can post to must not. An
//!   operator who wants 0.9.2's behaviour sets
//!   `SANDSTORM_E2B_WEBHOOK_INSECURE=1`;
//! - the body is E2B's `SandboxEvent` (`e2b_wire::events`; snake case, or
//!   the older camel case 0.9.2's `ds webhook test` sends): otherwise a 400
//!   that names the field.
//!
//! The route takes no bearer token: E2B cannot send one. The signature is
//! its credential. Every event is logged at info with its type, sandbox
//! and run, counted (`sandstorm.webhook.events`) and traced
//! (`webhook.e2b`).

use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use e2b_wire::events::{self, SandboxEvent};
use opentelemetry::KeyValue;
use tracing::Instrument as _;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::history::expiry::{self, SandboxRun};
use crate::run_id::RunId;
use crate::secret::Secret;
use crate::settings::{
    E2B_WEBHOOK_INSECURE_VARIABLE, E2B_WEBHOOK_SECRET_VARIABLE, LEGACY_WEBHOOK_SECRET_VARIABLE,
    Settings,
};

pub(crate) mod signature;

/// Where E2B delivers; `ds webhook register` appends it to a bare URL.
pub(crate) const PATH: &str = "/webhooks/e2b";

/// The largest event read. E2B's are a few hundred bytes, plus the
/// sandbox's metadata.
const MAX_BODY: usize = 1 << 20;

/// How long a kill waits for this process's queued history writes (a
/// run's end recorded a moment before its sandbox went) before it looks.
const SETTLE: Duration = Duration::from_secs(2);

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LifecycleError {
    /// No secret to check signatures with, and unsigned events are not
    /// accepted (503).
    #[error(
        "E2B lifecycle webhooks are not configured here: set {E2B_WEBHOOK_SECRET_VARIABLE} to \
         the secret registered with E2B (ds webhook register prints it), or \
         {E2B_WEBHOOK_INSECURE_VARIABLE}=1 to accept unsigned events"
    )]
    NotConfigured,
    /// The signature is missing or does not match (401).
    #[error("missing or invalid e2b-signature")]
    BadSignature,
    /// The body is not a lifecycle event (400).
    #[error("{message}")]
    Malformed {
        /// The field at fault, when there is one.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The body could not be read, or is too large.
    #[error(transparent)]
    Request(#[from] ApiError),
    /// The secret or the history could not be read (500, detail logged).
    #[error("{0}")]
    Internal(String),
}

impl LifecycleError {
    fn status(&self) -> StatusCode {
        match self {
            LifecycleError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            LifecycleError::BadSignature => StatusCode::UNAUTHORIZED,
            LifecycleError::Malformed { .. } => StatusCode::BAD_REQUEST,
            LifecycleError::Request(e) => e.status(),
            LifecycleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` of its error body.
    fn kind(&self) -> &'static str {
        match self {
            LifecycleError::NotConfigured => "not_configured",
            LifecycleError::BadSignature => "invalid_signature",
            LifecycleError::Malformed { .. } => "bad_request",
            LifecycleError::Request(e) => e.kind(),
            LifecycleError::Internal(_) => "internal_error",
        }
    }

    /// The outcome it is counted as.
    fn outcome(&self) -> &'static str {
        match self {
            LifecycleError::NotConfigured => "not_configured",
            LifecycleError::BadSignature => "bad_signature",
            LifecycleError::Malformed { .. } | LifecycleError::Request(_) => "malformed",
            LifecycleError::Internal(_) => "failed",
        }
    }
}

impl IntoResponse for LifecycleError {
    fn into_response(self) -> Response {
        let (status, kind) = (self.status(), self.kind());
        let (message, field) = match self {
            LifecycleError::Request(e) => return e.into_response(),
            LifecycleError::Internal(detail) => {
                tracing::error!(%detail, "an E2B lifecycle event could not be handled");
                ("internal error; see the server log".to_owned(), None)
            }
            LifecycleError::Malformed { field, message } => (message, field),
            other => (other.to_string(), None),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                kind,
                message,
                field,
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Says at start-up how the route will treat what arrives.
pub(crate) fn announce(settings: &Settings) {
    let lifecycle = &settings.lifecycle;
    match (&lifecycle.secret, lifecycle.secret_variable) {
        (Some(_), Some(variable)) if variable == LEGACY_WEBHOOK_SECRET_VARIABLE => tracing::info!(
            "E2B lifecycle webhooks: {PATH} checks e2b-signature with {variable} (Python \
             Sandstorm's name); set {E2B_WEBHOOK_SECRET_VARIABLE} to keep it apart from the \
             completion webhooks' secret"
        ),
        (Some(_), Some(variable)) => {
            tracing::info!("E2B lifecycle webhooks: {PATH} checks e2b-signature with {variable}");
        }
        (Some(_), None) => tracing::info!(
            "E2B lifecycle webhooks: {PATH} checks e2b-signature with the secret registered at start"
        ),
        (None, _) if lifecycle.insecure => tracing::warn!(
            "E2B lifecycle webhooks: {E2B_WEBHOOK_INSECURE_VARIABLE}=1 and no secret: {PATH} \
             accepts unsigned events, and anyone who can reach it can mark runs expired"
        ),
        // The AWS secret may hold it; it is read when an event comes.
        (None, _) if settings.key_source.is_some() => {}
        (None, _) => tracing::info!(
            "E2B lifecycle webhooks: {PATH} answers 503 until {E2B_WEBHOOK_SECRET_VARIABLE} is set"
        ),
    }
}

/// `POST /webhooks/e2b`.
pub(crate) async fn receive(State(state): State<AppState>, request: Request) -> Response {
    let span = tracing::info_span!(
        "webhook.e2b",
        event_type = tracing::field::Empty,
        sandbox_id = tracing::field::Empty
    );
    async move {
        match handle(&state, request).await {
            Ok(outcome) => {
                count(outcome.event_type.as_str(), outcome.what);
                axum::Json(serde_json::json!({"status": "ok"})).into_response()
            }
            Err(error) => {
                tracing::info!(status = %error.status(), %error, "E2B lifecycle event refused");
                count("", error.outcome());
                error.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

fn count(event_type: &str, outcome: &'static str) {
    crate::telemetry::metrics::metrics().webhook_events.add(
        1,
        &[
            KeyValue::new("sandstorm.webhook.event_type", event_type.to_owned()),
            KeyValue::new("sandstorm.webhook.outcome", outcome),
        ],
    );
}

/// What became of an event that was accepted.
struct Outcome {
    event_type: String,
    /// `expired` when a run was marked so, `accepted` otherwise.
    what: &'static str,
}

async fn handle(state: &AppState, request: Request) -> Result<Outcome, LifecycleError> {
    let settings = state.settings();
    let secret = secret(&settings).await?;
    let headers = request.headers().clone();
    let body = crate::app::read_body(request, MAX_BODY).await?;
    check(
        secret.as_ref(),
        settings.lifecycle.insecure,
        &headers,
        &body,
    )?;
    let event = parse(&body)?;
    let span = tracing::Span::current();
    span.record("event_type", event.kind.as_str());
    span.record("sandbox_id", event.sandbox_id.as_str());

    let metadata = event
        .event_data
        .as_ref()
        .and_then(|data| data.sandbox_metadata.clone())
        .unwrap_or_default();
    let request_id = metadata
        .get(crate::runs::REQUEST_KEY)
        .or_else(|| metadata.get("request_id"))
        .map_or("-", String::as_str);
    let kill_reason = event
        .event_data
        .as_ref()
        .and_then(|data| data.kill_reason.as_deref())
        .unwrap_or("-");
    let history = state.history();
    let sandbox_run = SandboxRun::of(&metadata);

    let mut what = "accepted";
    let run = match &sandbox_run {
        Some(run) if event.kind == events::KILLED => {
            // Started here, the run is in this process's registry, which
            // would go on handing out its dead sandbox.
            state.registry().remove(run.run_digest());
            // A run that ended a moment ago here has its end queued.
            history.settle(SETTLE).await;
            let ended = ended_at(&event.timestamp);
            match expiry::expired(history, run, ended).await {
                Ok(Some(record)) => {
                    what = "expired";
                    tracing::info!(
                        run = ?RunId::parse(&record.run_id).ok(),
                        sandbox = %event.sandbox_id,
                        %kill_reason,
                        "a run whose sandbox ended while it was running is now expired"
                    );
                    // Its completion webhook, as for any other ending: no
                    // reader saw this one, so it is told from the record.
                    // (The record does not know which turn was running; a
                    // run expires in its first unless kept for follow-ups.)
                    crate::notify::tell_from_record(&settings, &record, 1).await;
                    Some(record.run_id)
                }
                Ok(None) => expiry::run_id(history, run).await.ok().flatten(),
                Err(e) => {
                    // E2B retries a delivery that fails: so may the store.
                    return Err(LifecycleError::Internal(format!(
                        "marking the run of sandbox {} expired: {e}",
                        event.sandbox_id
                    )));
                }
            }
        }
        Some(run) => expiry::run_id(history, run).await.ok().flatten(),
        None => None,
    };
    tracing::info!(
        event_type = %event.kind,
        sandbox = %event.sandbox_id,
        run = ?run.as_deref().and_then(|id| RunId::parse(id).ok()),
        %request_id,
        %kill_reason,
        "E2B lifecycle event"
    );
    Ok(Outcome {
        event_type: event.kind,
        what,
    })
}

/// The secret events are signed with: the environment's, else the AWS
/// secret's (a serverless door's `key_source`), looked up by both names.
async fn secret(settings: &Settings) -> Result<Option<Secret>, LifecycleError> {
    if let Some(secret) = &settings.lifecycle.secret {
        return Ok(Some(secret.clone()));
    }
    let Some(source) = &settings.key_source else {
        return Ok(None);
    };
    for name in [E2B_WEBHOOK_SECRET_VARIABLE, LEGACY_WEBHOOK_SECRET_VARIABLE] {
        match source.get(name).await {
            Ok(Some(secret)) if !secret.is_empty() => return Ok(Some(secret)),
            Ok(_) => {}
            Err(e) => {
                return Err(LifecycleError::Internal(format!(
                    "reading {name} from the key source: {e}"
                )));
            }
        }
    }
    Ok(None)
}

/// Refuses what is not signed with `secret`; with no secret, refuses
/// everything unless unsigned events are allowed.
fn check(
    secret: Option<&Secret>,
    insecure: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), LifecycleError> {
    let Some(secret) = secret else {
        return if insecure {
            Ok(())
        } else {
            Err(LifecycleError::NotConfigured)
        };
    };
    let header = headers
        .get(events::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match signature::verify(secret, body, header) {
        Some(scheme) => {
            tracing::debug!(?scheme, "lifecycle event signature verified");
            Ok(())
        }
        None => Err(LifecycleError::BadSignature),
    }
}

/// The event, or a 400 naming what is wrong with it.
fn parse(body: &[u8]) -> Result<SandboxEvent, LifecycleError> {
    let not_an_event = |why: &str| LifecycleError::Malformed {
        field: None,
        message: format!("not an E2B lifecycle event: {why}"),
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| not_an_event(crate::json_field::strip_position(&e.to_string())))?;
    if !value.is_object() {
        return Err(not_an_event("expected a JSON object"));
    }
    // serde reads a struct from an array too, field by field; an event's
    // parts are objects.
    let data = value.get("event_data").or_else(|| value.get("eventData"));
    let execution = data.and_then(|data| data.get("execution"));
    for (field, part) in [("event_data", data), ("event_data.execution", execution)] {
        if part.is_some_and(|part| !part.is_object() && !part.is_null()) {
            return Err(LifecycleError::Malformed {
                field: Some(field.to_owned()),
                message: format!("not an E2B lifecycle event: {field} must be an object"),
            });
        }
    }
    let event: SandboxEvent = serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        LifecycleError::Malformed {
            field: crate::json_field::field_at_fault(e.path(), &message),
            message: format!(
                "not an E2B lifecycle event: {}",
                crate::json_field::strip_position(&message)
            ),
        }
    })?;
    for (field, value) in [("type", &event.kind), ("sandbox_id", &event.sandbox_id)] {
        if value.is_empty() {
            return Err(LifecycleError::Malformed {
                field: Some(field.to_owned()),
                message: format!("not an E2B lifecycle event: {field} must not be empty"),
            });
        }
    }
    Ok(event)
}

/// When the sandbox ended: the event's timestamp, unless it is missing,
/// unreadable or in the future (a clock ahead of ours); then now.
fn ended_at(timestamp: &str) -> SystemTime {
    let now = SystemTime::now();
    humantime::parse_rfc3339_weak(timestamp)
        .ok()
        .filter(|at| *at <= now)
        .unwrap_or(now)
}

#[cfg(test)]
mod tests;
