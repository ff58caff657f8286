//! Each trigger's two limits: runs started per minute, and runs going at
//! once. Past either, a webhook gets 429 and a cron fire is skipped, so a
//! flood of calls (a retrying sender, a loop between two systems) cannot
//! start a flood of sandboxes.
//!
//! The counts are this server's. `ds serve` is one server; on Lambda and
//! Vercel each warm instance counts its own, so the docs tell operators to
//! cap the function's concurrency as well.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The window the rate counts over.
const WINDOW: Duration = Duration::from_secs(60);

/// Why a start was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `limit` runs started in the last minute; the next may start after
    /// `retry_after`.
    Rate { limit: u32, retry_after: Duration },
    /// `limit` runs are still going.
    Concurrency { limit: u32 },
}

/// The counts of every trigger, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limiter {
    counts: Arc<Mutex<BTreeMap<String, Counts>>>,
}

#[derive(Debug, Default)]
struct Counts {
    /// When each run of the last minute started, oldest first.
    started: VecDeque<Instant>,
    /// How many of its runs are going.
    going: u32,
}

/// A run of a trigger that is going: while it is held, it counts against
/// the trigger's concurrency.
#[derive(Debug)]
pub(crate) struct Going {
    limiter: Limiter,
    name: String,
}

impl Limiter {
    /// Takes a start for trigger `name` at `now`, if both limits allow it.
    pub(crate) fn start(
        &self,
        name: &str,
        per_minute: u32,
        concurrent: u32,
        now: Instant,
    ) -> Result<Going, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let counts = counts.entry(name.to_owned()).or_default();
        while counts
            .started
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= WINDOW)
        {
            counts.started.pop_front();
        }
        if counts.going >= concurrent {
            return Err(Refused::Concurrency { limit: concurrent });
        }
        if counts.started.len() >= per_minute as usize {
            let oldest = counts.started.front().copied().unwrap_or(now);
            let retry_after = WINDOW.saturating_sub(now.saturating_duration_since(oldest));
            return Err(Refused::Rate {
                limit: per_minute,
                retry_after,
            });
        }
        counts.started.push_back(now);
        counts.going += 1;
        Ok(Going {
            limiter: self.clone(),
            name: name.to_owned(),
        })
    }

    /// How many runs of trigger `name` are going.
    pub(crate) fn going(&self, name: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(name).map_or(0, |c| c.going)
    }
}

impl Drop for Going {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = counts.get_mut(&self.name) {
            counts.going = counts.going.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_the_last_minute() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let mut going = Vec::new();
        for i in 0..3 {
            let run = limiter
                .start("t", 3, 10, t0 + Duration::from_secs(i))
                .expect("within the rate");
            going.push(run);
        }
        assert_eq!(
            limiter
                .start("t", 3, 10, t0 + Duration::from_secs(10))
                .expect_err("a fourth in the minute"),
            Refused::Rate {
                limit: 3,
                retry_after: Duration::from_secs(50)
            }
        );
        // Another trigger has its own count.
        assert!(limiter.start("u", 3, 10, t0).is_ok());
        // A minute after the first, one more may start.
        assert!(limiter.start("t", 3, 10, t0 + WINDOW).is_ok());
    }

    #[test]
    fn runs_going_count_until_they_end() {
        let limiter = Limiter::default();
        let now = Instant::now();
        let first = limiter.start("t", 10, 2, now).expect("first");
        let _second = limiter.start("t", 10, 2, now).expect("second");
        assert_eq!(
            limiter.start("t", 10, 2, now).expect_err("a third at once"),
            Refused::Concurrency { limit: 2 }
        );
        assert_eq!(limiter.going("t"), 2);
        drop(first);
        assert_eq!(limiter.going("t"), 1);
        assert!(limiter.start("t", 10, 2, now).is_ok());
    }
}
