//! The process's metrics, `sandstorm.*` as Python Sandstorm 0.9.2 names
//! its own. With export off they are OpenTelemetry's no-op instruments: a
//! call costs a branch.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

/// Every instrument, made once.
pub(crate) struct Metrics {
    /// `sandstorm.runs.started`: runs begun, by sandbox provider.
    pub runs_started: Counter<u64>,
    /// `sandstorm.runs.finished`: runs ended, by status.
    pub runs_finished: Counter<u64>,
    /// `sandstorm.run.duration` (s): request to `done`, by status.
    pub run_duration: Histogram<f64>,
    /// `sandstorm.run.time_to_first_event` (s): request to the first agent
    /// message.
    pub time_to_first_event: Histogram<f64>,
    /// `sandstorm.e2b.call.duration` (s): each E2B API and envd call, by
    /// `call`.
    pub e2b_call: Histogram<f64>,
    /// `sandstorm.sandboxes.alive`: sandboxes this process made and has not
    /// destroyed, by provider.
    pub sandboxes_alive: UpDownCounter<i64>,
    /// `sandstorm.cost` (USD): what the SDK counted runs cost, by model.
    pub cost: Counter<f64>,
    /// `sandstorm.tokens`: tokens used, by model and `gen_ai.token.type`.
    pub tokens: Counter<u64>,
    /// `sandstorm.relay.events`: events sent to clients, by type.
    pub relay_events: Counter<u64>,
    /// `sandstorm.proxy.denied`: connections the local sandbox's egress
    /// proxy refused, by reason.
    pub proxy_denied: Counter<u64>,
    /// `sandstorm.webhook.events`: E2B lifecycle events received, by type
    /// and outcome (0.9.2's name).
    pub webhook_events: Counter<u64>,
    /// `sandstorm.webhooks`: completion webhook attempts, by `outcome`
    /// (`delivered`, `failed`, and `given_up` once a notice's last attempt
    /// failed or it was dropped).
    pub webhooks: Counter<u64>,
}

/// The instruments. Made on first use, from the meter provider
/// `telemetry::init` set (or the no-op one): call it after `init`.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("sandstorm");
        Metrics {
            runs_started: meter
                .u64_counter("sandstorm.runs.started")
                .with_description("Runs begun")
                .build(),
            runs_finished: meter
                .u64_counter("sandstorm.runs.finished")
                .with_description("Runs ended, by status")
                .build(),
            run_duration: meter
                .f64_histogram("sandstorm.run.duration")
                .with_unit("s")
                .with_description("From the request to the run's done")
                .build(),
            time_to_first_event: meter
                .f64_histogram("sandstorm.run.time_to_first_event")
                .with_unit("s")
                .with_description("From the request to the agent's first message")
                .build(),
            e2b_call: meter
                .f64_histogram("sandstorm.e2b.call.duration")
                .with_unit("s")
                .with_description("E2B API and envd calls, by call")
                .build(),
            sandboxes_alive: meter
                .i64_up_down_counter("sandstorm.sandboxes.alive")
                .with_description("Sandboxes made and not yet destroyed")
                .build(),
            cost: meter
                .f64_counter("sandstorm.cost")
                .with_unit("USD")
                .with_description("What runs cost, as the SDK counts it, by model")
                .build(),
            tokens: meter
                .u64_counter("sandstorm.tokens")
                .with_description("Tokens used, by model and type")
                .build(),
            relay_events: meter
                .u64_counter("sandstorm.relay.events")
                .with_description("Events sent to clients, by type")
                .build(),
            proxy_denied: meter
                .u64_counter("sandstorm.proxy.denied")
                .with_description("Connections the egress proxy refused")
                .build(),
            webhook_events: meter
                .u64_counter("sandstorm.webhook.events")
                .with_description("E2B lifecycle events received, by type and outcome")
                .build(),
            webhooks: meter
                .u64_counter("sandstorm.webhooks")
                .with_description("Completion webhook attempts, by outcome")
                .build(),
        }
    })
}
