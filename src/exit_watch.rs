//! Waiting for a process to exit, by pidfd.

use std::sync::Arc;
use std::time::Duration;

use rustix::process::Pid;

/// A process that is not our child, watched through a pidfd so that its pid
/// can never be mistaken for a later process's.
///
/// The local sandbox waits so for its pid 1 (bwrap's child, not ours: the
/// kernel reports a pid namespace's init as exited only after every other
/// process in it is gone, so this is what destroy waits for), and the model
/// proxy in an E2B sandbox for the runner it serves.
#[derive(Debug, Clone)]
pub(crate) struct ExitWatch(Arc<std::os::fd::OwnedFd>);

impl ExitWatch {
    pub(crate) fn open(pid: u32) -> std::io::Result<Self> {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other(format!("{pid} is not a pid")))?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        Ok(Self(Arc::new(fd)))
    }

    /// Whether the process exited within `timeout`. A pidfd becomes
    /// readable at exit and stays so. Polled on a blocking thread: tokio
    /// registers foreign fds only through `unsafe`.
    pub(crate) async fn exited_within(&self, timeout: Duration) -> bool {
        let fd = self.0.clone();
        let poll = tokio::task::spawn_blocking(move || {
            use rustix::event::{PollFd, PollFlags, Timespec};
            let timeout = Timespec::try_from(timeout).ok();
            let mut fds = [PollFd::new(&*fd, PollFlags::IN)];
            loop {
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Err(rustix::io::Errno::INTR) => continue,
                    Ok(ready) => return ready > 0,
                    Err(_) => return false,
                }
            }
        });
        poll.await.unwrap_or(false)
    }
}
