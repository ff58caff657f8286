//! One run: create → upload and start → relay → destroy.
//!
//! [`spawn`] starts a run on its own task and returns the receiving end of a
//! bounded channel of [`RunEvent`]s. The task ends every path out (success,
//! runner failure, provider fault, deadline, client gone) by destroying the
//! sandbox exactly once, then sends the final `done` event and closes the
//! channel, so on Lambda the sandbox is gone before the response ends. A
//! [`SandboxGuard`] backs that up if the task itself is dropped.
//!
//! What the runner prints is held to the run's [`shape`]: one terminal
//! event, output files only after the `result`, no event type the server
//! owns.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::events::{
    Done, DoneNotes, DoneStatus, ErrorKind, Phase, Redactor, RunError, RunEvent, message_type,
};
use crate::history::History;
use crate::lines::LineSplitter;
use crate::outputs::{OutputCheck, OutputPlan, Vetted};
use crate::plan::RunPlan;
use crate::runs::registry::Registry;
use crate::sandbox::{ProcessEvent, Sandbox, SandboxError, SandboxProvider, SandboxSpec};
use crate::shutdown::Shutdown;
use crate::spend::Spend;
use crate::telemetry;

pub(crate) mod detached;
mod queue;
pub(crate) mod shape;
pub(crate) mod watch;

use shape::{Admitted, Shape};

/// How many events may wait for a slow client before the relay pauses.
/// Bounded: a slow client slows the sandbox's output, nothing is dropped.
/// The relay also bounds their bytes ([`queue`]).
pub(crate) const EVENT_BUFFER: usize = 64;
/// How deep the channel is through which a tap (a task that watches a
/// run's events on their way to its client: history, notices, telemetry,
/// follow-up turns, replays) passes them on. The run's own queue is where
/// events wait for a slow client; a deep queue in every tap as well would
/// only multiply what a stalled stream holds.
pub(crate) const TAP_BUFFER: usize = 4;
/// How many stderr lines an error event quotes.
const STDERR_TAIL: usize = 20;
/// What a run ended by the server's shutdown bound tells its client.
const SHUTDOWN_MESSAGE: &str = "the server is shutting down and could not wait for the run to end";
/// How long a final error event may wait for a client that is not reading.
pub(crate) const FINAL_EVENT_GRACE: Duration = Duration::from_secs(1);

/// A started run.
pub(crate) struct RunHandle {
    /// The run's events; dropping this ends the run (the sandbox is destroyed).
    pub events: mpsc::Receiver<RunEvent>,
    /// Resolves once the sandbox is destroyed. Servers let it run on; the CLI
    /// waits for it so that Ctrl-C never leaves a sandbox behind.
    pub finished: tokio::task::JoinHandle<()>,
}

/// Starts a run on its own task. `shutdown` ends it early, with an `error`
/// event of type `shutdown`, when the server can wait no longer.
/// A detached plan runs as [`detached`] says, known to `registry`.
pub(crate) fn spawn(
    provider: Arc<dyn SandboxProvider>,
    mut plan: RunPlan,
    shutdown: Shutdown,
    registry: Registry,
    history: &History,
) -> RunHandle {
    let started = Instant::now();
    let span = telemetry::run::span(&run_facts(&plan, provider.name()), &plan.trace_parent);
    // The agent's own tracing joins the run's trace.
    plan.process
        .envs
        .extend(telemetry::context::to_env(&span.context()));
    let watch = plan.notice.take().map(|notice| crate::notify::Watch {
        plan: notice,
        subject: subject(&plan),
    });
    let recording = history.begin(plan.record.take());
    plan.recording.clone_from(&recording);
    // Read to each turn's end by this process, where it stays.
    let kept = plan
        .detach
        .as_ref()
        .filter(|d| d.watched)
        .map(|d| watch::Reread {
            registry: registry.clone(),
            digest: d.run.digest(),
            turn: 1,
            recording: recording.clone(),
            watch: watch.clone(),
        });
    let attached = plan.detach.is_none();
    let handle = if let Some(detach) = plan.detach.take() {
        let spawned = detached::Spawned {
            registry,
            span: span.clone(),
            watch: watch.clone(),
        };
        detached::spawn(provider, plan, detach, shutdown, spawned)
    } else {
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let finished = tokio::spawn(execute(provider, plan, tx, shutdown).instrument(span.clone()));
        RunHandle { events, finished }
    };
    let handle = crate::history::tap::tap(recording, handle);
    // The notice's tap is outside the history's: the history has the end
    // before the notice goes, so a receiver that reads the run back finds
    // it ended. An attached run whose client left is told so.
    let handle = crate::notify::tap(watch, handle, attached);
    let handle = match kept {
        Some(reread) => watch::keep_reading(handle, reread),
        None => handle,
    };
    telemetry::run::traced(span, handle, started)
}

/// Which run a notice tells of: a detached run by its id, an attached one
/// by its record's (or a fresh one, when it has no record).
fn subject(plan: &RunPlan) -> crate::notify::notice::Subject {
    let run_id = plan
        .detach
        .as_ref()
        .map(|d| d.run.to_string())
        .or_else(|| plan.record.as_ref().map(|r| r.run_id.clone()))
        .or_else(|| {
            crate::run_id::RunId::generate()
                .ok()
                .map(|id| id.to_string())
        })
        .unwrap_or_else(|| plan.request_id.clone());
    let started = plan
        .detach
        .as_ref()
        .and_then(|d| humantime::parse_rfc3339_weak(&d.created_at).ok())
        .unwrap_or_else(std::time::SystemTime::now);
    crate::notify::notice::Subject {
        run_id,
        request_id: plan.request_id.clone(),
        detached: plan.detach.is_some(),
        started,
        labels: crate::runs::labels(&plan.sandbox.metadata),
    }
}

/// What the run's root span starts with.
fn run_facts(plan: &RunPlan, provider: &'static str) -> telemetry::run::RunFacts {
    let model = plan
        .files
        .iter()
        .find(|f| f.path == crate::sandbox::layout::AGENT_CONFIG)
        .and_then(|f| serde_json::from_slice::<serde_json::Value>(&f.content).ok())
        .and_then(|config| config["model"].as_str().map(str::to_owned));
    telemetry::run::RunFacts {
        request_id: plan.request_id.clone(),
        run_id: plan
            .detach
            .as_ref()
            .map(|d| d.run.to_string())
            .or_else(|| plan.record.as_ref().map(|r| r.run_id.clone())),
        provider,
        model,
        prompt: plan.traced_prompt.clone(),
        detached: plan.detach.is_some(),
    }
}

/// How a run ended, for the log and the final event.
enum Outcome {
    Completed,
    ClientGone,
    Failed(RunError),
}

async fn execute(
    provider: Arc<dyn SandboxProvider>,
    plan: RunPlan,
    tx: mpsc::Sender<RunEvent>,
    mut shutdown: Shutdown,
) {
    let started = Instant::now();
    let mut guard = SandboxGuard::new(plan.request_id.clone());
    let fail = |kind, message: String| {
        Outcome::Failed(RunError {
            kind,
            message: plan.redactor.redact_str(&message),
            request_id: plan.request_id.clone(),
        })
    };

    let outcome = tokio::select! {
        biased;
        () = tx.closed() => Outcome::ClientGone,
        () = tokio::time::sleep_until(plan.deadline) => {
            fail(ErrorKind::Timeout, plan.deadline_reason.clone())
        }
        () = shutdown.triggered() => fail(ErrorKind::Shutdown, SHUTDOWN_MESSAGE.to_owned()),
        result = drive(&provider, &plan, &tx, &mut guard) => match result {
            Ok(()) => Outcome::Completed,
            Err(Stop::ClientGone) => Outcome::ClientGone,
            Err(Stop::Failed(kind, message)) => fail(kind, message),
        },
    };

    let spend = plan.process.spend.as_ref().map(|meter| meter.spend());
    let ended = match &outcome {
        Outcome::Completed => Some(None),
        Outcome::Failed(e) => Some(Some(e.kind)),
        Outcome::ClientGone => None,
    };
    let outcome = match ended.and_then(|ended| budget_exceeded(ended, spend.as_ref())) {
        Some(message) => fail(ErrorKind::BudgetExceeded, message),
        None => outcome,
    };

    match &outcome {
        Outcome::Completed => info!(elapsed = ?started.elapsed(), "run completed"),
        Outcome::ClientGone => info!(elapsed = ?started.elapsed(), "client went away"),
        Outcome::Failed(e) => warn!(kind = ?e.kind, error = %e.message, "run failed"),
    }
    let status = match outcome {
        Outcome::ClientGone => None,
        Outcome::Completed => Some(DoneStatus::Success),
        Outcome::Failed(error) => {
            // The client may have stopped reading; do not let it hold the
            // sandbox alive.
            let _ = tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(RunEvent::Error(error))).await;
            Some(DoneStatus::Error)
        }
    };
    guard
        .destroy()
        .instrument(info_span!("sandbox.destroy"))
        .await;
    if let Some(status) = status {
        let done = RunEvent::Done(Done {
            status,
            request_id: plan.request_id.clone(),
            sandstorm: spend.map(|spend| Box::new(DoneNotes { spend })),
        });
        let _ = tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(done)).await;
    }
    // Dropping `tx` here ends the client's stream, after the destroy.
}

/// Whether a run (or a detached run's turn) that ended so (`None`: it
/// succeeded) ends with `budget_exceeded` instead, given the endpoint's
/// tally: a cap that refused a call is why it ended, whatever the agent
/// made of the refusal. The error's message when it does.
pub(crate) fn budget_exceeded(ended: Option<ErrorKind>, spend: Option<&Spend>) -> Option<String> {
    let message = spend?.exceeded_message()?;
    match ended {
        None | Some(ErrorKind::RunnerFailed | ErrorKind::RunnerError) => Some(message),
        Some(_) => None,
    }
}

/// Why the relay stopped early.
#[derive(Debug, Clone)]
enum Stop {
    ClientGone,
    Failed(ErrorKind, String),
}

impl From<SandboxError> for Stop {
    fn from(e: SandboxError) -> Self {
        let kind = match e {
            SandboxError::StreamCut => ErrorKind::StreamCut,
            _ => ErrorKind::Sandbox,
        };
        Stop::Failed(kind, e.to_string())
    }
}

async fn drive(
    provider: &Arc<dyn SandboxProvider>,
    plan: &RunPlan,
    tx: &mpsc::Sender<RunEvent>,
    guard: &mut SandboxGuard,
) -> Result<(), Stop> {
    let progress = |phase| async move {
        tx.send(RunEvent::Progress(phase))
            .await
            .map_err(|_| Stop::ClientGone)
    };
    progress(Phase::CreatingSandbox).await?;
    let sandbox = create_detached(provider, plan.sandbox.clone(), &plan.request_id)
        .instrument(info_span!("sandbox.create"))
        .await?;
    // No await between receiving the sandbox and arming the guard: a
    // cancellation cannot slip in and lose it.
    guard.arm(sandbox.clone());
    info!(
        sandbox = sandbox.id(),
        provider = provider.name(),
        "sandbox created"
    );
    if let Some(recording) = &plan.recording {
        recording.sandbox(sandbox.id());
    }
    tracing::Span::current().set_attribute("sandstorm.sandbox.id", sandbox.id().to_owned());

    // Both steps begin now: the upload and the start go out together
    // where the provider can send them so.
    progress(Phase::Uploading).await?;
    progress(Phase::StartingAgent).await?;
    // Its `sandbox.upload` and `sandbox.start` spans are the provider's.
    let output = sandbox
        .upload_and_start(plan.files.clone(), plan.process.clone())
        .await?;
    relay(
        output,
        &plan.redactor,
        plan.outputs.as_ref(),
        &plan.credentials_in_sandbox,
        tx,
    )
    .instrument(info_span!("relay"))
    .await
}

/// Creates a sandbox on its own task. If the run is abandoned meanwhile
/// (client gone, deadline), the task still learns the new sandbox's id and
/// destroys it, so a create in flight can never leak a sandbox.
async fn create_detached(
    provider: &Arc<dyn SandboxProvider>,
    spec: SandboxSpec,
    request_id: &str,
) -> Result<Arc<dyn Sandbox>, SandboxError> {
    let (tx, rx) = oneshot::channel();
    let provider = provider.clone();
    let request_id = request_id.to_owned();
    tokio::spawn(async move {
        let result = provider.create(spec).await;
        if let Err(Ok(sandbox)) = tx.send(result) {
            info!(%request_id, sandbox = sandbox.id(), "run abandoned during create; destroying");
            destroy_logged(sandbox.as_ref(), &request_id).await;
        }
    });
    rx.await.unwrap_or_else(|_| {
        Err(SandboxError::Other {
            op: "create",
            message: "the create task ended without an answer".into(),
        })
    })
}

/// Turns process output into events until the process exits.
async fn relay(
    mut output: futures::stream::BoxStream<'_, Result<ProcessEvent, SandboxError>>,
    redactor: &Redactor,
    outputs: Option<&OutputPlan>,
    credentials_in_sandbox: &[String],
    tx: &mpsc::Sender<RunEvent>,
) -> Result<(), Stop> {
    let mut queue = queue::Queue::new(tx);
    let mut stdout = LineSplitter::new();
    let mut stderr = LineSplitter::new();
    let mut stderr_tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL);
    let mut agent = AgentState::new(OutputCheck::new(outputs), credentials_in_sandbox);
    // From the agent's result to the runner's exit: the output files.
    let mut outputs_span = None;

    while let Some(event) = output.next().await {
        match event? {
            ProcessEvent::Stdout(chunk) => {
                stdout.feed(&chunk).map_err(too_long)?;
                // The splitter holds a copy; free the chunk before waiting
                // on a slow client. Lines are taken one at a time, so while
                // one waits the rest stay in that copy, not in one of their
                // own as well.
                drop(chunk);
                while let Some(line) = stdout.next_line() {
                    if let Some(event) = agent.accept(line, redactor) {
                        telemetry::run::agent_message(&event);
                        if outputs.is_some() && outputs_span.is_none() && agent.saw_result {
                            outputs_span = Some(info_span!("outputs"));
                        }
                        queue.send(event).await.map_err(|_| Stop::ClientGone)?;
                    }
                }
            }
            ProcessEvent::Stderr(chunk) => {
                stderr.feed(&chunk).map_err(too_long)?;
                drop(chunk);
                while let Some(line) = stderr.next_line() {
                    if let Some(event) = stderr_event(&line, redactor, &mut stderr_tail) {
                        queue.send(event).await.map_err(|_| Stop::ClientGone)?;
                    }
                }
            }
            ProcessEvent::Exited(status) => {
                if let Some(line) = stdout.finish()
                    && let Some(event) = agent.accept(line, redactor)
                {
                    queue.send(event).await.map_err(|_| Stop::ClientGone)?;
                }
                if let Some(line) = stderr.finish()
                    && let Some(event) = stderr_event(&line, redactor, &mut stderr_tail)
                {
                    queue.send(event).await.map_err(|_| Stop::ClientGone)?;
                }
                return agent.verdict(&status, &stderr_tail);
            }
        }
    }
    Err(SandboxError::StreamCut.into())
}

fn too_long(e: crate::lines::LineTooLong) -> Stop {
    Stop::Failed(ErrorKind::OutputTooLarge, e.to_string())
}

fn stderr_event(line: &[u8], redactor: &Redactor, tail: &mut VecDeque<String>) -> Option<RunEvent> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if text.trim().is_empty() {
        return None;
    }
    let text = redactor.redact_str(text);
    if tail.len() == STDERR_TAIL {
        tail.pop_front();
    }
    tail.push_back(text.clone());
    Some(RunEvent::Stderr(text))
}

/// What the relay has learned from the runner's lines.
struct AgentState {
    /// Which lines may pass, given those before.
    shape: Shape,
    saw_result: bool,
    /// The runner's own `{"type":"error"}` line: held back and turned into
    /// the run's single error event, which carries the request id.
    runner_error: Option<String>,
    /// The check on output files and warnings.
    outputs: OutputCheck,
    /// The credential variables in the sandbox, told in the first `system`
    /// event's `sandstorm` field; `None` once told, or when there are none.
    credentials_in_sandbox: Option<Vec<String>>,
}

impl AgentState {
    fn new(outputs: OutputCheck, credentials_in_sandbox: &[String]) -> Self {
        AgentState {
            shape: Shape::default(),
            saw_result: false,
            runner_error: None,
            outputs,
            credentials_in_sandbox: (!credentials_in_sandbox.is_empty())
                .then(|| credentials_in_sandbox.to_vec()),
        }
    }

    /// The event for one stdout line, if it passes.
    fn accept(&mut self, line: bytes::Bytes, redactor: &Redactor) -> Option<RunEvent> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let kind = message_type(&line);
        let admitted = match self.shape.admit(kind.as_deref()) {
            Ok(admitted) => admitted,
            Err(why) => {
                if let Some((event_type, reason)) = self.shape.loggable(kind.as_deref(), why) {
                    warn!(event_type, reason, "dropped a runner line");
                }
                return None;
            }
        };
        let line = match admitted {
            Admitted::Message if kind.as_deref() == Some("system") => self.told(line),
            Admitted::Message => line,
            Admitted::Result => {
                self.saw_result = true;
                line
            }
            Admitted::RunnerError => {
                self.runner_error = Some(runner_error_message(&line));
                return None;
            }
            Admitted::File => vetted(self.outputs.file(&line, redactor))?,
            Admitted::Warning => vetted(OutputCheck::warning(&line))?,
            // Not an SDK message (a stray print): keep it, as a JSON event,
            // so clients that parse every event as JSON do not break.
            Admitted::Stray => {
                let text = redactor.redact_str(&String::from_utf8_lossy(&line));
                serde_json::to_vec(&serde_json::json!({"type": "stdout", "data": text}))
                    .map_or_else(|_| bytes::Bytes::new(), bytes::Bytes::from)
            }
        };
        Some(RunEvent::Agent(redactor.redact(line)))
    }

    /// `line` (a `system` event), with `sandstorm.credentials_in_sandbox`
    /// added when it is the session's `init` and credentials went in.
    fn told(&mut self, line: bytes::Bytes) -> bytes::Bytes {
        let Some(names) = &self.credentials_in_sandbox else {
            return line;
        };
        #[derive(serde::Deserialize)]
        struct Init {
            subtype: Option<String>,
        }
        let Ok(init) = serde_json::from_slice::<Init>(&line) else {
            return line;
        };
        if init.subtype.as_deref() != Some("init") {
            return line;
        }
        let body = line.trim_ascii_end();
        let Some(open) = body.strip_suffix(b"}") else {
            return line;
        };
        // Added at the end, so the SDK's own bytes stay as they were, and
        // a `sandstorm` field already there (the agent's word) is
        // overridden: JSON readers keep a repeated key's last value.
        let field = serde_json::json!({ "credentials_in_sandbox": names });
        let mut told = Vec::with_capacity(line.len() + 64);
        told.extend_from_slice(open);
        told.extend_from_slice(b",\"sandstorm\":");
        told.extend_from_slice(field.to_string().as_bytes());
        told.push(b'}');
        self.credentials_in_sandbox = None;
        bytes::Bytes::from(told)
    }

    fn verdict(
        &self,
        status: &crate::sandbox::ExitStatus,
        stderr_tail: &VecDeque<String>,
    ) -> Result<(), Stop> {
        if self.shape.dropped() > 0 {
            warn!(
                dropped = self.shape.dropped(),
                "the runner printed lines outside the run's shape; they were not relayed"
            );
        }
        if let Some(message) = &self.runner_error {
            return Err(Stop::Failed(ErrorKind::RunnerError, message.clone()));
        }
        // A cancel that came after the result is too late to matter.
        if status.status == crate::runs::log::CANCELLED && !self.saw_result {
            return Err(Stop::Failed(
                ErrorKind::Cancelled,
                crate::runs::log::CANCELLED.to_owned(),
            ));
        }
        if status.status == crate::runs::log::TIMED_OUT {
            return Err(Stop::Failed(
                ErrorKind::Timeout,
                "the run exceeded its timeout".to_owned(),
            ));
        }
        if !status.success() {
            let code = status
                .code
                .map_or_else(|| status.status.clone(), |c| format!("code {c}"));
            let mut message = format!("the agent runner exited with {code}");
            if let Some(cap) = cap_reached(status, stderr_tail) {
                message.push_str("; ");
                message.push_str(cap);
            }
            if !stderr_tail.is_empty() {
                message.push_str("; last stderr lines:\n");
                message.push_str(&Vec::from(stderr_tail.clone()).join("\n"));
            }
            return Err(Stop::Failed(ErrorKind::RunnerFailed, message));
        }
        if !self.saw_result {
            return Err(Stop::Failed(
                ErrorKind::RunnerFailed,
                "the agent runner exited without a result".into(),
            ));
        }
        Ok(())
    }
}

/// Which of the sandbox's caps ended the runner, when its end says so: the
/// signals the kernel sends at a resource limit, or an allocation failure
/// in its last words.
fn cap_reached(
    status: &crate::sandbox::ExitStatus,
    stderr_tail: &VecDeque<String>,
) -> Option<&'static str> {
    if status.status.contains("CPU time limit exceeded") {
        return Some("it reached the sandbox's CPU time cap (limits.cpu_seconds)");
    }
    if status.status.contains("file size limit exceeded") {
        return Some("it reached the sandbox's file size cap (limits.disk_mb)");
    }
    let out_of_memory = stderr_tail.iter().any(|line| {
        let line = line.to_ascii_lowercase();
        line.contains("out of memory") || line.contains("cannot allocate memory")
    });
    out_of_memory.then_some("it ran out of memory: the sandbox's memory cap is limits.memory_mb")
}

/// The event an output line becomes, logging what is not sent as is.
fn vetted(vetted: Vetted) -> Option<bytes::Bytes> {
    match vetted {
        Vetted::Send(event) => Some(event),
        Vetted::Withheld { warning, reason } => {
            warn!(reason, "withheld an output file; the client gets a warning");
            Some(warning)
        }
        Vetted::Dropped(reason) => {
            warn!(reason, "dropped an output line from the runner");
            None
        }
    }
}

/// The message of a runner error line: `error` as a string, or
/// `error.message`.
fn runner_error_message(line: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    let error = &value["error"];
    error
        .as_str()
        .or_else(|| error["message"].as_str())
        .unwrap_or("the agent runner failed")
        .to_owned()
}

/// Destroys its sandbox exactly once: explicitly through [`destroy`], or on
/// drop (a panic, a cancelled task) from a spawned task.
///
/// [`destroy`]: SandboxGuard::destroy
pub(crate) struct SandboxGuard {
    sandbox: Option<Arc<dyn Sandbox>>,
    request_id: String,
}

impl SandboxGuard {
    pub(crate) fn new(request_id: String) -> Self {
        SandboxGuard {
            sandbox: None,
            request_id,
        }
    }

    pub(crate) fn arm(&mut self, sandbox: Arc<dyn Sandbox>) {
        telemetry::metrics::metrics().sandboxes_alive.add(1, &[]);
        self.sandbox = Some(sandbox);
    }

    /// Leaves the sandbox running: a detached run's end, whoever reads it,
    /// ends the sandbox (after the linger).
    pub(crate) fn release(mut self) {
        // The sandbox lives on; whoever ends it no longer counts here.
        if self.sandbox.take().is_some() {
            telemetry::metrics::metrics().sandboxes_alive.add(-1, &[]);
        }
    }

    pub(crate) async fn destroy(mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            telemetry::metrics::metrics().sandboxes_alive.add(-1, &[]);
            destroy_logged(sandbox.as_ref(), &self.request_id).await;
        }
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            telemetry::metrics::metrics().sandboxes_alive.add(-1, &[]);
            let request_id = std::mem::take(&mut self.request_id);
            // Outside a runtime (process exit) there is nothing left to run
            // the destroy on; the provider's own lifetime limit reaps it.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { destroy_logged(sandbox.as_ref(), &request_id).await });
            }
        }
    }
}

async fn destroy_logged(sandbox: &dyn Sandbox, request_id: &str) {
    match sandbox.destroy().await {
        Ok(()) => info!(%request_id, sandbox = sandbox.id(), "sandbox destroyed"),
        Err(e) => {
            warn!(%request_id, sandbox = sandbox.id(), error = %e, "destroying the sandbox failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::ExitStatus;

    fn ended(status: &str) -> ExitStatus {
        ExitStatus {
            code: None,
            status: status.to_owned(),
        }
    }

    #[test]
    fn a_cap_that_ended_the_runner_is_named() {
        let none = VecDeque::new();
        let cpu = cap_reached(&ended("signal: CPU time limit exceeded"), &none);
        assert!(cpu.is_some_and(|m| m.contains("limits.cpu_seconds")));
        let file = cap_reached(&ended("signal: file size limit exceeded"), &none);
        assert!(file.is_some_and(|m| m.contains("limits.disk_mb")));
        let oom = VecDeque::from([
            "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory"
                .to_owned(),
        ]);
        let memory = cap_reached(&ended("signal: aborted"), &oom);
        assert!(memory.is_some_and(|m| m.contains("limits.memory_mb")));
        assert_eq!(cap_reached(&ended("exit status 1"), &none), None);
    }
}
