//! Observability against a real OpenTelemetry receiver, Arize Phoenix on
//! loopback (tests/common/phoenix.rs).
//!
//! First, the harness itself: spans from the OpenTelemetry Python SDK, over
//! OTLP/HTTP and gRPC, read back from Phoenix's API.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::phoenix::{self, Phoenix, Span, children, named};
use serde::Deserialize;
use serde_json::json;

/// How long spans get to show up in Phoenix after the exporter returned.
const ARRIVE_WITHIN: Duration = Duration::from_secs(30);

/// A caller's span, as a `traceparent` would carry it (the W3C example).
const CALLER_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN_ID: &str = "b7ad6b7169203331";

/// What tests/observability/export_spans.py says it sent.
#[derive(Debug, Deserialize)]
struct Exported {
    trace_id: String,
    /// Span name to span id.
    spans: BTreeMap<String, String>,
}

/// Runs tests/observability/export_spans.py with only `env` (and PATH):
/// the OpenTelemetry Python SDK sends one trace of four spans.
fn export(env: &[(&str, String)]) -> Exported {
    let mut command = Command::new(phoenix::python());
    command
        .arg(common::tools::manifest_dir().join("tests/observability/export_spans.py"))
        .env_clear()
        .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
        .envs(env.iter().map(|(name, value)| (*name, value)));
    let (status, stdout, stderr) = common::process::run(command, Duration::from_secs(60));
    assert!(
        status.success(),
        "export_spans.py: {status}\n{stdout}\n{stderr}"
    );
    // The SDK logs export errors and goes on: none is expected.
    assert!(
        !stderr.contains("Failed to export"),
        "export_spans.py: {stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("export_spans.py printed {stdout:?}: {e}\n{stderr}"))
}

/// The four spans of `exported`, as Phoenix stored them: one trace, the
/// tree, the attributes and event, the statuses and the times.
fn check_trace(spans: &[Span], exported: &Exported, remote_parent: Option<&str>) {
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for span in spans {
        assert_eq!(span.trace_id, exported.trace_id, "{span:#?}");
        assert_eq!(
            Some(&span.span_id),
            exported.spans.get(&span.name),
            "{span:#?}"
        );
        assert_eq!(span.kind, "UNKNOWN", "{span:#?}");
    }

    let root = named(spans, "harness.root");
    let step = named(spans, "harness.step");
    let leaf = named(spans, "harness.leaf");
    let failed = named(spans, "harness.failed");
    assert_eq!(root.parent_id.as_deref(), remote_parent);
    let names = |spans: Vec<&Span>| {
        spans
            .into_iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(children(spans, root)),
        ["harness.step", "harness.failed"]
    );
    assert_eq!(names(children(spans, step)), ["harness.leaf"]);
    assert!(children(spans, leaf).is_empty());
    for (parent, child) in [(root, step), (step, leaf), (root, failed)] {
        assert!(
            parent.start_time <= child.start_time && child.end_time <= parent.end_time,
            "{} lies within {}: {child:#?} {parent:#?}",
            child.name,
            parent.name
        );
    }

    assert_eq!(
        step.attributes,
        json!({
            "harness.text": "hello",
            "harness.count": 3,
            "harness.ratio": 0.25,
            "harness.flag": true,
            "harness.tools": ["Bash", "Read"],
        })
    );
    assert_eq!(step.str_attribute("harness.text"), "hello");
    assert_eq!(step.events.len(), 1, "{step:#?}");
    assert_eq!(step.events[0].name, "harness.message");
    assert_eq!(step.events[0].attributes, json!({ "harness.turn": 1 }));

    assert_eq!(
        (failed.status_code.as_str(), failed.status_message.as_str()),
        ("ERROR", "it failed on purpose")
    );
    for span in [root, step, leaf] {
        assert_eq!(span.status_code, "UNSET", "{span:#?}");
    }
}

/// The harness check: Phoenix starts on loopback, takes spans from a real
/// OpenTelemetry SDK over OTLP/HTTP and gRPC, and gives them back through
/// its API with their tree, attributes, statuses and a `traceparent`
/// parent, filed by project as the module doc says.
#[tokio::test]
async fn phoenix_harness_reads_back_spans_sent_over_otlp_http_and_grpc() {
    let started = Instant::now();
    let phoenix = Phoenix::start().await;
    eprintln!("Phoenix started in {:?}", started.elapsed());

    // OTLP/HTTP, continuing a caller's trace; the project from the
    // resource attribute.
    let mut env = phoenix.otel_env("http/protobuf", "harness-http");
    env.push((
        "TRACEPARENT",
        format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),
    ));
    let http = export(&env);
    assert_eq!(http.trace_id, CALLER_TRACE_ID);

    // OTLP/gRPC, a trace of its own, with a service name but no project:
    // the default project.
    let grpc = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.otlp_grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_SERVICE_NAME", "harness-grpc".to_owned()),
    ]);
    assert_ne!(grpc.trace_id, CALLER_TRACE_ID);

    // OTLP/HTTP with the project in a header: the header wins over the
    // resource attribute.
    let mut env = phoenix.otel_env("http/protobuf", "harness-ignored");
    env.push((
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-project-name=harness-header".to_owned(),
    ));
    let header = export(&env);

    let spans = phoenix
        .wait_for_count("harness-http", 4, ARRIVE_WITHIN)
        .await;
    check_trace(&spans, &http, Some(CALLER_SPAN_ID));
    let spans = phoenix.wait_for_count("default", 4, ARRIVE_WITHIN).await;
    check_trace(&spans, &grpc, None);
    let spans = phoenix
        .wait_for_count("harness-header", 4, ARRIVE_WITHIN)
        .await;
    check_trace(&spans, &header, None);
    let leaf = phoenix
        .wait_for_span("harness-header", "harness.leaf", ARRIVE_WITHIN)
        .await;
    assert_eq!(leaf.span_id, header.spans["harness.leaf"]);
    for project in ["harness-grpc", "harness-ignored"] {
        assert!(phoenix.spans(project).await.is_empty(), "{project}");
    }

    // The screenshot tooling for the docs, on request: the HTTP trace with
    // its attribute-laden span selected.
    if let Some(out) = std::env::var_os("SANDSTORM_PHOENIX_SCREENSHOT") {
        phoenix.screenshot(
            &http.trace_id,
            Some("harness.step"),
            std::path::Path::new(&out),
        );
    }

    assert_eq!(
        phoenix.sockets_off_loopback(),
        [],
        "Phoenix holds sockets off loopback"
    );
    eprintln!("harness check done in {:?}", started.elapsed());
}
