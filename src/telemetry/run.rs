//! A run as a trace. Its root span, `sandstorm.run`, covers the request's
//! run from its plan to its `done`; `run::execute` opens the children
//! (`sandbox.create`, `sandbox.upload`, `sandbox.start`, `relay` with an
//! event per agent message, `outputs`, `sandbox.destroy`) under it. The
//! figures only the run's events tell (model, turns, cost, tokens, tool
//! calls, how it ended) are read from them on the way to the client, by
//! the same [`Recorder`] the history uses, and set on the root span before
//! it ends; the metrics are recorded then too.
//!
//! Attributes follow the OpenTelemetry GenAI conventions where they fit
//! (`gen_ai.*`); the rest are `sandstorm.*`. No key is ever an attribute,
//! and the prompt only with `SANDSTORM_TRACE_PROMPTS=1`.

use opentelemetry::KeyValue;
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::Telemetry;
use super::metrics::metrics;
use crate::events::{RunEvent, message_type};
use crate::history::record::Recorder;
use crate::run::{RunHandle, TAP_BUFFER};

/// What a run's root span starts with, known before it runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunFacts {
    pub request_id: String,
    /// The run's id: a detached run's own, or its record's.
    pub run_id: Option<String>,
    pub provider: &'static str,
    /// The model asked for, if one was.
    pub model: Option<String>,
    /// The prompt, redacted, when `SANDSTORM_TRACE_PROMPTS=1`.
    pub prompt: Option<String>,
    pub detached: bool,
}

/// The root span of a run, a child of `parent` (the caller's trace) when
/// that is valid.
pub(crate) fn span(facts: &RunFacts, parent: &opentelemetry::Context) -> Span {
    let span = tracing::info_span!(
        "sandstorm.run",
        request_id = %facts.request_id,
        detached = facts.detached
    );
    if !Telemetry::active().is_on() {
        return span;
    }
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        // Only fails when the span is disabled, which then matters not.
        let _ = span.set_parent(parent.clone());
    }
    span.set_attribute("sandstorm.request.id", facts.request_id.clone());
    if let Some(run_id) = &facts.run_id {
        span.set_attribute("sandstorm.run.id", run_id.clone());
    }
    span.set_attribute("sandstorm.sandbox.provider", facts.provider);
    span.set_attribute("gen_ai.operation.name", "invoke_agent");
    span.set_attribute("gen_ai.provider.name", "anthropic");
    if let Some(model) = &facts.model {
        span.set_attribute("gen_ai.request.model", model.clone());
    }
    if let Some(prompt) = &facts.prompt {
        span.set_attribute("sandstorm.prompt", prompt.clone());
    }
    metrics().runs_started.add(
        1,
        &[KeyValue::new("sandstorm.sandbox.provider", facts.provider)],
    );
    span
}

/// Notes an agent message on the current span (the run's `relay`) as an
/// event named by its type: the trace shows the agent's steps in order.
pub(crate) fn agent_message(event: &RunEvent) {
    if !Telemetry::on() {
        return;
    }
    if let RunEvent::Agent(line) = event {
        let kind = message_type(line).unwrap_or_else(|| "agent".to_owned());
        Span::current().add_event(
            "agent.message",
            vec![KeyValue::new("sandstorm.message.type", kind)],
        );
    }
}

/// The run's events as its client gets them, its figures read on the way
/// and set on `span` (which is held until the stream ends, so it cannot end
/// before they are set). With export off the events pass untouched.
pub(crate) fn traced(span: Span, handle: RunHandle, started: Instant) -> RunHandle {
    if !Telemetry::active().is_on() {
        return handle;
    }
    let RunHandle {
        events: mut inner,
        finished,
    } = handle;
    let (tx, events) = mpsc::channel(TAP_BUFFER);
    tokio::spawn(async move {
        let mut figures = Figures::default();
        while let Some(event) = inner.recv().await {
            figures.observe(&event, started);
            if matches!(event, RunEvent::Done(_)) {
                figures.finish(&span, started);
            }
            if tx.send(event).await.is_err() {
                break;
            }
        }
        drop(span);
    });
    RunHandle { events, finished }
}

/// What a run's events told, for its span and the metrics.
#[derive(Default)]
struct Figures {
    recorder: Recorder,
    tool_calls: BTreeMap<String, u64>,
    first_event: bool,
}

impl Figures {
    fn observe(&mut self, event: &RunEvent, started: Instant) {
        self.recorder.observe(event);
        let kind = match event {
            RunEvent::Agent(line) => {
                let kind = message_type(line);
                if !self.first_event {
                    self.first_event = true;
                    metrics()
                        .time_to_first_event
                        .record(started.elapsed().as_secs_f64(), &[]);
                }
                if kind.as_deref() == Some("assistant") {
                    self.count_tools(line);
                }
                kind.unwrap_or_else(|| "agent".to_owned())
            }
            RunEvent::Progress(_) => return,
            other => other.server_type().unwrap_or_default().to_owned(),
        };
        metrics()
            .relay_events
            .add(1, &[KeyValue::new("sandstorm.event.type", kind)]);
    }

    fn count_tools(&mut self, line: &[u8]) {
        let message: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        let Some(blocks) = message["message"]["content"].as_array() else {
            return;
        };
        for block in blocks {
            if block["type"] == "tool_use"
                && let Some(name) = block["name"].as_str()
            {
                *self.tool_calls.entry(name.to_owned()).or_default() += 1;
            }
        }
    }

    /// Sets what the run did on its span, and records the metrics.
    fn finish(&self, span: &Span, started: Instant) {
        let ending = self.recorder.ending(std::time::SystemTime::now(), false);
        let status = ending.status.map_or("unknown", |s| s.as_str()).to_owned();
        span.set_attribute("sandstorm.status", status.clone());
        if let Some(model) = &ending.model {
            span.set_attribute("gen_ai.response.model", model.clone());
        }
        if let Some(turns) = ending.turns {
            span.set_attribute("sandstorm.turns", i64::try_from(turns).unwrap_or(i64::MAX));
        }
        if let Some(cost) = ending.total_cost_usd {
            span.set_attribute("sandstorm.cost_usd", cost);
        }
        if let Some(session) = &ending.session_id {
            span.set_attribute("gen_ai.conversation.id", session.clone());
        }
        let model = ending.model.clone().unwrap_or_default();
        if let Some(usage) = ending.usage {
            for (attribute, kind, count) in [
                ("gen_ai.usage.input_tokens", "input", usage.input_tokens),
                ("gen_ai.usage.output_tokens", "output", usage.output_tokens),
                (
                    "gen_ai.usage.cache_read.input_tokens",
                    "cache_read",
                    usage.cache_read_input_tokens,
                ),
                (
                    "gen_ai.usage.cache_creation.input_tokens",
                    "cache_creation",
                    usage.cache_creation_input_tokens,
                ),
            ] {
                span.set_attribute(attribute, i64::try_from(count).unwrap_or(i64::MAX));
                metrics().tokens.add(
                    count,
                    &[
                        KeyValue::new("gen_ai.request.model", model.clone()),
                        KeyValue::new("gen_ai.token.type", kind),
                    ],
                );
            }
        }
        let calls: u64 = self.tool_calls.values().sum();
        span.set_attribute(
            "sandstorm.tool_calls",
            i64::try_from(calls).unwrap_or(i64::MAX),
        );
        for (name, count) in &self.tool_calls {
            span.set_attribute(
                format!("sandstorm.tool_calls.{name}"),
                i64::try_from(*count).unwrap_or(i64::MAX),
            );
        }
        if let Some(error) = &ending.error_type {
            span.set_attribute("error.type", error.clone());
            span.set_status(opentelemetry::trace::Status::error(error.clone()));
        }
        let by_status = [KeyValue::new("sandstorm.status", status)];
        metrics().runs_finished.add(1, &by_status);
        metrics()
            .run_duration
            .record(started.elapsed().as_secs_f64(), &by_status);
        if let Some(cost) = ending.total_cost_usd {
            metrics()
                .cost
                .add(cost, &[KeyValue::new("gen_ai.request.model", model)]);
        }
    }
}
