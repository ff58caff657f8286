//! The bubblewrap command line for one sandboxed process.
//!
//! Everything the sandbox can see is listed here: read-only system folders,
//! a short list of `/etc` files (enough for DNS, TLS and a login shell, but
//! not `/etc/shadow` or host credentials), fresh `/proc` and `/dev`, and the
//! sandbox's own `home/`, `runner/` and `tmp/`. Nothing else of the host is
//! mounted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::fs::{HOME_MOUNT, HOME_TREE, RUNNER_MOUNT, RUNNER_TREE, TMP_MOUNT, TMP_TREE};

/// Top-level system folders a program needs. On merged-/usr systems most are
/// symlinks into `/usr`; they are recreated as the same symlinks.
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// The `/etc` entries a sandboxed agent needs: name resolution, TLS roots,
/// users and groups (node and git look themselves up), the dynamic linker's
/// cache, `alternatives` (Debian's `/usr/bin` links point there), time zone,
/// and the login-shell profile that `bash -l` reads.
const ETC_ENTRIES: [&str; 29] = [
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
    "passwd",
    "group",
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

/// How one top-level system folder appears inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SystemEntry {
    Bind(PathBuf),
    Symlink { link: PathBuf, target: PathBuf },
}

/// The parts of the command line that are the same for every process,
/// worked out once from the host's layout.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    system: Vec<SystemEntry>,
    etc: Vec<PathBuf>,
    /// The shared runner install (`node_modules`, `package.json`).
    runner_shared: Vec<(PathBuf, String)>,
    /// Whether to add `--unshare-user` (we are not root) or `--cap-drop ALL`
    /// (we are root: without it the sandboxed root keeps CAP_SYS_ADMIN and
    /// could remount the read-only binds).
    as_root: bool,
}

impl Layout {
    /// Reads the host's root layout. Missing folders are left out, so the
    /// same code works on merged-/usr and classic systems.
    pub(crate) fn detect(runner_dir: &Path, as_root: bool) -> Self {
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
            as_root,
        }
    }

    /// Names of the shared runner entries, so the sandbox directory can hold
    /// empty mount points for them (bwrap cannot create those inside the
    /// read-only `runner/` bind).
    pub(crate) fn runner_mount_points(&self) -> impl Iterator<Item = (&str, bool)> {
        self.runner_shared
            .iter()
            .map(|(path, name)| (name.as_str(), path.is_dir()))
    }

    /// bwrap's arguments for running `argv` in `cwd` with the sandbox
    /// directory `root`. The environment is not on the command line (host
    /// users can read any process's argv; keys belong in its environment,
    /// which only its owner can read): the caller sets it on the bwrap
    /// process itself.
    pub(crate) fn args(&self, root: &Path, cwd: &str, argv: &[String]) -> Vec<OsString> {
        let mut a = Args::default();
        for entry in &self.system {
            match entry {
                SystemEntry::Bind(path) => a.push3("--ro-bind", path, path),
                SystemEntry::Symlink { link, target } => a.push3("--symlink", target, link),
            }
        }
        a.push2("--dir", "/etc");
        for path in &self.etc {
            a.push3("--ro-bind", path, path);
        }
        a.push2("--proc", "/proc");
        a.push2("--dev", "/dev");
        a.push3("--bind", root.join(HOME_TREE), HOME_MOUNT);
        a.push3("--bind", root.join(TMP_TREE), TMP_MOUNT);
        a.push3("--ro-bind", root.join(RUNNER_TREE), RUNNER_MOUNT);
        for (path, name) in &self.runner_shared {
            a.push3("--ro-bind", path, format!("{RUNNER_MOUNT}/{name}"));
        }
        // The root itself is a bwrap tmpfs: make it read-only too, so the
        // only writable places are the sandbox's home and /tmp.
        a.push2("--remount-ro", "/");
        for flag in [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup",
        ] {
            a.push(flag);
        }
        if self.as_root {
            a.push2("--cap-drop", "ALL");
        } else {
            a.push("--unshare-user");
        }
        a.push2("--hostname", "sandbox");
        a.push("--die-with-parent");
        a.push("--new-session");
        a.push2("--chdir", cwd);
        a.push("--");
        for arg in argv {
            a.push(arg);
        }
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

    fn layout(as_root: bool) -> Layout {
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
            as_root,
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
        let argv = ["node".to_owned(), "/opt/agent-runner/runner.mjs".to_owned()];
        let line = joined(&layout(true).args(Path::new("/sb"), "/home/user", &argv));
        for expected in [
            "--ro-bind /usr /usr",
            "--symlink usr/bin /bin",
            "--dir /etc --ro-bind /etc/resolv.conf /etc/resolv.conf",
            "--proc /proc --dev /dev",
            "--bind /sb/home /home/user",
            "--bind /sb/tmp /tmp",
            "--ro-bind /sb/runner /opt/agent-runner",
            "--ro-bind /r/node_modules /opt/agent-runner/node_modules --remount-ro /",
            "--unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup --cap-drop ALL",
            "--die-with-parent --new-session --chdir /home/user -- node /opt/agent-runner/runner.mjs",
        ] {
            assert!(line.contains(expected), "missing `{expected}` in `{line}`");
        }
        assert!(!line.contains("--unshare-user"));
        assert!(
            !line.contains("--setenv"),
            "envs must not be on the command line"
        );
        assert!(
            !line.contains("--bind / "),
            "the host root must never be bound"
        );
    }

    #[test]
    fn unprivileged_runs_get_a_user_namespace() {
        let line = joined(&layout(false).args(Path::new("/sb"), "/tmp", &["true".to_owned()]));
        assert!(line.contains("--unshare-user"));
        assert!(!line.contains("--cap-drop"));
    }
}
