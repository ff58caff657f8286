//! Processes in a sandbox, through the [`Sandbox`] trait, whatever the
//! provider: start one, read it to its end, find what it left on the host.

use std::time::Duration;

use futures::StreamExt;
use sandstorm::sandbox::{
    ExitStatus, ProcessEvent, ProcessSpec, ProcessStream, Sandbox, SandboxError,
};

/// A liveness guard, not a timing assertion: a hung process fails the test
/// instead of blocking CI.
const GUARD: Duration = Duration::from_secs(60);

/// `/bin/sh -c script`.
pub fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..ProcessSpec::default()
    }
}

#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<ExitStatus>,
    pub error: Option<SandboxError>,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.exit.as_ref().and_then(|e| e.code)
    }
}

pub async fn collect(mut stream: ProcessStream) -> Output {
    let mut out = Output::default();
    let drain = async {
        while let Some(event) = stream.next().await {
            match event {
                Ok(ProcessEvent::Stdout(b)) => out.stdout.extend_from_slice(&b),
                Ok(ProcessEvent::Stderr(b)) => out.stderr.extend_from_slice(&b),
                Ok(ProcessEvent::Exited(status)) => {
                    out.exit = Some(status);
                    assert!(
                        stream.next().await.is_none(),
                        "Exited must be the last event"
                    );
                    break;
                }
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
    };
    tokio::time::timeout(GUARD, drain)
        .await
        .expect("process did not finish");
    out
}

pub async fn run(sandbox: &dyn Sandbox, spec: ProcessSpec) -> Output {
    collect(sandbox.start(spec).await.expect("start")).await
}

/// Host pids whose command line is `needle` (argv joined by spaces).
pub fn host_pids_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .trim_end()
                == needle
        {
            found.push(pid);
        }
    }
    found
}

/// The real uid of host process `pid`.
pub fn host_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .expect("a Uid line")
}

/// Host processes whose command line is `needle` (argv joined by spaces).
pub fn host_processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.trim_end() == needle {
                found.push(cmdline);
            }
        }
    }
    found
}
