//! A `process.Process/Start` answer's Connect frames, decoded as they
//! arrive, output piece by piece.
//!
//! envd sends a process's output in frames of up to 32 KiB, base64 in JSON
//! (about 44 KiB on the wire): `{"event":{"data":{"stdout":"…"}}}`. Taken
//! whole, each frame would be held until its last byte came, then decoded
//! into a second buffer of its own, and both would stay while a slow client
//! let the relay wait. Here an output frame is recognised from its first
//! bytes and its base64 decoded as each read arrives: what a stream holds
//! between reads is at most three characters of base64, and what it hands
//! on is at most one read's worth of output. What follows the output (`}}}`)
//! is checked as a whole frame's JSON would be. Every other frame (`start`,
//! `end`, `keepalive`, the end of the stream, and anything not shaped like
//! an output frame) is taken whole, as before.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, Bytes, BytesMut};
use e2b_wire::connect::{FLAG_COMPRESSED, FLAG_END_STREAM, FrameError, MAX_FRAME_LEN};
use e2b_wire::envd::StartResponse;

const HEADER_LEN: usize = 5;

/// An output frame up to its closing quote, the output left out: what
/// precedes the rest of the frame when that rest is checked.
const OUTPUT_FRAME_AS_EMPTY: &[u8] = br#"{"event":{"data":{"stdout":"""#;

/// What the decoder took out of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Some of an output frame's `stdout` (or `pty`), decoded.
    Stdout(Bytes),
    /// Some of an output frame's `stderr`, decoded.
    Stderr(Bytes),
    /// A whole message frame: its `StartResponse` JSON.
    Message(Bytes),
    /// The end-of-stream frame: its JSON.
    EndOfStream(Bytes),
}

/// Why the answer could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The Connect framing is broken (a frame over [`MAX_FRAME_LEN`], a
    /// compressed frame, a body cut inside a frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// An output frame is not the JSON it began as, or its output is not
    /// base64.
    #[error("{0}")]
    Output(String),
}

/// Which stream an output frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame border: the next bytes are a header.
    Header,
    /// In a frame of `len` payload bytes (counted from the buffer's start)
    /// not yet known to be output.
    Undecided { flags: u8, len: usize },
    /// In a frame taken whole, `len` payload bytes from the buffer's start.
    Whole { flags: u8, len: usize },
    /// In an output frame's base64, `left` payload bytes to go.
    InOutput { output: Output, left: usize },
    /// After an output frame's closing quote, `left` payload bytes to go.
    AfterOutput { left: usize },
}

/// Feed it the answer's chunks with [`Self::push`] (their borders fall
/// anywhere), take [`Piece`]s out with [`Self::next_piece`].
#[derive(Debug)]
pub(crate) struct ProcessFrames {
    buf: BytesMut,
    state: State,
    /// Base64 characters of an output frame that do not yet make a group
    /// of four.
    carry: Vec<u8>,
    /// The output's base64 ended with padding: nothing may follow it.
    padded: bool,
    /// What follows an output frame's closing quote (`}}}` from envd).
    tail: Vec<u8>,
    /// An error found after output that went first.
    failed: Option<DecodeError>,
}

impl Default for ProcessFrames {
    fn default() -> Self {
        ProcessFrames {
            buf: BytesMut::new(),
            state: State::Header,
            carry: Vec::with_capacity(4),
            padded: false,
            tail: Vec::new(),
            failed: None,
        }
    }
}

impl ProcessFrames {
    /// A decoder at the start of an answer.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of the body.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next piece, `Ok(None)` when more bytes are needed. Output of
    /// one stream is handed on in one piece as far as the bytes here go,
    /// across frames, so that no input is left over while the reader waits.
    pub(crate) fn next_piece(&mut self) -> Result<Option<Piece>, DecodeError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut out = None;
        let result = self.decode_more(&mut out);
        // An empty buffer gives its allocation back: a stream whose reader
        // waits holds no read's worth of input here. (Its `capacity()`
        // cannot tell: it counts from where the bytes taken ended, so it is
        // 0 when a read filled the allocation exactly.)
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        let out = out
            .filter(|(_, bytes)| !bytes.is_empty())
            .map(|(output, bytes)| {
                let bytes = Bytes::from(bytes);
                match output {
                    Output::Stdout => Piece::Stdout(bytes),
                    Output::Stderr => Piece::Stderr(bytes),
                }
            });
        match (result, out) {
            (Ok(Some(whole)), _) => Ok(Some(whole)),
            (Ok(None), out) => Ok(out),
            // The output before the error goes first, as it would have
            // from frames taken whole.
            (Err(e), Some(out)) => {
                self.failed = Some(e);
                Ok(Some(out))
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Decodes what is buffered: output into `out` (one stream's), until
    /// the input runs out (`Ok(None)`), output of the other stream or a
    /// frame to take whole comes after some in `out` (`Ok(None)` too: `out`
    /// goes first), or such a frame is the next piece.
    fn decode_more(
        &mut self,
        out: &mut Option<(Output, Vec<u8>)>,
    ) -> Result<Option<Piece>, DecodeError> {
        loop {
            match self.state {
                State::Header => {
                    if self.buf.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let flags = self.buf[0];
                    let len =
                        u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                            as usize;
                    if len > MAX_FRAME_LEN {
                        return Err(FrameError::TooLarge { len }.into());
                    }
                    if flags & FLAG_COMPRESSED != 0 {
                        return Err(FrameError::Compressed.into());
                    }
                    self.buf.advance(HEADER_LEN);
                    self.state = if flags & FLAG_END_STREAM == 0 {
                        State::Undecided { flags, len }
                    } else {
                        State::Whole { flags, len }
                    };
                }
                State::Undecided { flags, len } => {
                    let whole = self.buf.len() >= len;
                    match sniff(&self.buf[..self.buf.len().min(len)]) {
                        Sniff::Output(output, start) => {
                            self.buf.advance(start);
                            self.state = State::InOutput {
                                output,
                                left: len - start,
                            };
                        }
                        Sniff::NeedMore if !whole => return Ok(None),
                        Sniff::NeedMore | Sniff::Other => self.state = State::Whole { flags, len },
                    }
                }
                State::Whole { flags, len } => {
                    if self.buf.len() < len {
                        // Reserve once for the rest of this frame instead of
                        // growing repeatedly as small chunks trickle in.
                        self.buf.reserve(len - self.buf.len());
                        return Ok(None);
                    }
                    if has_output(out) {
                        return Ok(None);
                    }
                    let payload = self.buf.split_to(len).freeze();
                    // The rest moves to an allocation of its own, so as not
                    // to keep the frame's alive once the payload is dropped.
                    self.buf = BytesMut::from(&self.buf[..]);
                    self.state = State::Header;
                    return Ok(Some(if flags & FLAG_END_STREAM == 0 {
                        Piece::Message(payload)
                    } else {
                        Piece::EndOfStream(payload)
                    }));
                }
                State::InOutput { output, left } => {
                    let available = self.buf.len().min(left);
                    if available == 0 {
                        if left == 0 {
                            return Err(unreadable("the frame ends inside its output"));
                        }
                        return Ok(None);
                    }
                    match out {
                        Some((stream, _)) if *stream == output => {}
                        _ if has_output(out) => return Ok(None),
                        _ => *out = Some((output, Vec::new())),
                    }
                    let Some((_, bytes)) = out.as_mut() else {
                        unreachable!("set just above")
                    };
                    let used = self.decode(available, available == left, bytes)?;
                    self.buf.advance(used);
                    let left = left - used;
                    // `decode` stops at the closing quote, or before an
                    // escape whose second byte is still to come.
                    if used < available && self.buf.first() == Some(&b'"') {
                        if !self.carry.is_empty() {
                            return Err(not_base64("its length is not a multiple of four"));
                        }
                        self.buf.advance(1);
                        self.state = State::AfterOutput { left: left - 1 };
                    } else if used == 0 {
                        self.state = State::InOutput { output, left };
                        return Ok(None);
                    } else {
                        self.state = State::InOutput { output, left };
                    }
                }
                State::AfterOutput { left } => {
                    let available = self.buf.len().min(left);
                    self.tail.extend_from_slice(&self.buf[..available]);
                    self.buf.advance(available);
                    let left = left - available;
                    if left > 0 {
                        self.state = State::AfterOutput { left };
                        return Ok(None);
                    }
                    // The rest must close the message as a whole frame
                    // would have to: parsed the same way, the output left
                    // out (it has been handed on).
                    let mut rest = OUTPUT_FRAME_AS_EMPTY.to_vec();
                    rest.append(&mut self.tail);
                    serde_json::from_slice::<StartResponse>(&rest)
                        .map_err(|e| unreadable(&e.to_string()))?;
                    self.state = State::Header;
                    self.padded = false;
                }
            }
        }
    }

    /// Decodes the base64 among the first `available` bytes, up to the
    /// closing quote, onto `out`: how many bytes were used. Stops
    /// before the quote, and before an escape whose second byte is not
    /// here yet (`frame_ends`: none will come).
    fn decode(
        &mut self,
        available: usize,
        frame_ends: bool,
        out: &mut Vec<u8>,
    ) -> Result<usize, DecodeError> {
        let input = &self.buf[..available];
        let end = memchr::memchr2(b'"', b'\\', input).unwrap_or(available);
        let escaped;
        let (chars, used): (&[u8], usize) = if input.get(end) == Some(&b'\\') {
            // JSON may escape `/`; no other base64 character needs it.
            match input.get(end + 1) {
                None if frame_ends => return Err(unreadable("the frame ends inside an escape")),
                None => (&input[..end], end),
                Some(b'/') => {
                    escaped = [&input[..end], b"/"].concat();
                    (&escaped, end + 2)
                }
                Some(_) => return Err(not_base64("it holds an escape")),
            }
        } else {
            (&input[..end], end)
        };
        out.reserve((self.carry.len() + chars.len()) / 4 * 3);
        // Whole groups of four: the carry topped up first, then the rest.
        let mut rest = chars;
        while !rest.is_empty() {
            if self.padded {
                return Err(not_base64("characters follow its padding"));
            }
            let group = if self.carry.is_empty() && rest.len() >= 4 {
                let whole = rest.len() / 4 * 4;
                let (group, after) = rest.split_at(whole);
                rest = after;
                group
            } else {
                let take = (4 - self.carry.len()).min(rest.len());
                self.carry.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.carry.len() < 4 {
                    break;
                }
                &self.carry[..]
            };
            BASE64
                .decode_vec(group, out)
                .map_err(|e| not_base64(&e.to_string()))?;
            self.padded = group.ends_with(b"=");
            if self.carry.len() == 4 {
                self.carry.clear();
            }
        }
        Ok(used)
    }

    /// Whether the input buffer still has an allocation of its own.
    #[cfg(test)]
    fn holds_input(&self) -> bool {
        // An unallocated buffer points where an empty new one does.
        self.buf.as_ptr() != BytesMut::new().as_ptr()
    }

    /// Call when the body has ended: anything left over means a cut stream.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        let in_frame = match self.state {
            State::Header => 0,
            State::Undecided { .. } | State::Whole { .. } => HEADER_LEN,
            State::InOutput { .. } | State::AfterOutput { .. } => HEADER_LEN + 1,
        };
        let buffered = in_frame + self.buf.len();
        if buffered == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered })
        }
    }
}

/// Whether `out` holds output to hand on before anything else.
fn has_output(out: &Option<(Output, Vec<u8>)>) -> bool {
    out.as_ref().is_some_and(|(_, bytes)| !bytes.is_empty())
}

/// What the start of a message frame says it is.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// An output frame of this stream, whose base64 starts this many bytes in.
    Output(Output, usize),
    /// Something else: take it whole.
    Other,
    /// Too few bytes to tell.
    NeedMore,
}

/// Whether `payload` starts `{"event":{"data":{"<stream>":"` (any JSON
/// whitespace between the tokens), the start of an output frame.
fn sniff(payload: &[u8]) -> Sniff {
    const OPENING: [&[u8]; 7] = [b"{", b"\"event\"", b":", b"{", b"\"data\"", b":", b"{"];
    const KEYS: [(&[u8], Output); 3] = [
        (b"\"stdout\"", Output::Stdout),
        (b"\"stderr\"", Output::Stderr),
        (b"\"pty\"", Output::Stdout),
    ];
    let mut at = 0;
    for token in OPENING {
        match expect(payload, &mut at, &[token]) {
            Ok(_) => {}
            Err(sniff) => return sniff,
        }
    }
    let keys = KEYS.map(|(key, _)| key);
    let output = match expect(payload, &mut at, &keys) {
        Ok(i) => KEYS[i].1,
        Err(sniff) => return sniff,
    };
    for token in [b":" as &[u8], b"\""] {
        if let Err(sniff) = expect(payload, &mut at, &[token]) {
            return sniff;
        }
    }
    Sniff::Output(output, at)
}

/// Skips JSON whitespace at `at`, then takes whichever of `tokens` follows:
/// its index. `Err(NeedMore)` when the bytes end inside one that might
/// follow, `Err(Other)` when none can.
fn expect(payload: &[u8], at: &mut usize, tokens: &[&[u8]]) -> Result<usize, Sniff> {
    while payload
        .get(*at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        *at += 1;
    }
    let rest = &payload[*at..];
    let mut partial = false;
    for (i, token) in tokens.iter().enumerate() {
        if rest.starts_with(token) {
            *at += token.len();
            return Ok(i);
        }
        partial |= token.starts_with(rest);
    }
    Err(if partial {
        Sniff::NeedMore
    } else {
        Sniff::Other
    })
}

fn unreadable(why: &str) -> DecodeError {
    DecodeError::Output(format!("unreadable process event: {why}"))
}

fn not_base64(why: &str) -> DecodeError {
    DecodeError::Output(format!("process output is not base64: {why}"))
}

#[cfg(test)]
mod tests;
