//! The E2B emulator, in this process or as the `e2b-emulator` binary.
//!
//! This is the one file of the tests that names the emulator's crate and
//! binary: tests take its types from here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
#[allow(
    unused_imports,
    reason = "re-exported for the test files; each uses some"
)]
pub use e2b_emulator::knobs::{CreateFault, CreateFaultMode, StreamCut, Synthetic};
#[allow(
    unused_imports,
    reason = "re-exported for the test files; each uses some"
)]
pub use e2b_emulator::{Emulator, EmulatorOptions, Knobs, Snapshot};

use super::keys::{ANTHROPIC_KEY, E2B_KEY};
use super::process::{self, Process};
use super::runner::runner_dir;

/// The `e2b-emulator` binary of this build, next to the test executable.
///
/// It belongs to another package of the workspace, so Cargo gives this
/// test no `CARGO_BIN_EXE_` for it; `cargo test --workspace` (what
/// `scripts/test` runs) builds every member's binaries before any test.
pub fn binary() -> PathBuf {
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

/// Options with the checked-in runner, any `e2b_` key, no knob turned.
pub fn options() -> EmulatorOptions {
    let mut options = EmulatorOptions::new(runner_dir(), binary());
    options.api_key = sandstorm::secret::Secret::new(E2B_KEY);
    options
}

/// Knobs that answer every run with `lines` synthetic lines of `bytes`
/// bytes, the last a `result`, instead of running the runner.
pub fn synthetic(lines: u64, bytes: usize) -> Knobs {
    Knobs {
        synthetic: Some(Synthetic { lines, bytes }),
        ..Knobs::default()
    }
}

/// An emulator serving on loopback until the test's runtime ends.
pub struct RunningEmulator {
    pub url: String,
    pub emulator: Emulator,
}

/// Starts the emulator with `knobs` and the default options.
pub async fn start(knobs: Knobs) -> RunningEmulator {
    let mut options = options();
    options.knobs = knobs;
    start_with(options).await
}

/// Starts the emulator with `options` on a port the system picks.
pub async fn start_with(options: EmulatorOptions) -> RunningEmulator {
    let emulator = Emulator::new(options)
        .expect("start the E2B emulator (is bubblewrap installed? apt-get install bubblewrap)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the emulator to 127.0.0.1:0");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("emulator address")
    );
    // As the binary (and envd) does: without TCP_NODELAY a stream's first
    // frame waits out the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = e2b_emulator::app(emulator.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    RunningEmulator { url, emulator }
}

impl RunningEmulator {
    pub fn stats(&self) -> Snapshot {
        self.emulator.stats()
    }

    /// How many requests `route` (`create`, `upload`, `start`, `kill`...) got.
    pub fn requests(&self, route: &str) -> u64 {
        self.stats().requests.get(route).copied().unwrap_or(0)
    }

    /// The leak check: the counters once every sandbox created has been
    /// killed and none is alive. A kill may still be in flight when a
    /// stream ends (a create that returned after its run was abandoned is
    /// killed by its own task), so this waits up to `within`, then fails
    /// the test naming what leaked.
    pub async fn settled(&self, within: Duration) -> Snapshot {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            if stats.alive == 0 && stats.created == stats.killed {
                return stats;
            }
            assert!(
                start.elapsed() < within,
                "sandboxes leaked (still alive {within:?} on): {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// When the first sandbox is destroyed, counted from now: the end of a
    /// run as the sandbox side sees it.
    pub fn first_destroy(&self) -> tokio::task::JoinHandle<Duration> {
        let emulator = self.emulator.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            while emulator.stats().killed == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            start.elapsed()
        })
    }

    /// The variables that point a door (or `ds`) at this emulator, with the
    /// test keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("E2B_API_URL", self.url.clone()),
            ("E2B_SANDBOX_URL", self.url.clone()),
            ("E2B_API_KEY", E2B_KEY.to_owned()),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_owned()),
        ]
    }
}

/// `e2b-emulator --port 0 --runner-dir runner`, for more arguments.
pub fn binary_command() -> Command {
    let mut command = Command::new(binary());
    command
        .args(["--port", "0", "--api-key", E2B_KEY, "--runner-dir"])
        .arg(runner_dir());
    command
}

/// `e2b-emulator` with its sandboxes under `work_root`, plus `args`.
pub fn binary_command_in(work_root: &Path, args: &[&str]) -> Command {
    let mut command = binary_command();
    command.arg("--work-root").arg(work_root).args(args);
    command
}

/// Starts the binary and reads the address it prints.
pub async fn start_binary(command: Command) -> (Process, String) {
    Process::start("e2b-emulator", command, READY_WITHIN, process::listening_on).await
}

/// [`start_binary`] for tests without a runtime.
pub fn start_binary_blocking(command: Command) -> (Process, String) {
    Process::start_blocking("e2b-emulator", command, READY_WITHIN, process::listening_on)
}

const READY_WITHIN: Duration = Duration::from_secs(30);
