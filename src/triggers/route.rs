//! The HTTP side of triggers.
//!
//! - `POST <path>` of each webhook trigger: its secret (or GitHub's
//!   signature) checked over the raw body, then `202` with the run's id.
//!   It is served from the router's fallback, by the settings of the
//!   moment, so `ds serve --reload` mounts and unmounts paths too.
//! - `GET /triggers`: the triggers, for `ds triggers list --server`.
//! - `POST /triggers/fire/{name}`: an operator fires one by hand with the
//!   server's token (`ds triggers fire --server`), the body as `{{body}}`.

use std::time::SystemTime;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::fire::{self, Call};
use super::verify::{self, Refusal};
use super::{Source, Trigger};
use crate::app::AppState;
use crate::auth;
use crate::error::ApiError;

/// A webhook trigger's call, or `None` when no trigger has the request's
/// path (the router then answers 404 as for any unknown route).
pub(crate) async fn webhook(state: &AppState, request: Request) -> Option<Response> {
    let settings = state.settings();
    let trigger = settings.triggers.at_path(request.uri().path())?.clone();
    if request.method() != Method::POST {
        let body = json!({"error": {
            "type": "method_not_allowed",
            "message": format!("trigger {:?} takes POST only", trigger.definition.name),
        }});
        return Some(
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "POST")],
                Json(body),
            )
                .into_response(),
        );
    }
    let request_id = crate::app::request_id(request.headers());
    let platform_deadline =
        crate::app::platform_deadline(&request, settings.max_duration, Instant::now());
    let headers = request.headers().clone();
    let body = match crate::app::read_body(request, settings.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return Some(e.into_response()),
    };
    if let Some(secret) = &trigger.secret
        && let Err(refusal) = verify::check(secret, &headers, &body)
    {
        tracing::warn!(
            trigger = %trigger.definition.name,
            %request_id,
            why = ?refusal,
            "trigger call refused: its secret is missing or wrong"
        );
        return Some(unauthorized(&trigger, &refusal));
    }
    // GitHub pings a webhook when it is made: a check, not an event.
    if headers
        .get("x-github-event")
        .is_some_and(|event| event == "ping")
    {
        return Some(
            Json(json!({"status": "pong", "trigger": trigger.definition.name})).into_response(),
        );
    }
    let payload = match payload(&headers, &body) {
        Ok(payload) => payload,
        Err(e) => return Some(e.into_response()),
    };
    let call = Call {
        body: payload,
        headers,
        fired_at: SystemTime::now(),
        platform_deadline,
        request_id: request_id.clone(),
    };
    Some(accepted(state, &trigger, call, &request_id).await)
}

/// `GET /triggers`: every trigger, with what fires it and its limits.
pub(crate) async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let settings = state.settings();
    if let Err(e) = auth::check(&settings.auth, &headers, settings.key_source.as_deref()).await {
        return e.into_response();
    }
    let now = chrono::Utc::now();
    let triggers: Vec<Value> = settings
        .triggers
        .all()
        .iter()
        .map(|trigger| {
            describe(
                trigger,
                now,
                state.trigger_limits().going(&trigger.definition.name),
            )
        })
        .collect();
    Json(json!({ "triggers": triggers })).into_response()
}

/// `POST /triggers/fire/{name}`: fires a trigger by hand, as its webhook or
/// schedule would, with the server's token instead of the trigger's secret.
pub(crate) async fn fire_by_hand(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let settings = state.settings();
    let request_id = crate::app::request_id(request.headers());
    if let Err(e) = auth::check(
        &settings.auth,
        request.headers(),
        settings.key_source.as_deref(),
    )
    .await
    {
        return e.into_response();
    }
    let Some(trigger) = settings.triggers.named(&name).cloned() else {
        return ApiError::invalid(
            "name",
            format!(
                "no trigger is named {name:?}; sandstorm.json has: {}",
                names(&settings.triggers)
            ),
        )
        .into_response();
    };
    let platform_deadline =
        crate::app::platform_deadline(&request, settings.max_duration, Instant::now());
    let headers = request.headers().clone();
    let body = match crate::app::read_body(request, settings.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let payload = match payload(&headers, &body) {
        Ok(payload) => payload,
        Err(e) => return e.into_response(),
    };
    let call = Call {
        body: payload,
        headers,
        fired_at: SystemTime::now(),
        platform_deadline,
        request_id: request_id.clone(),
    };
    accepted(&state, &trigger, call, &request_id).await
}

/// Fires and answers `202 {"status":"accepted","trigger","run_id"}` (Python
/// Sandstorm 0.9.2's answer, with the run's id), or why not.
async fn accepted(state: &AppState, trigger: &Trigger, call: Call, request_id: &str) -> Response {
    // Answered once the runner has started, not before: a serverless
    // invocation is frozen when it answers, and with it a sandbox still
    // being made or uploaded to.
    let within = call.platform_deadline.map_or(START_LIMIT, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .min(START_LIMIT)
    });
    let mut response = match fire::fire_until_started(state, trigger, call, within).await {
        Ok(fired) => {
            let mut response = (
                StatusCode::ACCEPTED,
                Json(json!({
                    "status": "accepted",
                    "trigger": trigger.definition.name,
                    "run_id": fired.run_id,
                    "request_id": request_id,
                })),
            )
                .into_response();
            if let Ok(value) = header::HeaderValue::from_str(&fired.run_id) {
                response.headers_mut().insert("x-run-id", value);
            }
            response
        }
        Err(error) => {
            tracing::info!(
                trigger = %trigger.definition.name,
                %request_id,
                status = %error.status(),
                %error,
                "trigger refused"
            );
            error.into_response()
        }
    };
    if let Ok(value) = header::HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The longest a webhook's call waits for its run to start.
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The call's payload: JSON, or GitHub's form encoding
/// (`payload=<json>`); an empty body is no payload.
fn payload(headers: &HeaderMap, body: &[u8]) -> Result<Option<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let json = if form {
        form_urlencoded::parse(body)
            .find(|(key, _)| key == "payload")
            .map(|(_, value)| value.into_owned().into_bytes())
            .ok_or_else(|| {
                ApiError::invalid(
                    "payload",
                    "a form-encoded call must carry its JSON in the `payload` field",
                )
            })?
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&json).map(Some).map_err(|e| {
        ApiError::invalid(
            "body",
            format!(
                "the body is not JSON ({}); a trigger's template reads it as {{{{body.*}}}}",
                crate::json_field::strip_position(&e.to_string())
            ),
        )
    })
}

fn unauthorized(trigger: &Trigger, refusal: &Refusal) -> Response {
    let why = match refusal {
        Refusal::Missing => "no secret was sent",
        Refusal::Wrong => "the secret or signature does not match",
    };
    let body = json!({"error": {
        "type": "unauthorized",
        "message": format!(
            "trigger {:?}: {why}; send X-Sandstorm-Trigger-Secret, or GitHub's \
             X-Hub-Signature-256",
            trigger.definition.name
        ),
    }});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// What `GET /triggers` says of one trigger.
fn describe(trigger: &Trigger, now: chrono::DateTime<chrono::Utc>, going: u32) -> Value {
    let definition = &trigger.definition;
    let mut shown = json!({
        "name": definition.name,
        "type": definition.source.kind(),
        "rate_limit": definition.rate_per_minute,
        "max_concurrent": definition.max_concurrent,
        "going": going,
    });
    match &definition.source {
        Source::Webhook { path, public, .. } => {
            shown["path"] = json!(path);
            shown["public"] = json!(public);
        }
        Source::Cron {
            schedule,
            overlap,
            jitter,
        } => {
            shown["schedule"] = json!(schedule.expression());
            shown["timezone"] = json!(schedule.zone().name());
            shown["overlap"] = json!(overlap);
            shown["jitter"] = json!(jitter.as_secs());
            shown["next_fire_at"] = json!(
                schedule
                    .next_after(now)
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            );
        }
    }
    shown
}

pub(super) fn names(triggers: &super::Triggers) -> String {
    let names: Vec<&str> = triggers
        .all()
        .iter()
        .map(|t| t.definition.name.as_str())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
