//! Makes sure the agent runner's `node_modules` exist before a local run.
//!
//! Local sandboxes bind `runner/node_modules` read-only into every sandbox,
//! so the Agent SDK must be installed on the host first: `npm ci` in
//! `runner/`, from the committed lock. A door either installs it on first use
//! (with npm's progress on stderr, so a person sees why the first run is
//! slow) or stops with the exact command to run.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sandbox::provider::Setup;

/// The npm package the runner imports.
pub(crate) const SDK_PACKAGE: &str = "@anthropic-ai/claude-agent-sdk";

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunnerInstallError {
    #[error(
        "the agent runner's dependencies are not installed in {dir}; install them with: npm ci --prefix {dir}"
    )]
    Missing { dir: String },
    #[error("`npm ci --prefix {dir}` failed ({reason}); run it by hand to see why")]
    NpmFailed { dir: String, reason: String },
}

/// Whether the SDK is installed under `runner_dir`.
pub(crate) fn is_installed(runner_dir: &Path) -> bool {
    sdk_dir(runner_dir).is_dir()
}

fn sdk_dir(runner_dir: &Path) -> PathBuf {
    runner_dir.join("node_modules").join(SDK_PACKAGE)
}

/// Checks for the SDK under `runner_dir` and, if allowed, installs it.
/// Blocking: call it at startup, or through `spawn_blocking`.
pub(crate) fn ensure_installed(runner_dir: &Path, setup: Setup) -> Result<(), RunnerInstallError> {
    if is_installed(runner_dir) {
        return Ok(());
    }
    let dir = runner_dir.display().to_string();
    if setup == Setup::CheckOnly {
        return Err(RunnerInstallError::Missing { dir });
    }
    // npm prints progress on stderr; its stdout goes to our stderr as well so
    // that a door streaming results on stdout stays clean.
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let status = Command::new("npm")
        .arg("ci")
        .arg("--prefix")
        .arg(runner_dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| RunnerInstallError::NpmFailed {
            dir: dir.clone(),
            reason: format!("could not run npm: {e}"),
        })?;
    if !status.success() {
        return Err(RunnerInstallError::NpmFailed {
            dir,
            reason: status.to_string(),
        });
    }
    if !is_installed(runner_dir) {
        return Err(RunnerInstallError::NpmFailed {
            dir,
            reason: format!("{SDK_PACKAGE} is still missing afterwards"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_install_names_the_exact_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = ensure_installed(dir.path(), Setup::CheckOnly).expect_err("missing");
        let expected = format!("npm ci --prefix {}", dir.path().display());
        assert!(err.to_string().contains(&expected), "{err}");
    }

    #[test]
    fn an_installed_sdk_is_accepted_without_running_npm() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(sdk_dir(dir.path())).expect("sdk dir");
        ensure_installed(dir.path(), Setup::InstallIfMissing).expect("already installed");
    }
}
