//! Counters behind `GET /_emulator/stats`, so tests can assert how many
//! round trips a client made ("exactly one create, one upload, one start,
//! one kill") and that nothing leaked.

use std::collections::BTreeMap;
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
}

impl Stats {
    pub(crate) fn request(&self, route: &'static str) {
        *self.lock().requests.entry(route).or_default() += 1;
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
