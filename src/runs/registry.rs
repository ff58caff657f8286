//! The detached runs this process started, by their id's digest.
//!
//! A provider that can find a sandbox again from any instance (E2B: list by
//! metadata, then connect) needs nothing kept; the registry is what lets a
//! provider that cannot (local sandboxes, which live and die with this
//! process) serve `/runs` too, and it spares E2B the lookup when the run was
//! started here. It holds nothing a restart could need: a local run does
//! not survive the server, and an E2B run is found again without it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::run::detached::Follow;
use crate::sandbox::Sandbox;

/// One registered run.
#[derive(Clone)]
pub(crate) struct Registered {
    /// Its sandbox.
    pub sandbox: Arc<dyn Sandbox>,
    /// The digest of the credential that started it.
    pub owner: String,
    /// How its log is read.
    pub follow: Follow,
    /// When its sandbox's lifetime ends.
    pub expires: Instant,
}

/// The registry, shared by every request of one server.
#[derive(Clone, Default)]
pub(crate) struct Registry(Arc<Mutex<HashMap<String, Registered>>>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("runs", &self.len())
            .finish()
    }
}

impl Registry {
    pub(crate) fn insert(&self, digest: String, run: Registered) {
        self.with(|runs| {
            let now = Instant::now();
            runs.retain(|_, run| run.expires > now);
            runs.insert(digest, run);
        });
    }

    /// The run, unless its sandbox's lifetime is over.
    pub(crate) fn get(&self, digest: &str) -> Option<Registered> {
        let now = Instant::now();
        self.with(|runs| runs.get(digest).filter(|run| run.expires > now).cloned())
    }

    /// Shortens a run's stay to `lifetime` from now, as its sandbox's.
    pub(crate) fn expire_in(&self, digest: &str, lifetime: std::time::Duration) {
        let expires = Instant::now() + lifetime;
        self.with(|runs| {
            if let Some(run) = runs.get_mut(digest) {
                run.expires = run.expires.min(expires);
            }
        });
    }

    /// Sets a run's stay to `lifetime` from now, longer or shorter, as its
    /// sandbox's.
    pub(crate) fn set_expiry(&self, digest: &str, lifetime: std::time::Duration) {
        let expires = Instant::now() + lifetime;
        self.with(|runs| {
            if let Some(run) = runs.get_mut(digest) {
                run.expires = expires;
            }
        });
    }

    /// Every run whose sandbox's lifetime is not over.
    pub(crate) fn all(&self) -> Vec<Registered> {
        let now = Instant::now();
        self.with(|runs| {
            runs.values()
                .filter(|run| run.expires > now)
                .cloned()
                .collect()
        })
    }

    pub(crate) fn remove(&self, digest: &str) {
        self.with(|runs| runs.remove(digest));
    }

    fn len(&self) -> usize {
        self.with(|runs| runs.len())
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Registered>) -> T) -> T {
        // Nothing here can leave the map half-changed; a panic elsewhere
        // while holding the lock does not make it unusable.
        let mut runs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut runs)
    }
}
