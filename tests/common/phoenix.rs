//! Arize Phoenix (PyPI `arize-phoenix`) on loopback: a real OpenTelemetry
//! receiver whose stored spans the tests read back through its own API.
//!
//! **Install.** scripts/setup puts Phoenix in a virtualenv of its own,
//! `.venv/phoenix/`, pinned with everything it brings in
//! `tests/python/phoenix-requirements.txt`: it pins many packages of its
//! own (pandas, SQLAlchemy, grpcio, the OpenTelemetry SDK), which stay out
//! of the test venv. The same venv holds the OpenTelemetry Python SDK and
//! its OTLP exporters, which `tests/observability/export_spans.py` uses.
//!
//! **Start.** [`Phoenix::start`] runs `phoenix serve` through
//! `tests/observability/phoenix_serve.py`, which is `phoenix serve` with
//! its gRPC server bound to 127.0.0.1 (Phoenix binds that one to `[::]`
//! whatever `PHOENIX_HOST` says) and which prints the gRPC port it got.
//! Both servers start on port 0: the HTTP port (UI, REST API at `/v1`,
//! GraphQL, OTLP/HTTP at `/v1/traces`) is the one uvicorn prints, the
//! gRPC port (OTLP/gRPC) the one the launcher prints. The environment is
//! cleared, then set: storage is SQLite in a temporary `PHOENIX_WORKING_DIR`
//! (also its `HOME`), removed with the value; no authentication; and
//! nothing leaves the machine:
//! - `PHOENIX_ALLOW_EXTERNAL_RESOURCES=false`: no request to the internet
//!   on Phoenix's own initiative (left on, it downloads a WASM sandbox
//!   binary at start-up, and its page loads web fonts);
//! - `PHOENIX_TELEMETRY_ENABLED=false`: no FullStory or Scarf pixel in the
//!   page (off anyway without external resources);
//! - `PHOENIX_DISABLE_AGENT_ASSISTANT=true`, `PHOENIX_ALLOWED_SANDBOX_PROVIDERS=NONE`:
//!   no assistant and no code sandboxes;
//! - no `OTEL_*` variable reaches it, so it exports no traces of its own.
//!
//! [`Phoenix::sockets_off_loopback`] lists any socket the process holds
//! that is not on loopback, for a test to assert there is none.
//!
//! **Projects.** Phoenix files each span under a project, by name:
//! - over OTLP/HTTP, the `x-project-name` request header if set (e.g.
//!   `OTEL_EXPORTER_OTLP_HEADERS=x-project-name=NAME`), else
//! - the resource attribute `openinference.project.name` (e.g.
//!   `OTEL_RESOURCE_ATTRIBUTES=openinference.project.name=NAME`), else
//! - `default`.
//!
//! `service.name` (`OTEL_SERVICE_NAME`) plays no part, and resource
//! attributes are not stored with the spans. A project exists once its
//! first span arrives; until then [`Phoenix::spans`] reads none.
//!
//! **Reading back.** [`Phoenix::spans`] pages through the REST API,
//! `GET /v1/projects/{name}/spans?sort=start_time&order=asc` (no auth),
//! whose items are `{id, name, context: {trace_id, span_id}, span_kind,
//! parent_id, start_time, end_time, status_code, status_message,
//! attributes, events}`. Ids are lowercase hex; times RFC 3339 in UTC, to
//! the microsecond. What Phoenix does to attributes on the way:
//! - they are stored nested at each `.` and flattened again for the
//!   answer, so keys read back as sent (also `a` beside `a.b`), values
//!   with their JSON types (arrays of strings stay arrays; the UI shows
//!   them as `key.0`, `key.1`);
//! - `openinference.span.kind` leaves the attributes and becomes
//!   `span_kind` (`UNKNOWN` without it);
//! - a span with `gen_ai.*` attributes gets OpenInference ones
//!   synthesized from them (`llm.model_name`, `llm.token_count.*`) and
//!   the kind `LLM`;
//! - string attributes named `metadata`, `tool.parameters`,
//!   `llm.prompt_template.variables` or `document.metadata` holding JSON
//!   are parsed (`metadata = '{"k": 1}'` reads back as `metadata.k = 1`).
//!
//! Phoenix stores spans in batches: they show up a moment after the
//! export returns. [`Phoenix::wait_for_spans`] and its kin poll, bounded.
//! Phoenix takes traces only, and over HTTP only as protobuf: OTLP
//! metrics and logs get 405, OTLP/JSON 415.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use super::process::{self, Process};
use super::tools::manifest_dir;

/// How long Phoenix gets to start: it imports a lot (about 10 s on an
/// idle 2-core machine) and runs its migrations on a new database.
const START_WITHIN: Duration = Duration::from_secs(120);

/// How often the waits read the spans again.
const POLL: Duration = Duration::from_millis(100);

/// A running Phoenix, stopped when dropped (SIGTERM to its process, then
/// its group), its working directory removed after it.
pub struct Phoenix {
    http: String,
    grpc: String,
    client: reqwest::Client,
    // Dropped in this order: the process first, then its directory.
    proc: Process,
    dir: tempfile::TempDir,
}

/// A span as Phoenix stored it.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id: `None` for a root, also one whose parent is
    /// in another service's trace (a remote parent from `traceparent`
    /// keeps its id here).
    pub parent_id: Option<String>,
    /// The OpenInference span kind (`UNKNOWN`, `LLM`, `CHAIN`...), not the
    /// OpenTelemetry one (which Phoenix does not keep).
    pub kind: String,
    /// A JSON object, keys as sent (`gen_ai.request.model`).
    pub attributes: Value,
    /// `OK`, `ERROR` or `UNSET`.
    pub status_code: String,
    pub status_message: String,
    pub start_time: SystemTime,
    pub end_time: SystemTime,
    pub events: Vec<SpanEvent>,
}

/// An event of a span, as Phoenix stored it.
#[derive(Debug, Clone, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// A JSON object, keys as sent.
    pub attributes: Value,
}

impl Span {
    /// The attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// The string attribute `key`; fails the test if missing or not a
    /// string.
    pub fn str_attribute(&self, key: &str) -> &str {
        self.attribute(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("span {} has no string {key}: {self:#?}", self.name))
    }

    /// The span's duration (zero if Phoenix stored it ending before it
    /// started).
    pub fn duration(&self) -> Duration {
        self.end_time
            .duration_since(self.start_time)
            .unwrap_or_default()
    }
}

/// The one span named `name`; fails the test, listing the names, if there
/// is none or more than one.
pub fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let mut found = spans.iter().filter(|span| span.name == name);
    match (found.next(), found.next()) {
        (Some(span), None) => span,
        _ => panic!(
            "expected one span named {name}, got: {:?}",
            spans.iter().map(|span| &span.name).collect::<Vec<_>>()
        ),
    }
}

/// The spans whose parent is `parent`, in start order.
pub fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|span| span.parent_id.as_deref() == Some(parent.span_id.as_str()))
        .collect()
}

impl Phoenix {
    /// Starts Phoenix and waits until both servers listen.
    pub async fn start() -> Phoenix {
        let dir = tempfile::tempdir().expect("a working directory for Phoenix");
        let mut command = Command::new(python());
        command
            .arg(manifest_dir().join("tests/observability/phoenix_serve.py"))
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
            .env("HOME", dir.path())
            .env("PHOENIX_WORKING_DIR", dir.path())
            .envs([
                ("PHOENIX_HOST", "127.0.0.1"),
                ("PHOENIX_PORT", "0"),
                ("PHOENIX_GRPC_PORT", "0"),
                ("PHOENIX_ALLOW_EXTERNAL_RESOURCES", "false"),
                ("PHOENIX_TELEMETRY_ENABLED", "false"),
                ("PHOENIX_DISABLE_AGENT_ASSISTANT", "true"),
                ("PHOENIX_ALLOWED_SANDBOX_PROVIDERS", "NONE"),
                // The migrations' SQL, thousands of lines, would fill the
                // output a failing test prints.
                ("PHOENIX_LOG_MIGRATIONS", "false"),
                ("PYTHONUNBUFFERED", "1"),
            ]);
        let mut grpc = None;
        let mut http = None;
        let (proc, (http, grpc)) =
            Process::start("phoenix serve", command, START_WITHIN, move |line| {
                if let Some(address) = line.strip_prefix("phoenix grpc listening on ") {
                    grpc = Some(format!("http://{address}"));
                } else if let Some((_, rest)) = line.split_once("Uvicorn running on ") {
                    http = rest.split_whitespace().next().map(str::to_owned);
                }
                Some((http.clone()?, grpc.clone()?))
            })
            .await;
        Phoenix {
            http,
            grpc,
            client: reqwest::Client::new(),
            proc,
            dir,
        }
    }

    /// The OTLP/HTTP endpoint, `http://127.0.0.1:PORT`: the value for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (the SDK adds `/v1/traces`).
    pub fn otlp_http_endpoint(&self) -> String {
        self.http.clone()
    }

    /// The OTLP/gRPC endpoint, `http://127.0.0.1:PORT` (plain, no TLS).
    pub fn otlp_grpc_endpoint(&self) -> String {
        self.grpc.clone()
    }

    /// The UI, `http://127.0.0.1:PORT` (the same port as OTLP/HTTP). A
    /// trace by its id: `{ui_url}/redirects/traces/{trace_id}`.
    pub fn ui_url(&self) -> String {
        self.http.clone()
    }

    /// The variables that point an OpenTelemetry SDK at this Phoenix, over
    /// `protocol` (`http/protobuf` or `grpc`), filing spans under
    /// `project`.
    pub fn otel_env(&self, protocol: &str, project: &str) -> Vec<(&'static str, String)> {
        let endpoint = match protocol {
            "grpc" => self.otlp_grpc_endpoint(),
            "http/protobuf" => self.otlp_http_endpoint(),
            other => panic!("OTLP protocol {other}: expected grpc or http/protobuf"),
        };
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("openinference.project.name={project}"),
            ),
        ]
    }

    /// Saves a PNG of trace `trace_id` in Phoenix's UI to `out`, through
    /// Debian's chromium (`CHROMIUM` overrides the path) and
    /// tests/observability/screenshot.mjs; with `span`, that span is
    /// selected, so its details show. For the docs' pictures: not part of
    /// any test run by default, it needs chromium and
    /// tests/observability/node_modules (scripts/setup).
    pub fn screenshot(&self, trace_id: &str, span: Option<&str>, out: &std::path::Path) {
        let chromium =
            std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
        assert!(
            chromium.exists(),
            "{} is missing: apt-get install chromium (scripts/setup)",
            chromium.display()
        );
        let observability = manifest_dir().join("tests/observability");
        assert!(
            observability.join("node_modules/playwright-core").is_dir(),
            "playwright-core is missing: npm ci --prefix tests/observability (scripts/setup)"
        );
        let mut command = Command::new("node");
        command
            .arg(observability.join("screenshot.mjs"))
            .arg(self.ui_url())
            .arg(trace_id)
            .arg(out)
            .args(span)
            .env("CHROMIUM", &chromium);
        let (status, stdout, stderr) = process::run(command, Duration::from_secs(120));
        assert!(
            status.success(),
            "screenshot.mjs: {status}\n{stdout}\n{stderr}"
        );
        eprint!("{stdout}");
    }

    /// Its working directory (SQLite database and all).
    pub fn working_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its sockets that are not on loopback (either end); a socket with no
    /// peer yet has an unspecified remote address, which counts as
    /// loopback.
    pub fn sockets_off_loopback(&self) -> Vec<process::Socket> {
        process::sockets(self.pid())
            .into_iter()
            .filter(|socket| {
                let remote = socket.remote.ip();
                !(on_loopback(socket.local.ip())
                    && (on_loopback(remote) || remote.is_unspecified()))
            })
            .collect()
    }

    /// Every span stored under `project` so far, in start order (empty if
    /// the project does not exist yet).
    pub async fn spans(&self, project: &str) -> Vec<Span> {
        let mut url = reqwest::Url::parse(&self.http).expect("Phoenix's URL");
        url.path_segments_mut()
            .expect("a base URL")
            .extend(["v1", "projects", project, "spans"]);
        let mut spans = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![
                ("sort", "start_time".to_owned()),
                ("order", "asc".to_owned()),
                ("limit", "1000".to_owned()),
            ];
            query.extend(cursor.take().map(|cursor| ("cursor", cursor)));
            let response = self
                .client
                .get(url.clone())
                .query(&query)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let status = response.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Vec::new();
            }
            let body = response.text().await.expect("Phoenix's answer");
            assert!(status.is_success(), "GET {url}: {status}: {body}");
            let page: Page =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"));
            spans.extend(page.data.into_iter().map(Span::from));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return spans,
            }
        }
    }

    /// Reads `project`'s spans until `done` holds for them, up to
    /// `within`; returns them. Fails the test with what arrived if
    /// `within` runs out.
    pub async fn wait_for_spans(
        &self,
        project: &str,
        within: Duration,
        mut done: impl FnMut(&[Span]) -> bool,
    ) -> Vec<Span> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans(project).await;
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
                panic!(
                    "Phoenix's project {project} did not get the spans expected within \
                     {within:?}; it has {names:?}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for at least `count` spans in `project`; returns them all.
    pub async fn wait_for_count(&self, project: &str, count: usize, within: Duration) -> Vec<Span> {
        self.wait_for_spans(project, within, |spans| spans.len() >= count)
            .await
    }

    /// Waits for a span named `name` in `project`; returns it (the first
    /// to start, if several).
    pub async fn wait_for_span(&self, project: &str, name: &str, within: Duration) -> Span {
        let spans = self
            .wait_for_spans(project, within, |spans| {
                spans.iter().any(|span| span.name == name)
            })
            .await;
        spans
            .into_iter()
            .find(|span| span.name == name)
            .expect("the span waited for")
    }
}

/// The Python of `.venv/phoenix` (scripts/setup); fails the test with the
/// command that installs it if missing.
pub fn python() -> PathBuf {
    let python = manifest_dir().join(".venv/phoenix/bin/python");
    assert!(
        python.is_file(),
        "Phoenix is not installed: {} is missing; install it with scripts/setup \
         (or: python3 -m venv .venv/phoenix && .venv/phoenix/bin/pip install \
         -r tests/python/phoenix-requirements.txt)",
        python.display()
    );
    python
}

/// Loopback, also as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, as
/// the gRPC server's socket has it).
fn on_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// One page of `GET /v1/projects/{name}/spans`.
#[derive(Deserialize)]
struct Page {
    data: Vec<WireSpan>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct WireSpan {
    name: String,
    context: WireContext,
    span_kind: String,
    parent_id: Option<String>,
    start_time: String,
    end_time: String,
    status_code: String,
    #[serde(default)]
    status_message: String,
    #[serde(default)]
    attributes: Value,
    #[serde(default)]
    events: Vec<SpanEvent>,
}

#[derive(Deserialize)]
struct WireContext {
    trace_id: String,
    span_id: String,
}

impl From<WireSpan> for Span {
    fn from(wire: WireSpan) -> Span {
        Span {
            name: wire.name,
            trace_id: wire.context.trace_id,
            span_id: wire.context.span_id,
            parent_id: wire.parent_id,
            kind: wire.span_kind,
            attributes: wire.attributes,
            status_code: wire.status_code,
            status_message: wire.status_message,
            start_time: utc_time(&wire.start_time),
            end_time: utc_time(&wire.end_time),
            events: wire.events,
        }
    }
}

/// Phoenix's times, `2026-01-02T03:04:05.123456+00:00`: always UTC.
fn utc_time(text: &str) -> SystemTime {
    let utc = text
        .strip_suffix("+00:00")
        .or_else(|| text.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("a UTC time from Phoenix, got {text}"));
    humantime::parse_rfc3339_weak(utc)
        .unwrap_or_else(|e| panic!("a time from Phoenix, {text}: {e}"))
}
