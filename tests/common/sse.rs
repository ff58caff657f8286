//! Server-sent events read the way a browser reads them, following the
//! spec's "event stream interpretation"
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html>): lines
//! end in LF, CR or CRLF; a line starting with `:` is a comment; `field:
//! value` loses one space after the colon, if there is one; `data` lines
//! join with LF; an event ends at a blank line, and a stream that stops
//! before that blank line drops the unfinished event.
//!
//! This is the test toolkit's only SSE parser. It knows nothing of what
//! the events mean, so an event type it has never seen passes through like
//! any other. It depends on nothing but `std`, `memchr` and `serde_json`,
//! so the router's unit tests (`src/app/tests.rs`) include this very file.

use serde_json::Value;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event` field, `message` when the event had none.
    pub event: String,
    /// The `data` lines, joined with LF.
    pub data: String,
    /// The last event ID seen so far in the stream (it carries over).
    pub id: Option<String>,
}

impl Event {
    /// The data as JSON; fails the test, showing the data, when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("an event's data is not JSON ({e}): {:?}", self.data))
    }
}

/// An incremental decoder: feed it the body chunk by chunk, as it arrives,
/// split anywhere.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a line not yet ended.
    pending: Vec<u8>,
    /// The last chunk ended in CR: an LF at the start of the next one is
    /// the same line end.
    after_cr: bool,
    /// A first line was read: a byte-order mark before it is skipped.
    started: bool,
    data: String,
    /// Whether any `data` field came in this event (it may be empty).
    has_data: bool,
    event: String,
    last_id: Option<String>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `chunk` and returns the events it completed.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        if chunk.is_empty() {
            return events;
        }
        if std::mem::take(&mut self.after_cr) && chunk[0] == b'\n' {
            chunk = &chunk[1..];
        }
        let mut start = 0;
        while let Some(at) = memchr::memchr2(b'\n', b'\r', &chunk[start..]) {
            let end = start + at;
            if self.pending.is_empty() {
                self.line(&chunk[start..end], &mut events);
            } else {
                self.pending.extend_from_slice(&chunk[start..end]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, &mut events);
            }
            start = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.pending.extend_from_slice(&chunk[start..]);
        events
    }

    /// One line, without its end.
    fn line(&mut self, mut line: &[u8], events: &mut Vec<Event>) {
        if !std::mem::replace(&mut self.started, true) {
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => value.clone_into(&mut self.event),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            // `retry` only tunes reconnection; other fields are ignored.
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<Event>) {
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the LF after the last data line
        events.push(Event {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        });
    }
}

/// Every event of a whole body.
pub fn parse(body: &str) -> Vec<Event> {
    Decoder::new().feed(body.as_bytes())
}

/// The JSON of every event of a whole body, in order; fails the test on an
/// event whose data is not JSON.
pub fn json_events(body: &str) -> Vec<Value> {
    parse(body).iter().map(Event::json).collect()
}

/// A stream's events split into the run's own and the stream's closing
/// status event, when the server sends one: a last event whose `type` is
/// `done`. Counting and ordering checks look at the run's events only.
pub fn split_closing(events: &[Value]) -> (&[Value], Option<&Value>) {
    match events.split_last() {
        Some((last, run)) if last["type"] == "done" => (run, Some(last)),
        _ => (events, None),
    }
}
