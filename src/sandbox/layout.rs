//! Where things are inside every sandbox, whatever the provider: the one
//! place these paths are spelled out.
//!
//! Both providers present the same tree to the agent: E2B's template builds
//! it, and the local provider binds its folders to these paths.

/// The agent's home and working folder; uploads and output globs are
/// relative to it.
pub(crate) const HOME: &str = "/home/user";

/// Where the runner script and its `node_modules` live.
pub(crate) const RUNNER_DIR: &str = "/opt/agent-runner";

/// The runner script the run starts.
pub(crate) const RUNNER_SCRIPT: &str = "/opt/agent-runner/runner.mjs";

/// The runner's config, written next to it by the upload.
pub(crate) const AGENT_CONFIG: &str = "/opt/agent-runner/agent_config.json";

/// `rel`, a path relative to [`HOME`], as an absolute sandbox path.
pub(crate) fn home_path(rel: &str) -> String {
    format!("{HOME}/{rel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_files_are_inside_the_runner_folder() {
        assert!(RUNNER_SCRIPT.starts_with(&format!("{RUNNER_DIR}/")));
        assert!(AGENT_CONFIG.starts_with(&format!("{RUNNER_DIR}/")));
        assert_eq!(home_path("a/b.txt"), "/home/user/a/b.txt");
    }
}
