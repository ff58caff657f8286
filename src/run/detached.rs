//! A detached run: it goes on in its sandbox when its client goes away.
//!
//! Its sandbox is made first; the stream then starts with the `run` event
//! (the id the client needs to come back), sent once any instance can find
//! the run by it. The runner is started under the event log's wrapper
//! ([`crate::runs::log`]), and the stream follows that log like every later
//! reader does ([`reattach`]). When the client leaves, the platform's
//! deadline comes or the server stops, the stream ends and the sandbox is
//! left running. Only the run's own end (or a cancel) ends the sandbox, and
//! only after a linger, so that every reader can read to the end.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, info, warn};

use super::{EVENT_BUFFER, FINAL_EVENT_GRACE, RunHandle, SandboxGuard, Stop, create_detached};
use crate::events::{
    Detached, Done, DoneStatus, ErrorKind, Phase, Redactor, RunError, RunEvent, RunStarted,
};
use crate::outputs::OutputPlan;
use crate::plan::{DetachPlan, RunPlan};
use crate::runs::log;
use crate::runs::registry::{Registered, Registry};
use crate::sandbox::{Sandbox, SandboxProvider};
use crate::shutdown::Shutdown;

/// What a reader needs to turn a run's log into its events: the same for
/// the first reader and every later one, so the events come out the same.
#[derive(Debug, Clone)]
pub(crate) struct Follow {
    /// The run's first event.
    pub run: RunStarted,
    /// When the run started (RFC 3339), for its status.
    pub created_at: String,
    /// The run's request id, for its `error` and `done` events.
    pub request_id: String,
    /// What to scrub from every event.
    pub redactor: Redactor,
    /// The output files the run asked for.
    pub outputs: Option<OutputPlan>,
    /// When this stream ends with a `detached` event (the platform's
    /// deadline, less a margin).
    pub deadline: Instant,
    /// The run id's digest, its name in the registry.
    pub digest: String,
    /// How long the sandbox stays once the run is over (0: destroyed at
    /// once).
    pub linger: Duration,
}

/// Starts a detached run on its own task.
pub(super) fn spawn(
    provider: Arc<dyn SandboxProvider>,
    plan: RunPlan,
    detach: DetachPlan,
    shutdown: Shutdown,
    registry: Registry,
) -> RunHandle {
    let (tx, events) = mpsc::channel(EVENT_BUFFER);
    let span = tracing::info_span!("run", request_id = %plan.request_id, detached = true);
    let finished =
        tokio::spawn(execute(provider, plan, detach, tx, shutdown, registry).instrument(span));
    RunHandle { events, finished }
}

/// Reads an existing run again, from its first event, on its own task.
pub(crate) fn reattach(
    sandbox: Arc<dyn Sandbox>,
    follow: Follow,
    shutdown: Shutdown,
    registry: Registry,
) -> RunHandle {
    let (tx, events) = mpsc::channel(EVENT_BUFFER);
    let span = tracing::info_span!("reattach", request_id = %follow.request_id);
    let finished = tokio::spawn(
        async move {
            let _ = tx.send(RunEvent::Run(follow.run.clone())).await;
            let ending = read(&sandbox, &follow, &tx, shutdown).await;
            finish(ending, Some(sandbox), &follow, &tx, &registry).await;
        }
        .instrument(span),
    );
    RunHandle { events, finished }
}

async fn execute(
    provider: Arc<dyn SandboxProvider>,
    plan: RunPlan,
    detach: DetachPlan,
    tx: mpsc::Sender<RunEvent>,
    mut shutdown: Shutdown,
    registry: Registry,
) {
    let follow = Follow {
        run: RunStarted {
            run_id: detach.run.to_string(),
            expires_at: detach.expires_at.clone(),
        },
        created_at: detach.created_at.clone(),
        request_id: plan.request_id.clone(),
        redactor: plan.redactor.clone(),
        outputs: plan.outputs.clone(),
        deadline: plan.deadline,
        digest: detach.run.digest(),
        linger: detach.linger,
    };
    let mut guard = SandboxGuard::new(plan.request_id.clone());
    let started = tokio::select! {
        biased;
        () = shutdown.triggered() => Err(Stop::Failed(ErrorKind::Shutdown, super::SHUTDOWN_MESSAGE.to_owned())),
        started = start(&provider, &plan, &tx, &mut guard, &registry, &follow) => started,
    };
    match started {
        Ok(sandbox) => {
            // The guard's work is now the run's end, whoever reads it.
            guard.release();
            let ending = read(&sandbox, &follow, &tx, shutdown).await;
            finish(ending, Some(sandbox), &follow, &tx, &registry).await;
        }
        Err(stop) => {
            guard.destroy().await;
            registry.remove(&follow.digest);
            finish(Ending::Finished(Some(stop)), None, &follow, &tx, &registry).await;
        }
    }
}

/// Creates the sandbox, uploads, and starts the runner under its wrapper,
/// whose output nobody reads: the log is the run's output.
async fn start(
    provider: &Arc<dyn SandboxProvider>,
    plan: &RunPlan,
    tx: &mpsc::Sender<RunEvent>,
    guard: &mut SandboxGuard,
    registry: &Registry,
    follow: &Follow,
) -> Result<Arc<dyn Sandbox>, Stop> {
    // A client that is gone does not stop a detached run.
    let progress = |phase| async move {
        let _ = tx.send(RunEvent::Progress(phase)).await;
    };
    progress(Phase::CreatingSandbox).await;
    let sandbox = create_detached(provider, plan.sandbox.clone(), &plan.request_id).await?;
    guard.arm(sandbox.clone());
    registry.insert(
        follow.digest.clone(),
        Registered {
            sandbox: sandbox.clone(),
            owner: plan
                .sandbox
                .metadata
                .get(crate::run_id::OWNER_KEY)
                .cloned()
                .unwrap_or_default(),
            follow: follow.clone(),
            expires: Instant::now() + plan.sandbox.lifetime,
        },
    );
    info!(
        sandbox = sandbox.id(),
        provider = provider.name(),
        "sandbox created for a detached run"
    );
    // The run's id once its sandbox exists: from here on any instance finds
    // the run by it, and the run no longer needs its client.
    let _ = tx.send(RunEvent::Run(follow.run.clone())).await;
    progress(Phase::Uploading).await;
    sandbox.upload(plan.files.clone()).await?;
    progress(Phase::StartingAgent).await;
    let mut output = sandbox.start(plan.process.clone()).await?;
    // Drained so that a provider which ends a process with its stream (the
    // local one) keeps it; on E2B the process outlives the stream anyway.
    tokio::spawn(async move { while output.next().await.is_some() {} });
    Ok(sandbox)
}

/// How a reader's stream ended.
enum Ending {
    /// The run is over: successfully, or with the stop that ended it.
    Finished(Option<Stop>),
    /// The stream ends; the run goes on.
    Detached,
    /// The client left; the run goes on.
    ClientGone,
}

/// Follows the run's log from its start, relaying every event, until the
/// run ends or this stream must.
async fn read(
    sandbox: &Arc<dyn Sandbox>,
    follow: &Follow,
    tx: &mpsc::Sender<RunEvent>,
    mut shutdown: Shutdown,
) -> Ending {
    // The follower ends itself when this stream must have ended.
    let until =
        std::time::SystemTime::now() + follow.deadline.saturating_duration_since(Instant::now());
    let relayed = async {
        let output = sandbox.start(log::follower(until)).await?;
        super::relay(
            log::decode(output),
            &follow.redactor,
            follow.outputs.as_ref(),
            tx,
        )
        .await
    };
    tokio::select! {
        biased;
        () = tx.closed() => Ending::ClientGone,
        () = tokio::time::sleep_until(follow.deadline) => Ending::Detached,
        () = shutdown.triggered() => Ending::Detached,
        result = relayed => match result {
            Ok(()) => Ending::Finished(None),
            Err(Stop::ClientGone) => Ending::ClientGone,
            // The way to the sandbox broke, not the run.
            Err(Stop::Failed(ErrorKind::StreamCut | ErrorKind::Sandbox, message)) => {
                warn!(error = %message, "lost the run's event log; the run goes on");
                Ending::Detached
            }
            Err(stop) => Ending::Finished(Some(stop)),
        },
    }
}

/// Ends a reader's stream. A finished run's sandbox is destroyed (the
/// reader that sees the end does it) and leaves the registry.
async fn finish(
    ending: Ending,
    sandbox: Option<Arc<dyn Sandbox>>,
    follow: &Follow,
    tx: &mpsc::Sender<RunEvent>,
    registry: &Registry,
) {
    let stop = match ending {
        Ending::ClientGone => {
            info!("client went away; the detached run goes on");
            return;
        }
        Ending::Detached => {
            let detached = Detached {
                run_id: follow.run.run_id.clone(),
                // The stream's numbering fills this in.
                last_event_id: 0,
                resume: format!("/runs/{}/events", follow.run.run_id),
            };
            let _ = tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(RunEvent::Detached(detached)))
                .await;
            return;
        }
        Ending::Finished(stop) => stop,
    };
    let status = match stop {
        None => DoneStatus::Success,
        Some(Stop::ClientGone) => return,
        Some(Stop::Failed(kind, message)) => {
            let error = RunError {
                kind,
                message: follow.redactor.redact_str(&message),
                request_id: follow.request_id.clone(),
            };
            warn!(kind = ?error.kind, error = %error.message, "detached run failed");
            let _ = tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(RunEvent::Error(error))).await;
            DoneStatus::Error
        }
    };
    let sandbox = sandbox.or_else(|| registry.get(&follow.digest).map(|r| r.sandbox));
    if let Some(sandbox) = sandbox {
        linger(sandbox, follow, registry).await;
    }
    let done = RunEvent::Done(Done {
        status,
        request_id: follow.request_id.clone(),
    });
    let _ = tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(done)).await;
}

/// The end of a finished run's sandbox: in `follow.linger`, by the
/// provider's own clock, so that other readers can still read to the end
/// and nobody has to come back to destroy it; at once when there is no
/// linger or the provider cannot be told.
pub(crate) async fn linger(sandbox: Arc<dyn Sandbox>, follow: &Follow, registry: &Registry) {
    if !follow.linger.is_zero() {
        match sandbox.expire_in(follow.linger).await {
            Ok(()) => {
                info!(sandbox = sandbox.id(), linger = ?follow.linger, "run over; its sandbox ends after the linger");
                registry.expire_in(&follow.digest, follow.linger);
                return;
            }
            Err(e) => warn!(error = %e, "could not shorten the sandbox's lifetime; destroying it"),
        }
    }
    registry.remove(&follow.digest);
    super::destroy_logged(sandbox.as_ref(), &follow.request_id).await;
}

/// What a run's log adds up to, read whole: its status.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The events a reader gets from the log (not the `run`, `error` and
    /// `done` events around them).
    pub events: u64,
    /// `None` while the run goes on; then `Some(None)` when it succeeded,
    /// or the kind of its error.
    pub outcome: Option<Option<ErrorKind>>,
    /// The `result` message, once there is one.
    pub result: Option<serde_json::Value>,
    /// The model the SDK's init message names.
    pub model: Option<String>,
}

/// Replays `log` (the whole event log, as read) through the relay, as a
/// reader would, and adds up what comes out.
pub(crate) async fn tally(log: bytes::Bytes, follow: &Follow) -> Tally {
    let output = futures::stream::iter([Ok(crate::sandbox::ProcessEvent::Stdout(log))]).boxed();
    let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
    let redactor = follow.redactor.clone();
    let outputs = follow.outputs.clone();
    // `tx` goes with the relay, so the count ends when the relay does.
    let relayed =
        async move { super::relay(log::decode(output), &redactor, outputs.as_ref(), &tx).await };
    let counted = async {
        let mut tally = Tally::default();
        while let Some(event) = rx.recv().await {
            tally.events += 1;
            let RunEvent::Agent(line) = &event else {
                continue;
            };
            match crate::events::message_type(line).as_deref() {
                Some("result") if tally.result.is_none() => {
                    tally.result = serde_json::from_slice(line).ok();
                }
                Some("system") if tally.model.is_none() => {
                    let message: serde_json::Value =
                        serde_json::from_slice(line).unwrap_or_default();
                    if message["subtype"] == "init" {
                        tally.model = message["model"].as_str().map(str::to_owned);
                    }
                }
                _ => {}
            }
        }
        tally
    };
    let (relayed, mut tally) = tokio::join!(relayed, counted);
    tally.outcome = match relayed {
        Ok(()) => Some(None),
        // The log just stops: the run has not ended yet.
        Err(Stop::Failed(ErrorKind::StreamCut, _) | Stop::ClientGone) => None,
        Err(Stop::Failed(kind, _)) => Some(Some(kind)),
    };
    tally
}
