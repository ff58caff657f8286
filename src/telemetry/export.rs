//! Where traces and metrics go: the standard `OTEL_*` variables read into
//! [`Settings`], and the OTLP exporters and providers built from them.
//!
//! Export is off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`
//! or a signal's own), or `SANDSTORM_TELEMETRY=1` asks for the SDK's default
//! endpoint (the name Python Sandstorm 0.9.2 turns it on with).
//! `SANDSTORM_TELEMETRY=0` and `OTEL_SDK_DISABLED=true` turn it off
//! whatever else is set. When it is off nothing here is built, and a run's
//! spans go to the log alone.
//!
//! The variables are read through a lookup rather than from the process, so
//! that `ds` honours them from `.env` as it does every other setting.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

/// The service name when `OTEL_SERVICE_NAME` sets none.
const DEFAULT_SERVICE: &str = "sandstorm";
/// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, spec default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often metrics are sent (`OTEL_METRIC_EXPORT_INTERVAL`, spec default).
const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);

/// How OTLP is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `grpc`: OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// `http/protobuf`, the spec's default (port 4318).
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

impl Protocol {
    fn parse(variable: &str, value: &str) -> Result<Self, String> {
        match value.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Ok(Protocol::HttpJson),
            other => Err(format!(
                "{variable} must be grpc, http/protobuf or http/json, got {other:?}"
            )),
        }
    }

    fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::Grpc => "http://localhost:4317",
            Protocol::HttpProtobuf | Protocol::HttpJson => "http://localhost:4318",
        }
    }
}

/// One signal's exporter: where and how.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub protocol: Protocol,
    /// The whole URL: for HTTP, the signal's path included.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub service_name: String,
    /// `None` when `OTEL_TRACES_EXPORTER=none`.
    pub traces: Option<Target>,
    /// `None` when `OTEL_METRICS_EXPORTER=none`.
    pub metrics: Option<Target>,
    pub metric_interval: Duration,
}

/// The settings `env` holds: `Ok(None)` when export is off, an error naming
/// the variable when one cannot be read.
pub(crate) fn settings(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let switch = get("SANDSTORM_TELEMETRY");
    match switch.as_deref().map(str::trim) {
        None | Some("1" | "0") => {}
        Some(other) => {
            return Err(format!("SANDSTORM_TELEMETRY must be 0 or 1, got {other:?}"));
        }
    }
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|name| get(name).is_some());
    let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let on = match switch.as_deref().map(str::trim) {
        Some("0") => false,
        Some(_) => true,
        None => endpoint_set,
    };
    if !on || disabled {
        return Ok(None);
    }
    let target = |signal: &str, path: &str| -> Result<Option<Target>, String> {
        let upper = signal.to_ascii_uppercase();
        let exporter = format!("OTEL_{upper}_EXPORTER");
        match get(&exporter).as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => return Err(format!("{exporter} must be otlp or none, got {other:?}")),
        }
        let protocol_var = format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL");
        let protocol = match (get(&protocol_var), get("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            (Some(value), _) => Protocol::parse(&protocol_var, &value)?,
            (None, Some(value)) => Protocol::parse("OTEL_EXPORTER_OTLP_PROTOCOL", &value)?,
            (None, None) => Protocol::HttpProtobuf,
        };
        let endpoint = match get(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")) {
            // A signal's own endpoint is used as it is.
            Some(own) => own.trim().to_owned(),
            None => {
                let base = get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .unwrap_or_else(|| protocol.default_endpoint().to_owned());
                let base = base.trim().trim_end_matches('/');
                match protocol {
                    Protocol::Grpc => base.to_owned(),
                    Protocol::HttpProtobuf | Protocol::HttpJson => format!("{base}{path}"),
                }
            }
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "the OTLP {signal} endpoint must be an http:// or https:// URL, got {endpoint:?}"
            ));
        }
        let mut headers = parse_headers("OTEL_EXPORTER_OTLP_HEADERS", get)?;
        headers.extend(parse_headers(
            &format!("OTEL_EXPORTER_OTLP_{upper}_HEADERS"),
            get,
        )?);
        let timeout = millis(&format!("OTEL_EXPORTER_OTLP_{upper}_TIMEOUT"), get)?
            .or(millis("OTEL_EXPORTER_OTLP_TIMEOUT", get)?)
            .unwrap_or(DEFAULT_TIMEOUT);
        Ok(Some(Target {
            protocol,
            endpoint,
            headers,
            timeout,
        }))
    };
    Ok(Some(Settings {
        service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE.to_owned()),
        traces: target("traces", "/v1/traces")?,
        metrics: target("metrics", "/v1/metrics")?,
        metric_interval: millis("OTEL_METRIC_EXPORT_INTERVAL", get)?
            .unwrap_or(DEFAULT_METRIC_INTERVAL),
    }))
}

/// `key1=value1,key2=value2`, values percent-decoded, as the spec writes
/// OTLP headers. The error names the variable, never the value (it is
/// usually a credential).
fn parse_headers(
    variable: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let Some(text) = get(variable) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{variable} must be key=value pairs, comma-separated"))?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| format!("{variable} has a value that is not UTF-8 once decoded"))?;
            Ok((key.trim().to_owned(), value.into_owned()))
        })
        .collect()
}

fn millis(
    variable: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<Duration>, String> {
    get(variable)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{variable} must be milliseconds, got {v:?}"))
        })
        .transpose()
}

/// The providers `settings` ask for, their batches sent from tasks on the
/// current Tokio runtime.
pub(crate) struct Providers {
    pub tracer: Option<SdkTracerProvider>,
    pub meter: Option<SdkMeterProvider>,
}

/// Builds the exporters and providers; an error says which signal failed.
pub(crate) fn build(settings: &Settings) -> Result<Providers, String> {
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let tracer = match &settings.traces {
        Some(target) => {
            let exporter = span_exporter(target).map_err(|e| format!("OTLP traces: {e}"))?;
            let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
            Some(
                SdkTracerProvider::builder()
                    .with_span_processor(processor)
                    .with_resource(resource.clone())
                    .build(),
            )
        }
        None => None,
    };
    let meter = match &settings.metrics {
        Some(target) => {
            let exporter = metric_exporter(target).map_err(|e| format!("OTLP metrics: {e}"))?;
            let reader = PeriodicReader::builder(exporter, runtime::Tokio)
                .with_interval(settings.metric_interval)
                .build();
            Some(
                SdkMeterProvider::builder()
                    .with_reader(reader)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    Ok(Providers { tracer, meter })
}

fn http_headers(target: &Target) -> HashMap<String, String> {
    target.headers.iter().cloned().collect()
}

fn grpc_metadata(target: &Target) -> Result<tonic::metadata::MetadataMap, String> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (key, value) in &target.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("the header name {key:?} is not valid for gRPC"))?;
        let value = value
            .parse()
            .map_err(|_| format!("the value of header {key} is not valid for gRPC"))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

fn http_protocol(protocol: Protocol) -> opentelemetry_otlp::Protocol {
    match protocol {
        Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        Protocol::Grpc | Protocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
    }
}

fn span_exporter(target: &Target) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match target.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&target.endpoint)
            .with_timeout(target.timeout)
            .with_metadata(grpc_metadata(target)?)
            .build(),
        Protocol::HttpProtobuf | Protocol::HttpJson => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(http_protocol(target.protocol))
            .with_endpoint(&target.endpoint)
            .with_timeout(target.timeout)
            .with_headers(http_headers(target))
            .build(),
    };
    built.map_err(|e| e.to_string())
}

fn metric_exporter(target: &Target) -> Result<opentelemetry_otlp::MetricExporter, String> {
    let built = match target.protocol {
        Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(&target.endpoint)
            .with_timeout(target.timeout)
            .with_metadata(grpc_metadata(target)?)
            .build(),
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(http_protocol(target.protocol))
                .with_endpoint(&target.endpoint)
                .with_timeout(target.timeout)
                .with_headers(http_headers(target))
                .build()
        }
    };
    built.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let pairs: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        settings(&|name| pairs.get(name).cloned())
    }

    #[test]
    fn export_is_off_unless_an_endpoint_or_the_switch_asks() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
        let on = read(&[("SANDSTORM_TELEMETRY", "1")])
            .expect("valid")
            .expect("on");
        assert_eq!(
            on.traces.map(|t| t.endpoint).as_deref(),
            Some("http://localhost:4318/v1/traces")
        );
        let endpoint = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        assert!(read(&endpoint).expect("valid").is_some());
        let off = [endpoint[0], ("SANDSTORM_TELEMETRY", "0")];
        assert_eq!(read(&off), Ok(None));
        let disabled = [endpoint[0], ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(read(&disabled), Ok(None));
    }

    #[test]
    fn endpoints_follow_the_spec_per_protocol_and_signal() {
        let http = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .expect("valid")
            .expect("on");
        assert_eq!(
            http.traces.expect("traces").endpoint,
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http.metrics.expect("metrics").endpoint,
            "http://c:4318/v1/metrics"
        );
        assert_eq!(http.service_name, "sandstorm");
        let grpc = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/custom"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ])
        .expect("valid")
        .expect("on");
        let traces = grpc.traces.expect("traces");
        assert_eq!(
            (traces.protocol, traces.endpoint.as_str()),
            (Protocol::Grpc, "http://c:4317")
        );
        let metrics = grpc.metrics.expect("metrics");
        assert_eq!(
            (metrics.protocol, metrics.endpoint.as_str()),
            (Protocol::HttpJson, "http://m:9/custom")
        );
        let no_metrics = read(&[
            ("SANDSTORM_TELEMETRY", "1"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .expect("valid")
        .expect("on");
        assert!(no_metrics.metrics.is_none() && no_metrics.traces.is_some());
    }

    #[test]
    fn headers_and_timeouts_are_read_and_bad_values_named() {
        let on = read(&[
            ("SANDSTORM_TELEMETRY", "1"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Basic%20abc, x-team = blue",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
        ])
        .expect("valid")
        .expect("on");
        let traces = on.traces.expect("traces");
        assert_eq!(
            traces.headers,
            [
                ("authorization".to_owned(), "Basic abc".to_owned()),
                ("x-team".to_owned(), "blue".to_owned())
            ]
        );
        assert_eq!(traces.timeout, Duration::from_millis(2500));
        for (variable, value) in [
            ("SANDSTORM_TELEMETRY", "yes"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "sk-secret-value-without-equals",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
        ] {
            let error = read(&[("SANDSTORM_TELEMETRY", "1"), (variable, value)])
                .err()
                .or_else(|| read(&[(variable, value)]).err())
                .unwrap_or_else(|| panic!("{variable}={value} was accepted"));
            assert!(error.contains(variable), "{error}");
            assert!(!error.contains("sk-secret"), "{error}");
        }
        let bad_url = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]);
        assert!(bad_url.is_err_and(|e| e.contains("http://")));
    }
}
