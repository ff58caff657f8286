//! Paths in the repository and the tools from PyPI that tests run.

use std::path::{Path, PathBuf};

/// The pinned PyPI packages the tests run; scripts/setup installs them
/// (tests/python/requirements.txt).
pub const CARGO_LAMBDA_PIP: &str = "cargo-lambda==1.9.2";
pub const MOTO_PIP: &str = "moto[server]==5.2.5";
pub const CFN_LINT_PIP: &str = "cfn-lint==1.58.0";

/// The repository's root.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A command-line tool from PyPI: in the repository's `.venv` (where
/// scripts/setup installs the pinned versions), else on PATH. Missing, the
/// test fails with the command that installs it.
pub fn tool(name: &str, pip_package: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>());
    let venv = manifest_dir().join(".venv/bin");
    std::iter::once(venv)
        .chain(on_path)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed; install it with: scripts/setup \
                 (or: python3 -m venv .venv && .venv/bin/pip install '{pip_package}'; \
                 tests/python/requirements.txt pins it)"
            )
        })
}
