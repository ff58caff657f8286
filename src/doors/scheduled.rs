//! The Lambda door's scheduled invocations: an EventBridge Scheduler
//! schedule that `ds schedules --sam` wrote invokes the function with an
//! input naming a cron trigger (see [`crate::triggers::eventbridge`]),
//! which is no HTTP event; this reads it and fires the trigger.
//!
//! Nothing here knows lambda_runtime: the door hands over the event's JSON
//! text ([`classify`]), and for a scheduled one, the invocation's deadline
//! and id ([`fire`]); it answers with the JSON [`fire`] returns, or fails
//! the invocation with its error.
//!
//! EventBridge Scheduler invokes the function asynchronously: Lambda
//! itself retries an invocation that fails (twice, a minute or two apart),
//! then drops it or hands it to the function's on-failure destination.
//! So what a retry may mend fails the invocation: the sandbox provider down,
//! a run that died before its agent started. What no retry mends fails it
//! too, to be seen in the function's errors: an input that names no cron
//! trigger of this function's sandstorm.json, or a time its schedule is not
//! due at (the template and sandstorm.json have drifted apart). A fire the
//! trigger's own rules skip succeeds, saying so: a limit reached, a run
//! still going that may not overlap, or a delivery so late the fire counts
//! as missed (as `ds serve` skips fires it finds late).

use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::app::AppState;
use crate::error::ApiError;
use crate::triggers::eventbridge::{self, SCHEDULED_TIME_KEY};
use crate::triggers::fire::{self, Call};
use crate::triggers::scheduler::Clock;
use crate::triggers::{Source, Trigger};

/// How late a delivery may come, past the schedule's flexible window, and
/// still fire: room for Lambda's two retries of a failed invocation, which
/// come a minute or two apart.
pub const LATE_LIMIT: Duration = Duration::from_secs(600);
/// The longest an invocation waits for the run's agent to start.
const START_WAIT: Duration = Duration::from_secs(120);

/// What an invocation's event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// A schedule's: fire this cron trigger.
    Scheduled(ScheduledFire),
    /// Anything else: the HTTP events lambda_http reads.
    Http,
}

/// A schedule's invocation, as its input says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledFire {
    /// The cron trigger's name.
    pub trigger: String,
    /// The time the schedule fired for.
    pub scheduled_time: DateTime<Utc>,
    /// EventBridge Scheduler's id of the attempt, for the logs.
    pub execution_id: Option<String>,
    /// The attempt's number, from 1.
    pub attempt: Option<String>,
}

/// Why a scheduled invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduledError {
    /// The input is not one `ds schedules` writes.
    #[error("a schedule's input: {0}")]
    BadInput(String),
    /// No cron trigger of that name here.
    #[error("{0}")]
    NoSuchTrigger(String),
    /// The trigger's schedule is not due at the time fired for.
    #[error("{0}")]
    NotDue(String),
    /// The run could not start.
    #[error("trigger {trigger:?}: the run could not start: {message}")]
    Refused {
        /// The trigger.
        trigger: String,
        /// Why (a provider's fault is described in the log only).
        message: String,
    },
}

impl ScheduledError {
    /// Its name in the failed invocation's `errorType`, where Lambda's
    /// metrics and destinations show it.
    pub fn kind(&self) -> &'static str {
        match self {
            ScheduledError::BadInput(_) => "Sandstorm.ScheduleInput",
            ScheduledError::NoSuchTrigger(_) => "Sandstorm.NoSuchTrigger",
            ScheduledError::NotDue(_) => "Sandstorm.NotDue",
            ScheduledError::Refused { .. } => "Sandstorm.RunNotStarted",
        }
    }
}

/// The fields of a schedule's input, as EventBridge fills them in.
#[derive(Debug, Deserialize)]
struct Input {
    sandstorm_trigger: Value,
    #[serde(default)]
    scheduled_time: Option<String>,
    #[serde(default)]
    execution_id: Option<String>,
    #[serde(default)]
    attempt: Option<String>,
}

/// Whether `event` (an invocation's JSON) is a schedule's, read.
pub fn classify(event: &str) -> Result<Invocation, ScheduledError> {
    // An HTTP event holds no such key at its top; only a schedule's does.
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, rename = "sandstorm_trigger")]
        trigger: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_str::<Probe>(event) {
        Ok(Probe { trigger: Some(_) }) => {}
        _ => return Ok(Invocation::Http),
    }
    let input: Input = serde_json::from_str(event)
        .map_err(|e| ScheduledError::BadInput(format!("not the input ds schedules writes: {e}")))?;
    let trigger = input
        .sandstorm_trigger
        .as_str()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            ScheduledError::BadInput(format!(
                "`{}` must name a trigger",
                eventbridge::TRIGGER_KEY
            ))
        })?
        .to_owned();
    let time = input
        .scheduled_time
        .ok_or_else(|| ScheduledError::BadInput(format!("`{SCHEDULED_TIME_KEY}` is missing")))?;
    let scheduled_time = DateTime::parse_from_rfc3339(&time)
        .map_err(|_| {
            ScheduledError::BadInput(format!(
                "`{SCHEDULED_TIME_KEY}` is {time:?}, not an RFC 3339 time (EventBridge fills in \
                 <aws.scheduler.scheduled-time>)"
            ))
        })?
        .with_timezone(&Utc);
    Ok(Invocation::Scheduled(ScheduledFire {
        trigger,
        scheduled_time,
        execution_id: input.execution_id,
        attempt: input.attempt,
    }))
}

/// Fires the trigger `fire` names, for its scheduled time; the
/// invocation's answer, or why it fails. `deadline` is the invocation's,
/// `request_id` its id.
pub async fn fire(
    state: &AppState,
    fire: &ScheduledFire,
    deadline: Option<Instant>,
    request_id: &str,
) -> Result<Value, ScheduledError> {
    let settings = state.settings();
    let name = &fire.trigger;
    let scheduled = fire
        .scheduled_time
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tracing::info!(
        trigger = %name,
        scheduled_time = %scheduled,
        execution_id = fire.execution_id.as_deref().unwrap_or(""),
        attempt = fire.attempt.as_deref().unwrap_or(""),
        %request_id,
        "scheduled invocation"
    );
    let answer = |status: &str, extra: Value| {
        let mut answer = json!({
            "status": status,
            "trigger": name,
            "scheduled_time": scheduled,
            "execution_id": fire.execution_id,
        });
        if let (Value::Object(answer), Value::Object(extra)) = (&mut answer, extra) {
            answer.extend(extra);
        }
        answer
    };
    let trigger: &Trigger = settings
        .triggers
        .named(name)
        .filter(|t| matches!(t.definition.source, Source::Cron { .. }))
        .ok_or_else(|| {
            let crons: Vec<&str> = settings
                .triggers
                .all()
                .iter()
                .filter(|t| matches!(t.definition.source, Source::Cron { .. }))
                .map(|t| t.definition.name.as_str())
                .collect();
            ScheduledError::NoSuchTrigger(format!(
                "a schedule fired {name:?}, which is no cron trigger of this function's \
                 sandstorm.json (its cron triggers: {}); deploy the sandstorm.json the \
                 template's schedules were made from (ds schedules --sam --check)",
                if crons.is_empty() {
                    "none".to_owned()
                } else {
                    crons.join(", ")
                }
            ))
        })?;
    let Source::Cron {
        schedule,
        overlap,
        jitter,
    } = &trigger.definition.source
    else {
        return Err(ScheduledError::NoSuchTrigger(format!(
            "{name:?} is not a cron trigger"
        )));
    };
    if !schedule.is_due(fire.scheduled_time) {
        return Err(ScheduledError::NotDue(format!(
            "trigger {name:?} ({:?} in {}) is not due at {scheduled}, the time its schedule \
             fired for: the template's schedule and this sandstorm.json differ (ds schedules \
             --sam --check)",
            schedule.expression(),
            schedule.zone()
        )));
    }
    let now = settings
        .test_clock_start
        .map_or_else(Clock::system, Clock::starting_at)
        .now();
    let window = eventbridge::window_minutes(*jitter).unwrap_or(0);
    let late = TimeDelta::from_std(LATE_LIMIT).unwrap_or(TimeDelta::MAX)
        + TimeDelta::minutes(i64::try_from(window).unwrap_or(0));
    if now - fire.scheduled_time > late {
        tracing::warn!(trigger = %name, scheduled_time = %scheduled, "scheduled fire missed: delivered too late");
        return Ok(answer(
            "missed",
            json!({"reason": format!("delivered at {}, too late to fire", now.to_rfc3339())}),
        ));
    }
    if !overlap && state.trigger_limits().going(name) > 0 {
        tracing::warn!(trigger = %name, scheduled_time = %scheduled, "scheduled fire skipped: the previous run still goes");
        return Ok(answer(
            "skipped",
            json!({"reason": "its previous run still goes, and it does not overlap"}),
        ));
    }
    let call = Call {
        body: None,
        headers: http::HeaderMap::new(),
        fired_at: SystemTime::from(fire.scheduled_time),
        platform_deadline: deadline,
        request_id: request_id.to_owned(),
    };
    let fired = fire::fire_until_started(state, trigger, call, START_WAIT).await;
    crate::telemetry::Telemetry::active().flush().await;
    match fired {
        Ok(fired) => Ok(answer("accepted", json!({"run_id": fired.run_id}))),
        Err(ApiError::TooManyRuns { message, .. }) => {
            tracing::warn!(trigger = %name, %message, "scheduled fire skipped");
            Ok(answer("skipped", json!({"reason": message})))
        }
        Err(error) => {
            if let ApiError::Internal(detail) = &error {
                tracing::error!(trigger = %name, %detail, "scheduled fire failed");
            }
            Err(ScheduledError::Refused {
                trigger: name.clone(),
                message: error.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What EventBridge Scheduler delivers for an input `ds schedules`
    /// wrote, its context attributes filled in.
    const DELIVERED: &str = include_str!("../../tests/data/lambda/eventbridge_scheduler.json");

    #[test]
    fn a_schedules_input_is_a_scheduled_fire() {
        let Ok(Invocation::Scheduled(fire)) = classify(DELIVERED) else {
            panic!("not read as a schedule's")
        };
        assert_eq!(fire.trigger, "daily-digest");
        assert_eq!(
            fire.scheduled_time,
            DateTime::parse_from_rfc3339("2026-12-07T08:00:00Z").expect("time")
        );
        assert_eq!(fire.execution_id.as_deref(), Some("d32c5kddcf5bb8c3"));
        assert_eq!(fire.attempt.as_deref(), Some("1"));
    }

    /// The input `ds schedules --sam` writes, filled in as EventBridge
    /// fills it, is read back.
    #[test]
    fn the_input_ds_schedules_writes_is_read_back() {
        let delivered = eventbridge::input("nightly")
            .replace("<aws.scheduler.scheduled-time>", "2026-03-01T02:30:00Z")
            .replace("<aws.scheduler.execution-id>", "e1")
            .replace("<aws.scheduler.attempt-number>", "2");
        assert_eq!(
            classify(&delivered).ok(),
            Some(Invocation::Scheduled(ScheduledFire {
                trigger: "nightly".into(),
                scheduled_time: DateTime::parse_from_rfc3339("2026-03-01T02:30:00Z")
                    .expect("time")
                    .with_timezone(&Utc),
                execution_id: Some("e1".into()),
                attempt: Some("2".into()),
            }))
        );
    }

    #[test]
    fn http_events_are_left_to_lambda_http() {
        for event in [
            include_str!("../../tests/data/lambda/function_url.json"),
            include_str!("../../tests/data/lambda/apigw_v2_http.json"),
            "[1, 2]",
            "not json",
            // An HTTP body that mentions the key is still an HTTP event.
            r#"{"rawPath": "/query", "body": "{\"sandstorm_trigger\": \"x\"}"}"#,
        ] {
            assert_eq!(classify(event).ok(), Some(Invocation::Http), "{event}");
        }
    }

    /// The door's state for a sandstorm.json with a weekday-morning cron
    /// trigger in Prague and a webhook, on a clock set to `now`.
    async fn door(now: &str) -> (AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("sandstorm.json"),
            json!({"triggers": [
                {"name": "daily-digest", "type": "cron", "schedule": "0 9 * * MON-FRI",
                 "timezone": "Europe/Prague", "jitter": 90, "prompt": "Write the digest"},
                {"name": "hook", "type": "webhook", "path": "/hook", "public": true,
                 "prompt": "p"}
            ]})
            .to_string(),
        )
        .expect("write sandstorm.json");
        let env = crate::env::EnvVars::from_pairs([
            ("E2B_API_KEY", "e2b_test"),
            // Nothing here reaches E2B: a call would fail the test.
            ("E2B_API_URL", "http://127.0.0.1:9"),
            ("SANDSTORM_TEST_CLOCK_START", now),
        ]);
        let serverless = crate::doors::serverless(env, dir.path(), crate::doors::Platform::Lambda)
            .await
            .expect("the door's application");
        (serverless.state, dir)
    }

    fn scheduled(trigger: &str, at: &str) -> ScheduledFire {
        ScheduledFire {
            trigger: trigger.into(),
            scheduled_time: DateTime::parse_from_rfc3339(at)
                .expect("time")
                .with_timezone(&Utc),
            execution_id: Some("e1".into()),
            attempt: Some("1".into()),
        }
    }

    #[tokio::test]
    async fn a_trigger_this_function_does_not_have_as_cron_fails_the_invocation() {
        let (state, _dir) = door("2026-12-07T08:00:30Z").await;
        for name in ["weekly", "hook"] {
            let error = fire(&state, &scheduled(name, "2026-12-07T08:00:00Z"), None, "r1")
                .await
                .expect_err(name);
            assert_eq!(error.kind(), "Sandstorm.NoSuchTrigger", "{error}");
            assert!(error.to_string().contains("daily-digest"), "{error}");
        }
    }

    /// 09:00 in Prague is 08:00 UTC in December: a schedule that fired
    /// at 09:00 UTC was made from another sandstorm.json.
    #[tokio::test]
    async fn a_time_the_schedule_is_not_due_at_fails_the_invocation() {
        let (state, _dir) = door("2026-12-07T09:00:30Z").await;
        let error = fire(
            &state,
            &scheduled("daily-digest", "2026-12-07T09:00:00Z"),
            None,
            "r1",
        )
        .await
        .expect_err("not due");
        assert_eq!(error.kind(), "Sandstorm.NotDue", "{error}");
        assert!(error.to_string().contains("--check"), "{error}");
    }

    /// Ten minutes and the 2-minute window (90 s of jitter) after 08:00:
    /// a delivery at 08:11:59 is still on time, and one at 08:12:01 is
    /// missed, answered without a run and without failing.
    #[tokio::test]
    async fn a_delivery_too_late_is_missed_not_failed() {
        let (state, _dir) = door("2026-12-07T08:12:01Z").await;
        let answer = fire(
            &state,
            &scheduled("daily-digest", "2026-12-07T08:00:00Z"),
            None,
            "r1",
        )
        .await
        .expect("answered");
        assert_eq!(answer["status"], "missed", "{answer}");
        assert_eq!(answer["execution_id"], "e1", "{answer}");
        let (state, _dir) = door("2026-12-07T08:11:59Z").await;
        let on_time = fire(
            &state,
            &scheduled("daily-digest", "2026-12-07T08:00:00Z"),
            None,
            "r1",
        )
        .await;
        // On time, so it fires: and E2B, which is nowhere, fails it.
        let error = on_time.expect_err("E2B is unreachable");
        assert_eq!(error.kind(), "Sandstorm.RunNotStarted", "{error}");
    }

    #[test]
    fn a_broken_input_is_refused_naming_its_field() {
        for (event, field) in [
            (
                r#"{"sandstorm_trigger": 7, "scheduled_time": "2026-12-07T08:00:00Z"}"#,
                "sandstorm_trigger",
            ),
            (r#"{"sandstorm_trigger": "x"}"#, "scheduled_time"),
            (
                r#"{"sandstorm_trigger": "x", "scheduled_time": "<aws.scheduler.scheduled-time>"}"#,
                "scheduled_time",
            ),
        ] {
            let error = classify(event).expect_err(event).to_string();
            assert!(error.contains(field), "{event}: {error}");
        }
    }
}
