//! What the serverless door tests (`lambda_door`, `vercel_door`,
//! `secrets`, `sam_template`) share: the environment of a door, its tools
//! as processes, the checks of a streamed run, and `ds schedules`.

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use super::emulator::{self, RunningEmulator};
use super::model_server::ModelServer;
use super::process::{self, Process};
use super::runner::{OFFLINE_ENV, require_node_modules};
use super::stream::Stream;

/// How long the leak check waits for the last kill.
pub const SETTLE: Duration = Duration::from_secs(15);

/// The variables that point a door at `e2b`, with the test keys in the
/// environment and anonymous queries allowed.
pub fn door_env(e2b: &RunningEmulator) -> Vec<(&'static str, String)> {
    let mut env = e2b.env();
    env.push(("SANDSTORM_ALLOW_ANONYMOUS", "1".to_owned()));
    env
}

/// An E2B emulator whose sandboxes run the real runner and Agent SDK,
/// which reach `model` (the scripted model) as a real VM reaches
/// Anthropic, and the variables that point a door at both: [`door_env`],
/// the model's URL, and the settings that keep the SDK offline, forwarded
/// into the sandbox as an operator would (`SANDSTORM_FORWARD_ENV`).
pub async fn real_runner_env(
    model: &ModelServer,
) -> (RunningEmulator, Vec<(&'static str, String)>) {
    require_node_modules();
    let mut options = emulator::options();
    options.egress_open = Some(format!("127.0.0.1:{}", model.port()));
    let e2b = emulator::start_with(options).await;
    let mut env = door_env(&e2b);
    env.push(("ANTHROPIC_BASE_URL", model.url()));
    // The sandbox sets IS_SANDBOX itself.
    let offline: Vec<(&'static str, &'static str)> = OFFLINE_ENV
        .iter()
        .copied()
        .filter(|(name, _)| *name != "IS_SANDBOX")
        .collect();
    let names: Vec<&str> = offline.iter().map(|(name, _)| *name).collect();
    env.push(("SANDSTORM_FORWARD_ENV", names.join(",")));
    env.extend(
        offline
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    (e2b, env)
}

/// The text of every agent request `model` got, to look for a prompt in.
pub fn agent_texts(model: &ModelServer) -> String {
    model
        .agent_requests()
        .iter()
        .map(|r| r.body["messages"].to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `ds schedules ARGS` in `dir`, with none of this process's environment
/// but PATH: its exit code and what it printed.
pub fn ds_schedules(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ds"));
    command
        .arg("schedules")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    let (status, stdout, stderr) = process::run(command, Duration::from_secs(60));
    (status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// `program` with a clean environment plus `env`, and `RUST_LOG=info`.
///
/// PATH, HOME and the Cargo and Rust variables are kept: a tool that runs
/// cargo (`cargo lambda watch`) must build with the toolchain, target
/// directory and flags of this test run, or it rebuilds everything.
pub fn door_command<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    env: impl IntoIterator<Item = (K, V)>,
) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        let keep = name.to_str().is_some_and(|n| {
            matches!(n, "PATH" | "HOME") || n.starts_with("CARGO") || n.starts_with("RUST")
        });
        if keep {
            command.env(name, value);
        }
    }
    command.env("RUST_LOG", "info").envs(env);
    command
}

/// A port to tell a tool that cannot listen on port 0 and say which port
/// it got (`cargo lambda watch` hands the port it was given to the function
/// it starts). It is not probed, and so not handed on from a socket of
/// ours: it is drawn below the kernel's ephemeral range, where port-0 binds
/// (every other server of the tests) never land. A fixed-port service could
/// still hold it; the caller then starts the tool again on another.
pub fn port_below_ephemeral_range() -> u16 {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let first: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    // Clear of the well-known and common development ports.
    let low = 20_000.min(first / 2);
    let span = u64::from(first - low);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mixed = u64::from(seed ^ std::process::id().rotate_left(16));
    // `mixed % span` is below `span`, which came from a u16.
    low + u16::try_from(mixed % span).expect("below a u16 span")
}

/// A Vercel function binary (`vercel-query`, `vercel-health`) with `env`,
/// as Vercel runs it: an HTTP server on `127.0.0.1:$VERCEL_DEV_PORT`, here 0.
/// The runtime says `Dev server listening: 0`, the port it was given, so
/// the one it got is read from the kernel once it has said that.
pub async fn start_vercel_function<'a>(
    binary: &str,
    env: impl IntoIterator<Item = (&'a str, String)>,
) -> (Process, String) {
    let mut command = door_command(binary, env);
    command.env("VERCEL_DEV_PORT", "0");
    let (proc, ()) = Process::start(
        "vercel function",
        command,
        Duration::from_secs(30),
        |line| line.contains("Dev server listening").then_some(()),
    )
    .await;
    let ports = process::listening_ports(proc.pid());
    let [port] = ports[..] else {
        panic!("the function listens on ports {ports:?}, not one");
    };
    (proc, format!("http://127.0.0.1:{port}"))
}

impl Stream {
    /// Streaming, shown by timing: the first event reached the client
    /// while the run was still going, well before the sandbox was destroyed
    /// (which a run does after its last line and before its body ends). A
    /// buffering door delivers nothing until the whole body is done, so its
    /// first event comes after the destroy.
    pub fn assert_streamed(&self, run_ended: Duration) {
        let first = self.first_event.expect("at least one event");
        assert!(
            first + Duration::from_millis(200) < run_ended,
            "the first event came at {first:?}, the run ended at {run_ended:?} and the body at \
             {:?}: the body was buffered, not streamed",
            self.ended
        );
    }

    /// Every synthetic runner line is one event, in order, the last a result.
    pub fn assert_complete(&self, lines: u64) {
        assert_eq!(self.events.len() as u64, lines, "one event per runner line");
        for (i, event) in self.events.iter().enumerate() {
            assert_eq!(event["seq"], i as u64, "event {i} out of order: {event}");
        }
        assert_eq!(self.last()["type"], "result");
        let done = self
            .closing
            .as_ref()
            .expect("the stream ends with its done event");
        assert_eq!(done["status"], "success", "{done}");
    }

    /// What both doors must show for a whole synthetic run of `lines`: the
    /// run ended (`destroyed` resolved), the answer was a 200 event stream,
    /// complete and in order, its first event came before the run ended,
    /// and the one sandbox was killed. `log` is the door's output, for the
    /// failure message.
    pub async fn assert_whole_run(
        &self,
        e2b: &RunningEmulator,
        destroyed: tokio::task::JoinHandle<Duration>,
        lines: u64,
        door: &str,
        log: impl FnOnce() -> String,
    ) {
        let run_ended = tokio::time::timeout(Duration::from_secs(60), destroyed)
            .await
            .expect("the sandbox is destroyed")
            .expect("the run ends");
        assert_eq!(self.status, 200, "{}", log());
        assert_eq!(self.content_type, "text/event-stream");
        self.assert_complete(lines);
        self.assert_streamed(run_ended);
        let stats = e2b.settled(SETTLE).await;
        assert_eq!((stats.created, stats.killed), (1, 1));
        eprintln!(
            "{door}: first event at {:?}, run ended at {run_ended:?}, body ended at {:?}",
            self.first_event, self.ended
        );
    }
}
