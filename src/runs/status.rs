//! What a run is doing: `GET /runs/{id}` and each entry of `GET /runs`.
//!
//! Nothing about a run is kept outside its sandbox, so its status is read
//! there: the event log, replayed through the same relay that streams it
//! (so `last_event_id` is the id of the last event a reader would get, and
//! the status is the end a reader would see), and the agent config the
//! runner read (the prompt).

use serde::Serialize;

use crate::events::ErrorKind;
use crate::run::detached::{Follow, Tally, tally};
use crate::runs::log::EVENT_LOG;
use crate::sandbox::{Sandbox, SandboxError, layout};

/// How much of the prompt a status shows.
const PROMPT_CHARS: usize = 200;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// The agent is working.
    Running,
    /// A turn is over and the sandbox is kept (`keep_alive`) for a
    /// follow-up.
    Idle,
    /// The agent finished with a result.
    Succeeded,
    /// The run ended with an error event.
    Failed,
    /// `POST /runs/{id}/cancel` or `DELETE /runs/{id}` ended it.
    Cancelled,
    /// The run's `timeout` ended it.
    Expired,
}

/// A run, as `GET /runs/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunInfo {
    /// The run's id.
    pub run_id: String,
    /// Where it is.
    pub status: Status,
    /// When it was started (RFC 3339, UTC).
    pub created_at: String,
    /// When its sandbox goes away at the latest (RFC 3339, UTC).
    pub expires_at: String,
    /// The results' `num_turns`, once there is a result, summed over the
    /// run's turns.
    pub turns: Option<u64>,
    /// The results' `total_cost_usd`, once there is a result, summed over
    /// the run's turns.
    pub total_cost_usd: Option<f64>,
    /// The id of the run's last event so far.
    pub last_event_id: u64,
    /// The model, as the SDK's init message names it.
    pub model: Option<String>,
    /// The prompt's first 200 characters.
    pub prompt: String,
    /// The labels it was started with (`team_id`, `user_id`,
    /// `channel_id`), by name; left out when none.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Reads the run's status from its sandbox.
pub(crate) async fn read(sandbox: &dyn Sandbox, follow: &Follow) -> Result<RunInfo, SandboxError> {
    read_tallied(sandbox, follow).await.map(|(info, _)| info)
}

/// The run's status, and the tally of its log it comes from.
pub(crate) async fn read_tallied(
    sandbox: &dyn Sandbox,
    follow: &Follow,
) -> Result<(RunInfo, Tally), SandboxError> {
    let tally = tally_of(sandbox, follow).await?;
    let prompt = follow.redactor.redact_str(&prompt(sandbox).await);
    Ok((info(follow, &tally, prompt), tally))
}

/// The run's log, read whole and added up.
pub(crate) async fn tally_of(
    sandbox: &dyn Sandbox,
    follow: &Follow,
) -> Result<Tally, SandboxError> {
    // A run whose runner has not started yet has no log: nothing but its
    // `run` event so far.
    let log = match sandbox.read_file(EVENT_LOG).await {
        Ok(log) => log,
        Err(SandboxError::Other { .. } | SandboxError::Status { status: 404, .. }) => {
            bytes::Bytes::new()
        }
        Err(e) => return Err(e),
    };
    Ok(tally(log, follow, sandbox).await)
}

/// What a tally of the run's log says about it.
pub(crate) fn info(follow: &Follow, tally: &Tally, prompt: String) -> RunInfo {
    let Tally {
        events,
        outcome,
        num_turns,
        total_cost_usd,
        ref model,
        ..
    } = *tally;
    let status = match outcome {
        None => Status::Running,
        Some(Some(ErrorKind::Cancelled)) => Status::Cancelled,
        Some(_) if !follow.keep_alive.is_zero() => Status::Idle,
        Some(None) => Status::Succeeded,
        Some(Some(ErrorKind::Timeout)) => Status::Expired,
        Some(Some(_)) => Status::Failed,
    };
    // The `run` event, the relayed ones, and once it is over the `error`
    // (if any) and `done`.
    let closing = match outcome {
        None => 0,
        Some(None) => 1,
        Some(Some(_)) => 2,
    };
    RunInfo {
        run_id: follow.run.run_id.clone(),
        status,
        created_at: follow.created_at.clone(),
        expires_at: follow.run.expires_at.clone(),
        turns: num_turns,
        total_cost_usd,
        last_event_id: 1 + events + closing,
        model: model.clone(),
        prompt,
        labels: follow.labels.clone(),
    }
}

/// The prompt's first [`PROMPT_CHARS`] characters, from the config the
/// runner read.
async fn prompt(sandbox: &dyn Sandbox) -> String {
    let Ok(bytes) = sandbox.read_file(layout::AGENT_CONFIG).await else {
        return String::new();
    };
    let config: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    config["prompt"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(PROMPT_CHARS)
        .collect()
}
