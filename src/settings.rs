//! Everything a door decides once at start-up, built from [`EnvVars`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, SandstormConfig};
use crate::env::EnvVars;
use crate::keys::KeySource;
use crate::secret::Secret;

/// The default limit on a `/query` body. File contents are limited to 10 MB
/// and prompts to 1,000,000 characters; JSON escaping can double a text.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Which kind of sandbox runs the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxKind {
    /// An E2B cloud VM.
    E2b,
    /// A bubblewrap sandbox on this machine.
    Local,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::E2b => "e2b",
            SandboxKind::Local => "local",
        }
    }

    /// `--sandbox` or `SANDSTORM_SANDBOX` when given; otherwise E2B when an
    /// E2B key is available and local when not.
    pub fn choose(flag: Option<SandboxKind>, env: &EnvVars) -> Result<SandboxKind, String> {
        if let Some(kind) = flag {
            return Ok(kind);
        }
        match env.get("SANDSTORM_SANDBOX") {
            Some("e2b") => Ok(SandboxKind::E2b),
            Some("local") => Ok(SandboxKind::Local),
            Some(other) => Err(format!(
                "SANDSTORM_SANDBOX must be \"e2b\" or \"local\", got {other:?}"
            )),
            None if env.get("E2B_API_KEY").is_some() => Ok(SandboxKind::E2b),
            None => Ok(SandboxKind::Local),
        }
    }
}

/// Who may call `/query`.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Accepted bearer tokens: the current one and, during a rotation, the
    /// previous one.
    pub tokens: Vec<Secret>,
    /// Whether `/query` is open when no token is configured. Local servers
    /// allow it (they bind to loopback); serverless doors refuse unless
    /// `SANDSTORM_ALLOW_ANONYMOUS=1`.
    pub allow_anonymous: bool,
}

impl AuthSettings {
    pub fn from_env(env: &EnvVars, anonymous_by_default: bool) -> Self {
        let tokens = ["SANDSTORM_API_TOKEN", "SANDSTORM_API_TOKEN_PREVIOUS"]
            .into_iter()
            .filter_map(|name| env.get(name).map(Secret::new))
            .collect();
        AuthSettings {
            tokens,
            allow_anonymous: anonymous_by_default || env.flag("SANDSTORM_ALLOW_ANONYMOUS"),
        }
    }
}

/// The settings of one server process.
#[derive(Clone)]
pub struct Settings {
    pub env: EnvVars,
    /// Where relative paths (sandstorm.json, the Vertex key file) resolve.
    pub cwd: PathBuf,
    /// The loaded sandstorm.json, or why it could not be loaded: a door that
    /// cannot refuse to start answers every `/query` with this error.
    pub config: Result<Arc<SandstormConfig>, ConfigError>,
    pub sandbox: SandboxKind,
    pub auth: AuthSettings,
    /// Allowed CORS origins; empty means no cross-origin access.
    pub cors_origins: Vec<String>,
    /// The hosting platform's limit on one response (Vercel's maxDuration),
    /// when it is not given per request.
    pub max_duration: Option<Duration>,
    pub max_body_bytes: usize,
    /// Keys looked up after the environment (AWS Secrets Manager).
    pub key_source: Option<Arc<dyn KeySource>>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("env", &self.env)
            .field("cwd", &self.cwd)
            .field("config", &self.config)
            .field("sandbox", &self.sandbox)
            .field("auth", &self.auth)
            .field("cors_origins", &self.cors_origins)
            .field("max_duration", &self.max_duration)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("key_source", &self.key_source.is_some())
            .finish()
    }
}

impl Settings {
    /// Reads every setting from `env`. Invalid values are errors naming the
    /// variable; an invalid sandstorm.json is kept in `config`.
    pub fn from_env(env: EnvVars, cwd: &Path, sandbox: SandboxKind) -> Result<Self, String> {
        let config_path = env.get("SANDSTORM_CONFIG").map(PathBuf::from);
        let config = SandstormConfig::load(config_path.as_deref(), cwd).map(Arc::new);
        let cors_origins = env
            .get("SANDSTORM_CORS_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let max_duration = match env.get("SANDSTORM_MAX_DURATION") {
            Some(v) => Some(Duration::from_secs(parse_number(
                "SANDSTORM_MAX_DURATION",
                v,
            )?)),
            None => None,
        };
        let max_body_bytes = match env.get("SANDSTORM_MAX_BODY_BYTES") {
            Some(v) => usize::try_from(parse_number("SANDSTORM_MAX_BODY_BYTES", v)?)
                .map_err(|_| "SANDSTORM_MAX_BODY_BYTES is too large".to_owned())?,
            None => DEFAULT_MAX_BODY_BYTES,
        };
        Ok(Settings {
            auth: AuthSettings::from_env(&env, true),
            env,
            cwd: cwd.to_path_buf(),
            config,
            sandbox,
            cors_origins,
            max_duration,
            max_body_bytes,
            key_source: None,
        })
    }
}

fn parse_number(name: &str, value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{name} must be a whole number, got {value:?}"))
}
