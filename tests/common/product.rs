//! The whole product as a user runs it, for end-to-end tests: `ds serve` as
//! a real process on a real socket (behind it the E2B emulator or a local
//! bubblewrap sandbox), `ds` on the command line, and the events a client
//! reads back.
//!
//! Every run here is the real thing below the model: bubblewrap, `node
//! runner.mjs`, the pinned Agent SDK. Only the model is scripted
//! ([`super::model_server`]). The SDK inside the sandbox gets the offline
//! settings of [`super::runner::OFFLINE_ENV`] the way an operator would pass
//! them: through `SANDSTORM_FORWARD_ENV`.
//!
//! ```ignore
//! let model = ModelServer::start(Script::bash_write_file()).await;
//! let product = Serve::new(Chain::Local, &model).start().await;
//! let events = product.query(json!({"prompt": "go"})).await;
//! assert_eq!(events.result()["subtype"], "success");
//! product.assert_sandboxes_destroyed().await;
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tokio::process::Command;

use super::emulator::{self, RunningEmulator};
pub use super::keys::ANTHROPIC_KEY;
use super::keys::E2B_KEY;
use super::messages;
use super::model_server::ModelServer;
use super::runner::{OFFLINE_ENV, require_node_modules};
use super::serve::{DS, DsServe, Server};
use super::sse;
use super::stream;
/// Names of the request fields and variables that hold keys: their values
/// must never show up in an event or in the server's log.
const KEY_FIELDS: [&str; 3] = ["anthropic_api_key", "openrouter_api_key", "e2b_api_key"];
const KEY_VARS: [&str; 4] = [
    "ANTHROPIC_API_KEY",
    "OPENROUTER_API_KEY",
    "E2B_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
];

/// The longest a scripted run may take before the test fails. Runs take a
/// few seconds; this only turns a hang into a failure.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The folder prefix of a local sandbox's host directory.
const SANDBOX_DIR_PREFIX: &str = "sandstorm-";

/// Which way `ds serve` reaches its sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// `--sandbox e2b` against the E2B emulator, which runs each sandbox as
    /// a local bubblewrap sandbox.
    E2b,
    /// `--sandbox local`: bubblewrap directly.
    Local,
}

/// The environment that keeps the SDK in the sandbox offline and quick to
/// fail, plus `SANDSTORM_FORWARD_ENV` naming it. `IS_SANDBOX` is left out:
/// the sandbox sets it itself, and the tests prove that.
pub fn offline_env() -> Vec<(String, String)> {
    let forwarded: Vec<(&str, &str)> = OFFLINE_ENV
        .iter()
        .copied()
        .filter(|(name, _)| *name != "IS_SANDBOX")
        .collect();
    let names: Vec<&str> = forwarded.iter().map(|(name, _)| *name).collect();
    let mut env: Vec<(String, String)> = forwarded
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.push(("SANDSTORM_FORWARD_ENV".to_owned(), names.join(",")));
    env
}

/// The environment every `ds` process starts from: nothing of the test's
/// own environment but `PATH`, the model's URL, the default Anthropic key
/// and the offline settings.
fn base_env(model: &ModelServer) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = offline_env().into_iter().collect();
    env.insert(
        "PATH".to_owned(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
    );
    env.insert("ANTHROPIC_BASE_URL".to_owned(), model.url());
    env.insert("ANTHROPIC_API_KEY".to_owned(), ANTHROPIC_KEY.to_owned());
    env.insert("RUST_LOG".to_owned(), "warn".to_owned());
    env
}

/// `host:port` of an http URL on loopback, as an egress opening.
fn authority(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

/// Folders of one product instance, removed on drop: `cwd` (where
/// sandstorm.json and the user's files live), `tmp` (the `ds` process's
/// `TMPDIR`, where local sandboxes are made) and `e2b` (the emulator's
/// sandboxes).
struct Dirs {
    root: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("create a temp dir for the product");
        for dir in ["cwd", "tmp", "e2b"] {
            std::fs::create_dir(root.path().join(dir)).expect("create product dirs");
        }
        Dirs { root }
    }

    fn cwd(&self) -> PathBuf {
        self.root.path().join("cwd")
    }

    fn tmp(&self) -> PathBuf {
        self.root.path().join("tmp")
    }

    fn e2b(&self) -> PathBuf {
        self.root.path().join("e2b")
    }
}

/// How to start one `ds serve`.
pub struct Serve {
    chain: Chain,
    env: BTreeMap<String, String>,
    config: Option<Value>,
    /// More files for the server's working directory, by relative path.
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Serve {
    /// `ds serve --sandbox <chain>` talking to `model`, with
    /// `ANTHROPIC_API_KEY` = [`ANTHROPIC_KEY`].
    pub fn new(chain: Chain, model: &ModelServer) -> Self {
        Serve {
            chain,
            env: base_env(model),
            config: None,
            files: Vec::new(),
        }
    }

    /// Writes `content` at `path` (relative) in the server's working
    /// directory, beside sandstorm.json.
    pub fn file(mut self, path: impl Into<PathBuf>, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((path.into(), content.into()));
        self
    }

    /// Writes `config` as sandstorm.json in the server's working directory.
    pub fn config(mut self, config: Value) -> Self {
        self.config = Some(config);
        self
    }

    /// Sets one variable in the server's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Removes one variable from the server's environment.
    pub fn env_remove(mut self, name: &str) -> Self {
        self.env.remove(name);
        self
    }

    /// Starts the emulator (for [`Chain::E2b`]) and `ds serve`, and waits
    /// until the server listens.
    pub async fn start(self) -> Product {
        require_node_modules();
        let dirs = Dirs::new();
        if let Some(config) = &self.config {
            std::fs::write(dirs.cwd().join("sandstorm.json"), config.to_string())
                .expect("write sandstorm.json");
        }
        for (path, content) in &self.files {
            let path = dirs.cwd().join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create a folder for a server file");
            }
            std::fs::write(&path, content).expect("write a server file");
        }
        let mut env = self.env;
        env.insert("TMPDIR".to_owned(), dirs.tmp().display().to_string());
        let emulator = match self.chain {
            Chain::E2b => {
                let mut options = emulator::options();
                options.work_root = Some(dirs.e2b());
                // The emulator's sandboxes get the server's openings, or
                // else the model's address: a real VM reaches the model
                // API over the internet, and so does its model proxy here.
                let model = env.get("ANTHROPIC_BASE_URL").and_then(|url| authority(url));
                let openings: Vec<&str> = [env.get("SANDSTORM_EGRESS_OPEN"), model.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                options.egress_open = Some(openings.join(",")).filter(|o| !o.is_empty());
                let emulator = emulator::start_with(options).await;
                env.insert("E2B_API_URL".to_owned(), emulator.url.clone());
                env.insert("E2B_SANDBOX_URL".to_owned(), emulator.url.clone());
                env.entry("E2B_API_KEY".to_owned())
                    .or_insert_with(|| E2B_KEY.to_owned());
                Some(emulator)
            }
            Chain::Local => None,
        };
        let secrets = KEY_VARS
            .iter()
            .filter_map(|name| env.get(*name))
            .filter(|value| !value.is_empty())
            .cloned()
            .collect();

        let sandbox = match self.chain {
            Chain::E2b => "e2b",
            Chain::Local => "local",
        };
        let server = DsServe::new(["serve", "--sandbox", sandbox])
            .current_dir(&dirs.cwd())
            .envs(&env)
            .start()
            .await;
        Product {
            chain: self.chain,
            emulator,
            secrets,
            server,
            env,
            dirs,
        }
    }
}

/// A running `ds serve` (and emulator). Everything stops when dropped.
pub struct Product {
    pub chain: Chain,
    emulator: Option<RunningEmulator>,
    /// Key values the server was given, and those sent in request bodies.
    secrets: Vec<String>,
    // Dropped before the folders it works in.
    server: Server,
    /// The environment `ds serve` started with.
    env: BTreeMap<String, String>,
    dirs: Dirs,
}

impl Product {
    /// `POST /query` with `body`; reads the whole SSE stream. Fails the
    /// test unless the answer is a 200 event stream, and when any key value
    /// shows up in an event.
    pub async fn query(&mut self, body: Value) -> Events {
        for field in KEY_FIELDS {
            if let Some(key) = body[field].as_str().filter(|k| !k.is_empty()) {
                self.secrets.push(key.to_owned());
            }
        }
        let response = reqwest::Client::new()
            .post(format!("{}/query", self.server.url))
            .json(&body)
            .send()
            .await
            .expect("POST /query");
        let status = response.status();
        let content_type = stream::content_type(&response);
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            panic!(
                "POST /query answered {status}: {text}\n--- ds serve log ---\n{}",
                self.log()
            );
        }
        assert_eq!(content_type, "text/event-stream");
        let sandbox_dirs = self.sandbox_dirs();
        let (text, sandboxes_seen) = watch_sandboxes(&sandbox_dirs, response.text()).await;
        let text = text.expect("read the event stream");
        let events = Events::parse(&text, sandboxes_seen);
        events.assert_free_of(&self.secrets);
        events
    }

    /// Where this product's sandboxes live on the host.
    fn sandbox_dirs(&self) -> PathBuf {
        match self.chain {
            Chain::E2b => self.dirs.e2b(),
            Chain::Local => self.dirs.tmp(),
        }
    }

    /// Fails the test unless every sandbox made so far is destroyed: no
    /// sandbox directory is left on the host and, for the E2B chain, the
    /// emulator killed each one it created, after exactly one create,
    /// upload and start per query. `queries` is how many queries ran.
    pub async fn assert_sandboxes_destroyed(&self, queries: u64) {
        let mut left = leftover_sandboxes(&self.sandbox_dirs());
        for _ in 0..100 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = leftover_sandboxes(&self.sandbox_dirs());
        }
        assert!(left.is_empty(), "sandbox directories left behind: {left:?}");
        if let Some(emulator) = &self.emulator {
            let stats = emulator.settled(Duration::from_secs(5)).await;
            assert_eq!(
                (stats.created, stats.killed, stats.alive),
                (queries, queries, 0),
                "every sandbox the emulator created must be killed: {stats:?}"
            );
            // With the template's model proxy (on unless turned off), each
            // runner has its proxy started beside it.
            let proxied = self
                .env
                .get("SANDSTORM_E2B_MODEL_PROXY")
                .is_none_or(|v| v != "0");
            for (route, per_query) in [
                ("create", 1),
                ("upload", 1),
                ("start", if proxied { 2 } else { 1 }),
            ] {
                assert_eq!(
                    stats.requests.get(route).copied().unwrap_or(0),
                    queries * per_query,
                    "{per_query} {route} per query: {:?}",
                    stats.requests
                );
            }
        }
        let log = self.log();
        for secret in &self.secrets {
            assert!(
                !log.contains(secret.as_str()),
                "a key is in the ds serve log:\n{log}"
            );
        }
    }

    /// The environment `ds serve` started with: a `ds` command with it
    /// talks to the same sandboxes.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// Sends `signal` to `ds serve` (SIGTERM: it stops as a deploy stops
    /// it).
    pub fn signal(&self, signal: Signal) {
        self.server.process.signal(signal);
    }

    /// Another `ds serve` beside the first, on the same sandboxes (the same
    /// emulator), sharing nothing else with it: a second instance of a
    /// stateless deployment. `set` and `unset` change its environment.
    pub async fn another_instance(&self, set: &[(&str, &str)], unset: &[&str]) -> Server {
        let mut env = self.env.clone();
        for (name, value) in set {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        for name in unset {
            env.remove(*name);
        }
        let sandbox = match self.chain {
            Chain::E2b => "e2b",
            Chain::Local => "local",
        };
        DsServe::new(["serve", "--sandbox", sandbox])
            .current_dir(&self.dirs.cwd())
            .envs(&env)
            .start()
            .await
    }

    /// The E2B emulator, for [`Chain::E2b`]: to turn its knobs.
    pub fn emulator(&self) -> Option<&RunningEmulator> {
        self.emulator.as_ref()
    }

    /// The E2B emulator's counts at this moment, for [`Chain::E2b`].
    pub fn emulator_now(&self) -> Option<super::emulator::Snapshot> {
        self.emulator.as_ref().map(RunningEmulator::stats)
    }

    /// The E2B emulator's counts, for [`Chain::E2b`].
    pub async fn emulator_settled(&self) -> Option<super::emulator::Snapshot> {
        match &self.emulator {
            Some(emulator) => Some(emulator.settled(Duration::from_secs(5)).await),
            None => None,
        }
    }

    /// Everything `ds serve` wrote on stderr so far.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// Host directories of live sandboxes under `dir`.
fn leftover_sandboxes(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(SANDBOX_DIR_PREFIX)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Awaits `work` (a run) while counting the sandbox directories under
/// `dir`, so a test can tell that a sandbox existed during the run and is
/// gone after it. Returns the work's output and the most directories seen
/// at once. Fails the test after [`RUN_TIMEOUT`].
async fn watch_sandboxes<T>(dir: &Path, work: impl Future<Output = T>) -> (T, usize) {
    let mut seen = 0;
    let watched = async {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    seen = seen.max(leftover_sandboxes(dir).len());
                }
            }
        }
    };
    let out = tokio::time::timeout(RUN_TIMEOUT, watched)
        .await
        .unwrap_or_else(|_| panic!("the run did not end within {RUN_TIMEOUT:?}"));
    (out, seen)
}

/// The events of one run, in order, as a client read them.
#[derive(Debug)]
pub struct Events {
    pub events: Vec<Value>,
    /// The closing `done` event (`Null` for `--json-output`, which has none).
    pub done: Value,
    /// The stream (or `--json-output`) as received, for text searches.
    pub raw: String,
    /// The most sandbox directories that existed at once during the run.
    pub sandboxes_seen: usize,
}

impl Events {
    /// Parses an SSE body: every event's data is one JSON event. The
    /// stream must end with its `done` event, which is not one of the run's.
    fn parse(text: &str, sandboxes_seen: usize) -> Self {
        let all = sse::json_events(text);
        let (run, done) = sse::split_closing(&all);
        let done =
            done.unwrap_or_else(|| panic!("the stream ended without its done event: {text}"));
        let failed = run.iter().any(|e| e["type"] == "error");
        assert_eq!(
            done["status"],
            if failed { "error" } else { "success" },
            "the done event says how the run ended: {done}"
        );
        let events = run.to_vec();
        Events {
            events,
            done: done.clone(),
            raw: text.to_owned(),
            sandboxes_seen,
        }
    }

    /// Parses an SSE body read elsewhere (a detached run's reader).
    pub fn from_sse(text: &str) -> Self {
        Self::parse(text, 0)
    }

    /// Parses `--json-output`: every line must be one JSON event.
    pub fn parse_lines(text: &str) -> Self {
        let events = text
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("an output line is not JSON ({e}): {line:?}"))
            })
            .collect();
        Events {
            events,
            done: Value::Null,
            raw: text.to_owned(),
            sandboxes_seen: 0,
        }
    }

    /// The events whose `type` is `kind`.
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        messages::of_type(&self.events, kind)
    }

    /// The `system` init event.
    pub fn init(&self) -> &Value {
        messages::init(&self.events)
            .unwrap_or_else(|| panic!("no system init event in {}", self.dump()))
    }

    /// The first `result` event.
    pub fn result(&self) -> &Value {
        self.of_type("result")
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no result event in {}", self.dump()))
    }

    /// Every `tool_use` block of `assistant` events, as `(name, input)`.
    pub fn tool_uses(&self) -> Vec<(&str, &Value)> {
        messages::tool_uses(&self.events)
    }

    /// Every `tool_result` block of `user` events, as `(text, is_error)`.
    pub fn tool_results(&self) -> Vec<(String, bool)> {
        messages::tool_results(&self.events)
    }

    /// Fails the test when any of `secrets` appears anywhere in the events.
    pub fn assert_free_of(&self, secrets: &[String]) {
        for secret in secrets {
            assert!(
                !self.raw.contains(secret.as_str()),
                "a key value appears in the events: {}",
                self.dump()
            );
        }
    }

    /// Every event, one per line, for assertion messages.
    pub fn dump(&self) -> String {
        self.events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One `ds` command-line run: `ds <args>` in a fresh working directory
/// holding the given files, with a local sandbox.
pub struct Cli {
    env: BTreeMap<String, String>,
    files: Vec<(String, String)>,
    /// Run under a pseudo-terminal (`script`), as a person at a terminal
    /// would: stdout and stderr then arrive merged, in `stdout`.
    terminal: bool,
    /// Pass `--sandbox local`; without it, `ds` chooses by itself.
    sandbox_flag: bool,
}

/// How a `ds` command-line run ended.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The most sandbox directories that existed at once during the run.
    pub sandboxes_seen: usize,
    /// Sandbox directories still there after `ds` exited.
    pub sandboxes_left: Vec<PathBuf>,
}

impl CliOutput {
    /// Both streams, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

impl Cli {
    /// `ds` talking to `model`, with `ANTHROPIC_API_KEY` = [`ANTHROPIC_KEY`].
    pub fn new(model: &ModelServer) -> Self {
        Cli {
            env: base_env(model),
            files: Vec::new(),
            terminal: false,
            sandbox_flag: true,
        }
    }

    /// Sets one environment variable of the `ds` process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Leaves out `--sandbox local`, so `ds` picks the sandbox itself.
    pub fn without_sandbox_flag(mut self) -> Self {
        self.sandbox_flag = false;
        self
    }

    /// Runs `ds` on a pseudo-terminal instead of pipes.
    pub fn terminal(mut self) -> Self {
        self.terminal = true;
        self
    }

    /// Puts a file into the working directory (`data.csv`, `sandstorm.json`).
    pub fn file(mut self, name: &str, content: &str) -> Self {
        self.files.push((name.to_owned(), content.to_owned()));
        self
    }

    /// Runs `ds <args> --sandbox local`, sends it `signal` once the run has
    /// uploaded into its sandbox, and waits for it to exit. The sandbox
    /// directory must be gone by then: `ds` destroys it before exiting.
    pub async fn run_and_signal(self, args: &[&str], signal: Signal) -> CliOutput {
        let dirs = Dirs::new();
        let child = self.spawn(args, &dirs);
        // The upload lands after `ds` is already listening for signals.
        let uploaded = async {
            loop {
                let sandboxes = leftover_sandboxes(&dirs.tmp());
                if sandboxes
                    .iter()
                    // The runner's files are the host side of the sandbox
                    // (its home is a tmpfs inside).
                    .any(|s| s.join("runner/agent_config.json").is_file())
                {
                    return sandboxes.len();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let seen = tokio::time::timeout(RUN_TIMEOUT, uploaded)
            .await
            .expect("ds uploads into its sandbox");
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        let pid = pid.and_then(Pid::from_raw).expect("ds is running");
        kill_process(pid, signal).expect("signal ds");
        let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .expect("ds exits after the signal")
            .expect("wait for ds");
        CliOutput::read(output, seen, &dirs)
    }

    /// Runs `ds <args> --sandbox local` and waits for it to exit.
    pub async fn run(self, args: &[&str]) -> CliOutput {
        let dirs = Dirs::new();
        let child = self.spawn(args, &dirs);
        let (output, sandboxes_seen) = watch_sandboxes(&dirs.tmp(), child.wait_with_output()).await;
        CliOutput::read(output.expect("wait for ds"), sandboxes_seen, &dirs)
    }

    /// Starts `ds <args>` in `dirs` with this `Cli`'s files, environment,
    /// sandbox flag and terminal.
    fn spawn(&self, args: &[&str], dirs: &Dirs) -> tokio::process::Child {
        require_node_modules();
        for (name, content) in &self.files {
            std::fs::write(dirs.cwd().join(name), content).expect("write a cwd file");
        }
        let sandbox_flag: &[&str] = if self.sandbox_flag {
            &["--sandbox", "local"]
        } else {
            &[]
        };
        let mut command = if self.terminal {
            // script(1) gives ds a pty for stdout and stderr; -e passes on
            // ds's exit status.
            let line = std::iter::once(DS)
                .chain(args.iter().copied())
                .chain(sandbox_flag.iter().copied())
                .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join(" ");
            let mut command = Command::new("script");
            command.args(["-qefc", &line, "/dev/null"]);
            command
        } else {
            let mut command = Command::new(DS);
            command.args(args).args(sandbox_flag);
            command
        };
        command
            .current_dir(dirs.cwd())
            .env_clear()
            .envs(&self.env)
            .env("TMPDIR", dirs.tmp())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ds")
    }
}

impl CliOutput {
    /// What `ds` left behind; fails the test if a key value is in its
    /// output.
    fn read(output: std::process::Output, sandboxes_seen: usize, dirs: &Dirs) -> Self {
        let output = CliOutput {
            status: output.status,
            stdout: String::from_utf8(output.stdout).expect("ds stdout is UTF-8"),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            sandboxes_seen,
            sandboxes_left: leftover_sandboxes(&dirs.tmp()),
        };
        assert!(
            !output.stdout.contains(ANTHROPIC_KEY) && !output.stderr.contains(ANTHROPIC_KEY),
            "a key value appears in ds's output: {}",
            output.dump()
        );
        output
    }
}
