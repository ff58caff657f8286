//! How many sandboxes may be starting at once.
//!
//! A sandbox is starting from its create call until its first process
//! has been started (the start's answer came back) or it is dropped. In
//! that stretch a run holds the most it ever holds: an HTTP connection for
//! each call in flight (create; then the upload and the start side by
//! side), each with its buffers, while E2B does the slow part. A burst of a
//! thousand queries would otherwise hold a thousand of those at once for
//! as long as E2B takes: against the emulator, twice what the same runs
//! hold once their agents stream. Past [`E2bOptions::max_starting`], a run
//! waits its turn (first come, first served: tokio's semaphore is fair)
//! before its create goes out, holding nothing but its request. Starts in
//! turns also finished sooner there than a thousand at once competing for
//! the same cores; bench/evidence.md has the figures (`stalled_slots`).
//!
//! [`E2bOptions::max_starting`]: super::options::E2bOptions::max_starting

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots sandboxes start in, shared by every sandbox of a provider.
#[derive(Debug, Clone)]
pub(super) struct StartSlots(Arc<Semaphore>);

impl StartSlots {
    /// At most `max` sandboxes starting at once (`0` counts as 1, so
    /// sandboxes still start).
    pub(super) fn new(max: usize) -> Self {
        StartSlots(Arc::new(Semaphore::new(
            max.clamp(1, Semaphore::MAX_PERMITS),
        )))
    }

    /// Waits for a free slot; the sandbox being created keeps it until
    /// [`Starting::started`].
    pub(super) async fn enter(&self) -> Starting {
        // The semaphore is never closed, so acquiring cannot fail; if it
        // ever did, the sandbox would start without a slot rather than not
        // at all.
        let permit = Arc::clone(&self.0).acquire_owned().await.ok();
        Starting(Mutex::new(permit))
    }

    /// Slots free now.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        self.0.available_permits()
    }
}

/// A sandbox's slot while it starts; dropping it frees the slot too.
#[derive(Debug, Default)]
pub(super) struct Starting(Mutex<Option<OwnedSemaphorePermit>>);

impl Starting {
    /// A sandbox that holds no slot (connected to, not created).
    pub(super) fn none() -> Self {
        Starting::default()
    }

    /// Frees the slot: the sandbox's first process has started, or it
    /// failed to. Later calls do nothing.
    pub(super) fn started(&self) {
        // A poisoned lock only means a panic elsewhere while it was held;
        // the slot is freed either way.
        let permit = match self.0.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_sandbox_past_the_bound_waits_until_one_has_started() {
        let slots = StartSlots::new(2);
        let first = slots.enter().await;
        let second = slots.enter().await;
        assert_eq!(slots.free(), 0);

        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.enter().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a third sandbox started with two starting"
        );

        first.started();
        first.started(); // a second call frees nothing more
        let third = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the third sandbox waited on after a slot was freed")
            .expect("the waiting task");
        assert_eq!(slots.free(), 0);

        drop(second); // a sandbox dropped while starting frees its slot
        drop(third);
        assert_eq!(slots.free(), 2);
    }

    #[tokio::test]
    async fn a_bound_of_zero_still_lets_sandboxes_start_one_at_a_time() {
        let slots = StartSlots::new(0);
        let one = slots.enter().await;
        assert_eq!(slots.free(), 0);
        one.started();
        assert_eq!(slots.free(), 1);
        assert_eq!(
            Starting::none().0.lock().map(|s| s.is_none()).ok(),
            Some(true)
        );
    }
}
