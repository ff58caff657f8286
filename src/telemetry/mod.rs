//! Logs, traces and metrics (issue 18).
//!
//! Every door logs through `tracing` to stderr, as text or JSON lines. When
//! OTLP export is on ([`export`]: an endpoint is set), the same spans also
//! go to an OpenTelemetry backend through `tracing-opentelemetry` (a run is
//! a trace, [`run`]), the [`metrics`] go with them, and the JSON lines carry
//! `trace_id` and `span_id` ([`logs`]). When it is off nothing of that is
//! built: no exporter, no task, and instruments that do nothing.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

pub(crate) mod agent;
pub(crate) mod context;
mod export;
pub mod flush;
mod logs;
pub(crate) mod metrics;
pub(crate) mod run;

/// How log lines are written.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// Human-readable lines, for `ds`.
    Text,
    /// One JSON object per line, for CloudWatch and Vercel logs.
    Json,
}

/// The OpenTelemetry export of this process, when it is on: what a door
/// flushes before its platform may freeze it, and `ds` before it exits.
/// Cheap to clone; the default is off.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    providers: Option<Arc<Providers>>,
    /// `SANDSTORM_TRACE_PROMPTS=1`: a run's span shows its prompt.
    trace_prompts: bool,
}

#[derive(Debug)]
struct Providers {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// How long a flush may wait for the exporters.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's telemetry, once [`init`] has run.
static ACTIVE: OnceLock<Telemetry> = OnceLock::new();

impl Telemetry {
    /// Whether spans and metrics are exported.
    pub fn is_on(&self) -> bool {
        self.providers.is_some()
    }

    /// Whether a run's span carries its prompt (`SANDSTORM_TRACE_PROMPTS=1`,
    /// with export on).
    pub fn traces_prompts(&self) -> bool {
        self.trace_prompts && self.is_on()
    }

    /// Whether the process exports: [`Telemetry::active`]'s answer, without
    /// a clone, for what runs once per event.
    pub(crate) fn on() -> bool {
        ACTIVE.get().is_some_and(Telemetry::is_on)
    }

    /// The process's telemetry: off until [`init`] turned it on.
    pub fn active() -> Telemetry {
        ACTIVE.get().cloned().unwrap_or_default()
    }

    /// Sends what the exporters hold now, waiting at most five seconds.
    /// The SDK's flush blocks its caller, so it runs off the async threads.
    pub async fn flush(&self) {
        let Some(providers) = self.providers.clone() else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(tracer) = &providers.tracer
                && let Err(e) = tracer.force_flush()
            {
                tracing::warn!(error = %e, "OpenTelemetry: the spans could not be sent");
            }
            if let Some(meter) = &providers.meter
                && let Err(e) = meter.force_flush()
            {
                tracing::warn!(error = %e, "OpenTelemetry: the metrics could not be sent");
            }
        });
        if tokio::time::timeout(FLUSH_TIMEOUT, flushed).await.is_err() {
            tracing::warn!(timeout = ?FLUSH_TIMEOUT, "OpenTelemetry: the flush did not finish in time");
        }
    }
}

/// Installs the global subscriber once, reading the process's environment.
/// `RUST_LOG` overrides `default`.
pub fn init(format: Format, default: &str) -> Telemetry {
    init_from(format, default, &|name| std::env::var(name).ok())
}

/// [`init`], with the `OTEL_*` settings read from `env` (`ds` passes its
/// environment with `.env` in it). A setting that cannot be read is logged
/// and leaves export off; the server serves all the same.
pub fn init_from(format: Format, default: &str, env: &dyn Fn(&str) -> Option<String>) -> Telemetry {
    if let Some(active) = ACTIVE.get() {
        // A second init (tests, embedding) keeps the first.
        return active.clone();
    }
    if tracing::dispatcher::has_been_set() {
        // Someone else's subscriber is the process's: ours could not be
        // installed, and exporters built for it would only be dropped
        // (whose shutdown waits on a task of this very runtime).
        return ACTIVE.get_or_init(Telemetry::default).clone();
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (providers, problem) = match export::settings(env) {
        Ok(None) => (None, None),
        // The exporters' batches are sent from tasks on this runtime.
        Ok(Some(_)) if tokio::runtime::Handle::try_current().is_err() => (
            None,
            Some("OpenTelemetry export needs a Tokio runtime; it is off".to_owned()),
        ),
        Ok(Some(settings)) => match export::build(&settings) {
            Ok(built) => (Some(built), None),
            Err(e) => (None, Some(e)),
        },
        Err(e) => (None, Some(e)),
    };
    // Only this crate's spans are exported: a run's, not every library's.
    let otel = providers
        .as_ref()
        .and_then(|p| p.tracer.as_ref())
        .map(|tracer| {
            tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer("sandstorm"))
                .with_location(false)
                .with_threads(false)
                .with_filter(Targets::new().with_target("sandstorm", tracing::Level::INFO))
        });
    // Colour codes only for a person at a terminal, not for Docker,
    // systemd or CloudWatch logs.
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(otel);
    let installed = match format {
        Format::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
        Format::Json => registry
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stderr)
                    .event_format(logs::WithTraceIds(
                        fmt::format().json().with_current_span(true),
                    ))
                    .fmt_fields(fmt::format::JsonFields::new())
                    .with_filter(filter),
            )
            .try_init(),
    };
    if let Some(problem) = problem {
        tracing::warn!(%problem, "OpenTelemetry export is off");
    }
    let telemetry = match (installed, providers) {
        (Ok(()), Some(built)) => {
            if let Some(meter) = &built.meter {
                opentelemetry::global::set_meter_provider(meter.clone());
            }
            tracing::info!(
                traces = built.tracer.is_some(),
                metrics = built.meter.is_some(),
                "OpenTelemetry export is on"
            );
            Telemetry {
                providers: Some(Arc::new(Providers {
                    tracer: built.tracer,
                    meter: built.meter,
                })),
                trace_prompts: env("SANDSTORM_TRACE_PROMPTS").is_some_and(|v| v.trim() == "1"),
            }
        }
        _ => Telemetry::default(),
    };
    ACTIVE.get_or_init(|| telemetry).clone()
}
