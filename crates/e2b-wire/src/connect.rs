//! The Connect RPC streaming envelope: `[flags u8][length u32 BE][payload]`.
//!
//! envd speaks Connect with the JSON codec, so the only binary framing is
//! this five-byte header; no protobuf code is needed. Our E2B client
//! encodes requests and decodes answers; the E2B emulator does the reverse.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The content type of a Connect stream in the JSON codec, on requests and
/// answers alike.
pub const CONNECT_JSON: &str = "application/connect+json";

/// A message frame.
pub const FLAG_MESSAGE: u8 = 0x00;
/// The payload is compressed (we never ask for compression).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// The last frame of a stream: its payload is the end-of-stream JSON.
pub const FLAG_END_STREAM: u8 = 0x02;

const HEADER_LEN: usize = 5;

/// The largest frame we accept. envd sends output in small chunks; a peer
/// that announces more is broken or hostile, and must not make us allocate it.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The `FLAG_*` bits.
    pub flags: u8,
    /// The message: JSON, or the end-of-stream JSON on the last frame.
    pub payload: Bytes,
}

impl Frame {
    /// Whether this is the last frame of the stream.
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Encodes one frame.
pub fn encode(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u8(flags);
    // Payloads are bounded well below 4 GiB by MAX_FRAME_LEN on the reading
    // side; saturate rather than wrap if a caller ever passes more.
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

/// Why a Connect stream could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("Connect frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The peer compressed a frame, which we never ask for.
    #[error("compressed Connect frames are not supported")]
    Compressed,
    /// The stream ended partway through a frame.
    #[error("Connect stream ended inside a frame ({buffered} bytes left over)")]
    Truncated {
        /// The bytes of the unfinished frame.
        buffered: usize,
    },
}

/// Incremental decoder: feed it body chunks as they arrive (chunk borders
/// fall anywhere, even inside the header), take whole frames out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of the body; take frames out with [`Self::next_frame`].
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len });
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < HEADER_LEN + len {
            // Reserve once for the rest of this frame instead of growing
            // repeatedly as small chunks trickle in.
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Call when the body has ended: leftover bytes mean a cut stream.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], chunk: usize) -> Vec<Frame> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            d.push(piece);
            while let Some(f) = d.next_frame().expect("valid frames") {
                out.push(f);
            }
        }
        d.finish().expect("no leftover");
        out
    }

    #[test]
    fn round_trips_frames_split_at_every_byte() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode(FLAG_MESSAGE, br#"{"event":{"start":{"pid":1}}}"#));
        wire.extend_from_slice(&encode(FLAG_MESSAGE, b""));
        wire.extend_from_slice(&encode(FLAG_END_STREAM, b"{}"));
        for chunk in 1..=wire.len() {
            let frames = decode_all(&wire, chunk);
            assert_eq!(frames.len(), 3, "chunk size {chunk}");
            assert_eq!(&frames[0].payload[..], br#"{"event":{"start":{"pid":1}}}"#);
            assert!(frames[1].payload.is_empty());
            assert!(frames[2].is_end_stream());
            assert!(!frames[0].is_end_stream());
        }
    }

    #[test]
    fn header_is_flags_then_big_endian_length() {
        let f = encode(FLAG_END_STREAM, b"abc");
        assert_eq!(&f[..], &[0x02, 0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn refuses_oversized_frames_before_buffering_them() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn refuses_compressed_frames() {
        let mut d = FrameDecoder::new();
        d.push(&encode(FLAG_COMPRESSED, b"x"));
        assert_eq!(d.next_frame(), Err(FrameError::Compressed));
    }

    #[test]
    fn a_body_cut_inside_a_frame_is_reported() {
        let wire = encode(FLAG_MESSAGE, b"hello");
        let mut d = FrameDecoder::new();
        d.push(&wire[..7]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 7 }));
    }
}
