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

/// What the agent's command prints: the trace context its process got.
const ECHO_TRACEPARENT: &str = "echo tp=$TRACEPARENT";

/// The project the product's spans are filed under in Phoenix.
const PROJECT: &str = "sandstorm-product";

/// `ds serve` (E2B emulator, scripted model) exporting its traces to
/// Phoenix and its metrics to a plain OTLP receiver.
async fn traced_serve(
    phoenix: &Phoenix,
    metrics: &common::otlp::Receiver,
    model: &common::model_server::ModelServer,
) -> common::product::Product {
    common::product::Serve::new(common::product::Chain::E2b, model)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("{}/v1/traces", phoenix.otlp_http_endpoint()),
        )
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            &format!("x-project-name={PROJECT}"),
        )
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            &format!("{}/v1/metrics", metrics.url),
        )
        .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_SERVICE_NAME", "sandstorm-under-test")
        .start()
        .await
}

#[tokio::test]
async fn a_query_through_ds_serve_is_one_trace_under_the_callers_span() {
    let phoenix = Phoenix::start().await;
    let metrics = common::otlp::Receiver::start().await;
    let model = common::model_server::ModelServer::start(common::model_server::Script::Bash {
        command: ECHO_TRACEPARENT.to_owned(),
    })
    .await;
    let product = traced_serve(&phoenix, &metrics, &model).await;
    let prompt = "print the trace context, then report";
    let response = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .header(
            "traceparent",
            format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),
        )
        .json(&json!({"prompt": prompt, "model": "claude-sonnet-4-5"}))
        .send()
        .await
        .expect("POST /query");
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    let events = common::sse::json_events(&response.text().await.expect("the stream"));
    let result = events
        .iter()
        .find(|e| e["type"] == "result")
        .unwrap_or_else(|| panic!("no result: {events:?}\n{}", product.log()))
        .clone();

    let root = phoenix
        .wait_for_span(PROJECT, "sandstorm.run", ARRIVE_WITHIN)
        .await;
    let spans = phoenix.wait_for_count(PROJECT, 7, ARRIVE_WITHIN).await;
    // A child of the caller's span, in the caller's trace.
    assert_eq!(root.trace_id, CALLER_TRACE_ID, "{root:#?}");
    assert_eq!(root.parent_id.as_deref(), Some(CALLER_SPAN_ID), "{root:#?}");
    assert!(
        spans.iter().all(|s| s.trace_id == CALLER_TRACE_ID),
        "{spans:#?}"
    );
    // The tree: the sandbox's steps and the relay under the run, the
    // outputs under the relay.
    let mut under_root: Vec<String> = children(&spans, &root)
        .into_iter()
        .map(|s| s.name.clone())
        .collect();
    under_root.sort();
    for name in [
        "relay",
        "sandbox.create",
        "sandbox.destroy",
        "sandbox.start",
        "sandbox.upload",
    ] {
        assert!(
            under_root.iter().any(|n| n == name),
            "{name} is not under the run: {under_root:?}"
        );
    }
    let relay = named(&spans, "relay");
    let messages: Vec<&str> = relay
        .events
        .iter()
        .filter(|e| e.name == "agent.message")
        .filter_map(|e| e.attributes["sandstorm.message.type"].as_str())
        .collect();
    for kind in ["system", "assistant", "user", "result"] {
        assert!(
            messages.contains(&kind),
            "no {kind} message on the relay: {messages:?}"
        );
    }
    // The attributes say what the run did.
    let attribute = |key: &str| root.attribute(key).cloned().unwrap_or_default();
    assert_eq!(attribute("sandstorm.request.id"), json!(request_id));
    assert_eq!(attribute("sandstorm.sandbox.provider"), json!("e2b"));
    assert!(attribute("sandstorm.sandbox.id").is_string(), "{root:#?}");
    assert!(attribute("sandstorm.run.id").is_string(), "{root:#?}");
    assert_eq!(
        attribute("gen_ai.request.model"),
        json!("claude-sonnet-4-5")
    );
    assert_eq!(attribute("gen_ai.operation.name"), json!("invoke_agent"));
    assert_eq!(attribute("sandstorm.status"), json!("succeeded"));
    assert_eq!(attribute("sandstorm.turns"), result["num_turns"]);
    assert_eq!(attribute("sandstorm.cost_usd"), result["total_cost_usd"]);
    assert_eq!(
        attribute("gen_ai.usage.input_tokens"),
        result["usage"]["input_tokens"]
    );
    assert_eq!(
        attribute("gen_ai.usage.output_tokens"),
        result["usage"]["output_tokens"]
    );
    assert_eq!(attribute("sandstorm.tool_calls.Bash"), json!(1));
    // No key, and not the prompt (SANDSTORM_TRACE_PROMPTS is not set).
    let everything =
        serde_json::to_string(&spans.iter().map(|s| &s.attributes).collect::<Vec<_>>())
            .expect("JSON");
    for secret in product
        .env()
        .values()
        .filter(|v| v.len() >= 16 && v.contains("key"))
    {
        assert!(
            !everything.contains(secret.as_str()),
            "a key is in the spans"
        );
    }
    for key in [common::keys::ANTHROPIC_KEY, common::keys::E2B_KEY] {
        assert!(!everything.contains(key), "a key is in the spans");
    }
    assert!(!everything.contains(prompt), "the prompt is in the spans");

    // The agent's process got the run's trace context.
    let printed = events
        .iter()
        .find(|e| e["type"] == "user")
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        printed.contains(&format!("tp=00-{CALLER_TRACE_ID}-")),
        "the agent's TRACEPARENT is not the run's trace: {printed}"
    );

    // The metrics went to the metrics receiver.
    let wanted = [
        "sandstorm.runs.started",
        "sandstorm.runs.finished",
        "sandstorm.run.duration",
        "sandstorm.run.time_to_first_event",
        "sandstorm.e2b.call.duration",
        "sandstorm.relay.events",
        "sandstorm.cost",
        "sandstorm.tokens",
        "sandstorm.sandboxes.alive",
    ];
    let arrived = metrics
        .wait_for(Duration::from_secs(20), |r| {
            let names = r.metric_names();
            wanted.iter().all(|w| names.iter().any(|n| n == w))
        })
        .await;
    assert!(arrived, "metrics: {:?}", metrics.metric_names());

    if let Some(out) = std::env::var_os("SANDSTORM_PHOENIX_RUN_SCREENSHOT") {
        phoenix.screenshot(CALLER_TRACE_ID, Some("sandstorm.run"), out.as_ref());
    }
    drop(product);

    // The same over OTLP/gRPC, the project named by a resource attribute,
    // and with SANDSTORM_TRACE_PROMPTS=1 the prompt on the span, redacted:
    // the key in it is not.
    let grpc = common::product::Serve::new(common::product::Chain::E2b, &model)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &phoenix.otlp_grpc_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "openinference.project.name=sandstorm-grpc",
        )
        .env("SANDSTORM_TRACE_PROMPTS", "1")
        .start()
        .await;
    let prompt = format!(
        "again, over gRPC; the key is {}",
        common::keys::ANTHROPIC_KEY
    );
    let events = common::stream::query(grpc.url(), json!({"prompt": prompt})).await;
    assert!(events.iter().any(|e| e["type"] == "result"), "{events:?}");
    let root = phoenix
        .wait_for_span("sandstorm-grpc", "sandstorm.run", ARRIVE_WITHIN)
        .await;
    assert_eq!(root.parent_id, None, "no traceparent: a trace of its own");
    assert_eq!(
        root.attribute("sandstorm.status").cloned(),
        Some(json!("succeeded"))
    );
    let traced = root.str_attribute("sandstorm.prompt");
    assert!(
        traced.starts_with("again, over gRPC; the key is "),
        "{traced}"
    );
    assert!(!traced.contains(common::keys::ANTHROPIC_KEY), "{traced}");
}

/// What the agent's command prints: the telemetry variables its process got.
const PRINT_AGENT_TELEMETRY: &str = "env | grep -E \
     '^(OTEL_|CLAUDE_CODE_ENABLE_TELEMETRY|CLAUDE_CODE_ENHANCED_TELEMETRY_BETA|TRACEPARENT)' | sort";

/// The agent's own telemetry, `SANDSTORM_AGENT_TELEMETRY=1`, in two halves
/// joined by what the agent printed. No sandbox can reach a collector on
/// this machine's loopback (each has only its own `lo`), so one run cannot
/// show both:
/// 1. a run through `ds serve` hands its agent Claude Code's switches and
///    the run's `TRACEPARENT`, which names the run's `sandstorm.run` span,
///    and never the server's OTLP headers. (Claude Code keeps the `OTEL_*`
///    variables from the commands it runs, so the exporters the runner
///    gets are pinned by `telemetry::agent`'s unit tests instead.)
/// 2. the runner, given those variables and the exporters as
///    docs/observability.md lists them, and nothing else of the run, has
///    Claude Code export its own spans into the run's trace, under the
///    run's span.
#[tokio::test]
async fn the_agents_own_spans_join_the_runs_trace_under_its_run_span() {
    use common::model_server::{ModelServer, Script};
    let collector = common::otlp::Receiver::start().await;
    let model = ModelServer::start(Script::Bash {
        command: PRINT_AGENT_TELEMETRY.to_owned(),
    })
    .await;
    let product = common::product::Serve::new(common::product::Chain::E2b, &model)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("{}/v1/traces", collector.url),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-ingest-key=the-servers-own")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("SANDSTORM_AGENT_TELEMETRY", "1")
        .env("SANDSTORM_AGENT_OTLP_ENDPOINT", &collector.url)
        .start()
        .await;
    let response = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .header(
            "traceparent",
            format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),
        )
        .json(&json!({"prompt": "print your telemetry settings"}))
        .send()
        .await
        .expect("POST /query");
    let events = common::sse::json_events(&response.text().await.expect("the stream"));
    assert!(
        events.iter().any(|e| e["type"] == "result"),
        "{events:?}\n{}",
        product.log()
    );

    // 1. What the agent's process got, from its command's output.
    let printed = events
        .iter()
        .filter(|e| e["type"] == "user")
        .flat_map(|e| {
            e["message"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["type"] == "tool_result")
        .map(|c| match &c["content"] {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect::<String>();
    let agent_env: BTreeMap<String, String> = printed
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    for (name, value) in [
        ("CLAUDE_CODE_ENABLE_TELEMETRY", "1"),
        ("CLAUDE_CODE_ENHANCED_TELEMETRY_BETA", "1"),
    ] {
        assert_eq!(
            agent_env.get(name).map(String::as_str),
            Some(value),
            "{name} in the agent's environment: {printed}"
        );
    }
    assert!(
        !printed.contains("the-servers-own"),
        "the server's OTLP headers reached the agent: {printed}"
    );
    let traceparent = agent_env
        .get("TRACEPARENT")
        .unwrap_or_else(|| panic!("no TRACEPARENT in the agent's environment: {printed}"));
    let run_span_id = traceparent
        .strip_prefix(&format!("00-{CALLER_TRACE_ID}-"))
        .and_then(|rest| rest.split('-').next())
        .unwrap_or_else(|| panic!("the agent's TRACEPARENT is not the run's trace: {traceparent}"))
        .to_owned();
    // It names the run's own span, which the server exported.
    let arrived = collector
        .wait_for(ARRIVE_WITHIN, |c| {
            c.spans().iter().any(|(_, s)| s["name"] == "sandstorm.run")
        })
        .await;
    assert!(arrived, "no sandstorm.run span: {:?}", collector.spans());
    let spans = collector.spans();
    let run_span = spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| span["name"] == "sandstorm.run")
        .expect("the run's span");
    assert_eq!(run_span["spanId"], run_span_id.as_str(), "{run_span}");
    let server_spans = spans.len();

    // 2. The runner with just those variables: Claude Code's own span.
    let dirs = common::runner::RunDirs::new();
    let mut runner = common::runner::RunnerCommand::new(
        json!({"prompt": "print your telemetry settings", "cwd": dirs.work()}),
        &model.url(),
    );
    let exporters = [
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_LOGS_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", "sandstorm-agent"),
    ];
    for (name, value) in agent_env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain(exporters)
    {
        runner = runner.env(name, value);
    }
    let out = runner.run(&dirs).await;
    assert!(out.status.success(), "{}", out.dump());
    let joined = collector
        .wait_for(ARRIVE_WITHIN, |c| {
            c.spans().iter().skip(server_spans).any(|(_, s)| {
                s["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("claude_code."))
            })
        })
        .await;
    let agent_spans: Vec<serde_json::Value> = collector
        .spans()
        .into_iter()
        .map(|(_, span)| span)
        .filter(|span| {
            span["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("claude_code."))
        })
        .collect();
    assert!(
        joined,
        "Claude Code exported no span: {:?}",
        collector.exports()
    );
    for span in &agent_spans {
        assert_eq!(span["traceId"], CALLER_TRACE_ID, "{span}");
    }
    // Claude Code's interaction is a child of the run's span, and its model
    // calls and tool calls are children of the interaction.
    let interaction = agent_spans
        .iter()
        .find(|span| span["name"] == "claude_code.interaction")
        .unwrap_or_else(|| panic!("no claude_code.interaction: {agent_spans:#?}"));
    assert_eq!(
        interaction["parentSpanId"],
        run_span_id.as_str(),
        "the agent's interaction is not a child of the run's span: {agent_spans:#?}"
    );
    for name in ["claude_code.llm_request", "claude_code.tool"] {
        assert!(
            agent_spans
                .iter()
                .any(|s| s["name"] == name && s["parentSpanId"] == interaction["spanId"]),
            "no {name} under the interaction: {agent_spans:#?}"
        );
    }
    // Its metrics and log events too, under the agent's service name.
    let agent_service = |export: &common::otlp::Export| {
        let key = match export.signal {
            "metrics" => "resourceMetrics",
            "logs" => "resourceLogs",
            _ => return false,
        };
        export.body[key].as_array().is_some_and(|resources| {
            resources.iter().any(|r| {
                r["resource"]["attributes"]
                    .as_array()
                    .is_some_and(|attributes| {
                        attributes.iter().any(|a| {
                            a["key"] == "service.name"
                                && a["value"]["stringValue"] == "sandstorm-agent"
                        })
                    })
            })
        })
    };
    let both = collector
        .wait_for(ARRIVE_WITHIN, |c| {
            let exports = c.exports();
            ["metrics", "logs"].iter().all(|signal| {
                exports
                    .iter()
                    .any(|e| e.signal == *signal && agent_service(e))
            })
        })
        .await;
    assert!(
        both,
        "the agent's metrics and logs: {:?}",
        collector
            .exports()
            .iter()
            .map(|e| e.signal)
            .collect::<Vec<_>>()
    );
}

/// `sandstorm.proxy.denied`: a local sandbox's agent asks its egress proxy
/// for a port on this machine's loopback that this test holds; the proxy
/// answers 403 without connecting, and the server's metric counts the
/// refusal by its kind. Nothing reaches the port.
#[tokio::test]
async fn a_connection_the_egress_proxy_refuses_is_counted() {
    use common::model_server::{ModelServer, Script};
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    held.set_nonblocking(true).expect("nonblocking");
    let port = held.local_addr().expect("address").port();
    let collector = common::otlp::Receiver::start().await;
    let model = ModelServer::start(Script::Bash {
        command: format!(
            "curl -sS -m 10 -o /dev/null -w 'status=%{{http_code}}' --noproxy '' \
             -x http://127.0.0.1:3128 http://127.0.0.1:{port}/"
        ),
    })
    .await;
    let product = common::product::Serve::new(common::product::Chain::Local, &model)
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            &format!("{}/v1/metrics", collector.url),
        )
        .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_TRACES_EXPORTER", "none")
        .start()
        .await;
    let events = common::stream::query(product.url(), json!({"prompt": "fetch it"})).await;
    let printed = events
        .iter()
        .filter(|e| e["type"] == "user")
        .map(ToString::to_string)
        .collect::<String>();
    assert!(
        printed.contains("status=403"),
        "the proxy did not refuse: {printed}\n{}",
        product.log()
    );

    // The refusals counted, by kind: a sum over the exports' points.
    let denied = |c: &common::otlp::Receiver| -> Vec<(String, u64)> {
        c.metrics()
            .into_iter()
            .filter(|m| m["name"] == "sandstorm.proxy.denied")
            .flat_map(|m| {
                m["sum"]["dataPoints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|point| {
                let kind = common::otlp::attribute(&point, "sandstorm.egress.kind")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let value = point["asInt"]
                    .as_str()
                    .and_then(|n| n.parse().ok())
                    .or_else(|| point["asInt"].as_u64())
                    .unwrap_or(0);
                (kind, value)
            })
            .collect()
    };
    let counted = collector
        .wait_for(Duration::from_secs(20), |c| {
            denied(c).iter().any(|(_, n)| *n >= 1)
        })
        .await;
    assert!(
        counted,
        "no sandstorm.proxy.denied point: {:?}",
        collector.metric_names()
    );
    let points = denied(&collector);
    assert!(
        points.iter().all(|(kind, _)| kind == "http"),
        "a plain-HTTP request is counted as kind http: {points:?}"
    );
    assert!(
        matches!(held.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the held port saw a connection"
    );
}
