//! An E2B emulator: the control plane and the envd subset on one loopback
//! port, backed by local bubblewrap sandboxes (`sandstorm`'s local
//! provider, driven through the same entry points as the product).
//!
//! Point the official E2B SDKs (or our own client) at it with
//! `E2B_API_URL=http://127.0.0.1:PORT E2B_SANDBOX_URL=http://127.0.0.1:PORT`.
//! Control-plane paths (`/sandboxes`, `/v2/sandboxes`) and envd paths
//! (`/files`, `/process.Process/*`, `/health`) do not overlap, so one router
//! serves both; envd calls find their sandbox by the `E2b-Sandbox-Id`
//! header the SDKs send. Every body it reads or writes is a type of the
//! `e2b-wire` crate, which our E2B client uses too, so the two cannot
//! drift apart.
//!
//! Sandbox lifecycle events go to the webhooks registered at
//! `/events/webhooks`, signed as E2B signs them (see [`webhooks`]).
//!
//! Besides E2B's own API it serves `/_emulator/stats` (counters for tests)
//! and `/_emulator/config` (latency, faults and the synthetic runner, see
//! [`knobs`]).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use e2b_emulator::{serve, EmulatorOptions};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! eprintln!("listening on http://{}", listener.local_addr()?);
//! serve(listener, EmulatorOptions::new("runner".into(), "target/debug/e2b-emulator".into())).await
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use e2b_wire::control::AccessToken;
use sandstorm::sandbox::local::{LocalOptions, LocalProvider, LocalSandbox};
use sandstorm::secret::Secret;
// Every critical section here is a single map or struct update.
use sandstorm::sync::lock;

mod control;
mod envd;
pub mod knobs;
mod pause;
mod stats;
mod synthetic;
mod webhooks;

pub use knobs::Knobs;
pub use stats::{Call, Moment, Snapshot};
pub use webhooks::DeliveryRetry;

/// The envd version the emulator reports by default. The SDKs switch
/// features on it; 0.5.7 is the first with octet-stream uploads.
pub const DEFAULT_ENVD_VERSION: &str = "0.5.7";

/// The longest sandbox timeout create accepts by default: E2B's Hobby plan
/// allows one hour.
pub const DEFAULT_MAX_TIMEOUT_SECS: u64 = 3600;

/// The templates every emulator knows: E2B's default `base`, and the ones
/// the product and its tests name.
pub const DEFAULT_TEMPLATES: &[&str] = &["base", "sandstorm", "sandstorm-test"];

/// The largest request body accepted (file uploads).
const MAX_BODY: usize = 512 * 1024 * 1024;

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The one `X-API-KEY` the emulator accepts. [`EmulatorOptions::new`]
    /// makes a random one: a sandbox must never be reachable with a key
    /// someone guessed.
    pub api_key: Secret,
    /// The runner install bound into every sandbox (see the local provider).
    pub runner_dir: PathBuf,
    /// Where sandbox directories go; the system temp folder when `None`.
    pub work_root: Option<PathBuf>,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// The executable that runs the local sandboxes' shim (this emulator's
    /// binary, or `ds`).
    pub shim: PathBuf,
    /// Private addresses sandboxes may reach through their egress proxy
    /// (the local provider's `SANDSTORM_EGRESS_OPEN`).
    pub egress_open: Option<String>,
    /// The knobs in force at start-up.
    pub knobs: Knobs,
    /// Accept what E2B refuses (timeouts above [`Self::max_timeout_secs`],
    /// unknown templates, envd calls without `E2b-Sandbox-Port`, Start's
    /// content type and protocol version, a missing `cwd`) and give
    /// processes the local sandbox's environment rather than envd's.
    /// Strict (`false`) by default.
    pub lenient: bool,
    /// The plan's longest sandbox timeout, in seconds; create asks for more
    /// get E2B's 400. E2B states the limit in whole hours.
    pub max_timeout_secs: u64,
    /// The template names and ids create accepts; others get E2B's 404.
    pub templates: BTreeSet<String>,
    /// The `envdVersion` create and connect report.
    pub envd_version: String,
    /// What the template runs as root, by its path in the template, with
    /// the host file that stands in for it (`/usr/local/bin/sandstorm-model-proxy`
    /// → `target/debug/sandstorm-model-proxy`). A Start as root of anything
    /// else is refused. Root processes run beside the sandbox, out of its
    /// user's reach, and only when the emulator itself runs as root.
    pub root_commands: BTreeMap<String, PathBuf>,
    /// How a lifecycle event delivery that failed is retried: E2B's three
    /// more attempts, 10 s apart, by default.
    pub webhook_retry: DeliveryRetry,
}

/// A fresh key in E2B's shape: `e2b_` and 40 hex digits.
pub fn random_api_key() -> Secret {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    Secret::new(format!("e2b_{a}{}", &b[..8]))
}

impl EmulatorOptions {
    /// Defaults: a random key (see [`random_api_key`]), `/usr/bin/bwrap`,
    /// no knobs turned.
    pub fn new(runner_dir: PathBuf, shim: PathBuf) -> Self {
        EmulatorOptions {
            api_key: random_api_key(),
            runner_dir,
            work_root: None,
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            shim,
            egress_open: None,
            knobs: Knobs::default(),
            lenient: false,
            max_timeout_secs: DEFAULT_MAX_TIMEOUT_SECS,
            templates: DEFAULT_TEMPLATES.iter().map(|&t| t.to_owned()).collect(),
            envd_version: DEFAULT_ENVD_VERSION.to_owned(),
            root_commands: BTreeMap::new(),
            webhook_retry: DeliveryRetry::default(),
        }
    }
}

/// The emulator's state: its sandboxes, knobs and counters. Cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

/// Shows no state: the sandboxes hold access tokens, and reading the rest
/// would take locks.
impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

struct Inner {
    provider: LocalProvider,
    api_key: Secret,
    sandboxes: Mutex<HashMap<String, Arc<Entry>>>,
    knobs: Mutex<Knobs>,
    stats: stats::Stats,
    lenient: bool,
    max_timeout_secs: u64,
    templates: BTreeSet<String>,
    envd_version: String,
    root_commands: BTreeMap<String, PathBuf>,
    /// v2 creates by `Idempotency-Key`.
    idempotency: Mutex<HashMap<String, control::Idempotent>>,
    /// The lifecycle webhooks registered, and their deliveries.
    webhooks: webhooks::Webhooks,
}

/// One emulated E2B sandbox.
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) template_id: String,
    pub(crate) metadata: BTreeMap<String, String>,
    /// Default environment of every process (E2B's `envVars`).
    pub(crate) env_vars: BTreeMap<String, String>,
    pub(crate) started_at: SystemTime,
    /// This run of the sandbox, as its lifecycle events name it.
    pub(crate) execution_id: String,
    pub(crate) end_at: Mutex<SystemTime>,
    /// What envd calls must send in `X-Access-Token`; `None` for a sandbox
    /// created without `secure`, whose envd asks for no token (as E2B's).
    pub(crate) access_token: Option<AccessToken>,
    /// The `envdVersion` this sandbox reports.
    pub(crate) envd_version: String,
    pub(crate) sandbox: Arc<LocalSandbox>,
    /// Paused (its processes stopped, envd unreachable) or running.
    pub(crate) paused: std::sync::atomic::AtomicBool,
    /// Create's `autoPause`: its timeout pauses it instead of killing it.
    pub(crate) auto_pause: bool,
    /// Held through a pause or a resume, so the two never interleave.
    pub(crate) transition: tokio::sync::Mutex<()>,
    /// Its processes that clients can attach to (`Process/Connect`).
    pub(crate) processes: envd::Processes,
}

impl Emulator {
    /// An emulator with no sandboxes; fails when bwrap is missing.
    pub fn new(options: EmulatorOptions) -> Result<Self, sandstorm::sandbox::SandboxError> {
        let mut local = LocalOptions::new(options.runner_dir, options.shim);
        local.work_root = options.work_root;
        local.bwrap = options.bwrap;
        local.egress_open = options.egress_open;
        local.root_commands = options.root_commands.clone();
        let provider = LocalProvider::new(local)?;
        let webhooks = webhooks::Webhooks::new(options.webhook_retry).map_err(|e| {
            sandstorm::sandbox::SandboxError::Other {
                op: "building the webhook delivery client",
                message: e.to_string(),
            }
        })?;
        Ok(Emulator {
            inner: Arc::new(Inner {
                provider,
                api_key: options.api_key,
                sandboxes: Mutex::new(HashMap::new()),
                knobs: Mutex::new(options.knobs),
                stats: stats::Stats::default(),
                lenient: options.lenient,
                max_timeout_secs: options.max_timeout_secs,
                templates: options.templates,
                envd_version: options.envd_version,
                root_commands: options.root_commands,
                idempotency: Mutex::new(HashMap::new()),
                webhooks,
            }),
        })
    }

    /// Counters and the number of live sandboxes.
    pub fn stats(&self) -> Snapshot {
        let alive = lock(&self.inner.sandboxes).len();
        self.inner.stats.snapshot(alive)
    }

    /// Replaces the knobs.
    pub fn set_knobs(&self, knobs: Knobs) {
        *lock(&self.inner.knobs) = knobs;
    }

    /// Kills every sandbox (on shutdown). No lifecycle event is sent: the
    /// emulator is going, and its deliveries with it.
    pub async fn shutdown(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.inner.sandboxes)
            .drain()
            .map(|(_, e)| e)
            .collect();
        for entry in entries {
            control::destroy(&entry).await;
        }
    }

    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        lock(&self.inner.knobs)
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.inner.sandboxes).get(id).cloned()
    }
}

/// The whole emulator as one router.
pub fn app(emulator: Emulator) -> Router {
    let control =
        control::routes()
            .merge(webhooks::routes())
            .route_layer(middleware::from_fn_with_state(
                emulator.clone(),
                control::require_api_key,
            ));
    Router::new()
        .merge(control)
        .merge(envd::routes())
        .route(
            "/_emulator/stats",
            get(stats_handler).delete(reset_stats_handler),
        )
        .route("/_emulator/config", get(get_config).post(set_config))
        .layer(middleware::from_fn_with_state(
            emulator.clone(),
            add_latency,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(emulator)
}

/// Serves the emulator on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: EmulatorOptions,
) -> std::io::Result<()> {
    serve_with_shutdown(listener, options, std::future::pending()).await
}

/// Serves until `shutdown` resolves, then kills every sandbox.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    options: EmulatorOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let emulator = Emulator::new(options).map_err(std::io::Error::other)?;
    // Kill the sandboxes first: their process streams then end, and the
    // graceful shutdown does not wait on a process that would run for hours.
    let stopping = emulator.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.shutdown().await;
    };
    let accepting = emulator.clone();
    let listener = listener.tap_io(move |tcp| accepted(&accepting, tcp));
    let result = axum::serve(listener, app(emulator.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    emulator.shutdown().await;
    result
}

/// Sets up a connection the emulator accepted: `TCP_NODELAY`, as envd and
/// E2B's edge (Go) answer, unless the `no_tcp_nodelay` knob says not.
/// Without it a stream's first frame after its headers waits out the
/// client's delayed ACK (~40 ms), which would swamp what benchmarks
/// measure; the knob is there to show that.
pub fn accepted(emulator: &Emulator, tcp: &mut tokio::net::TcpStream) {
    let nodelay = !emulator.knobs().no_tcp_nodelay;
    let _ = tcp.set_nodelay(nodelay);
}

/// Adds the latency knob's delay to every E2B call, and notes when each
/// one arrived and was answered (`calls` in the stats).
async fn add_latency(State(emulator): State<Emulator>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/_emulator/") {
        return next.run(request).await;
    }
    let call = format!("{} {}", request.method(), request.uri().path());
    emulator.inner.stats.call(&call, stats::Moment::Arrived);
    let latency = emulator.knobs().latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = next.run(request).await;
    emulator.inner.stats.call(&call, stats::Moment::Answered);
    response
}

async fn stats_handler(State(emulator): State<Emulator>) -> axum::Json<Snapshot> {
    axum::Json(emulator.stats())
}

async fn reset_stats_handler(State(emulator): State<Emulator>) -> StatusCode {
    emulator.inner.stats.reset();
    StatusCode::NO_CONTENT
}

async fn get_config(State(emulator): State<Emulator>) -> axum::Json<Knobs> {
    axum::Json(emulator.knobs().clone())
}

async fn set_config(State(emulator): State<Emulator>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Knobs>(&body) {
        Ok(knobs) => {
            emulator.set_knobs(knobs.clone());
            axum::Json(knobs).into_response()
        }
        Err(e) => EmulatorError::new(StatusCode::BAD_REQUEST, format!("invalid config: {e}"))
            .into_response(),
    }
}

/// A failed emulator call, answered as E2B's REST error body
/// (`{"code":404,"message":"..."}`).
#[derive(Debug)]
pub(crate) struct EmulatorError {
    status: StatusCode,
    message: String,
}

impl EmulatorError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        EmulatorError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for EmulatorError {
    fn into_response(self) -> Response {
        let body = e2b_wire::control::Error {
            code: self.status.as_u16(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}
