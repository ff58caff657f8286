//! The notices still on their way, counted, so that a server that stops
//! gives each one a last attempt at once (rather than dropping the ones
//! waiting hours for their next retry unsaid) and logs how many it drops.
//!
//! It also remembers the ids of the notices this process has told, so that
//! two of its readers that see the same turn end (a client that came back,
//! and the server's own reader) tell it once.
//!
//! One per process: the settings carry it, and `ds serve --reload` hands
//! the one it has to the settings it loads.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// The process's notices in flight. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Outbox(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Notices from their first attempt to their last.
    pending: AtomicUsize,
    /// Wakes [`Outbox::settle`] when one is done.
    done: Notify,
    /// Set once the process is stopping.
    closing: watch::Sender<bool>,
    /// The ids of the notices told lately, oldest first.
    told: Mutex<Told>,
}

/// How many notice ids a process remembers: many more than the turns that
/// end while two of its readers read them.
const REMEMBERED: usize = 4096;

#[derive(Debug, Default)]
struct Told {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox(Arc::new(Inner {
            pending: AtomicUsize::new(0),
            done: Notify::new(),
            closing: watch::Sender::new(false),
            told: Mutex::default(),
        }))
    }
}

/// One notice in flight; dropped when it is done, whichever way.
#[derive(Debug)]
pub(crate) struct Entry(Arc<Inner>);

impl Drop for Entry {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

impl Outbox {
    /// Counts one more notice in flight, until the entry drops.
    pub(crate) fn enter(&self) -> Entry {
        self.0.pending.fetch_add(1, Ordering::AcqRel);
        Entry(self.0.clone())
    }

    /// Takes the telling of notice `id` for the caller: `false` when this
    /// process told it already.
    pub(crate) fn claim(&self, id: &str) -> bool {
        let mut told = crate::sync::lock(&self.0.told);
        if !told.ids.insert(id.to_owned()) {
            return false;
        }
        told.order.push_back(id.to_owned());
        if told.order.len() > REMEMBERED
            && let Some(oldest) = told.order.pop_front()
        {
            told.ids.remove(&oldest);
        }
        true
    }

    /// How many notices are in flight.
    pub(crate) fn pending(&self) -> usize {
        self.0.pending.load(Ordering::Acquire)
    }

    /// Resolves once the process is stopping: a notice waiting for its
    /// next attempt makes it now, and it is its last.
    pub(crate) async fn closing(&self) {
        let mut closing = self.0.closing.subscribe();
        let _ = closing.wait_for(|closing| *closing).await;
    }

    /// Tells every notice in flight to make its last attempt now, waits
    /// at most `within` for them, and logs the ones still unsent.
    pub(crate) async fn settle(&self, within: Duration) {
        self.0.closing.send_replace(true);
        let settled = async {
            loop {
                let done = self.0.done.notified();
                if self.pending() == 0 {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(within, settled).await.is_err() {
            let dropped = self.pending();
            crate::telemetry::metrics::metrics().webhooks.add(
                u64::try_from(dropped).unwrap_or(u64::MAX),
                &[opentelemetry::KeyValue::new("outcome", "given_up")],
            );
            tracing::warn!(
                dropped,
                "webhook notices still unsent are dropped as the process stops"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settling_waits_for_what_is_in_flight_and_tells_it_to_hurry() {
        let outbox = Outbox::default();
        let entry = outbox.enter();
        assert_eq!(outbox.pending(), 1);
        let waiting = outbox.clone();
        let delivery = tokio::spawn(async move {
            // A notice waiting an hour for its next attempt.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(3600)) => false,
                () = waiting.closing() => {
                    drop(entry);
                    true
                }
            }
        });
        outbox.settle(Duration::from_secs(30)).await;
        assert!(delivery.await.expect("joined"), "told to hurry");
        assert_eq!(outbox.pending(), 0);
    }

    #[test]
    fn a_notice_is_claimed_once_and_old_ids_are_forgotten() {
        let outbox = Outbox::default();
        assert!(outbox.claim("msg_a"));
        assert!(!outbox.claim("msg_a"));
        for n in 0..REMEMBERED {
            assert!(outbox.claim(&format!("msg_{n}")));
        }
        // msg_a is the oldest, and was forgotten to keep the memory bounded.
        assert!(outbox.claim("msg_a"));
        assert!(!outbox.claim(&format!("msg_{}", REMEMBERED - 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn settling_gives_up_after_its_bound() {
        let outbox = Outbox::default();
        let _stuck = outbox.enter();
        outbox.settle(Duration::from_secs(5)).await;
        assert_eq!(outbox.pending(), 1);
    }
}
