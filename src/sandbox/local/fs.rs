//! Files in a local sandbox, written and read from the host side.
//!
//! A sandbox has three trees uploads may write: `/home/user` and `/tmp`,
//! tmpfs mounts inside the sandbox reached from the host through
//! `/proc/<init>/root`, and `/opt/agent-runner`, a host folder (`runner/`)
//! bound read-only inside. Uploads and reads map a sandbox path onto one.
//!
//! The agent inside may plant symlinks (`ln -s /root /home/user/x`), and we
//! may run as root on the host, so following one would let a later upload
//! write, or a read leak, any host file. Two rules close that:
//!
//! - every path is walked one component at a time with `openat(O_NOFOLLOW)`
//!   from the tree's root: a symlink anywhere on the way is refused, and
//!   there is no window in which the agent can swap a checked folder for a
//!   link;
//! - in the sandbox's own trees the walk runs on a thread that holds the
//!   sandbox's host uid ([`Roots::owner`]), so even a mistake could reach
//!   only what the sandbox user can, and new files belong to that user.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use crate::sandbox::layout;

/// Names inside `/opt/agent-runner` that are bind-mounted from the shared
/// runner install: a write there would be hidden by the mount, so refuse it.
const RUNNER_SHARED: [&str; 2] = ["node_modules", "package.json"];

/// Names for the writable trees; `runner` is also the host folder (under
/// the sandbox directory) that backs `/opt/agent-runner`.
pub(crate) const HOME_TREE: &str = "home";
/// See [`HOME_TREE`].
pub(crate) const RUNNER_TREE: &str = "runner";
/// See [`HOME_TREE`].
pub(crate) const TMP_TREE: &str = "tmp";
/// The folder of root's that a process beside the sandbox writes (the
/// E2B emulator's model proxy, its spend records): read here, never
/// written, and only there when something runs beside the sandbox.
pub(crate) const SPEND_TREE: &str = "spend";

/// Where inside the sandbox each tree appears: the layout every provider
/// shares, plus the sandbox's own `/tmp`.
pub(crate) const HOME_MOUNT: &str = layout::HOME;
pub(crate) const RUNNER_MOUNT: &str = layout::RUNNER_DIR;
pub(crate) const TMP_MOUNT: &str = "/tmp";

/// Why a sandbox file operation failed. Messages name the sandbox path only,
/// never the host directory behind it.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path is outside the folders a sandbox may write.
    #[error(
        "{path} is outside the sandbox's writable folders (/home/user, /opt/agent-runner, /tmp)"
    )]
    OutsideSandbox {
        /// The sandbox path.
        path: String,
    },
    /// The path is not absolute, has `..` or a NUL byte, or names a folder.
    #[error("{path} is not a valid sandbox path: {reason}")]
    InvalidPath {
        /// The sandbox path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A component is a symlink or a file, which is never followed.
    #[error("refusing {path}: a component is a symlink or not a folder")]
    Symlink {
        /// The sandbox path.
        path: String,
    },
    /// The file does not exist.
    #[error("no such file: {path}")]
    NotFound {
        /// The sandbox path.
        path: String,
    },
    /// The sandbox was destroyed first.
    #[error("the sandbox has been destroyed")]
    SandboxGone,
    /// Any other I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The sandbox path.
        path: String,
        /// The error.
        source: io::Error,
    },
}

/// A sandbox path resolved to a host tree and the components below it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resolved<'a> {
    /// The host folder name under the sandbox directory (`home`, ...).
    pub(crate) tree: &'static str,
    /// Path components below that folder; never empty, never `.` or `..`.
    pub(crate) components: Vec<&'a str>,
}

/// Maps an absolute sandbox path onto its host tree, refusing `..`, relative
/// paths and anything outside the three writable trees.
pub(crate) fn resolve(path: &str) -> Result<Resolved<'_>, FsError> {
    let invalid = |reason| FsError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("it must be absolute"));
    }
    if path.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("it contains `..`")),
            p => parts.push(p),
        }
    }
    let under = |mount: &str| {
        let depth = mount.split('/').filter(|p| !p.is_empty()).count();
        let inside = parts.len() >= depth
            && mount
                .split('/')
                .filter(|p| !p.is_empty())
                .eq(parts[..depth].iter().copied());
        inside.then(|| &parts[depth..])
    };
    let (tree, rest) = [
        (HOME_TREE, HOME_MOUNT),
        (RUNNER_TREE, RUNNER_MOUNT),
        (TMP_TREE, TMP_MOUNT),
        (SPEND_TREE, crate::spend::RECORD_DIR),
    ]
    .into_iter()
    .find_map(|(tree, mount)| under(mount).map(|rest| (tree, rest)))
    .ok_or_else(|| FsError::OutsideSandbox {
        path: path.to_owned(),
    })?;
    if rest.is_empty() {
        return Err(invalid("it names a folder, not a file"));
    }
    if tree == RUNNER_TREE && RUNNER_SHARED.contains(&rest[0]) {
        return Err(invalid(
            "it is part of the shared, read-only runner install",
        ));
    }
    Ok(Resolved {
        tree,
        components: rest.to_vec(),
    })
}

/// Where one sandbox's trees are on the host, and who may touch them.
#[derive(Debug, Clone)]
pub(crate) struct Roots {
    /// The sandbox's root folder, opened once through `/proc/<init>/root`
    /// when the sandbox was made. Held open rather than named by path: if
    /// the init died, its pid could go to another process, and the path
    /// would then lead into that process's files.
    pub(crate) sandbox: Arc<OwnedFd>,
    /// The sandbox's host directory, which holds `runner/`.
    pub(crate) host: PathBuf,
    /// The sandbox's host uid (and gid), when it is not ours.
    pub(crate) owner: Option<u32>,
}

impl Roots {
    /// Opens the sandbox's root folder at `path` (its init's
    /// `/proc/<pid>/root`) for [`Roots::sandbox`].
    pub(crate) fn open_sandbox_root(path: &Path) -> std::io::Result<Arc<OwnedFd>> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Arc::new(fd))
    }

    /// Runs `op` with the rights the tree calls for: the sandbox user's in
    /// its own trees, ours in `runner/`. Thread credentials are per thread
    /// on Linux, so the switch happens on a thread that ends with `op`.
    fn as_owner<T: Send>(
        &self,
        tree: &str,
        path: &str,
        op: impl FnOnce() -> Result<T, FsError> + Send,
    ) -> Result<T, FsError> {
        let Some(uid) = self
            .owner
            .filter(|_| tree != RUNNER_TREE && tree != SPEND_TREE)
        else {
            return op();
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    become_user(uid).map_err(|e| errno(path, e))?;
                    op()
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(FsError::Io {
                        path: path.to_owned(),
                        source: io::Error::other("the file thread panicked"),
                    })
                })
        })
    }
}

/// Gives the calling thread `uid` and the equal gid, with no other groups.
fn become_user(uid: u32) -> Result<(), Errno> {
    let (user, group) = (Uid::from_raw(uid), Gid::from_raw(uid));
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(group, group, group)?;
    rustix::thread::set_thread_res_uid(user, user, user)
}

/// Writes `content` to `path` in the sandbox, creating parent folders.
pub(crate) fn write(roots: &Roots, path: &str, content: &[u8]) -> Result<(), FsError> {
    let resolved = resolve(path)?;
    if resolved.tree == SPEND_TREE {
        return Err(FsError::OutsideSandbox {
            path: path.to_owned(),
        });
    }
    roots.as_owner(resolved.tree, path, || {
        write_at(roots, &resolved, path, content)
    })
}

fn write_at(
    roots: &Roots,
    resolved: &Resolved<'_>,
    path: &str,
    content: &[u8],
) -> Result<(), FsError> {
    let (name, parents) = split_last(resolved);
    let mut dir = open_tree(roots, resolved.tree, path)?;
    for component in parents {
        match rustix::fs::mkdirat(&dir, *component, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(errno(path, e)),
        }
        dir = open_dir_at(&dir, component, path)?;
    }
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| errno(path, e))?;
    File::from(fd)
        .write_all(content)
        .map_err(|source| FsError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Reads the file at `path` in the sandbox.
pub(crate) fn read(roots: &Roots, path: &str) -> Result<Vec<u8>, FsError> {
    let resolved = resolve(path)?;
    roots.as_owner(resolved.tree, path, || read_at(roots, &resolved, path))
}

fn read_at(roots: &Roots, resolved: &Resolved<'_>, path: &str) -> Result<Vec<u8>, FsError> {
    let (name, parents) = split_last(resolved);
    let mut dir = open_tree(roots, resolved.tree, path)?;
    for component in parents {
        dir = open_dir_at(&dir, component, path)?;
    }
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(path, e))?;
    let mut file = File::from(fd);
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(FsError::InvalidPath {
            path: path.to_owned(),
            reason: "it names a folder, not a file",
        });
    }
    let mut out = Vec::new();
    file.read_to_end(&mut out).map_err(|source| FsError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(out)
}

fn split_last<'r, 'a>(resolved: &'r Resolved<'a>) -> (&'a str, &'r [&'a str]) {
    match resolved.components.split_last() {
        Some((name, parents)) => (name, parents),
        // `resolve` never returns an empty list; an empty name makes openat
        // fail with ENOENT rather than panic if that ever changes.
        None => ("", &[]),
    }
}

fn open_tree(roots: &Roots, tree: &str, path: &str) -> Result<OwnedFd, FsError> {
    // The tree roots cannot be replaced from inside: `runner/` is ours, and
    // `/home/user` and `/tmp` are mount points on a read-only root, so a
    // plain open is safe.
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let opened = match tree {
        RUNNER_TREE => rustix::fs::open(roots.host.join(RUNNER_TREE), flags, Mode::empty()),
        SPEND_TREE => rustix::fs::open(roots.host.join(SPEND_TREE), flags, Mode::empty()),
        TMP_TREE => rustix::fs::openat(&*roots.sandbox, "tmp", flags, Mode::empty()),
        _ => rustix::fs::openat(&*roots.sandbox, "home/user", flags, Mode::empty()),
    };
    opened.map_err(|e| errno(path, e))
}

fn open_dir_at(dir: &OwnedFd, name: &str, path: &str) -> Result<OwnedFd, FsError> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(path, e))
}

fn errno(path: &str, e: Errno) -> FsError {
    let path = path.to_owned();
    match e {
        // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on a file or on a
        // symlink gives ENOTDIR.
        Errno::LOOP | Errno::NOTDIR => FsError::Symlink { path },
        Errno::NOENT => FsError::NotFound { path },
        e => FsError::Io {
            path,
            source: e.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_tree_and_refuses_everything_else() {
        let r = resolve("/home/user/a/b.txt").expect("home path");
        assert_eq!((r.tree, r.components), (HOME_TREE, vec!["a", "b.txt"]));
        let r = resolve("/opt/agent-runner/runner.mjs").expect("runner path");
        assert_eq!((r.tree, r.components), (RUNNER_TREE, vec!["runner.mjs"]));
        let r = resolve("//tmp/./x").expect("tmp path");
        assert_eq!((r.tree, r.components), (TMP_TREE, vec!["x"]));

        for bad in [
            "/etc/passwd",
            "/home/other/x",
            "/home/userx/a",
            "/root/.ssh/id",
        ] {
            assert!(
                matches!(resolve(bad), Err(FsError::OutsideSandbox { .. })),
                "{bad}"
            );
        }
        for bad in [
            "home/user/a",
            "/home/user/../../etc/passwd",
            "/home/user/",
            "/tmp",
            "/opt/agent-runner/node_modules/x.js",
            "/opt/agent-runner/package.json",
        ] {
            assert!(
                matches!(resolve(bad), Err(FsError::InvalidPath { .. })),
                "{bad}"
            );
        }
    }

    fn sandbox_dir() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().expect("temp dir");
        for tree in ["root/home/user", "root/tmp", RUNNER_TREE] {
            std::fs::create_dir_all(dir.path().join(tree)).expect("tree");
        }
        let roots = Roots {
            sandbox: Roots::open_sandbox_root(&dir.path().join("root")).expect("root"),
            host: dir.path().to_owned(),
            owner: None,
        };
        (dir, roots)
    }

    #[test]
    fn writes_create_parents_and_reads_round_trip() {
        let (dir, roots) = sandbox_dir();
        write(&roots, "/home/user/a/b/c.txt", b"hi").expect("write");
        write(&roots, "/home/user/a/b/c.txt", b"again").expect("overwrite");
        assert_eq!(
            read(&roots, "/home/user/a/b/c.txt").expect("read"),
            b"again"
        );
        write(&roots, "/tmp/t", b"t").expect("tmp");
        write(&roots, "/opt/agent-runner/r", b"r").expect("runner");
        assert_eq!(
            std::fs::read(dir.path().join("root/tmp/t")).expect("in tmp"),
            b"t"
        );
        assert_eq!(
            std::fs::read(roots.host.join("runner/r")).expect("in runner"),
            b"r"
        );
        assert!(matches!(
            read(&roots, "/home/user/missing"),
            Err(FsError::NotFound { .. })
        ));
        assert!(matches!(
            read(&roots, "/home/user/a"),
            Err(FsError::InvalidPath { .. })
        ));
    }

    #[test]
    fn never_follows_a_planted_symlink() {
        let (dir, roots) = sandbox_dir();
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("secret"), b"host secret").expect("secret");
        let home = dir.path().join("root/home/user");
        std::os::unix::fs::symlink(outside.path(), home.join("link")).expect("dir link");
        std::os::unix::fs::symlink(outside.path().join("secret"), home.join("file"))
            .expect("file link");

        for path in ["/home/user/link/secret", "/home/user/file"] {
            assert!(
                matches!(read(&roots, path), Err(FsError::Symlink { .. })),
                "{path}"
            );
        }
        for path in [
            "/home/user/link/new",
            "/home/user/file",
            "/home/user/link/sub/new",
        ] {
            assert!(
                matches!(write(&roots, path, b"x"), Err(FsError::Symlink { .. })),
                "{path}"
            );
        }
        assert_eq!(
            std::fs::read(outside.path().join("secret")).expect("still there"),
            b"host secret"
        );
        assert!(!outside.path().join("new").exists());
    }
}
