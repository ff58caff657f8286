//! Bounded retries, by the rules E2B's own SDKs follow.
//!
//! E2B answers 429 and 503 under load and now and then drops a connection;
//! a second try a moment later usually works. What may be retried, and
//! when, is the server's call first: a `Should-Retry` header decides when
//! present, else 429, 502, 503 and 504 are worth another try, and
//! `Retry-After` says how long to wait. A call that got no answer may have
//! been done, so only calls that are harmless to repeat come here. The
//! bound matters as much as the retry: a run waits for create, and a client
//! waits for the run.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::options::RetryPolicy;
use crate::sandbox::SandboxError;

/// What a failed attempt says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Another attempt cannot help, or the server said not to try one.
    Never,
    /// The server turned the call away for now; try again after our
    /// backoff, or after the wait it named.
    Refused(Option<Duration>),
    /// No answer came: no connection, a dropped one, or a hang. The call
    /// may have been done, which is why only idempotent calls come here.
    Unanswered,
}

/// One failed attempt: the error to report, and whether to try again.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: SandboxError,
    pub(crate) retry: Retry,
}

impl Failure {
    /// A failure no further attempt can mend (a body we cannot read, say).
    pub(crate) fn last(error: SandboxError) -> Self {
        Failure {
            error,
            retry: Retry::Never,
        }
    }

    /// A failed answer, judged as the SDKs judge it: `Should-Retry`, when
    /// present, decides (`true` retries, anything else does not); without
    /// it 429, 502, 503 and 504 are retried. `Retry-After` in seconds sets
    /// the wait.
    pub(crate) fn answer(error: SandboxError, status: StatusCode, headers: &HeaderMap) -> Self {
        let retry = match headers.get("should-retry").map(|v| v.to_str()) {
            Some(Ok(value)) if value.trim().eq_ignore_ascii_case("true") => true,
            Some(_) => false,
            None => matches!(status.as_u16(), 429 | 502 | 503 | 504),
        };
        let retry = if retry {
            Retry::Refused(retry_after(headers))
        } else {
            Retry::Never
        };
        Failure { error, retry }
    }
}

/// A failure without an answer: a connection never made, a connection
/// dropped, or a call that outlived its limit.
impl From<SandboxError> for Failure {
    fn from(error: SandboxError) -> Self {
        let retry = match &error {
            SandboxError::Transport { .. } | SandboxError::TimedOut { .. } => Retry::Unanswered,
            _ => Retry::Never,
        };
        Failure { error, retry }
    }
}

/// `Retry-After` as delta-seconds, the form E2B sends. An HTTP date, or a
/// number no one would wait for, is ignored and our own backoff used.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().map(Duration::from_secs)
}

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

/// Runs `attempt` until it succeeds, fails in a way that another attempt
/// cannot mend (see [`Retry`]), or the policy runs out: its attempts, or
/// its budget of time spent waiting between them (a `Retry-After` past what
/// is left of the budget ends the retries at once rather than sleeping for
/// nothing). Every failure is logged (errors carry no secrets). Running out
/// wraps the last error in [`SandboxError::GaveUp`], so the message says
/// how hard we tried.
///
/// Only for calls that are harmless to do twice, since an attempt that got
/// no answer may have been done: create (every attempt carries one
/// `Idempotency-Key`), set-timeout, kill, connect, pause and list. A
/// process start is not, and is never retried.
pub(crate) async fn with_retries<T, Fut>(
    policy: &RetryPolicy,
    op: &'static str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, SandboxError>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    let attempts = policy.attempts.max(1);
    let mut done = 0;
    let mut waited = Duration::ZERO;
    loop {
        done += 1;
        let Failure { error, retry } = match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        let wait = match retry {
            Retry::Never => None,
            Retry::Unanswered | Retry::Refused(None) => Some(policy.backoff(done)),
            Retry::Refused(Some(after)) => Some(after),
        };
        let Some(wait) = wait else {
            tracing::warn!(op, attempt = done, error = %error, "e2b call failed, not retrying");
            return Err(error);
        };
        if done >= attempts || waited + wait > policy.budget {
            tracing::warn!(op, attempt = done, error = %error, "e2b call failed, giving up");
            return Err(if done > 1 {
                SandboxError::GaveUp {
                    attempts: done,
                    last: Box::new(error),
                }
            } else {
                error
            });
        }
        tracing::warn!(op, attempt = done, of = attempts, retry_in = ?wait, error = %error, "e2b call failed, retrying");
        tokio::time::sleep(wait).await;
        waited += wait;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use reqwest::header::HeaderValue;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
        budget: Duration::from_secs(30),
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

    fn status(code: u16) -> SandboxError {
        SandboxError::Status {
            provider: "e2b",
            op: "create",
            status: code,
            message: "boom".into(),
        }
    }

    fn answered(code: u16, headers: &[(&'static str, &'static str)]) -> Failure {
        let headers = headers
            .iter()
            .map(|(name, value)| {
                (
                    reqwest::header::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect();
        let status_code = StatusCode::from_u16(code).expect("a status code");
        Failure::answer(status(code), status_code, &headers)
    }

    #[test]
    fn only_429_502_503_504_are_retried_without_a_should_retry_header() {
        for code in [429, 502, 503, 504] {
            assert_eq!(answered(code, &[]).retry, Retry::Refused(None), "{code}");
        }
        for code in [400, 401, 404, 409, 422, 500, 501] {
            assert_eq!(answered(code, &[]).retry, Retry::Never, "{code}");
        }
    }

    #[test]
    fn should_retry_decides_when_present() {
        let marked = answered(500, &[("should-retry", "true")]);
        assert_eq!(marked.retry, Retry::Refused(None));
        let refused = answered(503, &[("should-retry", "false")]);
        assert_eq!(refused.retry, Retry::Never);
        let garbled = answered(429, &[("should-retry", "maybe")]);
        assert_eq!(garbled.retry, Retry::Never);
    }

    #[test]
    fn retry_after_in_seconds_sets_the_wait_and_anything_else_is_ignored() {
        let named = answered(429, &[("retry-after", "7")]);
        assert_eq!(named.retry, Retry::Refused(Some(Duration::from_secs(7))));
        for odd in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "-1",
            "1.5",
            "99999999999",
            "",
        ] {
            let header = HeaderMap::from_iter([(
                RETRY_AFTER,
                HeaderValue::from_str(odd).expect("a header value"),
            )]);
            assert_eq!(retry_after(&header), None, "{odd:?}");
        }
    }

    #[test]
    fn no_answer_is_retried_and_a_bad_body_is_not() {
        let dropped = Failure::from(SandboxError::Transport {
            op: "create",
            message: "connection reset".into(),
        });
        assert_eq!(dropped.retry, Retry::Unanswered);
        let hung = Failure::from(SandboxError::TimedOut {
            op: "create",
            after: Duration::from_secs(1),
        });
        assert_eq!(hung.retry, Retry::Unanswered);
        let unreadable = Failure::last(SandboxError::Other {
            op: "create",
            message: "bad json".into(),
        });
        assert_eq!(unreadable.retry, Retry::Never);
    }

    /// E2B's 429 without `Retry-After`, as `Failure::answer` judges it.
    fn rate_limited() -> Failure {
        let limited = SandboxError::RateLimited {
            provider: "e2b",
            op: "create",
        };
        Failure::answer(limited, StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new())
    }

    /// The same shape with waits short enough to really sleep through.
    const QUICK: RetryPolicy = RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(4),
        budget: Duration::from_secs(30),
    };

    #[tokio::test]
    async fn retries_transient_failures_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out = with_retries(&QUICK, "create", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(answered(503, &[]))
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
        let err = with_retries(&QUICK, "create", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(rate_limited())
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
        for failure in [
            || answered(500, &[]),
            || {
                Failure::answer(
                    SandboxError::Unauthorized { provider: "e2b" },
                    StatusCode::UNAUTHORIZED,
                    &HeaderMap::new(),
                )
            },
        ] {
            let calls = AtomicU32::new(0);
            let err = with_retries(&QUICK, "create", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(failure())
            })
            .await
            .expect_err("fails");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{err}");
        }
    }

    /// E2B's `Retry-After` is waited out, not our millisecond backoff.
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_out() {
        let started = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let out = with_retries(&QUICK, "create", || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(answered(429, &[("retry-after", "3")]))
            } else {
                Ok(())
            }
        })
        .await;
        out.expect("the second attempt succeeds");
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    /// A wait past the budget is not slept through: the call fails now.
    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_budget_gives_up_at_once() {
        let started = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let err = with_retries(&QUICK, "create", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(answered(503, &[("retry-after", "3600")]))
        })
        .await
        .expect_err("gives up");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.to_string().contains("HTTP 503"), "{err}");
    }

    /// The default policy rides out a rate limit for about half a minute,
    /// as a burst of creates on a busy account needs; not 1.5 s.
    #[tokio::test(start_paused = true)]
    async fn the_default_policy_keeps_trying_a_rate_limit_for_about_half_a_minute() {
        let policy = RetryPolicy::default();
        let started = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let err = with_retries(&policy, "create", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(rate_limited())
        })
        .await
        .expect_err("always rate limited");
        let spent = started.elapsed();
        assert!(
            spent >= Duration::from_secs(15) && spent <= policy.budget,
            "gave up after {spent:?} and {} attempts",
            calls.load(Ordering::SeqCst)
        );
        assert!(matches!(err.cause(), SandboxError::RateLimited { .. }));
    }
}
