//! Firing a trigger: its limits, its prompt filled in, and a detached run
//! started with its run fields, whose id is answered at once.
//!
//! Whatever fired it (a webhook, a schedule, an operator) goes through
//! [`fire`], so every trigger run is planned, recorded and limited the
//! same way. The server then reads the run's events itself to the end, on
//! a task of its own: that is what keeps the run counted against the
//! trigger's concurrency, and what lets the history and the completion
//! notice see how it ended, with no client connected.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde_json::Value;
use tokio::time::Instant;

use super::Trigger;
use super::limits::{Going, Refused};
use super::template::{self, Sources};
use crate::app::AppState;
use crate::error::ApiError;
use crate::events::RunEvent;
use crate::request::Query;
use crate::run::RunHandle;
use crate::{plan, runs, telemetry};

/// The labels a trigger's runs are recorded with, as Python Sandstorm
/// 0.9.2 records them: `team_id` says a trigger started it, `user_id`
/// which one.
pub(crate) const TRIGGER_TEAM: &str = "__trigger__";

/// What fired a trigger.
#[derive(Debug)]
pub(crate) struct Call {
    /// The payload, for `{{body.*}}`.
    pub body: Option<Value>,
    /// The request's headers, for `{{headers.*}}` and `traceparent`.
    pub headers: HeaderMap,
    /// When it fired (for a schedule, the fire time it was due at).
    pub fired_at: SystemTime,
    /// When the hosting platform cuts this invocation.
    pub platform_deadline: Option<Instant>,
    /// The request id the run is known by in logs and events.
    pub request_id: String,
}

/// A trigger's run that has started.
#[derive(Debug, Clone)]
pub(crate) struct Fired {
    /// Its id, for `GET /runs/{id}` and `ds attach`.
    pub run_id: String,
}

/// Starts `trigger`'s run for `call`, unless its limits refuse.
pub(crate) async fn fire(
    state: &AppState,
    trigger: &Trigger,
    call: Call,
) -> Result<Fired, ApiError> {
    let definition = &trigger.definition;
    let going = state
        .trigger_limits()
        .start(
            &definition.name,
            definition.rate_per_minute,
            definition.max_concurrent,
            Instant::now(),
        )
        .map_err(|refused| too_many(&definition.name, &refused))?;
    let fired_at = humantime::format_rfc3339_seconds(call.fired_at).to_string();
    let mut sources = Sources::new(&definition.name, definition.source.kind(), &fired_at)
        .with_headers(&call.headers);
    sources.body = call.body;
    let prompt = template::render(&definition.prompt, &sources, definition.wrap_values);

    let mut body = definition.run.clone();
    body.insert("prompt".into(), Value::String(prompt));
    body.insert("detach".into(), Value::Bool(true));
    body.entry("team_id")
        .or_insert_with(|| Value::String(TRIGGER_TEAM.into()));
    body.entry("user_id")
        .or_insert_with(|| Value::String(definition.name.clone()));
    let bytes = serde_json::to_vec(&Value::Object(body))
        .map_err(|e| ApiError::Internal(format!("a trigger's request: {e}")))?;
    let query = Query::from_json(&bytes, &[])?;

    let settings = state.settings();
    // The endpoint's own runs: whoever holds the server's token lists,
    // follows and cancels them.
    let owner = runs::owner(None);
    let mut plan = plan::prepare(
        &settings,
        query,
        call.request_id.clone(),
        call.platform_deadline,
        Some(&owner),
    )
    .await?;
    plan.trace_parent = telemetry::context::from_headers(&call.headers);
    let run_id = plan
        .detach
        .as_ref()
        .map(|d| d.run.to_string())
        .ok_or_else(|| ApiError::Internal("a trigger's run was not detached".into()))?;
    tracing::info!(
        trigger = %definition.name,
        kind = definition.source.kind(),
        run_id = %run_id,
        request_id = %call.request_id,
        "trigger fired"
    );
    let mut handle = state.start_run(plan);
    // Answered once the runner has started, not before: a serverless
    // invocation is frozen when it answers, and with it a sandbox still
    // being made or uploaded to.
    let wait = call.platform_deadline.map_or(START_LIMIT, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .min(START_LIMIT)
    });
    let started = tokio::time::timeout(wait, until_started(&mut handle.events)).await;
    let trigger = definition.name.clone();
    let answer = match started {
        Ok(Start::Started) => Ok(Fired {
            run_id: run_id.clone(),
        }),
        Ok(Start::Failed(message)) => Err(ApiError::Provider {
            message: format!("trigger {trigger:?}: its run did not start: {message}"),
        }),
        Err(_) => {
            tracing::warn!(%trigger, %run_id, ?wait, "trigger's run still starting; answered");
            Ok(Fired {
                run_id: run_id.clone(),
            })
        }
    };
    tokio::spawn(follow(handle, going, trigger, run_id));
    answer
}

/// The longest a trigger's call waits for its run to start.
const START_LIMIT: Duration = Duration::from_secs(60);

/// How a run's start went.
enum Start {
    /// The runner is going (its first event arrived).
    Started,
    /// It ended before the runner began, for this reason.
    Failed(String),
}

/// Reads a run's events until the runner's first: the sandbox exists, the
/// upload is in and the runner has started. Progress and the `run` event
/// come before that.
async fn until_started(events: &mut tokio::sync::mpsc::Receiver<RunEvent>) -> Start {
    while let Some(event) = events.recv().await {
        match event {
            RunEvent::Progress(_) | RunEvent::Run(_) => {}
            RunEvent::Error(error) => return Start::Failed(error.message),
            _ => return Start::Started,
        }
    }
    Start::Failed("its events ended before it started".into())
}

/// Reads a trigger's run to its end, holding its place in the trigger's
/// concurrency until then.
async fn follow(handle: RunHandle, going: Going, trigger: String, run_id: String) {
    let RunHandle {
        mut events,
        finished,
    } = handle;
    let mut ended = None;
    while let Some(event) = events.recv().await {
        if let Some(kind) = event.server_type() {
            ended = Some(kind);
        }
    }
    let _ = finished.await;
    drop(going);
    tracing::info!(%trigger, %run_id, last = ended.unwrap_or("none"), "trigger's run ended");
}

/// A limit's refusal, for the caller.
fn too_many(trigger: &str, refused: &Refused) -> ApiError {
    match refused {
        Refused::Rate { limit, retry_after } => ApiError::TooManyRuns {
            message: format!(
                "trigger {trigger:?} started its limit of {limit} runs in the last minute \
                 (its rate_limit); try again in {}s",
                retry_after.as_secs().max(1)
            ),
            retry_after_secs: retry_after.as_secs().max(1),
        },
        Refused::Concurrency { limit } => ApiError::TooManyRuns {
            message: format!(
                "trigger {trigger:?} has its limit of {limit} runs going (its max_concurrent); \
                 try again when one ends"
            ),
            retry_after_secs: 30,
        },
    }
}
