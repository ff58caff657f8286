//! A `process.Process/Start` answer, turned into [`ProcessEvent`]s.
//!
//! The body is a run of Connect envelopes carrying `StartResponse` JSON,
//! whose output is handed on as it arrives ([`super::process_frames`]).
//! Chunks are read only when the consumer asks for the next event, so a slow
//! client slows envd down instead of filling our memory, and the stream
//! owns the response so it can outlive the call that opened it.

use std::fmt::Display;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use e2b_wire::envd::{EndOfStream, StartResponse};
use futures::{Stream, StreamExt};

use super::http::{PROVIDER, connect_code_status};
use super::process_frames::{Piece, ProcessFrames};
use crate::sandbox::{ExitStatus, ProcessEvent, ProcessStream, SandboxError};

const OP: &str = "start";

/// Wraps a `Start` response body. The stream ends right after
/// [`ProcessEvent::Exited`], or with exactly one error: the stream's own
/// Connect error if envd sent one, [`SandboxError::StreamCut`] if the
/// body stopped (cleanly, mid-frame, or on a transport error) before the
/// process's end was reported, or went silent past `idle_timeout`.
pub(crate) fn process_stream<S, E>(body: S, idle_timeout: Duration) -> ProcessStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Display + Send,
{
    events(Reader {
        body: Box::pin(body),
        frames: ProcessFrames::new(),
        idle_timeout,
        finished: false,
        pid: None,
    })
}

/// [`process_stream`], after reading the stream's first event, which
/// gives the process's pid: 0 when the stream has none (a `Connect`, or
/// output before it), which no real process has.
pub(crate) async fn process_stream_with_pid<S, E>(
    body: S,
    idle_timeout: Duration,
) -> Result<(u32, ProcessStream), SandboxError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Display + Send,
{
    let mut reader = Reader {
        body: Box::pin(body),
        frames: ProcessFrames::new(),
        idle_timeout,
        finished: false,
        pid: None,
    };
    let first = reader.first_frame().await?;
    let pid = reader.pid.unwrap_or(0);
    let rest = events(reader);
    Ok(match first {
        Some(event) => (pid, futures::stream::iter([Ok(event)]).chain(rest).boxed()),
        None => (pid, rest),
    })
}

fn events<S, E>(reader: Reader<S>) -> ProcessStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Display + Send,
{
    futures::stream::unfold(reader, |mut reader| async move {
        if reader.finished {
            return None;
        }
        let item = reader.next_event().await;
        reader.finished = !matches!(item, Ok(ProcessEvent::Stdout(_) | ProcessEvent::Stderr(_)));
        Some((item, reader))
    })
    .boxed()
}

struct Reader<S> {
    body: Pin<Box<S>>,
    frames: ProcessFrames,
    idle_timeout: Duration,
    finished: bool,
    /// The pid from the `start` event, once read.
    pid: Option<u32>,
}

impl<S, E> Reader<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Display,
{
    /// Reads the first message: the `start` event, whose pid it keeps, or
    /// (from a stream without one) the first event there is.
    async fn first_frame(&mut self) -> Result<Option<ProcessEvent>, SandboxError> {
        loop {
            let payload = match self.next_piece().await? {
                Piece::Message(payload) => payload,
                output => return Ok(output_event(output)),
            };
            let message: StartResponse = serde_json::from_slice(&payload)
                .map_err(|e| protocol(format!("unreadable process event: {e}")))?;
            if let Some(start) = message.event.start {
                self.pid = Some(start.pid);
                return Ok(None);
            }
            if let Some(event) = decode_message(&payload)? {
                return Ok(Some(event));
            }
        }
    }

    /// The next output or exit event.
    async fn next_event(&mut self) -> Result<ProcessEvent, SandboxError> {
        loop {
            let event = match self.next_piece().await? {
                Piece::Message(payload) => decode_message(&payload)?,
                output => output_event(output),
            };
            if let Some(event) = event {
                return Ok(event);
            }
        }
    }

    /// The next piece of output or whole message, reading more of the body
    /// only when none is buffered; the end-of-stream frame is an error
    /// here, as it comes before the process's end only when something
    /// failed.
    async fn next_piece(&mut self) -> Result<Piece, SandboxError> {
        loop {
            let piece = self
                .frames
                .next_piece()
                .map_err(|e| protocol(e.to_string()))?;
            match piece {
                Some(Piece::EndOfStream(payload)) => return Err(end_of_stream(&payload)),
                Some(piece) => return Ok(piece),
                None => self.read_more().await?,
            }
        }
    }

    /// Reads the next chunk of the body into the decoder.
    async fn read_more(&mut self) -> Result<(), SandboxError> {
        match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
            Ok(Some(Ok(chunk))) => {
                // Copied, and the chunk dropped at once: held, it would
                // keep the connection's read buffer from being reused.
                self.frames.push(&chunk);
                Ok(())
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "envd process stream broke");
                Err(SandboxError::StreamCut)
            }
            Ok(None) => {
                if let Err(e) = self.frames.finish() {
                    tracing::warn!(error = %e, "envd process stream ended mid-frame");
                } else {
                    tracing::warn!("envd process stream ended before the process did");
                }
                Err(SandboxError::StreamCut)
            }
            Err(_) => {
                tracing::warn!(after = ?self.idle_timeout, "envd process stream went silent");
                Err(SandboxError::StreamCut)
            }
        }
    }
}

/// A piece of output as its event (`None` for a whole message, which
/// [`decode_message`] reads).
fn output_event(piece: Piece) -> Option<ProcessEvent> {
    match piece {
        Piece::Stdout(bytes) => Some(ProcessEvent::Stdout(bytes)),
        Piece::Stderr(bytes) => Some(ProcessEvent::Stderr(bytes)),
        Piece::Message(_) | Piece::EndOfStream(_) => None,
    }
}

/// One `StartResponse` message as an event; `None` for those a relay has no
/// use for (`start`, `keepalive`).
pub(crate) fn decode_message(payload: &[u8]) -> Result<Option<ProcessEvent>, SandboxError> {
    let message: StartResponse = serde_json::from_slice(payload)
        .map_err(|e| protocol(format!("unreadable process event: {e}")))?;
    let event = message.event;
    if let Some(data) = event.data {
        if let Some(out) = data.stdout.or(data.pty) {
            return Ok(Some(ProcessEvent::Stdout(base64(&out)?)));
        }
        if let Some(err) = data.stderr {
            return Ok(Some(ProcessEvent::Stderr(base64(&err)?)));
        }
        return Ok(None);
    }
    if let Some(end) = event.end {
        // proto3 JSON omits zeros: a clean exit has no `exitCode` at all. A
        // process that did not exit on its own (a signal) has no code.
        let code = end.exited.then_some(end.exit_code);
        return Ok(Some(ProcessEvent::Exited(ExitStatus {
            code,
            status: end.status,
        })));
    }
    Ok(None)
}

/// What an end-of-stream frame that arrives before the process's `end`
/// means: envd's own error if it names one, otherwise a cut stream.
fn end_of_stream(payload: &[u8]) -> SandboxError {
    match serde_json::from_slice::<EndOfStream>(payload) {
        Ok(EndOfStream { error: Some(e) }) => SandboxError::Status {
            provider: PROVIDER,
            op: OP,
            status: connect_code_status(&e.code),
            message: if e.message.is_empty() {
                e.code
            } else {
                format!("{}: {}", e.code, e.message)
            },
        },
        Ok(EndOfStream { error: None }) => SandboxError::StreamCut,
        Err(e) => protocol(format!("unreadable end of stream: {e}")),
    }
}

fn base64(text: &str) -> Result<Bytes, SandboxError> {
    BASE64
        .decode(text)
        .map(Bytes::from)
        .map_err(|e| protocol(format!("process output is not base64: {e}")))
}

fn protocol(message: String) -> SandboxError {
    SandboxError::Other {
        op: "reading the process stream",
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use e2b_wire::connect::{FLAG_END_STREAM, FLAG_MESSAGE, encode};
    use futures::TryStreamExt;

    use super::*;
    use crate::lines::LineSplitter;

    fn frame(json: &str) -> Bytes {
        encode(FLAG_MESSAGE, json.as_bytes())
    }

    fn data(stream: &str, bytes: &[u8]) -> Bytes {
        frame(&format!(
            r#"{{"event":{{"data":{{"{stream}":"{}"}}}}}}"#,
            BASE64.encode(bytes)
        ))
    }

    async fn events_from(wire: &[u8], chunk: usize) -> Vec<Result<ProcessEvent, SandboxError>> {
        let chunks: Vec<Result<Bytes, Infallible>> = wire
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = process_stream(futures::stream::iter(chunks), Duration::from_secs(5));
        stream.collect().await
    }

    #[test]
    fn a_clean_exit_without_exit_code_is_code_zero() {
        let event =
            decode_message(br#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#)
                .expect("valid");
        assert_eq!(
            event,
            Some(ProcessEvent::Exited(ExitStatus {
                code: Some(0),
                status: "exit status 0".into()
            }))
        );
    }

    #[test]
    fn a_non_zero_exit_keeps_its_code() {
        let event = decode_message(
            br#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}}}"#,
        )
        .expect("valid");
        assert!(matches!(
            event,
            Some(ProcessEvent::Exited(ExitStatus { code: Some(3), .. }))
        ));
    }

    #[test]
    fn a_process_killed_by_a_signal_has_no_code() {
        let event =
            decode_message(br#"{"event":{"end":{"exitCode":-1,"status":"signal: killed"}}}"#)
                .expect("valid");
        assert_eq!(
            event,
            Some(ProcessEvent::Exited(ExitStatus {
                code: None,
                status: "signal: killed".into()
            }))
        );
    }

    #[test]
    fn start_and_keepalive_are_swallowed_and_output_is_decoded() {
        assert_eq!(
            decode_message(br#"{"event":{"start":{"pid":7}}}"#).expect("valid"),
            None
        );
        assert_eq!(
            decode_message(br#"{"event":{"keepalive":{}}}"#).expect("valid"),
            None
        );
        assert_eq!(
            decode_message(br#"{"event":{"data":{"stderr":"b29wcw=="}}}"#).expect("valid"),
            Some(ProcessEvent::Stderr(Bytes::from_static(b"oops")))
        );
        assert!(decode_message(br#"{"event":{"data":{"stdout":"!!"}}}"#).is_err());
        assert!(decode_message(b"not json").is_err());
    }

    #[tokio::test]
    async fn lines_split_across_frames_and_chunks_reassemble() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&frame(r#"{"event":{"start":{"pid":42}}}"#));
        wire.extend_from_slice(&data("stdout", br#"{"type":"sys"#));
        wire.extend_from_slice(&frame(r#"{"event":{"keepalive":{}}}"#));
        wire.extend_from_slice(&data("stdout", b"tem\"}\n{\"type\":\"res"));
        wire.extend_from_slice(&data("stderr", b"warning\n"));
        wire.extend_from_slice(&data("stdout", b"ult\"}\n"));
        wire.extend_from_slice(&frame(
            r#"{"event":{"end":{"exitCode":2,"exited":true,"status":"exit status 2"}}}"#,
        ));
        wire.extend_from_slice(&encode(FLAG_END_STREAM, b"{}"));

        // Every chunk size, so frame borders fall at every byte.
        for chunk in 1..=wire.len() {
            let events: Vec<ProcessEvent> = events_from(&wire, chunk)
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("no error");
            let mut lines = LineSplitter::new();
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            for event in &events[..events.len() - 1] {
                match event {
                    ProcessEvent::Stdout(b) => stdout.extend(lines.push(b).expect("short")),
                    ProcessEvent::Stderr(b) => stderr.extend_from_slice(b),
                    ProcessEvent::Exited(_) => panic!("exit before the end"),
                }
            }
            assert_eq!(
                stdout,
                vec![
                    Bytes::from(r#"{"type":"system"}"#),
                    Bytes::from(r#"{"type":"result"}"#)
                ],
                "chunk size {chunk}"
            );
            assert_eq!(stderr, b"warning\n");
            assert!(matches!(
                events.last(),
                Some(ProcessEvent::Exited(ExitStatus { code: Some(2), .. }))
            ));
        }
    }

    #[tokio::test]
    async fn a_body_that_ends_before_the_process_is_a_cut_stream() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&frame(r#"{"event":{"start":{"pid":42}}}"#));
        wire.extend_from_slice(&data("stdout", b"half a li"));
        let mut events = events_from(&wire, 7).await;
        assert!(matches!(events.pop(), Some(Err(SandboxError::StreamCut))));
        // The output came in pieces, as its chunks did.
        let mut output = Vec::new();
        for event in events {
            let Ok(ProcessEvent::Stdout(piece)) = event else {
                panic!("expected output, got {event:?}");
            };
            output.extend_from_slice(&piece);
        }
        assert_eq!(output, b"half a li");

        // Cut inside a frame.
        let events = events_from(&wire[..wire.len() - 3], 4).await;
        assert!(matches!(events.last(), Some(Err(SandboxError::StreamCut))));

        // A clean end-of-stream frame with no `end` event before it.
        let mut wire = frame(r#"{"event":{"start":{"pid":42}}}"#).to_vec();
        wire.extend_from_slice(&encode(FLAG_END_STREAM, b"{}"));
        assert!(matches!(
            events_from(&wire, 64).await.as_slice(),
            [Err(SandboxError::StreamCut)]
        ));
    }

    #[tokio::test]
    async fn an_end_of_stream_error_is_reported_with_its_code() {
        let mut wire = frame(r#"{"event":{"start":{"pid":42}}}"#).to_vec();
        wire.extend_from_slice(&encode(
            FLAG_END_STREAM,
            br#"{"error":{"code":"invalid_argument","message":"no such cwd"}}"#,
        ));
        let events = events_from(&wire, 64).await;
        let [Err(err)] = events.as_slice() else {
            panic!("expected one error, got {events:?}");
        };
        assert_eq!(
            err.to_string(),
            "start failed: e2b answered HTTP 400: invalid_argument: no such cwd"
        );
    }

    #[tokio::test]
    async fn a_transport_error_mid_body_is_a_cut_stream() {
        let chunks: Vec<Result<Bytes, String>> = vec![
            Ok(data("stdout", b"a\n")),
            Err("connection reset".into()),
            Ok(data("stdout", b"never seen\n")),
        ];
        let stream = process_stream(futures::stream::iter(chunks), Duration::from_secs(5));
        let events: Vec<_> = stream.collect().await;
        assert_eq!(events.len(), 2);
        assert!(matches!(events[1], Err(SandboxError::StreamCut)));
    }

    #[tokio::test]
    async fn a_silent_stream_is_cut_after_the_idle_timeout() {
        let body = futures::stream::iter([Ok::<_, Infallible>(data("stdout", b"a\n"))])
            .chain(futures::stream::pending());
        let mut stream = process_stream(body, Duration::from_millis(50));
        assert!(matches!(
            stream.try_next().await,
            Ok(Some(ProcessEvent::Stdout(_)))
        ));
        assert!(matches!(
            stream.next().await,
            Some(Err(SandboxError::StreamCut))
        ));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn reads_no_further_than_the_consumer_asks() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let body = futures::stream::iter(0..1000).map(move |i| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(data("stdout", format!("{i}\n").as_bytes()))
        });
        let mut stream = process_stream(body, Duration::from_secs(5));
        let first = stream.next().await;
        assert!(matches!(first, Some(Ok(ProcessEvent::Stdout(_)))));
        assert_eq!(pulled.load(Ordering::SeqCst), 1);
    }
}
