//! Which processes are recording runs into an SQLite history, so that one
//! process can tell a run another is still relaying from one whose process
//! is gone.
//!
//! An attached run lives only as long as the process relaying it: killed
//! or crashed, that process never writes the run's end, and its record
//! would say `running` for ever. So each recording process holds an
//! exclusive `flock` on a file of its own beside the history, and names
//! that file in the attached runs it records. The kernel lets go of the
//! lock the moment the process is gone, however it went, which no
//! heartbeat or pid check tells as surely: pids are reused, and a process
//! in another container on the same volume has a pid of another namespace.
//! A lock that another process can take, or a file that is not there, is a
//! recorder that is gone.
//!
//! The lock is as good as the file system's `flock`: on a local disk it
//! holds across processes and containers of one machine. A history shared
//! over a network file system is not a case this handles.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};

/// How many random bytes name a recorder: ids are never reused.
const ID_BYTES: usize = 16;

/// The folder of the recorders of the history at `history`: beside it, as
/// SQLite's own `-wal` and `-shm` files are.
pub(super) fn folder_of(history: &Path) -> PathBuf {
    let mut name = history.as_os_str().to_owned();
    name.push("-recorders");
    PathBuf::from(name)
}

/// This process, recording: its lock is held as long as this lives, and
/// its file is removed when it is dropped.
#[derive(Debug)]
pub(super) struct Recorder {
    id: String,
    path: PathBuf,
    /// Holds the lock: the kernel releases it when this closes, or when
    /// the process ends.
    _lock: File,
}

impl Recorder {
    /// Registers this process in `folder` (made if need be, the owner's
    /// alone, as the history is).
    ///
    /// # Errors
    /// When the system gives no randomness, or the folder or the file
    /// cannot be made or locked.
    pub(super) fn register(folder: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)?;
        let mut bytes = [0u8; ID_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| io::Error::other("the system gave no randomness"))?;
        let id = crate::hex::encode(&bytes);
        let path = folder.join(&id);
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        // Taken before any record names it, so a record that names it was
        // written while the lock was held.
        lock.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("a fresh recorder file was locked"),
        })?;
        Ok(Recorder {
            id,
            path,
            _lock: lock,
        })
    }

    /// The id attached runs name.
    pub(super) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // A record still `running` under this id is then one of a recorder
        // that is gone, as it is.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the recorder `id` of `folder` is gone for sure: its file is not
/// there, or its lock was free (the file is then removed). A recorder this
/// cannot tell about (an id that is not one, a file that cannot be opened)
/// counts as alive: a live run is never ended on a guess.
pub(super) fn is_gone(folder: &Path, id: &str) -> bool {
    let is_id = id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_id {
        return false;
    }
    let path = folder.join(id);
    let file = match OpenOptions::new().write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "run history: cannot tell whether a recorder is alive");
            return false;
        }
    };
    match file.try_lock() {
        Ok(()) => {
            // Removed while locked: no recorder of this id can come back.
            let _ = std::fs::remove_file(&path);
            true
        }
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(e)) => {
            tracing::warn!(error = %e, path = %path.display(), "run history: cannot tell whether a recorder is alive");
            false
        }
    }
}

/// Removes the files of `folder`'s recorders that are gone, other than
/// `me`: every process that records leaves one, and a killed one leaves it
/// behind.
pub(super) fn remove_gone(folder: &Path, me: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(id) = name.to_str().filter(|id| Some(*id) != me) {
            is_gone(folder, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_is_alive_while_it_holds_its_lock_and_gone_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = folder_of(&dir.path().join("history.db"));
        assert!(folder.ends_with("history.db-recorders"));
        let recorder = Recorder::register(&folder).expect("register");
        let id = recorder.id().to_owned();
        // Another open file description is refused the lock, as another
        // process would be.
        assert!(!is_gone(&folder, &id));
        assert!(folder.join(&id).exists());
        drop(recorder);
        assert!(is_gone(&folder, &id));
    }

    #[test]
    fn a_recorder_whose_lock_is_free_is_gone_and_its_file_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = folder_of(&dir.path().join("h.db"));
        let recorder = Recorder::register(&folder).expect("register");
        // A process killed keeps its file but not its lock: an unlocked
        // file of a valid id.
        let stale = "0123456789abcdef0123456789abcdef";
        File::create(folder.join(stale)).expect("a stale file");
        remove_gone(&folder, Some(recorder.id()));
        assert!(!folder.join(stale).exists());
        assert!(folder.join(recorder.id()).exists(), "its own file stays");
        assert!(!is_gone(&folder, recorder.id()));
    }

    #[test]
    fn what_is_not_a_recorders_id_is_never_taken_for_a_gone_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        for id in [
            "",
            "../history.db",
            "0123456789abcdef",
            "zz23456789abcdef0123456789abcdef",
        ] {
            assert!(!is_gone(dir.path(), id), "{id:?}");
        }
    }
}
