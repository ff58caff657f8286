//! Local sandboxes on bubblewrap: the default when no E2B key is around, and
//! the engine behind the E2B emulator (crates/e2b-emulator).
//!
//! A sandbox is meant to hold against a hostile agent, even when `ds` runs
//! as root. Each one is:
//!
//! - **its own user:** the agent is `user` (uid 1000) in a user namespace
//!   with no capabilities and `no_new_privs`; on the host that uid is a
//!   leased, unprivileged uid of its own when `ds` is root ([`identity`]);
//! - **its own machine:** fresh pid, network, ipc, uts and cgroup
//!   namespaces, built once by bwrap ([`bwrap`]); every later process joins
//!   them ([`join`]), so processes share one process table, one loopback and
//!   one `/tmp`, as in an E2B VM;
//! - **offline but for one door:** the network namespace has only `lo`;
//!   the shim's bridge on `127.0.0.1:3128` ([`shim`]) leads to the host's
//!   egress proxy over a Unix socket, which enforces the address policy and
//!   serves the keyless model endpoint;
//! - **capped:** tmpfs size for `/home/user`, `/tmp` and `/dev/shm`;
//!   rlimits for memory, processes, file size and CPU time; a [`seccomp`]
//!   filter on the calls a container never needs.
//!
//! Files are written and read from the host side ([`fs`]); processes run
//! under a supervisor that enforces their timeout ([`process`]). Destroying
//! a sandbox kills its init, which takes every process in its pid namespace
//! along, and removes its host directory.
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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Limits, ProcessEvent, ProcessSpec, ProcessStream, Sandbox, SandboxError, SandboxFile,
    SandboxProvider, SandboxSpec,
};

mod bwrap;
mod egress;
mod fs;
mod identity;
mod install;
mod join;
mod process;
mod runtime;
mod seccomp;
mod setup;
pub mod shim;

pub use fs::FsError;
pub(crate) use install::{SDK_PACKAGE, is_installed};
pub use process::ProcessControl;
pub use rustix::process::Signal;
pub(crate) use setup::{PROVIDER, bwrap_path, pinned_sdk_version, runner_dir};

/// util-linux's `setpriv`: it gives bwrap the sandbox's host uid when we
/// are root, and ties bwrap's life to ours from its first instruction
/// (`--pdeathsig`), so a SIGKILL of this process at any moment leaves no
/// sandbox behind.
pub(crate) const SETPRIV: &str = "/usr/bin/setpriv";
/// util-linux's `nsenter`, which joins a process to a sandbox.
pub(crate) const NSENTER: &str = "/usr/bin/nsenter";
/// How long a new sandbox may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `PATH` inside the sandbox unless the process sets its own.
pub(crate) const SANDBOX_PATH: &str =
    "/opt/sandstorm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The uid (and gid) of what runs beside a sandbox: `nobody`, which owns
/// nothing else, and is no sandbox's.
const BESIDE_UID: u32 = 65_534;

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
    /// The executable that runs the shim when called with
    /// [`shim::SHIM_COMMAND`]: `ds` or `e2b-emulator`.
    pub shim: PathBuf,
    /// Host uids for sandboxes when running as root, `FIRST-LAST`
    /// (`SANDSTORM_SANDBOX_UIDS`); a built-in range when `None`.
    pub uids: Option<String>,
    /// Private addresses the egress proxy may reach after all
    /// (`SANDSTORM_EGRESS_OPEN`, e.g. `10.0.0.0/8,127.0.0.1:8443`).
    pub egress_open: Option<String>,
    /// What a sandbox's "root" runs beside it ([`LocalSandbox::spawn_beside`]),
    /// by the path it has in a VM (the E2B emulator's template's root
    /// commands): each binary is bound into every sandbox, which also
    /// gets the folder of root's they write. Needs a server running as
    /// root.
    pub root_commands: BTreeMap<String, PathBuf>,
}

impl LocalOptions {
    /// Options with the usual bwrap, the temp folder, and the built-in uid
    /// range.
    pub fn new(runner_dir: PathBuf, shim: PathBuf) -> Self {
        LocalOptions {
            runner_dir,
            work_root: None,
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            shim,
            uids: None,
            egress_open: None,
            root_commands: BTreeMap::new(),
        }
    }
}

/// Creates bubblewrap sandboxes on this machine.
#[derive(Debug)]
pub struct LocalProvider {
    options: LocalOptions,
    /// Where sandbox folders go (see [`runtime::Runtime::sandboxes_dir`]).
    work_root: PathBuf,
    layout: bwrap::Layout,
    identities: identity::Identities,
    openings: Vec<egress::Opening>,
    routes: crate::model_proxy::ModelRoutes,
}

impl LocalProvider {
    /// Checks the tools, prepares the files every sandbox shares, and reads
    /// the host's folder layout once.
    pub fn new(options: LocalOptions) -> Result<Self, SandboxError> {
        let setup_error = |message: String| SandboxError::Other {
            op: "local sandbox",
            message,
        };
        for (path, package) in [
            (options.bwrap.as_path(), "bubblewrap"),
            (Path::new(SETPRIV), "util-linux"),
            (Path::new(NSENTER), "util-linux"),
        ] {
            if !path.is_file() {
                return Err(setup_error(format!(
                    "{} was not found; install it with `apt-get install {package}`",
                    path.display()
                )));
            }
        }
        if !options.shim.is_file() {
            return Err(setup_error(format!(
                "the sandbox shim {} was not found",
                options.shim.display()
            )));
        }
        let range = match &options.uids {
            Some(text) => identity::UidRange::parse(text).map_err(setup_error)?,
            None => identity::DEFAULT_RANGE,
        };
        let runtime = runtime::Runtime::prepare().map_err(setup_error)?;
        let identities =
            identity::Identities::for_this_process(range, runtime.dir()).map_err(setup_error)?;
        // Sandboxes of other uids than ours must reach what bwrap binds.
        let others = identities.leases();
        let shared = runtime
            .shared(&options.shim, &options.runner_dir, others)
            .map_err(setup_error)?;
        let mut layout = bwrap::Layout::detect(&options.runner_dir, shared);
        // Only root can run anything beside a sandbox.
        if rustix::process::geteuid().is_root() {
            layout.beside = options.root_commands.values().cloned().collect();
        }
        let wanted = options.work_root.clone().unwrap_or_else(std::env::temp_dir);
        let work_root = if others {
            layout
                .map_runner_paths(|path| runtime.reachable(path))
                .map_err(setup_error)?;
            runtime.sandboxes_dir(wanted).map_err(setup_error)?
        } else {
            wanted
        };
        let openings = match &options.egress_open {
            Some(list) => egress::parse_openings(list).map_err(|e| setup_error(e.to_string()))?,
            None => Vec::new(),
        };
        Ok(LocalProvider {
            options,
            work_root,
            layout,
            identities,
            openings,
            routes: crate::model_proxy::ModelRoutes::new()?,
        })
    }

    /// Makes a fresh sandbox that [`Sandbox::destroy`] or its lifetime
    /// (`spec.lifetime`, none when zero) ends. [`SandboxProvider::create`]
    /// is this, behind the trait.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Arc<LocalSandbox>, SandboxError> {
        let identity = self.identities.lease().map_err(create_error)?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("sandstorm-");
        let dir = builder
            .tempdir_in(&self.work_root)
            .map_err(|e| create_error(format!("could not create the sandbox directory: {e}")))?;
        let root = dir.keep();
        let home = Arc::new(Home {
            path: root.clone(),
            identity,
        });
        prepare_dir(&root, &self.layout, home.identity.leased)
            .map_err(|e| create_error(format!("could not prepare the sandbox directory: {e}")))?;
        let rules = egress::EgressRules::new(&spec.network, self.openings.clone())
            .map_err(|e| create_error(e.to_string()))?;
        let socket = root.join(EGRESS_SOCKET_FILE);
        let listener = egress_listener(&socket, home.identity.leased)
            .map_err(|e| create_error(format!("could not open the egress socket: {e}")))?;
        let egress = egress::serve(listener, Arc::new(rules), self.routes.clone());

        let id = format!("local-{}", uuid::Uuid::new_v4().simple());
        let (init, init_pid, init_exit) =
            self.start_init(&root, &socket, &spec.limits, &home).await?;
        let sandbox_root = fs::Roots::open_sandbox_root(Path::new(&format!(
            "/proc/{init_pid}/root"
        )))
        .map_err(|e| {
            init.stop();
            create_error(format!("could not open the sandbox's root: {e}"))
        })?;
        let roots = fs::Roots {
            sandbox: sandbox_root,
            host: root,
            owner: home.identity.leased,
        };
        let (deadline, _) = watch::channel(None);
        let (state, _) = watch::channel(State::Alive);
        let sandbox = Arc::new(LocalSandbox {
            id,
            init_pid,
            limits: spec.limits,
            claude_code: self.layout.has_claude_code(),
            roots,
            home,
            init,
            init_exit,
            egress: Mutex::new(Some(egress)),
            routes: self.routes.clone(),
            processes: Mutex::new(Processes::default()),
            beside: self.options.root_commands.keys().cloned().collect(),
            records: Mutex::new(BTreeMap::new()),
            deadline,
            state,
        });
        tokio::spawn(reap_at_deadline(Arc::downgrade(&sandbox)));
        if !spec.lifetime.is_zero() {
            sandbox.set_lifetime(spec.lifetime);
        }
        Ok(sandbox)
    }

    /// Starts bwrap with the shim's init and waits until its bridge
    /// listens. Returns the supervisor and the host pid of the sandbox's
    /// pid 1, whose namespaces later processes join.
    async fn start_init(
        &self,
        root: &Path,
        socket: &Path,
        limits: &Limits,
        home: &Arc<Home>,
    ) -> Result<(ProcessControl, u32, crate::exit_watch::ExitWatch), SandboxError> {
        let mut command = tokio::process::Command::new(SETPRIV);
        if let Some(uid) = home.identity.leased {
            command.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".to_owned(),
            ]);
        }
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&self.options.bwrap)
            .args(self.layout.args(root, socket, limits))
            .env_clear()
            .env("PATH", SANDBOX_PATH);
        let (bwrap_pid, mut events, control) =
            process::spawn(command, None, home.clone(), None, false).map_err(|e| {
                create_error(format!(
                    "could not run {}: {e}",
                    self.options.bwrap.display()
                ))
            })?;
        let ready = tokio::time::timeout(START_TIMEOUT, wait_ready(&mut events)).await;
        let failure = match ready {
            Ok(Ok(())) => None,
            Ok(Err(output)) => Some(format!("the sandbox did not start: {output}")),
            Err(_) => Some(format!(
                "the sandbox did not start within {START_TIMEOUT:?}"
            )),
        };
        if let Some(message) = failure {
            control.stop();
            return Err(create_error(message));
        }
        // The init's later output is diagnostics only; keep draining it so
        // it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Ok(ProcessEvent::Stderr(bytes)) = event {
                    tracing::debug!(output = %String::from_utf8_lossy(&bytes), "sandbox init");
                }
            }
        });
        // bwrap has not reaped its child, so the pid is still that child's
        // when the pidfd is opened.
        let found = sandbox_init_pid(bwrap_pid).and_then(|pid| {
            let watch = crate::exit_watch::ExitWatch::open(pid).ok()?;
            Some((pid, watch))
        });
        let Some((init_pid, init_exit)) = found else {
            control.stop();
            return Err(create_error(
                "the sandbox's first process could not be found".to_owned(),
            ));
        };
        Ok((control, init_pid, init_exit))
    }
}

/// How long destroy waits for the kernel to empty the pid namespace after
/// bwrap is gone; it takes milliseconds unless the host is stalled.
const NAMESPACE_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the egress socket lives in the sandbox directory.
const EGRESS_SOCKET_FILE: &str = "egress.sock";

/// Reads the init's output until it reports ready; on exit, returns what it
/// printed (bwrap's own errors name the problem, such as a missing uid map).
async fn wait_ready(events: &mut process::EventReceiver) -> Result<(), String> {
    let mut output = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Ok(ProcessEvent::Stdout(bytes)) => {
                output.push_str(&String::from_utf8_lossy(&bytes));
                if output.contains(shim::READY) {
                    return Ok(());
                }
            }
            Ok(ProcessEvent::Stderr(bytes)) => output.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(ProcessEvent::Exited(status)) => {
                return Err(format!("{} ({})", output.trim(), status.status));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(output.trim().to_owned())
}

/// The host pid of the sandbox's pid 1: bwrap's only child.
fn sandbox_init_pid(bwrap_pid: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{bwrap_pid}/task/{bwrap_pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Binds the sandbox's egress socket, reachable by the sandbox user only.
fn egress_listener(socket: &Path, owner: Option<u32>) -> std::io::Result<tokio::net::UnixListener> {
    let listener = tokio::net::UnixListener::bind(socket)?;
    set_owner(socket, owner, 0o600)?;
    Ok(listener)
}

fn set_owner(path: &Path, owner: Option<u32>, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(uid) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn create_error(message: String) -> SandboxError {
    SandboxError::Other {
        op: "create",
        message,
    }
}

fn prepare_dir(root: &Path, layout: &bwrap::Layout, owner: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // bwrap runs as the sandbox's uid and must reach runner/ and the
    // socket: the directory is ours, its group the sandbox's.
    if let Some(uid) = owner {
        std::os::unix::fs::chown(root, None, Some(uid))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o750))?;
    }
    std::fs::create_dir(root.join(fs::RUNNER_TREE))?;
    std::fs::set_permissions(
        root.join(fs::RUNNER_TREE),
        std::fs::Permissions::from_mode(0o755),
    )?;
    // The folder of root's: owned by the uid that runs beside the sandbox,
    // so the sandbox's own user may read it and not write it.
    if !layout.beside.is_empty() {
        let spend = root.join(fs::SPEND_TREE);
        std::fs::create_dir(&spend)?;
        std::fs::set_permissions(&spend, std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::chown(&spend, Some(BESIDE_UID), Some(BESIDE_UID))?;
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
    Ok(())
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

/// What must outlive every process of a sandbox: its host directory
/// (removed when the last holder lets go) and its uid lease (freed after
/// the directory is gone). The sandbox and each process supervisor hold
/// one.
#[derive(Debug)]
struct Home {
    path: PathBuf,
    identity: identity::Identity,
}

impl Drop for Home {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks.
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
    /// The host pid of the sandbox's pid 1, whose namespaces processes join.
    init_pid: u32,
    limits: Limits,
    /// Whether the execute-only Claude Code binary is there.
    claude_code: bool,
    roots: fs::Roots,
    home: Arc<Home>,
    /// bwrap, holding the namespaces; killing it ends the sandbox.
    init: ProcessControl,
    /// The sandbox's pid 1, gone only when the whole namespace is.
    init_exit: crate::exit_watch::ExitWatch,
    /// The sandbox's egress proxy and model endpoint; gone at destroy.
    egress: Mutex<Option<egress::EgressServer>>,
    routes: crate::model_proxy::ModelRoutes,
    processes: Mutex<Processes>,
    /// The VM paths of what may run beside it, in the order
    /// [`bwrap::ROOT_COMMANDS`] numbers their binaries.
    beside: Vec<String>,
    /// The meters of the processes started with a spend record, by the
    /// record's path, and whether each process has ended: the host's
    /// endpoint keeps a local run's tally, so its readers read it here.
    records: Mutex<BTreeMap<String, (Arc<crate::spend::SpendMeter>, ProcessControl)>>,
    /// When the sandbox expires; `None` means never.
    deadline: watch::Sender<Option<tokio::time::Instant>>,
    state: watch::Sender<State>,
}

impl LocalSandbox {
    /// The host directory behind the sandbox (tests check it is gone after
    /// destroy).
    pub fn host_dir(&self) -> &Path {
        &self.home.path
    }

    /// Kills the sandbox `lifetime` from now, replacing any earlier deadline
    /// (E2B's set-timeout).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.deadline
            .send_replace(Some(tokio::time::Instant::now() + lifetime));
    }

    /// Lifts the deadline: the sandbox lives until destroyed or given a
    /// new lifetime (a paused E2B sandbox does not time out).
    pub fn clear_lifetime(&self) {
        self.deadline.send_replace(None);
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

    /// Starts a process in the sandbox, returning its pid (its host-side
    /// handle's), its output and a handle to signal it.
    pub fn spawn(
        &self,
        spec: ProcessSpec,
    ) -> Result<(u32, ProcessStream, ProcessControl), SandboxError> {
        let cwd = if spec.cwd.is_empty() {
            fs::HOME_MOUNT.to_owned()
        } else {
            spec.cwd.clone()
        };
        // The model key stays here: the process gets a placeholder that
        // only this sandbox's endpoint accepts, while the process lives.
        let mut envs = spec.envs.clone();
        let route = crate::model_proxy::keyless(
            &mut envs,
            &self.routes,
            &join::endpoint(),
            spec.spend.clone(),
        )
        .map_err(|message| SandboxError::Other {
            op: "start",
            message,
        })?;
        let command = join::command(&join::Join {
            init_pid: self.init_pid,
            limits: &self.limits,
            cwd: &cwd,
            cmd: &spec.cmd,
            args: &spec.args,
            envs: &envs,
            claude_code: self.claude_code,
        });
        let mut processes = self.lock();
        if processes.closed {
            return Err(SandboxError::Other {
                op: "start",
                message: format!("sandbox {} has been destroyed", self.id),
            });
        }
        let (pid, rx, control) = process::spawn(
            command,
            spec.timeout,
            Arc::new((self.home.clone(), route)),
            Some(join::OUTPUT_GRACE),
            spec.stdin,
        )
        .map_err(|e| SandboxError::Other {
            op: "start",
            message: format!("could not run {NSENTER}: {e}"),
        })?;
        processes.running.retain(|_, (_, c)| !c.is_done());
        let info = ProcessInfo {
            pid,
            cmd: spec.cmd,
            args: spec.args,
            cwd,
        };
        processes.running.insert(pid, (info, control.clone()));
        if let (Some(meter), Some(record)) = (spec.spend, spec.spend_record) {
            crate::sync::lock(&self.records).insert(record, (meter, control.clone()));
        }
        Ok((pid, ReceiverStream::new(rx).boxed(), control))
    }

    /// The tally kept at `record` by the host's endpoint, for a process
    /// started with it; final once the process has ended.
    pub(crate) fn spend_record(&self, record: &str) -> Option<crate::spend::SpendRecord> {
        let records = crate::sync::lock(&self.records);
        let (meter, control) = records.get(record)?;
        Some(crate::spend::SpendRecord {
            spend: meter.spend(),
            complete: control.is_done(),
        })
    }

    /// Starts `program` (one of [`LocalOptions::root_commands`], by its
    /// VM path) beside the sandbox rather than in it: outside its pid
    /// namespace, in its network and mount namespaces, as `nobody` with
    /// the one capability of listening on a port below 1024. This is how
    /// the E2B emulator runs what a template runs as root (the model
    /// proxy): out of the sandbox user's reach, on the sandbox's loopback,
    /// with the sandbox's only way out (its egress proxy) as its network,
    /// and the sandbox's files as its files, where it alone may write the
    /// folder of root's ([`crate::spend::RECORD_DIR`]). Only a server
    /// running as root can do this.
    pub fn spawn_beside(
        &self,
        program: &str,
        args: &[String],
        envs: &std::collections::BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> Result<(u32, ProcessStream, ProcessControl), SandboxError> {
        let refuse = |message: String| SandboxError::Other {
            op: "start",
            message,
        };
        if !rustix::process::geteuid().is_root() {
            return Err(refuse(
                "only a server running as root can start a process beside a sandbox".to_owned(),
            ));
        }
        let Some(n) = self.beside.iter().position(|p| p == program) else {
            return Err(refuse(format!(
                "{program} is not a command this sandbox runs beside it"
            )));
        };
        let bound = format!("{}/{n}", bwrap::ROOT_COMMANDS);
        let proxy = join::endpoint();
        let mut command = tokio::process::Command::new(NSENTER);
        command
            .arg(format!("--target={}", self.init_pid))
            .args(["--net", "--mount", "--", SETPRIV])
            .arg(format!("--reuid={BESIDE_UID}"))
            .arg(format!("--regid={BESIDE_UID}"))
            .arg("--clear-groups")
            .args([
                "--inh-caps=-all,+net_bind_service",
                "--ambient-caps=+net_bind_service",
                "--bounding-set=-all,+net_bind_service",
                "--",
            ])
            .arg(&bound)
            .args(args)
            .current_dir("/")
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("HTTP_PROXY", &proxy)
            .env("HTTPS_PROXY", &proxy)
            .env("NO_PROXY", "localhost,::1")
            .envs(envs);
        let mut processes = self.lock();
        if processes.closed {
            return Err(refuse(format!("sandbox {} has been destroyed", self.id)));
        }
        let (pid, rx, control) = process::spawn(command, timeout, Arc::new(()), None, false)
            .map_err(|e| refuse(format!("could not run {NSENTER}: {e}")))?;
        processes.running.retain(|_, (_, c)| !c.is_done());
        let info = ProcessInfo {
            pid,
            cmd: program.to_owned(),
            args: args.to_vec(),
            cwd: "/".to_owned(),
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
        let roots = self.roots.clone();
        blocking(move || fs::write(&roots, &path, &content)).await
    }

    /// Reads one file.
    pub async fn read(&self, path: String) -> Result<Bytes, FsError> {
        self.check_alive()?;
        let roots = self.roots.clone();
        blocking(move || fs::read(&roots, &path).map(Bytes::from)).await
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
        let mut controls: Vec<ProcessControl> = {
            let mut processes = self.lock();
            processes.closed = true;
            processes
                .running
                .drain()
                .map(|(_, (_, control))| control)
                .collect()
        };
        // Killing bwrap ends the pid namespace, and every process in it;
        // ending the egress server cuts every connection that left it.
        controls.push(self.init.clone());
        drop(crate::sync::lock(&self.egress).take());
        for control in &controls {
            control.stop();
        }
        for control in &controls {
            control.wait().await;
        }
        // bwrap's end only starts the namespace's: its pid 1 dies of the
        // parent-death signal, then the kernel kills and reaps the rest.
        // Bounded, so that a kernel that never reports cannot hang destroy.
        if !self.init_exit.exited_within(NAMESPACE_EXIT_TIMEOUT).await {
            tracing::warn!(sandbox = %self.id, "the sandbox's processes did not all exit in time");
        }
        remove_dir(self.home.path.clone()).await;
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
        self.init.stop();
    }
}

/// Removes a sandbox directory once every process is gone. Retried
/// briefly, in case a file in it is still being released.
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

    async fn read_spend(
        &self,
        record: &str,
    ) -> Result<Option<crate::spend::SpendRecord>, SandboxError> {
        Ok(self.spend_record(record))
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.stop(State::Destroyed).await;
        Ok(())
    }

    async fn expire_in(&self, lifetime: Duration) -> Result<(), SandboxError> {
        self.set_lifetime(lifetime);
        Ok(())
    }
}

fn fs_error(op: &'static str, e: &FsError) -> SandboxError {
    SandboxError::Other {
        op,
        message: e.to_string(),
    }
}
