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
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{EVENT_BUFFER, FINAL_EVENT_GRACE, RunHandle, SandboxGuard, Stop, create_detached};
use crate::events::{
    Detached, Done, DoneNotes, DoneStatus, ErrorKind, Phase, Redactor, RunError, RunEvent,
    RunStarted, TurnStarted,
};
use crate::outputs::OutputPlan;
use crate::plan::{DetachPlan, RunPlan};
use crate::runs::log::{self, LogItem, LogStream};
use crate::runs::registry::{Registered, Registry};
use crate::sandbox::{Sandbox, SandboxProvider};
use crate::shutdown::Shutdown;
use crate::spend::Spend;

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
    /// How long the sandbox is kept after a turn for a follow-up (0: the
    /// run is over with its first turn).
    pub keep_alive: Duration,
    /// The turn whose end this reader waits for, at least.
    pub turn: u32,
    /// Its sandbox is paused while idle, and pauses rather than ends when
    /// its lifetime runs out.
    pub pauses: bool,
    /// The labels it was started with (`team_id`, ...), by name.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The credential variables in its sandbox, for its `system` events.
    pub credentials_in_sandbox: Vec<String>,
    /// Where its turns' ends are told, when this process knows (it
    /// started the run).
    pub notice: Option<crate::notify::NoticePlan>,
}

impl Follow {
    /// When the run's sandbox goes at the latest.
    pub(crate) fn ends_at(&self) -> std::time::SystemTime {
        humantime::parse_rfc3339(&self.run.expires_at)
            .unwrap_or_else(|_| std::time::SystemTime::now())
    }
}

/// What a detached run is started with besides its plan.
pub(super) struct Spawned {
    /// The detached runs of this process.
    pub registry: Registry,
    /// The run's root span.
    pub span: tracing::Span,
    /// Its completion webhook, if it has one.
    pub watch: Option<crate::notify::Watch>,
}

/// Starts a detached run on its own task, in its root span.
pub(super) fn spawn(
    provider: Arc<dyn SandboxProvider>,
    plan: RunPlan,
    detach: DetachPlan,
    shutdown: Shutdown,
    spawned: Spawned,
) -> RunHandle {
    let (tx, events) = mpsc::channel(EVENT_BUFFER);
    let Spawned {
        registry,
        span,
        watch,
    } = spawned;
    let finished = tokio::spawn(
        execute(provider, plan, detach, tx, shutdown, registry, watch).instrument(span),
    );
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
    mut plan: RunPlan,
    detach: DetachPlan,
    tx: mpsc::Sender<RunEvent>,
    mut shutdown: Shutdown,
    registry: Registry,
    watch: Option<crate::notify::Watch>,
) {
    // Only a provider that can pause keeps an idle run paused.
    plan.sandbox.pause_at_end &= provider.can_pause();
    if plan.sandbox.pause_at_end {
        plan.sandbox
            .metadata
            .insert(crate::runs::PAUSES_KEY.to_owned(), "1".to_owned());
    }
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
        keep_alive: detach.keep_alive,
        turn: 1,
        pauses: plan.sandbox.pause_at_end,
        labels: crate::runs::labels(&plan.sandbox.metadata),
        credentials_in_sandbox: plan.credentials_in_sandbox.clone(),
        notice: watch.as_ref().map(|w| w.plan.clone()),
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
            let ending = read(&sandbox, &follow, &tx, shutdown)
                .instrument(tracing::info_span!("relay"))
                .await;
            finish(ending, Some(sandbox), &follow, &tx, &registry).await;
        }
        Err(stop) => {
            guard
                .destroy()
                .instrument(tracing::info_span!("sandbox.destroy"))
                .await;
            registry.remove(&follow.digest);
            let first = LastTurn::first(&follow);
            finish(
                Ending::Finished(Some(stop), first),
                None,
                &follow,
                &tx,
                &registry,
            )
            .await;
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
    let sandbox = create_detached(provider, plan.sandbox.clone(), &plan.request_id)
        .instrument(tracing::info_span!("sandbox.create"))
        .await?;
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
    if let Some(recording) = &plan.recording {
        recording.sandbox(sandbox.id());
    }
    // The run's id once its sandbox exists: from here on any instance finds
    // the run by it, and the run no longer needs its client.
    let _ = tx.send(RunEvent::Run(follow.run.clone())).await;
    tracing::Span::current().set_attribute("sandstorm.sandbox.id", sandbox.id().to_owned());
    // Both steps begin now, together where the provider can (see
    // `Sandbox::upload_and_start`).
    progress(Phase::Uploading).await;
    progress(Phase::StartingAgent).await;
    let mut output = sandbox
        .upload_and_start(plan.files.clone(), plan.process.clone())
        .await?;
    // Drained so that a provider which ends a process with its stream (the
    // local one) keeps it; on E2B the process outlives the stream anyway.
    tokio::spawn(async move { while output.next().await.is_some() {} });
    Ok(sandbox)
}

/// The last turn a reader read.
#[derive(Debug, Clone)]
pub(crate) struct LastTurn {
    /// 1 for the run's first.
    pub number: u32,
    /// The request that began it, whose id its `error` and `done` carry.
    pub request_id: String,
    /// When it ended, as its exit record says.
    pub ended_at: Option<std::time::SystemTime>,
}

impl LastTurn {
    fn first(follow: &Follow) -> Self {
        LastTurn {
            number: 1,
            request_id: follow.request_id.clone(),
            ended_at: None,
        }
    }
}

/// How a reader's stream ended.
enum Ending {
    /// The run's last turn so far is over: successfully, or with the stop
    /// that ended it.
    Finished(Option<Stop>, LastTurn),
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
        let output = sandbox
            .start(log::follower(until, follow.turn))
            .await
            .map_err(Stop::from);
        match output {
            Ok(output) => {
                relay_turns(log::decode(output), follow, tx, Some(sandbox.as_ref())).await
            }
            Err(stop) => (Err(stop), LastTurn::first(follow)),
        }
    };
    tokio::select! {
        biased;
        () = tx.closed() => Ending::ClientGone,
        () = tokio::time::sleep_until(follow.deadline) => Ending::Detached,
        () = shutdown.triggered() => Ending::Detached,
        (result, last) = relayed => match result {
            Ok(()) => Ending::Finished(None, last),
            Err(Stop::ClientGone) => Ending::ClientGone,
            // The way to the sandbox broke, not the run.
            Err(Stop::Failed(ErrorKind::StreamCut | ErrorKind::Sandbox, message)) => {
                warn!(error = %message, "lost the run's event log; the run goes on");
                Ending::Detached
            }
            Err(stop) => Ending::Finished(Some(stop), last),
        },
    }
}

/// Relays every turn of a run's log, in order. A turn that another one
/// follows ends as its own stream did (its `error`, if any, and `done`,
/// with the tally `tallies` keeps of it), and the next begins with a
/// `turn` event. Returns how the last turn so far ended, and which it was.
async fn relay_turns(
    mut log: LogStream,
    follow: &Follow,
    tx: &mpsc::Sender<RunEvent>,
    tallies: Option<&dyn Sandbox>,
) -> (Result<(), Stop>, LastTurn) {
    let mut last = LastTurn::first(follow);
    loop {
        let ended = super::relay(
            log::turn(&mut log),
            &follow.redactor,
            follow.outputs.as_ref(),
            &follow.credentials_in_sandbox,
            tx,
        )
        .await;
        // Only a turn whose runner's exit was read can have a turn after
        // it; the rest stopped inside it.
        let exited = match &ended {
            Ok(()) => true,
            Err(Stop::Failed(kind, _)) => kind.ends_a_runner(),
            Err(Stop::ClientGone) => false,
        };
        if !exited {
            return (ended, last);
        }
        let request_id = loop {
            match log.next().await {
                None => return (ended, last),
                Some(Ok(LogItem::Ended(at))) => last.ended_at = Some(at),
                Some(Ok(LogItem::Turn(request_id))) => break request_id,
                // The decoder gives nothing else between turns.
                Some(Ok(LogItem::Runner(_))) => return (ended, last),
                Some(Err(e)) => return (Err(e.into()), last),
            }
        };
        let spend = turn_spend(tallies, last.number, true).await;
        for event in closing_events(ended.err(), follow, &last.request_id, spend) {
            if tx.send(event).await.is_err() {
                return (Err(Stop::ClientGone), last);
            }
        }
        last = LastTurn {
            number: last.number + 1,
            request_id,
            ended_at: None,
        };
        let turn = RunEvent::Turn(TurnStarted {
            run_id: follow.run.run_id.clone(),
            turn: last.number,
            request_id: last.request_id.clone(),
        });
        if tx.send(turn).await.is_err() {
            return (Err(Stop::ClientGone), last);
        }
    }
}

/// How long a reader at a turn's end waits for the model endpoint to say
/// its tally is final: it ends with the turn's wrapper, just after the
/// wrapper wrote the exit record the reader has read.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// The model endpoint's tally of turn `turn`, kept in the sandbox where the
/// agent cannot write ([`Sandbox::read_spend`]); `None` when the turn had
/// no metering endpoint. With `wait`, the final one if it comes within
/// [`RECORD_WAIT`].
async fn turn_spend(sandbox: Option<&dyn Sandbox>, turn: u32, wait: bool) -> Option<Spend> {
    let sandbox = sandbox?;
    let path = crate::spend::record_path(turn);
    let until = Instant::now() + if wait { RECORD_WAIT } else { Duration::ZERO };
    loop {
        let record = match sandbox.read_spend(&path).await {
            Ok(record) => record?,
            Err(e) => {
                warn!(error = %e, turn, "could not read the turn's spend record");
                return None;
            }
        };
        if record.complete || Instant::now() >= until {
            if wait && !record.complete {
                warn!(
                    turn,
                    "the model endpoint's tally is not final; reporting it as it is"
                );
            }
            return Some(record.spend);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The events that end a turn: its `error`, if it failed, and `done`,
/// with the endpoint's tally (`spend`), as an attached run's end: a cap
/// that refused a call is why the turn ended ([`super::budget_exceeded`]).
fn closing_events(
    stop: Option<Stop>,
    follow: &Follow,
    request_id: &str,
    spend: Option<Spend>,
) -> Vec<RunEvent> {
    let ended = match &stop {
        None | Some(Stop::ClientGone) => None,
        Some(Stop::Failed(kind, _)) => Some(*kind),
    };
    let stop = match super::budget_exceeded(ended, spend.as_ref()) {
        Some(message) => Some(Stop::Failed(ErrorKind::BudgetExceeded, message)),
        None => stop,
    };
    let mut events = Vec::with_capacity(2);
    let status = match stop {
        None | Some(Stop::ClientGone) => DoneStatus::Success,
        Some(Stop::Failed(kind, message)) => {
            events.push(RunEvent::Error(RunError {
                kind,
                message: follow.redactor.redact_str(&message),
                request_id: request_id.to_owned(),
            }));
            DoneStatus::Error
        }
    };
    events.push(RunEvent::Done(Done {
        status,
        request_id: request_id.to_owned(),
        sandstorm: spend.map(|spend| Box::new(DoneNotes { spend })),
    }));
    events
}

/// Ends a reader's stream. When the run's last turn so far is over, its
/// sandbox is kept for a follow-up or ends after the linger (the reader
/// that sees the end sees to it), before the `done`.
async fn finish(
    ending: Ending,
    sandbox: Option<Arc<dyn Sandbox>>,
    follow: &Follow,
    tx: &mpsc::Sender<RunEvent>,
    registry: &Registry,
) {
    let (stop, last) = match ending {
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
        Ending::Finished(Some(Stop::ClientGone), _) => return,
        Ending::Finished(stop, last) => (stop, last),
    };
    let spend = turn_spend(sandbox.as_deref(), last.number, true).await;
    let cancelled = matches!(stop, Some(Stop::Failed(ErrorKind::Cancelled, _)));
    if let Some(Stop::Failed(kind, message)) = &stop {
        warn!(?kind, error = %follow.redactor.redact_str(message), turn = last.number, "detached run's turn failed");
    }
    let mut closing = closing_events(stop, follow, &last.request_id, spend);
    let done = closing.pop();
    for event in closing {
        let _ = tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(event)).await;
    }
    let sandbox = sandbox.or_else(|| registry.get(&follow.digest).map(|r| r.sandbox));
    if let Some(sandbox) = sandbox {
        if follow.keep_alive.is_zero() || cancelled {
            linger(sandbox, follow, registry).await;
        } else {
            keep(sandbox, follow, registry, &last).await;
        }
    }
    if let Some(done) = done {
        let _ = tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(done)).await;
    }
}

/// The end of a finished run's sandbox: in `follow.linger`, by the
/// provider's own clock, so that other readers can still read to the end
/// and nobody has to come back to destroy it; at once when there is no
/// linger or the provider cannot be told.
pub(crate) async fn linger(sandbox: Arc<dyn Sandbox>, follow: &Follow, registry: &Registry) {
    // A sandbox that pauses at the end of its lifetime would be paused,
    // not ended, by one: it is ended at once.
    if !follow.linger.is_zero() && !follow.pauses {
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

/// Keeps an idle run's sandbox for `keep_alive` from the end of its last
/// turn (within the run's lifetime) so that a follow-up can come: the
/// sandbox's lifetime, by the provider's own clock, is set to end then.
/// Every reader that reaches the end sets the same end, so reading an idle
/// run does not lengthen it; one that comes after it is over ends it.
///
/// A follow-up may have begun the next turn meanwhile and set the lifetime
/// its turn needs; it claims the turn's marker before it does. So once the
/// lifetime is set here, a marker means that follow-up may have come
/// first, and its lifetime (which the marker holds) is set again.
async fn keep(sandbox: Arc<dyn Sandbox>, follow: &Follow, registry: &Registry, last: &LastTurn) {
    let now = std::time::SystemTime::now();
    let idle_ends = last.ended_at.map_or(now, |ended| ended.min(now)) + follow.keep_alive;
    let keep = idle_ends
        .min(follow.ends_at())
        .duration_since(now)
        .unwrap_or_default();
    let turn = last.number;
    if keep.is_zero() {
        return linger(sandbox, follow, registry).await;
    }
    // A sandbox that pauses at its end runs on only for the linger, so
    // that readers can read the end, then pauses; a follow-up or a reader
    // resumes it, and whoever finds it paused past `keep_alive` ends it
    // (`runs::reap`). The registry cannot reach it paused.
    let running = if follow.pauses {
        registry.remove(&follow.digest);
        keep.min(follow.linger.max(Duration::from_secs(1)))
    } else {
        keep
    };
    if let Err(e) = sandbox.expire_in(running).await {
        warn!(error = %e, "could not keep the sandbox for a follow-up; ending the run");
        return linger(sandbox, follow, registry).await;
    }
    if !follow.pauses {
        registry.set_expiry(&follow.digest, keep);
    }
    info!(
        sandbox = sandbox.id(),
        ?keep,
        paused_after = ?follow.pauses.then_some(running),
        turn,
        "turn over; the sandbox is kept for a follow-up"
    );
    if let Ok(marker) = sandbox.read_file(&log::turn_marker(turn + 1)).await {
        let next_turn_ends = std::str::from_utf8(&marker)
            .ok()
            .and_then(|secs| secs.trim().parse::<u64>().ok())
            .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs));
        if let Some(lifetime) =
            next_turn_ends.and_then(|ends| ends.duration_since(std::time::SystemTime::now()).ok())
        {
            if let Err(e) = sandbox.expire_in(lifetime).await {
                warn!(error = %e, "could not give the next turn its lifetime back");
            }
            registry.set_expiry(&follow.digest, lifetime);
        }
    }
}

/// What a run's log adds up to, read whole: its status.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The events a reader gets from the log after the `run` event, up to
    /// the last turn's own closing events (not counted).
    pub events: u64,
    /// How the last turn ended: `None` while it goes on; then `Some(None)`
    /// when it succeeded, or the kind of its error.
    pub outcome: Option<Option<ErrorKind>>,
    /// How many turns the run has had.
    pub turns: u32,
    /// The results' `num_turns`, summed over the run's turns.
    pub num_turns: Option<u64>,
    /// The results' `total_cost_usd`, summed over the run's turns.
    pub total_cost_usd: Option<f64>,
    /// The model the SDK's first init message names.
    pub model: Option<String>,
    /// The SDK session of the last turn, which a follow-up resumes.
    pub session_id: Option<String>,
}

impl Tally {
    fn count(&mut self, event: &RunEvent) {
        self.events += 1;
        let RunEvent::Agent(line) = event else {
            return;
        };
        match crate::events::message_type(line).as_deref() {
            Some("result") => {
                let result: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                if let Some(turns) = result["num_turns"].as_u64() {
                    *self.num_turns.get_or_insert(0) += turns;
                }
                if let Some(cost) = result["total_cost_usd"].as_f64() {
                    *self.total_cost_usd.get_or_insert(0.0) += cost;
                }
            }
            Some("system") => {
                let message: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                if message["subtype"] == "init" {
                    if self.model.is_none() {
                        self.model = message["model"].as_str().map(str::to_owned);
                    }
                    if let Some(session) = message["session_id"].as_str() {
                        self.session_id = Some(session.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
}

/// Replays `log` (the whole event log, as read) through the relay, as a
/// reader would, with the turns' tallies from `sandbox`, and adds up what
/// comes out.
pub(crate) async fn tally(log: bytes::Bytes, follow: &Follow, sandbox: &dyn Sandbox) -> Tally {
    replay(log, follow, sandbox, &mut |_| {}).await
}

/// [`tally`], handing `observe` every event a reader that read the log to
/// its end would get, the last turn's own `error` and `done` among them
/// once that turn has ended.
pub(crate) async fn replay(
    log: bytes::Bytes,
    follow: &Follow,
    sandbox: &dyn Sandbox,
    observe: &mut (dyn FnMut(&RunEvent) + Send),
) -> Tally {
    let output = futures::stream::iter([Ok(crate::sandbox::ProcessEvent::Stdout(log))]).boxed();
    let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
    let relaying = follow.clone();
    // `tx` goes with the relay, so the count ends when the relay does.
    let relayed =
        async move { relay_turns(log::decode(output), &relaying, &tx, Some(sandbox)).await };
    let counted = async {
        let mut tally = Tally::default();
        while let Some(event) = rx.recv().await {
            tally.count(&event);
            observe(&event);
        }
        tally
    };
    let ((relayed, last), mut tally) = tokio::join!(relayed, counted);
    tally.turns = last.number;
    let stop = match relayed {
        Ok(()) => Some(None),
        // The log just stops: the turn has not ended yet.
        Err(Stop::Failed(ErrorKind::StreamCut, _) | Stop::ClientGone) => None,
        Err(stop @ Stop::Failed(..)) => Some(Some(stop)),
    };
    tally.outcome = stop.as_ref().map(|stop| match stop {
        Some(Stop::Failed(kind, _)) => Some(*kind),
        _ => None,
    });
    let Some(stop) = stop else {
        return tally;
    };
    // The last turn's end, as its readers tell it.
    let spend = turn_spend(Some(sandbox), last.number, false).await;
    if let Some(ended) = tally.outcome
        && super::budget_exceeded(ended, spend.as_ref()).is_some()
    {
        tally.outcome = Some(Some(ErrorKind::BudgetExceeded));
    }
    for event in closing_events(stop, follow, &last.request_id, spend) {
        observe(&event);
    }
    tally
}
