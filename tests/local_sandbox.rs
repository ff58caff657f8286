//! Isolation and lifecycle tests of the bubblewrap provider, run through the
//! provider with real bwrap. Nothing here is skipped: a missing prerequisite
//! fails with the command that installs it.

mod common;

use common::sandbox::{collect, host_processes_with, run, sh};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sandstorm::sandbox::local::{LocalOptions, LocalProvider, LocalSandbox};
use sandstorm::sandbox::{
    ExitStatus, ProcessEvent, ProcessSpec, Sandbox, SandboxError, SandboxFile, SandboxProvider,
    SandboxSpec,
};

/// A liveness guard, not a timing assertion: a hung test fails instead of
/// blocking CI.
const GUARD: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn provider() -> LocalProvider {
    let bwrap = PathBuf::from("/usr/bin/bwrap");
    assert!(
        bwrap.is_file(),
        "bubblewrap is missing: install it with `apt-get install -y bubblewrap`"
    );
    LocalProvider::new(LocalOptions::new(
        repo().join("runner"),
        common::emulator::binary(),
    ))
    .expect("provider")
}

async fn sandbox() -> Arc<LocalSandbox> {
    provider()
        .create(SandboxSpec::default())
        .await
        .expect("create sandbox")
}

/// Waits until `cond` holds, failing after [`GUARD`].
async fn eventually(cond: impl Fn() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(GUARD, wait)
        .await
        .expect("condition never held");
}

#[tokio::test]
async fn cannot_read_host_files_outside_its_binds() {
    let sb = sandbox().await;
    let checkout_file = repo().join("Cargo.toml");
    assert!(checkout_file.is_file());
    let script = format!(
        "cat {} ; ls /root ; cat /etc/shadow ; ls /etc/ssl/private ; ls {}",
        checkout_file.display(),
        sb.host_dir().display()
    );
    let out = run(&*sb, sh(&script)).await;
    assert!(
        !out.stdout().contains("[package]"),
        "read the checkout: {}",
        out.stdout()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        5,
        "every host path must be absent inside: {stderr}"
    );
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn cannot_see_host_processes() {
    let sb = sandbox().await;
    // One line per visible process: its pid and command.
    let script =
        "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; done";
    let out = run(&*sb, sh(script)).await;
    let lines: Vec<&str> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).expect("utf8"))
        .collect();
    assert!(
        lines.len() <= 5,
        "only bwrap's init, the shim's bridge, the shell and its children may be visible: {lines:?}"
    );
    for line in &lines {
        let cmd = line.split_once(' ').map(|(_, c)| c).unwrap_or_default();
        assert!(
            cmd.starts_with("/usr/bin/bwrap")
                || cmd.starts_with("/opt/sandstorm/shim __sandbox-shim init")
                || cmd.starts_with("/bin/sh")
                || cmd.starts_with("tr")
                || cmd.is_empty(),
            "a host process is visible: {line}"
        );
        assert!(
            !cmd.contains("local_sandbox"),
            "the test binary is visible: {line}"
        );
    }
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn cannot_write_outside_home_and_tmp() {
    let sb = sandbox().await;
    let targets = [
        "/usr/sandstorm-probe",
        "/etc/sandstorm-probe",
        "/opt/agent-runner/probe",
        "/sandstorm-probe",
        "/bin/sandstorm-probe",
    ];
    let mut script = String::new();
    for t in targets {
        script.push_str(&format!(
            "if touch {t} 2>/dev/null; then echo WROTE {t}; fi; "
        ));
    }
    script.push_str("touch /home/user/ok && touch /tmp/ok && echo BOTH-OK");
    let out = run(&*sb, sh(&script)).await;
    assert_eq!(
        out.stdout().trim(),
        "BOTH-OK",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in targets {
        assert!(!Path::new(t).exists(), "{t} appeared on the host");
    }
    for written in ["/home/user/ok", "/tmp/ok"] {
        sb.read_file(written).await.expect(written);
    }
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn concurrent_sandboxes_cannot_see_each_other() {
    let (a, b) = (sandbox().await, sandbox().await);
    let out = run(
        &*a,
        sh("echo a-secret > /home/user/secret && echo a-tmp > /tmp/secret && echo done"),
    )
    .await;
    assert_eq!(out.stdout().trim(), "done");
    let out = run(
        &*b,
        sh("cat /home/user/secret /tmp/secret; ls -A /home/user /tmp"),
    )
    .await;
    assert!(
        !out.stdout().contains("a-"),
        "b saw a's files: {}",
        out.stdout()
    );
    assert_eq!(
        out.stdout().trim(),
        "/home/user:\n\n/tmp:",
        "b's folders must be empty"
    );
    // a still has its files: the second sandbox did not share or wipe them.
    let out = run(&*a, sh("cat /home/user/secret /tmp/secret")).await;
    assert_eq!(out.stdout(), "a-secret\na-tmp\n");
    a.destroy().await.expect("destroy a");
    b.destroy().await.expect("destroy b");
}

#[tokio::test]
async fn the_directory_is_gone_after_destroy_and_the_sandbox_refuses_work() {
    let sb = sandbox().await;
    let dir = sb.host_dir().to_owned();
    sb.upload(vec![SandboxFile {
        path: "/home/user/a.txt".into(),
        content: Bytes::from_static(b"x"),
    }])
    .await
    .expect("upload");
    assert_eq!(run(&*sb, sh("cat /home/user/a.txt")).await.stdout(), "x");
    sb.destroy().await.expect("destroy");
    assert!(!dir.exists(), "{} survived destroy", dir.display());
    sb.destroy().await.expect("destroying twice is fine");
    assert!(sb.start(sh("true")).await.is_err());
    assert!(sb.read_file("/home/user/a.txt").await.is_err());
}

#[tokio::test]
async fn dropping_an_undestroyed_sandbox_still_cleans_up() {
    let sb = sandbox().await;
    let dir = sb.host_dir().to_owned();
    let stream = sb
        .start(sh("echo started; exec sleep 6131"))
        .await
        .expect("start");
    drop(stream);
    drop(sb);
    // The safety net works in the background: wait for it.
    eventually(|| !dir.exists() && host_processes_with("sleep 6131").is_empty()).await;
}

#[tokio::test]
async fn timeout_kills_the_process() {
    let sb = sandbox().await;
    let mut spec = sh("echo before; sleep 600; echo after");
    spec.timeout = Some(Duration::from_secs(1));
    let out = run(&*sb, spec).await;
    assert_eq!(out.stdout(), "before\n");
    assert!(
        matches!(out.error, Some(SandboxError::TimedOut { .. })),
        "expected a timeout, got {:?} / {:?}",
        out.exit,
        out.error
    );
    assert!(
        host_processes_with("sleep 600").is_empty(),
        "sleep survived the timeout"
    );
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn destroy_kills_background_processes_too() {
    let sb = sandbox().await;
    let stream = sb
        .start(sh("sleep 6133 & echo started; wait"))
        .await
        .expect("start");
    let mut stream = stream;
    let first = tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("output");
    assert!(matches!(first, Some(Ok(ProcessEvent::Stdout(ref b))) if b.starts_with(b"started")));
    // The shell prints before its forked child has exec'd sleep: wait for it.
    eventually(|| host_processes_with("sleep 6133").len() == 1).await;
    sb.destroy().await.expect("destroy");
    assert!(
        host_processes_with("sleep 6133").is_empty(),
        "a background process survived destroy"
    );
    // The stream still ends properly, with the kill.
    let out = collect(stream).await;
    assert_eq!(
        out.exit.map(|e| e.status),
        Some("signal: killed".to_owned())
    );
}

#[tokio::test]
async fn processes_left_behind_live_on_until_destroy_as_on_e2b() {
    let sb = sandbox().await;
    // The command's end is reported although its orphan holds its stdout.
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        run(&*sb, sh("sleep 6134 & echo spawned")),
    )
    .await
    .expect("the command's end waited for its orphan");
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout(), "spawned\n");
    assert_eq!(
        host_processes_with("sleep 6134").len(),
        1,
        "the orphan runs on"
    );
    sb.destroy().await.expect("destroy");
    assert!(
        host_processes_with("sleep 6134").is_empty(),
        "an orphan outlived its sandbox"
    );
}

#[tokio::test]
async fn large_output_arrives_complete_and_in_order() {
    let sb = sandbox().await;
    // About 20 MB of numbered lines.
    let out = run(&*sb, sh("seq 1 2700000")).await;
    assert_eq!(out.code(), Some(0));
    assert!(
        out.stdout.len() > 20_000_000,
        "only {} bytes",
        out.stdout.len()
    );
    let mut expected = String::with_capacity(out.stdout.len());
    for i in 1..=2_700_000u32 {
        expected.push_str(&i.to_string());
        expected.push('\n');
    }
    assert!(
        out.stdout == expected.as_bytes(),
        "output differs from `seq`"
    );
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn only_the_runs_own_environment_goes_in() {
    let sb = sandbox().await;
    let mut spec = ProcessSpec {
        cmd: "env".into(),
        envs: BTreeMap::from([("ANTHROPIC_API_KEY".to_owned(), "sk-test".to_owned())]),
        ..ProcessSpec::default()
    };
    let out = run(&*sb, spec.clone()).await;
    let env = out.stdout();
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort_unstable();
    // The sandbox's own variables: its home and user, the egress proxy,
    // and the model endpoint that stands in for the key.
    assert_eq!(
        names,
        [
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "HOME",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "IS_SANDBOX",
            "NO_PROXY",
            "PATH",
            "SANDSTORM_CLAUDE_CODE",
            "USER",
            "http_proxy",
            "https_proxy",
            "no_proxy"
        ]
    );
    assert!(env.contains("HOME=/home/user\n"));
    assert!(env.contains("IS_SANDBOX=1\n"));
    assert!(!env.contains("sk-test"), "the model key went in: {env}");
    // Nor is it on any command line.
    spec.cmd = "/bin/sh".into();
    spec.args = vec!["-c".into(), "cat /proc/[0-9]*/cmdline".into()];
    let out = run(&*sb, spec).await;
    assert!(out.stdout().contains("bwrap"));
    assert!(
        !out.stdout().contains("sk-test"),
        "the key leaked into argv"
    );
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn exit_codes_stderr_and_cwd_are_reported() {
    let sb = sandbox().await;
    let mut spec = sh("pwd; echo oops >&2; exit 3");
    spec.cwd = "/tmp".into();
    let out = run(&*sb, spec).await;
    assert_eq!(out.stdout(), "/tmp\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(
        out.exit,
        Some(ExitStatus {
            code: Some(3),
            status: "exit status 3".into()
        })
    );
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn uploads_land_in_the_right_tree_and_escapes_are_refused() {
    let sb = sandbox().await;
    let files = |path: &str| {
        vec![SandboxFile {
            path: path.into(),
            content: Bytes::from_static(b"content"),
        }]
    };
    for path in [
        "/home/user/deep/er/a.txt",
        "/opt/agent-runner/agent_config.json",
        "/tmp/x/y",
    ] {
        sb.upload(files(path)).await.expect(path);
        assert_eq!(sb.read_file(path).await.expect(path), "content");
    }
    let out = run(
        &*sb,
        sh("cat /home/user/deep/er/a.txt /opt/agent-runner/agent_config.json /tmp/x/y"),
    )
    .await;
    assert_eq!(out.stdout(), "content".repeat(3));

    for path in ["/etc/passwd", "/home/user/../../root/x", "relative.txt"] {
        let err = sb.upload(files(path)).await.expect_err(path);
        assert!(
            err.to_string().contains(path),
            "the error must name {path}: {err}"
        );
    }
    // A symlink planted by the agent is never followed from the host side.
    let out = run(
        &*sb,
        sh("ln -s /etc /home/user/etc && ln -s /etc/hostname /home/user/host"),
    )
    .await;
    assert_eq!(out.code(), Some(0));
    assert!(
        sb.upload(files("/home/user/etc/sandstorm-probe"))
            .await
            .is_err()
    );
    assert!(!Path::new("/etc/sandstorm-probe").exists());
    assert!(sb.read_file("/home/user/host").await.is_err());
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn the_runner_install_resolves_from_opt_agent_runner() {
    let runner_dir = repo().join("runner");
    assert!(
        runner_dir
            .join("node_modules/@anthropic-ai/claude-agent-sdk")
            .is_dir(),
        "the runner is not installed: npm ci --prefix {}",
        runner_dir.display()
    );
    let sb = sandbox().await;
    sb.upload(vec![SandboxFile {
        path: "/opt/agent-runner/probe.mjs".into(),
        content: Bytes::from_static(
            b"const sdk = await import('@anthropic-ai/claude-agent-sdk');\nconsole.log(typeof sdk.query);\n",
        ),
    }])
    .await
    .expect("upload probe");
    let out = run(
        &*sb,
        ProcessSpec {
            cmd: "node".into(),
            args: vec!["/opt/agent-runner/probe.mjs".into()],
            ..ProcessSpec::default()
        },
    )
    .await;
    assert_eq!(
        out.stdout(),
        "function\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The shared install is read-only inside.
    let out = run(
        &*sb,
        sh("touch /opt/agent-runner/node_modules/x 2>/dev/null && echo WROTE"),
    )
    .await;
    assert_eq!(out.stdout(), "");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn destroy_does_not_wait_for_a_reader_that_stopped_reading() {
    let sb = sandbox().await;
    let dir = sb.host_dir().to_owned();
    // Far more output than the pipe and channel hold: the process blocks.
    let mut stream = sb.start(sh("yes sandstorm")).await.expect("start");
    let first = tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("output");
    assert!(matches!(first, Some(Ok(ProcessEvent::Stdout(_)))));
    tokio::time::timeout(GUARD, sb.destroy())
        .await
        .expect("destroy hung on a stalled reader")
        .expect("destroy");
    assert!(!dir.exists());
    assert!(host_processes_with("yes sandstorm").is_empty());
    // Holding the stream did not keep anything alive; dropping it is fine.
    drop(stream);
}

#[tokio::test]
async fn name_resolution_and_tls_roots_work_inside() {
    let sb = sandbox().await;
    // The agent must reach its model API: /etc is cut down, but not below
    // what the resolver and TLS clients read.
    let out = run(
        &*sb,
        sh("getent hosts localhost >/dev/null && echo resolves; test -s /etc/ssl/certs/ca-certificates.crt && echo roots; whoami"),
    )
    .await;
    assert_eq!(
        out.stdout(),
        "resolves\nroots\nuser\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sb.destroy().await.expect("destroy");
}

/// The local provider keeps no sandbox past its run, so it cannot reattach
/// or list yet; it says so by name rather than pretending (issue 14).
#[tokio::test]
async fn the_local_provider_says_it_cannot_reattach() {
    let local = provider();
    let Err(err) = local.connect("anything", SandboxSpec::default()).await else {
        panic!("the local provider connected");
    };
    assert_eq!(err.to_string(), "local cannot connect sandboxes");
    let Err(err) = local.list(&Default::default(), None).await else {
        panic!("the local provider listed");
    };
    assert_eq!(err.to_string(), "local cannot list sandboxes");
}
