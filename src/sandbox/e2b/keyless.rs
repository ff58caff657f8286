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
//! it serves, whose end ends it. The runner's first model call comes after
//! the SDK has loaded, well after the proxy listens; one that came sooner
//! would be retried by the SDK like any refused connection.
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
    BINARY, CAPS_VARIABLE, CapsJson, LISTEN, RECORD_VARIABLE, Report, TOKEN_VARIABLE,
    WATCH_PID_VARIABLE, split,
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
    let timeout = process.timeout;
    let (pid, output) = sandbox.start_process_as(process, RunAs::User).await?;
    proxy_env.insert(WATCH_PID_VARIABLE.to_owned(), pid.to_string());
    let proxy = ProcessSpec {
        cmd: BINARY.to_owned(),
        envs: proxy_env,
        cwd: "/".to_owned(),
        timeout,
        ..ProcessSpec::default()
    };
    let proxy = match sandbox.start_process_as(proxy, RunAs::Root).await {
        Ok((_, proxy)) => proxy,
        Err(e) => {
            return Err(SandboxError::Other {
                op: "start",
                message: format!(
                    "the template's model proxy ({BINARY}) did not start, so the agent \
                     cannot reach the model without its key; build the template from this \
                     version's template/ (template/README.md), or set \
                     SANDSTORM_E2B_MODEL_PROXY=0 to let the key into the sandbox: {e}"
                ),
            });
        }
    };
    Ok(with_report(output, proxy, meter))
}

/// `output`, with the proxy's report put into `meter` just before the
/// process's end.
fn with_report(
    output: ProcessStream,
    proxy: ProcessStream,
    meter: Option<Arc<SpendMeter>>,
) -> ProcessStream {
    let mut proxy = Some(proxy);
    output
        .then(move |event| {
            let ending = matches!(event, Ok(ProcessEvent::Exited(_)));
            let proxy = if ending { proxy.take() } else { None };
            let meter = meter.clone();
            async move {
                if let (Some(proxy), Some(meter)) = (proxy, meter) {
                    match tokio::time::timeout(REPORT_WAIT, read_report(proxy)).await {
                        Ok(Some(report)) => meter.absorb(report.spend),
                        Ok(None) | Err(_) => {
                            tracing::warn!("the model proxy ended without its spend report");
                        }
                    }
                }
                event
            }
        })
        .boxed()
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
