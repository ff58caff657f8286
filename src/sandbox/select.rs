//! Builds the provider a door asked for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::SandboxProvider;
use super::e2b::{E2bOptions, E2bProvider};
use super::local::{LocalOptions, LocalProvider};
use crate::env::EnvVars;
use crate::runner_install::{self, Install};
use crate::settings::{SandboxKind, Settings};

/// The runner's manifest and lock, embedded so an installed `ds` can set up
/// its own runner folder without the source tree.
const PACKAGE_JSON: &str = include_str!("../../runner/package.json");
const PACKAGE_LOCK: &str = include_str!("../../runner/package-lock.json");

/// The provider for `settings.sandbox`. For local sandboxes this finds the
/// runner's `node_modules` and, with [`Install::IfMissing`], installs them.
pub fn provider_for(
    settings: &Settings,
    install: Install,
) -> Result<Arc<dyn SandboxProvider>, String> {
    match settings.sandbox {
        SandboxKind::E2b => E2bProvider::new(E2bOptions::from_env(&settings.env))
            .map(|p| Arc::new(p) as Arc<dyn SandboxProvider>)
            .map_err(|e| e.to_string()),
        SandboxKind::Local => {
            let runner_dir = runner_dir(&settings.env)?;
            runner_install::ensure_installed(&runner_dir, install).map_err(|e| e.to_string())?;
            let bwrap = settings
                .env
                .get("SANDSTORM_BWRAP")
                .map_or_else(|| PathBuf::from("/usr/bin/bwrap"), PathBuf::from);
            LocalProvider::new(LocalOptions {
                runner_dir,
                work_root: None,
                bwrap,
            })
            .map(|p| Arc::new(p) as Arc<dyn SandboxProvider>)
            .map_err(|e| e.to_string())
        }
    }
}

/// Where the runner's `node_modules` live on this machine:
/// `SANDSTORM_RUNNER_DIR`, else `runner/` of the source tree this binary was
/// built from, else a folder in the user's cache that we fill with the
/// embedded manifest and lock (`npm ci` then installs into it).
pub fn runner_dir(env: &EnvVars) -> Result<PathBuf, String> {
    if let Some(dir) = env.get("SANDSTORM_RUNNER_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("runner");
    if source.join("package-lock.json").is_file() {
        return Ok(source);
    }
    let cache = env
        .get("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|h| Path::new(h).join(".cache")))
        .ok_or("neither SANDSTORM_RUNNER_DIR, XDG_CACHE_HOME nor HOME is set")?;
    let dir = cache
        .join("sandstorm")
        .join(format!("runner-{}", env!("CARGO_PKG_VERSION")));
    let write = |name: &str, content: &str| {
        std::fs::write(dir.join(name), content)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write("package.json", PACKAGE_JSON)?;
    write("package-lock.json", PACKAGE_LOCK)?;
    Ok(dir)
}
