//! The agent's own telemetry, on request: with `SANDSTORM_AGENT_TELEMETRY=1`
//! the runner gets the variables that make Claude Code export its traces,
//! metrics and log events over OTLP (`CLAUDE_CODE_ENABLE_TELEMETRY`, the
//! beta tracing switch, the exporters), and with the `TRACEPARENT` every run
//! passes, its spans join the run's trace.
//!
//! What goes in is chosen for the sandbox, never copied from the server:
//! the endpoint is `SANDSTORM_AGENT_OTLP_ENDPOINT` (else the server's
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), and headers only from
//! `SANDSTORM_AGENT_OTLP_HEADERS`, since the server's own usually carry an
//! ingest key the agent could read. Those headers are a credential in the
//! sandbox: a run names them in `credentials_in_sandbox`, and their value
//! is scrubbed from its events like a key.

use std::collections::BTreeMap;

/// The variable the agent's OTLP headers go in.
pub(crate) const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";

/// The runner's telemetry variables `env` asks for: empty unless
/// `SANDSTORM_AGENT_TELEMETRY=1`; an error names the variable at fault.
pub(crate) fn env(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    match get("SANDSTORM_AGENT_TELEMETRY").as_deref().map(str::trim) {
        None | Some("0") => return Ok(BTreeMap::new()),
        Some("1") => {}
        Some(other) => {
            return Err(format!(
                "SANDSTORM_AGENT_TELEMETRY must be 0 or 1, got {other:?}"
            ));
        }
    }
    let endpoint = get("SANDSTORM_AGENT_OTLP_ENDPOINT")
        .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .ok_or_else(|| {
            "SANDSTORM_AGENT_TELEMETRY=1 needs an endpoint the sandbox can reach: \
             set SANDSTORM_AGENT_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT)"
                .to_owned()
        })?;
    let protocol = get("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into());
    let service = get("OTEL_SERVICE_NAME").unwrap_or_else(|| "sandstorm".into());
    let mut vars: BTreeMap<String, String> = [
        ("CLAUDE_CODE_ENABLE_TELEMETRY", "1".to_owned()),
        ("CLAUDE_CODE_ENHANCED_TELEMETRY_BETA", "1".to_owned()),
        ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
        ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
        ("OTEL_LOGS_EXPORTER", "otlp".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.trim().to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.trim().to_owned()),
        ("OTEL_SERVICE_NAME", format!("{}-agent", service.trim())),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    if let Some(headers) = get("SANDSTORM_AGENT_OTLP_HEADERS") {
        vars.insert(HEADERS.to_owned(), headers);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<BTreeMap<String, String>, String> {
        let pairs: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env(&|name| pairs.get(name).cloned())
    }

    #[test]
    fn nothing_goes_in_unless_asked_and_never_the_servers_headers() {
        let server = [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector.example:4318",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-honeycomb-team=server-ingest-key",
            ),
        ];
        assert_eq!(read(&server), Ok(BTreeMap::new()));
        let on = read(&[server[0], server[1], ("SANDSTORM_AGENT_TELEMETRY", "1")]).expect("on");
        assert_eq!(
            on["OTEL_EXPORTER_OTLP_ENDPOINT"],
            "https://collector.example:4318"
        );
        assert_eq!(on["CLAUDE_CODE_ENABLE_TELEMETRY"], "1");
        assert_eq!(on["OTEL_SERVICE_NAME"], "sandstorm-agent");
        assert!(!on.contains_key(HEADERS), "{on:?}");
        let own = read(&[
            ("SANDSTORM_AGENT_TELEMETRY", "1"),
            ("SANDSTORM_AGENT_OTLP_ENDPOINT", "http://10.0.0.5:4318"),
            ("SANDSTORM_AGENT_OTLP_HEADERS", "x-agent=k"),
        ])
        .expect("on");
        assert_eq!(own["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://10.0.0.5:4318");
        assert_eq!(own[HEADERS], "x-agent=k");
    }

    #[test]
    fn a_switch_without_an_endpoint_or_a_bad_switch_is_named() {
        let error = read(&[("SANDSTORM_AGENT_TELEMETRY", "1")]).expect_err("no endpoint");
        assert!(error.contains("SANDSTORM_AGENT_OTLP_ENDPOINT"), "{error}");
        let error = read(&[("SANDSTORM_AGENT_TELEMETRY", "on")]).expect_err("bad");
        assert!(error.contains("SANDSTORM_AGENT_TELEMETRY"), "{error}");
    }
}
