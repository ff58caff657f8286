//! The E2B emulator in-process on loopback, and `ds serve` as a real
//! process: the two pieces most integration tests start.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandstorm::emulator::{Emulator, EmulatorOptions, Knobs};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::runner::runner_dir;

/// A key of E2B's shape, which the emulator accepts.
pub const E2B_KEY: &str = "e2b_0123456789abcdef";

/// An emulator serving on loopback until the test's runtime ends.
pub struct RunningEmulator {
    pub url: String,
    pub emulator: Emulator,
}

/// Starts the emulator with `knobs`; its sandboxes are made under
/// `work_root` (the system temp folder when `None`).
pub async fn start(knobs: Knobs, work_root: Option<&Path>) -> RunningEmulator {
    let mut options = EmulatorOptions::new(runner_dir());
    options.knobs = knobs;
    options.work_root = work_root.map(Path::to_owned);
    let emulator = Emulator::new(options)
        .expect("start the E2B emulator (is bubblewrap installed? apt-get install bubblewrap)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the emulator to 127.0.0.1:0");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("emulator address")
    );
    let app = sandstorm::emulator::app(emulator.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    RunningEmulator { url, emulator }
}

/// A `ds serve` process that printed the address it listens on.
pub struct Listening {
    pub url: String,
    /// Everything it logged on stderr, for assertions and failure messages.
    pub log: Arc<Mutex<String>>,
    pub child: Child,
}

/// Spawns `command` (a `ds serve --port 0 ...`) and waits until it says
/// where it listens. Its stderr keeps being read into `log`, so the server
/// never blocks on a full pipe.
pub async fn listen(mut command: Command) -> Listening {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn ds serve");
    let stderr = child.stderr.take().expect("ds serve stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read ds serve stderr") {
            if let Some(url) = line.strip_prefix("listening on ") {
                return url.to_owned();
            }
            push_line(&log, &line);
        }
        panic!("ds serve exited before listening:\n{}", lock(&log));
    })
    .await
    .expect("ds serve listens within 30 s");
    let sink = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            push_line(&sink, &line);
        }
    });
    Listening { url, log, child }
}

pub fn lock(log: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn push_line(log: &Mutex<String>, line: &str) {
    let mut log = lock(log);
    log.push_str(line);
    log.push('\n');
}
