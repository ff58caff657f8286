//! Running `runner/runner.mjs` (the real Agent SDK) offline in tests.
//!
//! The environment the SDK needs to run against a scripted model, without
//! reaching the internet or the developer's own `~/.claude`, lives here so
//! the direct runner tests and the end-to-end tests share one definition.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::messages;
use tokio::process::Command;

/// The `~/.claude/settings.json` the server writes into every sandbox (the
/// same content as the Python original).
pub const SETTINGS_JSON: &str = r#"{"permissions":{"allow":[],"deny":[]},"env":{"CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS":"1"}}"#;

/// Environment that keeps the SDK offline and quick to fail, whatever the
/// model URL and home are.
pub const OFFLINE_ENV: &[(&str, &str)] = &[
    // No telemetry, update checks or other calls to the outside.
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
    ("DISABLE_ERROR_REPORTING", "1"),
    // bypassPermissions refuses to run as root unless told it is sandboxed.
    ("IS_SANDBOX", "1"),
    // Otherwise a scripted 5xx is retried for minutes.
    ("CLAUDE_CODE_MAX_RETRIES", "0"),
];

/// The checked-in `runner/` folder.
pub fn runner_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runner")
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Fails the test, with the command that fixes it, when the runner's
/// dependencies are not installed.
pub fn require_node_modules() {
    let sdk = runner_dir().join("node_modules/@anthropic-ai/claude-agent-sdk/package.json");
    assert!(
        sdk.is_file(),
        "the Agent SDK is not installed ({} is missing); run: npm ci --prefix runner",
        sdk.display()
    );
}

/// A home folder and temp folder for one run, removed on drop. The SDK
/// writes `~/.claude.json` and transcripts there; `work` is the agent's cwd
/// (the stand-in for `/home/user`).
pub struct RunDirs {
    root: tempfile::TempDir,
}

impl RunDirs {
    /// Creates home (with the server's `~/.claude/settings.json`), tmp and work.
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("create a temp dir for the run");
        for dir in ["home/.claude", "tmp", "work"] {
            std::fs::create_dir_all(root.path().join(dir)).expect("create run dirs");
        }
        std::fs::write(
            root.path().join("home/.claude/settings.json"),
            SETTINGS_JSON,
        )
        .expect("write settings.json");
        RunDirs { root }
    }

    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.path().join("tmp")
    }

    /// The agent's working directory.
    pub fn work(&self) -> PathBuf {
        self.root.path().join("work")
    }

    /// A path for the run's `agent_config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.root.path().join("agent_config.json")
    }
}

impl Default for RunDirs {
    fn default() -> Self {
        Self::new()
    }
}

/// What one runner process printed and how it ended.
#[derive(Debug)]
pub struct RunnerOutput {
    pub status: ExitStatus,
    /// Every stdout line, parsed. A line that is not JSON fails the run.
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl RunnerOutput {
    /// The lines whose `type` is `kind`.
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        messages::of_type(&self.lines, kind)
    }

    /// The `system` init line.
    pub fn init(&self) -> &Value {
        messages::init(&self.lines)
            .unwrap_or_else(|| panic!("no system init line in {}", self.dump()))
    }

    /// The last line, which must be the `result`.
    pub fn result(&self) -> &Value {
        match self.lines.last() {
            Some(last) if last["type"] == "result" => last,
            _ => panic!("the last line is not a result: {}", self.dump()),
        }
    }

    /// Every `tool_use` block in `assistant` lines, as `(name, input)`.
    pub fn tool_uses(&self) -> Vec<(&str, &Value)> {
        messages::tool_uses(&self.lines)
    }

    /// Every `tool_result` block in `user` lines, as `(text, is_error)`.
    pub fn tool_results(&self) -> Vec<(String, bool)> {
        messages::tool_results(&self.lines)
    }

    /// All `text` of `assistant` lines, joined.
    pub fn assistant_text(&self) -> String {
        messages::assistant_text(&self.lines)
    }

    /// Everything the run printed, for assertion messages.
    pub fn dump(&self) -> String {
        let lines: Vec<String> = self.lines.iter().map(Value::to_string).collect();
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            lines.join("\n"),
            self.stderr
        )
    }
}

/// One `node runner/runner.mjs <config>` invocation with a clean, offline
/// environment: nothing of the caller's environment leaks in but `PATH`.
pub struct RunnerCommand {
    config: Value,
    env: Vec<(String, String)>,
    timeout: Duration,
    read_after: Duration,
    /// Where runner.mjs lives when it should find its config on its own.
    installed_at: Option<PathBuf>,
}

impl RunnerCommand {
    /// A run of `config` (an `agent_config.json` value) against the model at
    /// `model_url`, authenticated with `ANTHROPIC_API_KEY=test-key`.
    pub fn new(config: Value, model_url: &str) -> Self {
        let mut env: Vec<(String, String)> = OFFLINE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("ANTHROPIC_BASE_URL".into(), model_url.into()));
        env.push(("ANTHROPIC_API_KEY".into(), "test-key".into()));
        RunnerCommand {
            config,
            env,
            timeout: Duration::from_secs(120),
            read_after: Duration::ZERO,
            installed_at: None,
        }
    }

    /// Sets (or replaces) one environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes one environment variable.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// How long the run may take before the test fails (default 120 s; the
    /// scripted runs take a few seconds).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Leaves stdout unread for `delay` after the start, so the pipe fills
    /// up and the runner has to wait for its reader.
    pub fn read_after(mut self, delay: Duration) -> Self {
        self.read_after = delay;
        self
    }

    /// Runs `dir/runner.mjs` (a copy, with `dir/node_modules` linked to the
    /// real one) without arguments and its config in `dir/agent_config.json`:
    /// the layout of `/opt/agent-runner` in a sandbox.
    pub fn installed_at(mut self, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create the install dir");
        std::fs::copy(runner_dir().join("runner.mjs"), dir.join("runner.mjs"))
            .expect("copy runner.mjs");
        std::os::unix::fs::symlink(runner_dir().join("node_modules"), dir.join("node_modules"))
            .expect("link node_modules");
        self.installed_at = Some(dir.to_owned());
        self
    }

    /// Writes the config into `dirs` (or next to the installed runner), runs
    /// the runner and collects its output. Panics (failing the test) on a
    /// timeout or a non-JSON line.
    pub async fn run(self, dirs: &RunDirs) -> RunnerOutput {
        let config = serde_json::to_vec(&self.config).expect("serialize agent config");
        let path = match &self.installed_at {
            Some(dir) => dir.join("agent_config.json"),
            None => dirs.config_path(),
        };
        std::fs::write(path, config).expect("write agent_config.json");
        self.run_existing_config(dirs).await
    }

    /// Runs with whatever is (or is not) at `dirs.config_path()`, for tests
    /// of broken configs. The command's own config is ignored.
    pub async fn run_existing_config(self, dirs: &RunDirs) -> RunnerOutput {
        require_node_modules();
        let tmp = dirs.tmp();
        let mut command = Command::new("node");
        match &self.installed_at {
            Some(dir) => command.arg(dir.join("runner.mjs")),
            None => command
                .arg(runner_dir().join("runner.mjs"))
                .arg(dirs.config_path()),
        };
        command
            .current_dir(dirs.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dirs.home())
            .env("TMPDIR", &tmp)
            .env("CLAUDE_CODE_TMPDIR", &tmp)
            .env("XDG_RUNTIME_DIR", &tmp)
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().expect("spawn node (is node on PATH?)");
        let collect = async {
            tokio::time::sleep(self.read_after).await;
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(self.timeout, collect)
            .await
            .unwrap_or_else(|_| panic!("the runner did not finish within {:?}", self.timeout))
            .expect("wait for the runner");
        let stdout = String::from_utf8(output.stdout).expect("runner stdout is UTF-8");
        let lines = stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("runner printed a non-JSON line ({e}): {line:?}"))
            })
            .collect();
        RunnerOutput {
            status: output.status,
            lines,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}
