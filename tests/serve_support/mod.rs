//! `e2b-emulator` and `ds serve` as real processes on loopback ports, started
//! the way docs/clients.md tells a user to try the API offline, for tests
//! that drive the server with outside tools (schemathesis, curl, Python,
//! Node).

#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Any key with this prefix gets past an emulator started without `--api-key`.
pub const E2B_KEY: &str = "e2b_0123456789abcdef";
pub const ANTHROPIC_KEY: &str = "sk-ant-serve-test-0000";

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `e2b-emulator` binary. It belongs to another workspace member, and
/// cargo names only the tested package's own binaries in
/// `CARGO_BIN_EXE_*`, so it is found where cargo puts every binary of the
/// profile: next to the folder of this test executable
/// (`target/<profile>/deps/<test>` -> `target/<profile>/e2b-emulator`).
pub fn emulator_bin() -> PathBuf {
    let test = std::env::current_exe().expect("the test executable's path");
    let bin = test
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("e2b-emulator"));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "the e2b-emulator binary is missing next to {}: build it with \
             `cargo build -p e2b-emulator` (scripts/test builds every member)",
            test.display()
        ),
    }
}

/// The project's virtualenv, where `scripts/setup` installs
/// tests/python/requirements.txt.
pub fn venv_bin(name: &str) -> PathBuf {
    manifest_dir().join(".venv/bin").join(name)
}

/// Fails with the install command when a tool from
/// tests/python/requirements.txt is missing.
pub fn require_venv_tool(name: &str, package: &str) -> PathBuf {
    let path = venv_bin(name);
    assert!(
        path.exists(),
        "{} is missing; install it with: scripts/setup \
         (or: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt); \
         it provides {package}",
        path.display()
    );
    path
}

/// A child process that is stopped when the test ends, pass or fail.
pub struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    /// Starts `command` and waits for the `listening on URL` line it prints
    /// on `stdout` or `stderr` once it has bound its port.
    pub fn start(name: &'static str, mut command: Command, from_stderr: bool) -> (Process, String) {
        if from_stderr {
            command.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let mut child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let pipe: Box<dyn Read + Send> = if from_stderr {
            Box::new(child.stderr.take().expect("stderr"))
        } else {
            Box::new(child.stdout.take().expect("stdout"))
        };
        let (tx, rx) = mpsc::channel();
        // Keeps draining after the address, so the child never blocks on a
        // full pipe; lines after it go to the test's stderr.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                match line.strip_prefix("listening on ") {
                    Some(url) if tx.is_some() => {
                        let _ = tx.take().map(|tx| tx.send(url.to_owned()));
                    }
                    _ => eprintln!("[{name}] {line}"),
                }
            }
        });
        let process = Process { name, child };
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} exited, or printed no address within 30 s"));
        (process, url)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first: the emulator then kills its sandboxes and removes
        // their folders.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulator in synthetic-runner mode and `ds serve --sandbox e2b` in
/// front of it.
pub struct Stack {
    /// `ds serve`'s base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    pub emulator_url: String,
    // Dropped in this order: the server, then the emulator, then the folders.
    _server: Process,
    _emulator: Process,
    _dir: tempfile::TempDir,
}

/// Starts the stack; every run answers with `lines` synthetic lines of
/// about 200 bytes, the last a `result`.
pub fn start(lines: u64) -> Stack {
    StackBuilder::default().synthetic(lines).start()
}

/// How to start a [`Stack`].
#[derive(Default)]
pub struct StackBuilder {
    synthetic: Option<u64>,
    env: Vec<(String, String)>,
}

impl StackBuilder {
    /// Runs answer with `lines` synthetic lines instead of running the
    /// runner (without this, sandboxes run the real runner and Agent SDK).
    pub fn synthetic(mut self, lines: u64) -> Self {
        self.synthetic = Some(lines);
        self
    }

    /// One more variable for `ds serve`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn start(self) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let work_root = dir.path().join("sandboxes");
        let cwd = dir.path().join("cwd");
        std::fs::create_dir_all(&work_root).expect("work root");
        std::fs::create_dir_all(&cwd).expect("cwd");

        let mut emulator = Command::new(emulator_bin());
        emulator.args(["--port", "0"]);
        if let Some(lines) = self.synthetic {
            emulator
                .args(["--synthetic-lines", &lines.to_string()])
                .args(["--synthetic-bytes", "200"]);
        }
        emulator
            .arg("--runner-dir")
            .arg(manifest_dir().join("runner"))
            .arg("--work-root")
            .arg(&work_root)
            .env("RUST_LOG", "warn");
        let (emulator, emulator_url) = Process::start("e2b-emulator", emulator, true);

        let mut server = Command::new(env!("CARGO_BIN_EXE_ds"));
        server
            .args(["serve", "--port", "0", "--sandbox", "e2b"])
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("E2B_API_URL", &emulator_url)
            .env("E2B_SANDBOX_URL", &emulator_url)
            .env("E2B_API_KEY", E2B_KEY)
            .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
            .env("RUST_LOG", "warn")
            .envs(self.env);
        let (server, url) = Process::start("ds serve", server, true);
        Stack {
            url,
            emulator_url,
            _server: server,
            _emulator: emulator,
            _dir: dir,
        }
    }
}

/// A plain `GET` of `url` (`http://host:port/path`); the whole response,
/// status line and headers included.
pub fn http_get(url: &str) -> String {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// Runs `command` to its end within `limit`, and returns its status,
/// stdout and stderr. A command that overruns is killed and fails the test.
pub fn run(mut command: Command, limit: Duration) -> (std::process::ExitStatus, String, String) {
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
