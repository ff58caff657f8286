//! Starting a process in an E2B sandbox without its model key.
//!
//! A process whose environment holds a model key (the runner, or a
//! detached run's wrapper around it) is started in two steps. First the
//! process itself, as `user`, with the environment a local sandbox's
//! process gets ([`split`]): a fresh placeholder token where the key was
//! and `ANTHROPIC_BASE_URL` pointing at the model proxy's port, or for a
//! cloud provider (Bedrock, Vertex, Foundry) none of its credentials, its
//! skip-auth switch, and its base URL variable pointing there with the
//! token in the path. Then the template's model proxy
//! ([`crate::model_proxy`]), as root, with what the route is made from
//! (the real credential, a cloud's region and endpoint, the Vertex key
//! file's contents), the token, the run's caps, and the pid of the process
//! it serves, whose end ends it. That second start needs the first's pid,
//! so it cannot go out with it; for a process whose stream is read (an
//! attached run's runner) it goes out from a task of its own while the
//! output already flows, so the first event waits for neither envd's
//! spawn nor the round trip. A detached turn's wrapper, whose stream
//! nobody reads, waits for it, so that a proxy that cannot start fails the
//! turn's start where the turn records why. The runner's first model call
//! comes after the SDK has loaded, well after the proxy listens; one that
//! came sooner would be retried by the SDK like any refused connection. A
//! proxy that cannot start ends the process's stream with an error that
//! says why.
//!
//! The proxy's own stream is read when the process ends: its last line is
//! the spend it counted, which goes into the run's meter before the
//! process's end is passed on, so the run reports the proxy's tally and
//! why it stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::E2bSandbox;
use super::envd::RunAs;
use crate::model_proxy::{
    BINARY, CALLBACK_TOKEN_VARIABLE, CALLBACK_URL_VARIABLE, CAPS_VARIABLE, CapsJson, LISTEN,
    RECORD_VARIABLE, Report, TOKEN_VARIABLE, WATCH_PID_VARIABLE, split,
};
use crate::sandbox::{ProcessEvent, ProcessSpec, ProcessStream, SandboxError};
use crate::spend::prices::PRICES_VARIABLE;
use crate::spend::{SpendMeter, SpendRecord};

/// The most of the proxy's stderr that is logged.
const MAX_SAID: usize = 4096;

/// How long the proxy has, once its process ended, to report and exit.
const REPORT_WAIT: Duration = Duration::from_secs(5);

/// Starts `process` keyless when it holds a model key, as the module doc
/// says; as it is otherwise.
pub(super) async fn start(
    sandbox: &E2bSandbox,
    mut process: ProcessSpec,
) -> Result<ProcessStream, SandboxError> {
    // The route made here only checks the configuration; the proxy makes
    // its own from the same variables.
    let split = split(
        &mut process.envs,
        &format!("http://{LISTEN}"),
        &sandbox.shared.vertex,
        None,
    )
    .map_err(|message| SandboxError::Other {
        op: "start",
        message,
    })?;
    let Some(split) = split else {
        return sandbox.start_process(process).await;
    };
    let mut proxy_env: BTreeMap<String, String> = split.config;
    proxy_env.insert(TOKEN_VARIABLE.to_owned(), split.token);
    let meter = process.spend.clone();
    if let Some(meter) = &meter {
        let caps = serde_json::to_string(&CapsJson::from(meter.caps())).map_err(|e| {
            SandboxError::Other {
                op: "start",
                message: e.to_string(),
            }
        })?;
        proxy_env.insert(CAPS_VARIABLE.to_owned(), caps);
        if let Some(prices) = meter.prices().overrides_json() {
            proxy_env.insert(PRICES_VARIABLE.to_owned(), prices);
        }
    }
    if let Some(record) = &process.spend_record {
        proxy_env.insert(RECORD_VARIABLE.to_owned(), record.clone());
    }
    // The turn's end is the proxy's to tell: the agent cannot read its
    // environment.
    let calls_back = process.callback.is_some();
    if let Some(callback) = process.callback.take() {
        proxy_env.insert(CALLBACK_URL_VARIABLE.to_owned(), callback.url);
        proxy_env.insert(
            CALLBACK_TOKEN_VARIABLE.to_owned(),
            callback.token.expose().to_owned(),
        );
    }
    // A proxy that calls the server back when its process ends outlives
    // it by the call's time (the sandbox's own lifetime still bounds it).
    let timeout = process.timeout.map(|timeout| {
        if calls_back {
            timeout + crate::model_proxy::CALLBACK_WINDOW
        } else {
            timeout
        }
    });
    // A detached turn's wrapper keeps its tally where later readers find it.
    let detached_wrapper = process.spend_record.is_some();
    let (pid, output) = sandbox.start_process_as(process, RunAs::User).await?;
    proxy_env.insert(WATCH_PID_VARIABLE.to_owned(), pid.to_string());
    let proxy = ProcessSpec {
        cmd: BINARY.to_owned(),
        envs: proxy_env,
        cwd: "/".to_owned(),
        timeout,
        ..ProcessSpec::default()
    };
    if detached_wrapper {
        // Nobody reads a detached turn's wrapper: a proxy that did not start
        // must fail the turn's start, where the turn records why.
        let proxy = match sandbox.start_process_as(proxy, RunAs::Root).await {
            Ok((_, proxy)) => proxy,
            Err(e) => return Err(not_started(&e)),
        };
        return Ok(with_report(output, Proxy::Started(proxy), meter));
    }
    // Sent from a task of its own, so that the runner's output flows while
    // it goes out (envd's spawn and a round trip that the first event need
    // not wait for), and it goes out whether or not that output is read.
    let call = sandbox.start_call(proxy, RunAs::Root)?;
    let start = AbortOnDrop(tokio::spawn(call.send()));
    Ok(with_report(output, Proxy::Starting(start), meter))
}

/// A task that ends when its handle is dropped: a run that ended does not
/// leave its proxy's start going.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a proxy's start came back.
type Started = Result<(u32, ProcessStream), SandboxError>;

/// The model proxy beside a process, as far as the process's stream knows.
enum Proxy {
    /// Its start is on its way.
    Starting(AbortOnDrop<Started>),
    /// It runs; its stream ends with its report.
    Started(ProcessStream),
    /// Read, or never started.
    Gone,
}

/// What one turn of the combined stream comes to.
enum Step {
    Started(Started),
    Output(Option<Result<ProcessEvent, SandboxError>>),
}

/// `output`, while the proxy's start completes beside it: a start that
/// fails ends the stream with an error saying why the agent cannot reach
/// the model; a proxy that started gives its report to `meter` just before
/// the process's end is passed on.
fn with_report(
    output: ProcessStream,
    proxy: Proxy,
    meter: Option<Arc<SpendMeter>>,
) -> ProcessStream {
    futures::stream::unfold(
        (output, proxy, meter),
        |(mut output, mut proxy, meter)| async move {
            loop {
                let step = match &mut proxy {
                    Proxy::Starting(start) => tokio::select! {
                        started = &mut start.0 => Step::Started(started.unwrap_or_else(|e| {
                            Err(SandboxError::Other { op: "start", message: e.to_string() })
                        })),
                        event = output.next() => Step::Output(event),
                    },
                    Proxy::Started(_) | Proxy::Gone => Step::Output(output.next().await),
                };
                match step {
                    Step::Started(Ok((_, started))) => proxy = Proxy::Started(started),
                    Step::Started(Err(e)) => {
                        // Nothing more of this process is passed on: its
                        // run ends here, with the reason.
                        let rest = futures::stream::empty().boxed();
                        return Some((Err(not_started(&e)), (rest, Proxy::Gone, None)));
                    }
                    Step::Output(None) => return None,
                    Step::Output(Some(event)) => {
                        if !matches!(event, Ok(ProcessEvent::Exited(_))) {
                            return Some((event, (output, proxy, meter)));
                        }
                        // The process ended: its proxy's start has come
                        // back by now, or soon. One that failed is why the
                        // process could not do its work, and is said
                        // instead of its end.
                        let stream = match std::mem::replace(&mut proxy, Proxy::Gone) {
                            Proxy::Starting(start) => match started_within(start).await {
                                Ok(stream) => stream,
                                Err(e) => {
                                    let rest = (output, Proxy::Gone, None);
                                    return Some((Err(not_started(&e)), rest));
                                }
                            },
                            Proxy::Started(stream) => Some(stream),
                            Proxy::Gone => None,
                        };
                        if let (Some(stream), Some(meter)) = (stream, &meter) {
                            absorb_report(stream, meter).await;
                        }
                        return Some((event, (output, Proxy::Gone, meter)));
                    }
                }
            }
        },
    )
    .boxed()
}

/// Why the agent cannot reach the model: the proxy did not start.
fn not_started(e: &SandboxError) -> SandboxError {
    SandboxError::Other {
        op: "start",
        message: format!(
            "the template's model proxy ({BINARY}) did not start, so the agent cannot reach \
             the model without its key; build the template from this version's template/ \
             (template/README.md), or set SANDSTORM_E2B_MODEL_PROXY=0 to let the key into \
             the sandbox: {e}"
        ),
    }
}

/// The proxy's stream once its start has come back, if it does within
/// [`REPORT_WAIT`] (`None` if not); its start's error if it failed.
async fn started_within(
    mut start: AbortOnDrop<Started>,
) -> Result<Option<ProcessStream>, SandboxError> {
    match tokio::time::timeout(REPORT_WAIT, &mut start.0).await {
        Ok(Ok(Ok((_, stream)))) => Ok(Some(stream)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) | Err(_) => Ok(None),
    }
}

/// Puts the proxy's report into `meter`, waiting for the proxy's end for
/// at most [`REPORT_WAIT`].
async fn absorb_report(proxy: ProcessStream, meter: &SpendMeter) {
    match tokio::time::timeout(REPORT_WAIT, read_report(proxy)).await {
        Ok(Some(report)) => meter.absorb(report.spend),
        Ok(None) | Err(_) => tracing::warn!("the model proxy ended without its spend report"),
    }
}

/// The tally a proxy keeps at `record` for a detached run's readers, read
/// as root; `None` when there is none (no proxy served the turn).
pub(super) async fn read_record(
    sandbox: &E2bSandbox,
    record: &str,
) -> Result<Option<SpendRecord>, SandboxError> {
    match sandbox.download_as(record, RunAs::Root).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(SandboxError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The proxy's last stdout line, read to the proxy's end.
async fn read_report(mut proxy: ProcessStream) -> Option<Report> {
    let mut stdout = Vec::new();
    // What it said on stderr, logged once as a whole (envd cuts it into
    // chunks anywhere), and only so much of it.
    let mut said = Vec::new();
    while let Some(event) = proxy.next().await {
        match event {
            Ok(ProcessEvent::Stdout(chunk)) => stdout.extend_from_slice(&chunk),
            Ok(ProcessEvent::Stderr(chunk)) => {
                let room = MAX_SAID.saturating_sub(said.len());
                said.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(ProcessEvent::Exited(_)) | Err(_) => break,
        }
    }
    if !said.is_empty() {
        tracing::warn!(
            output = %String::from_utf8_lossy(&said).trim_end(),
            "the model proxy said"
        );
    }
    let text = String::from_utf8_lossy(&stdout);
    let line = text.lines().rev().find(|line| !line.trim().is_empty())?;
    serde_json::from_str(line).ok()
}
