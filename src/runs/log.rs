//! A detached run's event log: where it lives in the sandbox, the wrapper
//! that writes it, the follower that reads it back, and the decoding of
//! what the follower prints into the process events the relay already
//! knows.
//!
//! The log is the run's state. The runner writes it (record mode, see
//! `runner/runner.mjs`), the wrapper adds the exit, and every reader, the
//! request that started the run and each one that reattaches from any
//! instance, reads it from its first byte through `runner/follow.mjs`. All
//! of them therefore feed the same records, in the same order, to the same
//! relay, and number the events alike: an event id means the same event
//! whoever serves it.
//!
//! Each line of the log is one record: RS (0x1e) then `o` and an SDK
//! message, or `e` and a stderr line, or `x` and the runner's exit code, or
//! `t` when the run's `timeout` ended it; an exit record ends with when the
//! turn ended (Unix seconds, after a space), so a run's idle time counts
//! from then whoever reads it. A line without RS is something the
//! runner's process printed outside the SDK (a crash), kept as stderr.
//!
//! A run has turns: a follow-up appends `n` and its request id, then its
//! runner's records, then its exit. A follower stops at the end of the log
//! once it has seen the exit of the turn its reader waits for, so a reader
//! gets every turn there is, and the one that started a turn gets that
//! turn's end.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::lines::{LineTooLong, MAX_LINE_LEN};
use crate::sandbox::{ExitStatus, ProcessEvent, ProcessSpec, ProcessStream, SandboxError, layout};

/// Where the log lives: outside the user's home, so no `outputs` glob
/// sends it back, and in a folder the sandbox can write on every provider.
pub const EVENT_LOG: &str = "/tmp/.sandstorm/events.log";
/// What starts the record of an SDK message: RS and `o`.
pub const MESSAGE_RECORD: &[u8] = b"\x1eo";
/// What starts the exit record the wrapper appends: RS and `x`, then the
/// runner's exit code.
pub const EXIT_RECORD: &[u8] = b"\x1ex";
/// The follower, uploaded with the runner.
pub(crate) const FOLLOW_SCRIPT: &str = "/opt/agent-runner/follow.mjs";
/// Its source, embedded like the runner's.
pub(crate) const FOLLOW_SOURCE: &str = include_str!("../../runner/follow.mjs");
/// The wrapper's process tag, by which a run's process is found again.
pub(crate) const RUN_TAG: &str = "sandstorm-run";
/// The exit status the relay reads as "the run's own timeout ended it".
pub(crate) const TIMED_OUT: &str = "the run's timeout ended the runner";
/// The exit status the relay reads as "a cancel ended it".
pub(crate) const CANCELLED: &str = "the run was cancelled";
/// Where the wrapper keeps the pid of the runner's `timeout`, for a cancel.
const RUNNER_PID: &str = "/tmp/.sandstorm/runner.pid";
/// What starts a follow-up turn's record: RS and `n`, then its request id.
const TURN_RECORD: &str = "\\036n";

/// How long `timeout` waits after its TERM before it kills the runner.
const KILL_AFTER_SECS: u64 = 5;
const RECORD: u8 = 0x1e;

/// The wrapper of turn `turn`: runs `runner` under `timeout` with its
/// output appended to the log, then appends the exit record. `run_for` is
/// the turn's own `timeout`; nothing else ends a detached run but a cancel.
pub(crate) fn wrapper(runner: ProcessSpec, run_for: Duration, turn: u32) -> ProcessSpec {
    // The runner's argv goes through "$@", never through the script's text,
    // so nothing in it is ever parsed by the shell.
    // In the background so that its pid can be kept: a cancel TERMs
    // `timeout`, which passes the signal on to the runner. A cancel that
    // came before the pid was kept left its marker, and is carried out here.
    let script = format!(
        "mkdir -p {dir} && : >> {log} || exit 1\n\
         timeout -k {KILL_AFTER_SECS} {secs} \"$@\" >> {log} 2>&1 &\n\
         echo $! > {pid}\n\
         [ -e {cancelled} ] && kill -TERM $!\n\
         wait $!\n\
         status=$?\n\
         ended=$(date +%s)\n\
         if [ \"$status\" -eq 124 ]; then printf '\\036t %s\\n' \"$ended\"; else printf '\\036x%d %s\\n' \"$status\" \"$ended\"; fi >> {log}\n",
        dir = log_dir(),
        log = EVENT_LOG,
        pid = RUNNER_PID,
        cancelled = cancel_marker(turn),
        secs = run_for.as_secs().max(1),
    );
    let mut args = vec!["-c".to_owned(), script, "sh".to_owned(), runner.cmd];
    args.extend(runner.args);
    let mut envs = runner.envs;
    // Every value the server gives the runner is one it redacts; the runner
    // keeps them out of the log too, which other servers read back.
    let redact: Vec<&str> = envs.keys().map(String::as_str).collect();
    let redact = redact.join(",");
    envs.insert("SANDSTORM_REDACT_VARS".to_owned(), redact);
    envs.insert("SANDSTORM_EVENT_RECORDS".to_owned(), "1".to_owned());
    ProcessSpec {
        cmd: "sh".to_owned(),
        args,
        envs,
        cwd: runner.cwd,
        timeout: Some(run_for + Duration::from_secs(2 * KILL_AFTER_SECS)),
        tag: Some(RUN_TAG.to_owned()),
        stdin: false,
        spend: runner.spend,
        spend_record: Some(crate::spend::record_path(turn)),
        callback: runner.callback,
    }
}

fn log_dir() -> &'static str {
    EVENT_LOG.rsplit_once('/').map_or("/tmp", |(dir, _)| dir)
}

/// Where a cancel of turn `turn` leaves its mark, for a wrapper that has
/// not kept its runner's pid yet.
fn cancel_marker(turn: u32) -> String {
    format!("{}/cancel-{turn}", log_dir())
}

/// What cancels turn `turn` of a run: its marker, so a runner not started
/// yet is stopped as it starts; a cancel record in the log, so every
/// reader knows why the runner ends; then TERM to the runner's `timeout`.
pub(crate) fn canceller(turn: u32) -> ProcessSpec {
    let script = format!(
        "mkdir -p {dir}\n\
         : > {marker}\n\
         printf '\\036c\\n' >> {EVENT_LOG}\n\
         kill -TERM \"$(cat {RUNNER_PID} 2>/dev/null)\" 2>/dev/null\n\
         exit 0\n",
        dir = log_dir(),
        marker = cancel_marker(turn),
    );
    shell(script, None)
}

/// `sh -c script`, with `arg` as its `$1`: a value that comes from outside
/// goes there, never into the script's text.
fn shell(script: String, arg: Option<String>) -> ProcessSpec {
    let mut args = vec!["-c".to_owned(), script];
    if let Some(arg) = arg {
        args.extend(["sh".to_owned(), arg]);
    }
    ProcessSpec {
        cmd: "sh".to_owned(),
        args,
        cwd: layout::HOME.to_owned(),
        ..ProcessSpec::default()
    }
}

/// The marker a follow-up turn claims before it begins: made with
/// `noclobber`, so of two follow-ups that both saw the run idle only one
/// begins the turn. It holds when the turn's sandbox lifetime ends (Unix
/// seconds), for a reader that ends the turn before.
pub(crate) fn turn_marker(turn: u32) -> String {
    format!("{}/turn-{turn}", log_dir())
}

/// Why a follow-up could not begin its turn.
pub(crate) const TURN_TAKEN: i32 = 3;

/// What begins follow-up turn `turn`: claims its marker (exit
/// [`TURN_TAKEN`] when another follow-up has), then appends its turn
/// record. Run to its end before the turn's runner starts, so every
/// follower that sees the runner's records has seen the turn begin.
pub(crate) fn turn_beginner(turn: u32, request_id: &str, lifetime_ends: SystemTime) -> ProcessSpec {
    let ends = lifetime_ends
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    // The request id goes through "$1", never through the script's text.
    let script = format!(
        "set -C\n\
         echo {ends} > {marker} 2>/dev/null || exit {TURN_TAKEN}\n\
         printf '{TURN_RECORD}%s\\n' \"$1\" >> {EVENT_LOG}\n",
        marker = turn_marker(turn),
    );
    shell(script, Some(request_id.to_owned()))
}

/// What ends, in the log, a turn whose runner could not be started: a
/// stderr record that says why, and a failed exit.
pub(crate) fn turn_failed(message: &str) -> ProcessSpec {
    let script = format!("printf '\\036e%s\\n\\036x1\\n' \"$1\" >> {EVENT_LOG}\n");
    shell(script, Some(message.replace('\n', " ")))
}

/// How long a follower outlives its reader's deadline at most.
const FOLLOWER_MARGIN: Duration = Duration::from_secs(5);

/// A follower of the log, for one reader whose stream ends at `until`: it
/// ends itself shortly after, whether or not anyone still reads it, and its
/// sandbox ends it then if it cannot (its writes block on a reader that
/// stopped reading). It reads to the end of the log, and waits there until
/// turn `turn` is over.
pub(crate) fn follower(until: SystemTime, turn: u32) -> ProcessSpec {
    let until = until + FOLLOWER_MARGIN;
    let until_ms = until
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let lifetime = until.duration_since(SystemTime::now()).unwrap_or_default() + FOLLOWER_MARGIN;
    ProcessSpec {
        timeout: Some(lifetime),
        cmd: "node".to_owned(),
        args: vec![
            FOLLOW_SCRIPT.to_owned(),
            EVENT_LOG.to_owned(),
            until_ms.to_string(),
            turn.to_string(),
        ],
        cwd: layout::HOME.to_owned(),
        ..ProcessSpec::default()
    }
}

/// What one log line other than an SDK message's is.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Stderr(Bytes),
    Cancel,
    Exit(ExitStatus, Option<SystemTime>),
    Turn(String),
}

fn record(line: &[u8]) -> Record {
    match line {
        [RECORD, b'e', body @ ..] => Record::Stderr(with_newline(body)),
        [RECORD, b'c', ..] => Record::Cancel,
        [RECORD, b'n', request_id @ ..] => {
            Record::Turn(String::from_utf8_lossy(request_id).trim().to_owned())
        }
        [RECORD, b't', rest @ ..] => Record::Exit(
            ExitStatus {
                code: Some(124),
                status: TIMED_OUT.to_owned(),
            },
            ended_at(rest, 0),
        ),
        [RECORD, b'x', rest @ ..] => {
            let text = String::from_utf8_lossy(rest);
            let code = text
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<i32>().ok());
            Record::Exit(
                ExitStatus {
                    code,
                    status: code.map_or_else(
                        || "the runner ended with an unreadable status".to_owned(),
                        |c| format!("exit status: {c}"),
                    ),
                },
                ended_at(rest, 1),
            )
        }
        _ => Record::Stderr(with_newline(line)),
    }
}

/// When an exit record says its turn ended: its word `word` (after `x`'s
/// code, or the first after `t`), Unix seconds. Logs written before the
/// time was added have none.
fn ended_at(rest: &[u8], word: usize) -> Option<SystemTime> {
    let seconds = std::str::from_utf8(rest)
        .ok()?
        .split_whitespace()
        .nth(word)?;
    let seconds = seconds.parse::<u64>().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// What a decoded log holds: each turn's runner output, as the process
/// events of a runner, and between turns the start of the next one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogItem {
    /// Output of the current turn's runner, or its exit.
    Runner(ProcessEvent),
    /// When the turn whose exit came just before ended.
    Ended(SystemTime),
    /// A follow-up turn begins, started by the request with this id.
    Turn(String),
}

/// A decoded log.
pub(crate) type LogStream = futures::stream::BoxStream<'static, Result<LogItem, SandboxError>>;

/// The follower's output as what the runners printed: the SDK messages as
/// stdout, the stderr records and stray lines as stderr, in their order,
/// the exit record as the runner's exit, and each later turn's record. A
/// follower that ends within a turn (the sandbox went away, the log was
/// removed) is a cut stream; one that ends between turns has read them all.
pub(crate) fn decode(follower: ProcessStream) -> LogStream {
    let mut decoder = Decoder::default();
    follower
        .flat_map(move |event| {
            let events = match (decoder.failed, event) {
                (true, _) => Vec::new(),
                (false, Err(e)) => vec![Err(e)],
                (false, Ok(ProcessEvent::Stdout(chunk))) => decoder.push(&chunk),
                // The follower's own diagnostics are not the run's.
                (false, Ok(ProcessEvent::Stderr(chunk))) => {
                    tracing::warn!(
                        output = %String::from_utf8_lossy(&chunk).trim_end(),
                        "the event-log follower complained"
                    );
                    Vec::new()
                }
                (false, Ok(ProcessEvent::Exited(_))) if decoder.between_turns => Vec::new(),
                (false, Ok(ProcessEvent::Exited(status))) => {
                    tracing::warn!(
                        status = %status.status,
                        "the event-log follower ended before the run's exit record"
                    );
                    vec![Err(SandboxError::StreamCut)]
                }
            };
            futures::stream::iter(events)
        })
        .boxed()
}

/// The runner events of one turn of a decoded log, up to its exit: what
/// the relay reads. The log goes on after it with the next turn, if any.
pub(crate) fn turn(
    log: &mut LogStream,
) -> futures::stream::BoxStream<'_, Result<ProcessEvent, SandboxError>> {
    log.filter_map(|item| {
        std::future::ready(match item {
            Ok(LogItem::Runner(event)) => Some(Ok(event)),
            Ok(LogItem::Turn(_) | LogItem::Ended(_)) => None,
            Err(e) => Some(Err(e)),
        })
    })
    .boxed()
}

/// The log's lines, decoded as they come.
#[derive(Debug, Default)]
struct Decoder {
    /// Bytes of a line not yet ended.
    buf: BytesMut,
    /// A turn's exit record came, and the next turn's record has not:
    /// nothing but that counts.
    between_turns: bool,
    /// The log cannot be read on.
    failed: bool,
    /// A cancel record came before the exit.
    cancelled: bool,
}

impl Decoder {
    /// The events of the lines `chunk` completes. The SDK messages in a row
    /// become one stdout chunk, their record marks left out: their bytes are
    /// copied once here, and the relay cuts them into lines again as it
    /// does a live runner's. A line that straddles chunks is put together
    /// first; the others are read where they lie.
    fn push(&mut self, chunk: &[u8]) -> Vec<Result<LogItem, SandboxError>> {
        let mut out = Vec::new();
        let mut messages = BytesMut::new();
        let mut rest = chunk;
        if !self.buf.is_empty() {
            let Some(at) = memchr::memchr(b'\n', rest) else {
                self.buf.extend_from_slice(rest);
                return self.checked(out);
            };
            self.buf.extend_from_slice(&rest[..at]);
            let line = self.buf.split();
            self.line(&line, &mut messages, &mut out);
            rest = &rest[at + 1..];
        }
        while let Some(at) = memchr::memchr(b'\n', rest) {
            self.line(&rest[..at], &mut messages, &mut out);
            rest = &rest[at + 1..];
        }
        if !messages.is_empty() {
            out.push(Ok(LogItem::Runner(ProcessEvent::Stdout(messages.freeze()))));
        }
        self.buf.extend_from_slice(rest);
        self.checked(out)
    }

    /// One whole line (without its newline): an SDK message joins
    /// `messages`; any other record first sends the messages before it.
    fn line(
        &mut self,
        line: &[u8],
        messages: &mut BytesMut,
        out: &mut Vec<Result<LogItem, SandboxError>>,
    ) {
        if self.between_turns {
            // A cancel that came too late, or anything else after an exit,
            // belongs to no turn.
            if let Record::Turn(request_id) = record(line) {
                self.between_turns = false;
                self.cancelled = false;
                out.push(Ok(LogItem::Turn(request_id)));
            }
            return;
        }
        if let [RECORD, b'o', body @ ..] = line {
            messages.extend_from_slice(body);
            messages.extend_from_slice(b"\n");
            return;
        }
        if !messages.is_empty() {
            out.push(Ok(LogItem::Runner(ProcessEvent::Stdout(
                messages.split().freeze(),
            ))));
        }
        match record(line) {
            Record::Stderr(line) => out.push(Ok(LogItem::Runner(ProcessEvent::Stderr(line)))),
            Record::Cancel => self.cancelled = true,
            // Only ever after an exit; one here is not a turn's start.
            Record::Turn(_) => {}
            Record::Exit(mut status, ended) => {
                if self.cancelled {
                    status.status = CANCELLED.to_owned();
                }
                out.push(Ok(LogItem::Runner(ProcessEvent::Exited(status))));
                out.extend(ended.map(|at| Ok(LogItem::Ended(at))));
                self.between_turns = true;
            }
        }
    }

    /// `out`, or the log's end when a line has grown past the limit.
    fn checked(
        &mut self,
        mut out: Vec<Result<LogItem, SandboxError>>,
    ) -> Vec<Result<LogItem, SandboxError>> {
        if self.buf.len() > MAX_LINE_LEN {
            self.failed = true;
            out.push(Err(SandboxError::Other {
                op: "read the run's event log",
                message: LineTooLong.to_string(),
            }));
        }
        out
    }
}

fn with_newline(body: &[u8]) -> Bytes {
    let mut line = BytesMut::with_capacity(body.len() + 1);
    line.extend_from_slice(body);
    line.extend_from_slice(b"\n");
    line.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]], exit: Option<i32>) -> Vec<Result<LogItem, String>> {
        let mut input: Vec<Result<ProcessEvent, SandboxError>> = chunks
            .iter()
            .map(|c| Ok(ProcessEvent::Stdout(Bytes::copy_from_slice(c))))
            .collect();
        if let Some(code) = exit {
            input.push(Ok(ProcessEvent::Exited(ExitStatus {
                code: Some(code),
                status: String::new(),
            })));
        }
        let stream = decode(futures::stream::iter(input).boxed());
        futures::executor::block_on(stream.collect::<Vec<_>>())
            .into_iter()
            .map(|e| e.map_err(|e| e.to_string()))
            .collect()
    }

    fn out(text: &str) -> LogItem {
        LogItem::Runner(ProcessEvent::Stdout(Bytes::from(text.to_owned())))
    }

    fn err(text: &str) -> LogItem {
        LogItem::Runner(ProcessEvent::Stderr(Bytes::from(text.to_owned())))
    }

    fn exited(code: i32, status: &str) -> LogItem {
        LogItem::Runner(ProcessEvent::Exited(ExitStatus {
            code: Some(code),
            status: status.to_owned(),
        }))
    }

    #[test]
    fn records_become_the_runner_s_lines_and_exit_in_order() {
        let got = events(
            &[
                b"\x1eo{\"type\":\"system\"}\n\x1eewarn",
                b"ing\nSegmentation fault\n\x1eo{\"type\":\"result\"}\n\x1ex0\n",
            ],
            Some(0),
        );
        assert_eq!(
            got,
            [
                Ok(out("{\"type\":\"system\"}\n")),
                Ok(err("warning\n")),
                Ok(err("Segmentation fault\n")),
                Ok(out("{\"type\":\"result\"}\n")),
                Ok(exited(0, "exit status: 0")),
            ]
        );
    }

    #[test]
    fn messages_in_a_row_are_one_chunk_and_lines_may_straddle_chunks() {
        let got = events(
            &[
                b"\x1eo{\"a\":1}\n\x1eo{\"b\"",
                b":2}\n\x1eo{\"c\":3}\n\x1ex0\n",
            ],
            Some(0),
        );
        assert_eq!(
            got,
            [
                Ok(out("{\"a\":1}\n")),
                Ok(out("{\"b\":2}\n{\"c\":3}\n")),
                Ok(exited(0, "exit status: 0")),
            ]
        );
    }

    #[test]
    fn the_same_log_cut_anywhere_decodes_the_same() {
        let log: &[u8] =
            b"\x1eo{\"a\":1}\n\x1eewarn\nstray\n\x1eo{\"b\":2}\n\x1ex0\n\x1enreq-2\n\x1eo{}\n\x1et\n";
        // Consecutive stdout chunks joined, as the relay sees them.
        let joined = |items: Vec<Result<LogItem, String>>| {
            let mut joined: Vec<Result<LogItem, String>> = Vec::new();
            for item in items {
                if let (
                    Some(Ok(LogItem::Runner(ProcessEvent::Stdout(before)))),
                    Ok(LogItem::Runner(ProcessEvent::Stdout(more))),
                ) = (joined.last_mut(), &item)
                {
                    *before = [before.as_ref(), more.as_ref()].concat().into();
                    continue;
                }
                joined.push(item);
            }
            joined
        };
        let whole = joined(events(&[log], Some(0)));
        assert_eq!(whole.len(), 8, "{whole:?}");
        for one in 1..log.len() {
            for two in one..log.len() {
                let cut = joined(events(&[&log[..one], &log[one..two], &log[two..]], Some(0)));
                assert_eq!(cut, whole, "cut at {one} and {two}");
            }
        }
    }

    #[test]
    fn an_exit_record_s_time_comes_after_the_exit() {
        let ended = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let got = events(&[b"\x1ex3 1700000000\n\x1enr\n\x1et 1700000000\n"], Some(0));
        assert_eq!(
            got,
            [
                Ok(exited(3, "exit status: 3")),
                Ok(LogItem::Ended(ended)),
                Ok(LogItem::Turn("r".into())),
                Ok(exited(124, TIMED_OUT)),
                Ok(LogItem::Ended(ended)),
            ]
        );
    }

    #[test]
    fn the_timeout_record_says_the_run_s_timeout_ended_it() {
        let got = events(&[b"\x1et\n"], Some(0));
        assert_eq!(got, [Ok(exited(124, TIMED_OUT))]);
    }

    #[test]
    fn an_exit_after_a_cancel_record_says_the_run_was_cancelled() {
        let got = events(&[b"\x1eo{}\n\x1ec\n\x1ex143\n"], Some(0));
        assert_eq!(got, [Ok(out("{}\n")), Ok(exited(143, CANCELLED))]);
    }

    #[test]
    fn later_turns_follow_their_records_and_nothing_between_turns_counts() {
        let got = events(
            &[
                b"\x1eo{\"a\":1}\n\x1ex0\n\x1ec\nstray\n\x1enreq-2\n",
                b"\x1eo{\"b\":2}\n\x1ex0\n",
            ],
            Some(0),
        );
        assert_eq!(
            got,
            [
                Ok(out("{\"a\":1}\n")),
                Ok(exited(0, "exit status: 0")),
                Ok(LogItem::Turn("req-2".into())),
                Ok(out("{\"b\":2}\n")),
                Ok(exited(0, "exit status: 0")),
            ]
        );
    }

    #[test]
    fn a_follower_that_ends_inside_a_later_turn_is_a_cut_stream() {
        let got = events(&[b"\x1ex0\n\x1enreq-2\n\x1eo{}\n"], Some(0));
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[3].as_ref().is_err_and(|e| e.contains("cut")), "{got:?}");
    }

    #[test]
    fn a_follower_that_ends_before_the_exit_record_is_a_cut_stream() {
        let got = events(&[b"\x1eo{}\n"], Some(2));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Ok(out("{}\n")));
        assert!(got[1].as_ref().is_err_and(|e| e.contains("cut")), "{got:?}");
    }

    #[test]
    fn the_wrapper_passes_the_runner_s_argv_as_arguments_not_script() {
        let runner = ProcessSpec {
            cmd: "node".into(),
            args: vec!["/opt/agent-runner/runner.mjs".into(), "$(rm -rf /)".into()],
            cwd: "/home/user".into(),
            ..ProcessSpec::default()
        };
        let spec = wrapper(runner, Duration::from_secs(300), 1);
        assert_eq!(spec.cmd, "sh");
        assert_eq!(
            &spec.args[2..],
            ["sh", "node", "/opt/agent-runner/runner.mjs", "$(rm -rf /)"]
        );
        assert!(!spec.args[1].contains("rm -rf"));
        assert!(spec.args[1].contains("timeout -k 5 300 \"$@\""));
        assert_eq!(spec.envs["SANDSTORM_EVENT_RECORDS"], "1");
        assert_eq!(spec.tag.as_deref(), Some(RUN_TAG));
    }
}
