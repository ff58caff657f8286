//! A webhook receiver on loopback: it keeps every request that arrives and
//! answers each with the next status of its script (200 once the script is
//! used up), so a test can make a delivery fail and watch it come again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// A header's value, or "" when it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "a delivery that is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// The statuses of the next answers, first first.
    script: Vec<u16>,
}

/// The receiver; it serves until the test's runtime ends.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// A receiver that answers 200 to everything.
    pub async fn start() -> Receiver {
        Receiver::answering(&[]).await
    }

    /// A receiver whose first answers have `statuses`, then 200.
    pub async fn answering(statuses: &[u16]) -> Receiver {
        let state = Arc::new(Mutex::new(State {
            received: Vec::new(),
            script: statuses.to_vec(),
        }));
        let kept = state.clone();
        let router = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let state = kept.clone();
                async move {
                    let mut state = state.lock().expect("receiver state");
                    state.received.push(Received {
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                    let status = if state.script.is_empty() {
                        200
                    } else {
                        state.script.remove(0)
                    };
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
                }
            },
        );
        let url = super::http::serve_router(router).await;
        Receiver { url, state }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").received.clone()
    }

    /// Waits until `wanted` holds of what was received, or fails the test
    /// after `within`; what was received then.
    pub async fn until(
        &self,
        within: Duration,
        what: &str,
        wanted: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if wanted(&received) {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not arrive within {within:?}; received: {:?}",
                received
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bodies received of lifecycle events of type `kind`.
    pub fn events(&self, kind: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.json()["type"] == kind)
            .collect()
    }
}
