//! The host folder of files every local sandbox shares, made once per
//! provider: the sandbox's `/etc/passwd` and `/etc/group`, the
//! execute-only `node`, the uid leases' lock files, and staged copies of
//! what sandboxes must reach but cannot where it is.
//!
//! bwrap runs as the sandbox's uid, so everything it binds must be
//! reachable by a user with no rights of its own: a checkout under `/root`
//! (mode 0700) is not. Rather than loosen the permissions of someone's
//! folders, such a path is staged here once, hard-linked where the file
//! system allows and copied where not ([`Runtime::reachable`]).
//!
//! It lives in `/var/tmp`, named after our uid, whatever `TMPDIR` says:
//! every `ds` process of one user on the machine must share the leases
//! (and one copy of `node` is enough). Because any user may create folders
//! there, an existing one is used only if it is ours and nobody else may
//! write to it.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SANDBOX_PATH;
use super::bwrap::{GROUP, PASSWD, Shared};

/// The shared folder.
#[derive(Debug)]
pub(crate) struct Runtime {
    dir: PathBuf,
}

impl Runtime {
    /// Creates or checks the folder.
    pub(crate) fn prepare() -> Result<Runtime, String> {
        let uid = rustix::process::geteuid().as_raw();
        let base = Path::new("/var/tmp");
        let base = if base.is_dir() {
            base.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("sandstorm.{uid}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is not a folder of ours that only we can write; remove it",
                dir.display()
            ));
        }
        // Sandboxes (other uids when we are root) must reach the shared
        // files, never list or change them.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("cannot set permissions on {}: {e}", dir.display()))?;
        Ok(Runtime { dir })
    }

    /// The folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `path` itself when a user with no rights of its own can read it
    /// (and its folder's contents), else a staged copy here. Only needed
    /// when sandboxes run as other uids than ours.
    pub(crate) fn reachable(&self, path: &Path) -> Result<PathBuf, String> {
        if reachable_by_others(path) {
            return Ok(path.to_owned());
        }
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let name = path
            .file_name()
            .map_or_else(|| "staged".to_owned(), |n| n.to_string_lossy().into_owned());
        let staged = self
            .dir
            .join(format!("staged-{name}-{:016x}", fingerprint(path, &meta)));
        if staged.exists() {
            return Ok(staged);
        }
        let temp = self
            .dir
            .join(format!(".staging-{}", uuid::Uuid::new_v4().simple()));
        let copied = stage(path, &temp);
        let result = copied.and_then(|()| match std::fs::rename(&temp, &staged) {
            // Another process staged the same thing first: use theirs.
            Err(_) if staged.exists() => Ok(()),
            other => other,
        });
        if result.is_err() || temp.exists() {
            let _ = std::fs::remove_dir_all(&temp).or_else(|_| std::fs::remove_file(&temp));
        }
        result.map_err(|e| format!("cannot stage {} for sandboxes: {e}", path.display()))?;
        Ok(staged)
    }

    /// Where sandbox folders go: `wanted` when sandboxes can reach it, else
    /// a folder here.
    pub(crate) fn sandboxes_dir(&self, wanted: PathBuf) -> Result<PathBuf, String> {
        if reachable_by_others(&wanted) {
            return Ok(wanted);
        }
        let dir = self.dir.join("sandboxes");
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("cannot set permissions on {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The shared files, written if missing or stale. `shim` is staged
    /// when `others` (the sandboxes' uids) could not reach it.
    pub(crate) fn shared(
        &self,
        shim: &Path,
        runner_dir: &Path,
        others: bool,
    ) -> Result<Shared, String> {
        let passwd = self.write_public("passwd", PASSWD)?;
        let group = self.write_public("group", GROUP)?;
        let shim = if others {
            self.reachable(shim)?
        } else {
            shim.to_owned()
        };
        Ok(Shared {
            shim,
            node: self.execute_only_node()?,
            claude_code: self.execute_only_claude_code(runner_dir)?,
            passwd,
            group,
        })
    }

    /// Writes `name` unless it already holds `content`. A file that is
    /// right is left alone: replacing it (even with the same bytes) while
    /// another provider's bwrap is bind-mounting it makes that sandbox
    /// fail to start ("Unable to find .../etc/group (deleted)"), and every
    /// `ds` process and every provider shares this folder.
    fn write_public(&self, name: &str, content: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        let current = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file() && m.mode() & 0o777 == 0o644)
            .and_then(|_| std::fs::read(&path).ok());
        if current.as_deref() == Some(content.as_bytes()) {
            return Ok(path);
        }
        let temp = self
            .dir
            .join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&temp, content)
            .and_then(|()| std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)))
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// A copy of the sandbox's `node` that nobody may read, only execute;
    /// see [`Runtime::execute_only`]. `None` when the sandbox has no `node`.
    fn execute_only_node(&self) -> Result<Option<PathBuf>, String> {
        let node = SANDBOX_PATH
            .split(':')
            .map(|dir| Path::new(dir).join("node"))
            .find(|path| path.is_file());
        node.map(|node| self.execute_only(&node, "node"))
            .transpose()
    }

    /// The same for the Agent SDK's Claude Code binary, which the runner
    /// starts and whose stdout carries the SDK's messages to the runner.
    /// `None` when the runner install has none (another platform's).
    fn execute_only_claude_code(&self, runner_dir: &Path) -> Result<Option<PathBuf>, String> {
        let scope = runner_dir.join("node_modules/@anthropic-ai");
        let binary = std::fs::read_dir(&scope)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("claude-agent-sdk-linux-")
            })
            .map(|entry| entry.path().join("claude"))
            .find(|path| path.is_file());
        binary
            .map(|binary| self.execute_only(&binary, "claude"))
            .transpose()
    }

    /// A copy of `source` that nobody may read, only execute. The kernel
    /// marks a process started from a file it cannot read as not dumpable,
    /// which closes its `/proc/<pid>/fd`, `mem` and `environ`, and `ptrace`,
    /// to the other processes of its uid: the agent cannot write into the
    /// runner's event stream (or the Claude Code process's, which feeds
    /// it), nor read their memory.
    fn execute_only(&self, source: &Path, name: &str) -> Result<PathBuf, String> {
        let meta = std::fs::metadata(source)
            .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let copy = self
            .dir
            .join(format!("{name}-{}-{}", meta.len(), meta.mtime()));
        if std::fs::metadata(&copy)
            .is_ok_and(|m| m.len() == meta.len() && m.mode() & 0o777 == 0o111)
        {
            return Ok(copy);
        }
        let temp = self
            .dir
            .join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
        std::fs::copy(source, &temp)
            .and_then(|_| std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o111)))
            .and_then(|()| std::fs::rename(&temp, &copy))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                format!(
                    "cannot copy {} to {}: {e}",
                    source.display(),
                    copy.display()
                )
            })?;
        Ok(copy)
    }
}

/// Whether a user with no rights of its own may search every folder above
/// `path` and read it (and, for a folder, list and enter it).
fn reachable_by_others(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let own = if meta.is_dir() { 0o005 } else { 0o004 };
    let ancestors_searchable = path
        .ancestors()
        .skip(1)
        .filter(|dir| !dir.as_os_str().is_empty())
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0));
    ancestors_searchable && meta.mode() & own == own
}

/// Names a staged copy by where it came from and when it last changed, so
/// a new build or a new `npm ci` is staged afresh.
fn fingerprint(path: &Path, meta: &std::fs::Metadata) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino()).hash(&mut hasher);
    // A folder's own time changes only with its entries; its lock file
    // changes with every install (npm writes `.package-lock.json`).
    if let Ok(lock) = std::fs::metadata(path.join(".package-lock.json")) {
        (lock.len(), lock.mtime(), lock.mtime_nsec()).hash(&mut hasher);
    }
    hasher.finish()
}

/// Copies `from` to `to`, folders recursively, files hard-linked when the
/// result is readable by all and copied (made readable) when not.
fn stage(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if meta.is_dir() {
        std::fs::create_dir(to)?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            stage(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        let readable = meta.mode() & 0o004 != 0;
        if readable && std::fs::hard_link(from, to).is_ok() {
            return Ok(());
        }
        std::fs::copy(from, to)?;
        let mode = meta.mode() & 0o777 | 0o444 | if meta.mode() & 0o100 != 0 { 0o111 } else { 0 };
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider starting beside a running one must not replace the files
    /// the running one's sandboxes bind-mount: the same inode stays.
    #[test]
    fn a_shared_file_that_is_right_is_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime {
            dir: dir.path().to_owned(),
        };
        let first = runtime.write_public("group", GROUP).expect("written");
        let inode = std::fs::metadata(&first).expect("meta").ino();
        let again = runtime.write_public("group", GROUP).expect("again");
        assert_eq!(std::fs::metadata(&again).expect("meta").ino(), inode);
        // A stale one is replaced.
        std::fs::write(&first, "stale").expect("write");
        runtime.write_public("group", GROUP).expect("fixed");
        assert_eq!(std::fs::read_to_string(&first).expect("read"), GROUP);
    }

    #[test]
    fn what_others_cannot_reach_is_staged_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private");
        std::fs::create_dir_all(private.join("pkg/lib")).expect("tree");
        std::fs::write(private.join("pkg/lib/a.js"), "a").expect("file");
        std::os::unix::fs::symlink("lib/a.js", private.join("pkg/link.js")).expect("link");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let runtime = Runtime {
            dir: dir.path().join("runtime"),
        };
        std::fs::create_dir(&runtime.dir).expect("runtime");

        let pkg = private.join("pkg");
        assert!(!reachable_by_others(&pkg), "behind a 0700 folder");
        let staged = runtime.reachable(&pkg).expect("staged");
        assert_ne!(staged, pkg);
        assert!(reachable_by_others(&staged) || !reachable_by_others(dir.path()));
        assert_eq!(
            std::fs::read_to_string(staged.join("lib/a.js")).expect("a"),
            "a"
        );
        assert_eq!(
            std::fs::read_link(staged.join("link.js")).expect("link"),
            Path::new("lib/a.js")
        );
        assert_eq!(
            runtime.reachable(&pkg).expect("again"),
            staged,
            "staged once"
        );

        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if reachable_by_others(dir.path()) {
            assert_eq!(runtime.reachable(&pkg).expect("direct"), pkg);
        }
    }
}
