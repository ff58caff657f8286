//! `GET /runs` and `GET /runs/{id}` over the history: the query a list
//! takes, and how finished runs and live ones become one answer.
//!
//! The history pages; the live runs (read from their sandboxes, as before
//! there was a history) are laid over the first page: a run in both shows
//! what its sandbox says now, over its record, and a live run the history
//! does not know (started by an instance with another store, or before
//! history was on) is listed beside the records.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::Value;

use super::{Filter, History, Page, RecordStatus, RunRecord, StoreError};
use crate::error::ApiError;
use crate::runs::status::RunInfo;

/// A page's size when the request names none.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// The largest page.
pub(crate) const MAX_LIMIT: usize = 200;
/// How much of the prompt a list shows, as a live run's status does.
const LIST_PROMPT_CHARS: usize = 200;
/// The labels a list filters by (issue 15's 0.9.2 drop-in).
const LABELS: [&str; 3] = ["team_id", "user_id", "channel_id"];

/// What `GET /runs` asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListQuery {
    pub filter: Filter,
    /// A `next_cursor` of an earlier page.
    pub cursor: Option<String>,
    pub limit: usize,
}

impl ListQuery {
    /// Reads the query string; each bad parameter is a 400 naming it.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut wanted = ListQuery {
            filter: Filter::default(),
            cursor: None,
            limit: DEFAULT_LIMIT,
        };
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*name {
                "status" => {
                    let status = RecordStatus::parse(&value).ok_or_else(|| {
                        let names: Vec<&str> =
                            RecordStatus::ALL.iter().map(|s| s.as_str()).collect();
                        ApiError::invalid(
                            "status",
                            format!("status must be one of {}, got {value:?}", names.join(", ")),
                        )
                    })?;
                    wanted.filter.status = Some(status);
                }
                "since" => {
                    let since = humantime::parse_rfc3339_weak(&value).map_err(|_| {
                        ApiError::invalid(
                            "since",
                            format!(
                                "since must be an RFC 3339 time (2026-12-05T10:00:00Z), got {value:?}"
                            ),
                        )
                    })?;
                    wanted.filter.since = Some(since);
                }
                "cursor" => {
                    if value.is_empty() {
                        return Err(bad_cursor());
                    }
                    wanted.cursor = Some(value.into_owned());
                }
                "limit" => {
                    wanted.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "limit",
                                format!(
                                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {value:?}"
                                ),
                            )
                        })?;
                }
                label if LABELS.contains(&label) => {
                    if value.is_empty() {
                        return Err(ApiError::invalid(
                            label,
                            format!("{label} must not be empty"),
                        ));
                    }
                    wanted
                        .filter
                        .labels
                        .insert(label.to_owned(), value.into_owned());
                }
                other => {
                    return Err(ApiError::invalid(
                        other,
                        format!(
                            "GET /runs takes status, since, team_id, user_id, channel_id, cursor and limit; not {other:?}"
                        ),
                    ));
                }
            }
        }
        Ok(wanted)
    }

    /// Whether a live run is one the filter wants.
    fn wants(&self, run: &RunInfo) -> bool {
        let status = serde_json::to_value(run.status).unwrap_or_default();
        let status_ok = self
            .filter
            .status
            .is_none_or(|wanted| status.as_str() == Some(wanted.as_str()));
        let since_ok = self.filter.since.is_none_or(|since| {
            humantime::parse_rfc3339_weak(&run.created_at).is_ok_and(|at| at >= since)
        });
        let labels_ok = self
            .filter
            .labels
            .iter()
            .all(|(name, value)| run.labels.get(name) == Some(value));
        status_ok && since_ok && labels_ok
    }
}

fn bad_cursor() -> ApiError {
    ApiError::invalid(
        "cursor",
        "cursor must be a next_cursor this server handed out, unchanged",
    )
}

/// What a store's failure means to a reader: a cursor it refuses is the
/// client's; the rest is ours, logged, and the list goes on without the
/// history (the live runs are still worth showing).
fn store_failed(e: &StoreError) -> Result<Page, ApiError> {
    match e {
        StoreError::BadCursor => Err(bad_cursor()),
        StoreError::Backend(_) => {
            tracing::warn!(error = %e, "run history: a list failed; answering with the live runs only");
            Ok(Page::default())
        }
    }
}

/// The history's page for `owner` (a digest); empty when history is off.
pub(crate) async fn page(
    history: &History,
    owner: &str,
    wanted: &ListQuery,
) -> Result<Page, ApiError> {
    let Some(store) = history.store() else {
        return Ok(Page::default());
    };
    match store
        .list(
            owner,
            &wanted.filter,
            wanted.cursor.as_deref(),
            wanted.limit,
        )
        .await
    {
        Ok(page) => Ok(page),
        Err(e) => store_failed(&e),
    }
}

/// A run's record for `owner`, if the history has it; a store that fails
/// is logged and answers as if it had none.
pub(crate) async fn record(history: &History, owner: &str, run_id: &str) -> Option<RunRecord> {
    let store = history.store()?;
    match store.get(owner, run_id).await {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(error = %e, "run history: a read failed");
            None
        }
    }
}

/// The events the history kept of `owner`'s run, ready to be read; `None`
/// when it kept none. With stored events off, none are read either: those
/// kept before stay hidden until the retention takes them. A store that
/// fails, or a blob that is not one of ours, is logged and answers as if
/// it had none.
pub(crate) async fn kept_events(
    history: &History,
    owner: &str,
    run_id: &str,
) -> Option<super::events::Reader> {
    history.events_cap()?;
    let store = history.store()?;
    let blob = match store.kept_events(owner, run_id).await {
        Ok(blob) => blob?,
        Err(e) => {
            tracing::warn!(error = %e, "run history: a read of stored events failed");
            return None;
        }
    };
    super::events::Reader::new(blob)
        .inspect_err(|e| tracing::warn!(error = %e, "run history: a run's stored events"))
        .ok()
}

/// A record as JSON, with `live` (what the run's sandbox says now) over it.
pub(crate) fn shown(record: Option<&RunRecord>, live: Option<&RunInfo>) -> Value {
    let mut shown = record
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    // The receiver's URL may hold its token: the server's to use, not to
    // show.
    if let Some(object) = shown.as_object_mut() {
        object.remove("webhook_url");
    }
    if let (Some(object), Some(Value::Object(live))) = (
        shown.as_object_mut(),
        live.and_then(|l| serde_json::to_value(l).ok()),
    ) {
        // The sandbox's short prompt would hide the record's whole one,
        // and the record's start time is the one its page was ordered by
        // (a sandbox made before start times had milliseconds has none).
        let kept_from_record = record.is_some();
        for (key, value) in live {
            if kept_from_record && matches!(key.as_str(), "prompt" | "created_at") {
                continue;
            }
            object.insert(key, value);
        }
    }
    shown
}

/// The answer of `GET /runs`: the history's page with the live runs laid
/// over it (on the first page), newest first, and the next page's cursor.
pub(crate) fn merged(live: Vec<RunInfo>, page: Page, wanted: &ListQuery) -> Value {
    let mut live: BTreeMap<String, RunInfo> = live
        .into_iter()
        .filter(|run| wanted.wants(run))
        .map(|run| (run.run_id.clone(), run))
        .collect();
    let Page {
        runs: records,
        next,
    } = page;
    let mut runs: Vec<Value> = records
        .iter()
        .map(|record| {
            let mut shown = shown(Some(record), live.remove(&record.run_id).as_ref());
            if let Some(object) = shown.as_object_mut() {
                // A list is for scanning: the whole config and prompt are
                // one `GET /runs/{id}` away.
                object.remove("config");
                if let Some(Value::String(prompt)) = object.get_mut("prompt") {
                    *prompt = prompt.chars().take(LIST_PROMPT_CHARS).collect();
                }
            }
            shown
        })
        .collect();
    runs.extend(live.values().map(|run| shown(None, Some(run))));
    let started = |run: &Value| {
        run["created_at"]
            .as_str()
            .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    runs.sort_by(|a, b| {
        started(b)
            .cmp(&started(a))
            .then_with(|| b["run_id"].as_str().cmp(&a["run_id"].as_str()))
    });
    serde_json::json!({ "runs": runs, "next_cursor": next })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: &str) -> (String, String) {
        match ListQuery::parse(Some(query)) {
            Err(ApiError::Invalid {
                field: Some(field),
                message,
            }) => (field, message),
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn a_list_query_reads_every_filter() {
        let wanted = ListQuery::parse(Some(
            "status=failed&since=2026-12-05T10:00:00Z&team_id=blue&limit=7&cursor=abc",
        ))
        .expect("valid");
        assert_eq!(wanted.filter.status, Some(RecordStatus::Failed));
        assert!(wanted.filter.since.is_some());
        assert_eq!(wanted.filter.labels["team_id"], "blue");
        assert_eq!(wanted.limit, 7);
        assert_eq!(wanted.cursor.as_deref(), Some("abc"));
        assert_eq!(ListQuery::parse(None).expect("none").limit, DEFAULT_LIMIT);
    }

    #[test]
    fn each_bad_parameter_is_refused_by_name() {
        for (query, field) in [
            ("status=done", "status"),
            ("since=yesterday", "since"),
            ("limit=0", "limit"),
            ("limit=201", "limit"),
            ("limit=ten", "limit"),
            ("cursor=", "cursor"),
            ("team_id=", "team_id"),
            ("colour=red", "colour"),
        ] {
            let (named, message) = refused(query);
            assert_eq!(named, field, "{query}: {message}");
        }
    }
}
