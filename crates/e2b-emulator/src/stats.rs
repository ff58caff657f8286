//! Counters behind `GET /_emulator/stats`, so tests can assert how many
//! round trips a client made ("exactly one create, one upload, one start,
//! one kill") and that nothing leaked; and the last calls in the order
//! they arrived and were answered, so a test can tell which calls a
//! client had in flight at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use sandstorm::sync::lock;
use serde::Serialize;

/// Route names as they appear under `requests`.
pub(crate) mod route {
    pub(crate) const CREATE: &str = "create";
    pub(crate) const GET: &str = "get";
    pub(crate) const LIST: &str = "list";
    pub(crate) const KILL: &str = "kill";
    pub(crate) const TIMEOUT: &str = "timeout";
    pub(crate) const CONNECT: &str = "connect";
    pub(crate) const PAUSE: &str = "pause";
    pub(crate) const RESUME: &str = "resume";
    pub(crate) const HEALTH: &str = "health";
    pub(crate) const UPLOAD: &str = "upload";
    pub(crate) const DOWNLOAD: &str = "download";
    pub(crate) const START: &str = "start";
    pub(crate) const SIGNAL: &str = "signal";
    pub(crate) const PROCESS_LIST: &str = "process_list";
    pub(crate) const PROCESS_CONNECT: &str = "process_connect";
    pub(crate) const WEBHOOK_REGISTER: &str = "webhook_register";
    pub(crate) const WEBHOOK_LIST: &str = "webhook_list";
    pub(crate) const WEBHOOK_GET: &str = "webhook_get";
    pub(crate) const WEBHOOK_UPDATE: &str = "webhook_update";
    pub(crate) const WEBHOOK_DELETE: &str = "webhook_delete";
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    created: u64,
    killed: u64,
    requests: BTreeMap<&'static str, u64>,
    calls: VecDeque<Call>,
}

/// How many calls the stats remember, the oldest forgotten first.
const CALLS_KEPT: usize = 256;

/// A moment in an E2B call's life, as the emulator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Moment {
    /// Its request reached the emulator (before the latency knob's wait).
    Arrived,
    /// Its answer's head went back (a stream's body may still follow).
    Answered,
}

/// One moment of one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Call {
    /// Method and path, e.g. `POST /files`.
    pub call: String,
    /// What happened to it.
    pub moment: Moment,
}

/// The JSON answer of `GET /_emulator/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Sandboxes created.
    pub created: u64,
    /// Explicit kills and timeouts.
    pub killed: u64,
    /// Sandboxes alive now.
    pub alive: u64,
    /// Requests served, by route (`create`, `start`, ...).
    pub requests: BTreeMap<&'static str, u64>,
    /// The last calls' arrivals and answers, in order.
    pub calls: Vec<Call>,
}

impl Stats {
    pub(crate) fn request(&self, route: &'static str) {
        *self.lock().requests.entry(route).or_default() += 1;
    }

    pub(crate) fn call(&self, call: &str, moment: Moment) {
        let mut counts = self.lock();
        if counts.calls.len() == CALLS_KEPT {
            counts.calls.pop_front();
        }
        counts.calls.push_back(Call {
            call: call.to_owned(),
            moment,
        });
    }

    pub(crate) fn created(&self) {
        self.lock().created += 1;
    }

    pub(crate) fn killed(&self) {
        self.lock().killed += 1;
    }

    pub(crate) fn snapshot(&self, alive: usize) -> Snapshot {
        let counts = self.lock().clone();
        Snapshot {
            created: counts.created,
            killed: counts.killed,
            alive: alive as u64,
            requests: counts.requests,
            calls: counts.calls.into(),
        }
    }

    /// Zeroes the counters (the alive count is not a counter and stays).
    pub(crate) fn reset(&self) {
        *self.lock() = Counts::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Each critical section is one counter update or a copy.
        lock(&self.inner)
    }
}
