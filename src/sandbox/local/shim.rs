//! The first program every sandboxed process runs, inside the sandbox.
//!
//! The `ds` binary (or the emulator's) is bound read-only into each sandbox
//! at [`SHIM_PATH`] and run as `SHIM_PATH __sandbox-shim ...`. It does the
//! part of confinement that must happen inside, after the namespaces are
//! entered and the uid is the sandbox user's:
//!
//! - sets the sandbox's resource limits ([`Limits`] as rlimits; the number
//!   of processes counts per user namespace, so it caps this sandbox only);
//! - sets `no_new_privs` and installs the [`seccomp`] filter;
//! - then either becomes the sandbox's **init** (`init`): it listens on
//!   `127.0.0.1:<port>` in the sandbox's own network namespace and carries
//!   each connection to the host's egress proxy over the Unix socket bound
//!   into the sandbox, the sandbox's only way out; or **execs** the
//!   requested program (`exec`).
//!
//! The shim never sees a key: keys are not in its arguments, and the
//! environment it passes on is the one the host chose.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use rustix::process::{Resource, Rlimit};

use super::seccomp;
use crate::sandbox::Limits;

/// The argument that selects the shim in `ds` and the emulator.
pub const SHIM_COMMAND: &str = "__sandbox-shim";
/// Where the shim is bound inside every sandbox.
pub(crate) const SHIM_PATH: &str = "/opt/sandstorm/shim";
/// What the init prints once its bridge listens.
pub(crate) const READY: &str = "sandstorm-sandbox-ready";

/// Runs the shim with the arguments after [`SHIM_COMMAND`]. Never returns
/// on a successful `exec`.
pub fn main(args: &[OsString]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // stderr is the process's own, which the host relays.
            let _ = writeln!(std::io::stderr(), "sandstorm sandbox: {message}");
            ExitCode::from(127)
        }
    }
}

fn run(args: &[OsString]) -> Result<(), String> {
    let args: Vec<&str> = args
        .iter()
        .map(|a| a.to_str().ok_or("arguments must be UTF-8"))
        .collect::<Result<_, _>>()?;
    match args.as_slice() {
        ["init", limits, port, socket] => {
            // The init lives as long as the sandbox and runs no agent code:
            // nothing in the sandbox may open its /proc entries.
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
                .map_err(|e| format!("cannot make the init undumpable: {e}"))?;
            confine(&parse_limits(limits)?)?;
            let port: u16 = port.parse().map_err(|_| "bad bridge port")?;
            bridge(port, socket)
        }
        ["exec", limits, cwd, "--", program, rest @ ..] => {
            confine(&parse_limits(limits)?)?;
            let error = std::process::Command::new(program)
                .args(rest)
                .current_dir(cwd)
                .exec();
            Err(format!("cannot run {program}: {error}"))
        }
        _ => Err(
            "usage: __sandbox-shim init LIMITS PORT SOCKET | exec LIMITS CWD -- PROGRAM ARGS..."
                .to_owned(),
        ),
    }
}

/// The shim's argument for `limits`: `memory,processes,disk,cpu`.
pub(crate) fn format_limits(limits: &Limits) -> String {
    format!(
        "{},{},{},{}",
        limits.memory_bytes, limits.processes, limits.disk_bytes, limits.cpu_seconds
    )
}

fn parse_limits(text: &str) -> Result<Limits, String> {
    let numbers: Vec<u64> = text
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad limits {text:?}"))?;
    match numbers.as_slice() {
        [memory_bytes, processes, disk_bytes, cpu_seconds] => Ok(Limits {
            memory_bytes: *memory_bytes,
            processes: *processes,
            disk_bytes: *disk_bytes,
            cpu_seconds: *cpu_seconds,
        }),
        _ => Err(format!("bad limits {text:?}")),
    }
}

/// Limits, then `no_new_privs` and seccomp: from here on nothing this
/// process or its children do can widen them.
fn confine(limits: &Limits) -> Result<(), String> {
    // Memory as data segment size rather than address space: V8 and
    // WebAssembly reserve far more address space than they ever touch,
    // and RLIMIT_DATA counts only memory a process can write.
    let caps = [
        (Resource::Data, limits.memory_bytes, "memory"),
        (Resource::Nproc, limits.processes, "processes"),
        (Resource::Fsize, limits.disk_bytes, "file size"),
        (Resource::Cpu, limits.cpu_seconds, "CPU time"),
        (Resource::Core, 0, "core dumps"),
    ];
    for (resource, value, name) in caps {
        let current = rustix::process::getrlimit(resource);
        // Never raise a limit the host already set lower.
        let lower = |old: Option<u64>| Some(old.map_or(value, |old| old.min(value)));
        let new = Rlimit {
            current: lower(current.current),
            maximum: lower(current.maximum),
        };
        rustix::process::setrlimit(resource, new)
            .map_err(|e| format!("cannot set the {name} limit: {e}"))?;
    }
    seccomp::install()
}

/// Listens on the sandbox's loopback and carries each connection to the
/// host's egress proxy. Prints [`READY`] once listening; runs until the
/// sandbox is destroyed.
fn bridge(port: u16, socket: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start the bridge: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        println!("{READY}");
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            // Bytes are relayed as they come: with Nagle on, a small write
            // after an unacknowledged one waits for the client's delayed
            // ACK, 40 ms, which the model endpoint's benchmark caught in
            // 4% of calls. A refusal only costs the latency back.
            let _ = inbound.set_nodelay(true);
            let socket = socket.to_owned();
            tokio::spawn(async move {
                // A refused connection reaches the client as a reset: the
                // host side is gone, which only happens during destroy.
                if let Ok(mut outbound) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_survive_the_command_line() {
        let limits = Limits {
            memory_bytes: 1,
            processes: 2,
            disk_bytes: 3,
            cpu_seconds: 4,
        };
        assert_eq!(parse_limits(&format_limits(&limits)), Ok(limits));
        assert!(parse_limits("1,2,3").is_err());
        assert!(parse_limits("1,2,3,x").is_err());
    }
}
