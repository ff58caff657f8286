//! What a run tells its client, one JSON object per event.
//!
//! Agent messages (`system`, `assistant`, `user`, `result`) are the runner's
//! stdout lines passed through byte for byte. Sandstorm adds `stderr` lines,
//! exactly one `error` event carrying the request id when a run fails after
//! its stream began, and, last of all, one `done` event that says how the
//! run ended: a client that never sees it knows the stream was cut. Which
//! of the runner's lines pass, and in what order, is `run::shape`.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::spend::Spend;

/// One event of a run, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunEvent {
    /// The run reached a new phase before the agent started. For the CLI's
    /// spinner; the HTTP API does not send it.
    Progress(Phase),
    /// A line the runner printed on stdout: one SDK message as JSON.
    Agent(Bytes),
    /// A line the runner printed on stderr.
    Stderr(String),
    /// The run failed; only [`RunEvent::Done`] follows.
    Error(RunError),
    /// The run is over and its sandbox destroyed; always the last event.
    Done(Done),
    /// A detached run's first event: its id, the capability to reach it
    /// again, and when its sandbox goes away at the latest.
    Run(RunStarted),
    /// A detached run's stream ends here, but the run goes on in its
    /// sandbox: the platform's deadline came, the server is stopping, or the
    /// connection to the sandbox was lost. The last event of such a stream.
    Detached(Detached),
    /// A follow-up turn of a detached run begins: the events of the turn
    /// before ended with its `done`, and this turn's follow.
    Turn(TurnStarted),
    /// A replay's comparison with the run it replays, just before its
    /// `done`. Not part of the run: a later reader of the run's events
    /// does not get it.
    Replay(Box<crate::replay::report::ReplayReport>),
}

/// `{"type":"run","run_id","expires_at"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunStarted {
    /// The run's id.
    pub run_id: String,
    /// RFC 3339, UTC: when the run's sandbox is destroyed if nothing else
    /// ends it first.
    pub expires_at: String,
}

/// `{"type":"turn","run_id","turn","request_id"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TurnStarted {
    /// The run's id.
    pub run_id: String,
    /// Which turn: 2 for the first follow-up.
    pub turn: u32,
    /// The request id of the follow-up that began it.
    pub request_id: String,
}

/// `{"type":"detached","run_id","last_event_id","resume"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Detached {
    /// The run's id.
    pub run_id: String,
    /// The id of the last event this stream carried.
    pub last_event_id: u64,
    /// Where to read on: `/runs/<id>/events`.
    pub resume: String,
}

/// The last event of every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Done {
    /// `success`, or `error` when an `error` event came before.
    pub status: DoneStatus,
    /// The run's request id.
    pub request_id: String,
    /// What Sandstorm itself counted, where it could. Boxed: inline it
    /// would make every [`RunEvent`] as large, and every slot of every
    /// channel events wait in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandstorm: Option<Box<DoneNotes>>,
}

/// `done.sandstorm`: what the server counted of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DoneNotes {
    /// The model calls as the model endpoint counted them, beside the
    /// SDK's own `total_cost_usd` in the `result` event.
    pub spend: Spend,
}

/// How a run ended, as the `done` event says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DoneStatus {
    /// The agent finished with a result.
    Success,
    /// The run failed; the `error` event before says why.
    Error,
}

/// What a run is doing before the agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Asking the provider for a sandbox.
    CreatingSandbox,
    /// Sending the runner, its config and the request's files.
    Uploading,
    /// Starting the runner process.
    StartingAgent,
}

impl Phase {
    /// The phase in words, for a spinner or a `progress` event.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Phase::CreatingSandbox => "creating the sandbox",
            Phase::Uploading => "uploading files",
            Phase::StartingAgent => "starting the agent",
        }
    }
}

/// Why a run failed after its stream began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    /// The request's `timeout` or the platform's deadline ended the run.
    Timeout,
    /// The sandbox provider failed (create, upload, start).
    Sandbox,
    /// The connection to the sandbox process was lost mid-run.
    StreamCut,
    /// The runner exited non-zero, or without a result.
    RunnerFailed,
    /// The runner reported an exception of its own.
    RunnerError,
    /// A line exceeded the size we relay.
    OutputTooLarge,
    /// The server was stopping and its shutdown bound ran out first.
    Shutdown,
    /// A detached run was cancelled (`POST /runs/{id}/cancel`).
    Cancelled,
    /// A cap on model spend (`max_cost_usd`, `max_tokens`) was reached and
    /// the model endpoint refused the next call.
    BudgetExceeded,
}

impl ErrorKind {
    /// Whether the runner's exit was read when a turn ended so: its own
    /// failures, a cancel and its timeout; not a fault on the way to it.
    pub(crate) fn ends_a_runner(self) -> bool {
        matches!(
            self,
            ErrorKind::RunnerFailed
                | ErrorKind::RunnerError
                | ErrorKind::Cancelled
                | ErrorKind::Timeout
                | ErrorKind::BudgetExceeded
        )
    }
}

/// The run's one `error` event: `{"type":"error","error_type","error","request_id"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunError {
    /// Why the run failed, as `error_type`.
    #[serde(rename = "error_type")]
    pub kind: ErrorKind,
    /// Human-readable cause. `error` as a string, like the original's events.
    #[serde(rename = "error")]
    pub message: String,
    /// The run's `x-request-id`, so a client report finds the server's log.
    pub request_id: String,
}

#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize)]
struct StderrBody<'a> {
    data: &'a str,
}

impl RunEvent {
    /// The `type` of a server event; `None` for an agent message, whose
    /// type is in its line.
    pub(crate) fn server_type(&self) -> Option<&'static str> {
        Some(match self {
            RunEvent::Agent(_) => return None,
            RunEvent::Progress(_) => "progress",
            RunEvent::Stderr(_) => "stderr",
            RunEvent::Error(_) => "error",
            RunEvent::Done(_) => "done",
            RunEvent::Run(_) => "run",
            RunEvent::Detached(_) => "detached",
            RunEvent::Turn(_) => "turn",
            RunEvent::Replay(_) => "replay",
        })
    }

    /// The event as one line of JSON, the payload of an SSE `data:` field
    /// and of a `--json-output` line.
    pub(crate) fn to_json(&self) -> Bytes {
        let kind = self.server_type().unwrap_or_default();
        match self {
            RunEvent::Progress(phase) => json_bytes(&serde_json::json!({
                "type": kind,
                "phase": phase.describe(),
            })),
            RunEvent::Agent(line) => line.clone(),
            RunEvent::Stderr(data) => json_bytes(&Tagged {
                kind,
                body: &StderrBody { data },
            }),
            RunEvent::Error(error) => json_bytes(&Tagged { kind, body: error }),
            RunEvent::Done(done) => json_bytes(&Tagged { kind, body: done }),
            RunEvent::Run(run) => json_bytes(&Tagged { kind, body: run }),
            RunEvent::Detached(detached) => json_bytes(&Tagged {
                kind,
                body: detached,
            }),
            RunEvent::Turn(turn) => json_bytes(&Tagged { kind, body: turn }),
            RunEvent::Replay(report) => json_bytes(&Tagged { kind, body: report }),
        }
    }
}

impl RunEvent {
    /// The event a line of the API's JSON is: the inverse of
    /// [`RunEvent::to_json`], for a client of the API (`ds attach`). What is
    /// not one of the server's own events is an agent message.
    pub(crate) fn from_json(line: Bytes) -> RunEvent {
        #[derive(Deserialize)]
        struct StderrLine {
            data: String,
        }
        let server = |kind: &str| -> Option<RunEvent> {
            Some(match kind {
                "stderr" => {
                    RunEvent::Stderr(serde_json::from_slice::<StderrLine>(&line).ok()?.data)
                }
                "error" => RunEvent::Error(serde_json::from_slice(&line).ok()?),
                "done" => RunEvent::Done(serde_json::from_slice(&line).ok()?),
                "run" => RunEvent::Run(serde_json::from_slice(&line).ok()?),
                "detached" => RunEvent::Detached(serde_json::from_slice(&line).ok()?),
                "turn" => RunEvent::Turn(serde_json::from_slice(&line).ok()?),
                "replay" => RunEvent::Replay(serde_json::from_slice(&line).ok()?),
                _ => return None,
            })
        };
        match message_type(&line).as_deref().and_then(server) {
            Some(event) => event,
            None => RunEvent::Agent(line),
        }
    }
}

fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    // Serializing these plain structs to a Vec cannot fail.
    serde_json::to_vec(value).map_or_else(|_| Bytes::from_static(b"{}"), Bytes::from)
}

/// The `type` of an agent message, read without building the whole value.
pub(crate) fn message_type(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_slice::<Peek>(line)
        .ok()
        .and_then(|p| p.kind)
}

/// Removes known secret values from text that leaves the server.
///
/// The agent can read its own environment (`env` in Bash), so a tool result
/// may quote an API key. Every line the client sees passes through here.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    needles: Vec<memchr::memmem::Finder<'static>>,
}

/// Says how many values it removes, never which: memchr's own `Debug` of a
/// `Finder` prints its needle, which here is a key.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.needles.len())
            .finish()
    }
}

/// Replacement text for a redacted secret.
pub(crate) const REDACTED: &str = "[REDACTED]";

impl Redactor {
    /// Values shorter than 8 bytes are not treated as secrets: redacting
    /// `1` or `us-east-1` everywhere would mangle ordinary output.
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<&str> = secrets.into_iter().filter(|s| s.len() >= 8).collect();
        // Longest first, so a key that contains another is removed whole.
        values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        values.dedup();
        Redactor {
            needles: values
                .into_iter()
                .map(|s| memchr::memmem::Finder::new(s.as_bytes()).into_owned())
                .collect(),
        }
    }

    /// The line with every secret replaced; no copy when there is none.
    pub(crate) fn redact(&self, line: Bytes) -> Bytes {
        if self.needles.iter().all(|n| n.find(&line).is_none()) {
            return line;
        }
        let mut text = line.to_vec();
        for needle in &self.needles {
            let mut out = Vec::with_capacity(text.len());
            let mut rest = &text[..];
            while let Some(at) = needle.find(rest) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(REDACTED.as_bytes());
                rest = &rest[at + needle.needle().len()..];
            }
            out.extend_from_slice(rest);
            text = out;
        }
        Bytes::from(text)
    }

    /// Whether `bytes` hold any of the secrets: for content the client gets
    /// encoded (a file's base64), where replacing text is not possible.
    pub(crate) fn finds_any(&self, bytes: &[u8]) -> bool {
        self.needles.iter().any(|n| n.find(bytes).is_some())
    }

    /// [`Redactor::redact`] for text.
    pub(crate) fn redact_str(&self, text: &str) -> String {
        let bytes = self.redact(Bytes::copy_from_slice(text.as_bytes()));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_small_enough_for_its_channels() {
        // Every channel an event waits in allocates its slots 32 at a time,
        // each as large as the largest event: a stalled stream holds a
        // block of them in every channel on its way. Large payloads are
        // boxed to keep this down.
        assert!(
            std::mem::size_of::<RunEvent>() <= 64,
            "RunEvent takes {} bytes",
            std::mem::size_of::<RunEvent>()
        );
    }

    #[test]
    fn every_event_reads_back_from_its_json() {
        let events = [
            RunEvent::Agent(Bytes::from_static(br#"{"type":"assistant","x":1}"#)),
            RunEvent::Stderr("warn: x".into()),
            RunEvent::Error(RunError {
                kind: ErrorKind::Cancelled,
                message: "the run was cancelled".into(),
                request_id: "r".into(),
            }),
            RunEvent::Done(Done {
                status: DoneStatus::Error,
                request_id: "r".into(),
                sandstorm: Some(Box::new(DoneNotes {
                    spend: Spend {
                        calls: 3,
                        refused_calls: 1,
                        input_tokens: 300,
                        output_tokens: 60,
                        cost_usd: 0.0018,
                        exceeded: Some(crate::spend::Cap::MaxCostUsd(0.001)),
                        ..Spend::default()
                    },
                })),
            }),
            RunEvent::Run(RunStarted {
                run_id: "run_0".into(),
                expires_at: "2026-12-05T00:00:00Z".into(),
            }),
            RunEvent::Detached(Detached {
                run_id: "run_0".into(),
                last_event_id: 7,
                resume: "/runs/run_0/events".into(),
            }),
        ];
        for event in events {
            assert_eq!(RunEvent::from_json(event.to_json()), event);
        }
    }

    #[test]
    fn agent_lines_pass_through_unchanged() {
        let line = Bytes::from_static(br#"{"type":"assistant","message":{"content":[]}}"#);
        assert_eq!(RunEvent::Agent(line.clone()).to_json(), line);
    }

    #[test]
    fn stderr_and_error_events_have_their_shape() {
        let json: serde_json::Value =
            serde_json::from_slice(&RunEvent::Stderr("warn: x".into()).to_json()).expect("json");
        assert_eq!(json, serde_json::json!({"type":"stderr","data":"warn: x"}));
        let error = RunEvent::Error(RunError {
            kind: ErrorKind::Timeout,
            message: "the run exceeded its 5 s timeout".into(),
            request_id: "req-1".into(),
        });
        let json: serde_json::Value = serde_json::from_slice(&error.to_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type":"error","error_type":"timeout",
                "error":"the run exceeded its 5 s timeout","request_id":"req-1"})
        );
    }

    #[test]
    fn the_done_event_has_its_shape() {
        let done = RunEvent::Done(Done {
            status: DoneStatus::Success,
            request_id: "req-1".into(),
            sandstorm: None,
        });
        let json: serde_json::Value = serde_json::from_slice(&done.to_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type":"done","status":"success","request_id":"req-1"})
        );
    }

    #[test]
    fn message_type_reads_the_type_field() {
        assert_eq!(
            message_type(br#"{"subtype":"success","type":"result"}"#).as_deref(),
            Some("result")
        );
        assert_eq!(message_type(b"not json"), None);
    }

    #[test]
    fn redactor_removes_every_occurrence_of_every_secret() {
        let r = Redactor::new(["sk-ant-secret-1", "sk-ant-secret-1-longer", "short"]);
        let line = Bytes::from_static(b"A=sk-ant-secret-1-longer B=sk-ant-secret-1 C=short");
        assert_eq!(
            &r.redact(line)[..],
            b"A=[REDACTED] B=[REDACTED] C=short".as_slice()
        );
    }

    #[test]
    fn redactor_debug_shows_no_secret() {
        let r = Redactor::new(["sk-ant-hunter2-1"]);
        let debug = format!("{r:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        // memchr prints a needle as bytes; no run of them may survive either.
        let bytes = format!("{:?}", b"hunter2".as_slice());
        assert!(!debug.contains(&bytes[1..bytes.len() - 1]), "{debug}");
    }

    #[test]
    fn redactor_does_not_copy_clean_lines() {
        let r = Redactor::new(["sk-ant-secret-1"]);
        let line = Bytes::from(vec![b'x'; 100]);
        let out = r.redact(line.clone());
        assert_eq!(out.as_ptr(), line.as_ptr());
    }
}
