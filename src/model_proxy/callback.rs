//! The model proxy's last word on a detached turn, on a serverless door:
//! once the process it watches (the turn's wrapper) has ended and its final
//! tally is written, it tells the server that the turn ended, so that the
//! server, which has nothing alive at the end, tells the run's webhook.
//!
//! It runs as root (see [`super::in_sandbox`]): the agent cannot read its
//! token, nor stand in for it. The token names this one run; the server
//! reads how the turn ended from the run's own log. The call is retried
//! until the server answers 2xx (the notice went out) or refuses it for
//! good (a 4xx, but 408, 409 and 429), for at most [`CALL_FOR`]: the
//! sandbox may end before that, and the call with it.

use std::time::Duration;

/// The server's `/runs/{id}/ended?turn=N`.
pub(crate) const URL_VARIABLE: &str = "SANDSTORM_PROXY_CALLBACK_URL";
/// The run's call-back token.
pub(crate) const TOKEN_VARIABLE: &str = "SANDSTORM_PROXY_CALLBACK_TOKEN";

/// How long the proxy keeps calling.
pub(crate) const CALL_FOR: Duration = Duration::from_secs(15 * 60);
/// How long one call may take: the server reads the run's log and makes
/// the notice's first attempt before it answers.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The waits between calls, the last repeated.
const WAITS: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// The call to make, read from the proxy's environment.
pub(crate) struct Callback {
    url: reqwest::Url,
    token: String,
}

impl Callback {
    /// The call the environment asks for, if any.
    ///
    /// # Errors
    /// A URL that does not parse, or one of the two variables without the
    /// other.
    pub(crate) fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Callback>, String> {
        match (get(URL_VARIABLE), get(TOKEN_VARIABLE)) {
            (None, None) => Ok(None),
            (Some(url), Some(token)) => {
                let url = reqwest::Url::parse(&url)
                    .map_err(|e| format!("{URL_VARIABLE}: not a URL: {e}"))?;
                Ok(Some(Callback { url, token }))
            }
            _ => Err(format!(
                "{URL_VARIABLE} and {TOKEN_VARIABLE} go together; one is missing"
            )),
        }
    }

    /// Calls until the server has it, as the module doc says; `true` when
    /// it answered 2xx.
    pub(crate) async fn call(&self) -> bool {
        // The sandbox's own way out: its proxy settings apply, as to any
        // of its processes.
        let client = match reqwest::Client::builder().timeout(CALL_TIMEOUT).build() {
            Ok(client) => client,
            Err(e) => {
                eprintln!("sandstorm-model-proxy: no client for the call-back: {e}");
                return false;
            }
        };
        let until = tokio::time::Instant::now() + CALL_FOR;
        let mut waits = WAITS.iter().copied().chain(std::iter::repeat(WAITS[5]));
        loop {
            let answer = client
                .post(self.url.clone())
                .bearer_auth(&self.token)
                .send()
                .await;
            let again = match answer {
                Ok(answer) if answer.status().is_success() => return true,
                Ok(answer) => {
                    let status = answer.status();
                    eprintln!("sandstorm-model-proxy: the call-back was answered {status}");
                    status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 429)
                }
                Err(e) => {
                    eprintln!(
                        "sandstorm-model-proxy: the call-back got no answer: {}",
                        e.without_url()
                    );
                    true
                }
            };
            let wait = waits.next().unwrap_or(WAITS[5]);
            if !again || tokio::time::Instant::now() + wait > until {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_call_is_read_from_the_environment_whole_or_not_at_all() {
        assert!(Callback::from_env(env(&[])).expect("read").is_none());
        assert!(
            Callback::from_env(env(&[
                (URL_VARIABLE, "http://s/runs/r/ended"),
                (TOKEN_VARIABLE, "t")
            ]))
            .expect("read")
            .is_some()
        );
        let error = Callback::from_env(env(&[(URL_VARIABLE, "http://s/")])).err();
        assert!(error.is_some_and(|e| e.contains(TOKEN_VARIABLE)));
        assert!(
            Callback::from_env(env(&[(URL_VARIABLE, "no url"), (TOKEN_VARIABLE, "t")])).is_err()
        );
    }

    /// A server that answers the call with each of `answers`, then 200.
    async fn server(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = got.clone();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let kept = kept.clone();
            let answers = answers.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                kept.lock().expect("lock").push(auth);
                let status = answers.lock().expect("lock").next().unwrap_or(200);
                StatusCode::from_u16(status).expect("a status")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/runs/r/ended?turn=1"), got)
    }

    fn callback(url: &str) -> Callback {
        Callback::from_env(env(&[(URL_VARIABLE, url), (TOKEN_VARIABLE, "tok")]))
            .expect("read")
            .expect("a call")
    }

    #[tokio::test]
    async fn the_call_is_made_again_until_the_server_has_it() {
        let (url, got) = server(vec![503, 409]).await;
        assert!(callback(&url).call().await);
        let got = got.lock().expect("lock").clone();
        assert_eq!(got, ["Bearer tok", "Bearer tok", "Bearer tok"]);
    }

    #[tokio::test]
    async fn a_refusal_is_final() {
        let (url, got) = server(vec![401]).await;
        assert!(!callback(&url).call().await);
        assert_eq!(got.lock().expect("lock").len(), 1);
    }
}
