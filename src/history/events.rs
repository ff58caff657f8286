//! A finished run's events as the history keeps them
//! (`SANDSTORM_STORE_EVENTS`): the codec between the events a client got
//! and the blob a store holds.
//!
//! # The blob
//! Gzip, one member per `done` seen: [`Keeper::snapshot`] finishes the
//! member it was writing, so that each snapshot is a whole gzip file (a
//! follow-up turn adds a member, and a snapshot after it holds every turn).
//! Decompressed, it is text, one line per item:
//!
//! ```text
//! sandstorm-events 1
//! 1 {"type":"run",...}
//! 2 {"type":"system",...}
//! omitted 3 40
//! 41 {"type":"error",...}
//! 42 {"type":"done",...}
//! ```
//!
//! The first line names the format. Each event is its id, a space, and its
//! JSON exactly as the client got it. An id is the event's place in the
//! run, as `GET /runs/{id}/events` numbers it: every event but `progress`
//! (the API never sends it), `detached` and `replay` (not part of the
//! run), from 1.
//! `omitted A B` says that events A to B were left out.
//!
//! # The cap
//! Events are compressed as they pass, so a run holds one compressor and
//! its output, never its events. Once the next event could take the
//! compressed size past the cap, it and every later one are left out,
//! except the events that say how a turn went (`turn`, `error` and `done`),
//! which are kept all the same: a stored run always ends as the run did.
//! It can so go past the cap by its endings, a few hundred bytes a turn.
//! Compressed output is only known once the compressor flushes, so the
//! check counts the bytes not yet flushed at their uncompressed size (an
//! upper bound: deflate never grows data by more than a few bytes a
//! block), and flushes only when that bound says the cap is near.

use std::io::{BufRead as _, BufReader, Read, Write as _};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::events::RunEvent;

/// The first line of every blob: the format and its version.
const HEADER: &[u8] = b"sandstorm-events 1\n";
/// What a line of left-out events starts with.
const OMITTED: &[u8] = b"omitted ";
/// Deflate's fastest level. The tap compresses on the run's own task, so
/// speed counts more than size: measured on agent-like JSON (release
/// build), level 1 compresses 3.3 times at about 200 MB/s, the default
/// level 6 4.7 times at about 15 MB/s, which would hold a task 70 ms on a
/// megabyte-long event.
const LEVEL: u32 = 1;
/// Room for what a gzip member adds to its data: its header and trailer,
/// a sync flush, and a stored block's header per 64 KiB of data that does
/// not compress.
const OVERHEAD: usize = 64;

/// Gathers a run's events, compressed, up to a cap.
pub(crate) struct Keeper {
    cap: usize,
    /// The members finished so far: one per `done`.
    finished: Vec<u8>,
    /// The member being written, once an item is written after the last
    /// `done`.
    member: Option<GzEncoder<Vec<u8>>>,
    /// Bytes written to `member` since it last flushed.
    unflushed: usize,
    /// The next event's id.
    next: u64,
    /// The ids left out since the last kept event, first and last.
    gap: Option<(u64, u64)>,
    /// The cap was reached: every later event but a turn's ending is left
    /// out.
    full: bool,
    /// A write to the compressor failed (it writes to memory, so it never
    /// should): nothing more is kept, and no snapshot is made.
    broken: bool,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the events: they are the run's content.
        f.debug_struct("Keeper")
            .field("cap", &self.cap)
            .field("bytes", &self.bound())
            .field("next", &self.next)
            .field("full", &self.full)
            .finish_non_exhaustive()
    }
}

impl Keeper {
    /// A keeper of at most about `cap` compressed bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Keeper {
            cap,
            finished: Vec::new(),
            member: None,
            unflushed: 0,
            next: 1,
            gap: None,
            full: false,
            broken: false,
        }
    }

    /// Takes in one event, in the order the client gets them.
    pub(crate) fn observe(&mut self, event: &RunEvent) {
        // Not numbered, as the API's numbering leaves them out: not API
        // events, or not the run's (a replay's report comes after the tap
        // anyway).
        if matches!(
            event,
            RunEvent::Progress(_) | RunEvent::Detached(_) | RunEvent::Replay(_)
        ) {
            return;
        }
        let id = self.next;
        self.next += 1;
        if self.broken {
            return;
        }
        let json = event.to_json();
        let ending = matches!(
            event,
            RunEvent::Turn(_) | RunEvent::Error(_) | RunEvent::Done(_)
        );
        let line_len = json.len() + 21;
        if !ending && (self.full || !self.fits(line_len)) {
            self.full = true;
            self.gap = Some(self.gap.map_or((id, id), |(first, _)| (first, id)));
            return;
        }
        if let Some((first, last)) = self.gap.take() {
            self.write(&[OMITTED, format!("{first} {last}\n").as_bytes()]);
        }
        self.write(&[format!("{id} ").as_bytes(), &one_line(&json), b"\n"]);
    }

    /// The blob of every event so far, to be stored: a `done` just passed.
    /// `None` if the compressor failed.
    pub(crate) fn snapshot(&mut self) -> Option<Vec<u8>> {
        if let Some(gap) = self.gap.take() {
            // Left out since the last kept event: said before the blob
            // ends, though no kept event follows.
            let (first, last) = gap;
            self.write(&[OMITTED, format!("{first} {last}\n").as_bytes()]);
        }
        if let Some(member) = self.member.take() {
            match member.finish() {
                Ok(bytes) => self.finished.extend_from_slice(&bytes),
                Err(_) => self.broken = true,
            }
            self.unflushed = 0;
        }
        (!self.broken && !self.finished.is_empty()).then(|| self.finished.clone())
    }

    /// The most the blob can be once what was written is flushed.
    fn bound(&self) -> usize {
        let written = self.member.as_ref().map_or(0, |m| m.get_ref().len());
        self.finished.len() + written + self.unflushed + OVERHEAD
    }

    /// Whether `len` more bytes keep the blob within the cap, flushing to
    /// know exactly when the bound says it may not.
    fn fits(&mut self, len: usize) -> bool {
        let more = len + len / 8192;
        if self.bound() + more <= self.cap {
            return true;
        }
        if let Some(member) = self.member.as_mut() {
            if member.flush().is_err() {
                self.broken = true;
                return false;
            }
            self.unflushed = 0;
        }
        self.bound() + more <= self.cap
    }

    fn write(&mut self, parts: &[&[u8]]) {
        if self.broken {
            return;
        }
        let first = self.finished.is_empty() && self.member.is_none();
        let member = self
            .member
            .get_or_insert_with(|| GzEncoder::new(Vec::new(), Compression::new(LEVEL)));
        let header: &[u8] = if first { HEADER } else { b"" };
        for part in std::iter::once(header).chain(parts.iter().copied()) {
            if member.write_all(part).is_err() {
                self.broken = true;
                return;
            }
            self.unflushed += part.len();
        }
    }
}

/// `json` on one line. The runner's lines were split at newlines and the
/// server's own events are compact JSON, so none has one; should one ever,
/// a newline outside a string is JSON's whitespace (and inside one is not
/// valid JSON), so a space stands in for it.
fn one_line(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if memchr::memchr(b'\n', json).is_none() {
        return std::borrow::Cow::Borrowed(json);
    }
    std::borrow::Cow::Owned(
        json.iter()
            .map(|&b| if b == b'\n' { b' ' } else { b })
            .collect(),
    )
}

/// One item of a stored run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// An event, with its id and its JSON as the client got it.
    Event { id: u64, json: Vec<u8> },
    /// Events `first` to `last` were left out (the cap).
    Omitted { first: u64, last: u64 },
}

/// The `omitted` event that stands for events `first` to `last` of a
/// stored run: the API's own, as `detached` is, so unnumbered.
pub(crate) fn omitted_json(first: u64, last: u64) -> String {
    serde_json::json!({
        "type": "omitted",
        "first_event_id": first,
        "last_event_id": last,
        "message": format!(
            "events {first} to {last} were not stored: the run's stored events reached \
             their cap (SANDSTORM_STORE_EVENTS_MAX_BYTES)"
        ),
    })
    .to_string()
}

/// Why a blob could not be read.
#[derive(Debug, thiserror::Error)]
#[error("stored events are unreadable: {0}")]
pub(crate) struct Unreadable(String);

/// The items of a blob, in order, read as they are asked for: a blob's
/// events are never all in memory at once.
pub(crate) struct Reader {
    lines: BufReader<MultiGzDecoder<std::io::Cursor<Vec<u8>>>>,
    /// An item failed: the reader has ended.
    ended: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    /// Reads `blob`, checking its first line names this format.
    ///
    /// # Errors
    /// When it is not gzip, or not these events.
    pub(crate) fn new(blob: Vec<u8>) -> Result<Self, Unreadable> {
        let mut lines = BufReader::new(MultiGzDecoder::new(std::io::Cursor::new(blob)));
        let mut header = Vec::new();
        lines
            .by_ref()
            .take(HEADER.len() as u64)
            .read_to_end(&mut header)
            .map_err(|e| Unreadable(e.to_string()))?;
        if header != HEADER {
            return Err(Unreadable("not a format this server knows".into()));
        }
        Ok(Reader {
            lines,
            ended: false,
        })
    }

    fn item(line: &[u8]) -> Result<Stored, Unreadable> {
        let bad = || Unreadable("a line is not an event".into());
        let number = |text: &[u8]| -> Result<u64, Unreadable> {
            std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)
        };
        if let Some(range) = line.strip_prefix(OMITTED) {
            let at = memchr::memchr(b' ', range).ok_or_else(bad)?;
            return Ok(Stored::Omitted {
                first: number(&range[..at])?,
                last: number(&range[at + 1..])?,
            });
        }
        let at = memchr::memchr(b' ', line).ok_or_else(bad)?;
        Ok(Stored::Event {
            id: number(&line[..at])?,
            json: line[at + 1..].to_vec(),
        })
    }
}

impl Iterator for Reader {
    type Item = Result<Stored, Unreadable>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let mut line = Vec::new();
        let item = match self.lines.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                Reader::item(&line)
            }
            Ok(_) => Err(Unreadable("it ends inside a line".into())),
            Err(e) => Err(Unreadable(e.to_string())),
        };
        self.ended = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Done, DoneStatus, ErrorKind, Phase, RunError, RunStarted, TurnStarted};
    use bytes::Bytes;

    fn agent(json: &str) -> RunEvent {
        RunEvent::Agent(Bytes::copy_from_slice(json.as_bytes()))
    }

    fn done() -> RunEvent {
        RunEvent::Done(Done {
            status: DoneStatus::Error,
            request_id: "r".into(),
            sandstorm: None,
        })
    }

    fn read(blob: Vec<u8>) -> Vec<Stored> {
        Reader::new(blob)
            .expect("a blob")
            .collect::<Result<_, _>>()
            .expect("items")
    }

    fn event(id: u64, event: &RunEvent) -> Stored {
        Stored::Event {
            id,
            json: event.to_json().to_vec(),
        }
    }

    #[test]
    fn events_come_back_numbered_as_the_api_numbers_them() {
        let run = RunEvent::Run(RunStarted {
            run_id: "run_1".into(),
            expires_at: "2026-12-05T10:00:00Z".into(),
        });
        let said = agent(r#"{"type":"assistant","text":"héllo"}"#);
        let stderr = RunEvent::Stderr("warn".into());
        let mut keeper = Keeper::new(1 << 20);
        for event in [
            &RunEvent::Progress(Phase::CreatingSandbox),
            &run,
            &said,
            &stderr,
            &done(),
        ] {
            keeper.observe(event);
        }
        let blob = keeper.snapshot().expect("a blob");
        assert_eq!(
            read(blob),
            [
                event(1, &run),
                event(2, &said),
                event(3, &stderr),
                event(4, &done())
            ]
        );
    }

    #[test]
    fn each_done_adds_a_member_and_a_later_snapshot_holds_every_turn() {
        let mut keeper = Keeper::new(1 << 20);
        keeper.observe(&agent(r#"{"type":"result"}"#));
        keeper.observe(&done());
        let first = keeper.snapshot().expect("a blob");
        let turn = RunEvent::Turn(TurnStarted {
            run_id: "run_1".into(),
            turn: 2,
            request_id: "r2".into(),
        });
        keeper.observe(&turn);
        keeper.observe(&done());
        let second = keeper.snapshot().expect("a blob");
        // The store keeps the longer of two: a later snapshot extends an
        // earlier one.
        assert!(second.starts_with(&first) && second.len() > first.len());
        let items = read(second);
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(items[2], event(3, &turn));
        assert_eq!(items[3], event(4, &done()));
    }

    #[test]
    fn past_the_cap_events_are_left_out_but_the_ending_is_kept_and_said() {
        const CAP: usize = 2048;
        let mut keeper = Keeper::new(CAP);
        // Text that does not compress: each event about 300 bytes.
        let mut seed = 7u64;
        let mut noise = || {
            (0..300)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    char::from(b'a' + u8::try_from(seed >> 59).unwrap_or(0) % 26)
                })
                .collect::<String>()
        };
        let events: Vec<RunEvent> = (0..40)
            .map(|_| agent(&format!(r#"{{"type":"assistant","text":"{}"}}"#, noise())))
            .collect();
        for event in &events {
            keeper.observe(event);
        }
        let error = RunEvent::Error(RunError {
            kind: ErrorKind::Timeout,
            message: "too long".into(),
            request_id: "r".into(),
        });
        keeper.observe(&error);
        keeper.observe(&done());
        let blob = keeper.snapshot().expect("a blob");
        assert!(blob.len() <= CAP + 512, "{} bytes", blob.len());
        let items = read(blob);
        let kept = items
            .iter()
            .take_while(|i| matches!(i, Stored::Event { .. }))
            .count();
        assert!(kept >= 3, "the first events are kept: {items:?}");
        for (i, item) in items.iter().take(kept).enumerate() {
            assert_eq!(item, &event(i as u64 + 1, &events[i]));
        }
        assert_eq!(
            items[kept..],
            [
                Stored::Omitted {
                    first: kept as u64 + 1,
                    last: 40
                },
                event(41, &error),
                event(42, &done()),
            ]
        );
    }

    #[test]
    fn a_cap_reached_at_the_end_is_said_before_the_blob_ends() {
        let mut keeper = Keeper::new(256);
        keeper.observe(&agent(&format!(
            r#"{{"type":"x","t":"{}"}}"#,
            "y".repeat(400)
        )));
        let blob = keeper.snapshot().expect("a blob");
        assert_eq!(read(blob), [Stored::Omitted { first: 1, last: 1 }]);
    }

    #[test]
    fn a_blob_of_another_kind_or_cut_short_is_unreadable_not_a_panic() {
        assert!(Reader::new(b"not gzip".to_vec()).is_err());
        let mut other = GzEncoder::new(Vec::new(), Compression::default());
        other.write_all(b"other-format 9\n1 {}\n").expect("write");
        assert!(Reader::new(other.finish().expect("gzip")).is_err());

        let mut keeper = Keeper::new(1 << 20);
        keeper.observe(&agent(r#"{"type":"result"}"#));
        keeper.observe(&done());
        let mut blob = keeper.snapshot().expect("a blob");
        blob.truncate(blob.len() - 10);
        let items: Vec<_> = Reader::new(blob).map_or_else(|e| vec![Err(e)], Iterator::collect);
        assert!(items.iter().any(Result::is_err), "{items:?}");
    }

    #[test]
    fn a_line_with_a_newline_stays_one_line() {
        let mut keeper = Keeper::new(1 << 20);
        keeper.observe(&agent("{\"type\":\n\"x\"}"));
        let items = read(keeper.snapshot().expect("a blob"));
        assert_eq!(
            items,
            [Stored::Event {
                id: 1,
                json: b"{\"type\": \"x\"}".to_vec()
            }]
        );
    }
}
