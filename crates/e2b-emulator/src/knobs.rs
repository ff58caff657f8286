//! Test knobs: added latency, injected faults and the synthetic runner.
//!
//! Set at start-up by flags and replaced at run time with
//! `POST /_emulator/config` (the whole set: omitted fields go back to their
//! defaults), so one emulator can serve many tests. Faults that take a
//! `count` fire for that many calls and then switch themselves off, which is
//! how a test says "fail twice, then succeed".

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a test can turn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Added to every request before it is handled.
    pub latency_ms: u64,
    /// Make the next creates fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_fault: Option<CreateFault>,
    /// Cut the next process streams mid-way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_cut: Option<StreamCut>,
    /// The next this-many kills answer 503, as E2B's edge does under load
    /// (a status clients retry).
    pub kill_failures: u32,
    /// Answer starts of the runner with generated output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<Synthetic>,
    /// Have a real process print the synthetic output (`cat` of a file in
    /// the sandbox) instead of answering from memory, as a runner's stdout
    /// comes through a pipe: the baseline a detached run's log, which a
    /// follower process reads back, is measured against.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub synthetic_process: bool,
    /// Hold every start of the agent runner this long before starting it,
    /// as a slow sandbox would: how a test reaches a run between its `run`
    /// event and its runner's start.
    #[serde(skip_serializing_if = "is_zero")]
    pub runner_start_delay_ms: u64,
    /// Hold every upload this long before writing its files, as a large
    /// upload over a slow link takes: how a test makes a process that was
    /// started beside its upload start before its files land.
    #[serde(skip_serializing_if = "is_zero")]
    pub upload_delay_ms: u64,
    /// The next this-many uploads write nothing and answer 507, as envd
    /// does when the sandbox's disk is full.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub upload_failures: u32,
    /// The `Retry-After` (seconds) of injected 429s; 1 when unset, as a
    /// rate limiter always names a wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// Answer without `TCP_NODELAY`, which envd and E2B's edge (Go) set:
    /// a small write then waits for the client's delayed ACK (about 40 ms),
    /// so a benchmark can check that none of its figures hangs on one.
    /// Applies to connections accepted after it is set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_tcp_nodelay: bool,
}

/// How the next `count` creates fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFault {
    /// How they fail.
    pub mode: CreateFaultMode,
    /// How many creates fail.
    pub count: u32,
}

/// How a create fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateFaultMode {
    /// 500 Internal Server Error: a failure clients must not retry.
    Error,
    /// 503 Service Unavailable, as E2B's edge answers under load: clients
    /// retry it.
    Unavailable,
    /// 429 Too Many Requests, with `Retry-After`.
    RateLimit,
    /// Never answer (until the client gives up).
    Hang,
}

/// Drop the connection of the next `count` process streams after
/// `after_frames` stdout frames, without end frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamCut {
    /// Stdout frames sent before the cut.
    pub after_frames: u32,
    /// How many streams are cut.
    pub count: u32,
}

/// The synthetic runner: `lines` JSON lines of `bytes` bytes each
/// (newline included), the last one a `result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// How many lines.
    pub lines: u64,
    /// The size of each line, newline included.
    pub bytes: usize,
}

impl Knobs {
    /// [`Self::latency_ms`] as a `Duration`.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// The `Retry-After` of an injected 429, in seconds.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs.unwrap_or(1)
    }

    /// Takes one create fault, if any is left.
    pub(crate) fn take_create_fault(&mut self) -> Option<CreateFaultMode> {
        take(&mut self.create_fault, |f| &mut f.count).map(|f| f.mode)
    }

    /// Takes one stream cut, if any is left: the frame count to cut after.
    pub(crate) fn take_stream_cut(&mut self) -> Option<u32> {
        take(&mut self.stream_cut, |c| &mut c.count).map(|c| c.after_frames)
    }

    /// Takes one upload failure, if any is left.
    pub(crate) fn take_upload_failure(&mut self) -> bool {
        if self.upload_failures > 0 {
            self.upload_failures -= 1;
            true
        } else {
            false
        }
    }

    /// Takes one kill failure, if any is left.
    pub(crate) fn take_kill_failure(&mut self) -> bool {
        if self.kill_failures > 0 {
            self.kill_failures -= 1;
            true
        } else {
            false
        }
    }
}

/// Uses up one count of a fault, clearing it when none is left.
fn take<T: Copy>(slot: &mut Option<T>, count: impl Fn(&mut T) -> &mut u32) -> Option<T> {
    let fault = slot.as_mut()?;
    let left = count(fault);
    if *left == 0 {
        *slot = None;
        return None;
    }
    *left -= 1;
    let taken = *fault;
    if *count(fault) == 0 {
        *slot = None;
    }
    Some(taken)
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_count_times_then_stop() {
        let mut knobs: Knobs = serde_json::from_str(
            r#"{"create_fault":{"mode":"rate_limit","count":2},"kill_failures":1,"upload_failures":1}"#,
        )
        .expect("valid config");
        assert_eq!(knobs.take_create_fault(), Some(CreateFaultMode::RateLimit));
        assert_eq!(knobs.take_create_fault(), Some(CreateFaultMode::RateLimit));
        assert_eq!(knobs.take_create_fault(), None);
        assert!(knobs.take_kill_failure());
        assert!(!knobs.take_kill_failure());
        assert!(knobs.take_upload_failure());
        assert!(!knobs.take_upload_failure());
        assert_eq!(knobs, Knobs::default());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Knobs>(r#"{"latency":5}"#).is_err());
    }
}
