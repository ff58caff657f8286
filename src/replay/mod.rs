//! Replay (issue 17): a recorded run, run again with overrides, and
//! compared with the original. `POST /runs/{id}/replay` and `ds replay`.
//!
//! A replay is a new run, planned like any other from the original's
//! record: its prompt, and its request's choices ([`request`]) with the
//! replay's body over them. When the original's sandbox is still there (a
//! detached run, running or kept for follow-ups), the replay forks its SDK
//! session as `POST /query {"resume", "fork_session"}` does, so the model
//! starts from the original's transcript rather than doing its work again;
//! otherwise it runs from the recorded prompt. Either way its record names
//! the run it replays, and its stream carries a `replay` report
//! ([`report`]) just before its `done`.

use tokio::time::Instant;

use crate::error::ApiError;
use crate::history::History;
use crate::plan::{self, RunPlan};
use crate::request::Query;
use crate::runs::{self, Caller, registry::Registry};
use crate::sandbox::SandboxProvider;
use crate::settings::Settings;

pub(crate) mod report;
pub(crate) mod request;

use report::Side;
use request::Overrides;

/// What a replay needs of the server it runs on.
pub(crate) struct Context<'a> {
    pub settings: &'a Settings,
    pub provider: &'a dyn SandboxProvider,
    pub registry: &'a Registry,
    pub history: &'a History,
    pub platform_deadline: Option<Instant>,
}

/// A replay, planned and not yet started.
pub(crate) struct Replaying {
    /// The replay's plan, recorded as a replay of the original.
    pub plan: RunPlan,
    /// The original, as its record tells.
    pub original: Side,
    /// What is known of the replay before it runs.
    pub replay: Side,
    /// Whether it forks the original's SDK session.
    pub forked: bool,
}

/// Plans the replay of run `id` for `caller`, with `overrides` (the
/// request's body) over its recorded request.
pub(crate) async fn prepare(
    context: Context<'_>,
    id: &str,
    overrides: Overrides,
    caller: &Caller,
    request_id: String,
) -> Result<Replaying, ApiError> {
    let settings = context.settings;
    let store = context.history.store().ok_or_else(|| ApiError::RunOver {
        message: "replay reads runs from the run history, which this server does not keep: \
                  set SANDSTORM_HISTORY_PATH (ds serve) or SANDSTORM_HISTORY_TABLE \
                  (Lambda, Vercel), and leave SANDSTORM_HISTORY on"
            .to_owned(),
    })?;
    let record = store
        .get(caller.owner_digest(), id)
        .await
        .map_err(|e| ApiError::Internal(format!("the run history could not be read: {e}")))?
        .ok_or(ApiError::NoSuchRun)?;
    let body = request::replay_body(&record, overrides)?;
    let mut query = Query::from_json(&body, &settings.sandbox.credential_fields)?;
    // The replay is the caller's, as the original was: a credential that
    // came in a header goes with the run, as for a follow-up turn.
    if let (Some(key), Some(credential)) = (caller.brought(), settings.sandbox.provider.credential)
    {
        query.keys.set_sandbox(credential.field, key.clone());
    }
    let replay = Side {
        model: query.model.clone(),
        max_cost_usd: query.caps.max_cost_usd,
        ..Side::default()
    };
    let (mut plan, forked) = match fork(&context, &record, &query, caller, &request_id).await? {
        Some(plan) => (plan, true),
        None => (
            plan::prepare(
                settings,
                query,
                request_id,
                context.platform_deadline,
                Some(caller.owner()),
            )
            .await?,
            false,
        ),
    };
    let replay_id = plan.record.as_mut().map(|planned| {
        planned.replay_of = Some(record.run_id.clone());
        planned.run_id.clone()
    });
    Ok(Replaying {
        plan,
        original: Side::recorded(&record),
        replay: Side {
            run_id: replay_id,
            ..replay
        },
        forked,
    })
}

/// The replay as a fork of the original's SDK session, when the original's
/// sandbox and session are still there; `None` when they are not, and the
/// replay runs from the recorded prompt.
async fn fork(
    context: &Context<'_>,
    record: &crate::history::RunRecord,
    query: &Query,
    caller: &Caller,
    request_id: &str,
) -> Result<Option<RunPlan>, ApiError> {
    // An attached run's sandbox ends with its stream.
    if !record.detached {
        return Ok(None);
    }
    let found = runs::find(
        context.settings,
        context.provider,
        context.registry,
        &record.run_id,
        caller,
        context.platform_deadline,
    )
    .await;
    let found = match found {
        Ok(found) => found,
        Err(ApiError::NoSuchRun | ApiError::RunOver { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    match runs::turn::fork(
        context.settings,
        found,
        query.clone(),
        request_id.to_owned(),
        context.platform_deadline,
        caller.owner(),
    )
    .await
    {
        Ok(plan) => Ok(Some(plan)),
        // No session to branch from (the run never spoke): start over.
        Err(ApiError::RunOver { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
