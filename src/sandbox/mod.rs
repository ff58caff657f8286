//! The sandbox seam: what a run needs from the place the agent runs in.
//!
//! A run asks a [`SandboxProvider`] for a fresh [`Sandbox`], hands it every
//! file and starts the runner with [`Sandbox::upload_and_start`] (one
//! upload, one start, at once where the provider can: see
//! [`upload_gate`]), relays what the process prints, and destroys the
//! sandbox. Providers: [`e2b`] (cloud VMs over REST + envd) and [`local`]
//! (bubblewrap on this machine). Each one is known to the rest of the
//! product only through its [`provider::ProviderDeclaration`]; adding
//! another backend is one new folder here plus one line at the door, as the
//! checklist in [`provider`] says. [`layout`] holds the paths every sandbox
//! shares.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::secret::Secret;
use crate::spend::{SpendMeter, SpendRecord};

pub mod e2b;
pub(crate) mod layout;
pub mod local;
pub mod provider;
#[cfg(any(test, feature = "testing"))]
pub mod scripted;
pub mod upload_gate;

/// What a run asks of a new sandbox.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// How long the sandbox may live before the provider kills it on its own.
    /// A backstop for a lost destroy, not the run's deadline.
    pub lifetime: Duration,
    /// Labels the provider keeps with the sandbox, where it can (metadata).
    pub metadata: BTreeMap<String, String>,
    /// The provider's credential for this run (its declared
    /// [`provider::Credential`], resolved like every key), when it needs one.
    pub credential: Option<Secret>,
    /// Caps on what the sandbox may use.
    pub limits: Limits,
    /// Where the sandbox may connect to.
    pub network: NetworkPolicy,
    /// Paused rather than ended when its lifetime runs out (E2B's
    /// `autoPause`), by a provider that can pause ([`SandboxProvider::can_pause`]).
    pub pause_at_end: bool,
}

/// Caps on what one sandbox may use. Where a provider enforces each one is
/// in `docs/security.md`; E2B's VM size is its template's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Processes and threads alive at once.
    pub processes: u64,
    /// Bytes in the writable folders (`/home/user` and `/tmp`, each).
    pub disk_bytes: u64,
    /// CPU time one process may use, in seconds.
    pub cpu_seconds: u64,
}

impl Limits {
    /// 2 GiB of memory, 512 processes, 2 GiB of disk, 4 hours of CPU.
    pub const DEFAULT: Limits = Limits {
        memory_bytes: 2 << 30,
        processes: 512,
        disk_bytes: 2 << 30,
        cpu_seconds: 4 * 3600,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Where a sandbox may connect. Public addresses only, always; `allow`
/// narrows that to some domains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Domain patterns (`pypi.org`, `*.github.com`) the sandbox may reach;
    /// `None` allows every public host.
    pub allow: Option<Vec<String>>,
}

/// One file to place in the sandbox.
#[derive(Clone)]
pub struct SandboxFile {
    /// Absolute path inside the sandbox, e.g. `/home/user/data.csv`.
    pub path: String,
    /// The bytes to write.
    pub content: Bytes,
}

impl fmt::Debug for SandboxFile {
    // File contents may hold credentials (the GCP key file): print sizes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxFile")
            .field("path", &self.path)
            .field("bytes", &self.content.len())
            .finish()
    }
}

/// A process to start, as argv: no shell ever sees these strings.
#[derive(Clone, Default)]
pub struct ProcessSpec {
    /// The program, looked up on the sandbox's `PATH`.
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment.
    pub envs: BTreeMap<String, String>,
    /// The working folder inside the sandbox.
    pub cwd: String,
    /// Hard limit on the process's life, enforced by the provider.
    pub timeout: Option<Duration>,
    /// A name to attach to the process by later ([`Sandbox::attach`]), where
    /// the provider can.
    pub tag: Option<String>,
    /// Give the process a stdin pipe that stays open while it lives, as
    /// envd does unless Start says `"stdin": false`. Nothing writes to it,
    /// so a process that reads stdin waits until it is killed or times
    /// out. Off (the default), stdin is empty and reads end at once.
    pub stdin: bool,
    /// The run's model spend meter: a provider that serves a keyless model
    /// endpoint ([`ProviderDeclaration::meters_model`](provider::ProviderDeclaration::meters_model)) counts the process's
    /// model calls with it and enforces its caps. Others ignore it.
    pub spend: Option<Arc<SpendMeter>>,
    /// Where, inside the sandbox, the endpoint keeps `spend`'s tally for
    /// later readers ([`Sandbox::read_spend`]): a detached run's turn.
    pub spend_record: Option<String>,
    /// What the process's model endpoint says once the process has ended
    /// (a detached turn's wrapper on a serverless door): a provider whose
    /// endpoint runs in the sandbox, out of the agent's reach, calls the
    /// server back ([`Callback`]). Others ignore it.
    pub callback: Option<Callback>,
}

/// A call to the server that started a run, made from the run's sandbox
/// when a turn ends: `POST url` with `Authorization: Bearer token`.
#[derive(Clone, PartialEq, Eq)]
pub struct Callback {
    /// The server's `/runs/{id}/ended?turn=N`.
    pub url: String,
    /// The run's call-back token.
    pub token: crate::secret::Secret,
}

impl fmt::Debug for Callback {
    // The URL names the run, whose id is its capability; the token is a
    // secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Callback(***)")
    }
}

impl fmt::Debug for ProcessSpec {
    // The environment carries API keys: show only the variable names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessSpec")
            .field("cmd", &self.cmd)
            .field("args", &self.args)
            .field("envs", &self.envs.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("timeout", &self.timeout)
            .field("tag", &self.tag)
            .field("spend", &self.spend)
            .field("spend_record", &self.spend_record)
            .field("callback", &self.callback)
            .field("stdin", &self.stdin)
            .finish()
    }
}

/// What a running process reports, in order. `Exited` is always last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A chunk of stdout; chunk borders are arbitrary, lines may be split.
    Stdout(Bytes),
    /// A chunk of stderr.
    Stderr(Bytes),
    /// The process ended; the last event.
    Exited(ExitStatus),
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitStatus {
    /// The exit code, or `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The provider's own description, e.g. `signal: killed`.
    pub status: String,
}

impl ExitStatus {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// The output of a started process. Ends after [`ProcessEvent::Exited`], or
/// with an error when the connection to the process is lost.
pub type ProcessStream = BoxStream<'static, Result<ProcessEvent, SandboxError>>;

/// Creates sandboxes. Lives in the app state for the life of the process.
#[async_trait]
pub trait SandboxProvider: Send + Sync + 'static {
    /// A short name for logs and errors: its declaration's name.
    fn name(&self) -> &'static str;

    /// Makes a fresh sandbox for one run.
    async fn create(&self, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError>;

    /// Whether its sandboxes can be paused, and made to pause rather than
    /// end at their lifetime ([`SandboxSpec::pause_at_end`]).
    fn can_pause(&self) -> bool {
        false
    }

    /// Ends sandbox `id`, running or paused, without resuming it first.
    /// One that is gone already is not an error.
    async fn kill(&self, id: &str, credential: Option<Secret>) -> Result<(), SandboxError> {
        let _ = (id, credential);
        Err(SandboxError::Unsupported {
            provider: self.name(),
            op: "kill",
        })
    }

    /// Attaches to sandbox `id`, made earlier by this provider, perhaps in
    /// another process: the way a run outlives the request that started
    /// it. A paused sandbox is resumed. It then lives at least
    /// `spec.lifetime` more; of `spec`, only that and the credential count.
    async fn connect(&self, id: &str, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let _ = (id, spec);
        Err(SandboxError::Unsupported {
            provider: self.name(),
            op: "connect",
        })
    }

    /// The sandboxes the provider still keeps (running or paused) whose
    /// metadata holds every pair of `metadata`, seen with `credential`
    /// (else the provider's own).
    async fn list(
        &self,
        metadata: &BTreeMap<String, String>,
        credential: Option<Secret>,
    ) -> Result<Vec<SandboxSummary>, SandboxError> {
        let _ = (metadata, credential);
        Err(SandboxError::Unsupported {
            provider: self.name(),
            op: "list",
        })
    }
}

/// A running process to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessRef {
    /// By the pid its start reported.
    Pid(u32),
    /// By the [`ProcessSpec::tag`] it was started with.
    Tag(String),
}

/// A sandbox as a provider's list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSummary {
    /// The provider's id for it.
    pub id: String,
    /// Its labels, as given at create.
    pub metadata: BTreeMap<String, String>,
    /// Paused (costing no compute until connected to) rather than running.
    pub paused: bool,
    /// When it was made, RFC 3339.
    pub started_at: String,
    /// When its lifetime runs out, RFC 3339.
    pub end_at: String,
}

/// One live sandbox. Every method may be called from any task.
#[async_trait]
pub trait Sandbox: Send + Sync + 'static {
    /// The provider's id for the sandbox.
    fn id(&self) -> &str;

    /// Writes all files in one round trip, creating parent folders.
    async fn upload(&self, files: Vec<SandboxFile>) -> Result<(), SandboxError>;

    /// Starts a process and streams its output.
    async fn start(&self, process: ProcessSpec) -> Result<ProcessStream, SandboxError>;

    /// Writes `files`, then runs `process`, which may read them from its
    /// first instruction: how a run hands over its files and starts its
    /// runner. This default uploads, then starts: right where the upload
    /// is a local write. A provider whose upload and start are each a
    /// round trip sends both at once, the process held behind an
    /// [`upload_gate`] until its files are in place. An upload that fails
    /// fails the call with its error, whatever became of the start. Each
    /// step is traced as a `sandbox.upload` and a `sandbox.start` span
    /// (see [`upload_span`]).
    async fn upload_and_start(
        &self,
        files: Vec<SandboxFile>,
        process: ProcessSpec,
    ) -> Result<ProcessStream, SandboxError> {
        use tracing::Instrument as _;
        let span = upload_span(&files);
        self.upload(files).instrument(span).await?;
        self.start(process).instrument(start_span()).await
    }

    /// Reads one file's bytes.
    async fn read_file(&self, path: &str) -> Result<Bytes, SandboxError>;

    /// The tally a metering model endpoint keeps at `record` (a process's
    /// [`ProcessSpec::spend_record`]), read as the agent could not have
    /// written it; `None` when there is none (no endpoint metered the
    /// process, or the provider keeps none).
    async fn read_spend(&self, record: &str) -> Result<Option<SpendRecord>, SandboxError> {
        let _ = record;
        Ok(None)
    }

    /// Kills the sandbox and everything in it. Destroying a sandbox that is
    /// already gone is not an error.
    async fn destroy(&self) -> Result<(), SandboxError>;

    /// Attaches to a process that is running in the sandbox, started by
    /// this or another client: its output from now on, then its exit.
    async fn attach(&self, process: ProcessRef) -> Result<ProcessStream, SandboxError> {
        let _ = process;
        Err(SandboxError::Unsupported {
            provider: "this sandbox's provider",
            op: "attach to processes of",
        })
    }

    /// Sets the sandbox to end `lifetime` from now, sooner or later than
    /// it would have: how a finished detached run leaves its log readable
    /// for a while without anyone having to come back to destroy it.
    async fn expire_in(&self, lifetime: Duration) -> Result<(), SandboxError> {
        let _ = lifetime;
        Err(SandboxError::Unsupported {
            provider: "this sandbox's provider",
            op: "set the lifetime of",
        })
    }

    /// Pauses the sandbox: its files and processes are kept, it stops
    /// costing compute and its lifetime stops running, until the provider's
    /// `connect` resumes it. `false` when it was paused already.
    async fn pause(&self) -> Result<bool, SandboxError> {
        Err(SandboxError::Unsupported {
            provider: "this sandbox's provider",
            op: "pause",
        })
    }
}

/// The span of a run's upload, made in the run's: one of the steps
/// `docs/observability.md` lists.
pub fn upload_span(files: &[SandboxFile]) -> tracing::Span {
    tracing::info_span!("sandbox.upload", files = files.len())
}

/// The span of a run's start of its runner.
pub fn start_span() -> tracing::Span {
    tracing::info_span!("sandbox.start")
}

/// What went wrong talking to a sandbox. Messages are safe to show a client:
/// they never carry keys or tokens.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The provider refused the credential.
    #[error("{provider} rejected the API key (HTTP 401)")]
    Unauthorized {
        /// The provider's name.
        provider: &'static str,
    },
    /// The provider asked us to slow down.
    #[error("{op} was rate limited by {provider} (HTTP 429)")]
    RateLimited {
        /// The provider's name.
        provider: &'static str,
        /// The call that was refused, e.g. `create`.
        op: &'static str,
    },
    /// The provider answered with an error status.
    #[error("{op} failed: {provider} answered HTTP {status}: {message}")]
    Status {
        /// The provider's name.
        provider: &'static str,
        /// The call that failed, e.g. `create`.
        op: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// A call took longer than allowed.
    #[error("{op} timed out after {after:?}")]
    TimedOut {
        /// The call that timed out.
        op: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The connection failed or dropped.
    #[error("{op} failed: {message}")]
    Transport {
        /// The call that failed.
        op: &'static str,
        /// What the HTTP client reported.
        message: String,
    },
    /// The provider cannot do this.
    #[error("{provider} cannot {op} sandboxes")]
    Unsupported {
        /// The provider's name.
        provider: &'static str,
        /// What was asked, e.g. `pause`.
        op: &'static str,
    },
    /// A process's output stream ended with no exit event.
    #[error("the sandbox process stream was cut before the process exited")]
    StreamCut,
    /// Anything else, e.g. a local sandbox's I/O error.
    #[error("{op} failed: {message}")]
    Other {
        /// What was being done.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A transient failure that persisted through every retry; `last` is
    /// the cause the client should hear about.
    #[error("{last}; gave up after {attempts} attempts")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<SandboxError>,
    },
}

impl SandboxError {
    /// The underlying failure, looking through [`SandboxError::GaveUp`]:
    /// what to classify an error by (rate limit, timeout, ...).
    pub fn cause(&self) -> &SandboxError {
        match self {
            SandboxError::GaveUp { last, .. } => last.cause(),
            other => other,
        }
    }

    /// Whether the sandbox no longer exists: E2B answers for a sandbox it
    /// does not know with 404 from its API and 502 "... was not found"
    /// from its proxy to envd.
    pub fn sandbox_gone(&self) -> bool {
        match self.cause() {
            SandboxError::Status { status: 404, .. } => true,
            SandboxError::Status {
                status: 502,
                message,
                ..
            } => message.contains("not found"),
            _ => false,
        }
    }
}
