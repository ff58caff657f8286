//! The request a replay sends again: what a run's record keeps of the
//! request that started it, and that request rebuilt with a replay's
//! overrides.
//!
//! A record keeps the request's own choices, in the body's field names,
//! rather than the effective config: a replay is a new run on today's
//! sandstorm.json, as the original was a run on its day's, and what the
//! request chose (a model, a tool list, a cap) is what it chooses again.
//! Keys are never kept. Files are kept by name only: their contents may be
//! large or private, so a replay of a run with files brings them again.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::events::Redactor;
use crate::history::RunRecord;
use crate::request::{OutputFormatChoice, Query};

/// The most of a request a record keeps: subagents and skills sent with a
/// request may be long, and a record must fit one DynamoDB item (400 KB)
/// beside a 64 KiB prompt.
pub(crate) const REQUEST_CAP: usize = 64 * 1024;

/// Where a record keeps the names of the files its request uploaded.
const FILE_NAMES: &str = "file_names";

/// The fields a replay's body may not set: the replay's prompt is the
/// recorded one, and it is a run of its own, not a turn of another.
const FIXED: [(&str, &str); 3] = [
    (
        "prompt",
        "a replay sends the recorded prompt again; POST /query runs a new one",
    ),
    (
        "resume",
        "a replay forks the recorded run's session itself when its sandbox is still there",
    ),
    (
        "fork_session",
        "a replay forks the recorded run's session itself when its sandbox is still there",
    ),
];

/// What a record keeps of `query`: its choices as body fields, passed
/// through the run's redactor, or `None` when they come to more than
/// [`REQUEST_CAP`] bytes (the run is then recorded, but not replayable).
pub(crate) fn recorded(query: &Query, redactor: &Redactor) -> Option<Value> {
    let mut fields = Map::new();
    let mut set = |name: &str, value: Value| {
        if !value.is_null() {
            fields.insert(name.to_owned(), value);
        }
    };
    set("model", json!(query.model));
    set("max_turns", json!(query.max_turns));
    set("timeout", json!(query.timeout.map(|t| t.as_secs())));
    set("outputs", json!(query.outputs));
    set("detach", json!(query.detach));
    set("keep_alive", json!(query.keep_alive.map(|t| t.as_secs())));
    let agent = &query.agent;
    set(
        "output_format",
        match &agent.output_format {
            Some(OutputFormatChoice::Off) => json!({}),
            Some(OutputFormatChoice::Format(format)) => json!(format),
            None => Value::Null,
        },
    );
    set("allowed_tools", json!(agent.allowed_tools));
    set("allowed_mcp_servers", json!(agent.allowed_mcp_servers));
    set("allowed_skills", json!(agent.allowed_skills));
    set("allowed_agents", json!(agent.allowed_agents));
    if !agent.extra_agents.is_empty() {
        set("extra_agents", json!(agent.extra_agents));
    }
    if !agent.extra_skills.is_empty() {
        set("extra_skills", json!(agent.extra_skills));
    }
    set("max_budget_usd", json!(agent.max_budget_usd));
    set("max_cost_usd", json!(query.caps.max_cost_usd));
    set("max_tokens", json!(query.caps.max_tokens));
    for (label, value) in &query.labels {
        set(label, json!(value));
    }
    if !query.files.is_empty() {
        let names: Vec<&str> = query.files.iter().map(|f| f.path.as_str()).collect();
        set(FILE_NAMES, json!(names));
    }
    let text = serde_json::to_vec(&Value::Object(fields)).ok()?;
    if text.len() > REQUEST_CAP {
        return None;
    }
    serde_json::from_slice(&redactor.redact(bytes::Bytes::from(text))).ok()
}

/// What a replay's body changes: `/query` fields, keys among them.
#[derive(Debug, Default)]
pub(crate) struct Overrides(BTreeMap<String, Value>);

impl Overrides {
    /// Reads a replay's body: a JSON object (an empty body changes
    /// nothing), without the fields a replay sets itself.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Overrides::default());
        }
        let overrides: BTreeMap<String, Value> =
            serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
                message: format!(
                    "a replay's body is a JSON object of /query fields to change: {e}"
                ),
            })?;
        if let Some((field, why)) = FIXED
            .into_iter()
            .find(|(field, _)| overrides.contains_key(*field))
        {
            return Err(ApiError::invalid(field, format!("{field}: {why}")));
        }
        Ok(Overrides(overrides))
    }

    /// The text of field `name`, when it is one: a sandbox credential the
    /// body brought says who the caller is before the body is read whole.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }
}

/// The body of the replay of `original`: its recorded prompt and request,
/// with each field of `overrides` in place of the recorded one. Refused,
/// naming the field, when the record cannot be sent again whole.
pub(crate) fn replay_body(original: &RunRecord, overrides: Overrides) -> Result<Vec<u8>, ApiError> {
    let Overrides(overrides) = overrides;
    let run = &original.run_id;
    if original.prompt_truncated {
        return Err(ApiError::RunOver {
            message: format!(
                "run {run}'s prompt was longer than the 64 KiB a record keeps; \
                 a replay cannot send it whole"
            ),
        });
    }
    let mut body = match &original.request {
        Some(Value::Object(recorded)) => recorded.clone(),
        Some(_) | None => {
            return Err(ApiError::RunOver {
                message: format!(
                    "run {run}'s record does not keep its request (it was larger than \
                     {} KiB, or recorded before replay existed); it cannot be replayed",
                    REQUEST_CAP / 1024
                ),
            });
        }
    };
    let file_names = body.remove(FILE_NAMES);
    if let Some(names) = file_names.as_ref().and_then(Value::as_array)
        && !overrides.contains_key("files")
    {
        let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
        return Err(ApiError::invalid(
            "files",
            format!(
                "run {run} uploaded {}; the history keeps file names, not contents, \
                 so send them again in files",
                names.join(", ")
            ),
        ));
    }
    body.extend(overrides);
    body.insert("prompt".to_owned(), Value::String(original.prompt.clone()));
    serde_json::to_vec(&Value::Object(body)).map_err(|e| ApiError::BadRequest {
        message: format!("the replay's request could not be built: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RecordStatus;

    fn query(body: &Value) -> Query {
        Query::from_json(body.to_string().as_bytes(), &[]).expect("a valid query")
    }

    fn record(request: Option<Value>) -> RunRecord {
        RunRecord {
            run_id: "run_1".into(),
            owner: String::new(),
            status: RecordStatus::Succeeded,
            detached: false,
            created_at: "2026-12-06T10:00:00.000Z".into(),
            ended_at: None,
            duration_ms: None,
            request_id: "r".into(),
            model: None,
            turns: None,
            total_cost_usd: None,
            usage: None,
            spend: None,
            prompt: "the recorded prompt".into(),
            prompt_truncated: false,
            config: Value::Null,
            outputs: Vec::new(),
            session_id: None,
            error_type: None,
            labels: BTreeMap::new(),
            sandbox_id: None,
            request,
            replay_of: None,
            result: None,
            webhook_url: None,
        }
    }

    fn replayed(original: &RunRecord, overrides: &Value) -> Result<Value, ApiError> {
        let overrides = Overrides::parse(overrides.to_string().as_bytes())?;
        let body = replay_body(original, overrides)?;
        Ok(serde_json::from_slice(&body).expect("JSON"))
    }

    #[test]
    fn a_request_is_recorded_by_its_choices_without_keys_or_file_contents() {
        let sent = json!({
            "prompt": "p",
            "anthropic_api_key": "sk-ant-api03-recorded-nowhere",
            "model": "claude-haiku-4-5",
            "max_turns": 3,
            "timeout": 120,
            "files": {"data.csv": "secret,contents"},
            "outputs": ["out/**"],
            "output_format": {},
            "allowed_tools": ["Read"],
            "extra_skills": {"greet": "Say hi."},
            "max_cost_usd": 0.5,
            "team_id": "blue",
        });
        let recorded = recorded(
            &query(&sent),
            &Redactor::new(["sk-ant-api03-recorded-nowhere"]),
        )
        .expect("small enough");
        assert_eq!(
            recorded,
            json!({
                "model": "claude-haiku-4-5",
                "max_turns": 3,
                "timeout": 120,
                "file_names": ["data.csv"],
                "outputs": ["out/**"],
                "output_format": {},
                "allowed_tools": ["Read"],
                "extra_skills": {"greet": "Say hi."},
                "max_cost_usd": 0.5,
                "team_id": "blue",
            })
        );
    }

    #[test]
    fn a_request_past_the_cap_is_not_recorded() {
        let long = "x".repeat(REQUEST_CAP);
        let sent = json!({"prompt": "p", "extra_skills": {"long": long}});
        assert_eq!(recorded(&query(&sent), &Redactor::new([])), None);
    }

    #[test]
    fn the_replay_is_the_recorded_request_with_the_overrides_over_it() {
        let original = record(Some(json!({"model": "claude-opus-4-5", "max_turns": 3})));
        let body = replayed(
            &original,
            &json!({"model": "claude-haiku-4-5", "max_cost_usd": 0.05}),
        )
        .expect("replayable");
        assert_eq!(
            body,
            json!({
                "prompt": "the recorded prompt",
                "model": "claude-haiku-4-5",
                "max_turns": 3,
                "max_cost_usd": 0.05,
            })
        );
        // The rebuilt body is a valid request.
        query(&body);
        let unchanged = replay_body(&original, Overrides::default()).expect("no overrides");
        assert_eq!(
            serde_json::from_slice::<Value>(&unchanged).expect("JSON"),
            json!({
                "prompt": "the recorded prompt",
                "model": "claude-opus-4-5",
                "max_turns": 3,
            })
        );
    }

    fn refused_field(result: Result<Value, ApiError>) -> Option<String> {
        match result {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("not refused by field: {other:?}"),
        }
    }

    #[test]
    fn files_whose_contents_are_gone_must_be_sent_again() {
        let original = record(Some(json!({"file_names": ["data.csv", "notes.md"]})));
        let message = match replayed(&original, &json!({})) {
            Err(ApiError::Invalid {
                field: Some(field),
                message,
            }) if field == "files" => message,
            other => panic!("{other:?}"),
        };
        assert!(message.contains("data.csv, notes.md"), "{message}");
        let body = replayed(&original, &json!({"files": {"data.csv": "1"}})).expect("files sent");
        assert_eq!(body["files"], json!({"data.csv": "1"}));
        assert!(body.get(FILE_NAMES).is_none(), "{body}");
    }

    #[test]
    fn what_a_replay_sets_itself_is_refused_by_name() {
        let original = record(Some(json!({})));
        for field in ["prompt", "resume", "fork_session"] {
            let overrides = json!({ field: "x" });
            assert_eq!(
                refused_field(replayed(&original, &overrides)).as_deref(),
                Some(field)
            );
        }
        assert!(matches!(
            Overrides::parse(b"[1]"),
            Err(ApiError::BadRequest { .. })
        ));
    }

    #[test]
    fn a_cut_prompt_or_a_missing_request_cannot_be_replayed() {
        let mut cut = record(Some(json!({})));
        cut.prompt_truncated = true;
        assert!(matches!(
            replay_body(&cut, Overrides::default()),
            Err(ApiError::RunOver { .. })
        ));
        assert!(matches!(
            replay_body(&record(None), Overrides::default()),
            Err(ApiError::RunOver { .. })
        ));
    }
}
