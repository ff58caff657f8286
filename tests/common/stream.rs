//! A `POST /query` answer read to its end: its head, the JSON of its
//! events (through [`super::sse`]) and when they arrived.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use super::sse;

/// The longest a stream may take to start, and then to end.
const LIMIT: Duration = Duration::from_secs(120);

/// A whole response: its head, the JSON of its events, and when the first
/// event and the end arrived, counted from the request.
#[derive(Debug)]
pub struct Stream {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    /// The run's events, in order.
    pub events: Vec<Value>,
    /// The stream's closing status event, if the server sent one (see
    /// [`sse::split_closing`]).
    pub closing: Option<Value>,
    pub first_event: Option<Duration>,
    pub ended: Duration,
}

impl Stream {
    pub fn last(&self) -> &Value {
        self.events.last().expect("at least one event")
    }
}

/// Sends the request and reads the SSE body to its end (each within 120 s).
pub async fn read_stream(request: reqwest::RequestBuilder) -> Stream {
    let start = Instant::now();
    let response = tokio::time::timeout(LIMIT, request.send())
        .await
        .expect("the response starts within 120 s")
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = content_type(&response);
    let mut body = response.bytes_stream();
    let mut decoder = sse::Decoder::new();
    let mut events = Vec::new();
    let mut first_event = None;
    let read = async {
        while let Some(chunk) = body.next().await {
            let decoded = decoder.feed(&chunk.expect("body chunk"));
            if !decoded.is_empty() {
                first_event.get_or_insert_with(|| start.elapsed());
            }
            events.extend(decoded.iter().map(sse::Event::json));
        }
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .expect("the stream ends within 120 s");
    let (run, closing) = sse::split_closing(&events);
    Stream {
        status,
        content_type,
        headers,
        closing: closing.cloned(),
        events: run.to_vec(),
        first_event,
        ended: start.elapsed(),
    }
}

/// `POST url/query` with `body`; fails the test unless the answer is a 200
/// event stream, and returns the run's events once the stream ends.
pub async fn query(url: &str, body: Value) -> Vec<Value> {
    let stream = read_stream(
        reqwest::Client::new()
            .post(format!("{url}/query"))
            .json(&body),
    )
    .await;
    assert_eq!(stream.status, 200, "POST /query: {stream:?}");
    assert_eq!(stream.content_type, "text/event-stream");
    stream.events
}

/// The response's `content-type`, empty when it has none.
pub fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
