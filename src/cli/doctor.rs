//! `ds doctor [--deep]`: checks what a run needs before one is tried.
//!
//! Each check prints one line: `ok`, `warn` or `fail`, what was checked,
//! and for anything not ok the fix in one sentence. It reads the settings
//! the way every other `ds` command does (the environment, then `.env` in
//! the working folder) and only looks: it installs nothing, creates no
//! folder and starts no sandbox. `--deep` adds one request to the E2B API.
//! Key values are never printed, not even in part: only their names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Fatal, exit};
use crate::config::{FILE_NAME, SandstormConfig};
use crate::doors::PROVIDERS;
use crate::env::EnvVars;
use crate::keys::{
    self, ANTHROPIC_KEY_VARIABLE, KeyEnv, OPENROUTER_KEY_VARIABLE, PROVIDER_TOGGLES,
};
use crate::request::RequestKeys;
use crate::sandbox::provider::{ProviderSettings, Setup};
use crate::sandbox::{SandboxError, SandboxProvider, e2b, local};
use crate::settings::{Profile, SANDBOX_VARIABLE, SandboxChoice, Settings};

/// The oldest Node.js the runner supports (runner/package.json `engines`).
const NODE_MAJOR: u32 = 20;

/// How long `--deep` waits for E2B: a healthy API answers a list in well
/// under a second, and a person is waiting.
const E2B_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
struct Check {
    status: Status,
    what: &'static str,
    detail: String,
    fix: Option<String>,
}

impl Check {
    fn ok(what: &'static str, detail: impl Into<String>) -> Self {
        Check {
            status: Status::Ok,
            what,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            status: Status::Warn,
            what,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            status: Status::Fail,
            what,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A problem of the local sandbox is a failure when runs would use it,
    /// and only a warning when they go to E2B.
    fn local(
        local_used: bool,
        what: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        if local_used {
            Check::fail(what, detail, fix)
        } else {
            let fix = format!("{} (needed only for local sandboxes)", fix.into());
            Check::warn(what, detail, fix)
        }
    }

    fn line(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        };
        let mut line = format!("{status:<4}  {}: {}", self.what, self.detail);
        if let Some(fix) = &self.fix {
            line.push_str(&format!(" -- fix: {fix}"));
        }
        line
    }
}

/// `ds doctor [--deep]`: prints the report; 1 when a check failed.
pub(super) async fn doctor(deep: bool) -> Result<u8, Fatal> {
    let cwd =
        std::env::current_dir().map_err(|e| Fatal::usage(format!("no working directory: {e}")))?;
    let process_env: Vec<(String, String)> = std::env::vars().collect();
    let mut checks = Vec::new();
    let mut env = EnvVars::from_pairs(process_env.iter().cloned());
    let dotenv = cwd.join(".env");
    match env.fill_from_dotenv(&dotenv) {
        Ok(()) if dotenv.exists() => {
            checks.push(Check::ok(".env", "read (the environment wins over it)"))
        }
        Ok(()) => checks.push(Check::ok(
            ".env",
            "none here; settings come from the environment",
        )),
        Err(e) => checks.push(Check::fail(
            ".env",
            e.to_string(),
            "write each line of .env as NAME=value",
        )),
    }
    let from_env = |name: &str| process_env.iter().any(|(k, v)| k == name && !v.is_empty());
    let origin = |name: &str| {
        if from_env(name) {
            "in the environment"
        } else {
            "in .env"
        }
    };

    let executable = std::env::current_exe().ok();
    let settings = Settings::build(
        &env,
        &cwd,
        Profile::Server,
        SandboxChoice {
            catalog: PROVIDERS,
            requested: None,
            setup: Setup::CheckOnly,
            executable: executable.as_deref(),
        },
    );
    let provider = match &settings {
        Ok(settings) => Some(settings.sandbox.provider.name),
        Err(_) => None,
    };
    let local_used = provider == Some(local::PROVIDER.name);

    checks.push(model_key(&env, &cwd, &origin).await);
    checks.push(e2b_key(&env, provider, &origin));
    checks.push(match &settings {
        Ok(settings) => sandbox_line(&env, settings),
        Err(e) => Check::fail("settings", e.clone(), "correct the variable named above"),
    });
    checks.push(config(&env, &cwd));
    checks.push(node(local_used));
    let local_settings = ProviderSettings::resolve(
        &local::PROVIDER,
        |name| env.get(name),
        &cwd,
        Setup::CheckOnly,
    )
    .with_executable(executable.as_deref());
    checks.push(bubblewrap(&local_settings, local_used));
    checks.push(runner(&local_settings, local_used));
    if deep {
        checks.push(e2b_reachable(&env, &cwd).await);
    }

    for check in &checks {
        println!("{}", check.line());
    }
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    println!(
        "\n{failed} failed, {warned} warning{}, {} ok",
        if warned == 1 { "" } else { "s" },
        count(Status::Ok)
    );
    Ok(if failed > 0 {
        exit::RUN_FAILED
    } else {
        exit::OK
    })
}

/// The model's credentials. Whether they do is the run's own key
/// resolution's call (`keys::resolve`, with no request keys), so the two
/// cannot drift; this only says where they come from, or what to set.
async fn model_key(env: &EnvVars, cwd: &Path, origin: &dyn Fn(&str) -> &'static str) -> Check {
    const WHAT: &str = "model key";
    let keys = KeyEnv::resolve(|name| env.get(name), &[], cwd);
    if let Err(e) = keys::resolve(&RequestKeys::default(), &keys, None, None, false).await {
        let fix = if env.get(OPENROUTER_KEY_VARIABLE).is_some() {
            "set ANTHROPIC_BASE_URL=https://openrouter.ai/api in the environment or .env".to_owned()
        } else if env.flag("CLAUDE_CODE_USE_VERTEX") {
            "set GOOGLE_APPLICATION_CREDENTIALS to the path of your GCP service account JSON key"
                .to_owned()
        } else {
            format!(
                "set {ANTHROPIC_KEY_VARIABLE} in the environment or in .env here (see .env.example)"
            )
        };
        return Check::fail(WHAT, e.to_string(), fix);
    }
    let detail = if env.get(ANTHROPIC_KEY_VARIABLE).is_some() {
        format!(
            "{ANTHROPIC_KEY_VARIABLE} is set {}",
            origin(ANTHROPIC_KEY_VARIABLE)
        )
    } else if let Some(toggle) = PROVIDER_TOGGLES.iter().find(|t| env.flag(t)) {
        format!("{toggle} is on {}", origin(toggle))
    } else if env.get(OPENROUTER_KEY_VARIABLE).is_some() {
        format!("{OPENROUTER_KEY_VARIABLE} is set, with ANTHROPIC_BASE_URL")
    } else {
        "ANTHROPIC_BASE_URL is set (a custom endpoint)".to_owned()
    };
    Check::ok(WHAT, detail)
}

fn e2b_key(env: &EnvVars, provider: Option<&str>, origin: &dyn Fn(&str) -> &'static str) -> Check {
    const WHAT: &str = "E2B key";
    let variable = e2b::CREDENTIAL.variable;
    match (
        env.get(variable).is_some(),
        provider == Some(e2b::PROVIDER.name),
    ) {
        (true, _) => Check::ok(WHAT, format!("{variable} is set {}", origin(variable))),
        (false, true) => Check::fail(
            WHAT,
            format!("{variable} is not set, and {SANDBOX_VARIABLE} asks for E2B"),
            format!(
                "set {variable} (from e2b.dev/dashboard), or unset {SANDBOX_VARIABLE} to run locally"
            ),
        ),
        (false, false) => Check::ok(
            WHAT,
            format!("{variable} is not set (optional): runs use a local bubblewrap sandbox"),
        ),
    }
}

fn sandbox_line(env: &EnvVars, settings: &Settings) -> Check {
    let name = settings.sandbox.provider.name;
    let why = match env.get(SANDBOX_VARIABLE) {
        Some(_) => format!("{SANDBOX_VARIABLE}={name}"),
        None if name == e2b::PROVIDER.name => format!("{} is set", e2b::CREDENTIAL.variable),
        None => format!("no {}", e2b::CREDENTIAL.variable),
    };
    Check::ok(
        "sandbox",
        format!(
            "{name}, {} ({why}; --sandbox changes it)",
            settings.sandbox.provider.summary
        ),
    )
}

/// sandstorm.json, loaded as every door loads it; its error verbatim.
fn config(env: &EnvVars, cwd: &Path) -> Check {
    const WHAT: &str = FILE_NAME;
    let explicit = env.get("SANDSTORM_CONFIG").map(PathBuf::from);
    let path = explicit.clone().unwrap_or_else(|| cwd.join(FILE_NAME));
    if explicit.is_none() && !path.exists() {
        return Check::ok(
            WHAT,
            "none here; runs use the defaults (ds init writes one)",
        );
    }
    match SandstormConfig::load(explicit.as_deref(), cwd) {
        Ok(config) => {
            let servers = config.mcp_servers.as_ref().map_or(0, |s| s.len());
            let agents = config.agents.as_ref().map_or(0, |a| a.len());
            Check::ok(
                WHAT,
                format!(
                    "{} loads ({servers} MCP server{}, {agents} subagent{})",
                    path.display(),
                    if servers == 1 { "" } else { "s" },
                    if agents == 1 { "" } else { "s" },
                ),
            )
        }
        Err(e) => Check::fail(
            WHAT,
            e.to_string(),
            "correct the field named in the error, or remove the file",
        ),
    }
}

/// Node.js as a local sandbox finds it: on the sandbox's own PATH, which
/// holds only system folders (a node under the home folder, from nvm say,
/// is not there).
fn node(local_used: bool) -> Check {
    const WHAT: &str = "node";
    let in_sandbox = local::SANDBOX_PATH
        .split(':')
        .map(|dir| Path::new(dir).join("node"))
        .find(|path| path.is_file());
    let Some(node) = in_sandbox else {
        let detail = match on_path("node") {
            Some(elsewhere) => format!(
                "{} is outside the folders a local sandbox sees ({})",
                elsewhere.display(),
                local::SANDBOX_PATH
            ),
            None => "not found".to_owned(),
        };
        return Check::local(
            local_used,
            WHAT,
            detail,
            format!("install Node.js {NODE_MAJOR} or newer system-wide, e.g. in /usr/local/bin"),
        );
    };
    let version = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let Some(version) = version else {
        return Check::local(
            local_used,
            WHAT,
            format!("{} --version failed", node.display()),
            format!("reinstall Node.js {NODE_MAJOR} or newer"),
        );
    };
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(major) if major >= NODE_MAJOR => {
            Check::ok(WHAT, format!("{version} at {}", node.display()))
        }
        _ => Check::local(
            local_used,
            WHAT,
            format!("{version} at {} is older than {NODE_MAJOR}", node.display()),
            format!("install Node.js {NODE_MAJOR} or newer"),
        ),
    }
}

/// bubblewrap, and the util-linux tools the local provider starts it with.
fn bubblewrap(settings: &ProviderSettings, local_used: bool) -> Check {
    const WHAT: &str = "bubblewrap";
    let bwrap = local::bwrap_path(settings);
    if !bwrap.is_file() {
        return Check::local(
            local_used,
            WHAT,
            format!("{} not found", bwrap.display()),
            "install it with `apt-get install bubblewrap` (or set SANDSTORM_BWRAP to its path)",
        );
    }
    let missing: Vec<&str> = [local::SETPRIV, local::NSENTER]
        .into_iter()
        .filter(|tool| !Path::new(tool).is_file())
        .collect();
    if !missing.is_empty() {
        return Check::local(
            local_used,
            WHAT,
            format!("{} not found", missing.join(" and ")),
            "install them with `apt-get install util-linux`",
        );
    }
    Check::ok(
        WHAT,
        format!(
            "{} (with {} and {})",
            bwrap.display(),
            local::SETPRIV,
            local::NSENTER
        ),
    )
}

/// The runner's `node_modules`, which local sandboxes bind read-only.
fn runner(settings: &ProviderSettings, local_used: bool) -> Check {
    const WHAT: &str = "agent runner";
    let dir = match local::runner_dir(settings) {
        Ok(dir) => dir,
        Err(e) => {
            return Check::local(
                local_used,
                WHAT,
                e,
                "set HOME, or SANDSTORM_RUNNER_DIR to a folder for the runner",
            );
        }
    };
    let shown = dir.display();
    if !local::is_installed(&dir) {
        let install = format!("npm ci --prefix {shown}");
        return if on_path("npm").is_some() {
            // The first local run installs it; only the wait is a surprise.
            Check::warn(
                WHAT,
                format!("{} is not installed in {shown}", local::SDK_PACKAGE),
                format!("nothing to do: the first local run installs it, or run `{install}` now"),
            )
        } else {
            Check::local(
                local_used,
                WHAT,
                format!(
                    "{} is not installed in {shown}, and npm is not on PATH",
                    local::SDK_PACKAGE
                ),
                "install Node.js with npm, then the first local run installs the runner",
            )
        };
    }
    let manifest = dir
        .join("node_modules")
        .join(local::SDK_PACKAGE)
        .join("package.json");
    let installed = std::fs::read(&manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    match (installed, local::pinned_sdk_version()) {
        (Some(have), Some(want)) if have != want => Check::local(
            local_used,
            WHAT,
            format!(
                "{} {have} in {shown}, but this ds pins {want}",
                local::SDK_PACKAGE
            ),
            format!("run `npm ci --prefix {shown}`"),
        ),
        (Some(have), _) => Check::ok(WHAT, format!("{} {have} in {shown}", local::SDK_PACKAGE)),
        (None, _) => Check::ok(WHAT, format!("{} in {shown}", local::SDK_PACKAGE)),
    }
}

/// `--deep`: lists sandboxes through the E2B provider itself, so the same
/// URL settings (E2B_API_URL, E2B_DOMAIN, E2B_DEBUG) and the same request
/// as a run's are tried.
async fn e2b_reachable(env: &EnvVars, cwd: &Path) -> Check {
    const WHAT: &str = "E2B API";
    let settings =
        ProviderSettings::resolve(&e2b::PROVIDER, |name| env.get(name), cwd, Setup::CheckOnly);
    let mut options = match e2b::E2bOptions::from_settings(&settings) {
        Ok(options) => options,
        Err(e) => return Check::fail(WHAT, e, "correct the variable named above"),
    };
    let url = options.api_url.clone();
    if options.api_key.is_none() {
        return Check::ok(
            WHAT,
            format!(
                "not tried: no {} (runs use a local sandbox)",
                e2b::CREDENTIAL.variable
            ),
        );
    }
    // One quick attempt: a doctor reports, it does not ride out an outage.
    options.retry.attempts = 1;
    options.connect_timeout = E2B_PROBE_TIMEOUT;
    options.request_timeout = E2B_PROBE_TIMEOUT;
    let provider = match e2b::E2bProvider::new(options) {
        Ok(provider) => provider,
        Err(e) => return Check::fail(WHAT, e.to_string(), "report this as a bug"),
    };
    match provider.list(&Default::default(), None).await {
        Ok(sandboxes) => Check::ok(
            WHAT,
            format!(
                "{url} answered and accepted the key ({} sandbox{} running)",
                sandboxes.len(),
                if sandboxes.len() == 1 { "" } else { "es" }
            ),
        ),
        Err(SandboxError::Unauthorized { .. }) => Check::fail(
            WHAT,
            format!("{url} answered but rejected {}", e2b::CREDENTIAL.variable),
            format!(
                "copy a current key from e2b.dev/dashboard into {}",
                e2b::CREDENTIAL.variable
            ),
        ),
        Err(e) => Check::fail(
            WHAT,
            format!("{url}: {e}"),
            "check your network, or E2B_API_URL / E2B_DOMAIN if you set them",
        ),
    }
}

/// The first `name` on the PATH of this process.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvVars {
        EnvVars::from_pairs(pairs.iter().copied())
    }

    fn status_of(check: &Check) -> Status {
        check.status
    }

    #[tokio::test]
    async fn model_key_follows_the_rules_a_run_resolves_keys_by() {
        let origin = |_: &str| "in the environment";
        let cases: &[(&[(&str, &str)], Status)] = &[
            (&[], Status::Fail),
            (&[("ANTHROPIC_API_KEY", "k")], Status::Ok),
            (&[("OPENROUTER_API_KEY", "k")], Status::Fail),
            (
                &[("OPENROUTER_API_KEY", "k"), ("ANTHROPIC_BASE_URL", "u")],
                Status::Ok,
            ),
            (&[("CLAUDE_CODE_USE_BEDROCK", "1")], Status::Ok),
            (&[("CLAUDE_CODE_USE_BEDROCK", "0")], Status::Fail),
            (&[("CLAUDE_CODE_USE_VERTEX", "1")], Status::Fail),
            (&[("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")], Status::Ok),
        ];
        for (pairs, want) in cases {
            let check = model_key(&env(pairs), Path::new("."), &origin).await;
            assert_eq!(status_of(&check), *want, "{pairs:?}: {}", check.line());
            assert_eq!(check.fix.is_some(), *want != Status::Ok, "{}", check.line());
        }
    }

    #[test]
    fn a_missing_e2b_key_fails_only_when_e2b_was_asked_for() {
        let origin = |_: &str| "in .env";
        assert_eq!(
            e2b_key(&env(&[]), Some("local"), &origin).status,
            Status::Ok
        );
        assert_eq!(
            e2b_key(&env(&[]), Some("e2b"), &origin).status,
            Status::Fail
        );
    }

    #[test]
    fn a_line_holds_status_what_detail_and_fix() {
        let line = Check::fail("node", "not found", "install it").line();
        assert_eq!(line, "fail  node: not found -- fix: install it");
        assert_eq!(Check::ok("x", "fine").line(), "ok    x: fine");
    }
}
