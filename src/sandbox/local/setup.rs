//! The local provider's declaration, and what it needs on this machine
//! before its first sandbox: bubblewrap, and a runner folder whose
//! `node_modules` hold the pinned Agent SDK.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::install;
use super::{LocalOptions, LocalProvider};
use crate::sandbox::SandboxProvider;
use crate::sandbox::provider::{ProviderDeclaration, ProviderSettings};

/// The runner's manifest and lock, embedded so an installed `ds` can set up
/// its own runner folder without the source tree.
const PACKAGE_JSON: &str = include_str!("../../../runner/package.json");
const PACKAGE_LOCK: &str = include_str!("../../../runner/package-lock.json");

/// The bubblewrap binary unless `SANDSTORM_BWRAP` names another.
const DEFAULT_BWRAP: &str = "/usr/bin/bwrap";

/// What the product knows of local sandboxes.
pub(crate) const PROVIDER: ProviderDeclaration = ProviderDeclaration {
    name: "local",
    summary: "a bubblewrap sandbox on this machine",
    credential: None,
    variables: &[
        "SANDSTORM_RUNNER_DIR",
        "SANDSTORM_BWRAP",
        "SANDSTORM_SANDBOX_UIDS",
        super::egress::OPEN_VARIABLE,
        "XDG_CACHE_HOME",
        "HOME",
    ],
    serverless: false,
    // The host side serves every sandbox's model endpoint.
    meters_model: |_| true,
    // Its model endpoint signs for Bedrock and trades the Vertex service
    // account for tokens on the host (egress::model::clouds).
    keeps_cloud_credentials: |_| true,
    build: build_provider,
};

fn build_provider(settings: &ProviderSettings) -> Result<Arc<dyn SandboxProvider>, String> {
    let checkout = settings.executable().and_then(checkout_runner_dir);
    let runner_dir = prepare_runner_dir(settings, checkout)?;
    install::ensure_installed(&runner_dir, settings.setup()).map_err(|e| e.to_string())?;
    let bwrap = bwrap_path(settings);
    // The door's own executable runs the in-sandbox shim: `ds` has it.
    let shim = settings
        .executable()
        .ok_or("local sandboxes need the path of the running `ds` binary for their shim")?
        .to_owned();
    let mut options = LocalOptions::new(runner_dir, shim);
    options.bwrap = bwrap;
    options.uids = settings.get("SANDSTORM_SANDBOX_UIDS").map(str::to_owned);
    options.egress_open = settings
        .get(super::egress::OPEN_VARIABLE)
        .map(str::to_owned);
    LocalProvider::new(options)
        .map(|p| Arc::new(p) as Arc<dyn SandboxProvider>)
        .map_err(|e| e.to_string())
}

/// The `runner/` folder of the checkout `exe` was built in (`cargo run`, or
/// tests running `target/debug/ds`), recognised by a lock identical to the
/// one this binary embeds. Found at run time from the executable's path,
/// so nothing about the build machine is baked into the binary.
fn checkout_runner_dir(exe: &Path) -> Option<PathBuf> {
    exe.ancestors().skip(1).take(4).find_map(|dir| {
        let runner = dir.join("runner");
        let lock = std::fs::read_to_string(runner.join("package-lock.json")).ok()?;
        (lock == PACKAGE_LOCK).then_some(runner)
    })
}

/// The bubblewrap binary local sandboxes start.
pub(crate) fn bwrap_path(settings: &ProviderSettings) -> PathBuf {
    settings
        .get("SANDSTORM_BWRAP")
        .map_or_else(|| PathBuf::from(DEFAULT_BWRAP), PathBuf::from)
}

/// The runner folder a local sandbox would use, found as
/// [`prepare_runner_dir`] finds it but without creating or writing
/// anything (for `ds doctor`, which only looks).
pub(crate) fn runner_dir(settings: &ProviderSettings) -> Result<PathBuf, String> {
    let checkout = settings.executable().and_then(checkout_runner_dir);
    locate_runner_dir(settings, checkout).map(|(dir, _)| dir)
}

/// The `@anthropic-ai/claude-agent-sdk` version the embedded manifest pins.
pub(crate) fn pinned_sdk_version() -> Option<String> {
    let manifest: serde_json::Value = serde_json::from_str(PACKAGE_JSON).ok()?;
    manifest["dependencies"][install::SDK_PACKAGE]
        .as_str()
        .map(str::to_owned)
}

/// Where the runner folder is, and whether it is the cache folder this
/// binary fills itself.
fn locate_runner_dir(
    settings: &ProviderSettings,
    checkout: Option<PathBuf>,
) -> Result<(PathBuf, bool), String> {
    if let Some(dir) = settings.get("SANDSTORM_RUNNER_DIR") {
        return Ok((settings.cwd().join(dir), false));
    }
    if let Some(dir) = checkout {
        return Ok((dir, false));
    }
    let cache = settings
        .get("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| settings.get("HOME").map(|h| Path::new(h).join(".cache")))
        .ok_or("neither SANDSTORM_RUNNER_DIR, XDG_CACHE_HOME nor HOME is set")?;
    let dir = cache
        .join("sandstorm")
        .join(format!("runner-{}", env!("CARGO_PKG_VERSION")));
    Ok((dir, true))
}

/// Finds the runner folder, creating it when needed: `SANDSTORM_RUNNER_DIR`;
/// else the checkout's `runner/` (see [`checkout_runner_dir`]); else a
/// folder in the user's cache that this fills with the embedded manifest
/// and lock, for `npm ci` to install into.
fn prepare_runner_dir(
    settings: &ProviderSettings,
    checkout: Option<PathBuf>,
) -> Result<PathBuf, String> {
    let (dir, cache) = locate_runner_dir(settings, checkout)?;
    if !cache {
        return Ok(dir);
    }
    let write = |name: &str, content: &str| {
        std::fs::write(dir.join(name), content)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write("package.json", PACKAGE_JSON)?;
    write("package-lock.json", PACKAGE_LOCK)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::provider::Setup;

    fn settings(pairs: &[(&str, &str)], cwd: &Path) -> ProviderSettings {
        ProviderSettings::resolve(
            &PROVIDER,
            |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
            cwd,
            Setup::CheckOnly,
        )
    }

    #[test]
    fn the_runner_dir_variable_wins_and_resolves_from_the_working_folder() {
        let cwd = tempfile::tempdir().expect("tempdir");
        let s = settings(&[("SANDSTORM_RUNNER_DIR", "r")], cwd.path());
        let dir = prepare_runner_dir(&s, Some("/checkout/runner".into())).expect("dir");
        assert_eq!(dir, cwd.path().join("r"));
    }

    #[test]
    fn the_checkout_is_found_from_the_executable_by_its_lock() {
        let repo = tempfile::tempdir().expect("tempdir");
        let exe = repo.path().join("target/debug/ds");
        std::fs::create_dir_all(repo.path().join("runner")).expect("runner");
        assert_eq!(checkout_runner_dir(&exe), None, "no lock yet");
        std::fs::write(repo.path().join("runner/package-lock.json"), "{}").expect("lock");
        assert_eq!(checkout_runner_dir(&exe), None, "a different lock");
        std::fs::write(repo.path().join("runner/package-lock.json"), PACKAGE_LOCK).expect("lock");
        assert_eq!(checkout_runner_dir(&exe), Some(repo.path().join("runner")));
    }

    #[test]
    fn without_a_checkout_the_cache_gets_the_embedded_manifest_and_lock() {
        let cache = tempfile::tempdir().expect("tempdir");
        let cache_dir = cache.path().display().to_string();
        let s = settings(&[("XDG_CACHE_HOME", &cache_dir)], Path::new("/"));
        let dir = prepare_runner_dir(&s, None).expect("dir");
        assert!(dir.starts_with(cache.path()));
        let lock = std::fs::read_to_string(dir.join("package-lock.json")).expect("lock");
        assert_eq!(lock, PACKAGE_LOCK);
    }
}
