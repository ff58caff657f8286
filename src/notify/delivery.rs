//! Sending one notice until its receiver takes it: a POST per attempt,
//! signed afresh, and the next attempt after the schedule's delay, until
//! one is answered 2xx or the schedule is spent.
//!
//! The schedule (`SANDSTORM_WEBHOOK_RETRY_DELAYS`) is the delays between
//! attempts: by default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 6 h, so the
//! last of eight attempts comes just under 24 hours after the first. Any
//! answer but a 2xx is a failure, as is no answer within
//! [`ATTEMPT_TIMEOUT`]; a redirect is not followed (the receiver is the URL
//! the run was given, nowhere else).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::Url;
use tracing::{info, warn};

use super::address::AddressPolicy;
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

/// One notice on its way: its body, fixed at the first attempt, and how
/// many attempts it has had.
#[derive(Debug)]
pub(crate) struct Delivery {
    sender: Sender,
    target: Target,
    id: String,
    body: Bytes,
    attempts: usize,
}

impl Delivery {
    /// A delivery of `body` as notice `id` to `target`.
    pub(crate) fn new(sender: Sender, target: Target, id: String, body: Bytes) -> Self {
        Delivery {
            sender,
            target,
            id,
            body,
            attempts: 0,
        }
    }

    /// Makes the next attempt; `true` when the receiver took the notice.
    pub(crate) async fn try_once(&mut self) -> bool {
        self.attempts += 1;
        let attempt = self.attempts;
        match self
            .sender
            .attempt(&self.target, &self.id, &self.body)
            .await
        {
            Ok(()) => {
                info!(receiver = %shown(&self.target.url), notice = %self.id, attempt, "webhook delivered");
                true
            }
            Err(e) => {
                let left = self.target.delays.len() + 1 - attempt.min(self.target.delays.len() + 1);
                warn!(receiver = %shown(&self.target.url), notice = %self.id, attempt, attempts_left = left, error = %e, "webhook not delivered");
                false
            }
        }
    }

    /// Attempts until one is taken or the schedule is spent, waiting its
    /// delay before each; `true` when the notice was taken.
    pub(crate) async fn finish(mut self) -> bool {
        loop {
            if self.attempts > 0 {
                let Some(delay) = self.target.delays.get(self.attempts - 1).copied() else {
                    warn!(receiver = %shown(&self.target.url), notice = %self.id, attempts = self.attempts, "webhook given up: every attempt failed");
                    return false;
                };
                tokio::time::sleep(delay).await;
            }
            if self.try_once().await {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use base64::Engine as _;

    use super::*;

    /// A receiver on loopback that answers each POST with the next status
    /// of `answers` (then 200), and keeps what it got.
    async fn receiver(answers: Vec<u16>) -> (Url, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let kept = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let kept = kept.clone();
                let answers = answers.clone();
                async move {
                    kept.lock().expect("lock").push((headers, body));
                    let status = answers.lock().expect("lock").next().unwrap_or(200);
                    StatusCode::from_u16(status).expect("a status")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = Url::parse(&format!("http://{address}/hook?token=abc")).expect("url");
        (url, got)
    }

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
        let delivery = Delivery::new(sender(true), target(url, &[5, 5]), "m".into(), Bytes::new());
        assert!(!delivery.finish().await);
        assert_eq!(got.lock().expect("lock").len(), 3);
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
    fn the_default_schedule_ends_within_a_day() {
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
