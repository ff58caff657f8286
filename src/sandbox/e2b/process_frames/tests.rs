use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use e2b_wire::connect::{FLAG_END_STREAM, FLAG_MESSAGE, FrameDecoder, encode};

use super::*;
use crate::sandbox::ProcessEvent;
use crate::sandbox::e2b::process::decode_message;

fn output_frame(stream: &str, bytes: &[u8]) -> Bytes {
    let json = format!(
        r#"{{"event":{{"data":{{"{stream}":"{}"}}}}}}"#,
        BASE64.encode(bytes)
    );
    encode(FLAG_MESSAGE, json.as_bytes())
}

/// What a reader gets from `wire`, output merged across pieces: each
/// stream's bytes in order, and the other events where they came.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The other events (`None`: a message with none), in order, each after
    /// how much output, and the end-of-stream frame's JSON.
    others: Vec<(usize, Option<ProcessEvent>)>,
    end_of_stream: Option<Bytes>,
}

impl Seen {
    /// Takes in a message taken whole, the way the process stream does.
    fn message(&mut self, payload: &[u8]) -> Result<(), String> {
        match decode_message(payload).map_err(|e| e.to_string())? {
            Some(ProcessEvent::Stdout(b)) => self.stdout.extend_from_slice(&b),
            Some(ProcessEvent::Stderr(b)) => self.stderr.extend_from_slice(&b),
            other => self
                .others
                .push((self.stdout.len() + self.stderr.len(), other)),
        }
        Ok(())
    }
}

/// `wire` through the decoder in `chunk`s.
fn pieces(wire: &[u8], chunk: usize) -> Result<Seen, String> {
    let mut frames = ProcessFrames::new();
    let mut seen = Seen::default();
    for part in wire.chunks(chunk) {
        frames.push(part);
        while let Some(piece) = frames.next_piece().map_err(|e| e.to_string())? {
            match piece {
                Piece::Stdout(b) => seen.stdout.extend_from_slice(&b),
                Piece::Stderr(b) => seen.stderr.extend_from_slice(&b),
                Piece::Message(payload) => seen.message(&payload)?,
                Piece::EndOfStream(payload) => seen.end_of_stream = Some(payload),
            }
        }
    }
    frames.finish().map_err(|e| e.to_string())?;
    Ok(seen)
}

/// The same read frame by frame, each taken whole (the way the answer was
/// read before output was decoded as it came).
fn whole_frames(wire: &[u8]) -> Result<Seen, String> {
    let mut decoder = FrameDecoder::new();
    decoder.push(wire);
    let mut seen = Seen::default();
    while let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
        if frame.is_end_stream() {
            seen.end_of_stream = Some(frame.payload);
        } else {
            seen.message(&frame.payload)?;
        }
    }
    decoder.finish().map_err(|e| e.to_string())?;
    Ok(seen)
}

fn sample_wire() -> Vec<u8> {
    let mut wire = Vec::new();
    wire.extend_from_slice(&encode(FLAG_MESSAGE, br#"{"event":{"start":{"pid":42}}}"#));
    wire.extend_from_slice(&output_frame("stdout", b"{\"type\":\"sys"));
    wire.extend_from_slice(&encode(FLAG_MESSAGE, br#"{"event":{"keepalive":{}}}"#));
    wire.extend_from_slice(&output_frame("stdout", b"tem\"}\n{\"a\":1}\n"));
    wire.extend_from_slice(&output_frame("stderr", b"warning\n"));
    wire.extend_from_slice(&output_frame("pty", b"xy"));
    wire.extend_from_slice(&output_frame("stdout", b""));
    wire.extend_from_slice(&encode(FLAG_MESSAGE, br#"{"event":{"data":{}}}"#));
    // A field this reader does not know, after the output: ignored.
    wire.extend_from_slice(&encode(
        FLAG_MESSAGE,
        br#"{"event":{"data":{"stderr":"b29wcw=="}},"later":[1,{"a":"}"}]}"#,
    ));
    // Whitespace between the tokens, and an escaped `/` in the base64.
    let spaced = format!(
        "{{ \"event\" :\n{{\"data\": {{ \"stdout\" : \"{}\" }} }}\r\n}}",
        BASE64
            .encode([0xff_u8, 0xfe, 0xfd, b'\n'])
            .replace('/', "\\/")
    );
    assert!(spaced.contains("\\/"), "{spaced}");
    wire.extend_from_slice(&encode(FLAG_MESSAGE, spaced.as_bytes()));
    wire.extend_from_slice(&encode(
        FLAG_MESSAGE,
        br#"{"event":{"end":{"exitCode":2,"exited":true,"status":"exit status 2"}}}"#,
    ));
    wire.extend_from_slice(&encode(FLAG_END_STREAM, b"{}"));
    wire
}

#[test]
fn frames_split_at_every_byte_decode_as_whole_frames_do() {
    let wire = sample_wire();
    let expected = whole_frames(&wire).expect("valid");
    assert_eq!(expected.stdout.len(), 12 + 14 + 2 + 4);
    assert_eq!(expected.stderr, b"warning\noops");
    assert_eq!(expected.others.len(), 4, "{:?}", expected.others);
    assert!(expected.end_of_stream.is_some());
    for chunk in 1..=wire.len() {
        assert_eq!(
            pieces(&wire, chunk).expect("valid"),
            expected,
            "chunk size {chunk}"
        );
    }
}

#[test]
fn a_large_output_frame_is_handed_on_as_it_arrives() {
    // As envd sends a full pipe read: 32 KiB of output, 44 KiB of base64.
    let output: Vec<u8> = (0..=250_u8).cycle().take(32 * 1024).collect();
    let wire = output_frame("stdout", &output);
    let read = 16 * 1024;
    let mut frames = ProcessFrames::new();
    let mut got = Vec::new();
    for part in wire.chunks(read) {
        frames.push(part);
        while let Some(piece) = frames.next_piece().expect("valid") {
            let Piece::Stdout(bytes) = piece else {
                panic!("expected output, got {piece:?}");
            };
            // No more than one read's worth at a time...
            assert!(bytes.len() <= read / 4 * 3, "{} bytes at once", bytes.len());
            got.extend_from_slice(&bytes);
        }
        // ...and nothing held between reads but a few base64 characters.
        assert!(!frames.holds_input(), "the read is still held");
        assert!(frames.carry.len() < 4);
    }
    frames.finish().expect("whole");
    assert_eq!(got, output);
    // Other chunk sizes agree with the frame read whole.
    for chunk in [1, 3, 4, 5, 7, 1000, 4093, 16 * 1024 + 1, wire.len()] {
        assert_eq!(
            pieces(&wire, chunk),
            whole_frames(&wire),
            "chunk size {chunk}"
        );
    }
}

#[test]
fn a_frame_over_the_limit_is_refused_naming_the_limit() {
    let mut frames = ProcessFrames::new();
    let too_long = u32::try_from(MAX_FRAME_LEN + 1).expect("fits");
    frames.push(&[FLAG_MESSAGE]);
    frames.push(&too_long.to_be_bytes());
    let err = frames.next_piece().expect_err("over the limit");
    assert_eq!(
        err.to_string(),
        format!(
            "Connect frame of {} bytes exceeds the {MAX_FRAME_LEN}-byte limit",
            MAX_FRAME_LEN + 1
        )
    );
}

#[test]
fn compressed_frames_are_refused() {
    let mut frames = ProcessFrames::new();
    frames.push(&encode(FLAG_COMPRESSED, b"x"));
    assert_eq!(
        frames.next_piece(),
        Err(DecodeError::Frame(FrameError::Compressed))
    );
}

#[test]
fn broken_output_frames_are_errors_however_they_arrive() {
    for (payload, why) in [
        (r#"{"event":{"data":{"stdout":"QQ=!"}}}"#, "not base64"),
        (r#"{"event":{"data":{"stdout":"QQ==QUJD"}}}"#, "not base64"),
        (r#"{"event":{"data":{"stdout":"QUJ"}}}"#, "not base64"),
        (r#"{"event":{"data":{"stdout":"QU\nJD"}}}"#, "not base64"),
        (
            r#"{"event":{"data":{"stdout":"QUJD\u0041"}}}"#,
            "not base64",
        ),
        (r#"{"event":{"data":{"stdout":"QUJD"}}}}"#, "unreadable"),
        (r#"{"event":{"data":{"stdout":"QUJD"}},"x":}"#, "unreadable"),
        (r#"{"event":{"data":{"stdout":"QUJD"}}"#, "unreadable"),
        (r#"{"event":{"data":{"stdout":"QUJD"#, "unreadable"),
        (r#"{"event":{"data":{"stdout":"QUJD\"#, "unreadable"),
    ] {
        let wire = encode(FLAG_MESSAGE, payload.as_bytes());
        let whole = whole_frames(&wire).expect_err(payload);
        assert!(whole.contains(why), "{payload:?} whole: {whole}");
        for chunk in 1..=wire.len() {
            let err = pieces(&wire, chunk).expect_err(payload);
            assert!(err.contains(why), "{payload:?} in chunks of {chunk}: {err}");
        }
    }
}

#[test]
fn a_body_cut_inside_a_frame_is_reported() {
    let wire = output_frame("stdout", b"hello world");
    for cut in 1..wire.len() {
        let mut frames = ProcessFrames::new();
        frames.push(&wire[..cut]);
        while frames.next_piece().expect("valid so far").is_some() {}
        assert!(
            matches!(frames.finish(), Err(FrameError::Truncated { .. })),
            "cut at {cut}"
        );
    }
    let mut frames = ProcessFrames::new();
    frames.push(&wire);
    while frames.next_piece().expect("valid").is_some() {}
    assert_eq!(frames.finish(), Ok(()));
}

#[test]
fn output_before_a_broken_frame_is_handed_on_first() {
    let mut wire = output_frame("stdout", b"kept\n").to_vec();
    wire.extend_from_slice(&encode(
        FLAG_MESSAGE,
        br#"{"event":{"data":{"stdout":"QUJD"}}}}"#,
    ));
    let mut frames = ProcessFrames::new();
    frames.push(&wire);
    assert_eq!(
        frames.next_piece(),
        Ok(Some(Piece::Stdout(Bytes::from_static(b"kept\nABC"))))
    );
    let err = frames.next_piece().expect_err("the second frame is broken");
    assert!(err.to_string().contains("unreadable"), "{err}");
}

#[test]
fn output_of_both_streams_keeps_its_order() {
    let mut wire = output_frame("stdout", b"a").to_vec();
    wire.extend_from_slice(&output_frame("stdout", b"b"));
    wire.extend_from_slice(&output_frame("stderr", b"c"));
    wire.extend_from_slice(&output_frame("stdout", b"d"));
    wire.extend_from_slice(&encode(FLAG_MESSAGE, br#"{"event":{"keepalive":{}}}"#));
    wire.extend_from_slice(&output_frame("stdout", b"e"));
    let mut frames = ProcessFrames::new();
    frames.push(&wire);
    let got: Vec<Piece> = std::iter::from_fn(|| frames.next_piece().expect("valid")).collect();
    assert_eq!(
        got,
        vec![
            Piece::Stdout(Bytes::from_static(b"ab")),
            Piece::Stderr(Bytes::from_static(b"c")),
            Piece::Stdout(Bytes::from_static(b"d")),
            Piece::Message(Bytes::from_static(br#"{"event":{"keepalive":{}}}"#)),
            Piece::Stdout(Bytes::from_static(b"e")),
        ]
    );
}
