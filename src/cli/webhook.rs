//! `ds webhook register|list|delete|test`: E2B's lifecycle webhooks,
//! managed as Python Sandstorm 0.9.2's commands managed them, and `ds
//! serve`'s registration of sandstorm.json's `e2b_webhook_url` for as long
//! as it runs.
//!
//! The E2B key and API come from the flag, the environment or `.env`, as
//! every other command reads them (`E2B_API_KEY`, `E2B_API_URL`,
//! `E2B_DOMAIN`). The secret E2B signs with is the receiver's
//! (`SANDSTORM_E2B_WEBHOOK_SECRET`); `register` makes one when none is
//! given, shows it once and keeps it in `.env`.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use clap::{Args, Subcommand};
use e2b_wire::events::{self, NewWebhook, Webhook, WebhookSecret};

use super::{Fatal, environment, exit, secret};
use crate::env::EnvVars;
use crate::lifecycle::PATH;
use crate::sandbox::e2b::webhooks::WebhooksApi;
use crate::sandbox::e2b::{self, E2bOptions};
use crate::sandbox::provider::{ProviderSettings, Setup};
use crate::secret::Secret;
use crate::settings::{E2B_WEBHOOK_SECRET_VARIABLE, LEGACY_WEBHOOK_SECRET_VARIABLE, Settings};

/// What 0.9.2 registered: enough to see a run's sandbox come and go, and
/// `killed` is what marks a run `expired`.
const DEFAULT_EVENTS: [&str; 3] = [events::CREATED, events::UPDATED, events::KILLED];

/// How long `ds webhook test` waits for the receiver.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping `ds serve` waits to delete its registration.
const DELETE_AT_EXIT_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(super) struct WebhookArgs {
    #[command(subcommand)]
    command: WebhookCommand,
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
    /// Register URL with E2B: it gets the E2B team's sandbox lifecycle
    /// events, signed with the secret.
    #[command(after_help = "\
URL is this server's public address; /webhooks/e2b is appended when missing. Without --secret,
SANDSTORM_E2B_WEBHOOK_SECRET (or Python Sandstorm's SANDSTORM_WEBHOOK_SECRET) is used, else a
new one is made and shown once on stderr; unless --no-save it is kept in ./.env as
SANDSTORM_E2B_WEBHOOK_SECRET, where ds serve reads it. The server checks every event with it.

Exit status: 0 registered, 1 E2B refused or could not be reached, 2 bad usage.")]
    Register(RegisterArgs),
    /// List the E2B team's webhooks.
    List(ListArgs),
    /// Delete a webhook by its id (from `ds webhook list`).
    Delete(DeleteArgs),
    /// Send a signed test event to URL, as E2B would, and show the answer.
    #[command(after_help = "\
The event is `sandbox.lifecycle.test` for sandbox test-sandbox-000, signed as E2B signs (the
e2b-signature header) with --secret, else SANDSTORM_E2B_WEBHOOK_SECRET (or
SANDSTORM_WEBHOOK_SECRET); unsigned when there is none. The URL is used as given.

Exit status: 0 when the receiver answered 2xx, 1 otherwise, 2 bad usage.")]
    Test(TestArgs),
}

#[derive(Debug, Args)]
struct KeyFlag {
    /// E2B API key (else E2B_API_KEY).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    e2b_api_key: Option<Secret>,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// This server's public URL (https://example.com or
    /// https://example.com/webhooks/e2b).
    url: String,
    /// The secret E2B signs each event with [default:
    /// SANDSTORM_E2B_WEBHOOK_SECRET, else a new one].
    #[arg(long, value_name = "SECRET", value_parser = secret)]
    secret: Option<Secret>,
    /// The event types to send, comma-separated: created, killed, paused,
    /// resumed, updated, checkpointed (or their full names) [default:
    /// created,updated,killed].
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    events: Vec<String>,
    /// The webhook's name at E2B.
    #[arg(long, default_value = "sandstorm")]
    name: String,
    /// Do not write the secret to ./.env.
    #[arg(long)]
    no_save: bool,
    #[command(flatten)]
    key: KeyFlag,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print the webhooks as one JSON array.
    #[arg(long)]
    json_output: bool,
    #[command(flatten)]
    key: KeyFlag,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// The webhook's id.
    id: String,
    #[command(flatten)]
    key: KeyFlag,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Where to send the test event, used as given.
    url: String,
    /// The secret to sign with [default: SANDSTORM_E2B_WEBHOOK_SECRET].
    #[arg(long, value_name = "SECRET", value_parser = secret)]
    secret: Option<Secret>,
}

/// Runs one `ds webhook` command.
pub(super) async fn webhook(args: WebhookArgs) -> Result<u8, Fatal> {
    let (cwd, env) = environment()?;
    match args.command {
        WebhookCommand::Register(args) => register(&cwd, &env, args).await,
        WebhookCommand::List(args) => list(&cwd, &env, args).await,
        WebhookCommand::Delete(args) => delete(&cwd, &env, args).await,
        WebhookCommand::Test(args) => test(&env, args).await,
    }
}

/// The E2B API the environment points at, with the flag's key over it.
fn options(cwd: &Path, env: &EnvVars, key: Option<Secret>) -> Result<E2bOptions, Fatal> {
    let settings =
        ProviderSettings::resolve(&e2b::PROVIDER, |name| env.get(name), cwd, Setup::CheckOnly);
    let mut options = E2bOptions::from_settings(&settings).map_err(Fatal::usage)?;
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        options.api_key = Some(key);
    }
    Ok(options)
}

fn api(cwd: &Path, env: &EnvVars, key: KeyFlag) -> Result<WebhooksApi, Fatal> {
    let options = options(cwd, env, key.e2b_api_key)?;
    if options.api_key.is_none() {
        return Err(Fatal::usage(format!(
            "an E2B API key is needed: --e2b-api-key or {}",
            e2b::CREDENTIAL.variable
        )));
    }
    WebhooksApi::new(&options).map_err(|e| Fatal::usage(e.to_string()))
}

/// E2B's answer to a failed call, as `ds` exits with it.
fn refused(e: &crate::sandbox::SandboxError) -> Fatal {
    Fatal {
        code: exit::RUN_FAILED,
        message: e.to_string(),
    }
}

/// An http(s) URL, with [`PATH`] appended when it does not end with it.
fn receiver_url(url: &str) -> Result<String, Fatal> {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            Fatal::usage(format!(
                "URL must be an absolute http:// or https:// URL, got {url:?}"
            ))
        })?;
    if parsed.query().is_some() || parsed.path().trim_end_matches('/').ends_with(PATH) {
        return Ok(url.to_owned());
    }
    Ok(format!("{}{PATH}", url.trim_end_matches('/')))
}

/// The event types asked for, by full or short name; the default when
/// none are.
fn event_types(given: &[String]) -> Result<Vec<String>, Fatal> {
    if given.is_empty() {
        return Ok(DEFAULT_EVENTS.iter().map(|&e| e.to_owned()).collect());
    }
    let mut wanted: Vec<String> = Vec::new();
    for name in given.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let full = events::EVENT_TYPES
            .iter()
            .find(|t| **t == name || t.rsplit('.').next() == Some(name))
            .ok_or_else(|| {
                Fatal::usage(format!(
                    "--events: unknown event type {name:?}; the types are created, killed, \
                     paused, resumed, updated and checkpointed"
                ))
            })?;
        if !wanted.iter().any(|w| w == full) {
            wanted.push((*full).to_owned());
        }
    }
    if wanted.is_empty() {
        return Err(Fatal::usage("--events names no event type"));
    }
    Ok(wanted)
}

/// The receiver's secret from the environment or `.env`: ours, else
/// 0.9.2's name.
fn configured_secret(env: &EnvVars) -> Option<Secret> {
    [E2B_WEBHOOK_SECRET_VARIABLE, LEGACY_WEBHOOK_SECRET_VARIABLE]
        .into_iter()
        .find_map(|name| env.get(name).map(Secret::new))
}

/// 32 random bytes, in hex.
fn new_secret() -> Result<Secret, Fatal> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| Fatal {
        code: exit::RUN_FAILED,
        message: "the system's random number generator is unavailable".into(),
    })?;
    Ok(Secret::new(crate::hex::encode(&bytes)))
}

async fn register(cwd: &Path, env: &EnvVars, args: RegisterArgs) -> Result<u8, Fatal> {
    let url = receiver_url(&args.url)?;
    if url != args.url {
        eprintln!("Using webhook URL: {url}");
    }
    let kinds = event_types(&args.events)?;
    let api = api(cwd, env, args.key)?;
    let secret = match args.secret.filter(|s| !s.is_empty()) {
        Some(secret) => secret,
        None => match configured_secret(env) {
            Some(secret) => secret,
            None => {
                let secret = new_secret()?;
                // Shown once, to the person who registers, as 0.9.2 did.
                eprintln!("Generated webhook secret: {}", secret.expose());
                eprintln!("Save this secret securely; it won't be shown again");
                secret
            }
        },
    };
    let new = NewWebhook {
        name: args.name,
        url,
        enabled: true,
        events: kinds,
        signature_secret: WebhookSecret::new(secret.expose()),
    };
    let webhook = api.register(&new).await.map_err(|e| refused(&e))?;
    println!(
        "Webhook registered: {}",
        serde_json::to_string_pretty(&webhook).unwrap_or_default()
    );
    if !args.no_save {
        let path = cwd.join(".env");
        save_to_dotenv(&path, E2B_WEBHOOK_SECRET_VARIABLE, secret.expose()).map_err(|e| Fatal {
            code: exit::RUN_FAILED,
            message: format!(
                "the webhook is registered, but {} could not be written: {e}",
                path.display()
            ),
        })?;
        eprintln!("Saved {E2B_WEBHOOK_SECRET_VARIABLE} to .env");
    }
    Ok(exit::OK)
}

async fn list(cwd: &Path, env: &EnvVars, args: ListArgs) -> Result<u8, Fatal> {
    let api = api(cwd, env, args.key)?;
    let webhooks = api.list().await.map_err(|e| refused(&e))?;
    if args.json_output {
        println!("{}", serde_json::to_string(&webhooks).unwrap_or_default());
        return Ok(exit::OK);
    }
    if webhooks.is_empty() {
        println!("No webhooks registered.");
    }
    for Webhook {
        id,
        name,
        url,
        enabled,
        events,
        ..
    } in &webhooks
    {
        let short: Vec<&str> = events
            .iter()
            .map(|e| e.rsplit('.').next().unwrap_or(e))
            .collect();
        println!(
            "  {id}  {name:20}  {url}  enabled={enabled}  events={}",
            short.join(",")
        );
    }
    Ok(exit::OK)
}

async fn delete(cwd: &Path, env: &EnvVars, args: DeleteArgs) -> Result<u8, Fatal> {
    let api = api(cwd, env, args.key)?;
    api.delete(&args.id).await.map_err(|e| refused(&e))?;
    println!("Webhook {} deleted.", args.id);
    Ok(exit::OK)
}

async fn test(env: &EnvVars, args: TestArgs) -> Result<u8, Fatal> {
    let parsed = reqwest::Url::parse(&args.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    if parsed.is_none() {
        return Err(Fatal::usage("URL must use http:// or https://"));
    }
    let secret = args
        .secret
        .filter(|s| !s.is_empty())
        .or_else(|| configured_secret(env));
    let event = events::SandboxEvent {
        id: uuid::Uuid::new_v4().to_string(),
        version: events::EVENT_VERSION.to_owned(),
        kind: "sandbox.lifecycle.test".to_owned(),
        timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        event_category: "lifecycle".to_owned(),
        event_label: "test".to_owned(),
        event_data: Some(events::EventData {
            sandbox_metadata: Some(
                [(crate::runs::REQUEST_KEY.to_owned(), "test0000".to_owned())].into(),
            ),
            ..events::EventData::default()
        }),
        sandbox_id: "test-sandbox-000".to_owned(),
        ..events::SandboxEvent::default()
    };
    let body = serde_json::to_vec(&event).unwrap_or_default();
    let mut request = reqwest::Client::builder()
        .timeout(TEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Fatal::usage(format!("no HTTP client: {e}")))?
        .post(&args.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(events::SIGNATURE_VERSION_HEADER, events::SIGNATURE_VERSION)
        .header(events::WEBHOOK_ID_HEADER, "test")
        .header(events::DELIVERY_ID_HEADER, uuid::Uuid::new_v4().to_string());
    match &secret {
        Some(secret) => {
            request = request.header(
                events::SIGNATURE_HEADER,
                events::signature(secret.expose().as_bytes(), &body),
            );
        }
        None => eprintln!("note: no secret; the test event goes unsigned"),
    }
    match request.body(body).send().await {
        Ok(answer) => {
            let status = answer.status();
            let text = answer.text().await.unwrap_or_default();
            if status.is_success() {
                println!("✓ {}: {text}", status.as_u16());
                Ok(exit::OK)
            } else {
                eprintln!("✗ {}: {text}", status.as_u16());
                Ok(exit::RUN_FAILED)
            }
        }
        Err(e) => {
            eprintln!("✗ Unreachable: {}", e.without_url());
            Ok(exit::RUN_FAILED)
        }
    }
}

/// Sets `name` to `value` in the `.env` at `path`: its line is replaced
/// (or added), every other line kept. A new file is the user's alone.
fn save_to_dotenv(path: &Path, name: &str, value: &str) -> std::io::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let line = format!("{name}={value}");
    let mut replaced = false;
    let mut lines: Vec<String> = existing
        .lines()
        .map(|l| {
            let key = l.trim_start().trim_start_matches("export ").trim_start();
            if key
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
            {
                replaced = true;
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !replaced {
        lines.push(line);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?
    };
    file.write_all(text.as_bytes())
}

/// `ds serve`'s registration of sandstorm.json's `e2b_webhook_url`: made
/// in the background at start, deleted at exit, both best effort and
/// logged. Serverless doors never do this: each cold start would register
/// once more; `ds webhook register` is run once for them.
pub(super) struct ServeRegistration {
    api: WebhooksApi,
    id: Arc<Mutex<Option<String>>>,
    registering: tokio::task::JoinHandle<()>,
}

/// What `ds serve` will register, if sandstorm.json asks: the webhook, and
/// the secret it is signed with, which `settings` then checks events with.
/// With no secret configured, one is made for this process (0.9.2 did the
/// same); it is never shown, and E2B forgets the webhook at exit.
pub(super) struct ServePlan {
    api: WebhooksApi,
    new: NewWebhook,
    /// The secret made for this process, when none was configured: a
    /// reload must keep it.
    pub(super) made_secret: Option<Secret>,
}

impl ServePlan {
    /// The plan for `settings`, with the secret put in place; `None` when
    /// sandstorm.json names no `e2b_webhook_url`, or when it cannot be
    /// registered (logged: no E2B key, a bad URL).
    pub(super) fn prepare(settings: &mut Settings, env: &EnvVars) -> Option<Self> {
        let url = settings
            .config
            .as_ref()
            .ok()
            .and_then(|c| c.e2b_webhook_url.clone())?;
        let url = match receiver_url(&url) {
            Ok(url) => url,
            Err(fatal) => {
                tracing::warn!(error = %fatal.message, "e2b_webhook_url: not registered");
                return None;
            }
        };
        let api = match options(&settings.cwd, env, None)
            .map_err(|f| f.message)
            .and_then(|o| WebhooksApi::new(&o).map_err(|e| e.to_string()))
        {
            Ok(api) => api,
            Err(why) => {
                tracing::warn!(%why, "e2b_webhook_url: not registered with E2B");
                return None;
            }
        };
        let made_secret = match &settings.lifecycle.secret {
            Some(_) => None,
            None => match new_secret() {
                Ok(secret) => {
                    tracing::info!(
                        "e2b_webhook_url: no {E2B_WEBHOOK_SECRET_VARIABLE}; a secret was made for \
                         this process (set one to keep it across restarts)"
                    );
                    settings.lifecycle.secret = Some(secret.clone());
                    Some(secret)
                }
                Err(fatal) => {
                    tracing::warn!(error = %fatal.message, "e2b_webhook_url: not registered");
                    return None;
                }
            },
        };
        let secret = settings.lifecycle.secret.as_ref()?;
        Some(ServePlan {
            api,
            new: NewWebhook {
                name: "sandstorm-auto".to_owned(),
                url,
                enabled: true,
                events: DEFAULT_EVENTS.iter().map(|&e| e.to_owned()).collect(),
                signature_secret: WebhookSecret::new(secret.expose()),
            },
            made_secret,
        })
    }

    /// Registers in the background: the server does not wait for E2B.
    pub(super) fn start(self) -> ServeRegistration {
        let id = Arc::new(Mutex::new(None));
        let api = self.api.clone();
        let registered = id.clone();
        let registering = tokio::spawn(async move {
            match self.api.register(&self.new).await {
                Ok(webhook) => {
                    tracing::info!(id = %webhook.id, url = %webhook.url, "e2b_webhook_url: registered with E2B");
                    *crate::sync::lock(&registered) = Some(webhook.id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.new.url, "e2b_webhook_url: E2B refused the registration");
                }
            }
        });
        ServeRegistration {
            api,
            id,
            registering,
        }
    }
}

impl ServeRegistration {
    /// Deletes the webhook registered at start, if it was.
    pub(super) async fn end(self) {
        let ended = async {
            // A registration still on its way is waited for: else it would
            // outlive the server.
            let _ = self.registering.await;
            let id = crate::sync::lock(&self.id).take();
            let Some(id) = id else { return };
            match self.api.delete(&id).await {
                Ok(()) => tracing::info!(%id, "e2b_webhook_url: deleted from E2B"),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "e2b_webhook_url: could not be deleted from E2B");
                }
            }
        };
        if tokio::time::timeout(DELETE_AT_EXIT_WITHIN, ended)
            .await
            .is_err()
        {
            tracing::warn!("e2b_webhook_url: E2B did not answer the deletion in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_path_is_appended_once() {
        for (given, wanted) in [
            ("https://example.com", "https://example.com/webhooks/e2b"),
            ("https://example.com/", "https://example.com/webhooks/e2b"),
            (
                "https://example.com/api",
                "https://example.com/api/webhooks/e2b",
            ),
            (
                "https://example.com/webhooks/e2b",
                "https://example.com/webhooks/e2b",
            ),
            (
                "https://example.com/webhooks/e2b/",
                "https://example.com/webhooks/e2b/",
            ),
            (
                "http://127.0.0.1:8000",
                "http://127.0.0.1:8000/webhooks/e2b",
            ),
        ] {
            assert_eq!(receiver_url(given).expect(given), wanted);
        }
        for bad in ["example.com", "ftp://example.com", "", "https://"] {
            assert!(receiver_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_types_take_short_or_full_names() {
        assert_eq!(event_types(&[]).expect("default"), DEFAULT_EVENTS);
        assert_eq!(
            event_types(&[
                "killed".into(),
                "sandbox.lifecycle.paused".into(),
                "killed".into()
            ])
            .expect("known"),
            [events::KILLED, events::PAUSED]
        );
        let e = event_types(&["exploded".into()]).expect_err("unknown");
        assert!(e.message.contains("exploded"), "{}", e.message);
    }

    #[test]
    fn the_secret_replaces_its_line_in_dotenv_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        save_to_dotenv(&path, "SANDSTORM_E2B_WEBHOOK_SECRET", "one").expect("write");
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "a new .env is the user's alone");
        }
        std::fs::write(
            &path,
            "E2B_API_KEY=e2b_x\n# a comment\nexport SANDSTORM_E2B_WEBHOOK_SECRET = old\nOTHER=1",
        )
        .expect("write");
        save_to_dotenv(&path, "SANDSTORM_E2B_WEBHOOK_SECRET", "new").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "E2B_API_KEY=e2b_x\n# a comment\nSANDSTORM_E2B_WEBHOOK_SECRET=new\nOTHER=1\n"
        );
        let mut env = EnvVars::from_pairs(std::iter::empty::<(String, String)>());
        env.fill_from_dotenv(&path).expect("dotenv reads it");
        assert_eq!(env.get("SANDSTORM_E2B_WEBHOOK_SECRET"), Some("new"));
        // A variable whose name starts with the same letters is another.
        std::fs::write(&path, "SANDSTORM_E2B_WEBHOOK_SECRET_OLD=x\n").expect("write");
        save_to_dotenv(&path, "SANDSTORM_E2B_WEBHOOK_SECRET", "new").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "SANDSTORM_E2B_WEBHOOK_SECRET_OLD=x\nSANDSTORM_E2B_WEBHOOK_SECRET=new\n"
        );
    }

    #[test]
    fn a_made_secret_is_32_random_bytes() {
        let (a, b) = (new_secret().expect("one"), new_secret().expect("two"));
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
    }
}
