//! A process that waits for its files: how a provider whose upload and
//! start are two remote calls sends both at once, saving a round trip
//! before the agent runs.
//!
//! The upload's last file is a small, empty marker, unique to the run
//! ([`marker`]); the process is started behind a `/bin/sh` gate
//! ([`gated`]) that waits until the marker exists, then `exec`s the real
//! command. The marker's existence means every earlier file is complete
//! only because the provider writes one request's files one after another
//! in order, each closed before the next is opened (envd does: see the E2B
//! provider's `launch`).
//!
//! Because of `exec`, the gated process is the real one in every way its
//! starter can see: the same pid (a model proxy that watches the runner's
//! pid watches the right one), the same stdin, stdout and stderr, the same
//! exit code or signal, the same working folder and environment (the gate
//! removes its own variable before the `exec`). The command and its
//! arguments go to the gate as `"$@"`, never into the script's text, so no
//! shell parses them.
//!
//! The wait is bounded: a marker that never lands (an upload that failed,
//! and a sandbox whose destroy failed too) ends the gate with
//! [`GAVE_UP_CODE`] and a line on stderr naming the missing file, rather
//! than a process that waits for ever.

use std::time::Duration;

use bytes::Bytes;

use super::{ProcessSpec, SandboxFile};

/// The variable the gate reads the marker's path from. An emulator's
/// synthetic runner, which runs no shell, reads it too
/// ([`marker_of`]).
pub const MARKER_VARIABLE: &str = "SANDSTORM_UPLOAD_MARKER";

/// How often the gate looks for the marker during its first
/// [`FAST_FOR`]: the marker normally lands within one round trip, and
/// each look costs a `sleep` process, so looks are frequent only then.
pub const POLL: Duration = Duration::from_millis(2);
/// How long the gate looks every [`POLL`].
pub const FAST_FOR: Duration = Duration::from_secs(1);
/// How often it looks after that.
pub const SLOW_POLL: Duration = Duration::from_millis(50);

/// The gate's exit code when the marker never landed.
pub const GAVE_UP_CODE: i32 = 125;

/// Where markers are written: outside the user's home, so no `outputs`
/// glob sends one back, and beside the detached run's log.
const MARKER_DIR: &str = "/tmp/.sandstorm";

/// A fresh marker: the upload's last file, empty, at a path no other run
/// uses.
pub fn marker() -> SandboxFile {
    SandboxFile {
        path: format!("{MARKER_DIR}/uploaded-{}", uuid::Uuid::new_v4().simple()),
        content: Bytes::new(),
    }
}

/// `process` behind the gate: it starts once `marker` exists, or gives up
/// after at least `bound`.
pub fn gated(process: ProcessSpec, marker: &str, bound: Duration) -> ProcessSpec {
    let ProcessSpec {
        cmd,
        args,
        mut envs,
        ..
    } = process.clone();
    envs.insert(MARKER_VARIABLE.to_owned(), marker.to_owned());
    let mut gate_args = vec!["-c".to_owned(), script(bound), "sh".to_owned(), cmd];
    gate_args.extend(args);
    ProcessSpec {
        cmd: "sh".to_owned(),
        args: gate_args,
        envs,
        ..process
    }
}

/// The marker a gated process waits for, read from its environment.
pub fn marker_of(envs: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    envs.get(MARKER_VARIABLE).map(String::as_str)
}

/// The gate. A `sleep` that cannot take fractions (a minimal shell's)
/// falls back to whole seconds, so the bound still holds in time.
fn script(bound: Duration) -> String {
    let fast = looks(FAST_FOR, POLL);
    let limit = fast + looks(bound.saturating_sub(FAST_FOR), SLOW_POLL);
    format!(
        "m=${MARKER_VARIABLE}\n\
         unset {MARKER_VARIABLE}\n\
         n=0\n\
         while [ ! -e \"$m\" ]; do\n\
         \x20 n=$((n+1))\n\
         \x20 if [ \"$n\" -gt {limit} ]; then\n\
         \x20   echo \"sandstorm: the upload's last file $m did not land within {secs} s, so the process was not started\" >&2\n\
         \x20   exit {GAVE_UP_CODE}\n\
         \x20 fi\n\
         \x20 if [ \"$n\" -le {fast} ]; then sleep {poll} 2>/dev/null || sleep 1; else sleep {slow} 2>/dev/null || sleep 1; fi\n\
         done\n\
         exec \"$@\"\n",
        secs = bound.as_secs().max(1),
        poll = seconds(POLL),
        slow = seconds(SLOW_POLL),
    )
}

/// How many looks every `each` fit in `span` (at least one).
fn looks(span: Duration, each: Duration) -> u128 {
    (span.as_millis() / each.as_millis().max(1)).max(1)
}

/// `d` as `sleep` takes it: seconds with three decimals.
fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::process::Stdio;

    use tokio::io::AsyncReadExt;
    use tokio::process::Command;

    use super::*;

    /// Runs `spec` as the sandbox would (argv, its env only), in `dir`.
    fn command(spec: &ProcessSpec, dir: &std::path::Path) -> Command {
        let mut command = Command::new(&spec.cmd);
        command
            .args(&spec.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&spec.envs)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    fn spec(cmd: &str, args: &[&str]) -> ProcessSpec {
        ProcessSpec {
            cmd: cmd.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            envs: BTreeMap::from([("KEPT".to_owned(), "yes".to_owned())]),
            cwd: "/home/user".to_owned(),
            timeout: Some(Duration::from_secs(9)),
            tag: Some("t".to_owned()),
            ..ProcessSpec::default()
        }
    }

    #[test]
    fn the_gate_keeps_what_envd_is_told_beside_the_command() {
        let inner = spec("node", &["/opt/agent-runner/runner.mjs"]);
        let gated = gated(inner.clone(), "/tmp/.sandstorm/uploaded-x", FAST_FOR);
        assert_eq!(gated.cmd, "sh");
        assert_eq!(
            &gated.args[2..],
            ["sh", "node", "/opt/agent-runner/runner.mjs"]
        );
        assert_eq!(
            (gated.cwd, gated.timeout, gated.tag),
            (inner.cwd, inner.timeout, inner.tag)
        );
        assert_eq!(marker_of(&gated.envs), Some("/tmp/.sandstorm/uploaded-x"));
        assert_eq!(gated.envs.get("KEPT").map(String::as_str), Some("yes"));
    }

    #[test]
    fn markers_are_outside_home_and_unique() {
        let (a, b) = (marker(), marker());
        assert!(
            a.path.starts_with("/tmp/.sandstorm/uploaded-"),
            "{}",
            a.path
        );
        assert_ne!(a.path, b.path);
        assert!(a.content.is_empty());
    }

    #[tokio::test]
    async fn the_command_starts_only_once_the_marker_lands_and_is_the_same_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("sub/uploaded");
        // Prints its own pid, an argument that a shell would split, and
        // whether the gate's variable reached it; then exits 7.
        let inner = spec(
            "sh",
            &[
                "-c",
                "echo \"$$|$1|${SANDSTORM_UPLOAD_MARKER-unset}|$KEPT\"; echo oops >&2; exit 7",
                "sh",
                "a b; $(false) *",
            ],
        );
        let gated = gated(inner, &marker.to_string_lossy(), Duration::from_secs(5));
        let mut child = command(&gated, dir.path()).spawn().expect("spawn the gate");
        let pid = child.id().expect("pid");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the command ran before its marker landed"
        );
        std::fs::create_dir_all(marker.parent().expect("parent")).expect("mkdir");
        std::fs::write(&marker, b"").expect("marker");
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("the gate saw the marker")
            .expect("wait");
        let mut out = String::new();
        let mut err = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .await
            .expect("read");
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .await
            .expect("read");
        assert_eq!(status.code(), Some(7));
        assert_eq!(out, format!("{pid}|a b; $(false) *|unset|yes\n"));
        assert_eq!(err, "oops\n");
    }

    #[tokio::test]
    async fn a_marker_that_never_lands_ends_the_gate_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("never");
        let gated = gated(spec("true", &[]), &marker.to_string_lossy(), Duration::ZERO);
        let output = tokio::time::timeout(
            Duration::from_secs(10),
            command(&gated, dir.path()).output(),
        )
        .await
        .expect("the gate gave up")
        .expect("run the gate");
        assert_eq!(output.status.code(), Some(GAVE_UP_CODE));
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&*marker.to_string_lossy()), "{said}");
        assert!(said.contains("did not land"), "{said}");
    }
}
