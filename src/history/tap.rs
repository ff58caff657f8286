//! Where a run meets its history: the record made from its plan, and the
//! tap on its events that records how it ended.

use std::time::SystemTime;

use tokio::sync::mpsc;

use super::History;
use super::events::Keeper;
use super::record::{Recorder, RunRecord, capped_prompt, config_snapshot};
use crate::events::RunEvent;
use crate::plan::RunPlan;
use crate::request::Query;
use crate::run::{FINAL_EVENT_GRACE, RunHandle, TAP_BUFFER};
use crate::run_id::RunId;
use crate::sandbox::layout;

/// A run being recorded: where its later writes go.
#[derive(Debug, Clone)]
pub(crate) struct Recording {
    history: History,
    run_id: String,
    started: SystemTime,
    detached: bool,
}

impl Recording {
    /// Notes the sandbox the run got.
    pub(crate) fn sandbox(&self, sandbox_id: &str) {
        self.history.sandbox(&self.run_id, sandbox_id);
    }
}

/// The record of a planned run, as it starts: `None` when an attached run
/// can get no id (no system randomness), which leaves it unrecorded
/// rather than refused.
pub(crate) fn planned(plan: &RunPlan, query: &Query, owner_digest: String) -> Option<RunRecord> {
    let (run_id, created_at) = match &plan.detach {
        Some(detach) => (detach.run.to_string(), detach.created_at.clone()),
        None => {
            let id = RunId::generate()
                .inspect_err(|e| tracing::warn!(error = %e, "run history: no id for the run; it goes unrecorded"))
                .ok()?;
            let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
            (id.to_string(), now)
        }
    };
    let (prompt, prompt_truncated) = capped_prompt(&plan.redactor.redact_str(&query.prompt));
    let agent_config = plan
        .files
        .iter()
        .find(|f| f.path == layout::AGENT_CONFIG)
        .map(|f| f.content.clone())
        .unwrap_or_default();
    let config = config_snapshot(&agent_config, &plan.redactor);
    Some(RunRecord {
        run_id,
        owner: owner_digest,
        status: super::RecordStatus::Running,
        detached: plan.detach.is_some(),
        created_at,
        ended_at: None,
        duration_ms: None,
        request_id: plan.request_id.clone(),
        model: config["model"].as_str().map(str::to_owned),
        turns: None,
        total_cost_usd: None,
        usage: None,
        spend: None,
        prompt,
        prompt_truncated,
        config,
        outputs: Vec::new(),
        session_id: None,
        error_type: None,
        labels: crate::runs::labels(&plan.sandbox.metadata),
        sandbox_id: None,
        request: crate::replay::request::recorded(query, &plan.redactor),
        replay_of: None,
        result: None,
        webhook_url: plan.notice.as_ref().map(|n| n.target.url.to_string()),
    })
}

impl History {
    /// Records a run's start, and returns where its later writes go; `None`
    /// when history is off or the run has no record.
    pub(crate) fn begin(&self, record: Option<RunRecord>) -> Option<Recording> {
        self.store()?;
        let record = record?;
        let recording = Recording {
            history: self.clone(),
            run_id: record.run_id.clone(),
            started: SystemTime::now(),
            detached: record.detached,
        };
        self.started(record);
        Some(recording)
    }

    /// Where a later reader of a detached run records its end, should it
    /// see it: the run started at `created_at` (RFC 3339).
    pub(crate) fn reading(&self, run_id: &str, created_at: &str) -> Option<Recording> {
        self.store()?;
        Some(Recording {
            history: self.clone(),
            run_id: run_id.to_owned(),
            started: humantime::parse_rfc3339_weak(created_at)
                .unwrap_or_else(|_| SystemTime::now()),
            detached: true,
        })
    }
}

/// The run's events as its client gets them, recorded on the way: each
/// event is taken in as it passes, and the run's end is written once its
/// `done` has passed (or, for an attached run, once its client has gone,
/// which ends it). A detached run whose stream ends before its `done`
/// goes on in its sandbox; a reader that sees its end records it.
///
/// When the history keeps events, the tap also keeps the run's, and hands
/// them to the history with each end it records. Every stream a tap sees
/// starts at the run's first event: a run's own, a reader's (which reads
/// the run's log from its start whatever `Last-Event-ID` says; the ids
/// before it are skipped past the tap) and a follow-up turn's (a reader
/// too). So each `done` a tap sees comes after every event before it, and
/// what it keeps then is the whole run so far, every turn of it.
pub(crate) fn tap(recording: Option<Recording>, handle: RunHandle) -> RunHandle {
    let Some(recording) = recording else {
        return handle;
    };
    let RunHandle {
        events: mut inner,
        finished,
    } = handle;
    let (tx, events) = mpsc::channel(TAP_BUFFER);
    tokio::spawn(async move {
        let mut recorder = Recorder::default();
        // Nothing is kept, or held, unless the history keeps events.
        let mut keeper = recording.history.events_cap().map(Keeper::new);
        loop {
            let event = tokio::select! {
                biased;
                () = tx.closed() => break,
                event = inner.recv() => event,
            };
            let Some(event) = event else { break };
            recorder.observe(&event);
            if let Some(keeper) = keeper.as_mut() {
                keeper.observe(&event);
            }
            let done = matches!(event, RunEvent::Done(_));
            // Recorded before the client gets the `done`, so a client that
            // exits on it (`ds`) can wait for the write to land. Each turn
            // of a run kept for follow-ups ends with one: the last says how
            // the run ended.
            if done {
                let ending = recorder.ending(recording.started, false);
                recording.history.ended(&recording.run_id, ending);
                if let Some(blob) = keeper.as_mut().and_then(Keeper::snapshot) {
                    recording.history.keep_events(&recording.run_id, blob);
                }
                // On a serverless door, before the response can end.
                recording.history.settle_end().await;
            }
            // The run bounds how long its last events wait for a client
            // that does not read; the tap keeps that bound.
            let last = done || matches!(event, RunEvent::Error(_) | RunEvent::Detached(_));
            let sent = if last {
                matches!(
                    tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(event)).await,
                    Ok(Ok(()))
                )
            } else {
                tx.send(event).await.is_ok()
            };
            if !sent && !last {
                break;
            }
        }
        // Dropping the run's receiver now tells it its client is gone.
        drop(inner);
        // An attached run is over with its stream, `done` or not (its
        // client left); a detached one goes on in its sandbox.
        if !recorder.saw_done() && !recording.detached {
            let ending = recorder.ending(recording.started, true);
            recording.history.ended(&recording.run_id, ending);
        }
    });
    RunHandle { events, finished }
}
