//! A run's record, and how it is learned from the run's own events.
//!
//! The record is written in two steps: what the plan knows when the run
//! starts ([`RunRecord`]: prompt, config, labels), then what its events
//! told by the time it ended ([`RunEnding`]: status, cost, turns, usage,
//! the SDK session, the error type), gathered by a [`Recorder`] that sees
//! every event the run's client sees, in the same order.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::events::{DoneStatus, ErrorKind, Redactor, RunEvent, message_type};
use crate::spend::Spend;

/// The most of a prompt a record keeps: 0.9.2 keeps it whole, but one
/// request may carry megabytes and the history is read in lists.
pub(crate) const PROMPT_CAP: usize = 64 * 1024;
/// The most of the agent's final answer a record keeps: enough to tell
/// two runs' answers apart in a list or a replay's report.
pub(crate) const RESULT_CAP: usize = 4 * 1024;

/// The error type of a run whose relaying process was gone before the run
/// ended (see [`RunRecord::interrupt`]).
pub(crate) const INTERRUPTED: &str = "interrupted";

/// Where a recorded run is. The live ones say what `GET /runs/{id}` says;
/// a finished one says how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordStatus {
    /// Started, not ended. A run whose process was killed before it could
    /// say is ended `failed` (`interrupted`) once another finds it gone.
    Running,
    /// A detached run's turn is over and its sandbox is kept for a
    /// follow-up.
    Idle,
    /// The agent finished with a result.
    Succeeded,
    /// It ended with an error (`error_type` says which).
    Failed,
    /// A cancel ended it.
    Cancelled,
    /// Its timeout ended it, or its sandbox ended (killed, or its
    /// lifetime ran out) while its record still said `running`: E2B's
    /// lifecycle webhook tells (`history::expiry`).
    Expired,
}

impl RecordStatus {
    /// Every status, by its name in the API.
    pub(crate) const ALL: [RecordStatus; 6] = [
        RecordStatus::Running,
        RecordStatus::Idle,
        RecordStatus::Succeeded,
        RecordStatus::Failed,
        RecordStatus::Cancelled,
        RecordStatus::Expired,
    ];

    /// Its name in the API and the store.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Running => "running",
            RecordStatus::Idle => "idle",
            RecordStatus::Succeeded => "succeeded",
            RecordStatus::Failed => "failed",
            RecordStatus::Cancelled => "cancelled",
            RecordStatus::Expired => "expired",
        }
    }

    /// The status named `name`, if it is one.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        RecordStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The SDK's token counts, summed over a run's `result` events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TokenUsage {
    /// Input tokens.
    pub(crate) input_tokens: u64,
    /// Output tokens.
    pub(crate) output_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub(crate) cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub(crate) cache_read_input_tokens: u64,
}

/// One run in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    /// The run's id: a detached run's own, or one made for an attached run
    /// so that its record has a name.
    pub(crate) run_id: String,
    /// The digest of who started it (see `runs::owner`): a record is only
    /// ever shown to its owner. Never sent to a client.
    #[serde(skip_serializing, default)]
    pub(crate) owner: String,
    /// Where it is.
    pub(crate) status: RecordStatus,
    /// Whether it goes on without its client.
    pub(crate) detached: bool,
    /// When it started (RFC 3339, UTC, milliseconds).
    pub(crate) created_at: String,
    /// When it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ended_at: Option<String>,
    /// How long it ran, in milliseconds, once it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) duration_ms: Option<u64>,
    /// The request id that started it.
    pub(crate) request_id: String,
    /// The model: the SDK's init message's once it spoke, else the one asked
    /// for.
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// The results' `num_turns`, summed over the run's turns.
    #[serde(default)]
    pub(crate) turns: Option<u64>,
    /// The results' `total_cost_usd`, summed over the run's turns.
    #[serde(default)]
    pub(crate) total_cost_usd: Option<f64>,
    /// The results' token usage, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<TokenUsage>,
    /// The model calls as the model endpoint counted them (`done`'s
    /// `sandstorm.spend`), when it counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) spend: Option<Spend>,
    /// The prompt, whole up to [`PROMPT_CAP`] bytes, secrets redacted.
    pub(crate) prompt: String,
    /// Set when the prompt was longer than [`PROMPT_CAP`] and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) prompt_truncated: bool,
    /// The agent config the runner read, less its prompt, with every key
    /// and filled-in secret redacted.
    #[serde(default)]
    pub(crate) config: serde_json::Value,
    /// The names of the output files the run sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) outputs: Vec<String>,
    /// The SDK session of its last turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) session_id: Option<String>,
    /// Why it failed (an `error` event's `error_type`), or `client_gone`
    /// for an attached run whose client left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error_type: Option<String>,
    /// Its labels (`team_id`, `user_id`, `channel_id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: BTreeMap<String, String>,
    /// The sandbox it ran in, once it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sandbox_id: Option<String>,
    /// What a replay sends again of the request that started it (see
    /// `replay::request`): no keys, files by name. `None` when it was too
    /// large to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) request: Option<serde_json::Value>,
    /// The run this one replays, when it is a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) replay_of: Option<String>,
    /// The agent's final answer (its last `result` message's `result`),
    /// at most [`RESULT_CAP`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<String>,
    /// Its completion webhook, when it has one: kept so that a run whose
    /// end no reader saw can still be told (`notify::tell_from_record`).
    /// Stored, never shown: it may hold the receiver's token, and
    /// [`super::api::shown`] leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) webhook_url: Option<String>,
}

/// What a run's events told by its end, laid over its record.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RunEnding {
    /// How it ended.
    pub(crate) status: Option<RecordStatus>,
    /// When (RFC 3339).
    pub(crate) ended_at: String,
    /// How long after its start, in milliseconds.
    pub(crate) duration_ms: u64,
    /// The SDK's model.
    pub(crate) model: Option<String>,
    /// Summed `num_turns`.
    pub(crate) turns: Option<u64>,
    /// Summed `total_cost_usd`.
    pub(crate) total_cost_usd: Option<f64>,
    /// Summed usage.
    pub(crate) usage: Option<TokenUsage>,
    /// The endpoint's tally.
    pub(crate) spend: Option<Spend>,
    /// Output file names.
    pub(crate) outputs: Vec<String>,
    /// The SDK session.
    pub(crate) session_id: Option<String>,
    /// The error's type.
    pub(crate) error_type: Option<String>,
    /// The last answer, capped.
    pub(crate) result: Option<String>,
}

impl RunRecord {
    /// The record with `ending` laid over it. What the ending does not
    /// tell keeps what the record knew: the model asked for when the SDK
    /// never said, the figures of the turns before when a cancel ends an
    /// idle run. The error type is always the ending's: a turn that
    /// succeeded after one that failed leaves the run without one.
    pub(crate) fn end(&mut self, ending: RunEnding) {
        self.status = ending.status.unwrap_or(self.status);
        self.ended_at = Some(ending.ended_at);
        self.duration_ms = Some(ending.duration_ms);
        self.model = ending.model.or(self.model.take());
        self.turns = ending.turns.or(self.turns);
        self.total_cost_usd = ending.total_cost_usd.or(self.total_cost_usd);
        self.usage = ending.usage.or(self.usage);
        self.spend = ending.spend.or(self.spend.take());
        if !ending.outputs.is_empty() {
            self.outputs = ending.outputs;
        }
        self.session_id = ending.session_id.or(self.session_id.take());
        self.error_type = ending.error_type;
        self.result = ending.result.or(self.result.take());
    }

    /// The record of a run whose relaying process was gone before it could
    /// write the run's end (killed, or crashed): `failed`, with error type
    /// [`INTERRUPTED`]. When it ended is not known, so it says no time.
    pub(crate) fn interrupt(&mut self) {
        self.status = RecordStatus::Failed;
        self.error_type = Some(INTERRUPTED.to_owned());
    }

    /// When it started, in milliseconds since the epoch: the order of the
    /// history.
    pub(crate) fn created_ms(&self) -> u64 {
        humantime::parse_rfc3339_weak(&self.created_at)
            .ok()
            .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The prompt as a record keeps it: at most [`PROMPT_CAP`] bytes, cut on
/// a character boundary; `true` when it was cut.
pub(crate) fn capped_prompt(prompt: &str) -> (String, bool) {
    capped(prompt, PROMPT_CAP)
}

/// `text`, cut to at most `cap` bytes on a character boundary; `true`
/// when it was cut.
fn capped(text: &str, cap: usize) -> (String, bool) {
    if text.len() <= cap {
        return (text.to_owned(), false);
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

/// The config snapshot a record keeps: the agent config the runner reads
/// (already without the keys, which go by environment), less its prompt
/// (kept beside it), and passed through the run's redactor, which knows
/// every key and every value filled into an MCP server.
pub(crate) fn config_snapshot(agent_config: &[u8], redactor: &Redactor) -> serde_json::Value {
    let redacted = redactor.redact(bytes::Bytes::copy_from_slice(agent_config));
    let mut config: serde_json::Value = serde_json::from_slice(&redacted).unwrap_or_default();
    if let Some(object) = config.as_object_mut() {
        object.remove("prompt");
    }
    config
}

/// Gathers a run's [`RunEnding`] from its events, in the order its client
/// gets them.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    ending: RunEnding,
    /// The `error` event's type, for the `done` after it.
    error: Option<ErrorKind>,
    /// A `done` came: the run (or its last turn so far) is over.
    done: bool,
}

impl Recorder {
    /// Takes in one event.
    pub(crate) fn observe(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Agent(line) => self.agent(line),
            RunEvent::Error(error) => {
                self.error = Some(error.kind);
                self.ending.error_type = serde_json::to_value(error.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
            }
            RunEvent::Done(done) => {
                self.done = true;
                self.ending.spend = done.sandstorm.as_ref().map(|n| n.spend.clone());
                self.ending.status = Some(match (done.status, self.error) {
                    (DoneStatus::Success, _) => RecordStatus::Succeeded,
                    (DoneStatus::Error, Some(ErrorKind::Cancelled)) => RecordStatus::Cancelled,
                    (DoneStatus::Error, Some(ErrorKind::Timeout)) => RecordStatus::Expired,
                    (DoneStatus::Error, _) => RecordStatus::Failed,
                });
            }
            // A follow-up turn: its error, if any, is its own.
            RunEvent::Turn(_) => {
                self.done = false;
                self.error = None;
                self.ending.error_type = None;
            }
            RunEvent::Progress(_)
            | RunEvent::Stderr(_)
            | RunEvent::Run(_)
            | RunEvent::Detached(_)
            | RunEvent::Replay(_) => {}
        }
    }

    fn agent(&mut self, line: &[u8]) {
        let kind = message_type(line);
        if kind.as_deref() == Some("file") {
            // Only its name: a file event carries the file, base64, and
            // need not be built whole.
            #[derive(Deserialize)]
            struct Named {
                path: Option<String>,
                name: Option<String>,
            }
            if let Ok(Named { path, name }) = serde_json::from_slice::<Named>(line)
                && let Some(name) = path.or(name)
            {
                self.ending.outputs.push(name);
            }
            return;
        }
        if !matches!(kind.as_deref(), Some("system" | "result")) {
            return;
        }
        let message: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        let text = |field: &str| message[field].as_str().map(str::to_owned);
        match kind.as_deref() {
            Some("system") if message["subtype"] == "init" => {
                if self.ending.model.is_none() {
                    self.ending.model = text("model");
                }
                self.ending.session_id = text("session_id").or(self.ending.session_id.take());
            }
            Some("result") => {
                if let Some(turns) = message["num_turns"].as_u64() {
                    *self.ending.turns.get_or_insert(0) += turns;
                }
                if let Some(cost) = message["total_cost_usd"].as_f64() {
                    *self.ending.total_cost_usd.get_or_insert(0.0) += cost;
                }
                let usage = &message["usage"];
                if usage.is_object() {
                    let sum = self.ending.usage.get_or_insert_with(TokenUsage::default);
                    let count = |field: &str| usage[field].as_u64().unwrap_or(0);
                    sum.input_tokens += count("input_tokens");
                    sum.output_tokens += count("output_tokens");
                    sum.cache_creation_input_tokens += count("cache_creation_input_tokens");
                    sum.cache_read_input_tokens += count("cache_read_input_tokens");
                }
                self.ending.session_id = text("session_id").or(self.ending.session_id.take());
                if let Some(result) = message["result"].as_str() {
                    self.ending.result = Some(capped(result, RESULT_CAP).0);
                }
            }
            _ => {}
        }
    }

    /// Whether a `done` ended what it saw.
    pub(crate) fn saw_done(&self) -> bool {
        self.done
    }

    /// The ending, stamped `ended_at` and `duration_ms`; `client_gone`
    /// marks an attached run whose client left before its `done`.
    pub(crate) fn ending(&self, started: SystemTime, client_gone: bool) -> RunEnding {
        let now = SystemTime::now();
        let mut ending = self.ending.clone();
        if client_gone && !self.done {
            ending.status = Some(RecordStatus::Failed);
            ending.error_type = Some("client_gone".to_owned());
        }
        ending.ended_at = humantime::format_rfc3339_millis(now).to_string();
        ending.duration_ms = now
            .duration_since(started)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Done, DoneNotes, RunError};
    use bytes::Bytes;

    fn agent(json: &str) -> RunEvent {
        RunEvent::Agent(Bytes::copy_from_slice(json.as_bytes()))
    }

    #[test]
    fn a_recorder_adds_up_what_the_events_told() {
        let mut recorder = Recorder::default();
        for event in [
            agent(r#"{"type":"system","subtype":"init","model":"claude-x","session_id":"s1"}"#),
            agent(
                r#"{"type":"result","num_turns":2,"total_cost_usd":0.5,"session_id":"s1","result":"All done.","usage":{"input_tokens":10,"output_tokens":3}}"#,
            ),
            agent(r#"{"type":"file","path":"out/report.md","data":"eA=="}"#),
            RunEvent::Error(RunError {
                kind: ErrorKind::BudgetExceeded,
                message: "cap".into(),
                request_id: "r".into(),
            }),
            RunEvent::Done(Done {
                status: DoneStatus::Error,
                request_id: "r".into(),
                sandstorm: Some(Box::new(DoneNotes {
                    spend: Spend {
                        calls: 2,
                        ..Spend::default()
                    },
                })),
            }),
        ] {
            recorder.observe(&event);
        }
        assert!(recorder.saw_done());
        let ending = recorder.ending(SystemTime::now(), false);
        assert_eq!(ending.status, Some(RecordStatus::Failed));
        assert_eq!(ending.error_type.as_deref(), Some("budget_exceeded"));
        assert_eq!(ending.model.as_deref(), Some("claude-x"));
        assert_eq!(ending.turns, Some(2));
        assert_eq!(ending.total_cost_usd, Some(0.5));
        assert_eq!(ending.usage.map(|u| u.input_tokens), Some(10));
        assert_eq!(ending.session_id.as_deref(), Some("s1"));
        assert_eq!(ending.result.as_deref(), Some("All done."));
        assert_eq!(ending.outputs, ["out/report.md"]);
        assert_eq!(ending.spend.map(|s| s.calls), Some(2));
    }

    #[test]
    fn an_attached_run_whose_client_left_is_recorded_so() {
        let ending = Recorder::default().ending(SystemTime::now(), true);
        assert_eq!(ending.status, Some(RecordStatus::Failed));
        assert_eq!(ending.error_type.as_deref(), Some("client_gone"));
    }

    #[test]
    fn a_long_prompt_is_cut_on_a_character_and_says_so() {
        let long = "é".repeat(PROMPT_CAP);
        let (kept, cut) = capped_prompt(&long);
        assert!(cut);
        assert!(kept.len() <= PROMPT_CAP && kept.len() > PROMPT_CAP - 2);
        assert_eq!(capped_prompt("short"), ("short".to_owned(), false));
    }

    #[test]
    fn the_config_snapshot_holds_no_secret_and_no_prompt() {
        let redactor = Redactor::new(["sk-ant-api03-secret-value", "mcp-token-123456"]);
        let config = br#"{"prompt":"hi","model":"m","mcp_servers":{"s":{"env":{"TOKEN":"mcp-token-123456"}}},"note":"sk-ant-api03-secret-value"}"#;
        let snapshot = config_snapshot(config, &redactor);
        let text = snapshot.to_string();
        assert!(!text.contains("mcp-token-123456"), "{text}");
        assert!(!text.contains("sk-ant-api03-secret-value"), "{text}");
        assert!(snapshot.get("prompt").is_none(), "{text}");
        assert_eq!(snapshot["model"], "m");
    }
}
