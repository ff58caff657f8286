//! Completion webhooks from the receiving end: a receiver on loopback that
//! answers with the statuses a test scripts and keeps what it got, and the
//! official Standard Webhooks verifier (`standardwebhooks` from PyPI, in
//! `.venv`) to hold each POST's signature to.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use super::tools::tool;

/// The secret the tests' servers sign with (`SANDSTORM_WEBHOOK_SECRET`),
/// as Standard Webhooks writes one: 32 bytes, base64, after `whsec_`.
pub const SECRET: &str = "whsec_c2FuZHN0b3JtLXRlc3Qtd2ViaG9vay1zZWNyZXQtMzI=";
/// The pinned verifier, as in tests/python/requirements.txt.
const STANDARDWEBHOOKS_PIP: &str = "standardwebhooks==1.3.0";

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// Its body, as sent.
    pub body: Bytes,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A receiver on `127.0.0.1`, for as long as it lives.
pub struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers its first POSTs with `answers`, in order, and every later
    /// one with 200.
    pub async fn start(answers: Vec<u16>) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let kept = got.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let kept = kept.clone();
            let answers = answers.clone();
            async move {
                let answered = answers.lock().expect("lock").next().unwrap_or(200);
                let headers = headers
                    .iter()
                    .map(|(name, value)| {
                        (
                            name.as_str().to_owned(),
                            String::from_utf8_lossy(value.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                kept.lock().expect("lock").push(Received {
                    headers,
                    body,
                    answered,
                });
                StatusCode::from_u16(answered).expect("a status")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let address = listener.local_addr().expect("the receiver's address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{address}/hooks/run-ended?token=receiver-token"),
            got,
            server,
        }
    }

    /// Where to send: a path and a query with a token in it, as many
    /// receivers' URLs have.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What it got so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until it got `count` POSTs (failing the test after `within`),
    /// then what it got.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let waited = tokio::time::timeout(within, async {
            loop {
                if self.got.lock().expect("lock").len() >= count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let got = self.received();
        assert!(
            waited.is_ok(),
            "the receiver got {} POSTs of {count} within {within:?}: {got:?}",
            got.len()
        );
        got
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Checks `received` with the official verifier under `secret`: the
/// verified body, or why the verifier refused it.
pub async fn verify(secret: &str, received: &Received) -> Result<Value, String> {
    let python = tool("python3", STANDARDWEBHOOKS_PIP);
    let script = "import sys, json, base64\n\
                  from standardwebhooks.webhooks import Webhook\n\
                  given = json.load(sys.stdin)\n\
                  body = base64.b64decode(given['body'])\n\
                  try:\n\
                  \x20   print(json.dumps(Webhook(given['secret']).verify(body, given['headers'])))\n\
                  except Exception as e:\n\
                  \x20   print(f'{type(e).__name__}: {e}', file=sys.stderr)\n\
                  \x20   sys.exit(1)\n";
    let given = json!({
        "secret": secret,
        "headers": received.headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&received.body),
    });
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the verifier");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(given.to_string().as_bytes())
        .await
        .expect("write to the verifier");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the verifier answers within a minute")
        .expect("the verifier ran");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("the verifier prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}
