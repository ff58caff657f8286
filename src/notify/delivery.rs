//! Sending one notice until its receiver takes it: a POST per attempt,
//! signed afresh, and the next attempt after the schedule's delay, until
//! one is answered 2xx or the schedule is spent.
//!
//! The schedule (`SANDSTORM_WEBHOOK_RETRY_SCHEDULE`) is the waits between
//! attempts: by default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 6 h, so the
//! last of eight attempts comes just under 24 hours after the first. Each
//! wait is lengthened by up to a tenth, at random, so that the notices of
//! a receiver's outage do not all come back at once. Any answer but a 2xx
//! is a failure (as Standard Webhooks' senders count it: a 4xx may be a
//! receiver's deploy in progress), as is no answer within
//! [`ATTEMPT_TIMEOUT`]; a redirect is not followed (the receiver is the URL
//! the run was given, nowhere else).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::Url;
use tracing::{info, warn};

use super::address::AddressPolicy;
use super::outbox::{Entry, Outbox};
use super::signing::WebhookSecret;

/// How long one attempt may take, connection to answer.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// The default delays between attempts.
pub(crate) const DEFAULT_DELAYS: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(6 * 3600),
];

/// Where one run's notices go, signed with what, retried how.
#[derive(Clone)]
pub(crate) struct Target {
    /// The receiver.
    pub url: Url,
    /// The key that signs them.
    pub secret: WebhookSecret,
    /// The delays between attempts.
    pub delays: Arc<[Duration]>,
}

impl std::fmt::Debug for Target {
    // The URL's path and query may hold a token (many receivers' do):
    // shown by its origin only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &shown(&self.url))
            .field("secret", &self.secret)
            .field("delays", &self.delays)
            .finish()
    }
}

/// A URL as logs show it: its origin, not its path or query.
pub(crate) fn shown(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The HTTP client notices go out with.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    client: reqwest::Client,
    policy: AddressPolicy,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The URL's host is an address notices may not go to.
    #[error("the receiver's address is {0}")]
    Refused(&'static str),
    /// The receiver answered, but not with a 2xx.
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
    /// No answer: the connection failed or the attempt timed out.
    #[error("no answer: {0}")]
    Unreachable(String),
}

impl Sender {
    /// A client that sends only where `policy` allows, through no proxy
    /// (a proxy would make the connection, and the policy would not see
    /// where to), and follows no redirect.
    ///
    /// # Errors
    /// When the TLS stack cannot be set up.
    pub(crate) fn new(policy: AddressPolicy) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .dns_resolver(policy.resolver())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("sandstorm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the webhook client: {e}"))?;
        Ok(Sender { client, policy })
    }

    /// One attempt: `body` as notice `id`, signed now.
    pub(crate) async fn attempt(
        &self,
        target: &Target,
        id: &str,
        body: &Bytes,
    ) -> Result<(), AttemptError> {
        // A host written as an address is connected to without the
        // resolver, so it is checked here.
        if let Some(ip) = target
            .url
            .host_str()
            .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
            && let Some(why) = self.policy.refuses(ip)
        {
            return Err(AttemptError::Refused(why));
        }
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = target.secret.sign(id, timestamp, body);
        let answer = self
            .client
            .post(target.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await
            // reqwest's error shows the URL whole; the chain's source says
            // why without it.
            .map_err(|e| AttemptError::Unreachable(without_url(e)))?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status(answer.status()))
        }
    }
}

/// A reqwest error's reason, without the URL it names.
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One notice on its way: its body, fixed at the first attempt, how many
/// attempts it has had, and its place in the process's outbox.
#[derive(Debug)]
pub(crate) struct Delivery {
    sender: Sender,
    target: Target,
    id: String,
    body: Bytes,
    attempts: usize,
    outbox: Outbox,
    _entry: Entry,
}

impl Delivery {
    /// A delivery of `body` as notice `id` to `target`, counted in
    /// `outbox` until it is done.
    pub(crate) fn new(
        sender: Sender,
        target: Target,
        id: String,
        body: Bytes,
        outbox: &Outbox,
    ) -> Self {
        Delivery {
            sender,
            target,
            id,
            body,
            attempts: 0,
            outbox: outbox.clone(),
            _entry: outbox.enter(),
        }
    }

    /// Makes the next attempt; `true` when the receiver took the notice.
    pub(crate) async fn try_once(&mut self) -> bool {
        self.attempts += 1;
        let attempt = self.attempts;
        let outcome = self
            .sender
            .attempt(&self.target, &self.id, &self.body)
            .await;
        let counted = if outcome.is_ok() {
            "delivered"
        } else {
            "failed"
        };
        crate::telemetry::metrics::metrics()
            .webhooks
            .add(1, &[opentelemetry::KeyValue::new("outcome", counted)]);
        match outcome {
            Ok(()) => {
                info!(receiver = %shown(&self.target.url), notice = %self.id, attempt, "webhook delivered");
                true
            }
            Err(e) => {
                let retries_left = self.target.delays.len().saturating_sub(attempt - 1);
                warn!(receiver = %shown(&self.target.url), notice = %self.id, attempt, retries_left, error = %e, "webhook not delivered");
                false
            }
        }
    }

    /// Attempts until one is taken or the schedule is spent, waiting its
    /// delay before each; `true` when the notice was taken. When the
    /// process stops meanwhile, the next attempt is made at once, and is
    /// the last.
    pub(crate) async fn finish(mut self) -> bool {
        loop {
            if self.attempts > 0 {
                let Some(delay) = self.target.delays.get(self.attempts - 1).copied() else {
                    return self.given_up("every attempt failed");
                };
                let last = tokio::select! {
                    () = tokio::time::sleep(jittered(delay)) => false,
                    () = self.outbox.closing() => true,
                };
                if last {
                    return self.try_once().await || self.given_up("the process is stopping");
                }
            }
            if self.try_once().await {
                return true;
            }
        }
    }

    fn given_up(&self, why: &'static str) -> bool {
        crate::telemetry::metrics::metrics()
            .webhooks
            .add(1, &[opentelemetry::KeyValue::new("outcome", "given_up")]);
        warn!(receiver = %shown(&self.target.url), notice = %self.id, attempts = self.attempts, why, "webhook given up");
        false
    }
}

/// `delay`, and up to a tenth more at random.
fn jittered(delay: Duration) -> Duration {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut byte = [0u8; 1];
    let fraction = match aws_lc_rs::rand::SystemRandom::new().fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / f64::from(u8::MAX),
        Err(_) => 0.0,
    };
    delay + delay.mul_f64(fraction / 10.0)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::routing::post;
    use base64::Engine as _;

    use super::*;

    use super::super::test_receiver::receiver;

    fn target(url: Url, delays: &[u64]) -> Target {
        let secret = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        Target {
            url,
            secret: WebhookSecret::parse(&secret).expect("secret"),
            delays: delays.iter().map(|&ms| Duration::from_millis(ms)).collect(),
        }
    }

    fn sender(allow_private: bool) -> Sender {
        Sender::new(AddressPolicy { allow_private }).expect("client")
    }

    #[tokio::test]
    async fn a_receiver_that_fails_twice_gets_the_third_attempt() {
        let (url, got) = receiver(vec![500, 503]).await;
        let target = target(url, &[10, 10]);
        let delivery = Delivery::new(
            sender(true),
            target.clone(),
            "msg_1".into(),
            Bytes::from_static(b"{}"),
            &Outbox::default(),
        );
        assert!(delivery.finish().await);
        let got = got.lock().expect("lock");
        assert_eq!(got.len(), 3);
        for (headers, body) in got.iter() {
            assert_eq!(headers["webhook-id"], "msg_1");
            assert_eq!(headers["content-type"], "application/json");
            let timestamp: u64 = headers["webhook-timestamp"]
                .to_str()
                .expect("text")
                .parse()
                .expect("seconds");
            let expected = target.secret.sign("msg_1", timestamp, body);
            assert_eq!(headers["webhook-signature"], expected.as_str());
        }
    }

    #[tokio::test]
    async fn a_spent_schedule_gives_up() {
        let (url, got) = receiver(vec![500, 500, 500, 500]).await;
        let outbox = Outbox::default();
        let delivery = Delivery::new(
            sender(true),
            target(url, &[5, 5]),
            "m".into(),
            Bytes::new(),
            &outbox,
        );
        assert_eq!(outbox.pending(), 1);
        assert!(!delivery.finish().await);
        assert_eq!(got.lock().expect("lock").len(), 3);
        assert_eq!(outbox.pending(), 0);
    }

    #[tokio::test]
    async fn a_stopping_process_makes_the_next_attempt_at_once() {
        let (url, got) = receiver(vec![500]).await;
        let outbox = Outbox::default();
        // The next attempt would be an hour away.
        let delivery = Delivery::new(
            sender(true),
            target(url, &[3_600_000]),
            "m".into(),
            Bytes::new(),
            &outbox,
        );
        let delivered = tokio::spawn(delivery.finish());
        while got.lock().expect("lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            outbox.settle(Duration::from_secs(20)),
        )
        .await
        .expect("settled well within the hour");
        assert!(delivered.await.expect("joined"));
        assert_eq!(got.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn a_refused_address_is_never_contacted() {
        let (url, got) = receiver(vec![]).await;
        let closed = sender(false);
        let error = closed
            .attempt(&target(url.clone(), &[]), "m", &Bytes::new())
            .await
            .expect_err("refused");
        assert!(matches!(error, AttemptError::Refused(_)), "{error}");
        // By name, through the resolver.
        let mut by_name = url.clone();
        by_name.set_host(Some("localhost")).expect("host");
        let error = closed
            .attempt(&target(by_name, &[]), "m", &Bytes::new())
            .await
            .expect_err("refused");
        assert!(error.to_string().contains("resolves only to"), "{error}");
        assert!(!error.to_string().contains("token=abc"), "{error}");
        assert!(got.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_redirect_is_a_failure_not_a_detour() {
        let (elsewhere, got) = receiver(vec![]).await;
        let app = axum::Router::new().route(
            "/hook",
            post(move || {
                let to = elsewhere.to_string();
                async move {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(http::header::LOCATION, to)],
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = Url::parse(&format!("http://{address}/hook")).expect("url");
        let error = sender(true)
            .attempt(&target(url, &[]), "m", &Bytes::new())
            .await
            .expect_err("a redirect");
        assert!(matches!(error, AttemptError::Status(s) if s == StatusCode::TEMPORARY_REDIRECT));
        assert!(got.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_wait_is_lengthened_by_a_tenth_at_most() {
        let delay = Duration::from_secs(100);
        let waits: Vec<Duration> = (0..50).map(|_| jittered(delay)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= delay && *w <= Duration::from_secs(110)),
            "{waits:?}"
        );
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }

    #[test]
    fn the_default_schedule_ends_within_a_day() {
        let total: Duration = DEFAULT_DELAYS.iter().map(|d| d.mul_f64(1.1)).sum();
        assert!(total < Duration::from_secs(26 * 3600), "{total:?}");
        let total: Duration = DEFAULT_DELAYS.iter().sum();
        assert!(total < Duration::from_secs(24 * 3600), "{total:?}");
        assert!(total > Duration::from_secs(23 * 3600), "{total:?}");
    }

    #[test]
    fn a_target_s_debug_shows_no_path_or_secret() {
        let url = Url::parse("https://hooks.example.com/services/T0/B0/XXXX?key=k").expect("url");
        let shown = format!("{:?}", target(url, &[]));
        assert!(shown.contains("https://hooks.example.com"), "{shown}");
        assert!(
            !shown.contains("XXXX") && !shown.contains("key=k"),
            "{shown}"
        );
    }
}
