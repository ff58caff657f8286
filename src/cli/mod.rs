//! The `ds` command: `ds "prompt"` runs one agent, `ds serve` runs the server.
//!
//! Both build the same [`AppState`] as every other door. A query does not
//! go through HTTP: it validates its request, plans the run and reads the
//! run's events directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand};

use crate::app::{self, AppState};
use crate::doors::PROVIDERS;
use crate::env::EnvVars;
use crate::outputs::Outputs;
use crate::request::{Naming, QueryRequest};
use crate::sandbox::provider::Setup;
use crate::sandbox::{e2b, local};
use crate::secret::Secret;
use crate::settings::{Profile, SANDBOX_VARIABLE, SandboxChoice, Settings};
use crate::shutdown::Shutdown;
use crate::triggers::scheduler::Clock;

mod add;
mod doctor;
mod init;
mod ordered;
mod render;
mod runs;
mod schedules;
mod serve;
mod triggers;
mod webhook;

/// Exit codes, as documented in `ds --help` and the README.
pub(crate) mod exit {
    /// The run succeeded.
    pub(crate) const OK: u8 = 0;
    /// The agent run failed: an error event, or an error result.
    pub(crate) const RUN_FAILED: u8 = 1;
    /// Bad usage or input: flags, files, keys, sandstorm.json.
    pub(crate) const USAGE: u8 = 2;
    /// Interrupted by Ctrl-C (after the sandbox was destroyed).
    pub(crate) const INTERRUPTED: u8 = 130;
    /// Ended by SIGTERM (after the sandbox was destroyed): 128 + 15, as a
    /// shell reports it.
    pub(crate) const TERMINATED: u8 = 143;
}

const AFTER_HELP: &str = "\
Keys are taken from the flags, then the environment, then .env in the current directory.
The sandbox is E2B when an E2B key is set, else a local bubblewrap sandbox
(override with --sandbox or SANDSTORM_SANDBOX).

Exit status: 0 success, 1 the agent run failed, 2 bad usage or input, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM); either destroys the sandbox first, unless the run
is detached (--detach, ds attach).";

/// The `ds` command line: a subcommand, or a query to run.
#[derive(Debug, Parser)]
#[command(
    name = "ds",
    version,
    about = "Run Claude agents in secure sandboxes",
    // The doc comment above is for rustdoc; the help text stays as it was.
    long_about = None,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an agent on a prompt (the default: `ds "prompt"` is `ds query "prompt"`).
    Query(QueryArgs),
    /// Serve the HTTP API (POST /query, the /runs routes, GET /health).
    Serve(ServeArgs),
    /// List your runs, newest first: the run history (this machine's, or
    /// the server's with --server) and the runs that still have a sandbox.
    Runs(RunsArgs),
    /// Show a detached run's events until it ends; Ctrl-C leaves it going.
    Attach(AttachArgs),
    /// Send a follow-up turn to a run kept for one (started with keep_alive).
    Continue(ContinueArgs),
    /// Cancel a detached run.
    Cancel(CancelArgs),
    /// Run a recorded run again, with another model, budget or tools, and
    /// compare the two (cost, turns, duration, result) in a markdown table.
    Replay(ReplayArgs),
    /// List sandstorm.json's triggers, or fire one by hand.
    #[command(subcommand, visible_alias = "trigger")]
    Triggers(TriggersCommand),
    /// Check keys, sandbox, sandstorm.json and the runner before a run.
    Doctor(DoctorArgs),
    /// Start a project from a starter: sandstorm.json, README.md, .env.example.
    Init(InitArgs),
    /// Add an MCP server toolpack (Linear, Notion, ...) to sandstorm.json.
    Add(AddArgs),
    /// Manage E2B lifecycle webhooks: register this server with E2B, list,
    /// delete, or send a signed test event.
    Webhook(webhook::WebhookArgs),
    /// Write (or --check) the Lambda and Vercel schedules of sandstorm.json's
    /// cron triggers: EventBridge Scheduler in template.yaml, crons in vercel.json.
    Schedules(schedules::SchedulesArgs),
}

#[derive(Debug, Subcommand)]
enum TriggersCommand {
    /// Each trigger: what fires it (a webhook's path, a cron schedule and
    /// its zone) and, for cron, its next fire time.
    List(TriggersListArgs),
    /// Fire a trigger now, as its webhook or schedule would, with the
    /// server's token in place of its secret. Here, the run is followed to
    /// its end; with --server, its id is printed for `ds attach`.
    #[command(visible_alias = "test")]
    Fire(TriggersFireArgs),
}

#[derive(Debug, Args)]
struct TriggersListArgs {
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
struct TriggersFireArgs {
    /// The trigger's name in sandstorm.json.
    #[arg(value_name = "NAME")]
    name: String,
    /// The payload its prompt template reads as {{body.*}}: JSON, or
    /// @FILE to read it from a file.
    #[arg(long, value_name = "JSON")]
    body: Option<String>,
    /// Show tool calls and their results in full.
    #[arg(short, long)]
    verbose: bool,
    /// Show only the agent's answer.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

impl TriggersFireArgs {
    /// `--body`, read and checked.
    fn payload(&self) -> Result<Option<serde_json::Value>, Fatal> {
        let Some(body) = &self.body else {
            return Ok(None);
        };
        let text = match body.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| Fatal::usage(format!("--body {body}: {e}")))?,
            None => body.clone(),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Fatal::usage(format!("--body is not JSON: {e}")))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 when no check failed (warnings do not count), 1 otherwise.")]
struct DoctorArgs {
    /// Also ask the E2B API (one request, with your E2B key) whether it is
    /// reachable and accepts the key.
    #[arg(long)]
    deep: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 written, 2 an unknown starter or a file that exists (named; --force overwrites)."
)]
struct InitArgs {
    /// The starter (see --list) [default: general-assistant].
    #[arg(value_name = "STARTER")]
    starter: Option<String>,
    /// Where to write it [default: a new folder named after the starter].
    #[arg(value_name = "DIRECTORY")]
    directory: Option<PathBuf>,
    /// List the starters and exit.
    #[arg(long, conflicts_with_all = ["starter", "directory", "force"])]
    list: bool,
    /// Overwrite files the starter writes when they already exist.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 added (or already there), 2 an unknown toolpack, a sandstorm.json that is \
not a JSON object, or a different server of that name (--force replaces it)."
)]
struct AddArgs {
    /// The toolpack (see --list).
    #[arg(value_name = "TOOLPACK", required_unless_present = "list")]
    toolpack: Option<String>,
    /// List the toolpacks, and whether each is in ./sandstorm.json.
    #[arg(long, conflicts_with_all = ["toolpack", "force"])]
    list: bool,
    /// Replace an MCP server of the same name that differs.
    #[arg(long)]
    force: bool,
}

/// Where the `/runs` commands ask: a deployed server, or E2B directly.
#[derive(Debug, Args)]
struct RemoteArgs {
    /// A deployed Sandstorm to ask [default: E2B directly, from here; the
    /// runs of local sandboxes are only in the `ds serve` that made them].
    #[arg(long, value_name = "URL", env = "SANDSTORM_SERVER")]
    server: Option<String>,
    /// The server's bearer token.
    #[arg(long, value_name = "TOKEN", env = "SANDSTORM_API_TOKEN", hide_env_values = true, value_parser = secret)]
    token: Option<Secret>,
    /// The E2B key of your own that started the runs, if one did (sent as
    /// x-e2b-api-key; runs started with another key are not found).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    e2b_api_key: Option<Secret>,
    /// Print JSON instead of readable text.
    #[arg(long)]
    json_output: bool,
}

#[derive(Debug, Args)]
struct RunsArgs {
    /// Only runs in this status (running, idle, succeeded, failed,
    /// cancelled, expired).
    #[arg(long)]
    status: Option<String>,
    /// Only runs started at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only runs with this team_id label.
    #[arg(long, value_name = "ID")]
    team_id: Option<String>,
    /// Only runs with this user_id label.
    #[arg(long, value_name = "ID")]
    user_id: Option<String>,
    /// Only runs with this channel_id label.
    #[arg(long, value_name = "ID")]
    channel_id: Option<String>,
    /// The most runs to show from the history.
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Where to go on from: the cursor an earlier `ds runs` printed.
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

impl RunsArgs {
    /// The filters as `GET /runs`'s query string; the server checks them.
    fn query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let limit = self.limit.map(|n| n.to_string());
        let pairs = [
            ("status", self.status.as_deref()),
            ("since", self.since.as_deref()),
            ("team_id", self.team_id.as_deref()),
            ("user_id", self.user_id.as_deref()),
            ("channel_id", self.channel_id.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", self.cursor.as_deref()),
        ];
        for (name, value) in pairs {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }
}

#[derive(Debug, Args)]
struct AttachArgs {
    /// The run's id (from its `run` event, `x-run-id` or `ds runs`).
    run_id: String,
    /// Show only the events after this event id.
    #[arg(long, value_name = "N", default_value_t = 0)]
    from: u64,
    /// Also show the runner's stderr lines.
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Only the agent's answer (and errors).
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
struct ContinueArgs {
    /// The run's id.
    run_id: String,
    /// The follow-up for the agent, which sees the whole conversation so far.
    prompt: String,
    /// Model for this turn (overrides the run's).
    #[arg(short, long)]
    model: Option<String>,
    /// Maximum agent turns for this turn.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Seconds this turn may take, within what is left of the run's
    /// lifetime [default: the server's sandstorm.json `timeout`, else 300].
    #[arg(short, long)]
    timeout: Option<u64>,
    /// Upload a text file to /home/user/<name> (repeatable).
    #[arg(short, long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Also show the runner's stderr lines.
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Only the agent's answer (and errors).
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "\
The replay forks the run's SDK session while its sandbox is still there (a detached run, \
running or kept with keep_alive); otherwise it runs the recorded prompt and request again. \
The history keeps file names, not contents: pass a run's files again with -f.

Exit status: 0 when the replay succeeded, 1 when it failed, 2 for a bad argument or a run \
that cannot be replayed.")]
struct ReplayArgs {
    /// The run's id (from `ds runs`).
    run_id: String,
    /// Model for the replay (overrides the recorded run's).
    #[arg(short, long)]
    model: Option<String>,
    /// A hard cap on what the replay's model calls cost, in US dollars:
    /// the model endpoint refuses the call past it (the replay's
    /// max_cost_usd).
    #[arg(long, value_name = "USD")]
    budget: Option<f64>,
    /// The only tools the model sees, comma-separated (Read,Bash,Write).
    #[arg(long, value_name = "TOOLS", value_delimiter = ',')]
    allowed_tools: Option<Vec<String>>,
    /// Maximum conversation turns (overrides the recorded run's).
    #[arg(long)]
    max_turns: Option<u32>,
    /// A text file to upload to /home/user/<name> (repeatable): the
    /// recorded run's files, again.
    #[arg(short, long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Write the comparison to FILE instead of stderr.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Anthropic API key for the replay (else the server's).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    anthropic_api_key: Option<Secret>,
    /// OpenRouter API key for the replay (else the server's).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    openrouter_api_key: Option<Secret>,
    /// Also show the runner's stderr lines.
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Only the agent's answer, errors and the comparison.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

impl ReplayArgs {
    /// The replay's body: the `/query` fields it changes.
    fn overrides(&self) -> Result<serde_json::Value, Fatal> {
        let mut body = serde_json::Map::new();
        let mut set = |name: &str, value: serde_json::Value| {
            if !value.is_null() {
                body.insert(name.to_owned(), value);
            }
        };
        set("model", serde_json::json!(self.model));
        set("max_cost_usd", serde_json::json!(self.budget));
        set("allowed_tools", serde_json::json!(self.allowed_tools));
        set("max_turns", serde_json::json!(self.max_turns));
        let files = read_files(&self.files)?;
        if !files.is_empty() {
            set("files", serde_json::json!(files));
        }
        let key = |key: &Option<Secret>| serde_json::json!(key.as_ref().map(Secret::expose));
        set("anthropic_api_key", key(&self.anthropic_api_key));
        set("openrouter_api_key", key(&self.openrouter_api_key));
        Ok(serde_json::Value::Object(body))
    }
}

#[derive(Debug, Args)]
struct CancelArgs {
    /// The run's id.
    run_id: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// The task for the agent.
    #[arg(required = true)]
    prompt: Option<String>,
    /// Model: sonnet, opus, haiku or a full model id (overrides sandstorm.json).
    #[arg(short, long)]
    model: Option<String>,
    /// Maximum conversation turns (overrides sandstorm.json).
    #[arg(long)]
    max_turns: Option<u32>,
    /// Seconds the run may take, 5-3600 [default: sandstorm.json's
    /// `timeout`, else 300].
    #[arg(short, long)]
    timeout: Option<u64>,
    /// A hard cap on what the run's model calls cost, in US dollars: the
    /// model endpoint refuses the call after the one that reached it
    /// (sandstorm.json's `max_cost_usd` wins when lower).
    #[arg(long, value_name = "USD")]
    max_cost_usd: Option<f64>,
    /// A hard cap on the tokens the run's model calls use, input, output
    /// and cache together (sandstorm.json's `max_tokens` wins when lower).
    #[arg(long, value_name = "TOKENS")]
    max_tokens: Option<u64>,
    /// Print every event as one JSON line instead of readable text.
    #[arg(long)]
    json_output: bool,
    /// A text file to upload to /home/user/<name> (repeatable).
    #[arg(short, long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Also show the runner's stderr lines.
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Only the agent's answer (and errors): no tool lines, spinner or summary.
    #[arg(short, long)]
    quiet: bool,
    /// A glob, relative to /home/user, of files to bring back (repeatable),
    /// or `auto` for every file the run created or changed [default:
    /// `outputs` in sandstorm.json, or output/** with --output-dir].
    #[arg(long = "outputs", value_name = "GLOB")]
    outputs: Vec<String>,
    /// Save the files the agent made (see --outputs) under DIR.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Keep the run going when ds stops reading it (Ctrl-C), for `ds
    /// attach` to read on (E2B only: a local sandbox ends with ds).
    #[arg(long)]
    detach: bool,
    /// Keep the run's sandbox SECS after the agent's turn for a follow-up
    /// (`ds continue`); paused meanwhile. Needs --detach.
    #[arg(long, value_name = "SECS", requires = "detach")]
    keep_alive: Option<u64>,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    sandbox: SandboxArg,
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Anthropic API key (else ANTHROPIC_API_KEY).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    anthropic_api_key: Option<Secret>,
    /// E2B API key (else E2B_API_KEY).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    e2b_api_key: Option<Secret>,
    /// OpenRouter API key (else OPENROUTER_API_KEY; needs ANTHROPIC_BASE_URL).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    openrouter_api_key: Option<Secret>,
}

/// Keys go straight into a [`Secret`], so the `Debug` of the parsed
/// arguments never shows one.
#[allow(
    clippy::unnecessary_wraps,
    reason = "clap's value_parser takes a function that returns a Result"
)]
fn secret(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value))
}

#[derive(Debug, Args)]
struct SandboxArg {
    /// Where the agent runs [default: e2b with an E2B key, else local].
    #[arg(long, value_name = "PROVIDER", value_parser = provider_names())]
    sandbox: Option<String>,
}

/// `--sandbox` takes the name of any provider the door offers.
fn provider_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        PROVIDERS
            .iter()
            .map(|p| PossibleValue::new(p.name).help(p.summary)),
    )
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to bind. Loopback by default: set 0.0.0.0 to listen on every
    /// interface (and set SANDSTORM_API_TOKEN when you do).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(short, long, default_value_t = 8000)]
    port: u16,
    /// Watch sandstorm.json and .env: a change that loads serves the next
    /// runs; one that does not is logged and the old settings stay. The
    /// address, CORS and the sandbox provider need a restart.
    #[arg(long)]
    reload: bool,
    #[command(flatten)]
    sandbox: SandboxArg,
}

/// An error that ends `ds` with a message and an exit code.
#[derive(Debug)]
pub(crate) struct Fatal {
    pub code: u8,
    pub message: String,
}

impl Fatal {
    fn usage(message: impl Into<String>) -> Self {
        Fatal {
            code: exit::USAGE,
            message: message.into(),
        }
    }
}

/// Runs `ds` with parsed arguments.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Some(Command::Serve(args)) => serve_command(args).await,
        Some(Command::Query(args)) => query_command(args).await,
        Some(Command::Runs(args)) => runs_command(args).await,
        Some(Command::Attach(args)) => attach_command(args).await,
        Some(Command::Continue(args)) => continue_command(args).await,
        Some(Command::Cancel(args)) => cancel_command(args).await,
        Some(Command::Replay(args)) => replay_command(args).await,
        Some(Command::Triggers(command)) => triggers_command(command).await,
        Some(Command::Doctor(args)) => doctor::doctor(args.deep).await,
        Some(Command::Init(args)) => init_command(&args),
        Some(Command::Add(args)) => add_command(&args),
        Some(Command::Webhook(args)) => {
            telemetry("warn");
            webhook::webhook(args).await
        }
        Some(Command::Schedules(args)) => schedules::schedules(&args),
        None => query_command(cli.query).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(fatal) => {
            eprintln!("error: {}", fatal.message);
            ExitCode::from(fatal.code)
        }
    }
}

/// Reads the environment and `.env`, picks the sandbox, loads sandstorm.json.
fn settings(flag: Option<&str>, quiet_notice: bool) -> Result<Settings, Fatal> {
    let (cwd, env) = environment()?;
    let executable = std::env::current_exe().ok();
    let choice = SandboxChoice {
        catalog: PROVIDERS,
        requested: flag,
        setup: Setup::InstallIfMissing,
        executable: executable.as_deref(),
    };
    let settings = Settings::build(&env, &cwd, Profile::Server, choice).map_err(Fatal::usage)?;
    if flag.is_none()
        && env.get(SANDBOX_VARIABLE).is_none()
        && settings.sandbox.provider.name == local::PROVIDER.name
        && !quiet_notice
    {
        eprintln!(
            "note: no E2B key set; running in a local bubblewrap sandbox (--sandbox e2b to change)"
        );
    }
    if let Err(e) = &settings.config {
        return Err(Fatal::usage(format!("sandstorm.json is invalid: {e}")));
    }
    Ok(settings)
}

fn state(settings: Settings) -> Result<AppState, Fatal> {
    if settings.history.table.is_some() {
        // The table is the serverless doors' history; `ds` has its file,
        // and quietly recording nowhere would be worse than refusing.
        return Err(Fatal::usage(
            "SANDSTORM_HISTORY_TABLE is read by the serverless doors (Lambda, Vercel); \
             ds keeps its history in an SQLite file (SANDSTORM_HISTORY_PATH)",
        ));
    }
    let provider = settings.sandbox.build_provider().map_err(Fatal::usage)?;
    let history = crate::history::open(&settings.history);
    Ok(AppState::new(settings, provider).with_history(history))
}

/// Logging, and OpenTelemetry export when the environment or `.env` sets
/// an OTLP endpoint.
fn telemetry(default: &str) -> crate::telemetry::Telemetry {
    // A `.env` that cannot be read is reported by `settings`; until then
    // the process's own environment decides.
    let env = environment().map_or_else(|_| EnvVars::from_pairs(std::env::vars()), |(_, env)| env);
    crate::telemetry::init_from(crate::telemetry::Format::Text, default, &|name| {
        env.get(name).map(str::to_owned)
    })
}

/// The working directory, and the environment with its `.env` filled in.
fn environment() -> Result<(PathBuf, EnvVars), Fatal> {
    let cwd = working_dir()?;
    let mut env = EnvVars::from_pairs(std::env::vars());
    env.fill_from_dotenv(&cwd.join(".env"))
        .map_err(|e| Fatal::usage(e.to_string()))?;
    Ok((cwd, env))
}

async fn serve_command(args: ServeArgs) -> Result<u8, Fatal> {
    let telemetry = telemetry("info");
    let mut settings = settings(args.sandbox.sandbox.as_deref(), false)?;
    // sandstorm.json's `e2b_webhook_url`: registered with E2B while this
    // server runs, its secret the one events are checked with.
    let (_, env) = environment()?;
    let e2b_webhook = webhook::ServePlan::prepare(&mut settings, &env);
    let made_secret = e2b_webhook
        .as_ref()
        .and_then(|plan| plan.made_secret.clone());
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| format!("[{}]:{}", args.host, args.port).parse())
        .map_err(|_| Fatal::usage(format!("--host {:?} is not an IP address", args.host)))?;
    let bound = settings.shutdown_timeout;
    let connections = settings.connections;
    let (trigger, shutdown) = Shutdown::channel();
    let cwd = settings.cwd.clone();
    let state = state(settings)?.with_shutdown(shutdown);
    if args.reload {
        let mut files = vec![cwd.join(crate::config::FILE_NAME), cwd.join(".env")];
        files.extend(std::env::var_os("SANDSTORM_CONFIG").map(|p| cwd.join(p)));
        let flag = args.sandbox.sandbox.clone();
        serve::reload::watch(state.clone(), files, move || {
            let mut settings =
                self::settings(flag.as_deref(), true).map_err(|fatal| fatal.message)?;
            // The secret made for this process is the one E2B signs with.
            if settings.lifecycle.secret.is_none() {
                settings.lifecycle.secret.clone_from(&made_secret);
            }
            Ok(settings)
        });
    }
    let history = state.history().clone();
    // Cron triggers fire here on the server's own clock (the serverless
    // doors use their platform's scheduler instead).
    let clock = state
        .settings()
        .test_clock_start
        .map_or_else(Clock::system, Clock::starting_at);
    let scheduler = crate::triggers::scheduler::start(state.clone(), clock);
    let registration = e2b_webhook.map(webhook::ServePlan::start);
    let outbox = state.outbox();
    let served = serve::serve(addr, app::app(state), trigger, bound, connections).await;
    scheduler.abort();
    if let Some(registration) = registration {
        registration.end().await;
    }
    // The runs that a stop ended queued their ends before their clients
    // got `done`: write them before the process goes, or the history would
    // keep them `running`.
    history.settle(HISTORY_SETTLE).await;
    // Notices waiting for a retry get a last attempt now.
    outbox.settle(NOTICES_SETTLE).await;
    telemetry.flush().await;
    served.map_err(|e| Fatal {
        code: exit::RUN_FAILED,
        message: e,
    })?;
    Ok(exit::OK)
}

async fn query_command(args: QueryArgs) -> Result<u8, Fatal> {
    let telemetry = telemetry("warn");
    let prompt = args.prompt.unwrap_or_default();
    let files = read_files(&args.files)?;
    let settings = settings(
        args.sandbox.sandbox.as_deref(),
        args.json_output || args.quiet,
    )?;
    let outputs = match (&args.output_dir, args.outputs.as_slice()) {
        (_, [word]) if word == crate::outputs::AUTO => Some(Outputs::Auto),
        (_, [_, ..]) => Some(Outputs::Globs(args.outputs)),
        // Saving with nothing configured: the convention of the original's
        // examples, which tell the agent to write to /home/user/output/.
        (Some(_), []) if config_outputs(&settings).is_none() => {
            Some(Outputs::Globs(vec!["output/**".to_owned()]))
        }
        _ => None,
    };
    let request = QueryRequest {
        prompt,
        anthropic_api_key: args.keys.anthropic_api_key,
        openrouter_api_key: args.keys.openrouter_api_key,
        sandbox_keys: args
            .keys
            .e2b_api_key
            .map(|key| (e2b::CREDENTIAL.field.to_owned(), key))
            .into_iter()
            .collect(),
        model: args.model,
        max_turns: args.max_turns,
        timeout: args.timeout,
        max_cost_usd: args.max_cost_usd,
        max_tokens: args.max_tokens,
        files: (!files.is_empty()).then_some(files),
        outputs,
        detach: Some(args.detach),
        keep_alive: args.keep_alive,
        ..QueryRequest::default()
    };
    if args.detach && settings.sandbox.provider.name != e2b::PROVIDER.name {
        return Err(Fatal::usage(
            "--detach needs an E2B sandbox: a local sandbox ends with ds (run ds serve for that)",
        ));
    }
    let query = request
        .validate(Naming::Flags)
        .map_err(|e| Fatal::usage(e.to_string()))?;
    // A detached run belongs to the E2B key given on the command line, if
    // one was, as a request's own key makes it its own on a server.
    let owner = crate::runs::owner(query.keys.sandbox(e2b::CREDENTIAL.field));
    let state = state(settings)?;
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let caller = args.detach.then_some(&owner);
    let mut plan = crate::plan::prepare(&state.settings(), query, request_id, None, caller)
        .await
        .map_err(|e| Fatal::usage(e.to_string()))?;
    // `ds` exits once its run is over: a notice gets its first attempt
    // before the run's `done`, and a last one as `ds` exits; a detached
    // run, which `ds` does not stay to read to its end, gets none.
    if let Some(notice) = plan.notice.as_mut() {
        notice.sender_stays = false;
    }
    if let Some(detach) = plan.detach.as_mut() {
        detach.watched = false;
    }
    if plan.detach.is_some() && plan.notice.take().is_some() {
        eprintln!(
            "note: sandstorm.json's webhook_url gets no notice of this run: ds does not stay \
             to see a detached run end (ds serve does)"
        );
    }
    // Ctrl-C and SIGTERM end a CLI run through `render::follow`.
    let handle = crate::run::spawn(
        state.provider().clone(),
        plan,
        Shutdown::never(),
        crate::runs::registry::Registry::default(),
        state.history(),
    );
    let history = state.history().clone();
    let outbox = state.outbox();
    let mode = render::Mode::new(args.json_output, args.verbose, args.quiet);
    let options = render::Options {
        mode,
        report_to: None,
        output_dir: args.output_dir,
        on_interrupt: if args.detach {
            render::OnInterrupt::Leave
        } else {
            render::OnInterrupt::EndRun
        },
    };
    let code = render::follow(handle, options).await;
    // The run's end is queued before its `done` is shown; let it land
    // before `ds` exits, and its spans go.
    history.settle(HISTORY_SETTLE).await;
    outbox.settle(NOTICES_SETTLE).await;
    telemetry.flush().await;
    Ok(code)
}

/// How long `ds` waits at exit for its run's record to be written.
const HISTORY_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long `ds` and `ds serve` wait at exit for the last attempts of the
/// notices still waiting for a retry.
const NOTICES_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The endpoint the `/runs` commands ask, and the headers that say who asks.
fn endpoint(
    remote: &RemoteArgs,
) -> Result<(runs::Endpoint, Vec<(http::HeaderName, http::HeaderValue)>), Fatal> {
    telemetry("warn");
    let state = match remote.server {
        Some(_) => None,
        None => Some(state(settings(None, true)?)?),
    };
    let mut headers = Vec::new();
    if let Some(key) = &remote.e2b_api_key {
        let value = http::HeaderValue::from_str(key.expose())
            .map_err(|_| Fatal::usage("--e2b-api-key is not a valid header value"))?;
        headers.push((http::HeaderName::from_static("x-e2b-api-key"), value));
    }
    // In this process too, the router asks for the token it is set up with.
    if remote.server.is_none()
        && let Some(token) = &remote.token
    {
        let value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| Fatal::usage("the token is not a valid header value"))?;
        headers.push((http::header::AUTHORIZATION, value));
    }
    let endpoint = runs::Endpoint::new(remote.server.clone(), remote.token.clone(), state)?;
    Ok((endpoint, headers))
}

async fn runs_command(args: RunsArgs) -> Result<u8, Fatal> {
    let (endpoint, headers) = endpoint(&args.remote)?;
    runs::list(&endpoint, &args.query(), &headers, args.remote.json_output).await
}

async fn cancel_command(args: CancelArgs) -> Result<u8, Fatal> {
    let (endpoint, headers) = endpoint(&args.remote)?;
    let code = runs::cancel(&endpoint, &args.run_id, &headers, args.remote.json_output).await;
    // The cancel is recorded in this process's history, off its path.
    endpoint.settle().await;
    code
}

async fn replay_command(args: ReplayArgs) -> Result<u8, Fatal> {
    let overrides = args.overrides()?;
    let (endpoint, headers) = endpoint(&args.remote)?;
    let options = render::Options {
        mode: render::Mode::new(args.remote.json_output, args.verbose, args.quiet),
        output_dir: None,
        on_interrupt: render::OnInterrupt::Leave,
        report_to: args.output,
    };
    runs::replay(endpoint, &args.run_id, &overrides, headers, options).await
}

async fn attach_command(args: AttachArgs) -> Result<u8, Fatal> {
    let (endpoint, headers) = endpoint(&args.remote)?;
    let mode = render::Mode::new(args.remote.json_output, args.verbose, args.quiet);
    let options = render::Options {
        mode,
        report_to: None,
        output_dir: None,
        on_interrupt: render::OnInterrupt::Leave,
    };
    runs::attach(endpoint, &args.run_id, args.from, headers, options).await
}

async fn triggers_command(command: TriggersCommand) -> Result<u8, Fatal> {
    match command {
        TriggersCommand::List(args) => {
            let (endpoint, headers) = endpoint(&args.remote)?;
            triggers::list(&endpoint, &headers, args.remote.json_output).await
        }
        TriggersCommand::Fire(args) => {
            let payload = args.payload()?;
            let (endpoint, headers) = endpoint(&args.remote)?;
            let options = render::Options {
                mode: render::Mode::new(args.remote.json_output, args.verbose, args.quiet),
                report_to: None,
                output_dir: None,
                // As `ds attach`: an E2B run goes on (a local sandbox
                // cannot outlive `ds`).
                on_interrupt: render::OnInterrupt::Leave,
            };
            triggers::fire(endpoint, &args.name, payload.as_ref(), headers, options).await
        }
    }
}

async fn continue_command(args: ContinueArgs) -> Result<u8, Fatal> {
    let files = read_files(&args.files)?;
    let mut turn = serde_json::json!({"prompt": args.prompt});
    if let Some(timeout) = args.timeout {
        turn["timeout"] = timeout.into();
    }
    if !files.is_empty() {
        turn["files"] = serde_json::json!(files);
    }
    if let Some(model) = args.model {
        turn["model"] = model.into();
    }
    if let Some(max_turns) = args.max_turns {
        turn["max_turns"] = max_turns.into();
    }
    let (endpoint, headers) = endpoint(&args.remote)?;
    let mode = render::Mode::new(args.remote.json_output, args.verbose, args.quiet);
    let options = render::Options {
        mode,
        report_to: None,
        output_dir: None,
        on_interrupt: render::OnInterrupt::Leave,
    };
    runs::continue_run(endpoint, &args.run_id, &turn, headers, options).await
}

fn init_command(args: &InitArgs) -> Result<u8, Fatal> {
    if args.list {
        return Ok(init::list());
    }
    init::init(
        &working_dir()?,
        args.starter.as_deref(),
        args.directory.as_deref(),
        args.force,
    )
}

fn add_command(args: &AddArgs) -> Result<u8, Fatal> {
    let cwd = working_dir()?;
    match &args.toolpack {
        Some(name) if !args.list => add::add(&cwd, name, args.force),
        _ => Ok(add::list(&cwd)),
    }
}

fn working_dir() -> Result<PathBuf, Fatal> {
    std::env::current_dir().map_err(|e| Fatal::usage(format!("no working directory: {e}")))
}

fn config_outputs(settings: &Settings) -> Option<&Outputs> {
    settings
        .config
        .as_ref()
        .ok()
        .and_then(|c| c.outputs.as_ref())
}

/// Reads `-f` files as text, keyed by file name as the original does.
fn read_files(paths: &[PathBuf]) -> Result<BTreeMap<String, String>, Fatal> {
    let mut files = BTreeMap::new();
    for path in paths {
        let name = file_name(path)?;
        let bytes = std::fs::read(path)
            .map_err(|e| Fatal::usage(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes)
            .ok()
            .filter(|t| !t.contains('\0'))
            .ok_or_else(|| {
                Fatal::usage(format!(
                    "{} is not a text file; -f uploads text files only",
                    path.display()
                ))
            })?;
        if files.insert(name.clone(), text).is_some() {
            return Err(Fatal::usage(format!(
                "two -f files are named {name}; each upload goes to /home/user/<name>"
            )));
        }
    }
    Ok(files)
}

fn file_name(path: &Path) -> Result<String, Fatal> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Fatal::usage(format!("{} has no usable file name", path.display())))
}
