//! Child processes that tests start: servers that say when they are ready
//! (and where they listen), and commands run to their end.
//!
//! Ports: a server is started on port 0 and the test reads the port it got,
//! from what it prints or, for a tool that prints the port it was asked
//! for rather than the one it got, from the kernel ([`listening_ports`]).
//! Nothing here picks a free port and hands it on: another process can take
//! it in between.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{Pid, WaitId, WaitIdOptions};
use sandstorm::sync::lock;

/// How long a process gets to stop on SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running child in a process group of its own. Its stdout and stderr
/// are read line by line into [`Process::output`] for as long as it runs,
/// so it never blocks on a full pipe. Dropped, it gets SIGTERM (the
/// emulator then removes its sandboxes, `ds serve` lets runs end), and
/// after [`STOP_GRACE`] its whole group gets SIGKILL: tools such as `cargo
/// lambda watch` start children of their own.
pub struct Process {
    name: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    /// A test waited for its exit: its pid may belong to someone else now.
    reaped: bool,
}

impl Process {
    /// Starts `command` and waits up to `within` for the first output line
    /// (stdout or stderr) that `ready` maps to `Some`; returns that value.
    /// Fails the test, with the output so far, if the process exits or
    /// stays silent instead.
    pub async fn start<T: Send + 'static>(
        name: &str,
        command: Command,
        within: Duration,
        ready: impl FnMut(&str) -> Option<T> + Send + 'static,
    ) -> (Process, T) {
        let (process, found) = Process::spawn(name, command, ready);
        // A blocking wait on a blocking-pool thread: the test's runtime
        // keeps serving what the child may call while it starts.
        let found = tokio::task::spawn_blocking(move || found.recv_timeout(within))
            .await
            .expect("join the readiness wait");
        process.ready_or_fail(found, within)
    }

    /// [`Process::start`] for tests without a runtime.
    pub fn start_blocking<T: Send + 'static>(
        name: &str,
        command: Command,
        within: Duration,
        ready: impl FnMut(&str) -> Option<T> + Send + 'static,
    ) -> (Process, T) {
        let (process, found) = Process::spawn(name, command, ready);
        let found = found.recv_timeout(within);
        process.ready_or_fail(found, within)
    }

    /// Starts `command` and waits for nothing: for a child that prints
    /// nothing when it is ready.
    pub fn start_now(name: &str, command: Command) -> Process {
        Process::spawn(name, command, |_| None::<()>).0
    }

    fn spawn<T: Send + 'static>(
        name: &str,
        mut command: Command,
        ready: impl FnMut(&str) -> Option<T> + Send + 'static,
    ) -> (Process, mpsc::Receiver<T>) {
        use std::os::unix::process::CommandExt;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({command:?}): {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (found_tx, found) = mpsc::channel();
        let watch = Arc::new(Mutex::new(Some((ready, found_tx))));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        pump(stdout, Arc::clone(&output), Arc::clone(&watch));
        pump(stderr, Arc::clone(&output), watch);
        let process = Process {
            name: name.to_owned(),
            child,
            output,
            reaped: false,
        };
        (process, found)
    }

    fn ready_or_fail<T>(
        self,
        found: Result<T, mpsc::RecvTimeoutError>,
        within: Duration,
    ) -> (Process, T) {
        match found {
            Ok(value) => (self, value),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "{} exited before it was ready:\n{}",
                self.name,
                self.output()
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{} was not ready within {within:?}:\n{}",
                self.name,
                self.output()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far, stdout and stderr interleaved by line.
    pub fn output(&self) -> String {
        lock(&self.output).join("\n")
    }

    /// Sends `signal` to the process alone (not its group).
    pub fn signal(&self, signal: Signal) {
        rustix::process::kill_process(self.rustix_pid(), signal)
            .unwrap_or_else(|e| panic!("signal {}: {e}", self.name));
    }

    /// Waits for it to exit, up to `within`; `None` if it is still running.
    pub fn wait_for_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for a child") {
                self.reaped = true;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rustix_pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).expect("a child has a positive pid")
    }

    /// Whether the process has exited, without reaping it: as long as it
    /// is not reaped, its pid (and so its group id) cannot be reused.
    fn exited(&self) -> bool {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        !matches!(
            rustix::process::waitid(WaitId::Pid(self.rustix_pid()), options),
            Ok(None)
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} printed:\n{}", self.name, self.output());
        }
        if self.reaped {
            return;
        }
        if !self.exited() {
            let _ = rustix::process::kill_process(self.rustix_pid(), Signal::TERM);
            let deadline = Instant::now() + STOP_GRACE;
            while !self.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The leader is not reaped yet, so the group id is still ours.
        let _ = rustix::process::kill_process_group(self.rustix_pid(), Signal::KILL);
        let _ = self.child.wait();
    }
}

/// The readiness check and where to send what it found; `None` once found.
type Watch<F, T> = Option<(F, mpsc::Sender<T>)>;

/// Reads `pipe` line by line into `output`, offering each line to the
/// readiness check until one passes.
fn pump<T: Send + 'static, F: FnMut(&str) -> Option<T> + Send + 'static>(
    pipe: impl Read + Send + 'static,
    output: Arc<Mutex<Vec<String>>>,
    watch: Arc<Mutex<Watch<F, T>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut watching = lock(&watch);
            if let Some((ready, _)) = watching.as_mut()
                && let Some(found) = ready(&line)
                && let Some((_, tx)) = watching.take()
            {
                let _ = tx.send(found);
            }
            drop(watching);
            lock(&output).push(line);
        }
    });
}

/// The readiness check of servers that print `listening on URL` once bound
/// (`ds serve`, `e2b-emulator`): the URL.
pub fn listening_on(line: &str) -> Option<String> {
    line.strip_prefix("listening on ").map(str::to_owned)
}

/// The TCP ports process `pid` listens on, from the kernel's socket table:
/// for a tool started on port 0 that only says which port it was asked
/// for.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    sockets(pid)
        .into_iter()
        .filter(|socket| socket.tcp && socket.listening)
        .map(|socket| socket.local.port())
        .collect()
}

/// A TCP or UDP socket of a process, as the kernel's socket table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub tcp: bool,
    pub local: std::net::SocketAddr,
    /// `0.0.0.0:0` or `[::]:0` for a socket with no peer.
    pub remote: std::net::SocketAddr,
    pub listening: bool,
}

/// Every TCP and UDP socket (IPv4 and IPv6) that process `pid` holds open,
/// from `/proc/PID/net/{tcp,tcp6,udp,udp6}`, matched by inode to the
/// process's file descriptors.
pub fn sockets(pid: u32) -> Vec<Socket> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy();
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut sockets = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for row in text.lines().skip(1) {
            let columns: Vec<&str> = row.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) = (
                columns.get(1),
                columns.get(2),
                columns.get(3),
                columns.get(9),
            ) else {
                continue;
            };
            if !inodes.iter().any(|s| s == inode) {
                continue;
            }
            let (Some(local), Some(remote)) = (kernel_address(local), kernel_address(remote))
            else {
                continue;
            };
            let tcp = table.starts_with("tcp");
            const LISTEN: &str = "0A";
            sockets.push(Socket {
                tcp,
                local,
                remote,
                listening: tcp && *state == LISTEN,
            });
        }
    }
    sockets
}

/// An address as `/proc/net/tcp` writes it: `0100007F:1F90` is
/// 127.0.0.1:8080. Each 32-bit word of the address is in the host's byte
/// order, the port in hex.
fn kernel_address(text: &str) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let (address, port) = text.rsplit_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = (0..address.len() / 8)
        .map(|i| u32::from_str_radix(address.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let mut bytes = Vec::with_capacity(16);
    for word in &words {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match words.len() {
        1 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        4 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Runs `command` to its end within `limit`, and returns its status,
/// stdout and stderr. A command that overruns is killed and fails the test.
pub fn run(mut command: Command, limit: Duration) -> (ExitStatus, String, String) {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}
