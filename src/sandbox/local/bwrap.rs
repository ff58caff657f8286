//! The bubblewrap command line that makes a sandbox.
//!
//! bwrap builds each sandbox once: its namespaces (user, pid, network, ipc,
//! uts, cgroup), its file system, and its first process, the shim's init
//! (see [`super::shim`]). Later processes join those namespaces
//! ([`super::join`]) instead of running bwrap again, so a sandbox behaves
//! like one machine: one process table, one loopback, one `/tmp`.
//!
//! What the sandbox can see is listed here and nothing else: read-only
//! system folders, a short list of `/etc` files (enough for DNS, TLS and a
//! login shell; not `/etc/shadow` or host credentials) plus a `passwd` of
//! its own, fresh `/proc` and `/dev`, size-capped tmpfs for `/home/user`,
//! `/tmp` and `/dev/shm`, the run's read-only `runner/`, the shim, and the
//! egress socket. No `/sys`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::fs::{HOME_MOUNT, RUNNER_MOUNT, RUNNER_TREE, TMP_MOUNT};
use super::shim::{SHIM_COMMAND, SHIM_PATH};
use crate::sandbox::Limits;

/// Top-level system folders a program needs. On merged-/usr systems most are
/// symlinks into `/usr`; they are recreated as the same symlinks.
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// The `/etc` entries a sandboxed agent needs: name resolution, TLS roots,
/// users and groups (node and git look themselves up), the dynamic linker's
/// cache, `alternatives` (Debian's `/usr/bin` links point there), time zone,
/// and the login-shell profile that `bash -l` reads.
const ETC_ENTRIES: [&str; 27] = [
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "protocols",
    "services",
    // Certificates only: /etc/ssl/private holds the host's TLS keys, and
    // the sandboxed root, as their owner, could read them.
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "pki/tls/certs",
    "pki/ca-trust",
    "crypto-policies",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "mime.types",
    "os-release",
    "debian_version",
    "profile",
    "profile.d",
    "bash.bashrc",
    "inputrc",
];

/// The device nodes a sandbox gets.
const DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];
/// The usual links in `/dev`.
const DEVICE_LINKS: [(&str, &str); 4] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// The sandbox user's uid and gid inside, as on E2B.
pub(crate) const SANDBOX_UID: u32 = 1000;
/// The loopback port inside the sandbox where the egress bridge listens.
pub(crate) const BRIDGE_PORT: u16 = 3128;
/// Where the host's egress socket appears inside.
pub(crate) const EGRESS_SOCKET: &str = "/run/sandstorm/egress.sock";
/// Programs that must come first on the sandbox's `PATH`.
pub(crate) const SANDSTORM_BIN: &str = "/opt/sandstorm/bin";
/// Where the execute-only Claude Code binary is, inside; the runner is told
/// with `SANDSTORM_CLAUDE_CODE`.
pub(crate) const CLAUDE_CODE: &str = "/opt/sandstorm/bin/claude";
/// The sandbox's own `/etc/passwd` and `/etc/group`: the host's list of
/// users stays private, and `user` exists for tools that look it up.
pub(crate) const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:user:/home/user:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
/// See [`PASSWD`].
pub(crate) const GROUP: &str = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n";

/// How one top-level system folder appears inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SystemEntry {
    Bind(PathBuf),
    Symlink { link: PathBuf, target: PathBuf },
}

/// Host files every sandbox shares, prepared once by the provider.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    /// The executable holding the shim (`ds` or the emulator).
    pub(crate) shim: PathBuf,
    /// An execute-only copy of `node`: a process started from a file it
    /// cannot read is not dumpable, so the agent cannot open the runner's
    /// `/proc/<pid>/fd` (see `docs/security.md`).
    pub(crate) node: Option<PathBuf>,
    /// An execute-only copy of the Agent SDK's Claude Code binary, for the
    /// same reason: it feeds the runner the SDK's messages.
    pub(crate) claude_code: Option<PathBuf>,
    /// The sandbox's `/etc/passwd` and `/etc/group`.
    pub(crate) passwd: PathBuf,
    /// See `passwd`.
    pub(crate) group: PathBuf,
}

/// The parts of the command line that are the same for every sandbox,
/// worked out once from the host's layout.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    system: Vec<SystemEntry>,
    etc: Vec<PathBuf>,
    /// The shared runner install (`node_modules`, `package.json`).
    runner_shared: Vec<(PathBuf, String)>,
    shared: Shared,
    /// What runs beside the sandbox as its "root" (the E2B emulator's
    /// model proxy): each host binary, bound read-only at
    /// [`ROOT_COMMANDS`]`/<n>`, and the folder of root's that such a
    /// process writes ([`crate::spend::RECORD_DIR`]). Empty: neither.
    pub(crate) beside: Vec<PathBuf>,
}

/// Where the binaries that run beside the sandbox are bound, numbered in
/// the order of [`Layout::beside`]: a template's root commands are in the
/// VM too, readable by its user.
pub(crate) const ROOT_COMMANDS: &str = "/opt/sandstorm/root";

impl Layout {
    /// Reads the host's root layout. Missing folders are left out, so the
    /// same code works on merged-/usr and classic systems.
    pub(crate) fn detect(runner_dir: &Path, shared: Shared) -> Self {
        let system = SYSTEM_DIRS
            .iter()
            .filter_map(|dir| {
                let path = Path::new(dir);
                let meta = std::fs::symlink_metadata(path).ok()?;
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(path).ok()?;
                    Some(SystemEntry::Symlink {
                        link: path.to_owned(),
                        target,
                    })
                } else if meta.is_dir() {
                    Some(SystemEntry::Bind(path.to_owned()))
                } else {
                    None
                }
            })
            .collect();
        let etc = ETC_ENTRIES
            .iter()
            .map(|name| Path::new("/etc").join(name))
            .filter(|path| path.exists())
            .collect();
        let runner_shared = ["node_modules", "package.json"]
            .iter()
            .map(|name| (runner_dir.join(name), (*name).to_owned()))
            .filter(|(path, _)| path.exists())
            .collect();
        Layout {
            system,
            etc,
            runner_shared,
            shared,
            beside: Vec::new(),
        }
    }

    /// Replaces each shared runner entry's host path with `reach(path)`.
    pub(crate) fn map_runner_paths(
        &mut self,
        reach: impl Fn(&Path) -> Result<PathBuf, String>,
    ) -> Result<(), String> {
        for (path, _) in &mut self.runner_shared {
            *path = reach(path)?;
        }
        for path in &mut self.beside {
            *path = reach(path)?;
        }
        Ok(())
    }

    /// Whether sandboxes get the execute-only Claude Code binary.
    pub(crate) fn has_claude_code(&self) -> bool {
        self.shared.claude_code.is_some()
    }

    /// Names of the shared runner entries, so the sandbox directory can hold
    /// empty mount points for them (bwrap cannot create those inside the
    /// read-only `runner/` bind).
    pub(crate) fn runner_mount_points(&self) -> impl Iterator<Item = (&str, bool)> {
        self.runner_shared
            .iter()
            .map(|(path, name)| (name.as_str(), path.is_dir()))
    }

    /// bwrap's arguments for a new sandbox over the host directory `root`
    /// (which holds `runner/` and the egress socket), capped by `limits`.
    /// No environment is on the command line: host users can read any
    /// process's argv.
    pub(crate) fn args(&self, root: &Path, socket: &Path, limits: &Limits) -> Vec<OsString> {
        let mut a = Args::default();
        for entry in &self.system {
            match entry {
                SystemEntry::Bind(path) => a.push3("--ro-bind", path, path),
                SystemEntry::Symlink { link, target } => a.push3("--symlink", target, link),
            }
        }
        a.push2("--dir", "/etc");
        for path in &self.etc {
            // Folders bwrap makes on the way are its user's, 0700 unless
            // told: one beside the sandbox (another uid) must read them too.
            if !self.beside.is_empty()
                && let Some(parent) = path.parent().filter(|p| *p != Path::new("/etc"))
            {
                a.push2("--perms", "0755");
                a.push2("--dir", parent);
            }
            a.push3("--ro-bind", path, path);
        }
        a.push3("--ro-bind", &self.shared.passwd, "/etc/passwd");
        a.push3("--ro-bind", &self.shared.group, "/etc/group");
        a.push2("--proc", "/proc");
        // Device nodes one by one, not bwrap's `--dev`: that mounts a devpts,
        // which makes bwrap nest a second user namespace, and an
        // unprivileged `ds` could then no longer join the sandbox's other
        // namespaces. No pty is lost that a sandbox uses.
        a.push2("--dir", "/dev");
        for device in DEVICES {
            a.push3("--dev-bind", device, device);
        }
        for (target, link) in DEVICE_LINKS {
            a.push3("--symlink", target, link);
        }
        let size = limits.disk_bytes.to_string();
        // Size-capped and in memory: a disk fill ends at the cap, and
        // nothing the agent writes touches the host's disks.
        for (mount, perms) in [
            (HOME_MOUNT, "0755"),
            (TMP_MOUNT, "1777"),
            ("/dev/shm", "1777"),
        ] {
            a.push2("--perms", perms);
            a.push2("--size", &size);
            a.push2("--tmpfs", mount);
        }
        a.push3("--ro-bind", root.join(RUNNER_TREE), RUNNER_MOUNT);
        for (path, name) in &self.runner_shared {
            a.push3("--ro-bind", path, format!("{RUNNER_MOUNT}/{name}"));
        }
        a.push3("--ro-bind", &self.shared.shim, SHIM_PATH);
        if let Some(node) = &self.shared.node {
            a.push3("--ro-bind", node, format!("{SANDSTORM_BIN}/node"));
        }
        if let Some(claude_code) = &self.shared.claude_code {
            a.push3("--ro-bind", claude_code, CLAUDE_CODE);
        }
        if !self.beside.is_empty() {
            a.push2("--perms", "0755");
            a.push2("--dir", "/run/sandstorm");
        }
        a.push3("--ro-bind", socket, EGRESS_SOCKET);
        if !self.beside.is_empty() {
            for (n, path) in self.beside.iter().enumerate() {
                a.push3("--ro-bind", path, format!("{ROOT_COMMANDS}/{n}"));
            }
            // Read-write, but a folder of the beside processes' uid, 0755:
            // the sandbox's user may read it, not write it, as `user` in
            // the VM may not write a folder of root's.
            a.push3(
                "--bind",
                root.join(super::fs::SPEND_TREE),
                crate::spend::RECORD_DIR,
            );
        }
        // The root itself is a bwrap tmpfs: make it read-only too, so the
        // only writable places are the capped tmpfs mounts.
        a.push2("--remount-ro", "/");
        a.push("--unshare-user");
        a.push2("--uid", SANDBOX_UID.to_string());
        a.push2("--gid", SANDBOX_UID.to_string());
        for flag in [
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup",
        ] {
            a.push(flag);
        }
        a.push2("--hostname", "sandbox");
        a.push("--die-with-parent");
        a.push("--new-session");
        a.push2("--chdir", HOME_MOUNT);
        a.push("--");
        a.push(SHIM_PATH);
        a.push(SHIM_COMMAND);
        a.push("init");
        a.push(super::shim::format_limits(limits));
        a.push(BRIDGE_PORT.to_string());
        a.push(EGRESS_SOCKET);
        a.0
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, a: impl Into<OsString>) {
        self.0.push(a.into());
    }
    fn push2(&mut self, flag: &str, a: impl Into<OsString>) {
        self.push(flag);
        self.push(a);
    }
    fn push3(&mut self, flag: &str, a: impl Into<OsString>, b: impl Into<OsString>) {
        self.push(flag);
        self.push(a);
        self.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            system: vec![
                SystemEntry::Bind("/usr".into()),
                SystemEntry::Symlink {
                    link: "/bin".into(),
                    target: "usr/bin".into(),
                },
            ],
            etc: vec!["/etc/resolv.conf".into()],
            runner_shared: vec![("/r/node_modules".into(), "node_modules".into())],
            shared: Shared {
                shim: "/x/ds".into(),
                node: Some("/rt/node".into()),
                claude_code: Some("/rt/claude".into()),
                passwd: "/rt/passwd".into(),
                group: "/rt/group".into(),
            },
            beside: Vec::new(),
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn binds_only_what_the_sandbox_needs() {
        let line = joined(&layout().args(
            Path::new("/sb"),
            Path::new("/sb/egress.sock"),
            &Limits::DEFAULT,
        ));
        for expected in [
            "--ro-bind /usr /usr",
            "--symlink usr/bin /bin",
            "--dir /etc --ro-bind /etc/resolv.conf /etc/resolv.conf",
            "--ro-bind /rt/passwd /etc/passwd --ro-bind /rt/group /etc/group",
            "--proc /proc --dir /dev --dev-bind /dev/null /dev/null",
            "--symlink /proc/self/fd /dev/fd",
            "--perms 0755 --size 2147483648 --tmpfs /home/user",
            "--perms 1777 --size 2147483648 --tmpfs /tmp",
            "--perms 1777 --size 2147483648 --tmpfs /dev/shm",
            "--ro-bind /sb/runner /opt/agent-runner",
            "--ro-bind /r/node_modules /opt/agent-runner/node_modules",
            "--ro-bind /x/ds /opt/sandstorm/shim",
            "--ro-bind /rt/node /opt/sandstorm/bin/node",
            "--ro-bind /rt/claude /opt/sandstorm/bin/claude",
            "--ro-bind /sb/egress.sock /run/sandstorm/egress.sock --remount-ro /",
            "--unshare-user --uid 1000 --gid 1000",
            "--unshare-pid --unshare-net --unshare-ipc --unshare-uts --unshare-cgroup --hostname",
            "--die-with-parent --new-session --chdir /home/user -- /opt/sandstorm/shim __sandbox-shim init 2147483648,512,2147483648,14400 3128 /run/sandstorm/egress.sock",
        ] {
            assert!(line.contains(expected), "missing `{expected}` in `{line}`");
        }
        assert!(
            !line.contains("--setenv"),
            "envs must not be on the command line"
        );
        assert!(
            !line.contains("--bind / ") && !line.contains("--ro-bind / "),
            "the host root must never be bound"
        );
        assert!(!line.contains("/sys"), "no /sys in a sandbox");
        assert!(!line.contains("/etc/shadow"));
    }
}
