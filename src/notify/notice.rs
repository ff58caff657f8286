//! What a completion webhook says: the notice's body, and how a run's own
//! events make it.
//!
//! The body follows the Standard Webhooks envelope, `{"type", "timestamp",
//! "data"}`. `data` uses the names of the run's record (`GET /runs/{id}`):
//! `status`, `turns`, `total_cost_usd`, `duration_ms`, `result`. So a
//! receiver that also reads the API reads one vocabulary.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::events::{RunEvent, message_type};
use crate::history::record::Recorder;
use crate::history::{RecordStatus, RunRecord};

/// The notice's `type`.
pub(crate) const RUN_ENDED: &str = "run.ended";
/// The most of the agent's answer a notice carries; longer ones are cut
/// and say so (`result_truncated`). The whole answer stays in the run's
/// events.
pub(crate) const RESULT_CAP: usize = 64 * 1024;
/// The most a notice's `structured_output` may take, as JSON; a larger one
/// is left out and `structured_output_truncated` says so.
pub(crate) const STRUCTURED_CAP: usize = 128 * 1024;

/// Which run, and which of its turns, a notice tells of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subject {
    /// The run's id: a detached run's own, or its record's.
    pub run_id: String,
    /// The request that started the run.
    pub request_id: String,
    /// Whether the run goes on without its client.
    pub detached: bool,
    /// When the run started.
    pub started: SystemTime,
    /// Its labels (`team_id`, ...).
    pub labels: BTreeMap<String, String>,
}

impl Subject {
    /// A detached run, as a reader of it knows it.
    pub(crate) fn of(follow: &crate::run::detached::Follow) -> Subject {
        Subject {
            run_id: follow.run.run_id.clone(),
            request_id: follow.request_id.clone(),
            detached: true,
            started: humantime::parse_rfc3339_weak(&follow.created_at)
                .unwrap_or_else(|_| SystemTime::now()),
            labels: follow.labels.clone(),
        }
    }
}

/// The notice as sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Notice {
    /// [`RUN_ENDED`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the turn ended (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    /// What the run came to.
    pub data: NoticeData,
}

/// A notice's `data`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NoticeData {
    /// The run's id.
    pub run_id: String,
    /// The request that started the run.
    pub request_id: String,
    /// The turn that ended: 1, or a follow-up's number.
    pub turn: u32,
    /// Whether the run was detached.
    pub detached: bool,
    /// `succeeded`, `failed`, `cancelled` or `expired`.
    pub status: RecordStatus,
    /// Why it failed, when it did.
    pub error: Option<NoticeError>,
    /// When the run started (RFC 3339, UTC, milliseconds).
    pub created_at: String,
    /// When this turn ended.
    pub ended_at: String,
    /// The model the SDK ran.
    pub model: Option<String>,
    /// The SDK's `num_turns`, summed over the run's turns.
    pub turns: Option<u64>,
    /// The SDK's `total_cost_usd`, summed over the run's turns.
    pub total_cost_usd: Option<f64>,
    /// From the run's start to this turn's end, in milliseconds.
    pub duration_ms: u64,
    /// The agent's last answer, at most [`RESULT_CAP`] bytes.
    pub result: Option<String>,
    /// Set when `result` was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub result_truncated: bool,
    /// The last result's `structured_output`, when it had one.
    pub structured_output: Option<serde_json::Value>,
    /// Set when `structured_output` was larger than [`STRUCTURED_CAP`] and
    /// left out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub structured_output_truncated: bool,
    /// The run's labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A failed turn's error: an `error` event's `error_type` and `error`, or
/// what ended the run without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NoticeError {
    /// `timeout`, `runner_failed`, ..., `client_gone` (an attached run's
    /// client left, which ends it) or `sandbox_gone`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened, with the run's secrets redacted.
    pub message: String,
}

/// Why an attached run whose client left ended.
const CLIENT_GONE: &str = "the client went away before the run ended, which ends an attached run";
/// Why a run whose sandbox went ended.
const SANDBOX_GONE: &str = "the run's sandbox went away before the run could say how it ended";

/// Gathers a notice from a run's events, in the order its readers get
/// them: what the run's record would say ([`Recorder`]), the turn, and the
/// last result's answer and structured output whole (within caps).
#[derive(Debug, Default)]
pub(crate) struct NoticeRecorder {
    record: Recorder,
    turn: u32,
    result: Option<(String, bool)>,
    structured: Option<Structured>,
    /// The last `error` event's message.
    error: Option<String>,
    /// The request that began the turn, for a follow-up turn.
    turn_request: Option<String>,
}

#[derive(Debug, Clone)]
enum Structured {
    Kept(serde_json::Value),
    TooLarge,
}

impl NoticeRecorder {
    /// Takes in one event.
    pub(crate) fn observe(&mut self, event: &RunEvent) {
        self.record.observe(event);
        match event {
            RunEvent::Turn(turn) => {
                self.turn = turn.turn;
                self.turn_request = Some(turn.request_id.clone());
                self.result = None;
                self.structured = None;
                self.error = None;
            }
            RunEvent::Error(error) => self.error = Some(error.message.clone()),
            RunEvent::Agent(line) if message_type(line).as_deref() == Some("result") => {
                self.result(line);
            }
            _ => {}
        }
    }

    fn result(&mut self, line: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Result {
            result: Option<String>,
            structured_output: Option<Box<serde_json::value::RawValue>>,
        }
        let Ok(result) = serde_json::from_slice::<Result>(line) else {
            return;
        };
        if let Some(text) = result.result {
            self.result = Some(capped(text, RESULT_CAP));
        }
        self.structured = result.structured_output.map(|raw| {
            if raw.get().len() > STRUCTURED_CAP {
                return Structured::TooLarge;
            }
            serde_json::from_str(raw.get()).map_or(Structured::TooLarge, Structured::Kept)
        });
    }

    /// The turn it is at: 1 until a follow-up's `turn` event.
    pub(crate) fn turn(&self) -> u32 {
        self.turn.max(1)
    }

    /// What the run's history record would say of what it saw, for a run
    /// that started at `started`.
    pub(crate) fn ending(&self, started: SystemTime) -> crate::history::RunEnding {
        self.record.ending(started, false)
    }

    /// Whether a `done` ended what it saw.
    pub(crate) fn saw_done(&self) -> bool {
        self.record.saw_done()
    }

    /// The notice of what it saw, as of now; `client_gone` for an attached
    /// run whose client left before its `done`.
    pub(crate) fn notice(&self, subject: &Subject, client_gone: bool) -> Notice {
        let ending = self.record.ending(subject.started, client_gone);
        let (result, result_truncated) = self.result.clone().unzip();
        let (structured_output, structured_output_truncated) = match &self.structured {
            None => (None, false),
            Some(Structured::Kept(value)) => (Some(value.clone()), false),
            Some(Structured::TooLarge) => (None, true),
        };
        let error = ending.error_type.map(|kind| {
            let message = match kind.as_str() {
                "client_gone" => CLIENT_GONE.to_owned(),
                _ => self.error.clone().unwrap_or_default(),
            };
            NoticeError { kind, message }
        });
        Notice {
            kind: RUN_ENDED,
            timestamp: ending.ended_at.clone(),
            data: NoticeData {
                run_id: subject.run_id.clone(),
                request_id: self
                    .turn_request
                    .clone()
                    .unwrap_or_else(|| subject.request_id.clone()),
                turn: self.turn(),
                detached: subject.detached,
                // Without a `done`, an ending says nothing of how it went:
                // the run stopped before it could tell.
                status: ending.status.unwrap_or(RecordStatus::Failed),
                error,
                created_at: humantime::format_rfc3339_millis(subject.started).to_string(),
                ended_at: ending.ended_at,
                model: ending.model,
                turns: ending.turns,
                total_cost_usd: ending.total_cost_usd,
                duration_ms: ending.duration_ms,
                result,
                result_truncated: result_truncated.unwrap_or(false),
                structured_output,
                structured_output_truncated,
                labels: subject.labels.clone(),
            },
        }
    }
}

/// `text`, cut to at most `cap` bytes on a character boundary, and whether
/// it was cut.
fn capped(mut text: String, cap: usize) -> (String, bool) {
    if text.len() <= cap {
        return (text, false);
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

impl Notice {
    /// The notice of a run that ended without saying how: its sandbox went
    /// away (killed, or its lifetime ran out) before its turn `turn` ended.
    pub(crate) fn expired(subject: &Subject, turn: u32) -> Notice {
        let recorder = NoticeRecorder {
            turn,
            ..NoticeRecorder::default()
        };
        let mut notice = recorder.notice(subject, false);
        notice.data.status = RecordStatus::Expired;
        notice.data.error = Some(NoticeError {
            kind: "sandbox_gone".to_owned(),
            message: SANDBOX_GONE.to_owned(),
        });
        notice
    }

    /// The notice of a run whose end no reader saw, from its history
    /// record as it was laid down (its sandbox killed, say): turn `turn`
    /// ended as the record says. The record keeps no structured output,
    /// and at most 4 KiB of the answer.
    #[allow(dead_code, reason = "see `tell_from_record`")]
    pub(crate) fn from_record(record: &RunRecord, turn: u32) -> Notice {
        let ended_at = record
            .ended_at
            .clone()
            .unwrap_or_else(|| humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        let error = record.error_type.clone().map(|kind| {
            let message = match kind.as_str() {
                "client_gone" => CLIENT_GONE.to_owned(),
                "sandbox_gone" => SANDBOX_GONE.to_owned(),
                _ if record.status == RecordStatus::Expired => SANDBOX_GONE.to_owned(),
                _ => format!("the run ended with {kind}; its record and events say more"),
            };
            NoticeError { kind, message }
        });
        Notice {
            kind: RUN_ENDED,
            timestamp: ended_at.clone(),
            data: NoticeData {
                run_id: record.run_id.clone(),
                request_id: record.request_id.clone(),
                turn: turn.max(1),
                detached: record.detached,
                status: record.status,
                error,
                created_at: record.created_at.clone(),
                ended_at,
                model: record.model.clone(),
                turns: record.turns,
                total_cost_usd: record.total_cost_usd,
                duration_ms: record.duration_ms.unwrap_or_default(),
                result: record.result.clone(),
                result_truncated: false,
                structured_output: None,
                structured_output_truncated: false,
                labels: record.labels.clone(),
            },
        }
    }

    /// The notice's id: the same for every attempt, and for every sender of
    /// the same turn's end, so a receiver can drop a repeat
    /// (`webhook-id`). A digest, not the run id itself, which is the
    /// capability to read the run.
    pub(crate) fn id(&self) -> String {
        notice_id(&self.data.run_id, self.data.turn)
    }
}

/// The `webhook-id` of the notice of `run_id`'s turn `turn`.
pub(crate) fn notice_id(run_id: &str, turn: u32) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("sandstorm-notice\0{run_id}\0{turn}").as_bytes(),
    );
    format!("msg_{}", crate::hex::encode(&digest.as_ref()[..16]))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::events::{Done, DoneStatus, ErrorKind, RunError, TurnStarted};

    fn subject() -> Subject {
        Subject {
            run_id: "run_0123456789abcdef0123456789abcdef".into(),
            request_id: "req-1".into(),
            detached: true,
            started: SystemTime::now(),
            labels: BTreeMap::from([("team_id".into(), "blue".into())]),
        }
    }

    fn agent(json: &str) -> RunEvent {
        RunEvent::Agent(Bytes::copy_from_slice(json.as_bytes()))
    }

    fn done(status: DoneStatus) -> RunEvent {
        RunEvent::Done(Done {
            status,
            request_id: "req-1".into(),
            sandstorm: None,
        })
    }

    #[test]
    fn a_finished_run_s_notice_says_what_its_record_would() {
        let mut recorder = NoticeRecorder::default();
        for event in [
            agent(r#"{"type":"system","subtype":"init","model":"claude-x","session_id":"s"}"#),
            agent(
                r#"{"type":"result","num_turns":3,"total_cost_usd":0.25,"result":"Done.","structured_output":{"companies":[{"name":"A"}]}}"#,
            ),
            done(DoneStatus::Success),
        ] {
            recorder.observe(&event);
        }
        assert!(recorder.saw_done());
        let notice = recorder.notice(&subject(), false);
        let json = serde_json::to_value(&notice).expect("json");
        assert_eq!(json["type"], "run.ended");
        let data = &json["data"];
        assert_eq!(data["run_id"], "run_0123456789abcdef0123456789abcdef");
        assert_eq!(data["status"], "succeeded");
        assert_eq!(data["turn"], 1);
        assert_eq!(data["turns"], 3);
        assert_eq!(data["total_cost_usd"], 0.25);
        assert_eq!(data["result"], "Done.");
        assert_eq!(data["model"], "claude-x");
        assert_eq!(data["structured_output"]["companies"][0]["name"], "A");
        assert_eq!(data["labels"]["team_id"], "blue");
        assert_eq!(data["error"], serde_json::Value::Null);
        assert!(
            data["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert_eq!(data["ended_at"], json["timestamp"]);
        assert!(data.get("result_truncated").is_none(), "{data}");
        assert_eq!(json["timestamp"], notice.timestamp.as_str());
    }

    #[test]
    fn a_failure_names_its_type_and_a_follow_up_its_turn() {
        let mut recorder = NoticeRecorder::default();
        for event in [
            agent(
                r#"{"type":"result","num_turns":1,"result":"first","structured_output":{"a":1}}"#,
            ),
            done(DoneStatus::Success),
            RunEvent::Turn(TurnStarted {
                run_id: "run_x".into(),
                turn: 2,
                request_id: "req-2".into(),
            }),
            RunEvent::Error(RunError {
                kind: ErrorKind::Timeout,
                message: "too long".into(),
                request_id: "req-2".into(),
            }),
            done(DoneStatus::Error),
        ] {
            recorder.observe(&event);
        }
        let data = recorder.notice(&subject(), false).data;
        assert_eq!(data.turn, 2);
        assert_eq!(data.request_id, "req-2");
        assert_eq!(data.status, RecordStatus::Expired);
        let error = data.error.expect("an error");
        assert_eq!(
            (error.kind.as_str(), error.message.as_str()),
            ("timeout", "too long")
        );
        // The first turn's answer is not the second's.
        assert_eq!(data.result, None);
        assert_eq!(data.structured_output, None);
        assert_eq!(data.turns, Some(1));
    }

    #[test]
    fn an_attached_run_whose_client_left_is_failed_so() {
        let data = NoticeRecorder::default().notice(&subject(), true).data;
        assert_eq!(data.status, RecordStatus::Failed);
        let error = data.error.expect("an error");
        assert_eq!(error.kind, "client_gone");
        assert!(error.message.contains("client went away"), "{error:?}");
    }

    #[test]
    fn long_answers_are_cut_and_large_outputs_left_out_saying_so() {
        let mut recorder = NoticeRecorder::default();
        let long = "é".repeat(RESULT_CAP);
        let big = "x".repeat(STRUCTURED_CAP);
        let line = serde_json::json!({
            "type": "result", "result": long, "structured_output": {"big": big}
        });
        recorder.observe(&agent(&line.to_string()));
        recorder.observe(&done(DoneStatus::Success));
        let json = serde_json::to_value(recorder.notice(&subject(), false)).expect("json");
        let data = &json["data"];
        let result = data["result"].as_str().expect("result");
        assert!(result.len() <= RESULT_CAP && result.len() > RESULT_CAP - 2);
        assert_eq!(data["result_truncated"], true);
        assert_eq!(data["structured_output"], serde_json::Value::Null);
        assert_eq!(data["structured_output_truncated"], true);
    }

    #[test]
    fn a_notice_s_id_is_its_turn_s_and_does_not_show_the_run_id() {
        let one = notice_id("run_0123456789abcdef0123456789abcdef", 1);
        assert_eq!(one, notice_id("run_0123456789abcdef0123456789abcdef", 1));
        assert_ne!(one, notice_id("run_0123456789abcdef0123456789abcdef", 2));
        assert_ne!(one, notice_id("run_0123456789abcdef0123456789abcdee", 1));
        assert!(one.starts_with("msg_") && one.len() == 4 + 32, "{one}");
        assert!(!one.contains("0123456789abcdef"), "{one}");
    }

    #[test]
    fn a_run_whose_sandbox_went_is_expired() {
        let data = Notice::expired(&subject(), 2).data;
        assert_eq!(data.status, RecordStatus::Expired);
        assert_eq!(data.turn, 2);
        assert_eq!(data.error.map(|e| e.kind).as_deref(), Some("sandbox_gone"));
    }
}
