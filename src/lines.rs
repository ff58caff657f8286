//! Reassembles lines from output chunks whose borders fall anywhere.
//!
//! envd (and a pipe) hand us stdout in arbitrary slices: one JSON line can
//! arrive in three frames, or three lines in one. The relay needs whole lines.

use bytes::{Buf, Bytes, BytesMut};

/// The longest line we hold in memory. An agent message with a large tool
/// result can be megabytes; anything past this is a runaway process.
pub(crate) const MAX_LINE_LEN: usize = 64 * 1024 * 1024;

/// A line grew past [`MAX_LINE_LEN`] without a newline.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("an output line exceeded the {MAX_LINE_LEN}-byte limit")]
pub struct LineTooLong;

/// Turns a stream of chunks into lines: [`LineSplitter::feed`] each chunk
/// and take its lines with [`LineSplitter::next_line`] (or both at once with
/// [`LineSplitter::push`]), then [`LineSplitter::finish`] for a last line
/// with no newline.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: BytesMut,
    /// How far `buf` is known to hold no newline, so a long line arriving in
    /// many small chunks is scanned once, not once per chunk.
    scanned: usize,
}

impl LineSplitter {
    /// A splitter holding nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk and returns the lines it completed, without their `\n`
    /// (and without a trailing `\r`).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, LineTooLong> {
        self.feed(chunk)?;
        Ok(std::iter::from_fn(|| self.next_line()).collect())
    }

    /// Adds a chunk; its lines are then taken one by one with
    /// [`Self::next_line`]. Refuses the chunk when it leaves a line without
    /// its newline longer than [`MAX_LINE_LEN`].
    ///
    /// A relay that waits on a slow reader between lines holds only this
    /// buffer, one copy of the output, rather than a copy of every line the
    /// chunk completed as well.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), LineTooLong> {
        // The line left open once every whole line is taken: what follows
        // the chunk's last newline, or, without one, everything held after
        // the last newline before it.
        let open = match memchr::memrchr(b'\n', chunk) {
            Some(last) => chunk.len() - last - 1,
            None => {
                let held = &self.buf[self.scanned..];
                let open_before = memchr::memrchr(b'\n', held)
                    .map_or(self.buf.len(), |last| held.len() - last - 1);
                open_before + chunk.len()
            }
        };
        if open > MAX_LINE_LEN {
            return Err(LineTooLong);
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The next whole line fed, without its `\n` (and without a trailing
    /// `\r`); `None` until a newline comes.
    ///
    /// Each line is copied out rather than sliced from the buffer: a slice
    /// would keep the whole buffer allocation alive for as long as the line
    /// waits for a slow client, and stop the buffer from reusing its space.
    pub fn next_line(&mut self) -> Option<Bytes> {
        let Some(pos) = memchr::memchr(b'\n', &self.buf[self.scanned..]) else {
            self.scanned = self.buf.len();
            if self.buf.is_empty() {
                // Every line taken: the chunk's allocation goes back rather
                // than waiting, a chunk's size, for the next one.
                self.buf = BytesMut::new();
            }
            return None;
        };
        let end = self.scanned + pos;
        let line = &self.buf[..end];
        let line = Bytes::copy_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        self.buf.advance(end + 1);
        self.scanned = 0;
        Some(line)
    }

    /// The unterminated rest when the stream ends, if any.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        if self.buf.is_empty() {
            None
        } else {
            let rest = self.buf.split().freeze();
            Some(rest).filter(|r| r.has_remaining())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(input: &[u8], chunk: usize) -> Vec<Bytes> {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            out.extend(s.push(piece).expect("under limit"));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn lines_split_across_chunks_are_reassembled_at_every_border() {
        let input = b"{\"type\":\"system\"}\n{\"type\":\"assistant\"}\r\n{\"type\":\"result\"}\n";
        for chunk in 1..=input.len() {
            let lines = split_all(input, chunk);
            assert_eq!(
                lines,
                vec![
                    Bytes::from_static(b"{\"type\":\"system\"}"),
                    Bytes::from_static(b"{\"type\":\"assistant\"}"),
                    Bytes::from_static(b"{\"type\":\"result\"}"),
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn an_unterminated_last_line_is_kept() {
        assert_eq!(
            split_all(b"a\nb", 1),
            vec![Bytes::from("a"), Bytes::from("b")]
        );
    }

    #[test]
    fn empty_lines_are_reported_as_empty() {
        assert_eq!(split_all(b"\n\n", 2), vec![Bytes::new(), Bytes::new()]);
    }

    #[test]
    fn lines_own_their_memory_so_a_waiting_line_frees_the_chunk() {
        let mut s = LineSplitter::new();
        let mut chunk = b"{\"type\":\"assistant\"}\n".to_vec();
        chunk.extend(std::iter::repeat_n(b'x', 32 * 1024));
        let lines = s.push(&chunk).expect("under limit");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].is_unique(),
            "the line shares the splitter's buffer"
        );
    }

    #[test]
    fn lines_taken_one_at_a_time_match_lines_pushed_at_every_border() {
        let input = b"{\"a\":1}\n\n{\"b\":2}\r\nstray text\n{\"c\":3}";
        for chunk in 1..=input.len() {
            let mut s = LineSplitter::new();
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                s.feed(piece).expect("under limit");
                // Take at most one line per chunk, so lines wait in the
                // splitter while later chunks come in.
                out.extend(s.next_line());
            }
            out.extend(std::iter::from_fn(|| s.next_line()));
            out.extend(s.finish());
            assert_eq!(out, split_all(input, input.len()), "chunk size {chunk}");
            assert_eq!(out.len(), 5, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_runaway_line_fed_in_pieces_is_refused_once_past_the_limit() {
        let mut s = LineSplitter::new();
        s.feed(b"done\n").expect("short");
        let half = vec![b'x'; MAX_LINE_LEN / 2];
        s.feed(&half).expect("under the limit");
        s.feed(&half).expect("at the limit");
        assert_eq!(s.feed(b"x"), Err(LineTooLong));
        assert_eq!(
            LineTooLong.to_string(),
            format!("an output line exceeded the {MAX_LINE_LEN}-byte limit")
        );
        // The lines before it are still there, and a newline closes the
        // long line within the limit.
        assert_eq!(s.next_line(), Some(Bytes::from_static(b"done")));
        s.feed(b"\n").expect("closes the line");
        assert_eq!(s.next_line().map(|l| l.len()), Some(MAX_LINE_LEN));
    }

    #[test]
    fn a_splitter_whose_lines_are_all_taken_holds_no_buffer() {
        let mut s = LineSplitter::new();
        s.feed(&[b"x".repeat(16 * 1024), b"\nend\n".to_vec()].concat())
            .expect("short");
        assert!(s.next_line().is_some());
        assert_eq!(s.next_line(), Some(Bytes::from_static(b"end")));
        assert_eq!(s.next_line(), None);
        // An unallocated buffer points where an empty new one does.
        assert_eq!(s.buf.as_ptr(), BytesMut::new().as_ptr());
    }

    #[test]
    fn a_runaway_line_is_refused() {
        let mut s = LineSplitter::new();
        let big = vec![b'x'; MAX_LINE_LEN + 1];
        assert_eq!(s.push(&big), Err(LineTooLong));
    }
}
