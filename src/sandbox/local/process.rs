//! One bwrap process: its output pumps, its deadline, and how it is killed.
//!
//! A supervisor task owns the child. Output goes through a bounded channel,
//! so a slow reader slows the process (the pipe fills) instead of anything
//! being dropped. Signals reach the process only through the supervisor:
//! it alone knows whether the child has been reaped, so it never signals a
//! process id that the kernel may have handed to someone else.
//!
//! Killing the bwrap process group is enough to end everything inside:
//! bwrap runs with `--die-with-parent`, and the sandbox's pid namespace dies
//! with its init, taking every background process along.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::sandbox::{ExitStatus, ProcessEvent, SandboxError};

/// Output chunks in flight per process. With 32 KiB reads this bounds the
/// buffered output to about 1 MiB before the process is slowed down.
const CHANNEL_CAPACITY: usize = 32;
/// The largest chunk read from a pipe at once.
const READ_CHUNK: usize = 32 * 1024;

pub(crate) type EventSender = mpsc::Sender<Result<ProcessEvent, SandboxError>>;
pub(crate) type EventReceiver = mpsc::Receiver<Result<ProcessEvent, SandboxError>>;

/// What the supervisor is asked to do.
#[derive(Debug, Clone, Copy)]
enum Request {
    Signal(Signal),
    /// SIGKILL, and drop output nobody has read: the sandbox is going away
    /// and its reader may have stopped reading.
    Stop,
}

/// Sends signals to one process and tells whether it has ended.
#[derive(Debug, Clone)]
pub struct ProcessControl {
    requests: mpsc::UnboundedSender<Request>,
    done: watch::Receiver<bool>,
}

impl ProcessControl {
    /// Asks the supervisor to signal the process group. Returns false when
    /// the process has already ended.
    pub fn signal(&self, signal: Signal) -> bool {
        self.request(Request::Signal(signal))
    }

    /// Sends SIGKILL to the process group; false when it has already ended.
    pub fn kill(&self) -> bool {
        self.signal(Signal::KILL)
    }

    /// Kills the process and discards its unread output, so that
    /// [`wait`](Self::wait) returns even if the reader has stalled.
    pub(crate) fn stop(&self) -> bool {
        self.request(Request::Stop)
    }

    fn request(&self, request: Request) -> bool {
        !self.is_done() && self.requests.send(request).is_ok()
    }

    /// Whether the process has ended.
    pub(crate) fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Resolves once every process of the command has died: bwrap is
    /// reaped and its pipes are closed (which happens only when the last
    /// process in the sandbox's pid namespace is gone).
    pub async fn wait(&self) {
        let mut done = self.done.clone();
        // An error means the supervisor is gone, which also means done.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Spawns `command` (bwrap, or a process joining a sandbox) under a
/// supervisor. `keep_alive` is held until the process has ended: the
/// sandbox's home, so its directory and uid outlive every process that
/// uses them. `grace` bounds how long output may keep flowing after the
/// process exits (something it left running may hold the pipes); `None`
/// waits for the pipes to close. `stdin` is [`ProcessSpec::stdin`]: a pipe
/// held open until the process ends, else empty.
///
/// [`ProcessSpec::stdin`]: crate::sandbox::ProcessSpec::stdin
pub(crate) fn spawn(
    mut command: Command,
    timeout: Option<Duration>,
    keep_alive: Arc<dyn Send + Sync>,
    grace: Option<Duration>,
    stdin: bool,
) -> Result<(u32, EventReceiver, ProcessControl), std::io::Error> {
    command
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so one killpg reaches bwrap and its init,
        // and a Ctrl-C meant for us does not reach it.
        .process_group(0)
        // If the supervisor task is dropped (runtime shutdown), the child
        // still dies; --die-with-parent takes the sandbox with it.
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or_default();
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (request_tx, request_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = watch::channel(false);
    let (discard_tx, discard_rx) = watch::channel(false);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = child.stdin.take();
    tokio::spawn(async move {
        let _keep_alive = keep_alive;
        // Never written, only held: the writing end stays open, so a read
        // waits as it would under envd, until the process ends.
        let _stdin = stdin;
        let pumps = (
            tokio::spawn(pump(
                stdout,
                tx.clone(),
                discard_rx.clone(),
                ProcessEvent::Stdout,
            )),
            tokio::spawn(pump(stderr, tx.clone(), discard_rx, ProcessEvent::Stderr)),
        );
        let outcome = supervise(&mut child, request_rx, &discard_tx, timeout).await;
        // Wait for the last bytes before reporting the end, which comes
        // last: the pipes close once every process holding them is gone.
        let (mut stdout, mut stderr) = pumps;
        let drained = async {
            let _ = (&mut stdout).await;
            let _ = (&mut stderr).await;
        };
        match grace {
            None => drained.await,
            Some(grace) => {
                if tokio::time::timeout(grace, drained).await.is_err() {
                    stdout.abort();
                    stderr.abort();
                }
            }
        }
        let _ = done_tx.send(true);
        let _ = tx.send(outcome).await;
    });
    Ok((
        pid,
        rx,
        ProcessControl {
            requests: request_tx,
            done: done_rx,
        },
    ))
}

/// Waits for the child while serving signal requests and the deadline.
async fn supervise(
    child: &mut Child,
    mut requests: mpsc::UnboundedReceiver<Request>,
    discard: &watch::Sender<bool>,
    timeout: Option<Duration>,
) -> Result<ProcessEvent, SandboxError> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut sent: Option<Signal> = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| SandboxError::Other {
                    op: "process",
                    message: format!("waiting for the sandbox process failed: {e}"),
                })?;
                return Ok(ProcessEvent::Exited(exit_status(status, sent)));
            }
            Some(request) = requests.recv() => {
                let signal = match request {
                    Request::Signal(signal) => signal,
                    Request::Stop => {
                        let _ = discard.send(true);
                        Signal::KILL
                    }
                };
                signal_group(child, signal);
                sent.get_or_insert(signal);
            }
            () = sleep_until(deadline) => {
                signal_group(child, Signal::KILL);
                // Reap it so nothing lingers, then report the deadline.
                let _ = child.wait().await;
                return Err(SandboxError::TimedOut {
                    op: "process",
                    after: timeout.unwrap_or_default(),
                });
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Signals the child's process group, unless the child has been reaped
/// (then `id()` is `None` and the number may belong to someone else).
fn signal_group(child: &Child, signal: Signal) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    if let Some(pid) = pid {
        // ESRCH means it just died on its own: nothing left to do.
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Describes how bwrap ended, in envd's words (`exit status 3`,
/// `signal: killed`). bwrap passes the sandboxed command's exit code through.
fn exit_status(status: std::process::ExitStatus, sent: Option<Signal>) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = sent {
        return ExitStatus {
            code: None,
            status: format!("signal: {}", signal_name(signal)),
        };
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus {
            code: Some(code),
            status: format!("exit status {code}"),
        },
        (None, Some(raw)) => ExitStatus {
            code: None,
            status: match Signal::from_named_raw(raw) {
                Some(signal) => format!("signal: {}", signal_name(signal)),
                None => format!("signal: {raw}"),
            },
        },
        (None, None) => ExitStatus {
            code: None,
            status: "unknown".to_owned(),
        },
    }
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::KILL => "killed",
        Signal::TERM => "terminated",
        Signal::INT => "interrupt",
        Signal::HUP => "hangup",
        Signal::QUIT => "quit",
        Signal::STOP => "stopped",
        // Go's names, which envd uses; these two are the sandbox's caps.
        Signal::XCPU => "CPU time limit exceeded",
        Signal::XFSZ => "file size limit exceeded",
        _ => "signal",
    }
}

/// Copies one pipe into the event channel. When the reader has gone away,
/// or the output is to be discarded, the pipe is still drained to its end,
/// so the process never blocks on a full pipe and the end is always seen.
async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    tx: EventSender,
    mut discard: watch::Receiver<bool>,
    wrap: fn(bytes::Bytes) -> ProcessEvent,
) {
    let Some(mut pipe) = pipe else { return };
    let mut reader_gone = false;
    loop {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match pipe.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) if reader_gone || *discard.borrow() => {}
            Ok(_) => {
                tokio::select! {
                    sent = tx.send(Ok(wrap(buf.freeze()))) => reader_gone = sent.is_err(),
                    // A stalled reader must not keep a stopping sandbox up.
                    _ = discard.wait_for(|d| *d) => {}
                }
            }
        }
    }
}
