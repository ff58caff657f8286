//! `GET /health`: the server is up; with `?deep=true`, also whether a run
//! could start: the keys resolve (their values are never shown) and the
//! sandbox provider answers.
//!
//! Deep checks reach the key store and the provider, so they need the
//! bearer token when auth is on; the plain check stays open for load
//! balancers. Like Python Sandstorm 0.9.2, a failing check answers 200
//! with `"status": "degraded"`: the server itself is up, and the reason
//! says what is not.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::keys;
use crate::sandbox::{SandboxError, SandboxProvider};
use crate::settings::Settings;

/// How long the provider has to answer before it counts as unreachable.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);
/// A metadata pair no sandbox has: listing by it asks the provider for
/// nothing but an answer.
const PROBE: (&str, &str) = ("sandstorm_health_probe", "1");

/// The answer.
#[derive(Debug, Serialize)]
pub(crate) struct Health {
    /// `ok`, or `degraded` when a deep check failed.
    pub status: &'static str,
    /// The server's version.
    pub version: &'static str,
    /// Each deep check, by name: passed or not.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<&'static str, bool>,
    /// Why the failed checks failed, each `name: why`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The plain check.
pub(crate) fn shallow() -> Health {
    Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        checks: BTreeMap::new(),
        reason: None,
    }
}

/// The deep check: the keys a run without keys of its own would use, and
/// the sandbox provider, with the sandbox key among them.
pub(crate) async fn deep(settings: &Settings, provider: &dyn SandboxProvider) -> Health {
    let mut checks = BTreeMap::new();
    let mut reasons = Vec::new();
    let resolved = keys::resolve(
        &crate::request::RequestKeys::default(),
        &settings.keys,
        settings.key_source.as_deref(),
        settings.sandbox.provider.credential,
        (settings.sandbox.provider.keeps_cloud_credentials)(&settings.sandbox.options),
    )
    .await;
    let credential = match resolved {
        Ok(keys) => {
            checks.insert("keys", true);
            keys.sandbox
        }
        Err(e) => {
            checks.insert("keys", false);
            reasons.push(format!("keys: {e}"));
            None
        }
    };
    if let Err(e) = &settings.config {
        checks.insert("config", false);
        reasons.push(format!("config: sandstorm.json is invalid: {e}"));
    } else {
        checks.insert("config", true);
    }
    let probe = BTreeMap::from([(PROBE.0.to_owned(), PROBE.1.to_owned())]);
    let name = provider.name();
    match tokio::time::timeout(PROVIDER_TIMEOUT, provider.list(&probe, credential)).await {
        // A provider with no API of its own to list (the local one) has
        // nothing to reach: it was checked when the server built it.
        Ok(Ok(_) | Err(SandboxError::Unsupported { .. })) => {
            checks.insert("sandbox", true);
        }
        Ok(Err(e)) => {
            checks.insert("sandbox", false);
            reasons.push(format!("sandbox: {name} did not answer as it should: {e}"));
        }
        Err(_) => {
            checks.insert("sandbox", false);
            reasons.push(format!(
                "sandbox: {name} did not answer within {} s",
                PROVIDER_TIMEOUT.as_secs()
            ));
        }
    }
    Health {
        status: if reasons.is_empty() { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        checks,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}
