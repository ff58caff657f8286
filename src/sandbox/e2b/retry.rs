//! Bounded retries with exponential backoff and jitter.
//!
//! E2B answers 429 and 503 under load and now and then drops a connection;
//! a second try a moment later usually works. The bound matters as much as
//! the retry: a run waits for create, and a client waits for the run.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use super::options::RetryPolicy;
use crate::sandbox::SandboxError;

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry):
    /// `base * 2^(retry-1)` capped at `max_backoff`, then jittered into its
    /// upper half so many clients that failed together do not retry together,
    /// yet none retries immediately.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let ceiling = exp.min(self.max_backoff);
        ceiling / 2 + ceiling.mul_f64(jitter() / 2.0)
    }
}

/// A number in `[0, 1)`, different on every call. `RandomState` is seeded
/// randomly per thread and stepped per instance: enough for jitter, and no
/// dependency on an RNG crate.
fn jitter() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `attempt` until it succeeds, fails in a way `retryable` refuses, or
/// the policy's attempts are used up. Every failure is logged (errors carry
/// no secrets). Running out wraps the last error in
/// [`SandboxError::GaveUp`], so the message says how hard we tried.
pub(crate) async fn with_retries<T, Fut>(
    policy: &RetryPolicy,
    op: &'static str,
    retryable: impl Fn(&SandboxError) -> bool,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, SandboxError>
where
    Fut: Future<Output = Result<T, SandboxError>>,
{
    let attempts = policy.attempts.max(1);
    let mut done = 0;
    loop {
        done += 1;
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if !retryable(&err) {
            tracing::warn!(op, attempt = done, error = %err, "e2b call failed, not retrying");
            return Err(err);
        }
        if done >= attempts {
            tracing::warn!(op, attempt = done, error = %err, "e2b call failed, giving up");
            return Err(if done > 1 {
                SandboxError::GaveUp {
                    attempts: done,
                    last: Box::new(err),
                }
            } else {
                err
            });
        }
        let wait = policy.backoff(done);
        tracing::warn!(op, attempt = done, of = attempts, retry_in = ?wait, error = %err, "e2b call failed, retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
    };

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_ceiling() {
        for _ in 0..100 {
            let first = POLICY.backoff(1);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let second = POLICY.backoff(2);
            assert!((100..=200).contains(&second.as_millis()), "{second:?}");
            let capped = POLICY.backoff(30);
            assert!((150..=300).contains(&capped.as_millis()), "{capped:?}");
        }
    }

    #[test]
    fn jitter_varies() {
        let draws: std::collections::BTreeSet<u64> = (0..20).map(|_| jitter().to_bits()).collect();
        assert!(draws.len() > 1);
    }

    /// The same shape with waits short enough to really sleep through.
    const QUICK: RetryPolicy = RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(4),
    };

    fn server_error() -> SandboxError {
        SandboxError::Status {
            provider: "e2b",
            op: "create",
            status: 500,
            message: "boom".into(),
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out = with_retries(&QUICK, "create", SandboxError::is_transient, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(server_error())
            } else {
                Ok("sbx")
            }
        })
        .await;
        assert_eq!(out.expect("third attempt succeeds"), "sbx");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_bound_and_says_so() {
        let calls = AtomicU32::new(0);
        let err = with_retries(&QUICK, "create", SandboxError::is_transient, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(SandboxError::RateLimited {
                provider: "e2b",
                op: "create",
            })
        })
        .await
        .expect_err("always rate limited");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            err.to_string(),
            "create was rate limited by e2b (HTTP 429); gave up after 3 attempts"
        );
    }

    #[tokio::test]
    async fn does_not_retry_what_cannot_get_better() {
        let calls = AtomicU32::new(0);
        let err = with_retries(&QUICK, "create", SandboxError::is_transient, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(SandboxError::Unauthorized { provider: "e2b" })
        })
        .await
        .expect_err("bad key");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(err, SandboxError::Unauthorized { .. }));
    }
}
