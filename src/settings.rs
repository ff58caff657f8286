//! Everything a door decides once at start-up, built from its snapshot of
//! the environment ([`EnvVars`]), its working folder and its [`Profile`].
//!
//! This is the only place below the doors that reads [`EnvVars`]: every
//! variable a run needs (tokens, keys, the variables forwarded into the
//! sandbox, the provider's own options, the bytes of the Vertex credentials
//! file) is resolved here, once, so request handling never looks at the
//! environment or the disk for settings.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::{self, TOKEN_ALIASES, TOKEN_VARIABLES};
use crate::config::sandbox::{CPU_SECONDS, DISK_MB, LimitField, MEMORY_MB, PROCESSES};
use crate::config::{ConfigError, LimitsConfig, SandstormConfig, placeholders};
use crate::env::EnvVars;
use crate::keys::{KeyEnv, KeySource};
use crate::sandbox::provider::{
    self, Catalog, Credential, ProviderDeclaration, ProviderSettings, Setup,
};
use crate::sandbox::{Limits, SandboxProvider};
use crate::secret::Secret;
use crate::spend::PriceTable;
use crate::spend::prices::PRICES_VARIABLE;
use crate::triggers::Triggers;

/// The default limit on a `/query` body. File contents are limited to 10 MB
/// and prompts to 1,000,000 characters; JSON escaping can double a text.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How long a stopping `ds serve` waits for running queries by default.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a finished detached run's sandbox stays, so that readers still
/// following its log, and clients whose stream detached just before the
/// end, can read the end too.
pub(crate) const DEFAULT_RUN_LINGER: Duration = Duration::from_secs(60);
/// A day: the longest sandbox lifetime E2B's Pro plan allows (Hobby's is
/// an hour; set `SANDSTORM_RUN_MAX_LIFETIME` to match).
pub(crate) const DEFAULT_RUN_MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// How long a client of `ds serve` has to send a request head, by default.
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `ds serve` keeps a keep-alive connection with no request in
/// flight, by default. Longer than the 60 s idle timeout of common load
/// balancers (AWS ALB, GCP): the side that closes an idle connection should
/// be the one that reuses it, or a request sent just as the server closes
/// fails with a reset.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// The variable that picks the sandbox provider by name.
pub(crate) const SANDBOX_VARIABLE: &str = "SANDSTORM_SANDBOX";

/// What kind of door the settings are for; each carries its own defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `ds` and `ds serve`: bound to loopback by default, so `/query` is
    /// open when no token is configured.
    Server,
    /// A serverless function behind a public URL: `/query` is refused
    /// without a token unless `SANDSTORM_ALLOW_ANONYMOUS=1`, because every
    /// query spends its owner's API keys. `max_duration` is the platform's
    /// response limit when `SANDSTORM_MAX_DURATION` does not set one.
    Serverless {
        /// The platform's own limit on one response, if it has a fixed one.
        max_duration: Option<Duration>,
    },
}

/// Who may call `/query`.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Accepted bearer tokens: the current one and, during a rotation, the
    /// previous one.
    pub tokens: Vec<Secret>,
    /// Whether `/query` is open when no token is configured.
    pub allow_anonymous: bool,
}

/// The sandbox provider a door runs, and what it was built from.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The chosen provider.
    pub provider: &'static ProviderDeclaration,
    /// Its options, read from the variables it declares.
    pub options: ProviderSettings,
    /// The credential fields `/query` accepts: every provider's in the door's
    /// catalog.
    pub credential_fields: Vec<Credential>,
    /// The caps on each sandbox unless sandstorm.json's `limits` say
    /// otherwise: `SANDSTORM_SANDBOX_MEMORY_MB`, `_PROCESSES`, `_DISK_MB`
    /// and `_CPU_SECONDS` over [`Limits::DEFAULT`].
    pub limits: Limits,
}

impl SandboxSettings {
    /// Builds the chosen provider.
    pub fn build_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        (self.provider.build)(&self.options)
    }
}

/// Which providers a door offers and how to pick one.
#[derive(Debug, Clone, Copy)]
pub struct SandboxChoice<'a> {
    /// The providers the door offers, in order of preference.
    pub catalog: Catalog,
    /// A provider named on the command line; wins over `SANDSTORM_SANDBOX`.
    pub requested: Option<&'a str>,
    /// Whether the provider may install what it misses.
    pub setup: Setup,
    /// The door's own executable, which a provider may look beside (the
    /// local provider finds the checkout's runner from it); `None` in tests.
    pub executable: Option<&'a Path>,
}

/// What `ds serve` allows its client connections (the serverless doors'
/// platforms manage connections themselves and ignore these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// How long a client has to send a whole request head
    /// (`SANDSTORM_HEADER_TIMEOUT`, seconds).
    pub header_timeout: Duration,
    /// How long a keep-alive connection with no request in flight stays
    /// open (`SANDSTORM_IDLE_TIMEOUT`, seconds).
    pub idle_timeout: Duration,
    /// The most connections served at once (`SANDSTORM_MAX_CONNECTIONS`);
    /// `None` leaves it to `ds serve`, which fits it to its open-file limit.
    pub max_connections: Option<NonZeroUsize>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
        }
    }
}

/// The settings of one server process.
#[derive(Clone)]
pub struct Settings {
    /// Where relative paths (sandstorm.json, the Vertex key file) resolve.
    pub cwd: PathBuf,
    /// The loaded sandstorm.json, or why it could not be loaded: a door that
    /// cannot refuse to start answers every `/query` with this error.
    pub config: Result<Arc<SandstormConfig>, ConfigError>,
    /// The variables sandstorm.json's MCP servers name in `${VAR}`
    /// placeholders, with their values (from the environment or `.env`)
    /// when set; filled in when a run is planned.
    pub config_env: BTreeMap<String, Secret>,
    /// Who may call `/query`.
    pub auth: AuthSettings,
    /// Allowed CORS origins; empty means no cross-origin access.
    pub cors_origins: Vec<String>,
    /// The hosting platform's limit on one response (Vercel's maxDuration),
    /// when it is not given per request.
    pub max_duration: Option<Duration>,
    /// The largest `/query` body read.
    pub max_body_bytes: usize,
    /// How long a stopping server waits for running queries before it ends
    /// them (`SANDSTORM_SHUTDOWN_TIMEOUT`, seconds).
    pub shutdown_timeout: Duration,
    /// How long a finished detached run's sandbox is kept before its
    /// provider ends it (`SANDSTORM_RUN_LINGER`, seconds; 0 destroys it at
    /// once).
    pub run_linger: Duration,
    /// The longest a detached run kept for follow-ups (`keep_alive`) may
    /// live, turns and idle time together (`SANDSTORM_RUN_MAX_LIFETIME`,
    /// seconds): the sandbox lifetime the provider's plan allows.
    pub run_max_lifetime: Duration,
    /// Whether an idle run kept for a follow-up is paused, on a provider
    /// that can pause (`SANDSTORM_PAUSE_IDLE`, default on).
    pub pause_idle: bool,
    /// What `ds serve` allows its client connections.
    pub connections: ConnectionSettings,
    /// What key resolution needs from the environment.
    pub keys: KeyEnv,
    /// The sandbox provider.
    pub sandbox: SandboxSettings,
    /// Keys looked up after the environment (AWS Secrets Manager).
    pub key_source: Option<Arc<dyn KeySource>>,
    /// The model prices spending caps go by: the list, with
    /// `SANDSTORM_MODEL_PRICES` over it.
    pub prices: Arc<PriceTable>,
    /// Where runs are recorded, if they are.
    pub history: HistorySettings,
    /// What a runner gets so the agent exports its own telemetry
    /// (`SANDSTORM_AGENT_TELEMETRY=1`); empty otherwise.
    pub agent_telemetry: BTreeMap<String, String>,
    /// sandstorm.json's triggers, their secrets read from the environment.
    pub triggers: Arc<Triggers>,
    /// The bearer token a scheduler sends to `GET /triggers/cron/{name}`
    /// (`CRON_SECRET`, which Vercel Cron sends as it is); the route is
    /// refused without one.
    pub cron_secret: Option<Secret>,
    /// Where `ds serve`'s scheduler clock starts, instead of now
    /// (`SANDSTORM_TEST_CLOCK_START`, RFC 3339): tests fire a cron trigger
    /// without waiting for its time.
    pub test_clock_start: Option<SystemTime>,
    /// How `POST /webhooks/e2b` checks E2B's lifecycle events.
    pub lifecycle: LifecycleSettings,
    /// Completion webhooks: their key, where they may go, their retries.
    pub notify: NotifySettings,
    /// The process stays once a response is over (`ds serve`), so it can
    /// read detached runs to their ends and retry notices for hours; a
    /// serverless function may be frozen then, and `ds` exits.
    pub stays_after_response: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("cwd", &self.cwd)
            .field("config", &self.config)
            .field("config_env", &self.config_env.keys().collect::<Vec<_>>())
            .field("auth", &self.auth)
            .field("cors_origins", &self.cors_origins)
            .field("max_duration", &self.max_duration)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("run_linger", &self.run_linger)
            .field("run_max_lifetime", &self.run_max_lifetime)
            .field("pause_idle", &self.pause_idle)
            .field("connections", &self.connections)
            .field("keys", &self.keys)
            .field("sandbox", &self.sandbox)
            .field("key_source", &self.key_source.is_some())
            .field("prices", &self.prices)
            .field("history", &self.history)
            .field("notify", &self.notify)
            .field("stays_after_response", &self.stays_after_response)
            // Names only: the agent's OTLP headers are a credential.
            .field(
                "agent_telemetry",
                &self.agent_telemetry.keys().collect::<Vec<_>>(),
            )
            .field("triggers", &self.triggers)
            .field("cron_secret", &self.cron_secret)
            .field("test_clock_start", &self.test_clock_start)
            .field("lifecycle", &self.lifecycle)
            .finish()
    }
}

impl Settings {
    /// Reads every setting from `env`. Invalid values are errors naming the
    /// variable; an invalid sandstorm.json is kept in `config`.
    pub fn build(
        env: &EnvVars,
        cwd: &Path,
        profile: Profile,
        sandbox: SandboxChoice<'_>,
    ) -> Result<Self, String> {
        let config_path = env.get("SANDSTORM_CONFIG").map(PathBuf::from);
        let config = SandstormConfig::load(config_path.as_deref(), cwd).map(Arc::new);
        let config_env = config
            .as_ref()
            .map(|config| {
                placeholders::variables(config.mcp_servers.iter().flatten().map(|(_, s)| s))
            })
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| {
                let value = env.get(&name)?;
                Some((name, Secret::new(value)))
            })
            .collect();
        let cors_origins = aliased(env, "SANDSTORM_CORS_ORIGINS", "CORS_ORIGINS")?
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let max_duration = match (env.get("SANDSTORM_MAX_DURATION"), profile) {
            (Some(v), _) => Some(Duration::from_secs(parse_number(
                "SANDSTORM_MAX_DURATION",
                v,
            )?)),
            (None, Profile::Serverless { max_duration }) => max_duration,
            (None, Profile::Server) => None,
        };
        let max_body_bytes = match env.get("SANDSTORM_MAX_BODY_BYTES") {
            Some(v) => usize::try_from(parse_number("SANDSTORM_MAX_BODY_BYTES", v)?)
                .map_err(|_| "SANDSTORM_MAX_BODY_BYTES is too large".to_owned())?,
            None => DEFAULT_MAX_BODY_BYTES,
        };
        let shutdown_timeout = match env.get("SANDSTORM_SHUTDOWN_TIMEOUT") {
            Some(v) => Duration::from_secs(parse_number("SANDSTORM_SHUTDOWN_TIMEOUT", v)?),
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        };
        let run_linger = match env.get("SANDSTORM_RUN_LINGER") {
            Some(v) => Duration::from_secs(parse_number("SANDSTORM_RUN_LINGER", v)?),
            None => DEFAULT_RUN_LINGER,
        };
        let run_max_lifetime = match env.get("SANDSTORM_RUN_MAX_LIFETIME") {
            Some(v) => match parse_number("SANDSTORM_RUN_MAX_LIFETIME", v)? {
                0 => return Err("SANDSTORM_RUN_MAX_LIFETIME must be at least 1 second".to_owned()),
                secs => Duration::from_secs(secs),
            },
            None => DEFAULT_RUN_MAX_LIFETIME,
        };
        let pause_idle = match env.get("SANDSTORM_PAUSE_IDLE") {
            None => true,
            Some(v) => match v.trim() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                other => {
                    return Err(format!(
                        "SANDSTORM_PAUSE_IDLE must be 1 or 0 (true or false), got {other:?}"
                    ));
                }
            },
        };
        let connections = connection_settings(env)?;
        let prices = Arc::new(PriceTable::new(env.get(PRICES_VARIABLE))?);
        let sandbox = sandbox_settings(env, cwd, sandbox)?;
        let history = history_settings(env, cwd, profile)?;
        let agent_telemetry =
            crate::telemetry::agent::env(&|name| env.get(name).map(str::to_owned))?;
        let triggers = match &config {
            Ok(config) => {
                let definitions = config
                    .triggers
                    .as_deref()
                    .map(crate::triggers::definition::parse)
                    .transpose()
                    // Checked when the file was loaded.
                    .map_err(|(field, why)| format!("sandstorm.json {field}: {why}"))?
                    .unwrap_or_default();
                Triggers::resolve(&definitions, &|name| env.get(name).map(str::to_owned))?
            }
            Err(_) => Triggers::default(),
        };
        let test_clock_start = env
            .get("SANDSTORM_TEST_CLOCK_START")
            .map(|v| {
                humantime::parse_rfc3339_weak(v).map_err(|_| {
                    format!("SANDSTORM_TEST_CLOCK_START must be an RFC 3339 time, got {v:?}")
                })
            })
            .transpose()?;
        let lifecycle = LifecycleSettings::from_env(env);
        let notify = notify_settings(env, profile)?;
        if let Ok(config) = &config {
            signs_for(config, &notify)?;
        }
        Ok(Settings {
            auth: auth_settings(env, profile)?,
            keys: KeyEnv::resolve(|name| env.get(name), &sandbox.credential_fields, cwd),
            cwd: cwd.to_path_buf(),
            config,
            config_env,
            cors_origins,
            max_duration,
            max_body_bytes,
            shutdown_timeout,
            run_linger,
            run_max_lifetime,
            pause_idle,
            connections,
            sandbox,
            key_source: None,
            prices,
            history,
            agent_telemetry,
            triggers: Arc::new(triggers),
            cron_secret: cron_secret(env)?,
            test_clock_start,
            lifecycle,
            notify,
            stays_after_response: profile == Profile::Server,
        })
    }
}

/// The secret E2B signs its lifecycle webhooks with: the one registered
/// with `ds webhook register`.
pub const E2B_WEBHOOK_SECRET_VARIABLE: &str = "SANDSTORM_E2B_WEBHOOK_SECRET";
/// Python Sandstorm 0.9.2's name for it, read when the first is not set.
pub const LEGACY_WEBHOOK_SECRET_VARIABLE: &str = "SANDSTORM_WEBHOOK_SECRET";
/// `1` accepts unsigned lifecycle events when no secret is set.
pub const E2B_WEBHOOK_INSECURE_VARIABLE: &str = "SANDSTORM_E2B_WEBHOOK_INSECURE";

/// How `POST /webhooks/e2b` checks what arrives (see `lifecycle`).
#[derive(Debug, Clone, Default)]
pub struct LifecycleSettings {
    /// The secret E2B signs with: [`E2B_WEBHOOK_SECRET_VARIABLE`], else
    /// [`LEGACY_WEBHOOK_SECRET_VARIABLE`] (0.9.2's name). The serverless
    /// doors also look both names up in their AWS secret.
    pub secret: Option<Secret>,
    /// Which of the two variables the secret came from.
    pub secret_variable: Option<&'static str>,
    /// [`E2B_WEBHOOK_INSECURE_VARIABLE`]: with no secret anywhere, accept
    /// unsigned events rather than answer 503.
    pub insecure: bool,
}

impl LifecycleSettings {
    fn from_env(env: &EnvVars) -> Self {
        let found = [E2B_WEBHOOK_SECRET_VARIABLE, LEGACY_WEBHOOK_SECRET_VARIABLE]
            .into_iter()
            .find_map(|name| {
                env.get(name)
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, Secret::new(v)))
            });
        LifecycleSettings {
            secret_variable: found.as_ref().map(|(name, _)| *name),
            secret: found.map(|(_, secret)| secret),
            insecure: env.flag(E2B_WEBHOOK_INSECURE_VARIABLE),
        }
    }
}

/// The fewest characters `CRON_SECRET` may have: Vercel's advice for it.
pub(crate) const MIN_CRON_SECRET_CHARS: usize = 16;

/// `CRON_SECRET`: the bearer of `GET /triggers/cron/{name}`. A short one
/// stops the door at start-up, as a short API token does; its value is
/// never shown.
fn cron_secret(env: &EnvVars) -> Result<Option<Secret>, String> {
    let Some(secret) = env.get("CRON_SECRET") else {
        return Ok(None);
    };
    let chars = secret.trim().chars().count();
    if chars < MIN_CRON_SECRET_CHARS {
        return Err(format!(
            "CRON_SECRET must be at least {MIN_CRON_SECRET_CHARS} characters (it has {chars}); \
             make one with `openssl rand -hex 32`"
        ));
    }
    Ok(Some(Secret::new(secret.trim())))
}

/// Completion webhooks' settings (see [`crate::notify`]).
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// `SANDSTORM_WEBHOOK_SECRET`, read: `Err` says why it cannot sign.
    /// Kept rather than refused at start-up, so a server that sends no
    /// notice starts whatever the variable holds (0.9.2 used it for E2B's
    /// lifecycle webhooks, in any form).
    pub(crate) secret: Option<Result<crate::notify::WebhookSecret, String>>,
    /// Where notices may go (`SANDSTORM_WEBHOOK_ALLOW_PRIVATE`).
    pub(crate) policy: crate::notify::AddressPolicy,
    /// The waits between attempts (`SANDSTORM_WEBHOOK_RETRY_SCHEDULE`).
    pub(crate) delays: Arc<[Duration]>,
    /// The process's notices in flight: one per process, which
    /// `ds serve --reload` hands on to the settings it loads.
    pub(crate) outbox: crate::notify::Outbox,
    /// Where a run's sandbox reaches this server to say that a turn ended
    /// (`SANDSTORM_PUBLIC_URL`): what a serverless door needs to tell a
    /// detached run's webhook, with nothing of its own alive at the end.
    pub(crate) public_url: Option<reqwest::Url>,
}

/// Refuses a sandstorm.json whose `webhook_url` asks for notices the
/// server cannot sign: every run would end untold.
fn signs_for(config: &SandstormConfig, notify: &NotifySettings) -> Result<(), String> {
    if config.completion_webhook_url().is_none() {
        return Ok(());
    }
    let variable = crate::notify::signing::SECRET_VARIABLE;
    match &notify.secret {
        Some(Ok(_)) => Ok(()),
        None => Err(format!(
            "sandstorm.json's webhook_url asks for a notice when each run ends, and notices \
             are signed with {variable}, which is not set; set it (echo \
             \"whsec_$(openssl rand -base64 32)\"), or remove webhook_url"
        )),
        Some(Err(why)) => Err(format!(
            "sandstorm.json's webhook_url needs a usable {variable}: {why}"
        )),
    }
}

/// The most retries `SANDSTORM_WEBHOOK_RETRY_SCHEDULE` may list.
const MAX_RETRIES: usize = 20;
/// The longest all of them may add up to: a day.
const MAX_RETRYING: Duration = Duration::from_secs(86_400);

fn notify_settings(env: &EnvVars, profile: Profile) -> Result<NotifySettings, String> {
    let secret = env
        .get(crate::notify::signing::SECRET_VARIABLE)
        .filter(|v| !v.trim().is_empty())
        .map(crate::notify::WebhookSecret::parse);
    let allow_private = match env.get("SANDSTORM_WEBHOOK_ALLOW_PRIVATE") {
        // Your own machine's receivers, with `ds serve`; a function's
        // neighbours are not the caller's to reach.
        None => profile == Profile::Server,
        Some(v) => switch("SANDSTORM_WEBHOOK_ALLOW_PRIVATE", v)?,
    };
    let delays = match env.get("SANDSTORM_WEBHOOK_RETRY_SCHEDULE") {
        None => crate::notify::delivery::DEFAULT_DELAYS.to_vec(),
        Some(v) => retry_schedule(v)?,
    };
    Ok(NotifySettings {
        secret,
        policy: crate::notify::AddressPolicy { allow_private },
        delays: delays.into(),
        outbox: crate::notify::Outbox::default(),
        public_url: public_url(env)?,
    })
}

/// `SANDSTORM_PUBLIC_URL`: an absolute http(s) URL, without a query.
fn public_url(env: &EnvVars) -> Result<Option<reqwest::Url>, String> {
    const NAME: &str = "SANDSTORM_PUBLIC_URL";
    let Some(value) = env.get(NAME) else {
        return Ok(None);
    };
    match reqwest::Url::parse(value.trim()) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.query().is_none() =>
        {
            Ok(Some(url))
        }
        _ => Err(format!(
            "{NAME} must be the server's public address, an http:// or https:// URL \
             without a query (https://abc.lambda-url.us-east-1.on.aws), got {value:?}"
        )),
    }
}

/// `SANDSTORM_WEBHOOK_RETRY_SCHEDULE`: the waits between attempts, comma
/// separated durations (`5s,5m,30m,2h`; `250ms` too); `none` for no retry.
fn retry_schedule(value: &str) -> Result<Vec<Duration>, String> {
    const NAME: &str = "SANDSTORM_WEBHOOK_RETRY_SCHEDULE";
    if value.trim() == "none" {
        return Ok(Vec::new());
    }
    let delays = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match humantime::parse_duration(d) {
            Ok(delay) if !delay.is_zero() => Ok(delay),
            _ => Err(format!(
                "{NAME} must be durations such as 5s,5m,2h, comma separated (or none); \
                 {d:?} is not one above zero"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > MAX_RETRIES {
        return Err(format!(
            "{NAME} lists {} retries; the most is {MAX_RETRIES}",
            delays.len()
        ));
    }
    let total: Duration = delays.iter().sum();
    if total > MAX_RETRYING {
        return Err(format!(
            "{NAME} adds up to {}; retries end within a day",
            humantime::format_duration(total)
        ));
    }
    Ok(delays)
}

/// A yes-or-no setting: 1 or 0, true or false, yes or no, on or off.
fn switch(name: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!(
            "{name} must be 1 or 0 (true or false), got {other:?}"
        )),
    }
}

/// Where the run history is kept, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySettings {
    /// The SQLite file; `None` keeps no history in a file.
    pub path: Option<PathBuf>,
    /// The DynamoDB table (`SANDSTORM_HISTORY_TABLE`), which a door with
    /// AWS support opens instead of a file: the serverless doors' history,
    /// shared by every instance.
    pub table: Option<String>,
    /// How long a record is kept; `None` keeps it for good.
    pub retention: Option<Duration>,
    /// The most bytes of a finished run's events kept beside its record
    /// (compressed), when they are kept (`SANDSTORM_STORE_EVENTS`).
    pub store_events: Option<usize>,
}

/// How long a record is kept unless `SANDSTORM_HISTORY_RETENTION_DAYS`
/// says otherwise.
const DEFAULT_HISTORY_RETENTION_DAYS: u64 = 30;

/// A run's stored events, compressed, unless
/// `SANDSTORM_STORE_EVENTS_MAX_BYTES` says otherwise: a typical run's take
/// a few kilobytes; one that prints a lot keeps its first megabyte's worth
/// and its end.
pub(crate) const DEFAULT_STORE_EVENTS_MAX_BYTES: usize = 1 << 20;
/// The bounds of `SANDSTORM_STORE_EVENTS_MAX_BYTES`: under a kilobyte
/// keeps barely a run's first event; over 16 MiB a run's events would be
/// a store's largest value by far (DynamoDB splits them into 350 KB items).
pub(crate) const STORE_EVENTS_MAX_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=16 << 20;

/// `SANDSTORM_HISTORY` (`0` turns it off), `SANDSTORM_HISTORY_PATH` (the
/// file, relative to `cwd`), `SANDSTORM_HISTORY_TABLE` (a DynamoDB table
/// instead of a file) and `SANDSTORM_HISTORY_RETENTION_DAYS` (`0` keeps
/// records for good). A server keeps its history under the user's data
/// folder by default (`$XDG_DATA_HOME/sandstorm/history.db`, else
/// `~/.local/share/...`); a serverless door has no file that outlives an
/// instance, so it keeps none unless given a table or a path. A table and
/// a path together are refused: only one of them would be written.
fn history_settings(
    env: &EnvVars,
    cwd: &Path,
    profile: Profile,
) -> Result<HistorySettings, String> {
    let on = match env.get("SANDSTORM_HISTORY").map(str::trim) {
        None | Some("1" | "true" | "yes" | "on") => true,
        Some("0" | "false" | "no" | "off") => false,
        Some(other) => {
            return Err(format!(
                "SANDSTORM_HISTORY must be 1 or 0 (true or false), got {other:?}"
            ));
        }
    };
    let retention = match env.get("SANDSTORM_HISTORY_RETENTION_DAYS") {
        None => Some(DEFAULT_HISTORY_RETENTION_DAYS),
        Some(v) => match parse_number("SANDSTORM_HISTORY_RETENTION_DAYS", v)? {
            0 => None,
            days => Some(days),
        },
    }
    .map(|days| Duration::from_secs(days.saturating_mul(24 * 3600)));
    let given = env
        .get("SANDSTORM_HISTORY_PATH")
        .filter(|p| !p.trim().is_empty())
        .map(|p| cwd.join(p));
    let default = || {
        let data = env
            .get("XDG_DATA_HOME")
            .filter(|d| Path::new(d).is_absolute())
            .map(PathBuf::from)
            .or_else(|| {
                env.get("HOME")
                    .filter(|h| Path::new(h).is_absolute())
                    .map(|h| Path::new(h).join(".local/share"))
            })?;
        Some(data.join("sandstorm/history.db"))
    };
    let table = env
        .get("SANDSTORM_HISTORY_TABLE")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    if table.is_some() && given.is_some() {
        return Err(
            "SANDSTORM_HISTORY_TABLE and SANDSTORM_HISTORY_PATH are both set; set one: \
             the history goes to a DynamoDB table or to an SQLite file"
                .to_owned(),
        );
    }
    let path = match (on, given, profile) {
        (false, _, _) => None,
        (true, Some(path), _) => Some(path),
        (true, None, _) if table.is_some() => None,
        (true, None, Profile::Server) => default(),
        (true, None, Profile::Serverless { .. }) => None,
    };
    let table = table.filter(|_| on);
    Ok(HistorySettings {
        path,
        table,
        retention,
        store_events: store_events(env)?,
    })
}

/// `SANDSTORM_STORE_EVENTS` (`1` keeps a finished run's events in the
/// history; off by default, since they hold everything the agent said and
/// read) and `SANDSTORM_STORE_EVENTS_MAX_BYTES` (each run's cap).
fn store_events(env: &EnvVars) -> Result<Option<usize>, String> {
    let on = match env.get("SANDSTORM_STORE_EVENTS").map(str::trim) {
        None | Some("0" | "false" | "no" | "off") => false,
        Some("1" | "true" | "yes" | "on") => true,
        Some(other) => {
            return Err(format!(
                "SANDSTORM_STORE_EVENTS must be 1 or 0 (true or false), got {other:?}"
            ));
        }
    };
    let cap = match env.get("SANDSTORM_STORE_EVENTS_MAX_BYTES") {
        None => DEFAULT_STORE_EVENTS_MAX_BYTES,
        Some(v) => {
            let name = "SANDSTORM_STORE_EVENTS_MAX_BYTES";
            let n = parse_number(name, v)?;
            usize::try_from(n)
                .ok()
                .filter(|n| STORE_EVENTS_MAX_BYTES_RANGE.contains(n))
                .ok_or_else(|| {
                    format!(
                        "{name} must be from {} to {} (bytes), got {v:?}",
                        STORE_EVENTS_MAX_BYTES_RANGE.start(),
                        STORE_EVENTS_MAX_BYTES_RANGE.end()
                    )
                })?
        }
    };
    Ok(on.then_some(cap))
}

fn connection_settings(env: &EnvVars) -> Result<ConnectionSettings, String> {
    let defaults = ConnectionSettings::default();
    let seconds = |name: &str, default: Duration| match env.get(name) {
        Some(v) => positive(name, v).map(Duration::from_secs),
        None => Ok(default),
    };
    let max_connections = match env.get("SANDSTORM_MAX_CONNECTIONS") {
        Some(v) => Some(
            usize::try_from(positive("SANDSTORM_MAX_CONNECTIONS", v)?)
                .ok()
                .and_then(NonZeroUsize::new)
                .ok_or_else(|| "SANDSTORM_MAX_CONNECTIONS is too large".to_owned())?,
        ),
        None => None,
    };
    Ok(ConnectionSettings {
        header_timeout: seconds("SANDSTORM_HEADER_TIMEOUT", defaults.header_timeout)?,
        idle_timeout: seconds("SANDSTORM_IDLE_TIMEOUT", defaults.idle_timeout)?,
        max_connections,
    })
}

fn auth_settings(env: &EnvVars, profile: Profile) -> Result<AuthSettings, String> {
    let anonymous_by_default = profile == Profile::Server;
    let mut tokens = Vec::new();
    for (name, alias) in TOKEN_VARIABLES.into_iter().zip(TOKEN_ALIASES) {
        let Some(token) = aliased(env, name, alias)? else {
            continue;
        };
        let given = if env.get(name).is_some() { name } else { alias };
        auth::long_enough(given, token)?;
        tokens.push(Secret::new(token));
    }
    Ok(AuthSettings {
        tokens,
        allow_anonymous: anonymous_by_default || env.flag("SANDSTORM_ALLOW_ANONYMOUS"),
    })
}

/// The value of `name`, or of `alias` (Python Sandstorm 0.9.2's name for
/// it) when `name` is not set. Both set to different values is an error:
/// which one was meant cannot be guessed, and neither value is shown.
fn aliased<'a>(env: &'a EnvVars, name: &str, alias: &str) -> Result<Option<&'a str>, String> {
    match (env.get(name), env.get(alias)) {
        (Some(value), Some(other)) if value != other => Err(format!(
            "{name} and {alias} (Python Sandstorm's name for it) are both set, to different \
             values; set only one"
        )),
        (Some(value), _) | (None, Some(value)) => Ok(Some(value)),
        (None, None) => Ok(None),
    }
}

fn sandbox_settings(
    env: &EnvVars,
    cwd: &Path,
    choice: SandboxChoice<'_>,
) -> Result<SandboxSettings, String> {
    let requested = choice.requested.or_else(|| env.get(SANDBOX_VARIABLE));
    let chosen = provider::choose(choice.catalog, requested, |name| env.get(name).is_some())
        .map_err(|e| match choice.requested {
            Some(_) => e,
            None => format!("{SANDBOX_VARIABLE}: {e}"),
        })?;
    Ok(SandboxSettings {
        provider: chosen,
        options: ProviderSettings::resolve(chosen, |name| env.get(name), cwd, choice.setup)
            .with_executable(choice.executable),
        credential_fields: provider::credential_fields(choice.catalog),
        limits: sandbox_limits(env)?,
    })
}

/// The operator's caps on each sandbox: each `SANDSTORM_SANDBOX_*` setting
/// in the range sandstorm.json's `limits` allow, over the built-in defaults.
fn sandbox_limits(env: &EnvVars) -> Result<Limits, String> {
    let read = |field: &LimitField| -> Result<Option<u64>, String> {
        let Some(value) = env.get(field.variable) else {
            return Ok(None);
        };
        let number = parse_number(field.variable, value)?;
        field
            .check(number)
            .map_err(|why| format!("{} {why}, got {number}", field.variable))?;
        Ok(Some(number))
    };
    let given = LimitsConfig {
        memory_mb: read(&MEMORY_MB)?,
        processes: read(&PROCESSES)?,
        disk_mb: read(&DISK_MB)?,
        cpu_seconds: read(&CPU_SECONDS)?,
    };
    Ok(given.over(Limits::DEFAULT))
}

fn parse_number(name: &str, value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{name} must be a whole number, got {value:?}"))
}

/// A whole number of at least 1: a zero timeout would close every
/// connection at once, and a cap of zero would serve none.
fn positive(name: &str, value: &str) -> Result<u64, String> {
    match parse_number(name, value)? {
        0 => Err(format!("{name} must be at least 1, got {value:?}")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doors::PROVIDERS;

    fn build(pairs: &[(&str, &str)], profile: Profile) -> Result<Settings, String> {
        let choice = SandboxChoice {
            catalog: PROVIDERS,
            requested: None,
            setup: Setup::CheckOnly,
            executable: None,
        };
        Settings::build(
            &EnvVars::from_pairs(pairs.iter().copied()),
            Path::new("/nonexistent"),
            profile,
            choice,
        )
    }

    #[test]
    fn webhook_settings_follow_the_profile_and_a_bad_value_names_its_variable() {
        let serverless = Profile::Serverless { max_duration: None };
        let server = build(&[], Profile::Server).expect("settings");
        assert!(server.notify.policy.allow_private && server.stays_after_response);
        assert!(server.notify.secret.is_none());
        assert_eq!(
            &*server.notify.delays,
            &crate::notify::delivery::DEFAULT_DELAYS[..]
        );
        let function = build(&[], serverless).expect("settings");
        assert!(!function.notify.policy.allow_private && !function.stays_after_response);
        let opened =
            build(&[("SANDSTORM_WEBHOOK_ALLOW_PRIVATE", "1")], serverless).expect("settings");
        assert!(opened.notify.policy.allow_private);
        const SCHEDULE: &str = "SANDSTORM_WEBHOOK_RETRY_SCHEDULE";
        let quick = build(&[(SCHEDULE, "100ms, 2s,5m")], Profile::Server).expect("settings");
        assert_eq!(
            &*quick.notify.delays,
            &[
                Duration::from_millis(100),
                Duration::from_secs(2),
                Duration::from_secs(300)
            ][..]
        );
        let none = build(&[(SCHEDULE, "none")], Profile::Server).expect("settings");
        assert!(none.notify.delays.is_empty());
        let public = build(
            &[("SANDSTORM_PUBLIC_URL", "https://f.example/api")],
            serverless,
        )
        .expect("settings");
        assert_eq!(
            public.notify.public_url.map(|u| u.to_string()).as_deref(),
            Some("https://f.example/api")
        );
        for (name, bad) in [
            ("SANDSTORM_WEBHOOK_ALLOW_PRIVATE", "maybe"),
            ("SANDSTORM_PUBLIC_URL", "f.example"),
            ("SANDSTORM_PUBLIC_URL", "https://f.example/?x=1"),
            (SCHEDULE, "5s,soon"),
            (SCHEDULE, "5"),
            (SCHEDULE, "0s"),
            (SCHEDULE, "24h,1s"),
            (SCHEDULE, &"1s,".repeat(21)),
        ] {
            let error = build(&[(name, bad)], Profile::Server).expect_err(bad);
            assert!(error.contains(name), "{error}");
        }
        // sandstorm.json's webhook_url needs a secret that signs.
        let dir = tempfile::tempdir().expect("a folder");
        std::fs::write(
            dir.path().join("sandstorm.json"),
            r#"{"webhook_url": "https://hooks.example.com/done"}"#,
        )
        .expect("write sandstorm.json");
        let with_config = |pairs: &[(&str, &str)]| {
            let choice = SandboxChoice {
                catalog: PROVIDERS,
                requested: Some("local"),
                setup: crate::sandbox::provider::Setup::CheckOnly,
                executable: None,
            };
            let env = EnvVars::from_pairs(pairs.iter().copied());
            Settings::build(&env, dir.path(), Profile::Server, choice)
        };
        let error = with_config(&[]).expect_err("no secret");
        assert!(
            error.contains("SANDSTORM_WEBHOOK_SECRET") && error.contains("webhook_url"),
            "{error}"
        );
        let error = with_config(&[("SANDSTORM_WEBHOOK_SECRET", "hunter2")]).expect_err("bad");
        assert!(
            error.contains("base64") && !error.contains("hunter2"),
            "{error}"
        );
        assert!(
            with_config(&[(
                "SANDSTORM_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            )])
            .is_ok()
        );
        // Without one, a secret that cannot sign does not stop a server that
        // sends no notice: 0.9.2 kept E2B's lifecycle secret in the same
        // variable.
        let odd =
            build(&[("SANDSTORM_WEBHOOK_SECRET", "hunter2")], Profile::Server).expect("settings");
        assert!(!format!("{odd:?}").contains("hunter2"));
        let why = odd.notify.secret.expect("read").expect_err("cannot sign");
        assert!(
            why.contains("SANDSTORM_WEBHOOK_SECRET") && !why.contains("hunter2"),
            "{why}"
        );
    }

    #[test]
    fn the_shutdown_bound_defaults_to_30_s_and_a_bad_value_names_the_variable() {
        let s = build(&[], Profile::Server).expect("settings");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        let s = build(&[("SANDSTORM_SHUTDOWN_TIMEOUT", "5")], Profile::Server).expect("settings");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(5));
        let e =
            build(&[("SANDSTORM_SHUTDOWN_TIMEOUT", "soon")], Profile::Server).expect_err("refused");
        assert!(e.contains("SANDSTORM_SHUTDOWN_TIMEOUT"), "{e}");
    }

    #[test]
    fn sandbox_limits_default_to_the_built_in_caps_and_each_setting_replaces_one() {
        let s = build(&[], Profile::Server).expect("settings");
        assert_eq!(s.sandbox.limits, Limits::DEFAULT);
        let s = build(
            &[
                ("SANDSTORM_SANDBOX_MEMORY_MB", "4096"),
                ("SANDSTORM_SANDBOX_PROCESSES", "128"),
                ("SANDSTORM_SANDBOX_DISK_MB", " 1024 "),
                ("SANDSTORM_SANDBOX_CPU_SECONDS", "600"),
            ],
            Profile::Server,
        )
        .expect("settings");
        assert_eq!(
            s.sandbox.limits,
            Limits {
                memory_bytes: 4096 << 20,
                processes: 128,
                disk_bytes: 1024 << 20,
                cpu_seconds: 600,
            }
        );
        let s = build(&[("SANDSTORM_SANDBOX_PROCESSES", "64")], Profile::Server).expect("settings");
        assert_eq!(
            s.sandbox.limits,
            Limits {
                processes: 64,
                ..Limits::DEFAULT
            }
        );
    }

    #[test]
    fn a_bad_sandbox_limit_names_the_variable_and_the_range() {
        for (name, value, expected) in [
            (
                "SANDSTORM_SANDBOX_MEMORY_MB",
                "2GB",
                "SANDSTORM_SANDBOX_MEMORY_MB must be a whole number, got \"2GB\"",
            ),
            (
                "SANDSTORM_SANDBOX_MEMORY_MB",
                "10",
                "SANDSTORM_SANDBOX_MEMORY_MB must be between 64 and 1048576, got 10",
            ),
            (
                "SANDSTORM_SANDBOX_PROCESSES",
                "-1",
                "SANDSTORM_SANDBOX_PROCESSES must be a whole number, got \"-1\"",
            ),
            (
                "SANDSTORM_SANDBOX_PROCESSES",
                "100000",
                "SANDSTORM_SANDBOX_PROCESSES must be between 16 and 65536, got 100000",
            ),
            (
                "SANDSTORM_SANDBOX_DISK_MB",
                "0",
                "SANDSTORM_SANDBOX_DISK_MB must be between 64 and 1048576, got 0",
            ),
            (
                "SANDSTORM_SANDBOX_CPU_SECONDS",
                "1.5",
                "SANDSTORM_SANDBOX_CPU_SECONDS must be a whole number, got \"1.5\"",
            ),
            (
                "SANDSTORM_SANDBOX_CPU_SECONDS",
                "999999",
                "SANDSTORM_SANDBOX_CPU_SECONDS must be between 10 and 604800, got 999999",
            ),
        ] {
            let e = build(&[(name, value)], Profile::Server).expect_err(value);
            assert_eq!(e, expected);
        }
    }

    #[test]
    fn connection_limits_have_defaults_and_a_bad_value_names_the_variable() {
        let s = build(&[], Profile::Server).expect("settings");
        assert_eq!(s.connections.header_timeout, Duration::from_secs(10));
        assert_eq!(s.connections.idle_timeout, Duration::from_secs(75));
        assert_eq!(s.connections.max_connections, None);
        let s = build(
            &[
                ("SANDSTORM_HEADER_TIMEOUT", "2"),
                ("SANDSTORM_IDLE_TIMEOUT", " 30 "),
                ("SANDSTORM_MAX_CONNECTIONS", "8"),
            ],
            Profile::Server,
        )
        .expect("settings");
        assert_eq!(s.connections.header_timeout, Duration::from_secs(2));
        assert_eq!(s.connections.idle_timeout, Duration::from_secs(30));
        assert_eq!(s.connections.max_connections, NonZeroUsize::new(8));
        for name in [
            "SANDSTORM_HEADER_TIMEOUT",
            "SANDSTORM_IDLE_TIMEOUT",
            "SANDSTORM_MAX_CONNECTIONS",
        ] {
            for bad in ["soon", "-1", "1.5", "0"] {
                let e = build(&[(name, bad)], Profile::Server).expect_err("refused");
                assert!(e.contains(name) && e.contains(bad), "{name}={bad}: {e}");
            }
        }
    }

    #[test]
    fn anonymous_access_follows_the_profile() {
        assert!(
            build(&[], Profile::Server)
                .expect("settings")
                .auth
                .allow_anonymous
        );
        let serverless = Profile::Serverless { max_duration: None };
        assert!(
            !build(&[], serverless)
                .expect("settings")
                .auth
                .allow_anonymous
        );
        let open = build(&[("SANDSTORM_ALLOW_ANONYMOUS", "1")], serverless).expect("settings");
        assert!(open.auth.allow_anonymous);
    }

    #[test]
    fn python_sandstorm_s_names_for_the_tokens_and_cors_are_aliases() {
        let tokens = |pairs: &[(&str, &str)]| -> Vec<String> {
            build(pairs, Profile::Server)
                .expect("settings")
                .auth
                .tokens
                .iter()
                .map(|t| t.expose().to_owned())
                .collect()
        };
        assert_eq!(
            tokens(&[("SANDSTORM_API_KEY", "k1-0123456789abcdef0123456789abcdef")]),
            ["k1-0123456789abcdef0123456789abcdef"]
        );
        assert_eq!(
            tokens(&[
                ("SANDSTORM_API_KEY", "k1-0123456789abcdef0123456789abcdef"),
                (
                    "SANDSTORM_API_KEY_PREVIOUS",
                    "k0-0123456789abcdef0123456789abcdef"
                )
            ]),
            [
                "k1-0123456789abcdef0123456789abcdef",
                "k0-0123456789abcdef0123456789abcdef"
            ]
        );
        assert_eq!(
            tokens(&[
                ("SANDSTORM_API_TOKEN", "k1-0123456789abcdef0123456789abcdef"),
                ("SANDSTORM_API_KEY", "k1-0123456789abcdef0123456789abcdef")
            ]),
            ["k1-0123456789abcdef0123456789abcdef"]
        );
        let clash = build(
            &[
                (
                    "SANDSTORM_API_TOKEN",
                    "token-one-0123456789abcdef0123456789",
                ),
                ("SANDSTORM_API_KEY", "token-two-0123456789abcdef0123456789"),
            ],
            Profile::Server,
        )
        .expect_err("two different tokens");
        assert!(
            clash.contains("SANDSTORM_API_TOKEN") && clash.contains("SANDSTORM_API_KEY"),
            "{clash}"
        );
        assert!(
            !clash.contains("token-one-0123456789abcdef0123456789")
                && !clash.contains("token-two-0123456789abcdef0123456789"),
            "{clash}"
        );
        let short = build(
            &[("SANDSTORM_API_KEY", "short-token-31-characters-long!")],
            Profile::Server,
        )
        .expect_err("too short");
        assert!(
            short.contains("SANDSTORM_API_KEY") && short.contains("32 characters"),
            "{short}"
        );
        assert!(!short.contains("short-token"), "{short}");
        let short = build(
            &[
                ("SANDSTORM_API_TOKEN", "k1-0123456789abcdef0123456789abcdef"),
                ("SANDSTORM_API_TOKEN_PREVIOUS", "old"),
            ],
            Profile::Server,
        )
        .expect_err("a short previous token too");
        assert!(short.contains("SANDSTORM_API_TOKEN_PREVIOUS"), "{short}");
        let cors =
            build(&[("CORS_ORIGINS", "https://a.example")], Profile::Server).expect("settings");
        assert_eq!(cors.cors_origins, ["https://a.example"]);
    }

    #[test]
    fn history_lives_under_the_users_data_folder_unless_told_otherwise() {
        let path =
            |pairs: &[(&str, &str)], profile| build(pairs, profile).expect("settings").history.path;
        let server = Profile::Server;
        assert_eq!(
            path(&[("XDG_DATA_HOME", "/data"), ("HOME", "/home/u")], server),
            Some(PathBuf::from("/data/sandstorm/history.db"))
        );
        assert_eq!(
            path(&[("HOME", "/home/u")], server),
            Some(PathBuf::from("/home/u/.local/share/sandstorm/history.db"))
        );
        assert_eq!(path(&[], server), None, "no home, no default");
        assert_eq!(
            path(&[("HOME", "/home/u"), ("SANDSTORM_HISTORY", "0")], server),
            None
        );
        assert_eq!(
            path(&[("SANDSTORM_HISTORY_PATH", "/var/h.db")], server),
            Some(PathBuf::from("/var/h.db"))
        );
        let serverless = Profile::Serverless { max_duration: None };
        assert_eq!(path(&[("HOME", "/home/u")], serverless), None);
        assert_eq!(
            path(&[("SANDSTORM_HISTORY_PATH", "/tmp/h.db")], serverless),
            Some(PathBuf::from("/tmp/h.db"))
        );
    }

    #[test]
    fn a_history_table_replaces_the_file_and_a_path_beside_it_is_refused() {
        let history = |pairs: &[(&str, &str)], profile| build(pairs, profile).map(|s| s.history);
        let serverless = Profile::Serverless { max_duration: None };
        for profile in [Profile::Server, serverless] {
            let table = history(
                &[("SANDSTORM_HISTORY_TABLE", "runs"), ("HOME", "/home/u")],
                profile,
            )
            .expect("settings");
            assert_eq!(table.table.as_deref(), Some("runs"), "{profile:?}");
            assert_eq!(table.path, None, "{profile:?}: no file beside the table");
            let off = history(
                &[
                    ("SANDSTORM_HISTORY_TABLE", "runs"),
                    ("SANDSTORM_HISTORY", "0"),
                ],
                profile,
            )
            .expect("settings");
            assert_eq!((off.table, off.path), (None, None), "{profile:?}");
            let both = history(
                &[
                    ("SANDSTORM_HISTORY_TABLE", "runs"),
                    ("SANDSTORM_HISTORY_PATH", "/tmp/h.db"),
                ],
                profile,
            )
            .expect_err("refused");
            assert!(both.contains("SANDSTORM_HISTORY_TABLE"), "{both}");
        }
    }

    #[test]
    fn history_retention_is_days_and_zero_keeps_records_for_good() {
        let retention = |pairs: &[(&str, &str)]| {
            build(pairs, Profile::Server)
                .expect("settings")
                .history
                .retention
        };
        assert_eq!(retention(&[]), Some(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!(
            retention(&[("SANDSTORM_HISTORY_RETENTION_DAYS", "7")]),
            Some(Duration::from_secs(7 * 24 * 3600))
        );
        assert_eq!(
            retention(&[("SANDSTORM_HISTORY_RETENTION_DAYS", "0")]),
            None
        );
        for (name, bad) in [
            ("SANDSTORM_HISTORY_RETENTION_DAYS", "a week"),
            ("SANDSTORM_HISTORY", "maybe"),
        ] {
            let e = build(&[(name, bad)], Profile::Server).expect_err("refused");
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn a_cron_secret_is_optional_and_a_short_one_is_refused_unshown() {
        assert!(
            build(&[], Profile::Server)
                .expect("settings")
                .cron_secret
                .is_none()
        );
        let secret = "cron-secret-0123456789";
        let set = build(&[("CRON_SECRET", secret)], Profile::Server).expect("settings");
        assert_eq!(set.cron_secret.as_ref().map(Secret::expose), Some(secret));
        assert!(
            !format!("{set:?}").contains(secret),
            "Debug shows no secret"
        );
        let short =
            build(&[("CRON_SECRET", "short-secret")], Profile::Server).expect_err("too short");
        assert!(
            short.contains("CRON_SECRET") && short.contains("16"),
            "{short}"
        );
        assert!(!short.contains("short-secret"), "{short}");
    }

    #[test]
    fn stored_events_are_off_unless_asked_for_and_their_cap_is_checked() {
        let stored =
            |pairs: &[(&str, &str)]| build(pairs, Profile::Server).map(|s| s.history.store_events);
        assert_eq!(stored(&[]), Ok(None));
        assert_eq!(stored(&[("SANDSTORM_STORE_EVENTS", "0")]), Ok(None));
        assert_eq!(
            stored(&[("SANDSTORM_STORE_EVENTS", "1")]),
            Ok(Some(1 << 20))
        );
        assert_eq!(
            stored(&[
                ("SANDSTORM_STORE_EVENTS", "true"),
                ("SANDSTORM_STORE_EVENTS_MAX_BYTES", "4096")
            ]),
            Ok(Some(4096))
        );
        for (name, bad) in [
            ("SANDSTORM_STORE_EVENTS", "always"),
            ("SANDSTORM_STORE_EVENTS_MAX_BYTES", "1MiB"),
            ("SANDSTORM_STORE_EVENTS_MAX_BYTES", "100"),
            ("SANDSTORM_STORE_EVENTS_MAX_BYTES", "999999999"),
        ] {
            let e = build(&[(name, bad)], Profile::Server).expect_err("refused");
            assert!(e.contains(name), "{name}={bad}: {e}");
        }
    }

    #[test]
    fn the_lifecycle_secret_is_ours_else_python_sandstorm_s_and_unsigned_events_are_opt_in() {
        let none = build(&[], Profile::Server).expect("settings").lifecycle;
        assert!(none.secret.is_none() && !none.insecure);
        let legacy = build(&[("SANDSTORM_WEBHOOK_SECRET", "old")], Profile::Server)
            .expect("settings")
            .lifecycle;
        assert_eq!(legacy.secret.as_ref().map(Secret::expose), Some("old"));
        assert_eq!(legacy.secret_variable, Some("SANDSTORM_WEBHOOK_SECRET"));
        let both = build(
            &[
                ("SANDSTORM_WEBHOOK_SECRET", "old"),
                ("SANDSTORM_E2B_WEBHOOK_SECRET", "new"),
                ("SANDSTORM_E2B_WEBHOOK_INSECURE", "1"),
            ],
            Profile::Server,
        )
        .expect("settings")
        .lifecycle;
        assert_eq!(both.secret.as_ref().map(Secret::expose), Some("new"));
        assert_eq!(both.secret_variable, Some("SANDSTORM_E2B_WEBHOOK_SECRET"));
        assert!(both.insecure);
        assert!(!format!("{both:?}").contains("new\""), "{both:?}");
        let empty = build(&[("SANDSTORM_E2B_WEBHOOK_SECRET", "")], Profile::Server)
            .expect("settings")
            .lifecycle;
        assert!(empty.secret.is_none(), "an empty value is no secret");
    }
}
