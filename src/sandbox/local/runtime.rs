//! The host folder of files every local sandbox shares, made once per
//! provider: the sandbox's `/etc/passwd` and `/etc/group`, the
//! execute-only `node`, and the uid leases' lock files.
//!
//! It lives in `/var/tmp`, named after our uid, whatever `TMPDIR` says:
//! every `ds` process of one user on the machine must share the leases
//! (and one copy of `node` is enough). Because any user may create folders
//! there, an existing one is used only if it is ours and nobody else may
//! write to it.

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

    /// The shared files, written if missing or stale.
    pub(crate) fn shared(&self, shim: &Path) -> Result<Shared, String> {
        let passwd = self.write_public("passwd", PASSWD)?;
        let group = self.write_public("group", GROUP)?;
        Ok(Shared {
            shim: shim.to_owned(),
            node: self.execute_only_node()?,
            passwd,
            group,
        })
    }

    fn write_public(&self, name: &str, content: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        let temp = self
            .dir
            .join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&temp, content)
            .and_then(|()| std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)))
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// A copy of the sandbox's `node` that nobody may read, only execute.
    /// The kernel marks a process started from a file it cannot read as not
    /// dumpable, which closes its `/proc/<pid>/fd`, `mem` and `environ`, and
    /// `ptrace`, to the other processes of its uid: the agent cannot write
    /// into the runner's event stream or read its memory. `None` when the
    /// sandbox has no `node` at all.
    fn execute_only_node(&self) -> Result<Option<PathBuf>, String> {
        let Some(node) = SANDBOX_PATH
            .split(':')
            .map(|dir| Path::new(dir).join("node"))
            .find(|path| path.is_file())
        else {
            return Ok(None);
        };
        let source =
            std::fs::metadata(&node).map_err(|e| format!("cannot read {}: {e}", node.display()))?;
        let name = format!("node-{}-{}", source.len(), source.mtime());
        let copy = self.dir.join(name);
        if std::fs::metadata(&copy)
            .is_ok_and(|m| m.len() == source.len() && m.mode() & 0o777 == 0o111)
        {
            return Ok(Some(copy));
        }
        let temp = self
            .dir
            .join(format!(".node.{}", uuid::Uuid::new_v4().simple()));
        std::fs::copy(&node, &temp)
            .and_then(|_| std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o111)))
            .and_then(|()| std::fs::rename(&temp, &copy))
            .map_err(|e| format!("cannot copy {} to {}: {e}", node.display(), copy.display()))?;
        Ok(Some(copy))
    }
}
