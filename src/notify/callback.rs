//! `POST /runs/{id}/ended?turn=N`: a detached run's sandbox says that a
//! turn ended, on a serverless door, which has nothing alive to see it.
//!
//! The call comes from the run's model proxy (root, in the sandbox; see
//! `model_proxy::callback`), with the run's call-back token
//! ([`super::seal`]): not the API's bearer token, which never enters a
//! sandbox. Nothing in the call is taken as the run's state. The server
//! finds the run by its id with its own sandbox credential, reads the
//! turn's end from the run's log as any reader does, records it in the
//! history, and makes the notice's attempt, if the run has a notice: a run
//! without one calls back when the door keeps a history table, for the
//! record alone (`seal::turn_callback`). It answers 2xx once the
//! receiver took the notice, 5xx when it did not (the proxy calls again),
//! and 409 while the log does not show the turn's end yet.
//!
//! A run started with the request's own E2B key is out of the server's
//! sight (its credential lists other sandboxes): its call is answered
//! 404, and its turns are told only by readers that bring the key.

use axum::http::HeaderMap;
use serde::Serialize;

use super::notice::{NoticeRecorder, Subject};
use super::seal;
use crate::error::ApiError;
use crate::events::RunEvent;
use crate::history::History;
use crate::run_id::RunId;
use crate::runs::registry::Registry;
use crate::runs::{self, log::EVENT_LOG};
use crate::sandbox::SandboxProvider;
use crate::settings::Settings;

/// The answer to a call that was taken.
#[derive(Debug, Serialize)]
pub(crate) struct Told {
    /// The receiver took the notice (or the run has no webhook to tell).
    pub told: bool,
}

/// Handles one call, as the module doc says.
pub(crate) async fn turn_ended(
    settings: &Settings,
    provider: &dyn SandboxProvider,
    registry: &Registry,
    history: &History,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Told, ApiError> {
    let turn = turn_of(query)?;
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // A call with no token is refused as any call without its bearer is.
    if token.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    // Without a key, no call can be a run's.
    let Some(Ok(secret)) = &settings.notify.secret else {
        return Err(ApiError::NoSuchRun);
    };
    let run = RunId::parse(id).map_err(|_| ApiError::NoSuchRun)?;
    if !seal::is_callback_token(secret, run.as_str(), token) {
        return Err(ApiError::Unauthorized);
    }
    let found = runs::find_for_callback(settings, provider, registry, &run).await?;
    let notice_plan = found.follow.notice.clone();
    if notice_plan.is_none() && history.store().is_none() {
        return Ok(Told { told: true });
    }
    let log = found
        .sandbox
        .read_file(EVENT_LOG)
        .await
        .map_err(|e| runs::provider_error(&e))?;
    let subject = Subject::of(&found.follow);
    let started = subject.started;
    let mut recorder = NoticeRecorder::default();
    let mut ended = None;
    crate::run::detached::replay(log, &found.follow, found.sandbox.as_ref(), &mut |event| {
        recorder.observe(event);
        if matches!(event, RunEvent::Done(_)) && recorder.turn() == turn && ended.is_none() {
            ended = Some((recorder.notice(&subject, false), recorder.ending(started)));
        }
    })
    .await;
    let Some((notice, ending)) = ended else {
        return Err(ApiError::TurnRunning {
            message: format!("turn {turn} of run {run} has not ended in its log yet"),
        });
    };
    if history.store().is_some() {
        history.ended(run.as_str(), ending);
        history.settle(SETTLE_HISTORY).await;
    }
    let Some(plan) = notice_plan else {
        return Ok(Told { told: true });
    };
    if plan.attempt_once(&notice).await {
        Ok(Told { told: true })
    } else {
        Err(ApiError::Provider {
            message: "the run's webhook did not take its notice; call again".to_owned(),
        })
    }
}

/// How long the call waits for the history's write of the turn's end.
const SETTLE_HISTORY: std::time::Duration = std::time::Duration::from_secs(2);

/// The `turn` the call names: a whole number from 1.
fn turn_of(query: Option<&str>) -> Result<u32, ApiError> {
    let value = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "turn")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| ApiError::invalid("turn", "turn must name the turn that ended"))?;
    match value.parse::<u32>() {
        Ok(turn) if turn >= 1 => Ok(turn),
        _ => Err(ApiError::invalid(
            "turn",
            format!("turn must be a whole number from 1, got {value:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_turn_is_a_whole_number_from_one() {
        assert_eq!(turn_of(Some("turn=2")).ok(), Some(2));
        for bad in [None, Some("turn=0"), Some("turn=x"), Some("other=1")] {
            let error = turn_of(bad).expect_err("refused");
            assert_eq!(error.field(), Some("turn"), "{bad:?}");
        }
    }
}
