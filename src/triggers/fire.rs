//! Firing a trigger: its limits, its prompt filled in, and a detached run
//! started with its run fields, whose id is the answer.
//!
//! Whatever fired it (a webhook, a schedule, an operator) goes through
//! [`fire`] or [`fire_until_started`], so every trigger run is planned,
//! recorded and limited the same way. A caller on a serverless platform
//! (and any webhook's) answers only once the run's agent has started. The server then reads the run's events itself to the end, on
//! a task of its own: that is what keeps the run counted against the
//! trigger's concurrency, and what lets the history and the completion
//! notice see how it ended, with no client connected.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde_json::Value;
use tokio::sync::oneshot;
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
    start(state, trigger, call, None).await
}

/// How long [`fire_until_started`] waits for the run's record to be
/// written.
const RECORD_SETTLE: Duration = Duration::from_secs(2);

/// How a trigger's run began, as its first event past the sandbox's
/// making says.
#[derive(Debug)]
enum Began {
    /// Its runner printed: it runs in its sandbox and needs this process
    /// no more.
    Running,
    /// It ended before its runner printed; why.
    Failed(String),
}

/// [`fire`], answering only once the run runs in its sandbox (or failed
/// to get there), waiting at most `within`.
///
/// A serverless platform may freeze the function as soon as it answers,
/// and with it the tasks that make the run's sandbox and start its runner;
/// a platform's scheduler is answered once the run no longer needs them.
/// A run that failed to start is an error, so the platform sees the
/// invocation fail.
pub(crate) async fn fire_until_started(
    state: &AppState,
    trigger: &Trigger,
    call: Call,
    within: Duration,
) -> Result<Fired, ApiError> {
    let (began, beginning) = oneshot::channel();
    let fired = start(state, trigger, call, Some(began)).await?;
    let began = tokio::time::timeout(within, beginning).await;
    // The run's record too must land before the platform freezes us.
    state.history().settle(RECORD_SETTLE).await;
    match began {
        Ok(Ok(Began::Running)) => Ok(fired),
        Ok(Ok(Began::Failed(why))) => Err(ApiError::Provider {
            message: format!(
                "trigger {:?}: run {} ended before its agent started: {why}",
                trigger.definition.name, fired.run_id
            ),
        }),
        Ok(Err(_)) => Err(ApiError::Internal(format!(
            "trigger {:?}: run {}: its events ended with no word of its start",
            trigger.definition.name, fired.run_id
        ))),
        Err(_) => {
            tracing::warn!(
                trigger = %trigger.definition.name,
                run_id = %fired.run_id,
                ?within,
                "trigger's run has not started its agent yet; answering anyway"
            );
            Ok(fired)
        }
    }
}

async fn start(
    state: &AppState,
    trigger: &Trigger,
    call: Call,
    began: Option<oneshot::Sender<Began>>,
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
    let handle = state.start_run(plan);
    tokio::spawn(follow(
        handle,
        going,
        definition.name.clone(),
        run_id.clone(),
        began,
    ));
    Ok(Fired { run_id })
}

/// Reads a trigger's run to its end, holding its place in the trigger's
/// concurrency until then; tells `began` how it began.
async fn follow(
    handle: RunHandle,
    going: Going,
    trigger: String,
    run_id: String,
    mut began: Option<oneshot::Sender<Began>>,
) {
    let RunHandle {
        mut events,
        finished,
    } = handle;
    let mut ended = None;
    while let Some(event) = events.recv().await {
        if let Some(kind) = event.server_type() {
            ended = Some(kind);
        }
        let beginning = match &event {
            // The sandbox is being made, or is made: not started yet.
            RunEvent::Progress(_) | RunEvent::Run(_) => None,
            RunEvent::Error(error) => Some(Began::Failed(error.message.clone())),
            RunEvent::Done(_) => Some(Began::Failed("the run ended".to_owned())),
            _ => Some(Began::Running),
        };
        if let Some(beginning) = beginning
            && let Some(began) = began.take()
        {
            let _ = began.send(beginning);
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
