//! `GET /triggers/cron/{name}`: a cron trigger fired by a scheduler outside
//! the server, as Vercel Cron calls it.
//!
//! Vercel calls the path of each `crons` entry of `vercel.json` (`ds
//! schedules --vercel` writes them) with `Authorization: Bearer
//! <CRON_SECRET>`, in UTC, on a schedule that may call more often than
//! the trigger fires ([`super::vercel_cron`]). So the route:
//!
//! 1. refuses every call while `CRON_SECRET` is not set (503), and a call
//!    without its bearer (401), before it says anything of the triggers;
//! 2. works out the time the call stands for, and fires only when the
//!    trigger's own schedule is due then, in its own zone: `200
//!    {"status":"not_due"}` otherwise;
//! 3. skips the fire while the trigger's last run still goes, unless it
//!    may overlap (`200 {"status":"skipped"}`), as `ds serve` does;
//! 4. fires, and answers `202` with the run's id once the run's agent has
//!    started: Vercel may freeze the function as soon as it answers.
//!
//! Any scheduler that can send a bearer token (a Kubernetes CronJob, a CI
//! schedule) can call it too, on any door.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::fire::{self, Call};
use super::scheduler::Clock;
use super::{Source, vercel_cron};
use crate::app::AppState;
use crate::auth;
use crate::error::ApiError;

/// The longest the route waits for a fired run's agent to start.
const START_WAIT: Duration = Duration::from_secs(120);

/// `GET /triggers/cron/{name}`.
pub(crate) async fn fire(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let request_id = crate::app::request_id(request.headers());
    let mut response = answer(&state, &name, request, &request_id).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn answer(state: &AppState, name: &str, request: Request, request_id: &str) -> Response {
    let settings = state.settings();
    let Some(secret) = &settings.cron_secret else {
        tracing::warn!(trigger = %name, %request_id, "cron call refused: CRON_SECRET is not set");
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "config_error",
            "this server has no CRON_SECRET set, so it takes no cron calls; set CRON_SECRET \
             (at least 16 characters) where it runs, and in Vercel's project settings",
        );
    };
    let presented = auth::bearer(request.headers());
    if !presented.is_some_and(|token| auth::matches(secret, token)) {
        tracing::warn!(
            trigger = %name,
            %request_id,
            sent = presented.is_some(),
            "cron call refused: its bearer is missing or is not CRON_SECRET"
        );
        let mut response = refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a cron call needs Authorization: Bearer <CRON_SECRET>",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let Some(trigger) = settings.triggers.named(name).cloned() else {
        return ApiError::invalid(
            "name",
            format!(
                "no trigger is named {name:?}; sandstorm.json has: {}",
                super::route::names(&settings.triggers)
            ),
        )
        .into_response();
    };
    let Source::Cron {
        schedule, overlap, ..
    } = &trigger.definition.source
    else {
        return ApiError::invalid(
            "name",
            format!(
                "trigger {name:?} is a webhook trigger: it fires at its path, not on a schedule"
            ),
        )
        .into_response();
    };
    let clock = settings
        .test_clock_start
        .map_or_else(Clock::system, Clock::starting_at);
    let now = clock.now();
    let Some(due) = vercel_cron::called_for(schedule, now).filter(|at| schedule.is_due(*at)) else {
        tracing::info!(trigger = %name, %request_id, at = %now.to_rfc3339(), "cron call: not due");
        return Json(json!({
            "status": "not_due",
            "trigger": name,
            "next_fire_at": schedule
                .next_after(now)
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }))
        .into_response();
    };
    let fired_at = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if !overlap && state.trigger_limits().going(name) > 0 {
        tracing::warn!(trigger = %name, due = %fired_at, "cron call skipped: the trigger's previous run still goes");
        return Json(json!({
            "status": "skipped",
            "trigger": name,
            "fired_at": fired_at,
            "reason": "its previous run still goes, and it does not overlap",
        }))
        .into_response();
    }
    let platform_deadline =
        crate::app::platform_deadline(&request, settings.max_duration, tokio::time::Instant::now());
    let call = Call {
        body: None,
        headers: request.headers().clone(),
        fired_at: due.into(),
        platform_deadline,
        request_id: request_id.to_owned(),
    };
    match fire::fire_until_started(state, &trigger, call, START_WAIT).await {
        Ok(fired) => {
            let mut response = (
                StatusCode::ACCEPTED,
                Json(json!({
                    "status": "accepted",
                    "trigger": name,
                    "run_id": fired.run_id,
                    "fired_at": fired_at,
                    "request_id": request_id,
                })),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&fired.run_id) {
                response.headers_mut().insert("x-run-id", value);
            }
            response
        }
        Err(error) => {
            tracing::warn!(trigger = %name, %request_id, status = %error.status(), %error, "cron fire refused");
            error.into_response()
        }
    }
}

fn refusal(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use axum::body::Body;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::env::EnvVars;
    use crate::sandbox::provider::Setup;
    use crate::sandbox::scripted::{Counters, Scripted, Then};
    use crate::settings::{Profile, SandboxChoice, Settings};

    const SECRET: &str = "cron-secret-for-tests-0123";

    /// A router whose sandstorm.json has a cron trigger at 09:00 on
    /// weekdays in Prague and a webhook trigger, on a clock set to `now`.
    fn router(cron_secret: Option<&str>, now: &str) -> (axum::Router, Arc<Counters>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("sandstorm.json"),
            json!({"triggers": [
                {"name": "digest", "type": "cron", "schedule": "0 9 * * MON-FRI",
                 "timezone": "Europe/Prague", "prompt": "Write the digest"},
                {"name": "hook", "type": "webhook", "path": "/hook", "public": true,
                 "prompt": "p"}
            ]})
            .to_string(),
        )
        .expect("write sandstorm.json");
        let mut env = vec![
            ("ANTHROPIC_API_KEY", "sk-ant-test-key-123"),
            ("SANDSTORM_TEST_CLOCK_START", now),
        ];
        env.extend(cron_secret.map(|s| ("CRON_SECRET", s)));
        let settings = Settings::build(
            &EnvVars::from_pairs(env),
            dir.path(),
            Profile::Server,
            SandboxChoice {
                catalog: crate::doors::PROVIDERS,
                requested: None,
                setup: Setup::CheckOnly,
                executable: None,
            },
        )
        .expect("settings");
        let provider = Arc::new(Scripted::new(Vec::new(), Then::Exit(0)));
        let counters = provider.counters();
        let router = crate::app::app(AppState::new(settings, provider));
        (router, counters)
    }

    async fn call(router: &axum::Router, path: &str, bearer: Option<&str>) -> (u16, Value) {
        let mut request = http::Request::get(path);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Monday 2026-12-07, 08:00:20 UTC: 09:00 in Prague.
    const DUE: &str = "2026-12-07T08:00:20Z";

    #[tokio::test]
    async fn without_cron_secret_the_route_refuses_naming_it() {
        let (router, counters) = router(None, DUE);
        let (status, body) = call(&router, "/triggers/cron/digest", Some(SECRET)).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("CRON_SECRET")),
            "{body}"
        );
        assert_eq!(counters.created.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_missing_or_wrong_bearer_is_401_before_any_trigger_is_named() {
        let (router, counters) = router(Some(SECRET), DUE);
        for bearer in [None, Some("cron-secret-for-tests-0124"), Some("")] {
            for path in ["/triggers/cron/digest", "/triggers/cron/nothing"] {
                let (status, body) = call(&router, path, bearer).await;
                assert_eq!(status, 401, "{path} {bearer:?}: {body}");
                assert!(!body.to_string().contains("digest"), "{body}");
            }
        }
        assert_eq!(counters.created.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_unknown_or_webhook_trigger_is_refused_by_name() {
        let (router, _) = router(Some(SECRET), DUE);
        let (status, body) = call(&router, "/triggers/cron/nothing", Some(SECRET)).await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body.to_string().contains("digest"),
            "names the triggers: {body}"
        );
        let (status, body) = call(&router, "/triggers/cron/hook", Some(SECRET)).await;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains("webhook"), "{body}");
    }

    /// Vercel calls at 07:00 and 08:00 UTC for 09:00 in Prague; in winter
    /// only 08:00 is due.
    #[tokio::test]
    async fn a_call_at_a_time_the_trigger_is_not_due_starts_nothing() {
        for now in ["2026-12-07T07:00:05Z", "2026-12-05T08:00:05Z"] {
            let (router, counters) = router(Some(SECRET), now);
            let (status, body) = call(&router, "/triggers/cron/digest", Some(SECRET)).await;
            assert_eq!(
                (status, body["status"].as_str()),
                (200, Some("not_due")),
                "{now}: {body}"
            );
            assert_eq!(body["next_fire_at"], "2026-12-07T08:00:00Z", "{body}");
            assert_eq!(counters.created.load(Ordering::SeqCst), 0, "{now}");
        }
    }
}
