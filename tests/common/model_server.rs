//! A scripted fake of the Anthropic Messages API, so the real Agent SDK can
//! run offline against a model whose every move is known in advance.
//!
//! The SDK's CLI sends everything to `POST {ANTHROPIC_BASE_URL}/v1/messages`
//! (usually with `?beta=true`): the main loop, subagents and small side calls
//! such as titles. A [`Script`] decides each answer from the *whole*
//! conversation, not from the last message alone, because the CLI adds
//! nudges and notification turns of its own. The script finds its place by
//! looking for the `tool_use` ids it handed out earlier and the
//! `tool_result`s that answer them.
//!
//! Every request is recorded, so a test can assert on what the model saw:
//! headers (`x-api-key` or `authorization: Bearer`), the model name, the
//! system prompt, the tools on offer.
//!
//! ```ignore
//! mod common;
//! use common::model_server::{ModelServer, Script};
//!
//! let server = ModelServer::start(Script::bash_write_file()).await;
//! // point ANTHROPIC_BASE_URL at server.url(), run the agent, then:
//! assert!(server.message_requests().iter().any(|r| r.header("x-api-key").is_some()));
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What the Bash script runs by default: reads an uploaded file, writes one.
pub const BASH_WRITE_FILE: &str = "cat data.csv && echo done > out.txt";
/// The command the endless loop repeats.
pub const LOOP_COMMAND: &str = "echo again";
/// The main agent's last words in every script that finishes.
pub const FINAL_TEXT: &str = "Scripted run complete.";
/// What the model says before its first tool call (the SDK reports it as
/// its own `assistant` message).
pub const PREAMBLE_TEXT: &str = "Let me do that.";
/// The subagent's whole answer.
pub const SUBAGENT_TEXT: &str = "Subagent report: the data has three rows.";
/// The answer to side calls (requests without tools: titles, summaries).
pub const SIDE_CALL_TEXT: &str = "Scripted side answer";

/// Token counts reported for every answer, so costs are non-zero and stable.
const INPUT_TOKENS: u64 = 100;
const OUTPUT_TOKENS: u64 = 20;

/// How the scripted model behaves. Every script answers side calls (no
/// tools offered) with [`SIDE_CALL_TEXT`], except [`Script::ApiError`].
#[derive(Clone, Debug)]
pub enum Script {
    /// Calls the `Bash` tool once with `command`, then says [`FINAL_TEXT`].
    Bash { command: String },
    /// Calls the `StructuredOutput` tool with `output` (which should match
    /// the schema the test configured), then says [`FINAL_TEXT`].
    StructuredOutput { output: Value },
    /// Delegates to the subagent `agent` through the agent tool (`Task` in
    /// SDK 0.2.x, `Agent` in 0.3.x, whichever is offered). A request whose
    /// system prompt contains `prompt_marker` is the subagent's own and gets
    /// [`SUBAGENT_TEXT`]. Once the delegation returns, says [`FINAL_TEXT`].
    Subagent {
        agent: String,
        prompt_marker: String,
    },
    /// Calls the tool `tool` (e.g. `mcp__echo__echo`) with `input`, then
    /// says [`FINAL_TEXT`].
    McpTool { tool: String, input: Value },
    /// Answers every `/v1/messages` call with this HTTP status and the
    /// Anthropic error body that goes with it (400, 500, 529, ...).
    ApiError { status: u16 },
    /// Calls Bash with [`LOOP_COMMAND`] forever: only `max_turns` or a
    /// deadline ends the run.
    EndlessBash,
}

impl Script {
    /// The Bash script with [`BASH_WRITE_FILE`].
    pub fn bash_write_file() -> Self {
        Script::Bash {
            command: BASH_WRITE_FILE.to_owned(),
        }
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body, or `Value::Null` when the body was empty or not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The model name the client asked for.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// The system prompt, its text blocks joined by newlines.
    pub fn system_text(&self) -> String {
        system_text(&self.body)
    }

    /// The names of the tools offered to the model.
    pub fn tool_names(&self) -> Vec<&str> {
        tool_names(&self.body)
    }

    /// A request without tools: the CLI's titles, summaries and the like.
    pub fn is_side_call(&self) -> bool {
        self.tool_names().is_empty()
    }

    /// Every `tool_use` the conversation so far holds, as `(name, input)`.
    pub fn tool_uses(&self) -> Vec<(&str, &Value)> {
        content_blocks(&self.body)
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .filter_map(|b| Some((b.get("name")?.as_str()?, b.get("input")?)))
            .collect()
    }
}

/// A running scripted model on `127.0.0.1`. Stops when dropped.
///
/// It serves from a thread and runtime of its own, so it keeps answering
/// whatever the test does meanwhile: a current-thread `#[tokio::test]`
/// blocked on `std::process::Command::output()` would otherwise starve it.
pub struct ModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl ModelServer {
    /// Binds an ephemeral port on 127.0.0.1 and starts serving `script`.
    #[allow(
        clippy::unused_async,
        reason = "tests await it as they await every other server they start"
    )]
    pub async fn start(script: Script) -> Self {
        let shared = Arc::new(Shared {
            script,
            log: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            // SDK 0.2.x probes the base URL with `HEAD /` before starting.
            .route("/", any(reachable))
            .fallback(unknown_route)
            // Conversations carry every tool definition and every tool
            // result; the 2 MB default is too small for a long run.
            .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(Arc::clone(&shared));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind the model server to 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("make the model server socket non-blocking");
        let addr = listener.local_addr().expect("model server address");
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("model-server-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("model server runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("model server listener");
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(err) = served {
                        eprintln!("model server stopped: {err}");
                    }
                });
            })
            .expect("start the model server thread");
        ModelServer {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// The base URL for `ANTHROPIC_BASE_URL`, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port, for configurations that build the URL themselves.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log().clone()
    }

    /// The `POST /v1/messages` requests only (main loop, subagents, side calls).
    pub fn message_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::POST && r.path == "/v1/messages")
            .collect()
    }

    /// The `POST /v1/messages` requests that offered tools: the agent loops.
    pub fn agent_requests(&self) -> Vec<RecordedRequest> {
        self.message_requests()
            .into_iter()
            .filter(|r| !r.is_side_call())
            .collect()
    }

    /// A one-line-per-request summary, for assertion messages.
    pub fn describe_requests(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                // The CLI opens every system prompt with a billing line;
                // the part after it is what tells requests apart.
                let system = r.system_text();
                let system = system
                    .lines()
                    .filter(|l| !l.starts_with("x-anthropic-billing-header"))
                    .collect::<Vec<_>>()
                    .join(" ");
                format!(
                    "{} {} model={:?} tools={} system={:?}\n",
                    r.method,
                    r.path,
                    r.model(),
                    r.tool_names().len(),
                    system.chars().take(100).collect::<String>(),
                )
            })
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may be gone already; then there is nothing to stop.
            let _ = stop.send(());
        }
    }
}

struct Shared {
    script: Script,
    log: Mutex<Vec<RecordedRequest>>,
    /// Source of unique `toolu_`/`msg_` ids; the counter keeps runs
    /// deterministic for a given sequence of requests.
    next_id: AtomicU64,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        // A test that panicked while holding the lock poisoned it; the log
        // itself is still fine to read.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, method: Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Value {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let headers = headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        self.log().push(RecordedRequest {
            method,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers,
            body: json.clone(),
        });
        json
    }

    fn id(&self, kind: &str) -> String {
        format!(
            "{kind}_scripted_{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = shared.record(method, &uri, &headers, &body);
    match decide(&shared, &request) {
        Decision::Fail { status } => api_error(status),
        Decision::Answer(turn) => {
            let model = request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("claude-scripted");
            let message_id = shared.id("msg");
            if request.get("stream").and_then(Value::as_bool) == Some(true) {
                sse_response(&message_id, model, &turn)
            } else {
                axum::Json(turn.to_message(&message_id, model)).into_response()
            }
        }
    }
}

async fn count_tokens(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.record(method, &uri, &headers, &body);
    // Roughly four bytes per token, like the real tokenizer on English.
    axum::Json(json!({ "input_tokens": body.len() / 4 + 1 })).into_response()
}

async fn reachable(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    shared.record(method, &uri, &headers, &body);
    StatusCode::OK
}

async fn unknown_route(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    eprintln!("model server: unscripted route {method} {uri}");
    shared.record(method, &uri, &headers, &body);
    let body = json!({
        "type": "error",
        "error": { "type": "not_found_error", "message": format!("no scripted route for {}", uri.path()) },
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

enum Decision {
    Answer(Turn),
    Fail { status: u16 },
}

/// One assistant message: its content blocks and why it stopped.
struct Turn {
    blocks: Vec<Block>,
    stop_reason: &'static str,
}

enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

impl Turn {
    fn text(text: &str) -> Self {
        Turn {
            blocks: vec![Block::Text(text.to_owned())],
            stop_reason: "end_turn",
        }
    }

    fn tool_use(id: String, name: &str, input: Value) -> Self {
        Turn {
            blocks: vec![
                Block::Text(PREAMBLE_TEXT.to_owned()),
                Block::ToolUse {
                    id,
                    name: name.to_owned(),
                    input,
                },
            ],
            stop_reason: "tool_use",
        }
    }

    fn to_message(&self, id: &str, model: &str) -> Value {
        let content: Vec<Value> = self
            .blocks
            .iter()
            .map(|b| match b {
                Block::Text(text) => json!({ "type": "text", "text": text }),
                Block::ToolUse { id, name, input } => {
                    json!({ "type": "tool_use", "id": id, "name": name, "input": input })
                }
            })
            .collect();
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": usage(OUTPUT_TOKENS),
        })
    }
}

fn usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": INPUT_TOKENS,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

/// The script's next move, given the whole request.
fn decide(shared: &Shared, request: &Value) -> Decision {
    let tools = tool_names(request);
    match &shared.script {
        Script::ApiError { status } => return Decision::Fail { status: *status },
        Script::Subagent { prompt_marker, .. } if system_text(request).contains(prompt_marker) => {
            return Decision::Answer(Turn::text(SUBAGENT_TEXT));
        }
        _ if tools.is_empty() => return Decision::Answer(Turn::text(SIDE_CALL_TEXT)),
        _ => {}
    }
    // The first call of a tool, unless the conversation already holds its
    // result, in which case the script is done.
    let call_once = |name: &str, input: Value| {
        if answered(request, name) {
            Turn::text(FINAL_TEXT)
        } else if !tools.contains(&name) {
            Turn::text(&format!(
                "Scripted model error: tool {name} is not offered; tools: {tools:?}"
            ))
        } else {
            Turn::tool_use(shared.id("toolu"), name, input)
        }
    };
    let turn = match &shared.script {
        Script::Bash { command } => call_once(
            "Bash",
            json!({ "command": command, "description": "Run the scripted command" }),
        ),
        Script::StructuredOutput { output } => call_once("StructuredOutput", output.clone()),
        Script::McpTool { tool, input } => call_once(tool, input.clone()),
        Script::Subagent { agent, .. } => {
            let agent_tool = ["Agent", "Task"]
                .into_iter()
                .find(|t| tools.contains(t))
                .unwrap_or("Agent");
            let mut input = json!({
                "description": "Delegate to the subagent",
                "prompt": "Summarise data.csv for me.",
                "subagent_type": agent,
            });
            // SDK 0.3 starts subagents in the background unless told not
            // to; in the foreground their answer comes back as the tool
            // result, which is what a delegating model waits for.
            if tool_accepts(request, agent_tool, "run_in_background") {
                input["run_in_background"] = json!(false);
            }
            call_once(agent_tool, input)
        }
        Script::EndlessBash => Turn::tool_use(
            shared.id("toolu"),
            "Bash",
            json!({ "command": LOOP_COMMAND, "description": "Loop forever" }),
        ),
        Script::ApiError { .. } => unreachable!("answered above"),
    };
    Decision::Answer(turn)
}

/// Whether the conversation holds a `tool_result` for a call of `tool`
/// that this server made (its id carries our marker).
fn answered(request: &Value, tool: &str) -> bool {
    let our_calls: Vec<&str> = content_blocks(request)
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .filter(|b| b.get("name").and_then(Value::as_str) == Some(tool))
        .filter_map(|b| b.get("id").and_then(Value::as_str))
        .filter(|id| id.starts_with("toolu_scripted_"))
        .collect();
    content_blocks(request)
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .filter_map(|b| b.get("tool_use_id").and_then(Value::as_str))
        .any(|id| our_calls.contains(&id))
}

/// Every content block of every message in the conversation. A message
/// whose content is a plain string has no blocks worth scanning.
fn content_blocks(request: &Value) -> impl Iterator<Item = &Value> {
    request
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
}

/// Whether the offered tool `tool` has a parameter named `param`.
fn tool_accepts(request: &Value, tool: &str, param: &str) -> bool {
    request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("name").and_then(Value::as_str) == Some(tool))
        .any(|t| t["input_schema"]["properties"].get(param).is_some())
}

fn tool_names(request: &Value) -> Vec<&str> {
    request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str))
        .collect()
}

/// The `system` field is either a string or a list of text blocks.
fn system_text(request: &Value) -> String {
    match request.get("system") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn api_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({
        "type": "error",
        "error": { "type": kind, "message": format!("Scripted {kind} ({})", status.as_u16()) },
    });
    (status, axum::Json(body)).into_response()
}

/// The streaming form of `turn`, event by event as the real API sends it.
fn sse_response(message_id: &str, model: &str, turn: &Turn) -> Response {
    let mut out = String::new();
    let mut event = |name: &str, data: Value| {
        out.push_str("event: ");
        out.push_str(name);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    };
    event(
        "message_start",
        json!({
            "type": "message_start",
            "message": {
                "id": message_id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage(1),
            },
        }),
    );
    event("ping", json!({ "type": "ping" }));
    for (index, block) in turn.blocks.iter().enumerate() {
        match block {
            Block::Text(text) => {
                event(
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": index,
                            "content_block": { "type": "text", "text": "" } }),
                );
                for piece in halves(text) {
                    event(
                        "content_block_delta",
                        json!({ "type": "content_block_delta", "index": index,
                                "delta": { "type": "text_delta", "text": piece } }),
                    );
                }
            }
            Block::ToolUse { id, name, input } => {
                event(
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": index,
                            "content_block": { "type": "tool_use", "id": id, "name": name, "input": {} } }),
                );
                // Real streams split the JSON anywhere; so do we, so the
                // client's reassembly is exercised.
                for piece in halves(&input.to_string()) {
                    event(
                        "content_block_delta",
                        json!({ "type": "content_block_delta", "index": index,
                                "delta": { "type": "input_json_delta", "partial_json": piece } }),
                    );
                }
            }
        }
        event(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": index }),
        );
    }
    event(
        "message_delta",
        json!({ "type": "message_delta",
                "delta": { "stop_reason": turn.stop_reason, "stop_sequence": null },
                "usage": { "output_tokens": OUTPUT_TOKENS } }),
    );
    event("message_stop", json!({ "type": "message_stop" }));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(out))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `s` cut in two at a character boundary near its middle.
fn halves(s: &str) -> [&str; 2] {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid += 1;
    }
    let (a, b) = s.split_at(mid);
    [a, b]
}
