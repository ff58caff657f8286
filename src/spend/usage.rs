//! Reading what one model call used from its answer, as the answer streams
//! past: `usage` in a JSON message, or in the `message_start` and
//! `message_delta` events of a server-sent event stream (Anthropic, Vertex,
//! Foundry, OpenRouter) or of an AWS event stream (Bedrock's
//! `invoke-with-response-stream`, whose frames carry the same events).
//!
//! The reader sees each chunk once and keeps only the line it is in the
//! middle of, and only while that line could be a usage event: the text of
//! a long answer streams through without being held.

use serde::Deserialize;

/// The longest server-sent event line kept to be parsed. `message_start`
/// and `message_delta` are a few hundred bytes; longer lines are content.
const MAX_EVENT_LINE: usize = 64 * 1024;
/// The largest JSON answer read for its usage. A Messages answer holds at
/// most the call's `max_tokens` of text, well under this.
const MAX_JSON_ANSWER: usize = 16 * 1024 * 1024;
/// The largest AWS event stream frame read; Bedrock's carry one event.
const MAX_AWS_FRAME: usize = 1024 * 1024;

/// Tokens one call used, as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Usage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// The cache writes by lifetime, when the API splits them.
    #[serde(default)]
    pub cache_creation: Option<CacheCreation>,
}

/// `usage.cache_creation`: cache writes by lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct CacheCreation {
    #[serde(default)]
    pub ephemeral_5m_input_tokens: u64,
    #[serde(default)]
    pub ephemeral_1h_input_tokens: u64,
}

impl Usage {
    /// The prompt's size: input and cache, read or written.
    pub(crate) fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }

    /// `later`'s counts over these: `message_delta` repeats the counts it
    /// has, cumulatively, and leaves out the rest.
    fn update(&mut self, later: &PartialUsage) {
        let fields = [
            (&mut self.input_tokens, later.input_tokens),
            (&mut self.output_tokens, later.output_tokens),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                *field = value;
            }
        }
    }
}

/// `message_delta`'s usage: only the counts it carries.
#[derive(Debug, Default, Deserialize)]
struct PartialUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

/// What a call's answer said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    /// The model that answered, if the answer named it.
    pub model: Option<String>,
    /// The usage seen so far.
    pub usage: Usage,
    /// Whether any usage was seen at all.
    pub saw_usage: bool,
    /// Whether the answer is complete (`message_stop`, or the whole JSON
    /// message).
    pub complete: bool,
}

/// How the answer is framed.
#[derive(Debug)]
enum Framing {
    /// `text/event-stream`: the line being read, or `None` while skipping
    /// a line too long to be a usage event.
    Events { line: Option<Vec<u8>> },
    /// A JSON message, held until its end (up to [`MAX_JSON_ANSWER`]).
    Json {
        body: Vec<u8>,
        expected: Option<usize>,
    },
    /// `application/vnd.amazon.eventstream`: the frame being read.
    AwsEvents { frame: Vec<u8> },
    /// Anything else: nothing to read.
    Opaque,
}

/// Follows one answer's chunks and keeps what they say about usage.
#[derive(Debug)]
pub(crate) struct UsageReader {
    framing: Framing,
    reading: Reading,
}

impl UsageReader {
    /// A reader for an answer with this `Content-Type` and, if known,
    /// `Content-Length`.
    pub(crate) fn new(content_type: Option<&str>, content_length: Option<usize>) -> Self {
        let media = content_type
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let framing = match media.as_str() {
            "text/event-stream" => Framing::Events {
                line: Some(Vec::new()),
            },
            "application/json" => Framing::Json {
                body: Vec::new(),
                expected: content_length,
            },
            "application/vnd.amazon.eventstream" => Framing::AwsEvents { frame: Vec::new() },
            _ => Framing::Opaque,
        };
        UsageReader {
            framing,
            reading: Reading::default(),
        }
    }

    /// What has been read so far.
    #[cfg(test)]
    pub(crate) fn reading(&self) -> &Reading {
        &self.reading
    }

    /// Reads one chunk of the answer. Returns true when this chunk
    /// completed the answer.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> bool {
        let was_complete = self.reading.complete;
        match &mut self.framing {
            Framing::Events { line } => {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let (head, tail, ends) = match rest.iter().position(|b| *b == b'\n') {
                        Some(at) => (&rest[..at], &rest[at + 1..], true),
                        None => (rest, &rest[rest.len()..], false),
                    };
                    if let Some(buffer) = line {
                        if buffer.len() + head.len() > MAX_EVENT_LINE {
                            *line = None;
                        } else {
                            buffer.extend_from_slice(head);
                        }
                    }
                    if ends {
                        if let Some(buffer) = line.take() {
                            read_event_line(&buffer, &mut self.reading);
                        }
                        *line = Some(Vec::new());
                    }
                    rest = tail;
                }
            }
            Framing::Json { body, expected } => {
                if body.len() + chunk.len() <= MAX_JSON_ANSWER {
                    body.extend_from_slice(chunk);
                    if expected.is_some_and(|n| body.len() >= n) {
                        read_json(body, &mut self.reading);
                        self.framing = Framing::Opaque;
                    }
                } else {
                    self.framing = Framing::Opaque;
                }
            }
            Framing::AwsEvents { frame } => {
                frame.extend_from_slice(chunk);
                loop {
                    match aws_frame(frame) {
                        AwsFrame::Whole(length) => {
                            read_aws_payload(&frame[..length], &mut self.reading);
                            frame.drain(..length);
                        }
                        AwsFrame::Partial => break,
                        AwsFrame::Malformed => {
                            self.framing = Framing::Opaque;
                            break;
                        }
                    }
                }
            }
            Framing::Opaque => {}
        }
        self.reading.complete && !was_complete
    }

    /// The answer ended: reads what was held, and returns the reading.
    pub(crate) fn finish(mut self) -> Reading {
        match std::mem::replace(&mut self.framing, Framing::Opaque) {
            Framing::Events { line: Some(line) } if !line.is_empty() => {
                read_event_line(&line, &mut self.reading);
            }
            Framing::Json { body, .. } => read_json(&body, &mut self.reading),
            _ => {}
        }
        self.reading
    }
}

/// One `data:` line of an event stream.
fn read_event_line(line: &[u8], reading: &mut Reading) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(data) = line.strip_prefix(b"data:") {
        read_event(data, reading);
    }
}

/// How much of an AWS event stream frame is there.
enum AwsFrame {
    /// A whole frame of this many bytes starts the buffer.
    Whole(usize),
    /// More bytes are needed.
    Partial,
    /// Not a frame, or one too large to be Bedrock's.
    Malformed,
}

/// The big-endian `u32` at `at`, as a length.
fn length_at(buffer: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = buffer.get(at..at + 4)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(bytes)).ok()
}

/// A frame is its total length (4 bytes, big-endian), its headers'
/// length (4), a CRC of those (4), the headers, the payload, and a CRC of
/// the whole (4). The CRCs are not checked: the answer is passed on as it
/// came, and a broken frame only means its usage goes unread.
fn aws_frame(buffer: &[u8]) -> AwsFrame {
    let (Some(total), Some(headers)) = (length_at(buffer, 0), length_at(buffer, 4)) else {
        return AwsFrame::Partial;
    };
    if total < 16 + headers || total > MAX_AWS_FRAME {
        return AwsFrame::Malformed;
    }
    if buffer.len() < total {
        return AwsFrame::Partial;
    }
    AwsFrame::Whole(total)
}

/// One whole frame, whose payload is `{"bytes": "<base64 of one event>"}`.
fn read_aws_payload(frame: &[u8], reading: &mut Reading) {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Chunk {
        bytes: String,
    }
    let Some(headers) = length_at(frame, 4) else {
        return;
    };
    let Some(payload) = frame.get(12 + headers..frame.len().saturating_sub(4)) else {
        return;
    };
    let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
        return;
    };
    if let Ok(event) = base64::engine::general_purpose::STANDARD.decode(chunk.bytes) {
        read_event(&event, reading);
    }
}

/// One event of the Messages API's stream, as JSON.
fn read_event(data: &[u8], reading: &mut Reading) {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        message: Option<Message>,
        #[serde(default)]
        usage: Option<PartialUsage>,
    }
    // Only the events that carry usage are parsed.
    let wanted = [
        &b"message_start"[..],
        &b"message_delta"[..],
        &b"message_stop"[..],
    ];
    if !wanted
        .iter()
        .any(|kind| data.windows(kind.len()).any(|w| w == *kind))
    {
        return;
    }
    let Ok(event) = serde_json::from_slice::<Event>(data.trim_ascii()) else {
        return;
    };
    match event.kind.as_str() {
        "message_start" => {
            if let Some(message) = event.message {
                reading.model = message.model.or(reading.model.take());
                if let Some(usage) = message.usage {
                    reading.usage = usage;
                    reading.saw_usage = true;
                }
            }
        }
        "message_delta" => {
            if let Some(usage) = event.usage {
                reading.usage.update(&usage);
                reading.saw_usage = true;
            }
        }
        "message_stop" => reading.complete = true,
        _ => {}
    }
}

/// A Messages API answer, as far as spend goes.
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// A whole JSON answer.
fn read_json(body: &[u8], reading: &mut Reading) {
    if let Ok(message) = serde_json::from_slice::<Message>(body) {
        reading.model = message.model.or(reading.model.take());
        if let Some(usage) = message.usage {
            reading.usage = usage;
            reading.saw_usage = true;
        }
    }
    reading.complete = true;
}
