//! E2B cloud sandboxes: the control plane over REST, files and processes
//! over envd. Calls go through one pooled reqwest client; process output
//! streams through a hyper client of their own that reads no further ahead
//! than a small buffer (see `stream_client`).
//!
//! A run costs two round trips before the agent starts: create
//! (`POST /v2/sandboxes`), then one multipart upload carrying every file
//! and the process start whose answer is the output stream, sent at once
//! (see `launch`). The control-plane
//! calls retry with bounded backoff, as the SDKs decide (see `retry`):
//! create is made safe to repeat by an `Idempotency-Key` shared by all its
//! attempts, the others are idempotent. envd's calls do not retry (an
//! upload cut off midway gets one more try), because a run that
//! half-happened is better reported than repeated. Create asks for at most
//! the plan's
//! longest lifetime (`E2B_MAX_TIMEOUT`); a longer run is extended with
//! set-timeout calls while it lasts. With `E2B_DEBUG=true` there is nothing
//! to create or kill: the local stack's one sandbox is used, as the SDKs do.
//! A sandbox outlives its run when asked to: it can be paused, found again
//! by its metadata (`list`) and reattached (`connect`, which resumes it),
//! from any process holding the key. The wire format is E2B's own, as
//! specified in the `spec/` folder of the e2b-dev/E2B repository;
//! `tests/e2b_client.rs` pins what this client sends and reads, and
//! `tests/e2b_parity.rs` holds each call to what the official SDKs send.
//!
//! ```no_run
//! # async fn run() -> Result<(), sandstorm::sandbox::SandboxError> {
//! use sandstorm::sandbox::{ProcessSpec, SandboxProvider, SandboxSpec};
//! use sandstorm::sandbox::e2b::{E2bOptions, E2bProvider};
//!
//! let provider = E2bProvider::new(E2bOptions::local("https://api.e2b.app", "e2b_..."))?;
//! let sandbox = provider.create(SandboxSpec::default()).await?;
//! let output = sandbox
//!     .start(ProcessSpec { cmd: "node".into(), args: vec!["--version".into()], ..Default::default() })
//!     .await?;
//! # drop(output);
//! sandbox.destroy().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use e2b_wire::control::SandboxState;

use super::provider::{Credential, ProviderDeclaration, ProviderSettings};
use super::{
    ProcessRef, ProcessSpec, ProcessStream, Sandbox, SandboxError, SandboxFile, SandboxProvider,
    SandboxSpec, SandboxSummary,
};
use crate::secret::Secret;

mod control;
mod envd;
mod http;
mod keyless;
mod launch;
mod options;
#[cfg(test)]
mod padded_download_tests;
mod process;
mod process_frames;
mod retry;
mod starting;
mod stream_client;
pub mod webhooks;

pub use options::{E2bOptions, RetryPolicy};

/// The E2B key: the request's `e2b_api_key`, else `E2B_API_KEY`.
pub(crate) const CREDENTIAL: Credential = Credential {
    field: "e2b_api_key",
    variable: "E2B_API_KEY",
    description: "E2B API key; defaults to `$E2B_API_KEY`. Used when the sandbox is `e2b`.",
};

/// What the product knows of E2B.
pub(crate) const PROVIDER: ProviderDeclaration = ProviderDeclaration {
    name: "e2b",
    summary: "an E2B cloud VM",
    credential: Some(CREDENTIAL),
    variables: options::VARIABLES,
    serverless: true,
    // With the template's model proxy (see `keyless`).
    meters_model: |settings| options::model_proxy(settings).unwrap_or(false),
    // Its model proxy holds the cloud providers' credentials too, the
    // Vertex key file among them; without it they go in.
    keeps_cloud_credentials: |settings| options::model_proxy(settings).unwrap_or(false),
    build: build_provider,
};

fn build_provider(settings: &ProviderSettings) -> Result<Arc<dyn SandboxProvider>, String> {
    E2bProvider::new(E2bOptions::from_settings(settings)?)
        .map(|p| Arc::new(p) as Arc<dyn SandboxProvider>)
        .map_err(|e| e.to_string())
}

/// What every sandbox of one provider shares: the options and the
/// connection pools.
#[derive(Debug)]
struct Shared {
    options: E2bOptions,
    http: reqwest::Client,
    /// File reads only: HTTP/1.1 (see `http::file_client`).
    files: reqwest::Client,
    streams: stream_client::StreamClient,
    /// Vertex service accounts, parsed once each to check a run's before
    /// its model proxy gets it (see `keyless`).
    vertex: crate::model_proxy::Accounts,
    /// The slots sandboxes start in (see `starting`).
    starting: starting::StartSlots,
}

/// Creates E2B sandboxes. Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct E2bProvider {
    shared: Arc<Shared>,
}

impl E2bProvider {
    /// Fails only if the HTTP clients cannot be built (no TLS backend).
    pub fn new(options: E2bOptions) -> Result<Self, SandboxError> {
        Self::with_tls(options, http::tls_config()?)
    }

    /// [`E2bProvider::new`] on a TLS configuration of the caller's (each
    /// client sets its own ALPN), so that a test can trust its own
    /// certificate (`padded_download_tests`).
    pub(crate) fn with_tls(
        options: E2bOptions,
        tls: rustls::ClientConfig,
    ) -> Result<Self, SandboxError> {
        let http = http::client(&options, tls.clone())?;
        let files = http::file_client(&options, tls.clone())?;
        let streams = stream_client::StreamClient::new(&options, tls, http.clone());
        Ok(E2bProvider {
            shared: Arc::new(Shared {
                http,
                files,
                streams,
                vertex: crate::model_proxy::Accounts::default(),
                starting: starting::StartSlots::new(options.max_starting),
                options,
            }),
        })
    }

    /// The options this provider was built with.
    pub fn options(&self) -> &E2bOptions {
        &self.shared.options
    }
}

#[async_trait]
impl SandboxProvider for E2bProvider {
    fn name(&self) -> &'static str {
        http::PROVIDER
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let options = &self.shared.options;
        let api_key = self.api_key(spec.credential, "create")?;
        let lifetime = if spec.lifetime.is_zero() {
            options.default_lifetime
        } else {
            spec.lifetime
        };
        if options.debug {
            // A local E2B stack (`E2B_DEBUG=true`) has one sandbox, already
            // running: the SDKs neither create nor kill it, and its envd is
            // current and unauthenticated.
            return Ok(Arc::new(E2bSandbox {
                envd_url: options.envd_url(control::DEBUG_SANDBOX_ID, None),
                legacy_user: false,
                id: control::DEBUG_SANDBOX_ID.to_owned(),
                access_token: None,
                api_key,
                extender: None,
                starting: starting::Starting::none(),
                shared: self.shared.clone(),
            }));
        }
        // Held until the sandbox's first process has started: see
        // `starting`.
        let slot = self.shared.starting.enter().await;
        let created = control::create(
            &self.shared.http,
            options,
            &api_key,
            lifetime,
            &spec.metadata,
            spec.pause_at_end,
        )
        .await?;
        tracing::debug!(sandbox = %created.sandbox_id, envd = %created.envd_version, "e2b sandbox created");
        Ok(self.sandbox(created, api_key, lifetime, slot))
    }

    fn can_pause(&self) -> bool {
        // The local stack's one sandbox is never created here.
        !self.shared.options.debug
    }

    async fn kill(&self, id: &str, credential: Option<Secret>) -> Result<(), SandboxError> {
        let api_key = self.api_key(credential, "destroy")?;
        control::kill(&self.shared.http, &self.shared.options, &api_key, id).await
    }

    async fn connect(&self, id: &str, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let options = &self.shared.options;
        let api_key = self.api_key(spec.credential, "connect")?;
        let lifetime = if spec.lifetime.is_zero() {
            options.default_lifetime
        } else {
            spec.lifetime
        };
        let connected =
            control::connect(&self.shared.http, options, &api_key, id, lifetime).await?;
        tracing::debug!(sandbox = %connected.sandbox_id, "e2b sandbox connected");
        Ok(self.sandbox(connected, api_key, lifetime, starting::Starting::none()))
    }

    async fn list(
        &self,
        metadata: &BTreeMap<String, String>,
        credential: Option<Secret>,
    ) -> Result<Vec<SandboxSummary>, SandboxError> {
        let api_key = self.api_key(credential, "list")?;
        let listed =
            control::list(&self.shared.http, &self.shared.options, &api_key, metadata).await?;
        Ok(listed
            .into_iter()
            .map(|sandbox| SandboxSummary {
                id: sandbox.sandbox_id,
                metadata: sandbox.metadata,
                paused: sandbox.state == SandboxState::Paused,
                started_at: sandbox.started_at,
                end_at: sandbox.end_at,
            })
            .collect())
    }
}

impl E2bProvider {
    /// The request's own key if it has one, else the configured one.
    fn api_key(
        &self,
        credential: Option<Secret>,
        op: &'static str,
    ) -> Result<Secret, SandboxError> {
        let usable = |key: &Secret| !key.is_empty();
        credential
            .filter(usable)
            .or_else(|| self.shared.options.api_key.clone().filter(usable))
            .ok_or_else(|| SandboxError::Other {
                op,
                message: "no E2B API key: set E2B_API_KEY or send e2b_api_key".into(),
            })
    }

    /// The sandbox create or connect answered with, kept alive for
    /// `lifetime`: the call asked for at most the plan's limit, so a longer
    /// run is kept alive by set-timeout calls until its lifetime is used.
    /// A created sandbox keeps its start slot until its first process
    /// starts.
    fn sandbox(
        &self,
        answer: e2b_wire::control::Sandbox,
        api_key: Secret,
        lifetime: Duration,
        starting: starting::Starting,
    ) -> Arc<dyn Sandbox> {
        let options = &self.shared.options;
        let extender = (lifetime > options.max_timeout).then(|| {
            tokio::spawn(extend(
                self.shared.clone(),
                api_key.clone(),
                answer.sandbox_id.clone(),
                lifetime,
            ))
            .abort_handle()
        });
        Arc::new(E2bSandbox {
            envd_url: options.envd_url(&answer.sandbox_id, answer.domain.as_deref()),
            legacy_user: envd::needs_explicit_user(&answer.envd_version),
            id: answer.sandbox_id,
            access_token: answer
                .envd_access_token
                .map(|token| Secret::new(token.into_string())),
            api_key,
            extender,
            starting,
            shared: self.shared.clone(),
        })
    }
}

/// Keeps a sandbox alive for `lifetime` from now when that is longer than
/// the plan lets one call ask for: shortly before each granted stretch runs
/// out, asks for another, never more than `max_timeout` per call and never
/// past the end of `lifetime`. Stops when the sandbox is destroyed or
/// dropped (its task is aborted), or at the first failed extension: the
/// sandbox then ends at its last deadline, which the run reports.
async fn extend(shared: Arc<Shared>, api_key: Secret, id: String, lifetime: Duration) {
    use tokio::time::{Instant, sleep_until};
    let options = &shared.options;
    let max = options.max_timeout;
    // Ask again well before the deadline, leaving room for a retried call.
    let margin = (max / 4).min(Duration::from_secs(60));
    let end = Instant::now() + lifetime;
    let mut deadline = Instant::now() + max;
    while deadline < end {
        sleep_until(deadline - margin).await;
        let now = Instant::now();
        let want = end.saturating_duration_since(now).min(max);
        match control::set_timeout(&shared.http, options, &api_key, &id, want).await {
            Ok(()) => {
                tracing::debug!(sandbox = %id, lifetime = ?want, "e2b sandbox lifetime extended");
                deadline = now + want;
            }
            Err(err) => {
                tracing::warn!(sandbox = %id, error = %err, "extending the e2b sandbox's lifetime failed");
                return;
            }
        }
    }
}

/// One live E2B sandbox.
pub(crate) struct E2bSandbox {
    id: String,
    /// Where this sandbox's envd answers (see [`E2bOptions::envd_url`]).
    envd_url: String,
    /// envd older than 0.4.0 must be told the user explicitly.
    legacy_user: bool,
    /// `envdAccessToken` from create; envd refuses requests without it.
    access_token: Option<Secret>,
    /// The key that created the sandbox, which may be a request's own; the
    /// same key must kill it.
    api_key: Secret,
    /// The task extending the lifetime past the plan's limit, if needed.
    extender: Option<tokio::task::AbortHandle>,
    /// Its start slot until its first process starts (see `starting`).
    starting: starting::Starting,
    shared: Arc<Shared>,
}

impl Drop for E2bSandbox {
    fn drop(&mut self) {
        if let Some(extender) = &self.extender {
            extender.abort();
        }
    }
}

impl E2bSandbox {
    /// What an error message must never contain.
    fn secrets(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.api_key).chain(self.access_token.as_ref())
    }
}

impl fmt::Debug for E2bSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2bSandbox")
            .field("id", &self.id)
            .field("envd_url", &self.envd_url)
            .field("legacy_user", &self.legacy_user)
            .field("access_token", &self.access_token)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Sandbox for E2bSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn upload(&self, files: Vec<SandboxFile>) -> Result<(), SandboxError> {
        self.upload_files(files, None).await
    }

    async fn upload_and_start(
        &self,
        files: Vec<SandboxFile>,
        process: ProcessSpec,
    ) -> Result<ProcessStream, SandboxError> {
        let started = launch::upload_and_start(self, files, process).await;
        self.starting.started();
        started
    }

    async fn start(&self, process: ProcessSpec) -> Result<ProcessStream, SandboxError> {
        let started = if self.shared.options.model_proxy {
            keyless::start(self, process).await
        } else {
            self.start_process(process).await
        };
        self.starting.started();
        started
    }

    async fn read_file(&self, path: &str) -> Result<Bytes, SandboxError> {
        self.download(path).await
    }

    async fn read_spend(
        &self,
        record: &str,
    ) -> Result<Option<crate::spend::SpendRecord>, SandboxError> {
        keyless::read_record(self, record).await
    }

    async fn attach(&self, process: ProcessRef) -> Result<ProcessStream, SandboxError> {
        self.attach_process(process).await
    }

    async fn pause(&self) -> Result<bool, SandboxError> {
        // A paused sandbox's clock stops; a resumed one gets its lifetime
        // from connect, which extends it again as needed.
        if let Some(extender) = &self.extender {
            extender.abort();
        }
        control::pause(
            &self.shared.http,
            &self.shared.options,
            &self.api_key,
            &self.id,
        )
        .await
    }

    async fn expire_in(&self, lifetime: Duration) -> Result<(), SandboxError> {
        if let Some(extender) = &self.extender {
            extender.abort();
        }
        control::set_timeout(
            &self.shared.http,
            &self.shared.options,
            &self.api_key,
            &self.id,
            lifetime,
        )
        .await
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        // A sandbox destroyed before its process started (the run was
        // abandoned) lets the next one start.
        self.starting.started();
        if let Some(extender) = &self.extender {
            extender.abort();
        }
        if self.shared.options.debug {
            // The local stack's one sandbox outlives us, as with the SDKs.
            return Ok(());
        }
        control::kill(
            &self.shared.http,
            &self.shared.options,
            &self.api_key,
            &self.id,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_provider_and_sandbox_redacts_keys_and_tokens() {
        let provider =
            E2bProvider::new(E2bOptions::local("http://127.0.0.1:1", "e2b_provider_key"))
                .expect("client builds");
        let sandbox = E2bSandbox {
            id: "sbx1".into(),
            envd_url: "http://127.0.0.1:1".into(),
            legacy_user: false,
            access_token: Some(Secret::new("envd_token_value")),
            api_key: Secret::new("e2b_request_key"),
            extender: None,
            starting: starting::Starting::none(),
            shared: provider.shared.clone(),
        };
        let shown = format!("{provider:?} {sandbox:?}");
        for secret in ["e2b_provider_key", "envd_token_value", "e2b_request_key"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("sbx1"));
    }

    #[tokio::test]
    async fn create_without_any_key_says_which_variable_to_set() {
        let mut options = E2bOptions::local("http://127.0.0.1:1", "unused");
        options.api_key = None;
        let provider = E2bProvider::new(options).expect("client builds");
        let Err(err) = provider.create(SandboxSpec::default()).await else {
            panic!("created a sandbox without a key");
        };
        assert!(err.to_string().contains("E2B_API_KEY"), "{err}");
    }
}
