//! Starting a process inside a running sandbox.
//!
//! The process joins the namespaces of the sandbox's pid 1 with util-linux
//! `nsenter` (user, mount, network, pid, ipc, uts, cgroup), becomes the
//! sandbox user, and runs through the shim, which applies the limits and
//! the seccomp filter before it execs the program. Joining instead of
//! running bwrap again makes the sandbox one machine: the new process sees
//! the same files, loopback and process table as the others.

use std::collections::BTreeMap;
use std::time::Duration;

use super::bwrap::{BRIDGE_PORT, CLAUDE_CODE, SANDBOX_UID};
use super::shim::{SHIM_COMMAND, SHIM_PATH, format_limits};
use super::{NSENTER, SANDBOX_PATH, fs};
use crate::sandbox::Limits;

/// How long a process's output may keep flowing after it exits. Something
/// it started in the background may hold its stdout open for good; E2B's
/// envd likewise reports the end when the process itself exits.
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// The sandbox's egress proxy and model endpoint, as seen inside.
pub(crate) fn endpoint() -> String {
    format!("http://127.0.0.1:{BRIDGE_PORT}")
}

/// One process to start.
#[derive(Debug)]
pub(crate) struct Join<'a> {
    /// The host pid of the sandbox's pid 1.
    pub(crate) init_pid: u32,
    pub(crate) limits: &'a Limits,
    pub(crate) cwd: &'a str,
    pub(crate) cmd: &'a str,
    pub(crate) args: &'a [String],
    /// The process's own variables; they win over the defaults.
    pub(crate) envs: &'a BTreeMap<String, String>,
    /// Whether to point the runner at the execute-only Claude Code binary.
    pub(crate) claude_code: bool,
}

/// How the joining process becomes the sandbox user. Root (not mapped
/// inside) must switch to it; an ordinary `ds` already is it, and may not
/// call `setgroups` in the sandbox's user namespace, so it keeps its
/// credentials. Either way the capabilities the join brought go at `exec`,
/// as the user is not root inside.
fn identity_flags(uid: &str) -> Vec<&str> {
    if rustix::process::geteuid().is_root() {
        vec!["--setuid", uid, "--setgid", uid]
    } else {
        vec!["--preserve-credentials"]
    }
}

/// The host command that starts `join`'s process in its sandbox.
pub(crate) fn command(join: &Join<'_>) -> tokio::process::Command {
    let proxy = endpoint();
    let uid = SANDBOX_UID.to_string();
    let mut command = tokio::process::Command::new(NSENTER);
    command
        .arg(format!("--target={}", join.init_pid))
        .args([
            "--user", "--mount", "--net", "--pid", "--ipc", "--uts", "--cgroup",
        ])
        .args(identity_flags(&uid))
        .arg("--")
        .args([SHIM_PATH, SHIM_COMMAND, "exec"])
        .arg(format_limits(join.limits))
        .arg(join.cwd)
        .arg("--")
        .arg(join.cmd)
        .args(join.args)
        // Only the sandbox's own variables go in, never the host's.
        .env_clear()
        .env("HOME", fs::HOME_MOUNT)
        .env("USER", "user")
        .env("PATH", SANDBOX_PATH)
        // The Agent SDK allows bypassPermissions only when told it is in a
        // sandbox.
        .env("IS_SANDBOX", "1")
        // The sandbox's only way out is the bridge to the egress proxy.
        .env("HTTP_PROXY", &proxy)
        .env("HTTPS_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env("https_proxy", &proxy)
        .env("NO_PROXY", "127.0.0.1,localhost,::1")
        .env("no_proxy", "127.0.0.1,localhost,::1");
    if join.claude_code {
        command.env("SANDSTORM_CLAUDE_CODE", CLAUDE_CODE);
    }
    command.envs(join.envs);
    command
}
