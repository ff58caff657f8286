//! The escape suite: every attack of the #9 attack session, run as a hostile
//! agent would run it, against every way a local sandbox is made:
//!
//! - `local`: the local provider in this process (root in CI);
//! - `emulator`: the E2B emulator binary, reached through our E2B client,
//!   as the same user;
//! - `emulator_unprivileged`: the emulator binary started as an ordinary
//!   uid (when this test runs as root), so sandboxes are made without root.
//!
//! Each attack must fail. Rules the suite keeps: it never sends a packet
//! beyond loopback (reachability is judged from the sandbox's namespace and
//! routing table), it changes no host setting (a write is proven impossible
//! by opening for writing, never by writing), and every loop is bounded.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use common::emulator::{self as emu, binary_command};
use common::keys::E2B_KEY;
use common::process::Process;
use common::sandbox::{Output, collect, host_processes_with, run, sh};
use futures::StreamExt;
use sandstorm::sandbox::e2b::{E2bOptions, E2bProvider};
use sandstorm::sandbox::local::{LocalOptions, LocalProvider};
use sandstorm::sandbox::{
    Limits, ProcessEvent, ProcessSpec, Sandbox, SandboxProvider, SandboxSpec,
};

/// The uid the unprivileged emulator runs as: no user of this machine.
const UNPRIVILEGED_UID: u32 = 47_011;

/// Small caps where a test sets them, so the bombs stay light.
const SMALL: Limits = Limits {
    memory_bytes: 256 << 20,
    processes: 64,
    disk_bytes: 64 << 20,
    cpu_seconds: 60,
};

/// The model endpoint a local sandbox's process is pointed at.
const LOCAL_MODEL_ENDPOINT: &str = "http://127.0.0.1:3128";

#[derive(Debug, Clone, Copy)]
enum Target {
    Local,
    Emulator,
    EmulatorUnprivileged,
}

/// Makes sandboxes of one target; holds the emulator it started, if any.
struct Maker {
    provider: Arc<dyn SandboxProvider>,
    /// The emulator's process and address.
    emulator: Option<(Process, String)>,
    /// Whether whoever makes the sandboxes is root.
    as_root: bool,
    /// Where a process's model calls go instead of the model: the host's
    /// endpoint behind the local sandbox's proxy port, or the E2B
    /// template's model proxy.
    model_endpoint: &'static str,
}

impl Maker {
    async fn new(target: Target) -> Maker {
        match target {
            Target::Local => {
                let options = LocalOptions::new(common::runner::runner_dir(), emu::binary());
                let provider = LocalProvider::new(options).expect("local provider");
                Maker {
                    provider: Arc::new(provider),
                    emulator: None,
                    as_root: rustix::process::geteuid().is_root(),
                    model_endpoint: LOCAL_MODEL_ENDPOINT,
                }
            }
            Target::Emulator => {
                Maker::emulator(binary_command(), rustix::process::geteuid().is_root()).await
            }
            Target::EmulatorUnprivileged => {
                let command = if rustix::process::geteuid().is_root() {
                    let mut command = std::process::Command::new("/usr/bin/setpriv");
                    command
                        .arg(format!("--reuid={UNPRIVILEGED_UID}"))
                        .arg(format!("--regid={UNPRIVILEGED_UID}"))
                        .arg("--clear-groups")
                        .arg("--")
                        .arg(emu::binary())
                        .args(["--port", "0", "--api-key", E2B_KEY, "--runner-dir"])
                        .arg(common::runner::runner_dir())
                        // Its temp folder must be one it may write.
                        .env("TMPDIR", "/tmp");
                    command
                } else {
                    // Already unprivileged: the plain binary is this case.
                    binary_command()
                };
                Maker::emulator(command, false).await
            }
        }
    }

    async fn emulator(command: std::process::Command, as_root: bool) -> Maker {
        let (process, url) = emu::start_binary(command).await;
        let mut options = E2bOptions::local(&url, E2B_KEY);
        options.template = "sandstorm-test".into();
        // Only an emulator running as root can run the template's model
        // proxy as root; without it, its local sandbox keeps the key out
        // the local way.
        options.model_proxy = as_root;
        let provider = E2bProvider::new(options).expect("E2B client");
        Maker {
            provider: Arc::new(provider),
            emulator: Some((process, url)),
            as_root,
            model_endpoint: if as_root {
                "http://127.0.0.1:880"
            } else {
                LOCAL_MODEL_ENDPOINT
            },
        }
    }

    async fn sandbox(&self, limits: Limits) -> Arc<dyn Sandbox> {
        self.provider
            .create(SandboxSpec {
                lifetime: Duration::from_secs(300),
                limits,
                ..SandboxSpec::default()
            })
            .await
            .expect("create a sandbox")
    }

    /// Whether caps set per sandbox reach it: the emulator speaks E2B's API,
    /// which has no such field, so its sandboxes get the defaults.
    fn takes_limits(&self) -> bool {
        self.emulator.is_none()
    }
}

fn python(code: &str) -> ProcessSpec {
    ProcessSpec {
        cmd: "python3".into(),
        args: vec!["-c".into(), code.into()],
        ..ProcessSpec::default()
    }
}

fn lines(out: &Output) -> Vec<String> {
    out.stdout().lines().map(str::to_owned).collect()
}

/// A port on the host's loopback with a listener the test holds.
fn host_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    (listener, port)
}

/// Nobody connected to `listener`.
fn untouched(listener: &TcpListener) -> bool {
    matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

// ---------------------------------------------------------------------------
// The attacks. Each takes a maker and asserts the attack failed.
// ---------------------------------------------------------------------------

/// Host root through `kernel.core_pattern` and friends: opening them for
/// writing must fail. Nothing is written.
async fn kernel_settings_cannot_be_opened_for_writing(maker: &Maker) {
    let sb = maker.sandbox(Limits::DEFAULT).await;
    let out = run(
        &*sb,
        python(
            "import os\n\
             for p in ['/proc/sys/kernel/core_pattern', '/proc/sys/kernel/modprobe', \
                       '/proc/sysrq-trigger', '/proc/sys/vm/drop_caches']:\n\
             \x20   try:\n\
             \x20       os.close(os.open(p, os.O_WRONLY)); print('OPENED', p)\n\
             \x20   except OSError as e:\n\
             \x20       print('DENIED', p, e.strerror)\n\
             print('SYS', os.path.exists('/sys'))",
        ),
    )
    .await;
    let lines = lines(&out);
    assert_eq!(lines.len(), 5, "{lines:?} {}", out.stderr());
    for line in &lines[..4] {
        assert!(line.starts_with("DENIED"), "{line}");
    }
    assert_eq!(lines[4], "SYS False", "/sys must not be mounted");
    sb.destroy().await.expect("destroy");
}

/// Host files: one the test plants (world-readable), `/etc/shadow`, root's
/// home, and the server's environment.
async fn host_files_are_out_of_reach(maker: &Maker) {
    let planted = tempfile::tempdir().expect("tempdir");
    let secret = planted.path().join("planted-secret");
    std::fs::write(&secret, "escape-suite-host-secret").expect("plant");
    let sb = maker.sandbox(Limits::DEFAULT).await;
    let script = format!(
        "cat {} /etc/shadow /root/.bashrc 2>&1; ls /root 2>&1; \
         grep -l escape-suite /proc/*/environ 2>/dev/null; \
         find / -xdev -name planted-secret 2>/dev/null; echo END",
        secret.display()
    );
    let out = run(&*sb, sh(&script)).await;
    let text = out.stdout();
    assert!(
        !text.contains("escape-suite-host-secret"),
        "a planted host file was read: {text}"
    );
    assert!(!text.contains("root:"), "/etc/shadow was read: {text}");
    assert!(text.ends_with("END\n"), "{text}");
    sb.destroy().await.expect("destroy");
}

/// A loopback port on the host, straight and through the proxy, with a
/// nested `/query` as the request; for the emulator, also its own control
/// plane.
async fn host_loopback_and_a_nested_query_are_unreachable(maker: &Maker) {
    let (listener, port) = host_listener();
    let mut ports = vec![port];
    if let Some((_, url)) = &maker.emulator {
        let emulator_port = url.rsplit(':').next().and_then(|p| p.parse().ok());
        ports.push(emulator_port.expect("the emulator's port"));
    }
    let sb = maker.sandbox(Limits::DEFAULT).await;
    for port in ports {
        let script = format!(
            "import socket\n\
             s = socket.socket(); s.settimeout(5)\n\
             try:\n\
             \x20   s.connect(('127.0.0.1', {port})); print('CONNECTED')\n\
             except OSError as e:\n\
             \x20   print('REFUSED', e.strerror)"
        );
        let out = run(&*sb, python(&script)).await;
        assert!(
            out.stdout().starts_with("REFUSED"),
            "port {port}: {} {}",
            out.stdout(),
            out.stderr()
        );
        // Through the egress proxy: refused with a clear answer, no hang.
        let out = run(
            &*sb,
            sh(&format!(
                "curl -sS -m 10 -o /dev/null -w '%{{http_code}}' --noproxy '' -x http://127.0.0.1:3128 \
                 http://127.0.0.1:{port}/query"
            )),
        )
        .await;
        assert_eq!(out.stdout(), "403", "port {port}: {}", out.stderr());
    }
    assert!(untouched(&listener), "the host port saw a connection");
    sb.destroy().await.expect("destroy");
}

/// The sandbox's network namespace: not the host's, only `lo`, no route
/// anywhere. Judged from inside; no packet is sent.
async fn no_route_leads_beyond_the_sandbox(maker: &Maker) {
    let host_netns = std::fs::read_link("/proc/self/ns/net").expect("host netns");
    let sb = maker.sandbox(Limits::DEFAULT).await;
    let out = run(
        &*sb,
        sh("readlink /proc/self/ns/net; echo ---; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
            echo ---; tail -n +2 /proc/net/route; echo ---; \
            grep -v ' lo$' /proc/net/ipv6_route | grep -v '^00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff' ; echo END"),
    )
    .await;
    let text = out.stdout();
    let parts: Vec<&str> = text.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{text}");
    assert_ne!(
        parts[0].trim(),
        host_netns.to_string_lossy(),
        "the sandbox shares the host's network namespace"
    );
    assert_eq!(parts[1].trim(), "lo", "interfaces other than lo: {text}");
    assert_eq!(parts[2].trim(), "", "IPv4 routes exist: {text}");
    assert_eq!(parts[3].trim(), "END", "IPv6 routes beyond lo: {text}");
    sb.destroy().await.expect("destroy");
}

/// Binding "the host's" port binds only the sandbox's own.
async fn host_ports_cannot_be_bound(maker: &Maker) {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("address").port()
    };
    let sb = maker.sandbox(Limits::DEFAULT).await;
    let script = format!(
        "import socket, time\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {port})); s.listen(); print('BOUND', flush=True)\n\
         time.sleep(20)"
    );
    let mut stream = sb.start(python(&script)).await.expect("start");
    let bound = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = stream.next().await {
            if let Ok(ProcessEvent::Stdout(bytes)) = event {
                return bytes.starts_with(b"BOUND");
            }
        }
        false
    })
    .await
    .expect("the bind never answered");
    assert!(bound, "the sandbox could not bind its own port");
    // The host's port is still free and nothing answers on it.
    let host = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(host.is_ok(), "the sandbox took the host's port {port}");
    drop(host);
    sb.destroy().await.expect("destroy");
}

/// The kernel keyring: the calls are refused, so nothing persists from one
/// run to the next (or reaches the host).
async fn the_keyring_is_closed(maker: &Maker) {
    let script = format!(
        "import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         r = libc.syscall({add_key}, b'user', b'sandstorm-escape', b'secret', 6, -3)\n\
         print('add_key', r, ctypes.get_errno())\n\
         r = libc.syscall({keyctl}, 10, -3, b'user', b'sandstorm-escape', 0)\n\
         print('keyctl', r, ctypes.get_errno())\n\
         r = libc.syscall({request_key}, b'user', b'sandstorm-escape', 0, 0)\n\
         print('request_key', r, ctypes.get_errno())",
        add_key = libc::SYS_add_key,
        keyctl = libc::SYS_keyctl,
        request_key = libc::SYS_request_key,
    );
    for run_number in 1..=2 {
        let sb = maker.sandbox(Limits::DEFAULT).await;
        let out = run(&*sb, python(&script)).await;
        assert_eq!(
            lines(&out),
            [
                format!("add_key -1 {}", libc::EPERM),
                format!("keyctl -1 {}", libc::EPERM),
                format!("request_key -1 {}", libc::EPERM),
            ],
            "run {run_number}: {}",
            out.stderr()
        );
        sb.destroy().await.expect("destroy");
    }
}

/// A concurrent sandbox: its files, its processes, and (when sandboxes are
/// made as root) its host uid.
async fn concurrent_sandboxes_are_apart(maker: &Maker) {
    let (a, b) = (
        maker.sandbox(Limits::DEFAULT).await,
        maker.sandbox(Limits::DEFAULT).await,
    );
    let out = run(
        &*a,
        sh(
            "echo a-secret > /home/user/secret; echo a-tmp > /tmp/secret; \
            bash -c 'exec -a sleep-escape-a sleep 600' >/dev/null 2>&1 & echo ok",
        ),
    )
    .await;
    assert_eq!(out.stdout(), "ok\n");
    let out = run(
        &*b,
        sh("cat /home/user/secret /tmp/secret /dev/shm/* 2>/dev/null; \
            cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; echo END"),
    )
    .await;
    let text = out.stdout();
    assert!(
        !text.contains("a-secret") && !text.contains("a-tmp"),
        "{text}"
    );
    assert!(
        !text.contains("sleep-escape-a"),
        "b sees a's process: {text}"
    );
    let a_pids = host_processes_with("sleep-escape-a 600");
    assert_eq!(a_pids.len(), 1, "a's process runs on the host");
    a.destroy().await.expect("destroy a");
    b.destroy().await.expect("destroy b");
}

/// Each sandbox made as root runs as its own unprivileged host uid; made
/// by an ordinary user, as that user.
async fn sandboxes_run_as_their_own_host_uid(maker: &Maker) {
    let (a, b) = (
        maker.sandbox(Limits::DEFAULT).await,
        maker.sandbox(Limits::DEFAULT).await,
    );
    for (sb, name) in [(&a, "sleep-uid-a"), (&b, "sleep-uid-b")] {
        let out = run(
            &**sb,
            sh(&format!(
                "bash -c 'exec -a {name} sleep 600' >/dev/null 2>&1 & id -u"
            )),
        )
        .await;
        assert_eq!(out.stdout(), "1000\n", "the agent is uid 1000 inside");
    }
    let uid_of = async |name: &str| -> u32 {
        // The background process may not have started yet.
        for _ in 0..200 {
            if let [pid] = common::sandbox::host_pids_with(&format!("{name} 600"))[..] {
                return common::sandbox::host_uid(pid);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never ran");
    };
    let (uid_a, uid_b) = (uid_of("sleep-uid-a").await, uid_of("sleep-uid-b").await);
    assert_ne!(uid_a, 0, "a sandbox runs as host root");
    assert_ne!(uid_b, 0, "a sandbox runs as host root");
    if maker.as_root {
        assert_ne!(uid_a, uid_b, "two sandboxes share a host uid");
    } else if rustix::process::geteuid().is_root() {
        assert_eq!((uid_a, uid_b), (UNPRIVILEGED_UID, UNPRIVILEGED_UID));
    }
    a.destroy().await.expect("destroy a");
    b.destroy().await.expect("destroy b");
}

/// A fork bomb stops at the process cap. Bounded: one parent forks
/// sleepers until the kernel refuses, then stops.
async fn a_fork_bomb_is_contained(maker: &Maker) {
    let limits = if maker.takes_limits() {
        SMALL
    } else {
        Limits::DEFAULT
    };
    let sb = maker.sandbox(limits).await;
    let out = run(
        &*sb,
        python(
            "import os, time\n\
             n = 0\n\
             while n < 5000:\n\
             \x20   try:\n\
             \x20       pid = os.fork()\n\
             \x20   except OSError as e:\n\
             \x20       print('CAPPED', n, e.errno); break\n\
             \x20   if pid == 0:\n\
             \x20       time.sleep(60); os._exit(0)\n\
             \x20   n += 1\n\
             else:\n\
             \x20   print('UNCAPPED', n)",
        ),
    )
    .await;
    let text = out.stdout();
    let forked: u64 = text
        .strip_prefix("CAPPED ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the bomb was not capped: {text} {}", out.stderr()));
    assert!(forked < limits.processes, "{forked} processes");
    sb.destroy().await.expect("destroy");
}

/// A memory bomb gets an ordinary error at the memory cap.
async fn a_memory_bomb_is_contained(maker: &Maker) {
    let limits = if maker.takes_limits() {
        SMALL
    } else {
        Limits::DEFAULT
    };
    let sb = maker.sandbox(limits).await;
    let bytes = limits.memory_bytes + (limits.memory_bytes / 2);
    let out = run(
        &*sb,
        python(&format!(
            "try:\n\
             \x20   b = bytearray({bytes}); print('ALLOCATED')\n\
             except MemoryError:\n\
             \x20   print('REFUSED')"
        )),
    )
    .await;
    assert_eq!(out.stdout(), "REFUSED\n", "{}", out.stderr());
    sb.destroy().await.expect("destroy");
}

/// A disk fill ends at the cap of each writable folder, and nothing lands
/// on the host's disks.
async fn a_disk_fill_is_contained(maker: &Maker) {
    let limits = if maker.takes_limits() {
        SMALL
    } else {
        Limits::DEFAULT
    };
    let sb = maker.sandbox(limits).await;
    // Three files of over half the cap each: every one stays under the
    // file-size limit, so what stops them is the folder's own cap.
    let megabytes = limits.disk_bytes / (2 << 20) + 8;
    let folders = if maker.takes_limits() {
        "/home/user /tmp /dev/shm"
    } else {
        // 2 GiB a folder at the defaults: one is proof enough.
        "/home/user"
    };
    let out = run(
        &*sb,
        sh(&format!(
            "for d in {folders}; do \
               for i in 1 2 3; do dd if=/dev/zero of=$d/fill$i bs=1M count={megabytes} 2>&1 \
                 | grep -o 'No space left on device' | head -n 1; done; \
               echo \"$d $(cat $d/fill* | wc -c)\"; rm -f $d/fill*; \
             done"
        )),
    )
    .await;
    let text = out.stdout();
    for folder in folders.split(' ') {
        let size: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{folder} ")))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("{folder}: {text}"));
        assert!(size <= limits.disk_bytes, "{folder} grew to {size}: {text}");
    }
    assert!(text.contains("No space left on device"), "{text}");
    sb.destroy().await.expect("destroy");
}

/// The runner's event stream: another process of the sandbox cannot open
/// the runner's stdout through `/proc/<pid>/fd`, nor read its memory or
/// environment. The runner is `node`, as in a run.
async fn the_runners_stream_cannot_be_forged(maker: &Maker) {
    let sb = maker.sandbox(Limits::DEFAULT).await;
    let runner = ProcessSpec {
        cmd: "node".into(),
        args: vec![
            "-e".into(),
            "console.log('RUNNER ' + process.pid); setTimeout(() => {}, 30000)".into(),
        ],
        envs: BTreeMap::from([("RUNNER_SECRET".to_owned(), "runner-only".to_owned())]),
        ..ProcessSpec::default()
    };
    let mut stream = sb.start(runner).await.expect("start the runner");
    let mut seen = Vec::new();
    let pid = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(event)) = stream.next().await {
            if let ProcessEvent::Stdout(bytes) = event {
                seen.extend_from_slice(&bytes);
                if let Some(pid) = String::from_utf8_lossy(&seen)
                    .strip_prefix("RUNNER ")
                    .and_then(|rest| rest.lines().next())
                    .and_then(|pid| pid.trim().parse::<u32>().ok())
                {
                    return pid;
                }
            }
        }
        panic!(
            "the runner never started: {}",
            String::from_utf8_lossy(&seen)
        );
    })
    .await
    .expect("the runner never printed its pid");
    let out = run(
        &*sb,
        sh(&format!(
            "echo '{{\"type\":\"result\",\"forged\":true}}' > /proc/{pid}/fd/1 && echo WROTE; \
             ls /proc/{pid}/fd >/dev/null 2>&1 && echo LISTED; \
             cat /proc/{pid}/environ 2>/dev/null | grep -q runner-only && echo ENVIRON; \
             echo END"
        )),
    )
    .await;
    assert_eq!(out.stdout(), "END\n", "{}", out.stderr());
    sb.destroy().await.expect("destroy");
    let rest = collect(stream).await;
    let all = [seen, rest.stdout].concat();
    assert!(
        !String::from_utf8_lossy(&all).contains("forged"),
        "a forged line reached the runner's stream"
    );
}

/// The model key never enters: the process sees a placeholder, and the
/// real key appears nowhere in its environment.
async fn env_shows_no_model_key(maker: &Maker) {
    let sb = maker.sandbox(Limits::DEFAULT).await;
    let spec = ProcessSpec {
        cmd: "env".into(),
        envs: BTreeMap::from([(
            "ANTHROPIC_API_KEY".to_owned(),
            "sk-ant-escape-suite-real-key".to_owned(),
        )]),
        ..ProcessSpec::default()
    };
    let out = run(&*sb, spec).await;
    let env = out.stdout();
    assert!(
        !env.contains("escape-suite-real-key"),
        "the model key is inside: {env}"
    );
    assert!(env.contains("ANTHROPIC_API_KEY="), "{env}");
    assert!(
        env.contains(&format!("ANTHROPIC_BASE_URL={}", maker.model_endpoint)),
        "{env}"
    );
    sb.destroy().await.expect("destroy");
}

macro_rules! escape_suite {
    ($($attack:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $attack() {
                    let maker = super::Maker::new(super::Target::Local).await;
                    super::$attack(&maker).await;
                }
            )*
        }
        mod emulator {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $attack() {
                    let maker = super::Maker::new(super::Target::Emulator).await;
                    super::$attack(&maker).await;
                }
            )*
        }
        mod emulator_unprivileged {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $attack() {
                    let maker = super::Maker::new(super::Target::EmulatorUnprivileged).await;
                    super::$attack(&maker).await;
                }
            )*
        }
    };
}

escape_suite!(
    kernel_settings_cannot_be_opened_for_writing,
    host_files_are_out_of_reach,
    host_loopback_and_a_nested_query_are_unreachable,
    no_route_leads_beyond_the_sandbox,
    host_ports_cannot_be_bound,
    the_keyring_is_closed,
    concurrent_sandboxes_are_apart,
    sandboxes_run_as_their_own_host_uid,
    a_fork_bomb_is_contained,
    a_memory_bomb_is_contained,
    a_disk_fill_is_contained,
    the_runners_stream_cannot_be_forged,
    env_shows_no_model_key,
);
