//! `ds serve` as a real process. It is always started on port 0 and the
//! test reads the address it prints (`listening on http://...`), so no
//! port is picked beforehand.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::emulator::{self, RunningEmulator};
use super::keys::{ANTHROPIC_KEY, E2B_KEY};
use super::process::{self, Process};

/// The `ds` binary cargo built for this test run.
pub const DS: &str = env!("CARGO_BIN_EXE_ds");

/// How long `ds serve` may take to say where it listens.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How to start one `ds serve`.
pub struct DsServe {
    command: Command,
    /// The working folder made for it when the test gave none.
    dir: Option<tempfile::TempDir>,
}

impl DsServe {
    /// `ds <args> --port 0`, where `args` start with `serve`; a `--port`
    /// among them is dropped (the port is the one ds then prints). It runs in a fresh empty folder with nothing
    /// of the test's environment but `PATH`, and `RUST_LOG=warn`.
    pub fn new<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Self {
        DsServe::with_binary(Path::new(DS), args)
    }

    /// [`DsServe::new`] with another `ds` binary (the release build).
    pub fn with_binary<S: AsRef<OsStr>>(binary: &Path, args: impl IntoIterator<Item = S>) -> Self {
        let mut command = Command::new(binary);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg.as_ref();
            if arg == "--port" {
                args.next();
            } else if !arg.to_string_lossy().starts_with("--port=") {
                command.arg(arg);
            }
        }
        command
            .args(["--port", "0"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn");
        let dir = tempfile::tempdir().expect("a working folder for ds serve");
        command.current_dir(dir.path());
        DsServe {
            command,
            dir: Some(dir),
        }
    }

    /// `ds serve --sandbox e2b` against `e2b`, with the test keys.
    pub fn e2b(e2b: &RunningEmulator) -> Self {
        DsServe::new(["serve", "--sandbox", "e2b"]).envs(e2b.env())
    }

    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> Self {
        self.command.env_remove(name);
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.command.envs(vars);
        self
    }

    /// Runs it in `dir` instead of a fresh folder.
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self.dir = None;
        self
    }

    /// Starts it and waits until it says where it listens.
    pub async fn start(self) -> Server {
        let (process, url) = Process::start(
            "ds serve",
            self.command,
            READY_WITHIN,
            process::listening_on,
        )
        .await;
        Server {
            url,
            process,
            _dir: self.dir,
        }
    }

    /// [`DsServe::start`] for tests without a runtime.
    pub fn start_blocking(self) -> Server {
        let (process, url) = Process::start_blocking(
            "ds serve",
            self.command,
            READY_WITHIN,
            process::listening_on,
        );
        Server {
            url,
            process,
            _dir: self.dir,
        }
    }
}

/// A running `ds serve`; stopped when dropped.
pub struct Server {
    /// Its base URL, `http://127.0.0.1:PORT` (or the host it was given).
    pub url: String,
    pub process: Process,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.process.output()
    }
}

/// The `e2b-emulator` binary in synthetic-runner mode (or running the real
/// runner) and `ds serve --sandbox e2b` in front of it, both as processes:
/// the offline setup docs/clients.md tells a user to try, for tests that
/// drive the server with outside tools.
pub struct Stack {
    /// `ds serve`'s base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    pub emulator_url: String,
    // Dropped in this order: the server, then the emulator, then the folders.
    _server: Server,
    _emulator: Process,
    _dir: tempfile::TempDir,
}

/// Starts the stack; every run answers with `lines` synthetic lines of
/// about 200 bytes, the last a `result`.
pub fn start_stack(lines: u64) -> Stack {
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
        std::fs::create_dir_all(&work_root).expect("work root");

        let mut args = Vec::new();
        if let Some(lines) = self.synthetic {
            args = vec![
                "--synthetic-lines".to_owned(),
                lines.to_string(),
                "--synthetic-bytes".to_owned(),
                "200".to_owned(),
            ];
        }
        // The VM's model proxy reaches the model, as a real one does.
        let model = self
            .env
            .iter()
            .find(|(name, _)| name == "ANTHROPIC_BASE_URL")
            .and_then(|(_, url)| reqwest::Url::parse(url).ok())
            .and_then(|url| Some(format!("{}:{}", url.host_str()?, url.port()?)));
        if let Some(model) = model {
            args.extend(["--egress-open".to_owned(), model]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = emulator::binary_command_in(&work_root, &args);
        command.env("RUST_LOG", "warn");
        let (emulator, emulator_url) = emulator::start_binary_blocking(command);

        let server = DsServe::new(["serve", "--sandbox", "e2b"])
            .env("E2B_API_URL", &emulator_url)
            .env("E2B_SANDBOX_URL", &emulator_url)
            .env("E2B_API_KEY", E2B_KEY)
            .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
            .envs(self.env)
            .start_blocking();
        Stack {
            url: server.url.clone(),
            emulator_url,
            _server: server,
            _emulator: emulator,
            _dir: dir,
        }
    }
}
