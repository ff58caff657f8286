//! The synthetic runner: output shaped like the agent runner's, made at
//! full speed without an LLM, so benchmarks measure our own overhead.
//!
//! `lines` JSON lines of exactly `bytes` bytes each (newline included when
//! the line fits), the last a `result` of subtype `success`. Output is cut
//! into chunks of an odd size, so line borders do not line up with data
//! frames, as with a real process.

use bytes::{Bytes, BytesMut};
use futures::Stream;

use std::time::{Duration, Instant};

use sandstorm::runs::log::{EXIT_RECORD, MESSAGE_RECORD};
use sandstorm::sandbox::local::FsError;
use sandstorm::sandbox::{ExitStatus, ProcessEvent, upload_gate};

use super::Entry;
use super::knobs::Synthetic;

/// About the 32 KiB a pipe read gives, but odd so lines straddle chunks.
pub(crate) const CHUNK: usize = 32 * 1024 - 3;

/// The longest a synthetic runner waits for its upload's marker: longer
/// than a client's gate waits (three request timeouts of a minute).
pub(crate) const MARKER_WAIT: Duration = Duration::from_secs(240);

/// Waits, as the runner's gate does (`upload_gate`), until `marker` exists
/// in the sandbox: looking as often as the gate looks, so that what a
/// benchmark measures includes its wait. `None` once it does (or when
/// there is no marker); otherwise the gate's last words: its message on
/// stderr and its exit code, after [`MARKER_WAIT`] or once the sandbox is
/// gone.
pub(crate) async fn await_marker(entry: &Entry, marker: Option<&str>) -> Option<[ProcessEvent; 2]> {
    let marker = marker?;
    let start = Instant::now();
    let mut poll = upload_gate::POLL;
    loop {
        match entry.sandbox.read(marker.to_owned()).await {
            Ok(_) => return None,
            Err(FsError::NotFound { .. }) if start.elapsed() < MARKER_WAIT => {}
            Err(_) => break,
        }
        if start.elapsed() >= upload_gate::FAST_FOR {
            poll = upload_gate::SLOW_POLL;
        }
        tokio::time::sleep(poll).await;
    }
    Some([
        ProcessEvent::Stderr(Bytes::from(format!(
            "sandstorm: the upload's last file {marker} did not land, so the process was not started\n"
        ))),
        ProcessEvent::Exited(ExitStatus {
            code: Some(upload_gate::GAVE_UP_CODE),
            status: format!("exit status {}", upload_gate::GAVE_UP_CODE),
        }),
    ])
}

/// Whether a start request runs the agent runner.
pub(crate) fn is_runner(cmd: &str, args: &[String]) -> bool {
    std::iter::once(cmd)
        .chain(args.iter().map(String::as_str))
        .any(|a| a.contains("runner.mjs"))
}

/// The line with sequence number `seq` of `total`.
pub(crate) fn line(seq: u64, total: u64, bytes: usize) -> Vec<u8> {
    let head = if seq + 1 == total {
        format!(
            r#"{{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"synthetic","total_cost_usd":0,"seq":{seq},"pad":""#
        )
    } else {
        format!(r#"{{"type":"assistant","seq":{seq},"pad":""#)
    };
    let tail = "\"}\n";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut out = Vec::with_capacity(head.len() + pad + tail.len());
    out.extend_from_slice(head.as_bytes());
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(tail.as_bytes());
    out
}

/// The whole output as a detached run's event log: each line a message
/// record, then the wrapper's exit record for a clean exit.
pub(crate) fn records(spec: Synthetic) -> Bytes {
    let mut log = BytesMut::new();
    for seq in 0..spec.lines {
        log.extend_from_slice(MESSAGE_RECORD);
        log.extend_from_slice(&line(seq, spec.lines, spec.bytes));
    }
    log.extend_from_slice(EXIT_RECORD);
    log.extend_from_slice(b"0\n");
    log.freeze()
}

/// The whole output as a stream of chunks, produced lazily (a benchmark may
/// ask for gigabytes).
pub(crate) fn output(spec: Synthetic) -> impl Stream<Item = Bytes> + Send + 'static {
    let state = (0u64, BytesMut::new());
    futures::stream::unfold(state, move |(mut seq, mut buf)| async move {
        while buf.len() < CHUNK && seq < spec.lines {
            buf.extend_from_slice(&line(seq, spec.lines, spec.bytes));
            seq += 1;
        }
        if buf.is_empty() {
            return None;
        }
        let take = buf.len().min(CHUNK);
        let chunk = buf.split_to(take).freeze();
        Some((chunk, (seq, buf)))
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn makes_exactly_the_lines_asked_for() {
        let chunks: Vec<Bytes> = output(Synthetic {
            lines: 1000,
            bytes: 200,
        })
        .collect()
        .await;
        assert!(chunks.iter().all(|c| c.len() <= CHUNK));
        assert!(chunks.len() > 1);
        let all: Vec<u8> = chunks.concat();
        let lines: Vec<&[u8]> = all
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 1000);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l.len() + 1, 200);
            let v: serde_json::Value = serde_json::from_slice(l).expect("json line");
            assert_eq!(v["seq"], i as u64);
        }
        let last: serde_json::Value = serde_json::from_slice(lines[999]).expect("json");
        assert_eq!(
            (last["type"].as_str(), last["subtype"].as_str()),
            (Some("result"), Some("success"))
        );
    }

    #[test]
    fn recognises_the_runner_command() {
        let args = vec![
            "-l".to_owned(),
            "-c".to_owned(),
            "cd /opt/agent-runner && node runner.mjs".to_owned(),
        ];
        assert!(is_runner("/bin/bash", &args));
        assert!(!is_runner("/bin/bash", &["-c".to_owned(), "ls".to_owned()]));
    }
}
