//! Local sandboxes on bubblewrap: the default when no E2B key is around, and
//! the engine behind the E2B emulator (crates/e2b-emulator).
//!
//! Each sandbox is a fresh host directory with three folders, bound into
//! every process the sandbox runs:
//!
//! | host folder | inside | |
//! |---|---|---|
//! | `home/` | `/home/user` | read-write, the agent's working folder |
//! | `runner/` | `/opt/agent-runner` | read-only; `node_modules` and `package.json` of the shared runner install are bound inside it |
//! | `tmp/` | `/tmp` | read-write, shared by the sandbox's processes like one machine's `/tmp` |
//!
//! System folders are read-only, `/etc` is cut down to what DNS, TLS and a
//! shell need, `/proc` and `/dev` are fresh, and pid, ipc, uts and cgroup
//! namespaces are private (plus a user namespace when we are not root). The
//! network is shared: the agent must reach its model API. See
//! [`bwrap`] for the exact command line.
//!
//! Files are written from the host side ([`fs`]); processes run under a
//! supervisor that enforces their timeout ([`process`]). Destroying a
//! sandbox kills every process in it and removes its directory.
//!
//! # One API
//!
//! The product and the E2B emulator drive the same code through the same
//! entry points. [`LocalProvider::create`] is the one way to make a sandbox
//! (the [`SandboxProvider`] impl is that call behind the trait), and
//! [`Sandbox::destroy`] the one way to end it. What an envd needs beyond the
//! [`Sandbox`] trait is inherent on [`LocalSandbox`], and the trait impl at
//! the bottom of this file is a thin adapter over those same methods:
//! [`LocalSandbox::spawn`] (a process with its pid and signal handle; the
//! trait's `start` keeps only the output), [`LocalSandbox::write`] and
//! [`LocalSandbox::read`] (file errors by kind; the trait's `upload` and
//! `read_file` fold them into [`SandboxError`]), [`LocalSandbox::processes`],
//! and the lifetime ([`LocalSandbox::set_lifetime`],
//! [`LocalSandbox::stopped`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ProcessSpec, ProcessStream, Sandbox, SandboxError, SandboxFile, SandboxProvider, SandboxSpec,
};

mod bwrap;
pub(crate) mod egress;
mod fs;
mod install;
mod process;
mod setup;

pub use fs::FsError;
pub use process::ProcessControl;
pub use rustix::process::Signal;
pub(crate) use setup::PROVIDER;

/// util-linux's `setpriv`, used to tie bwrap's life to ours from its first
/// instruction (see [`LocalSandbox::spawn`]). Debian always has it; without
/// it bwrap's own `--die-with-parent` still applies, once bwrap is up.
const SETPRIV: &str = "/usr/bin/setpriv";

/// `PATH` inside the sandbox unless the process sets its own.
pub(crate) const SANDBOX_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to build local sandboxes.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The runner install: a folder holding `node_modules` (with the Agent
    /// SDK) and `package.json`, bound read-only into every sandbox.
    pub runner_dir: PathBuf,
    /// Where sandbox directories are created; the system temp folder when
    /// `None`.
    pub work_root: Option<PathBuf>,
    /// The bubblewrap binary, usually `/usr/bin/bwrap`.
    pub bwrap: PathBuf,
}

/// Creates bubblewrap sandboxes on this machine.
#[derive(Debug)]
pub struct LocalProvider {
    options: LocalOptions,
    layout: bwrap::Layout,
    setpriv: Option<PathBuf>,
}

impl LocalProvider {
    /// Checks that bwrap is there and reads the host's folder layout once.
    pub fn new(options: LocalOptions) -> Result<Self, SandboxError> {
        if !options.bwrap.is_file() {
            return Err(SandboxError::Other {
                op: "local sandbox",
                message: format!(
                    "bubblewrap was not found at {}; install it with `apt-get install bubblewrap`",
                    options.bwrap.display()
                ),
            });
        }
        let as_root = rustix::process::geteuid().is_root();
        let layout = bwrap::Layout::detect(&options.runner_dir, as_root);
        let setpriv = Some(PathBuf::from(SETPRIV)).filter(|p| p.is_file());
        Ok(LocalProvider {
            options,
            layout,
            setpriv,
        })
    }

    /// Makes a fresh sandbox that [`Sandbox::destroy`] or its lifetime
    /// (`spec.lifetime`, none when zero) ends. [`SandboxProvider::create`]
    /// is this, behind the trait.
    #[allow(
        clippy::unused_async,
        reason = "it spawns the deadline reaper, so it must run inside a Tokio runtime; async makes that so"
    )]
    pub async fn create(&self, spec: SandboxSpec) -> Result<Arc<LocalSandbox>, SandboxError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("sandstorm-");
        let dir = match &self.options.work_root {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .map_err(|e| create_error(format!("could not create the sandbox directory: {e}")))?;
        let root = dir.keep();
        let guard = Arc::new(DirGuard { path: root.clone() });
        prepare_dir(&root, &self.layout)
            .map_err(|e| create_error(format!("could not prepare the sandbox directory: {e}")))?;

        let id = format!("local-{}", uuid::Uuid::new_v4().simple());
        let (deadline, _) = watch::channel(None);
        let (state, _) = watch::channel(State::Alive);
        let sandbox = Arc::new(LocalSandbox {
            id,
            bwrap: self.options.bwrap.clone(),
            setpriv: self.setpriv.clone(),
            layout: self.layout.clone(),
            dir: guard,
            processes: Mutex::new(Processes::default()),
            deadline,
            state,
        });
        tokio::spawn(reap_at_deadline(Arc::downgrade(&sandbox)));
        if !spec.lifetime.is_zero() {
            sandbox.set_lifetime(spec.lifetime);
        }
        Ok(sandbox)
    }
}

fn create_error(message: String) -> SandboxError {
    SandboxError::Other {
        op: "create",
        message,
    }
}

fn prepare_dir(root: &Path, layout: &bwrap::Layout) -> std::io::Result<()> {
    for tree in [fs::HOME_TREE, fs::RUNNER_TREE, fs::TMP_TREE] {
        std::fs::create_dir(root.join(tree))?;
    }
    // Mount points for the shared runner install: bwrap cannot create them
    // inside the read-only runner bind.
    for (name, is_dir) in layout.runner_mount_points() {
        let path = root.join(fs::RUNNER_TREE).join(name);
        if is_dir {
            std::fs::create_dir(path)?;
        } else {
            std::fs::File::create(path)?;
        }
    }
    // /tmp must behave like /tmp for every user a process may switch to.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join(fs::TMP_TREE),
        std::fs::Permissions::from_mode(0o1777),
    )
}

#[async_trait]
impl SandboxProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        Ok(LocalProvider::create(self, spec).await?)
    }
}

/// Why a sandbox stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// It is running.
    Alive,
    /// [`Sandbox::destroy`] was called.
    Destroyed,
    /// Its lifetime ran out.
    Expired,
}

/// Removes the sandbox directory when the last holder lets go: the sandbox
/// and each process supervisor hold one, so the directory never disappears
/// under a running process, and never outlives all of them.
#[derive(Debug)]
struct DirGuard {
    path: PathBuf,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks the agent left behind.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One started process, as [`LocalSandbox::processes`] lists it. Its
/// environment is left out on purpose: it holds keys.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// Its pid on the host (bwrap's).
    pub pid: u32,
    /// The program.
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working folder inside the sandbox.
    pub cwd: String,
}

#[derive(Debug, Default)]
struct Processes {
    closed: bool,
    running: HashMap<u32, (ProcessInfo, ProcessControl)>,
}

/// One bubblewrap sandbox. Every method can be called from any task.
#[derive(Debug)]
pub struct LocalSandbox {
    id: String,
    bwrap: PathBuf,
    setpriv: Option<PathBuf>,
    layout: bwrap::Layout,
    dir: Arc<DirGuard>,
    processes: Mutex<Processes>,
    /// When the sandbox expires; `None` means never.
    deadline: watch::Sender<Option<tokio::time::Instant>>,
    state: watch::Sender<State>,
}

impl LocalSandbox {
    /// The host directory behind the sandbox (tests check it is gone after
    /// destroy).
    pub fn host_dir(&self) -> &Path {
        &self.dir.path
    }

    /// Kills the sandbox `lifetime` from now, replacing any earlier deadline
    /// (E2B's set-timeout).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.deadline
            .send_replace(Some(tokio::time::Instant::now() + lifetime));
    }

    /// Running, or why it stopped.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Resolves when the sandbox stops, with the reason.
    pub async fn stopped(&self) -> State {
        let mut state = self.state.subscribe();
        match state.wait_for(|s| *s != State::Alive).await {
            Ok(s) => *s,
            Err(_) => State::Destroyed,
        }
    }

    /// Starts a process, returning its pid (bwrap's, on the host), its
    /// output and a handle to signal it.
    pub fn spawn(
        &self,
        spec: ProcessSpec,
    ) -> Result<(u32, ProcessStream, ProcessControl), SandboxError> {
        let cwd = if spec.cwd.is_empty() {
            fs::HOME_MOUNT.to_owned()
        } else {
            spec.cwd.clone()
        };
        let argv: Vec<String> = std::iter::once(spec.cmd.clone())
            .chain(spec.args.iter().cloned())
            .collect();
        // bwrap's --die-with-parent makes bwrap and the sandbox die with
        // us, but bwrap arms it only after its start-up; `setpriv --pdeathsig
        // KILL` arms it before bwrap runs, so a SIGKILL of this process at
        // any moment leaves no sandbox behind. setpriv execs bwrap, so the
        // pid stays bwrap's.
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut c = tokio::process::Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&self.bwrap);
                c
            }
            None => tokio::process::Command::new(&self.bwrap),
        };
        command
            .args(self.layout.args(&self.dir.path, &cwd, &argv))
            // Clear the host environment; only the run's own variables go in.
            .env_clear()
            .env("HOME", fs::HOME_MOUNT)
            .env("PATH", SANDBOX_PATH)
            // The runner runs as root with bypassPermissions, which the
            // Agent SDK only allows when told it is in a sandbox.
            .env("IS_SANDBOX", "1")
            .envs(&spec.envs);

        let mut processes = self.lock();
        if processes.closed {
            return Err(SandboxError::Other {
                op: "start",
                message: format!("sandbox {} has been destroyed", self.id),
            });
        }
        let (pid, rx, control) =
            process::spawn(command, spec.timeout, self.dir.clone()).map_err(|e| {
                SandboxError::Other {
                    op: "start",
                    message: format!("could not run {}: {e}", self.bwrap.display()),
                }
            })?;
        processes.running.retain(|_, (_, c)| !c.is_done());
        let info = ProcessInfo {
            pid,
            cmd: spec.cmd,
            args: spec.args,
            cwd,
        };
        processes.running.insert(pid, (info, control.clone()));
        Ok((pid, ReceiverStream::new(rx).boxed(), control))
    }

    /// Processes that have not ended yet.
    pub fn processes(&self) -> Vec<(ProcessInfo, ProcessControl)> {
        let mut processes = self.lock();
        processes.running.retain(|_, (_, c)| !c.is_done());
        processes.running.values().cloned().collect()
    }

    /// Writes one file (see [`fs`] for the path rules).
    pub async fn write(&self, path: String, content: Bytes) -> Result<(), FsError> {
        self.check_alive()?;
        let root = self.dir.clone();
        blocking(move || fs::write(&root.path, &path, &content)).await
    }

    /// Reads one file.
    pub async fn read(&self, path: String) -> Result<Bytes, FsError> {
        self.check_alive()?;
        let root = self.dir.clone();
        blocking(move || fs::read(&root.path, &path).map(Bytes::from)).await
    }

    fn check_alive(&self) -> Result<(), FsError> {
        if self.lock().closed {
            return Err(FsError::SandboxGone);
        }
        Ok(())
    }

    /// Kills every process, waits for them, removes the directory: what
    /// [`Sandbox::destroy`] and the lifetime's end do. Idempotent; the first
    /// call's reason sticks.
    async fn stop(&self, reason: State) {
        let controls: Vec<ProcessControl> = {
            let mut processes = self.lock();
            processes.closed = true;
            processes
                .running
                .drain()
                .map(|(_, (_, control))| control)
                .collect()
        };
        for control in &controls {
            control.stop();
        }
        for control in &controls {
            control.wait().await;
        }
        remove_dir(self.dir.path.clone()).await;
        self.state.send_if_modified(|state| {
            let first = *state == State::Alive;
            if first {
                *state = reason;
            }
            first
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Processes> {
        // Each critical section is one insert, retain or drain.
        crate::sync::lock(&self.processes)
    }
}

impl Drop for LocalSandbox {
    /// The safety net for a sandbox nobody destroyed: kill its processes.
    /// The directory goes when the last process supervisor lets go of it.
    fn drop(&mut self) {
        let processes = self
            .processes
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, control) in processes.running.values() {
            control.stop();
        }
    }
}

/// Removes a sandbox directory. bwrap is dead when this runs, but the
/// processes inside die a moment later (its `--die-with-parent` kill is
/// asynchronous), and one may still be creating a file: retry briefly.
async fn remove_dir(path: PathBuf) {
    for _ in 0..20 {
        let attempt = path.clone();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(attempt)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    tracing::warn!(path = %path.display(), "could not remove a sandbox directory");
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(FsError::Io {
            path: String::new(),
            source: std::io::Error::other(e),
        })
    })
}

/// Stops the sandbox when its deadline passes; follows deadline changes.
async fn reap_at_deadline(sandbox: Weak<LocalSandbox>) {
    let mut deadline = match sandbox.upgrade() {
        Some(s) => s.deadline.subscribe(),
        None => return,
    };
    loop {
        let at = *deadline.borrow_and_update();
        let expired = async {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = deadline.changed() => {
                if changed.is_err() {
                    return; // the sandbox is gone
                }
            }
            () = expired => {
                if let Some(sandbox) = sandbox.upgrade() {
                    sandbox.stop(State::Expired).await;
                }
                return;
            }
        }
    }
}

/// The trait view of [`LocalSandbox`]: each method is one call to the
/// inherent method that does the work (see the module doc).
#[async_trait]
impl Sandbox for LocalSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn upload(&self, files: Vec<SandboxFile>) -> Result<(), SandboxError> {
        for file in files {
            self.write(file.path, file.content)
                .await
                .map_err(|e| fs_error("upload", &e))?;
        }
        Ok(())
    }

    async fn start(&self, process: ProcessSpec) -> Result<ProcessStream, SandboxError> {
        self.spawn(process).map(|(_, events, _)| events)
    }

    async fn read_file(&self, path: &str) -> Result<Bytes, SandboxError> {
        self.read(path.to_owned())
            .await
            .map_err(|e| fs_error("read_file", &e))
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.stop(State::Destroyed).await;
        Ok(())
    }
}

fn fs_error(op: &'static str, e: &FsError) -> SandboxError {
    SandboxError::Other {
        op,
        message: e.to_string(),
    }
}
