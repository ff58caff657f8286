//! `ds runs`, `ds attach`, `ds continue`, `ds cancel` and `ds replay`: the
//! `/runs` routes from the command line.
//!
//! They speak the HTTP API's `/runs` routes, to a deployed endpoint
//! (`--server URL`, with `SANDSTORM_API_TOKEN`) or, without one, to the
//! same router called in this process: like every instance of the server,
//! `ds` keeps nothing and finds a run through E2B. `ds attach` reads on
//! across the server's deadlines: a `detached` event is followed by a new
//! request from the last event it showed.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt as _;

use super::{Fatal, exit, render};
use crate::app::{self, AppState};
use crate::events::{ErrorKind, RunError, RunEvent};
use crate::history::History;
use crate::run::RunHandle;
use crate::secret::Secret;

/// How many times `ds attach` tries again after a stream that was cut
/// (neither `done` nor `detached`), waiting a second more each time.
const RECONNECTS: u32 = 3;

/// Where the `/runs` routes are answered.
pub(super) enum Endpoint {
    /// A deployed server, with its bearer token if there is one.
    Remote {
        base: String,
        token: Option<Secret>,
        http: reqwest::Client,
    },
    /// The router, called in this process, and the history it records
    /// to, whose writes must land before `ds` exits.
    Direct { router: Router, history: History },
}

/// An answer: its status, the run it names (`x-run-id`), and its body, as
/// it arrives.
struct Answer {
    status: StatusCode,
    run_id: Option<String>,
    body: BoxStream<'static, Result<Bytes, String>>,
}

/// The run an answer names in `x-run-id`.
fn run_id_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// How long `ds` waits at exit for the history's writes to land.
const HISTORY_SETTLE: Duration = Duration::from_secs(3);

impl Endpoint {
    /// `--server URL` when given, else the router over `state`.
    pub(super) fn new(
        server: Option<String>,
        token: Option<Secret>,
        state: Option<AppState>,
    ) -> Result<Self, Fatal> {
        match (server, state) {
            (Some(base), _) => Ok(Endpoint::Remote {
                base: base.trim_end_matches('/').to_owned(),
                token,
                http: reqwest::Client::new(),
            }),
            (None, Some(state)) => Ok(Endpoint::Direct {
                history: state.history().clone(),
                router: app::app(state),
            }),
            (None, None) => Err(Fatal::usage("no --server and no sandbox provider to ask")),
        }
    }

    /// Waits for the writes the router queued to the history (a cancel's,
    /// a replay's record) before `ds` exits.
    pub(super) async fn settle(&self) {
        if let Endpoint::Direct { history, .. } = self {
            history.settle(HISTORY_SETTLE).await;
            crate::telemetry::Telemetry::active().flush().await;
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, Fatal> {
        self.send_body(method, path, headers, Bytes::new()).await
    }

    async fn send_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Answer, Fatal> {
        match self {
            Endpoint::Remote { base, token, http } => {
                let mut request = http.request(method, format!("{base}{path}"));
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                if !body.is_empty() {
                    request = request
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(body);
                }
                if let Some(token) = token {
                    request = request.bearer_auth(token.expose());
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| Fatal::usage(format!("cannot reach {base}: {e}")))?;
                Ok(Answer {
                    status: response.status(),
                    run_id: run_id_of(response.headers()),
                    body: response
                        .bytes_stream()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .boxed(),
                })
            }
            Endpoint::Direct { router, .. } => {
                let mut request = Request::builder().method(method).uri(path);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                if !body.is_empty() {
                    request = request.header(header::CONTENT_TYPE, "application/json");
                }
                let request = request
                    .body(Body::from(body))
                    .map_err(|e| Fatal::usage(format!("bad request {path}: {e}")))?;
                let response = match router.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok(Answer {
                    status: response.status(),
                    run_id: run_id_of(response.headers()),
                    body: response
                        .into_body()
                        .into_data_stream()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .boxed(),
                })
            }
        }
    }

    /// A JSON answer, or the API's error message as a [`Fatal`].
    async fn json(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Value, Fatal> {
        self.json_with(method, path, headers, Bytes::new()).await
    }

    /// The JSON answer to a request with a JSON `body` (none when empty),
    /// or the API's error message as a [`Fatal`].
    pub(super) async fn json_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Value, Fatal> {
        let answer = self.send_body(method, path, headers, body).await?;
        let status = answer.status;
        let body: Vec<Bytes> = answer
            .body
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| Fatal::usage(format!("the answer was cut: {e}")))?;
        let body: Value = serde_json::from_slice(&body.concat()).unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(refusal(status, &body))
        }
    }
}

/// The API's error body as `ds`'s error, with a hint for the usual case.
fn refusal(status: StatusCode, body: &Value) -> Fatal {
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned();
    let hint = if status == StatusCode::NOT_FOUND {
        " (runs of a local sandbox live in the `ds serve` that started them: use --server)"
    } else {
        ""
    };
    Fatal {
        code: if status == StatusCode::NOT_FOUND {
            exit::RUN_FAILED
        } else {
            exit::USAGE
        },
        message: format!("{message} (HTTP {}){hint}", status.as_u16()),
    }
}

/// `ds runs`: one line a run, newest first; `query` is `GET /runs`'s
/// query string (the filters and the page).
pub(super) async fn list(
    endpoint: &Endpoint,
    query: &str,
    headers: &[(HeaderName, HeaderValue)],
    json: bool,
) -> Result<u8, Fatal> {
    let path = if query.is_empty() {
        "/runs".to_owned()
    } else {
        format!("/runs?{query}")
    };
    let body = endpoint.json(Method::GET, &path, headers).await?;
    let runs = body["runs"].as_array().cloned().unwrap_or_default();
    // On stderr, so that stdout stays one run a line.
    let more = || {
        if let Some(cursor) = body["next_cursor"].as_str() {
            eprintln!("more: ds runs --cursor {cursor}");
        }
    };
    if json {
        for run in &runs {
            println!("{run}");
        }
        more();
        return Ok(exit::OK);
    }
    if runs.is_empty() {
        eprintln!("no runs");
    }
    for run in &runs {
        let cost = run["total_cost_usd"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |c| format!("${c:.4}"));
        let prompt: String = run["prompt"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(50)
            .collect();
        println!(
            "{}  {:<9}  {}  {:>3} turns  {:>8}  {}",
            run["run_id"].as_str().unwrap_or_default(),
            run["status"].as_str().unwrap_or_default(),
            run["created_at"].as_str().unwrap_or_default(),
            run["turns"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            cost,
            prompt.replace('\n', " "),
        );
    }
    more();
    Ok(exit::OK)
}

/// `ds cancel`.
pub(super) async fn cancel(
    endpoint: &Endpoint,
    run: &str,
    headers: &[(HeaderName, HeaderValue)],
    json: bool,
) -> Result<u8, Fatal> {
    let path = format!("/runs/{}/cancel", path_segment(run)?);
    let status = endpoint.json(Method::POST, &path, headers).await?;
    if json {
        println!("{status}");
    } else {
        eprintln!("{run}: {}", status["status"].as_str().unwrap_or("unknown"));
    }
    Ok(exit::OK)
}

/// `ds attach`: the run's events after `from`, until it ends, as `ds`
/// shows a run's; Ctrl-C leaves the run going.
pub(super) async fn attach(
    endpoint: Endpoint,
    run: &str,
    from: u64,
    headers: Vec<(HeaderName, HeaderValue)>,
    options: render::Options,
) -> Result<u8, Fatal> {
    let path = format!("/runs/{}/events", path_segment(run)?);
    // The first request answers here: an unknown run is an error, not an
    // empty stream.
    let first = endpoint
        .send(Method::GET, &path, &with_last_event(&headers, from))
        .await?;
    show(endpoint, path, headers, first, from, options).await
}

/// `ds continue`: a follow-up turn of a run kept for one (`keep_alive`),
/// shown as `ds attach` shows a run, from the turn's first event.
pub(super) async fn continue_run(
    endpoint: Endpoint,
    run: &str,
    turn: &Value,
    headers: Vec<(HeaderName, HeaderValue)>,
    options: render::Options,
) -> Result<u8, Fatal> {
    let run = path_segment(run)?;
    let body = Bytes::from(turn.to_string());
    let mut sent = headers.clone();
    sent.push((
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    ));
    let first = endpoint
        .send_body(Method::POST, &format!("/runs/{run}/messages"), &sent, body)
        .await?;
    // A stream that detaches reads on from the run's events.
    show(
        endpoint,
        format!("/runs/{run}/events"),
        headers,
        first,
        0,
        options,
    )
    .await
}

/// `ds replay`: the recorded run again with `overrides` (a replay's body),
/// shown as `ds` shows a run, its report last. A replay that detaches is
/// read on from its own events.
pub(super) async fn replay(
    endpoint: Endpoint,
    run: &str,
    overrides: &Value,
    headers: Vec<(HeaderName, HeaderValue)>,
    mut options: render::Options,
) -> Result<u8, Fatal> {
    let run = path_segment(run)?;
    let mut sent = headers.clone();
    sent.push((
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    ));
    let body = Bytes::from(overrides.to_string());
    let first = endpoint
        .send_body(Method::POST, &format!("/runs/{run}/replay"), &sent, body)
        .await?;
    // An attached replay ends with `ds`, as `ds "prompt"` does; a detached
    // one goes on, as `ds attach` leaves it.
    let replay = first.run_id.clone().unwrap_or_default();
    if replay.is_empty() {
        options.on_interrupt = render::OnInterrupt::EndRun;
    }
    show(
        endpoint,
        format!("/runs/{replay}/events"),
        headers,
        first,
        0,
        options,
    )
    .await
}

/// Shows a run's stream that `first` began, reading on from `path` after
/// each `detached` event; a refusal is `ds`'s error.
async fn show(
    endpoint: Endpoint,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    first: Answer,
    from: u64,
    options: render::Options,
) -> Result<u8, Fatal> {
    if !first.status.is_success() {
        let body: Vec<Bytes> = first.body.filter_map(|r| async { r.ok() }).collect().await;
        let body: Value = serde_json::from_slice(&body.concat()).unwrap_or_default();
        return Err(refusal(first.status, &body));
    }
    let (tx, events) = mpsc::channel(crate::run::EVENT_BUFFER);
    let finished = tokio::spawn(async move {
        follow(&endpoint, path, headers, first, from, tx).await;
        endpoint.settle().await;
    });
    Ok(render::follow(RunHandle { events, finished }, options).await)
}

/// A run id as one path segment: only what an id can hold.
fn path_segment(run: &str) -> Result<&str, Fatal> {
    if !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(run)
    } else {
        Err(Fatal::usage(format!(
            "{run:?} is not a run id (run_ and 32 hex digits)"
        )))
    }
}

fn with_last_event(
    headers: &[(HeaderName, HeaderValue)],
    last: u64,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = headers.to_vec();
    headers.push((
        HeaderName::from_static("last-event-id"),
        HeaderValue::from(last),
    ));
    headers.push((
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    ));
    headers
}

/// Reads the run's events into `tx`, asking again after each `detached`
/// event (and, a few times, after a cut stream), until `done`.
async fn follow(
    endpoint: &Endpoint,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    first: Answer,
    from: u64,
    tx: mpsc::Sender<RunEvent>,
) {
    let mut last = from;
    let mut answer = Some(first);
    let mut retries = 0;
    loop {
        let current = match answer.take() {
            Some(answer) => answer,
            None => match endpoint
                .send(Method::GET, &path, &with_last_event(&headers, last))
                .await
            {
                Ok(answer) if answer.status.is_success() => answer,
                Ok(answer) => {
                    let _ = tx
                        .send(lost(&format!(
                            "the server answered HTTP {}",
                            answer.status.as_u16()
                        )))
                        .await;
                    return;
                }
                Err(fatal) => {
                    let _ = tx.send(lost(&fatal.message)).await;
                    return;
                }
            },
        };
        match read(current, &mut last, &tx).await {
            Ended::Done | Ended::Gone => return,
            Ended::Detached => retries = 0,
            Ended::Cut(why) => {
                retries += 1;
                if retries > RECONNECTS {
                    let _ = tx.send(lost(&why)).await;
                    return;
                }
                tokio::time::sleep(Duration::from_secs(u64::from(retries))).await;
            }
        }
    }
}

/// The error event `ds attach` shows when it cannot read on. The run may
/// still be going; only this view of it ended.
fn lost(why: &str) -> RunEvent {
    RunEvent::Error(RunError {
        kind: ErrorKind::StreamCut,
        message: format!("lost the run's events: {why}; the run may go on (ds attach again)"),
        request_id: String::new(),
    })
}

/// How one stream of a run ended.
enum Ended {
    /// The stream ended after a `done`: the run's last turn so far is over
    /// (a run with follow-ups has a `done` after each turn).
    Done,
    /// A `detached` event: ask again.
    Detached,
    /// The stream stopped without either.
    Cut(String),
    /// Nobody reads any more.
    Gone,
}

/// Reads one SSE stream, passing its events on and keeping the last id.
async fn read(answer: Answer, last: &mut u64, tx: &mpsc::Sender<RunEvent>) -> Ended {
    let mut body = answer.body;
    let mut buffer = BytesMut::new();
    let mut done = false;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return Ended::Cut(e),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find_blank_line(&buffer) {
            let block = buffer.split_to(end + 2);
            let Some((id, data)) = parse_event(&block) else {
                continue;
            };
            let event = RunEvent::from_json(data);
            if let RunEvent::Detached(_) = event {
                return Ended::Detached;
            }
            if let Some(id) = id {
                *last = (*last).max(id);
            }
            done = matches!(event, RunEvent::Done(_));
            if tx.send(event).await.is_err() {
                return Ended::Gone;
            }
        }
    }
    if done {
        Ended::Done
    } else {
        Ended::Cut("the stream ended before the run did".to_owned())
    }
}

fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n")
}

/// One SSE event's `id` and `data` (the server writes one `data` line per
/// event, with no carriage returns); `None` for a comment (keepalive).
fn parse_event(block: &[u8]) -> Option<(Option<u64>, Bytes)> {
    let mut id = None;
    let mut data: Option<Vec<u8>> = None;
    for line in block.split(|&b| b == b'\n') {
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let data = data.get_or_insert_with(Vec::new);
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
        } else if let Some(value) = line.strip_prefix(b"id:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            id = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
    }
    data.map(|data| (id, Bytes::from(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_with_their_ids_and_comments_are_skipped() {
        assert_eq!(
            parse_event(b"data: {\"type\":\"run\"}\nid: 1\n\n"),
            Some((Some(1), Bytes::from_static(b"{\"type\":\"run\"}")))
        );
        assert_eq!(parse_event(b": keepalive\n\n"), None);
        assert_eq!(
            parse_event(b"data: {}\n\n"),
            Some((None, Bytes::from_static(b"{}")))
        );
    }

    #[test]
    fn only_run_ids_go_into_a_path() {
        assert!(path_segment("run_0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "../health", "run_1/cancel", "a b", "run?x"] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }
    }
}
