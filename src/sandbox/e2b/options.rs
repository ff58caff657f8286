//! Where E2B lives and how patiently we talk to it, decided once at the door.
//!
//! The URL rules mirror the official SDKs (`connection_config.py` and
//! `connectionConfig.ts` in e2b-dev/E2B), so a deployment that already points
//! the Python or JS SDK somewhere with `E2B_API_URL`, `E2B_SANDBOX_URL`,
//! `E2B_DOMAIN` or `E2B_DEBUG` reaches the same place with Sandstorm.

use std::time::Duration;

use e2b_wire::envd::ENVD_PORT;

use super::CREDENTIAL;
use crate::sandbox::provider::ProviderSettings;
use crate::secret::Secret;

/// The variables E2B's options are read from, besides the key. They are the
/// official SDKs' own, plus the template's name.
pub(super) const VARIABLES: &[&str] = &[
    "E2B_API_URL",
    "E2B_SANDBOX_URL",
    "E2B_DOMAIN",
    "E2B_DEBUG",
    "E2B_MAX_TIMEOUT",
    "SANDSTORM_TEMPLATE",
    MODEL_PROXY_VARIABLE,
    MAX_STARTING_VARIABLE,
];

/// `0` turns off the template's model proxy, which is on by default: the
/// model key then enters the sandbox, and runs may not have spending caps.
/// The proxy needs a template built from this version's `template/`.
pub(crate) const MODEL_PROXY_VARIABLE: &str = "SANDSTORM_E2B_MODEL_PROXY";

/// How many sandboxes may be starting at once (see `starting`).
pub(crate) const MAX_STARTING_VARIABLE: &str = "SANDSTORM_E2B_MAX_STARTING";

/// The default of [`MAX_STARTING_VARIABLE`]: enough starts in flight to
/// keep E2B busy (at a few hundred milliseconds each, hundreds a second),
/// few enough that a burst holds little while they wait.
pub(crate) const DEFAULT_MAX_STARTING: usize = 64;

/// E2B's limit on a sandbox's lifetime on the Pro plan: one hour. The
/// Hobby plan allows less; `E2B_MAX_TIMEOUT` says what the plan allows.
pub(crate) const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The template Sandstorm's own E2B template is published under.
pub(crate) const DEFAULT_TEMPLATE: &str = "sandstorm";

/// E2B's public domain.
pub(crate) const DEFAULT_DOMAIN: &str = "e2b.app";

/// Domains whose edge routes envd traffic by header through one host,
/// `sandbox.{domain}`, instead of one host per sandbox (the SDKs' list).
const HEADER_ROUTED_DOMAINS: [&str; 4] = ["e2b.app", "e2b.dev", "e2b.pro", "e2b-staging.dev"];

/// Everything the E2B client needs to know. Plain fields, so tests can point
/// it at a loopback server and shrink every wait.
#[derive(Debug, Clone)]
pub struct E2bOptions {
    /// `E2B_API_KEY`; a request's own key overrides it.
    pub api_key: Option<Secret>,
    /// Control plane base URL, without a trailing slash.
    pub api_url: String,
    /// `E2B_SANDBOX_URL`: one envd base URL for every sandbox. When unset the
    /// URL is derived per sandbox (see [`E2bOptions::envd_url`]).
    pub sandbox_url: Option<String>,
    /// `E2B_DOMAIN`, used when create does not name a domain for the sandbox.
    pub domain: String,
    /// `E2B_DEBUG`: talk to a locally run E2B stack on its default ports.
    pub debug: bool,
    /// The template every sandbox is created from (`SANDSTORM_TEMPLATE`).
    pub template: String,
    /// `E2B_MAX_TIMEOUT`: the longest lifetime the plan allows one create or
    /// set-timeout call to ask for. A run that needs longer is extended
    /// with set-timeout calls while it lasts.
    pub max_timeout: Duration,
    /// Sandbox lifetime when the caller asks for none (E2B's own default is
    /// 15 s, far too short for an agent run).
    pub default_lifetime: Duration,
    /// Limit on opening a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit on one attempt of a request/response call (create, upload,
    /// kill, download), and on a process start getting its response headers.
    pub request_timeout: Duration,
    /// How often envd should send a keepalive on a quiet process stream.
    pub keepalive_interval: Duration,
    /// A process stream silent for this long is a dead connection. Must be
    /// comfortably above `keepalive_interval`.
    pub stream_idle_timeout: Duration,
    /// Retries of create, set-timeout and kill.
    pub retry: RetryPolicy,
    /// `SANDSTORM_E2B_MODEL_PROXY` (on unless `0`): start the template's
    /// model proxy beside each process that holds a model key, and give the
    /// process only a placeholder (see `keyless`).
    pub model_proxy: bool,
    /// `SANDSTORM_E2B_MAX_STARTING`: how many sandboxes may be between
    /// their create call and their first process's start at once; the
    /// rest wait their turn (see `starting`).
    pub max_starting: usize,
}

/// Bounded exponential backoff with jitter, within a budget of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included. `1` means no retry.
    pub attempts: u32,
    /// Wait before the first retry; doubles for each one after.
    pub base_backoff: Duration,
    /// Ceiling on any single wait of our own (a `Retry-After` is E2B's).
    pub max_backoff: Duration,
    /// The most time spent waiting between the attempts of one call. A
    /// wait that would go past it, whether ours or E2B's `Retry-After`,
    /// ends the retries instead.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// Rides out about half a minute of rate limiting (from 16 to 30 s of
    /// waiting, with jitter): a burst of creates on a busy account is
    /// turned away for seconds, not milliseconds, and a run that waits
    /// that long still beats one that fails.
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            budget: Duration::from_secs(30),
        }
    }
}

impl Default for E2bOptions {
    /// E2B's public cloud with no key, as if no variable were set.
    fn default() -> Self {
        Self::from_lookup(|_| None)
    }
}

impl E2bOptions {
    /// Reads `E2B_API_KEY`, `E2B_API_URL`, `E2B_SANDBOX_URL`, `E2B_DOMAIN`,
    /// `E2B_DEBUG` and `SANDSTORM_TEMPLATE` from the settings the door
    /// resolved for the declared [`VARIABLES`]. Empty values count as unset,
    /// as in the SDKs.
    /// A malformed `E2B_MAX_TIMEOUT` is an error naming it.
    pub(crate) fn from_settings(settings: &ProviderSettings) -> Result<Self, String> {
        let mut options = Self::from_lookup(|name| settings.get(name));
        if let Some(raw) = settings.get("E2B_MAX_TIMEOUT").filter(|v| !v.is_empty()) {
            options.max_timeout = parse_max_timeout(raw)?;
        }
        options.model_proxy = model_proxy(settings)?;
        if let Some(raw) = settings
            .get(MAX_STARTING_VARIABLE)
            .filter(|v| !v.is_empty())
        {
            options.max_starting = parse_max_starting(raw)?;
        }
        Ok(options)
    }

    fn from_lookup<'a>(lookup: impl Fn(&str) -> Option<&'a str>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let domain = get("E2B_DOMAIN").unwrap_or(DEFAULT_DOMAIN).to_owned();
        // The SDKs only accept the literal `true`, so `E2B_DEBUG=1` does
        // nothing there; do the same rather than surprise someone.
        let debug = get("E2B_DEBUG").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let api_url = match get("E2B_API_URL") {
            Some(url) => url.to_owned(),
            None if debug => "http://localhost:3000".to_owned(),
            None => format!("https://api.{domain}"),
        };
        E2bOptions {
            api_key: get(CREDENTIAL.variable).map(Secret::from),
            api_url: trim_slash(api_url),
            sandbox_url: get("E2B_SANDBOX_URL").map(|u| trim_slash(u.to_owned())),
            domain,
            debug,
            template: get("SANDSTORM_TEMPLATE")
                .unwrap_or(DEFAULT_TEMPLATE)
                .to_owned(),
            max_timeout: DEFAULT_MAX_TIMEOUT,
            default_lifetime: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(50),
            stream_idle_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            model_proxy: true,
            max_starting: DEFAULT_MAX_STARTING,
        }
    }

    /// Points both planes at one server, e.g. an emulator on loopback.
    pub fn local(base_url: &str, api_key: impl Into<Secret>) -> Self {
        let base = trim_slash(base_url.to_owned());
        E2bOptions {
            api_key: Some(api_key.into()),
            api_url: base.clone(),
            sandbox_url: Some(base),
            ..Self::default()
        }
    }

    /// The envd base URL of one sandbox, as the SDKs build it:
    /// `E2B_SANDBOX_URL` if set; `http://localhost:49983` in debug mode;
    /// `https://sandbox.{domain}` on E2B's own domains (the edge routes by
    /// the `E2b-Sandbox-Id` header); otherwise `https://49983-{id}.{domain}`.
    /// `sandbox_domain` is the `domain` create answered, if any.
    pub(crate) fn envd_url(&self, sandbox_id: &str, sandbox_domain: Option<&str>) -> String {
        if let Some(url) = &self.sandbox_url {
            return url.clone();
        }
        if self.debug {
            return format!("http://localhost:{ENVD_PORT}");
        }
        let domain = sandbox_domain
            .filter(|d| !d.is_empty())
            .unwrap_or(&self.domain);
        if HEADER_ROUTED_DOMAINS.contains(&domain) {
            format!("https://sandbox.{domain}")
        } else {
            format!("https://{ENVD_PORT}-{sandbox_id}.{domain}")
        }
    }
}

/// Whether [`MODEL_PROXY_VARIABLE`] leaves the model proxy on: `1` or `0`
/// (`true`, `false`), on when unset. Off is the Python original's way, the
/// key in the sandbox's environment, for a template without the proxy.
pub(crate) fn model_proxy(settings: &ProviderSettings) -> Result<bool, String> {
    match settings.get(MODEL_PROXY_VARIABLE).map(str::trim) {
        None | Some("" | "1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(format!(
            "{MODEL_PROXY_VARIABLE} must be 1 or 0 (true or false), got {other:?}"
        )),
    }
}

/// `E2B_MAX_TIMEOUT`: whole seconds, at least 1.
fn parse_max_timeout(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<u64>() {
        Ok(secs) if secs >= 1 => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "E2B_MAX_TIMEOUT must be a whole number of seconds, at least 1 (the plan's \
             longest sandbox lifetime, e.g. 3600); got {raw:?}"
        )),
    }
}

/// `SANDSTORM_E2B_MAX_STARTING`: a whole number, at least 1.
fn parse_max_starting(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(max) if max >= 1 => Ok(max),
        _ => Err(format!(
            "{MAX_STARTING_VARIABLE} must be a whole number, at least 1 (how many sandboxes \
             may be starting at once; default {DEFAULT_MAX_STARTING}); got {raw:?}"
        )),
    }
}

fn trim_slash(mut url: String) -> String {
    while url.ends_with('/') {
        url.pop();
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_options(pairs: &[(&str, &str)]) -> Result<E2bOptions, String> {
        let settings = ProviderSettings::resolve(
            &super::super::PROVIDER,
            |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
            std::path::Path::new("/"),
            crate::sandbox::provider::Setup::CheckOnly,
        );
        E2bOptions::from_settings(&settings)
    }

    fn options(pairs: &[(&str, &str)]) -> E2bOptions {
        try_options(pairs).expect("valid settings")
    }

    #[test]
    fn max_starting_defaults_to_64_and_a_bad_value_names_the_variable() {
        assert_eq!(options(&[]).max_starting, DEFAULT_MAX_STARTING);
        assert_eq!(options(&[(MAX_STARTING_VARIABLE, "8")]).max_starting, 8);
        for bad in ["0", "-1", "many", "2.5"] {
            let err = try_options(&[(MAX_STARTING_VARIABLE, bad)]).expect_err(bad);
            assert!(err.contains(MAX_STARTING_VARIABLE), "{err}");
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn max_timeout_defaults_to_an_hour_and_a_bad_value_names_the_variable() {
        assert_eq!(options(&[]).max_timeout, Duration::from_secs(3600));
        assert_eq!(
            options(&[("E2B_MAX_TIMEOUT", "86400")]).max_timeout,
            Duration::from_secs(86400)
        );
        for bad in ["0", "1h", "-5", "3.5"] {
            let err = try_options(&[("E2B_MAX_TIMEOUT", bad)]).expect_err(bad);
            assert!(err.contains("E2B_MAX_TIMEOUT"), "{err}");
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_model_proxy_is_on_unless_turned_off_and_a_bad_value_names_the_variable() {
        assert!(options(&[]).model_proxy);
        assert!(options(&[(MODEL_PROXY_VARIABLE, "")]).model_proxy);
        assert!(options(&[(MODEL_PROXY_VARIABLE, "1")]).model_proxy);
        assert!(!options(&[(MODEL_PROXY_VARIABLE, "0")]).model_proxy);
        assert!(!options(&[(MODEL_PROXY_VARIABLE, "false")]).model_proxy);
        let err = try_options(&[(MODEL_PROXY_VARIABLE, "maybe")]).expect_err("maybe");
        assert!(err.contains(MODEL_PROXY_VARIABLE), "{err}");
        assert!(err.contains("maybe"), "{err}");
    }

    #[test]
    fn defaults_to_e2b_cloud_and_the_sandstorm_template() {
        let o = options(&[]);
        assert_eq!(o.api_url, "https://api.e2b.app");
        assert_eq!(o.template, "sandstorm");
        assert!(o.api_key.is_none());
        assert_eq!(o.envd_url("sbx1", None), "https://sandbox.e2b.app");
    }

    #[test]
    fn e2b_domain_moves_both_planes() {
        let o = options(&[("E2B_DOMAIN", "e2b.example.com")]);
        assert_eq!(o.api_url, "https://api.e2b.example.com");
        assert_eq!(
            o.envd_url("sbx1", None),
            "https://49983-sbx1.e2b.example.com"
        );
    }

    #[test]
    fn the_domain_create_answered_wins_over_e2b_domain() {
        let o = options(&[("E2B_DOMAIN", "e2b.example.com")]);
        assert_eq!(
            o.envd_url("sbx1", Some("eu.example.net")),
            "https://49983-sbx1.eu.example.net"
        );
        assert_eq!(
            o.envd_url("sbx1", Some("e2b.dev")),
            "https://sandbox.e2b.dev"
        );
        // A null or empty domain in the answer falls back to ours.
        assert_eq!(
            o.envd_url("sbx1", Some("")),
            "https://49983-sbx1.e2b.example.com"
        );
    }

    #[test]
    fn explicit_urls_override_the_domain() {
        let o = options(&[
            ("E2B_DOMAIN", "e2b.example.com"),
            ("E2B_API_URL", "http://127.0.0.1:3000/"),
            ("E2B_SANDBOX_URL", "http://127.0.0.1:4000/"),
        ]);
        assert_eq!(o.api_url, "http://127.0.0.1:3000");
        assert_eq!(o.envd_url("sbx1", Some("e2b.app")), "http://127.0.0.1:4000");
    }

    #[test]
    fn api_url_alone_leaves_envd_on_the_domain() {
        let o = options(&[("E2B_API_URL", "http://127.0.0.1:3000")]);
        assert_eq!(o.api_url, "http://127.0.0.1:3000");
        assert_eq!(o.envd_url("sbx1", None), "https://sandbox.e2b.app");
    }

    #[test]
    fn debug_mode_uses_the_local_stack_ports_unless_urls_are_given() {
        let o = options(&[("E2B_DEBUG", "TRUE")]);
        assert_eq!(o.api_url, "http://localhost:3000");
        assert_eq!(
            o.envd_url("sbx1", Some("e2b.app")),
            "http://localhost:49983"
        );
        let o = options(&[("E2B_DEBUG", "true"), ("E2B_API_URL", "http://h:1")]);
        assert_eq!(o.api_url, "http://h:1");
        // Like the SDKs, only the word `true` turns debug on.
        assert!(!options(&[("E2B_DEBUG", "1")]).debug);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let o = options(&[
            ("E2B_DOMAIN", ""),
            ("E2B_SANDBOX_URL", ""),
            ("SANDSTORM_TEMPLATE", ""),
        ]);
        assert_eq!(o.api_url, "https://api.e2b.app");
        assert_eq!(o.template, "sandstorm");
        assert!(o.sandbox_url.is_none());
    }

    #[test]
    fn template_and_key_come_from_the_environment() {
        let o = options(&[("SANDSTORM_TEMPLATE", "mine"), ("E2B_API_KEY", "e2b_abc")]);
        assert_eq!(o.template, "mine");
        assert_eq!(o.api_key.as_ref().map(Secret::expose), Some("e2b_abc"));
        assert!(!format!("{o:?}").contains("e2b_abc"));
    }
}
