//! A plain OTLP/HTTP receiver on loopback, for what Arize Phoenix does not
//! take (metrics) and for when an export arrived: it accepts the
//! `http/json` encoding of the OTLP spec (`POST /v1/traces`,
//! `POST /v1/metrics`, `POST /v1/logs`), keeps each request's body and the instant it came,
//! and answers `200 {}` as a collector does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;

/// One export request.
#[derive(Debug, Clone)]
pub struct Export {
    pub signal: &'static str,
    pub at: Instant,
    pub body: Value,
}

#[derive(Clone, Default)]
pub struct Receiver {
    exports: Arc<Mutex<Vec<Export>>>,
    pub url: String,
}

impl Receiver {
    /// Listens on a loopback port the system picks, until the test ends.
    pub async fn start() -> Receiver {
        let exports: Arc<Mutex<Vec<Export>>> = Arc::default();
        let keep = |signal: &'static str| {
            move |State(exports): State<Arc<Mutex<Vec<Export>>>>, body: Bytes| async move {
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Ok(mut exports) = exports.lock() {
                    exports.push(Export {
                        signal,
                        at: Instant::now(),
                        body,
                    });
                }
                axum::Json(serde_json::json!({}))
            }
        };
        let router = Router::new()
            .route("/v1/traces", post(keep("traces")))
            .route("/v1/metrics", post(keep("metrics")))
            .route("/v1/logs", post(keep("logs")))
            .with_state(exports.clone());
        let url = super::http::serve_router(router).await;
        Receiver { exports, url }
    }

    pub fn exports(&self) -> Vec<Export> {
        self.exports.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Every span received so far, flattened: `(arrived, span)`.
    pub fn spans(&self) -> Vec<(Instant, Value)> {
        self.exports()
            .into_iter()
            .filter(|e| e.signal == "traces")
            .flat_map(|e| {
                let at = e.at;
                e.body["resourceSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
                    .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
                    .map(move |span| (at, span))
            })
            .collect()
    }

    /// Every metric received so far, one per export that carried it, as
    /// OTLP/JSON (`name`, and `sum`, `histogram` or `gauge` with its
    /// `dataPoints`).
    pub fn metrics(&self) -> Vec<Value> {
        self.exports()
            .into_iter()
            .filter(|e| e.signal == "metrics")
            .flat_map(|e| {
                e.body["resourceMetrics"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|r| r["scopeMetrics"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["metrics"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The names of every metric received so far.
    pub fn metric_names(&self) -> Vec<String> {
        self.metrics()
            .into_iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits, at most `within`, until `done` holds for what arrived.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&Receiver) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done(self)
    }
}

/// An attribute of an OTLP/JSON span, as JSON (`stringValue`, `intValue`
/// as a string, `doubleValue`, `boolValue`).
pub fn attribute(span: &Value, key: &str) -> Option<Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let value = &a["value"];
            ["stringValue", "intValue", "doubleValue", "boolValue"]
                .iter()
                .find_map(|k| value.get(*k).cloned())
                .unwrap_or(Value::Null)
        })
}
