//! A replay's report: the recorded run and its replay side by side, as the
//! `replay` event that comes just before the replay's `done`, with the
//! markdown table 0.9.2's `ds replay` prints (cost, turns, duration, and
//! here how each ended).
//!
//! The replay's figures come from its own events, gathered by the same
//! [`Recorder`] that writes its record, so the report and the history never
//! disagree.

use std::fmt::Write as _;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::events::RunEvent;
use crate::history::RunRecord;
use crate::history::record::{Recorder, RunEnding};
use crate::run::{FINAL_EVENT_GRACE, TAP_BUFFER};

/// How much of each run's answer the markdown quotes.
const QUOTED_RESULT_CHARS: usize = 200;

/// One run of the two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Side {
    /// Its id (an attached run's is its record's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The model it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// What the SDK counted it cost, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
    /// Its turns, as the SDK counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u64>,
    /// How long it took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How it ended: a record's status (`succeeded`, `failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The agent's answer, as the record keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The hard cap on its model spend (`max_cost_usd`) it asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl Side {
    /// The recorded run, as its record tells.
    pub(crate) fn recorded(record: &RunRecord) -> Self {
        Side {
            run_id: Some(record.run_id.clone()),
            model: record.model.clone(),
            total_cost_usd: record.total_cost_usd,
            turns: record.turns,
            duration_ms: record.duration_ms,
            status: Some(record.status.as_str().to_owned()),
            error_type: record.error_type.clone(),
            result: record.result.clone(),
            max_cost_usd: record
                .request
                .as_ref()
                .and_then(|r| r["max_cost_usd"].as_f64()),
        }
    }

    /// The replay, as its events told by its end.
    fn ended(mut self, ending: RunEnding, duration_ms: u64) -> Self {
        self.model = ending.model.or(self.model);
        self.total_cost_usd = ending.total_cost_usd;
        self.turns = ending.turns;
        self.duration_ms = Some(duration_ms);
        self.status = ending.status.map(|s| s.as_str().to_owned());
        self.error_type = ending.error_type;
        self.result = ending.result;
        self
    }
}

/// `{"type":"replay","original","replay","forked","markdown"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplayReport {
    /// The recorded run.
    pub original: Side,
    /// Its replay.
    pub replay: Side,
    /// Whether the replay branched from the original's SDK session (its
    /// sandbox was still there) rather than starting over.
    pub forked: bool,
    /// The comparison as a markdown table, as `ds replay` prints it.
    pub markdown: String,
}

impl ReplayReport {
    /// The report of `replay` against `original`.
    pub(crate) fn new(original: Side, replay: Side, forked: bool) -> Self {
        let markdown = markdown(&original, &replay, forked);
        ReplayReport {
            original,
            replay,
            forked,
            markdown,
        }
    }
}

/// The replay's events with its report just before its `done`. `replay`
/// holds what is known before it runs (its id, the model and cap it asked
/// for); the rest is read from the events on the way.
pub(crate) fn reporting(
    mut inner: mpsc::Receiver<RunEvent>,
    original: Side,
    replay: Side,
    forked: bool,
) -> mpsc::Receiver<RunEvent> {
    let (tx, events) = mpsc::channel(TAP_BUFFER);
    let started = Instant::now();
    tokio::spawn(async move {
        let mut recorder = Recorder::default();
        while let Some(event) = inner.recv().await {
            recorder.observe(&event);
            if matches!(event, RunEvent::Done(_)) {
                let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let ending = recorder.ending(std::time::SystemTime::now(), false);
                let report = ReplayReport::new(original, replay.ended(ending, duration_ms), forked);
                // Like the run's own last events, bounded for a client that
                // does not read.
                let send = |event| tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(event));
                if matches!(send(RunEvent::Replay(Box::new(report))).await, Ok(Ok(()))) {
                    let _ = send(event).await;
                }
                return;
            }
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    events
}

/// The table: a row per figure, its change, and how each run ended.
fn markdown(original: &Side, replay: &Side, forked: bool) -> String {
    let id = |side: &Side| side.run_id.clone().unwrap_or_else(|| "-".to_owned());
    let mut table = format!(
        "# Replay report: {} → {}\n\n\
         | Metric | Original | Replay | Δ |\n\
         | --- | --- | --- | --- |\n",
        id(original),
        id(replay)
    );
    let model = |side: &Side| side.model.clone().unwrap_or_else(|| "default".to_owned());
    let rows = [
        (
            "Model",
            model(original),
            model(replay),
            same_or_changed(&model(original), &model(replay)),
        ),
        (
            "Cost (USD)",
            figure(original.total_cost_usd, |c| format!("{c:.4}")),
            figure(replay.total_cost_usd, |c| format!("{c:.4}")),
            delta(original.total_cost_usd, replay.total_cost_usd, |d| {
                format!("{d:+.4}")
            }),
        ),
        (
            "Turns",
            figure(original.turns, |t| t.to_string()),
            figure(replay.turns, |t| t.to_string()),
            delta(
                original.turns.map(|t| t as f64),
                replay.turns.map(|t| t as f64),
                |d| format!("{d:+.0}"),
            ),
        ),
        (
            "Duration (s)",
            figure(original.duration_ms, seconds),
            figure(replay.duration_ms, seconds),
            delta(
                original.duration_ms.map(|ms| ms as f64 / 1000.0),
                replay.duration_ms.map(|ms| ms as f64 / 1000.0),
                |d| format!("{d:+.1}"),
            ),
        ),
        (
            "Result",
            ending(original),
            ending(replay),
            same_or_changed(&ending(original), &ending(replay)),
        ),
        (
            "Cost cap (USD)",
            figure(original.max_cost_usd, |c| format!("{c}")),
            figure(replay.max_cost_usd, |c| format!("{c}")),
            "—".to_owned(),
        ),
    ];
    for (metric, before, after, change) in rows {
        let _ = writeln!(
            table,
            "| {metric} | {} | {} | {change} |",
            cell(&before),
            cell(&after)
        );
    }
    let _ = write!(
        table,
        "\n> Forked session: {}\n",
        if forked {
            "yes"
        } else {
            "no (the original's sandbox is gone; ran from the recorded prompt)"
        }
    );
    for (name, side) in [("Original", original), ("Replay", replay)] {
        if let Some(result) = &side.result {
            let quoted: String = result
                .chars()
                .take(QUOTED_RESULT_CHARS)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let more = if result.chars().count() > QUOTED_RESULT_CHARS {
                "…"
            } else {
                ""
            };
            let _ = write!(table, "\n**{name} result:** {quoted}{more}\n");
        }
    }
    table
}

fn figure<T: Copy>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "n/a".to_owned(), show)
}

fn seconds(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

/// `↓ -0.1416 (-94.4%)`: the change from `before` to `after`.
fn delta(before: Option<f64>, after: Option<f64>, show: impl Fn(f64) -> String) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return "n/a".to_owned();
    };
    let change = after - before;
    let arrow = if change < 0.0 {
        "↓"
    } else if change > 0.0 {
        "↑"
    } else {
        "→"
    };
    if before == 0.0 {
        return format!("{arrow} {}", show(change));
    }
    format!(
        "{arrow} {} ({:+.1}%)",
        show(change),
        change / before * 100.0
    )
}

fn same_or_changed(before: &str, after: &str) -> String {
    if before == after { "=" } else { "changed" }.to_owned()
}

/// How a run ended: `succeeded`, or `failed: budget_exceeded`.
fn ending(side: &Side) -> String {
    let status = side.status.as_deref().unwrap_or("unknown");
    match &side.error_type {
        Some(error) => format!("{status}: {error}"),
        None => status.to_owned(),
    }
}

/// A value as one table cell: a `|` or a line break would end it.
fn cell(value: &str) -> String {
    value.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(run: &str, model: &str, cost: f64, turns: u64, ms: u64) -> Side {
        Side {
            run_id: Some(run.into()),
            model: Some(model.into()),
            total_cost_usd: Some(cost),
            turns: Some(turns),
            duration_ms: Some(ms),
            status: Some("succeeded".into()),
            ..Side::default()
        }
    }

    #[test]
    fn the_table_compares_cost_turns_duration_and_how_each_ended() {
        let original = side("run_a", "claude-opus-4-5", 0.15, 8, 42_000);
        let mut replay = side("run_b", "claude-haiku-4-5", 0.0084, 7, 18_300);
        replay.status = Some("failed".into());
        replay.error_type = Some("budget_exceeded".into());
        replay.max_cost_usd = Some(0.05);
        replay.result = Some("Stopped | early\nhere".into());
        let report = ReplayReport::new(original, replay, true);
        let expected = "\
# Replay report: run_a → run_b

| Metric | Original | Replay | Δ |
| --- | --- | --- | --- |
| Model | claude-opus-4-5 | claude-haiku-4-5 | changed |
| Cost (USD) | 0.1500 | 0.0084 | ↓ -0.1416 (-94.4%) |
| Turns | 8 | 7 | ↓ -1 (-12.5%) |
| Duration (s) | 42.0 | 18.3 | ↓ -23.7 (-56.4%) |
| Result | succeeded | failed: budget_exceeded | changed |
| Cost cap (USD) | n/a | 0.05 | — |

> Forked session: yes

**Replay result:** Stopped | early here
";
        assert_eq!(report.markdown, expected);
    }

    #[test]
    fn what_a_run_did_not_tell_is_na_and_a_rerun_says_so() {
        let original = Side {
            run_id: Some("run_a".into()),
            ..Side::default()
        };
        let replay = side("run_b", "m", 0.0, 1, 1_000);
        let markdown = ReplayReport::new(original, replay, false).markdown;
        assert!(
            markdown.contains("| Cost (USD) | n/a | 0.0000 | n/a |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| Model | default | m | changed |"),
            "{markdown}"
        );
        assert!(markdown.contains("> Forked session: no"), "{markdown}");
    }

    #[test]
    fn the_report_is_an_event_a_client_reads_back() {
        let report = ReplayReport::new(Side::default(), Side::default(), false);
        let event = RunEvent::Replay(Box::new(report.clone()));
        let json = event.to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(value["type"], "replay");
        assert_eq!(value["markdown"], report.markdown.as_str());
        assert_eq!(RunEvent::from_json(json), event);
    }
}
