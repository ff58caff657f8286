//! From a validated request to a [`RunPlan`]: the keys, the agent config,
//! the files of the one upload, the runner's argv and environment, the
//! deadline, and what to redact.
//!
//! [`prepare`] is the one way into a run for every door: the HTTP handler
//! and the CLI both call it with a validated [`Query`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::{NetworkConfig, SandstormConfig};
use crate::env::switched_on;
use crate::error::ApiError;
use crate::events::Redactor;
use crate::keys::{self, ResolvedKeys};
use crate::outputs::{DEFAULT_LIMITS, OutputPlan};
use crate::request::{DEFAULT_TIMEOUT_SECS, Query};
use crate::run_id::{self, RunId};
use crate::runs;
use crate::sandbox::layout;
use crate::sandbox::{Limits, ProcessSpec, SandboxFile, SandboxSpec};
use crate::secret::Secret;
use crate::settings::Settings;
use crate::spend::prices::{self, PRICES_VARIABLE};
use crate::spend::{Caps, SpendMeter};

mod agent;

/// The runner, embedded so the server always runs the runner it was built
/// with, whatever the sandbox image holds.
pub(crate) const RUNNER_SCRIPT: &str = include_str!("../runner/runner.mjs");
/// The SDK's user settings, as the original writes them.
pub(crate) const SDK_SETTINGS: &str = r#"{
  "permissions": { "allow": [], "deny": [] },
  "env": { "CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS": "1" }
}
"#;
/// How long the sandbox outlives the run's deadline on the provider's own
/// clock: the backstop that reaps it if this process dies mid-run.
const SANDBOX_GRACE: Duration = Duration::from_secs(60);
/// How long before a platform deadline (Lambda, Vercel) a run ends itself,
/// leaving time to send the error event and destroy the sandbox.
pub(crate) const PLATFORM_MARGIN: Duration = Duration::from_secs(10);
/// How long before a platform deadline a detached run's stream ends: enough
/// to send the `detached` event; nothing is destroyed.
pub(crate) const DETACH_MARGIN: Duration = Duration::from_secs(2);
/// How long the runner process may outlive the run's deadline: a backstop
/// the provider enforces behind the run's own.
const PROCESS_GRACE: Duration = Duration::from_secs(5);

/// Everything one run needs, built from a validated request.
#[derive(Debug)]
pub(crate) struct RunPlan {
    /// Names the run in logs, events and the `x-request-id` header.
    pub request_id: String,
    /// What to ask the provider for.
    pub sandbox: SandboxSpec,
    /// The runner, its config, the SDK settings and the user's files: one upload.
    pub files: Vec<SandboxFile>,
    /// The runner, as argv and environment.
    pub process: ProcessSpec,
    /// When the run must be over. The timeout error is sent at this instant.
    pub deadline: Instant,
    /// What `timeout` means to the client, for the error message.
    pub deadline_reason: String,
    /// Secret values to scrub from everything the client sees.
    pub redactor: Redactor,
    /// The output files the run asked for, and their limits, if any.
    pub outputs: Option<OutputPlan>,
    /// Set when the run goes on without its client.
    pub detach: Option<DetachPlan>,
    /// Where to tell that the run ended, if anywhere.
    pub notice: Option<crate::notify::NoticePlan>,
    /// The credential variables that go into the sandbox: what the run's
    /// `system` event reports (`sandstorm.credentials_in_sandbox`).
    pub credentials_in_sandbox: Vec<String>,
    /// The run's history record as it starts, until the run takes it.
    pub record: Option<crate::history::RunRecord>,
    /// Where the run's later history writes go, once it is recorded.
    pub recording: Option<crate::history::tap::Recording>,
    /// The caller's trace (its `traceparent`), which the run's trace joins.
    pub trace_parent: opentelemetry::Context,
    /// The prompt as the run's span shows it: only with
    /// `SANDSTORM_TRACE_PROMPTS=1`, and redacted.
    pub traced_prompt: Option<String>,
}

/// What makes a run detached.
#[derive(Debug, Clone)]
pub(crate) struct DetachPlan {
    /// The run's id, given to the client once.
    pub run: RunId,
    /// When the run started, RFC 3339.
    pub created_at: String,
    /// When the run's sandbox expires, RFC 3339.
    pub expires_at: String,
    /// How long its sandbox stays once the run is over.
    pub linger: Duration,
    /// How long its sandbox is kept after a turn for a follow-up.
    pub keep_alive: Duration,
    /// This process reads it to each turn's end itself ([`crate::run::watch`]).
    pub watched: bool,
}

/// Builds a run's plan from a validated query: the config, the keys, the
/// deadline. Everything that can refuse the run happens here, before a
/// sandbox exists. `caller` is who may reach the run again if it is
/// detached (see [`runs::owner`](crate::runs::owner)); without one a run
/// is never detached (the CLI gives one only with `--detach`).
pub(crate) async fn prepare(
    settings: &Settings,
    query: Query,
    request_id: String,
    platform_deadline: Option<Instant>,
    caller: Option<&Secret>,
) -> Result<RunPlan, ApiError> {
    let config = settings.config.as_ref().map_err(|e| ApiError::Config {
        message: format!("sandstorm.json is invalid: {e}"),
    })?;
    let provider = settings.sandbox.provider;
    // Whether the provider's endpoint holds the Anthropic credential, and
    // the cloud providers'; the keys, the cap and the init event go by them.
    let holds = Held {
        anthropic: (provider.meters_model)(&settings.sandbox.options),
        cloud: (provider.keeps_cloud_credentials)(&settings.sandbox.options),
    };
    let keys = keys::resolve(
        &query.keys,
        &settings.keys,
        settings.key_source.as_deref(),
        provider.credential,
        holds.cloud,
    )
    .await?;
    let keep_alive = query
        .keep_alive
        .or(config.keep_alive.map(Duration::from_secs))
        .unwrap_or_default();
    // A run kept for follow-ups needs an id to come back to: it is
    // detached unless the request says otherwise.
    let detach = query
        .detach
        .unwrap_or_else(|| config.detach.unwrap_or(false) || !keep_alive.is_zero());
    let timeout = timeout_of(&query, config);
    let spend = spend_meter(settings, config, &query, &keys.runner_env, holds)?;
    let mut credentials_in_sandbox =
        keys::credentials_in_sandbox(&keys.runner_env, holds.anthropic, holds.cloud);
    let mut keys = keys;
    // The agent's own telemetry: its OTLP headers are a credential in the
    // sandbox, named as one and scrubbed like a key.
    if let Some(headers) = settings
        .agent_telemetry
        .get(crate::telemetry::agent::HEADERS)
    {
        credentials_in_sandbox.push(crate::telemetry::agent::HEADERS.to_owned());
        keys.secrets.push(Secret::new(headers));
    }
    let env = |name: &str| {
        settings
            .config_env
            .get(name)
            .map(|value| value.expose().to_owned())
    };
    let mut plan = build(
        request_id,
        &query,
        config,
        settings.sandbox.limits,
        keys,
        platform_deadline,
        &env,
    )?;
    plan.process.spend = spend;
    plan.process.envs.extend(settings.agent_telemetry.clone());
    if !credentials_in_sandbox.is_empty() {
        // Names only; any instance that reads the run back reports them.
        plan.sandbox.metadata.insert(
            runs::CREDENTIALS_KEY.to_owned(),
            credentials_in_sandbox.join(","),
        );
    }
    plan.credentials_in_sandbox = credentials_in_sandbox;
    // An attached run is recorded as the endpoint's (or as the key it was
    // given with on the command line): who lists runs is who sees it.
    let owner_digest =
        crate::run_id::owner_digest(&caller.cloned().unwrap_or_else(|| runs::owner(None)));
    let mut plan = match caller {
        Some(owner) if detach => {
            let run = RunId::generate().map_err(|e| ApiError::Config {
                message: e.to_string(),
            })?;
            let lifetime = Lifetime {
                linger: settings.run_linger,
                keep_alive,
                max: settings.run_max_lifetime,
                pause_idle: settings.pause_idle,
            };
            plan.detached(run, owner, timeout, platform_deadline, lifetime)
        }
        _ => plan,
    };
    let detached = Detached {
        is: plan.detach.is_some(),
        sandbox_tells: holds.anthropic,
    };
    plan.notice = notice_plan(settings, config, &query, detached)?;
    if let Some(detach) = plan.detach.as_mut() {
        detach.watched = settings.stays_after_response;
    }
    if let (Some(notice), Some(detach)) = (&plan.notice, &plan.detach) {
        // Any instance that finds the run knows where to tell its turns.
        if let Some(sealed) = crate::notify::seal::seal_url(
            &notice.target.secret,
            &detach.run.digest(),
            notice.target.url.as_str(),
        ) {
            plan.sandbox
                .metadata
                .insert(crate::notify::seal::URL_KEY.to_owned(), sealed);
        }
    }
    // Nothing of a serverless door is alive when the turn ends: the sandbox
    // says it, for the notice and for the history.
    if let Some(detach) = &plan.detach {
        plan.process.callback = crate::notify::seal::turn_callback(
            settings,
            plan.notice.is_some(),
            detach.run.as_str(),
            1,
        );
    }
    plan.record = crate::history::tap::planned(&plan, &query, owner_digest);
    if crate::telemetry::Telemetry::active().traces_prompts() {
        plan.traced_prompt = Some(plan.redactor.redact_str(&query.prompt));
    }
    Ok(plan)
}

/// The run's completion webhook, if it has one: the request's
/// `webhook_url`, else sandstorm.json's. A request's is refused when the
/// server cannot sign it (a server whose sandstorm.json has one does not
/// start without a secret that signs). A host written as an address is
/// checked against the address policy now, before any sandbox. A detached
/// run's notice needs a process that stays to watch it, which a
/// serverless door and `ds` are not.
fn notice_plan(
    settings: &Settings,
    config: &SandstormConfig,
    query: &Query,
    detached: Detached,
) -> Result<Option<crate::notify::NoticePlan>, ApiError> {
    let (url, source) = match (&query.webhook_url, config.completion_webhook_url()) {
        (Some(url), _) => (url.expose(), "the request's webhook_url"),
        (None, Some(url)) => (url, "sandstorm.json's webhook_url"),
        (None, None) => return Ok(None),
    };
    let from_request = query.webhook_url.is_some();
    let secret = match &settings.notify.secret {
        Some(Ok(secret)) => secret.clone(),
        _ if !from_request => return Ok(None),
        None => {
            return Err(ApiError::invalid(
                "webhook_url",
                format!(
                    "webhook_url needs {} set on the server, to sign the run's notice, and it \
                     is not set",
                    crate::notify::signing::SECRET_VARIABLE
                ),
            ));
        }
        Some(Err(why)) => {
            return Err(ApiError::Config {
                message: why.clone(),
            });
        }
    };
    if detached.is && !settings.stays_after_response {
        // The run's sandbox tells this door's public address when a turn
        // ends: it must know the address, and have its model proxy.
        if settings.notify.public_url.is_none() {
            return Err(ApiError::invalid(
                "webhook_url",
                format!(
                    "{source} asks for a notice when the run ends; a detached run on a \
                     serverless door has its sandbox call back when it ends, at \
                     SANDSTORM_PUBLIC_URL, which is not set (the function's own URL); set it, \
                     or run attached (detach: false)"
                ),
            ));
        }
        if !detached.sandbox_tells {
            return Err(ApiError::invalid(
                "webhook_url",
                format!(
                    "{source} asks for a notice when the run ends; a detached run on a \
                     serverless door has its sandbox's model proxy call back when it ends, \
                     and these settings run none (SANDSTORM_E2B_MODEL_PROXY=0, or no model \
                     key for it to hold); run attached (detach: false)"
                ),
            ));
        }
    }
    let url = reqwest::Url::parse(url)
        .map_err(|_| ApiError::invalid("webhook_url", format!("{source} is not a URL")))?;
    if let Some(ip) = url
        .host_str()
        .and_then(|host| host.trim_matches(['[', ']']).parse().ok())
        && let Some(why) = settings.notify.policy.refuses(ip)
    {
        return Err(ApiError::invalid(
            "webhook_url",
            format!("{source}'s host is {why}; notices are not sent there"),
        ));
    }
    Ok(Some(crate::notify::NoticePlan {
        target: crate::notify::Target {
            url,
            secret,
            delays: settings.notify.delays.clone(),
        },
        policy: settings.notify.policy,
        sender_stays: settings.stays_after_response,
        outbox: settings.notify.outbox.clone(),
    }))
}

/// Whether the run is detached, and whether its sandbox can tell its end
/// (its model endpoint runs in it, out of the agent's reach).
#[derive(Debug, Clone, Copy)]
struct Detached {
    is: bool,
    sandbox_tells: bool,
}

/// The run's spend meter, with its caps: sandstorm.json's, lowered by the
/// request's. `None` when the provider does not meter model calls, and
/// then a cap is refused rather than promised and not kept. A cost cap
/// needs a price for the model the run names.
fn spend_meter(
    settings: &Settings,
    config: &SandstormConfig,
    query: &Query,
    runner_env: &BTreeMap<String, String>,
    holds: Held,
) -> Result<Option<Arc<SpendMeter>>, ApiError> {
    let caps = Caps {
        max_cost_usd: config.max_cost_usd,
        max_tokens: config.max_tokens,
    }
    .stricter(query.caps);
    let provider = settings.sandbox.provider;
    // A cloud provider's credential reaches the model around an endpoint
    // that does not hold it.
    let cloud = keys::PROVIDER_TOGGLES
        .iter()
        .any(|toggle| runner_env.get(*toggle).is_some_and(|v| switched_on(v)));
    let metered = holds.anthropic && (!cloud || holds.cloud);
    if !metered {
        return match (caps.max_cost_usd, caps.max_tokens) {
            (None, None) => Ok(None),
            (cost, _) => {
                let field = if cost.is_some() {
                    "max_cost_usd"
                } else {
                    "max_tokens"
                };
                Err(ApiError::invalid(
                    field,
                    format!(
                        "{field} needs a sandbox provider whose model endpoint counts every call, \
                         and the {} provider has none with these settings (on e2b: \
                         the template's model proxy, not turned off with \
                         SANDSTORM_E2B_MODEL_PROXY=0; see \
                         docs/security.md); max_budget_usd is the SDK's own count",
                        provider.name
                    ),
                ))
            }
        };
    }
    if caps.max_cost_usd.is_some()
        && let Some(model) = query.model.as_ref().or(config.model.as_ref())
        && !prices::is_alias(model)
        && settings.prices.get(model).is_none()
    {
        return Err(ApiError::invalid(
            "max_cost_usd",
            format!(
                "max_cost_usd needs the model's price, and {model:?} has none; add it to \
                 {PRICES_VARIABLE} (US dollars per million tokens)"
            ),
        ));
    }
    Ok(Some(SpendMeter::new(caps, settings.prices.clone())))
}

/// Which credentials the provider's model endpoint holds, so that they
/// stay out of the sandbox.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The Anthropic key or a custom endpoint's token; the endpoint then
    /// also counts every call, so the run may have a spending cap.
    anthropic: bool,
    /// Bedrock's, Vertex's and Foundry's.
    cloud: bool,
}

/// How long a detached run's sandbox is kept, and for what.
#[derive(Debug, Clone, Copy)]
struct Lifetime {
    /// After the run is over, for readers to read to the end.
    linger: Duration,
    /// After each turn, for a follow-up (0: none).
    keep_alive: Duration,
    /// The longest a run kept for follow-ups lives in all.
    max: Duration,
    /// Whether an idle run's sandbox is paused, where the provider can.
    pause_idle: bool,
}

impl RunPlan {
    /// The plan of the same run, detached: the runner writes its event log
    /// under a wrapper that enforces `timeout` in the sandbox, the sandbox
    /// lives for the run's `timeout` rather than the response's, its
    /// metadata names the run and its owner, and the stream ends (with a
    /// `detached` event) shortly before the platform would cut it.
    fn detached(
        mut self,
        run: RunId,
        owner: &Secret,
        timeout: Duration,
        platform_deadline: Option<Instant>,
        kept: Lifetime,
    ) -> Self {
        let now = Instant::now();
        // A run kept for a follow-up stays `keep_alive` after its turn's
        // latest end even when no reader sees the end to set that.
        let lifetime = timeout + SANDBOX_GRACE.max(kept.keep_alive);
        let started = std::time::SystemTime::now();
        // A run kept for follow-ups may live as long as the provider's plan
        // allows; each turn and each idle time sets its sandbox's lifetime
        // within that.
        let run_lifetime = if kept.keep_alive.is_zero() {
            lifetime
        } else {
            kept.max.max(lifetime)
        };
        let expires_at = humantime::format_rfc3339_seconds(started + run_lifetime).to_string();
        // To the millisecond, as history records are: runs started within
        // one second are still put in the order they started.
        let created_at = humantime::format_rfc3339_millis(started).to_string();
        self.sandbox.lifetime = lifetime;
        // Idle, it is paused instead (if the provider can pause; see
        // `run::detached`), and its lifetime running out pauses it too.
        self.sandbox.pause_at_end = kept.pause_idle && !kept.keep_alive.is_zero();
        let sealed = self
            .sandbox
            .credential
            .as_ref()
            .and_then(|key| run_id::seal(&run, key).ok());
        let metadata = &mut self.sandbox.metadata;
        metadata.extend(run_id::metadata(&run, owner));
        metadata.insert(runs::EXPIRES_KEY.to_owned(), expires_at.clone());
        metadata.insert(runs::CREATED_KEY.to_owned(), created_at.clone());
        if !kept.keep_alive.is_zero() {
            metadata.insert(
                runs::KEEP_ALIVE_KEY.to_owned(),
                kept.keep_alive.as_secs().to_string(),
            );
        }
        // So that listing the caller's runs can name them; without a
        // credential (local sandboxes) the server's registry does.
        if let Some(sealed) = sealed {
            metadata.insert(run_id::SEALED_KEY.to_owned(), sealed);
        }
        self.files.insert(
            1,
            SandboxFile {
                path: runs::log::FOLLOW_SCRIPT.to_owned(),
                content: Bytes::from_static(runs::log::FOLLOW_SOURCE.as_bytes()),
            },
        );
        self.process = runs::log::wrapper(self.process, timeout, 1);
        // With no platform deadline the stream lasts as long as the run,
        // which the wrapper's `timeout` ends; this is only the backstop.
        self.deadline = platform_deadline.map_or(now + lifetime, |platform| {
            platform.checked_sub(DETACH_MARGIN).unwrap_or(now)
        });
        self.deadline_reason = "the stream reached the hosting platform's time limit".to_owned();
        self.detach = Some(DetachPlan {
            run,
            created_at,
            expires_at,
            linger: kept.linger,
            keep_alive: kept.keep_alive,
            watched: false,
        });
        self
    }
}

/// Builds the plan of one run. `limits` are the server's caps on a
/// sandbox, which sandstorm.json's `limits` override one by one.
/// `platform_deadline` is when the hosting platform cuts the response
/// (Lambda's invocation deadline, Vercel's maxDuration), if it has one.
pub(crate) fn build(
    request_id: String,
    query: &Query,
    config: &SandstormConfig,
    limits: Limits,
    keys: ResolvedKeys,
    platform_deadline: Option<Instant>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunPlan, ApiError> {
    let now = Instant::now();
    let timeout = timeout_of(query, config);
    let (deadline, deadline_reason) = deadline(now, timeout, platform_deadline);
    let budget = deadline.saturating_duration_since(now);
    // Request values override sandstorm.json.
    let outputs = query
        .outputs
        .as_ref()
        .or(config.outputs.as_ref())
        .and_then(|outputs| outputs.plan(DEFAULT_LIMITS));
    let agent = agent::build(
        query,
        config,
        env,
        outputs.as_ref().map(OutputPlan::request),
    )?;
    let redactor = redactor(&keys, &agent.secrets);
    Ok(RunPlan {
        sandbox: SandboxSpec {
            lifetime: budget + SANDBOX_GRACE,
            metadata: std::iter::once((runs::REQUEST_KEY.to_owned(), request_id.clone()))
                .chain(
                    query.labels.iter().map(|(name, value)| {
                        (format!("{}{name}", runs::LABEL_PREFIX), value.clone())
                    }),
                )
                .collect(),
            credential: keys.sandbox,
            limits: config.limits.map_or(limits, |given| given.over(limits)),
            network: config
                .network
                .as_ref()
                .map(NetworkConfig::policy)
                .unwrap_or_default(),
            pause_at_end: false,
        },
        files: upload(query, agent.config, agent.skill_files, keys.files),
        process: ProcessSpec {
            cmd: "node".into(),
            args: vec![layout::RUNNER_SCRIPT.to_owned()],
            envs: keys.runner_env,
            cwd: layout::HOME.into(),
            timeout: Some(budget + PROCESS_GRACE),
            // The runner reads its config from a file, never from stdin.
            stdin: false,
            tag: None,
            // Set by `prepare`, which knows the provider and the prices.
            spend: None,
            spend_record: None,
            callback: None,
        },
        deadline,
        deadline_reason,
        redactor,
        outputs,
        detach: None,
        notice: None,
        credentials_in_sandbox: Vec::new(),
        record: None,
        recording: None,
        trace_parent: opentelemetry::Context::new(),
        traced_prompt: None,
        request_id,
    })
}

/// How long the run may take: the request's `timeout`, else
/// sandstorm.json's, else [`DEFAULT_TIMEOUT_SECS`].
pub(crate) fn timeout_of(query: &Query, config: &SandstormConfig) -> Duration {
    query
        .timeout
        .unwrap_or_else(|| Duration::from_secs(config.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)))
}

/// When the run must end, and why that would be, in the client's words: its
/// own timeout, or the platform's limit less [`PLATFORM_MARGIN`] when that
/// comes first.
fn deadline(
    now: Instant,
    timeout: Duration,
    platform_deadline: Option<Instant>,
) -> (Instant, String) {
    match platform_deadline {
        Some(platform) if platform.saturating_duration_since(now) < timeout + PLATFORM_MARGIN => (
            platform.checked_sub(PLATFORM_MARGIN).unwrap_or(now),
            "the run reached the hosting platform's time limit".to_owned(),
        ),
        _ => (
            now + timeout,
            format!("the run exceeded its timeout of {} s", timeout.as_secs()),
        ),
    }
}

/// The one upload: the runner, its config, the SDK settings, the keys'
/// files, the skills, then the user's files.
fn upload(
    query: &Query,
    agent_config: Bytes,
    skill_files: Vec<SandboxFile>,
    key_files: Vec<SandboxFile>,
) -> Vec<SandboxFile> {
    let mut files = Vec::with_capacity(query.files.len() + 3 + key_files.len() + skill_files.len());
    files.push(SandboxFile {
        path: layout::RUNNER_SCRIPT.to_owned(),
        content: Bytes::from_static(RUNNER_SCRIPT.as_bytes()),
    });
    files.push(SandboxFile {
        path: layout::AGENT_CONFIG.to_owned(),
        content: agent_config,
    });
    files.push(SandboxFile {
        path: layout::home_path(".claude/settings.json"),
        content: Bytes::from_static(SDK_SETTINGS.as_bytes()),
    });
    files.extend(key_files);
    files.extend(skill_files);
    files.extend(query.files.iter().map(|f| SandboxFile {
        path: layout::home_path(&f.path),
        content: Bytes::from(f.content.clone()),
    }));
    files
}

/// Scrubs every key value of the run (and the Vertex credentials) from what
/// the client sees, including the runner's environment values.
fn redactor(keys: &ResolvedKeys, filled: &[String]) -> Redactor {
    let secrets = keys
        .runner_env
        .values()
        .map(String::as_str)
        .chain(keys.secrets.iter().map(|s| s.expose()))
        .chain(filled.iter().map(String::as_str));
    Redactor::new(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::QueryRequest;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn query(json: &serde_json::Value) -> Query {
        Query::from_json(json.to_string().as_bytes(), &[]).expect("valid")
    }

    /// The server's settings on `sandbox`, from `pairs` (a cwd without a
    /// sandstorm.json).
    fn settings(sandbox: &str, pairs: &[(&str, &str)]) -> Settings {
        let choice = crate::settings::SandboxChoice {
            catalog: &[
                &crate::sandbox::e2b::PROVIDER,
                &crate::sandbox::local::PROVIDER,
            ],
            requested: Some(sandbox),
            setup: crate::sandbox::provider::Setup::CheckOnly,
            executable: None,
        };
        Settings::build(
            &crate::env::EnvVars::from_pairs(pairs.iter().copied()),
            std::path::Path::new("/nonexistent"),
            crate::settings::Profile::Server,
            choice,
        )
        .expect("valid settings")
    }

    fn config(json: &serde_json::Value) -> SandstormConfig {
        SandstormConfig::parse(
            json.to_string().as_bytes(),
            std::path::Path::new("sandstorm.json"),
        )
        .expect("a valid config")
    }

    const ATTACHED: Detached = Detached {
        is: false,
        sandbox_tells: true,
    };
    const TOLD: Detached = Detached {
        is: true,
        sandbox_tells: true,
    };

    const WEBHOOK_SECRET: (&str, &str) = (
        "SANDSTORM_WEBHOOK_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );

    #[test]
    fn a_run_s_webhook_is_the_request_s_over_sandstorm_json_s() {
        let signed = settings("local", &[WEBHOOK_SECRET]);
        let config = config(&serde_json::json!({"webhook_url": "https://config.example/done"}));
        let url = |query: &Query| {
            notice_plan(&signed, &config, query, ATTACHED)
                .expect("planned")
                .map(|n| n.target.url.to_string())
        };
        assert_eq!(
            url(&query(&serde_json::json!({"prompt": "p"}))).as_deref(),
            Some("https://config.example/done")
        );
        assert_eq!(
            url(&query(
                &serde_json::json!({"prompt": "p", "webhook_url": "https://request.example/x"})
            ))
            .as_deref(),
            Some("https://request.example/x")
        );
        let plan = notice_plan(
            &signed,
            &config,
            &query(&serde_json::json!({"prompt": "p"})),
            TOLD,
        )
        .expect("planned")
        .expect("a notice");
        assert!(plan.sender_stays);
        assert_eq!(
            plan.target.delays.len(),
            crate::notify::delivery::DEFAULT_DELAYS.len()
        );
        // 0.9.2's lifecycle address is not where a run's end is told.
        let lifecycle =
            self::config(&serde_json::json!({"webhook_url": "https://me.example/webhooks/e2b"}));
        assert!(
            notice_plan(
                &signed,
                &lifecycle,
                &query(&serde_json::json!({"prompt": "p"})),
                ATTACHED
            )
            .expect("planned")
            .is_none()
        );
    }

    #[test]
    fn a_webhook_the_server_cannot_keep_is_refused_naming_the_field() {
        let asked = query(&serde_json::json!({"prompt": "p", "webhook_url": "https://r.example/"}));
        let none = SandstormConfig::default();
        let unsigned = settings("local", &[]);
        let error = notice_plan(&unsigned, &none, &asked, ATTACHED).expect_err("no secret");
        assert_eq!(error.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            error.to_string().contains("SANDSTORM_WEBHOOK_SECRET"),
            "{error}"
        );
        // sandstorm.json's alone: the server warned at start-up; the run
        // goes without it.
        let configured = config(&serde_json::json!({"webhook_url": "https://c.example/"}));
        let plain = query(&serde_json::json!({"prompt": "p"}));
        assert!(
            notice_plan(&unsigned, &configured, &plain, ATTACHED)
                .expect("planned")
                .is_none()
        );
        // A secret that cannot sign is the server's fault.
        let bad = settings("local", &[("SANDSTORM_WEBHOOK_SECRET", "not base64!")]);
        let error = notice_plan(&bad, &none, &asked, ATTACHED).expect_err("a bad secret");
        assert_eq!(error.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.to_string().contains("not base64!"), "{error}");
        // An address notices may not go to, refused before any packet.
        for (url, allowed) in [
            ("http://169.254.169.254/latest", false),
            ("http://[fe80::1]/", false),
            ("http://127.0.0.1:9/x", true),
        ] {
            let asked = query(&serde_json::json!({"prompt": "p", "webhook_url": url}));
            let mut closed = settings("local", &[WEBHOOK_SECRET]);
            closed.notify.policy.allow_private = false;
            let error = notice_plan(&closed, &none, &asked, ATTACHED).expect_err(url);
            assert_eq!(error.field(), Some("webhook_url"), "{error}");
            assert!(error.to_string().contains("not sent there"), "{error}");
            let open = settings("local", &[WEBHOOK_SECRET]);
            assert_eq!(
                notice_plan(&open, &none, &asked, ATTACHED).is_ok(),
                allowed,
                "{url}"
            );
        }
        // A detached run on a serverless door: its sandbox calls back, at
        // the door's public address, through its model proxy.
        let mut serverless = settings("local", &[WEBHOOK_SECRET]);
        serverless.stays_after_response = false;
        assert!(notice_plan(&serverless, &none, &asked, ATTACHED).is_ok());
        let error = notice_plan(&serverless, &none, &asked, TOLD).expect_err("no address");
        assert!(
            error.to_string().contains("SANDSTORM_PUBLIC_URL"),
            "{error}"
        );
        assert!(
            notice_plan(&serverless, &configured, &plain, TOLD)
                .expect_err("sandstorm.json's too")
                .to_string()
                .contains("sandstorm.json's webhook_url"),
        );
        let mut addressed = settings(
            "local",
            &[
                WEBHOOK_SECRET,
                ("SANDSTORM_PUBLIC_URL", "https://f.example"),
            ],
        );
        addressed.stays_after_response = false;
        assert!(notice_plan(&addressed, &none, &asked, TOLD).is_ok());
        let unproxied = Detached {
            is: true,
            sandbox_tells: false,
        };
        let error = notice_plan(&addressed, &none, &asked, unproxied).expect_err("no proxy");
        assert!(error.to_string().contains("model proxy"), "{error}");
    }

    #[tokio::test]
    async fn a_serverless_detached_run_s_sandbox_knows_how_to_tell_its_end() {
        let settings = |stays: bool| {
            let mut s = settings(
                "e2b",
                &[
                    WEBHOOK_SECRET,
                    ("SANDSTORM_PUBLIC_URL", "https://f.example/base/"),
                    ("E2B_API_KEY", "e2b_test"),
                    ("ANTHROPIC_API_KEY", "sk-ant-test"),
                ],
            );
            s.stays_after_response = stays;
            s
        };
        let asked = query(&serde_json::json!({
            "prompt": "p", "detach": true, "webhook_url": "https://r.example/x?token=receiver"
        }));
        let owner = Secret::new("owner");
        let plan = prepare(
            &settings(false),
            asked.clone(),
            "r".into(),
            None,
            Some(&owner),
        )
        .await
        .expect("planned");
        let run = plan.detach.as_ref().expect("detached").run.clone();
        let sealed = &plan.sandbox.metadata[crate::notify::seal::URL_KEY];
        assert!(!sealed.contains("receiver"), "{sealed}");
        let secret = plan
            .notice
            .as_ref()
            .expect("a notice")
            .target
            .secret
            .clone();
        assert_eq!(
            crate::notify::seal::unseal_url(&secret, &run.digest(), sealed).as_deref(),
            Some("https://r.example/x?token=receiver")
        );
        let callback = plan.process.callback.as_ref().expect("a call-back");
        assert_eq!(
            callback.url,
            format!("https://f.example/base/runs/{run}/ended?turn=1")
        );
        assert!(crate::notify::seal::is_callback_token(
            &secret,
            run.as_str(),
            callback.token.expose()
        ));
        // The token goes to the proxy alone, never to the runner.
        assert!(
            !plan
                .process
                .envs
                .values()
                .any(|v| v == callback.token.expose()),
            "{:?}",
            plan.process
        );
        // A server that stays reads the run itself: no call-back.
        let plan = prepare(&settings(true), asked, "r".into(), None, Some(&owner))
            .await
            .expect("planned");
        assert!(plan.process.callback.is_none());
        assert!(
            plan.sandbox
                .metadata
                .contains_key(crate::notify::seal::URL_KEY)
        );
    }

    #[tokio::test]
    async fn without_a_notice_a_serverless_sandbox_calls_back_only_for_a_history_table() {
        let owner = Secret::new("owner");
        let unwatched = query(&serde_json::json!({"prompt": "p", "detach": true}));
        let plan_with = |table: Option<&str>| {
            let mut settings = settings(
                "e2b",
                &[
                    WEBHOOK_SECRET,
                    ("SANDSTORM_PUBLIC_URL", "https://f.example"),
                    ("E2B_API_KEY", "e2b_test"),
                    ("ANTHROPIC_API_KEY", "sk-ant-test"),
                ],
            );
            settings.stays_after_response = false;
            settings.history.table = table.map(str::to_owned);
            let query = unwatched.clone();
            let owner = owner.clone();
            async move {
                prepare(&settings, query, "r".into(), None, Some(&owner))
                    .await
                    .expect("planned")
            }
        };
        // Nothing to tell and nowhere to record: nobody is called.
        let plan = plan_with(None).await;
        assert!(plan.notice.is_none());
        assert!(plan.process.callback.is_none());
        // The history table would learn the end only from a later reader:
        // the sandbox calls back for it, with the run's own token.
        let plan = plan_with(Some("runs")).await;
        let run = plan.detach.as_ref().expect("detached").run.clone();
        let callback = plan.process.callback.as_ref().expect("a call-back");
        assert_eq!(
            callback.url,
            format!("https://f.example/runs/{run}/ended?turn=1")
        );
        assert!(plan.notice.is_none());
    }

    #[tokio::test]
    async fn a_cloud_run_on_e2b_may_have_a_cap_and_keeps_its_keys_out_with_the_model_proxy() {
        let bedrock = [
            ("E2B_API_KEY", "e2b_test"),
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ];
        let capped = || query(&serde_json::json!({"prompt": "p", "max_tokens": 1000}));
        let with_proxy = settings(
            "e2b",
            &[bedrock.as_slice(), &[("SANDSTORM_E2B_MODEL_PROXY", "1")]].concat(),
        );
        let plan = prepare(&with_proxy, capped(), "r".into(), None, None)
            .await
            .expect("the cap is kept");
        assert!(plan.process.spend.is_some());
        assert_eq!(plan.credentials_in_sandbox, Vec::<String>::new());

        let without = settings(
            "e2b",
            &[bedrock.as_slice(), &[("SANDSTORM_E2B_MODEL_PROXY", "0")]].concat(),
        );
        let Err(e) = prepare(&without, capped(), "r".into(), None, None).await else {
            panic!("a cap the sandbox's keys could get around was accepted");
        };
        assert!(e.to_string().contains("max_tokens"), "{e}");
        let plan = prepare(
            &without,
            query(&serde_json::json!({"prompt": "p"})),
            "r".into(),
            None,
            None,
        )
        .await
        .expect("no cap, no refusal");
        assert_eq!(
            plan.credentials_in_sandbox,
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        );
    }

    #[tokio::test]
    async fn a_detached_run_is_stamped_to_the_millisecond_so_runs_of_one_second_keep_their_order() {
        let server = settings(
            "e2b",
            &[
                ("E2B_API_KEY", "e2b_test"),
                ("ANTHROPIC_API_KEY", "sk-ant-test"),
            ],
        );
        let owner = Secret::new("an-owner-token".to_owned());
        let plan = prepare(
            &server,
            query(&serde_json::json!({"prompt": "p", "detach": true})),
            "r".into(),
            None,
            Some(&owner),
        )
        .await
        .expect("a detached run");
        let detach = plan.detach.as_ref().expect("detached");
        // `2026-12-06T07:58:53.064Z`: the history's records are stamped so
        // too, and the run list puts a live run among them by this time.
        let fraction = detach
            .created_at
            .strip_suffix('Z')
            .and_then(|at| at.rsplit_once('.'))
            .map(|(_, millis)| millis.len());
        assert_eq!(fraction, Some(3), "{}", detach.created_at);
        assert_eq!(
            plan.sandbox.metadata.get(runs::CREATED_KEY),
            Some(&detach.created_at)
        );
    }

    fn agent_config(plan: &RunPlan) -> serde_json::Value {
        let file = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("agent_config.json"))
            .expect("config uploaded");
        serde_json::from_slice(&file.content).expect("json")
    }

    #[test]
    fn request_values_override_the_config() {
        let config = SandstormConfig {
            model: Some("opus".into()),
            max_turns: Some(20),
            system_prompt: Some(crate::config::SystemPrompt::Text("be brief".into())),
            ..Default::default()
        };
        let q = query(&serde_json::json!({"prompt":"p","model":"haiku"}));
        let plan = build(
            "r".into(),
            &q,
            &config,
            Limits::DEFAULT,
            ResolvedKeys::default(),
            None,
            &no_env,
        )
        .expect("plan");
        let c = agent_config(&plan);
        assert_eq!(c["model"], "haiku");
        assert_eq!(c["max_turns"], 20);
        assert_eq!(c["system_prompt"], "be brief");
        assert_eq!(c["prompt"], "p");
        assert_eq!(c["cwd"], "/home/user");
    }

    #[test]
    fn one_upload_carries_runner_config_settings_and_files() {
        let q = query(&serde_json::json!({"prompt":"p","files":{"a.txt":"1","d/b.txt":"2"}}));
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            Limits::DEFAULT,
            ResolvedKeys::default(),
            None,
            &no_env,
        )
        .expect("plan");
        let paths: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/opt/agent-runner/runner.mjs",
                "/opt/agent-runner/agent_config.json",
                "/home/user/.claude/settings.json",
                "/home/user/a.txt",
                "/home/user/d/b.txt",
            ]
        );
    }

    #[test]
    fn the_sandbox_gets_the_servers_limits_under_the_configs_and_its_network() {
        let q = query(&serde_json::json!({"prompt":"p"}));
        let server = Limits {
            memory_bytes: 1 << 30,
            processes: 100,
            disk_bytes: 3 << 30,
            cpu_seconds: 1000,
        };
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            server,
            ResolvedKeys::default(),
            None,
            &no_env,
        )
        .expect("plan");
        assert_eq!(plan.sandbox.limits, server);
        assert_eq!(plan.sandbox.network.allow, None);

        let config = SandstormConfig::parse(
            br#"{"limits": {"memory_mb": 512, "cpu_seconds": 60},
                 "network": {"allow": ["pypi.org", "*.github.com"]}}"#,
            std::path::Path::new("sandstorm.json"),
        )
        .expect("valid");
        let plan = build(
            "r".into(),
            &q,
            &config,
            server,
            ResolvedKeys::default(),
            None,
            &no_env,
        )
        .expect("plan");
        assert_eq!(
            plan.sandbox.limits,
            Limits {
                memory_bytes: 512 << 20,
                cpu_seconds: 60,
                ..server
            }
        );
        assert_eq!(
            plan.sandbox.network.allow.as_deref(),
            Some(&["pypi.org".to_owned(), "*.github.com".to_owned()][..])
        );
    }

    #[test]
    fn the_runner_is_started_as_argv() {
        let q = QueryRequest {
            prompt: "p; rm -rf /".into(),
            ..Default::default()
        }
        .validate(crate::request::Naming::Fields)
        .expect("valid");
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            Limits::DEFAULT,
            ResolvedKeys::default(),
            None,
            &no_env,
        )
        .expect("plan");
        assert_eq!(plan.process.cmd, "node");
        assert_eq!(plan.process.args, ["/opt/agent-runner/runner.mjs"]);
        assert_eq!(plan.process.cwd, "/home/user");
    }

    /// On E2B the runner starts with no login shell, so envd's own `PATH`
    /// must find the bare `node`. envd passes a process its own `PATH` and
    /// nothing else of its environment
    /// (`packages/envd/internal/services/process/handler/handler.go` in
    /// e2b-dev/infra), and its systemd unit sets none, so it is systemd's
    /// default. The template's official node image (`fromImage`, pinned by
    /// `tests/template.rs`) installs `node` in `/usr/local/bin`. The
    /// emulator gives processes this same `PATH` (`tests/emulator.rs`).
    #[test]
    fn the_runner_s_node_is_on_envd_s_own_path() {
        const ENVD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        const TEMPLATE_NODE_DIR: &str = "/usr/local/bin";
        let q = QueryRequest {
            prompt: "p".into(),
            ..Default::default()
        }
        .validate(crate::request::Naming::Fields)
        .expect("valid");
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            Limits::DEFAULT,
            ResolvedKeys::default(),
            None,
            &no_env,
        )
        .expect("plan");
        assert_eq!(plan.process.cmd, "node", "a bare name, found by PATH");
        assert!(
            !plan.process.envs.contains_key("PATH"),
            "the run must not replace envd's PATH"
        );
        assert!(ENVD_PATH.split(':').any(|dir| dir == TEMPLATE_NODE_DIR));
    }

    #[test]
    fn the_timeout_sets_the_deadline_unless_the_platform_ends_sooner() {
        let q = query(&serde_json::json!({"prompt":"p","timeout":100}));
        let before = Instant::now();
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            Limits::DEFAULT,
            ResolvedKeys::default(),
            None,
            &no_env,
        )
        .expect("plan");
        assert!(plan.deadline >= before + Duration::from_secs(100));
        assert!(plan.deadline_reason.contains("100 s"));

        let platform = Instant::now() + Duration::from_secs(30);
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            Limits::DEFAULT,
            ResolvedKeys::default(),
            Some(platform),
            &no_env,
        )
        .expect("plan");
        assert_eq!(plan.deadline, platform - PLATFORM_MARGIN);
        assert!(plan.deadline_reason.contains("platform"));
        assert!(plan.sandbox.lifetime >= Duration::from_secs(20));
    }
}
