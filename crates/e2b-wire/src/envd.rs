//! envd, the daemon inside each sandbox: its process messages in the
//! Connect JSON codec (`spec/envd/process/process.proto`) and the answer of
//! its files endpoint (`spec/envd/envd.yaml`).
//!
//! Shared by the E2B client, which sends [`StartRequest`] and reads
//! [`StartResponse`] frames, and by the E2B emulator, which does the reverse.
//! Field names follow proto3 JSON: lowerCamelCase, zero values omitted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The port envd listens on inside every sandbox.
pub const ENVD_PORT: u16 = 49983;

/// `POST /process.Process/Start` request message.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StartRequest {
    /// What to run.
    pub process: ProcessConfig,
    /// Whether to keep the process's stdin open for writing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// A name to find the process by later (`SendSignal`, `Connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A command to start: program, arguments, environment and working folder.
/// `Debug` shows the environment's variable names only: they carry API keys.
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct ProcessConfig {
    /// The program, looked up on `PATH`.
    pub cmd: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables on top of the sandbox's defaults.
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// The working folder; envd's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

impl std::fmt::Debug for ProcessConfig {
    // envs carry API keys: print their names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessConfig")
            .field("cmd", &self.cmd)
            .field("args", &self.args)
            .field("envs", &self.envs.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// One streamed response message of `Start`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartResponse {
    /// What happened.
    pub event: ProcessEventJson,
}

/// Exactly one of the fields is set (a proto `oneof`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct ProcessEventJson {
    /// The process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartEvent>,
    /// It wrote output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataEvent>,
    /// It ended; the last event of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndEvent>,
    /// Nothing happened; sent so idle streams stay open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepAlive>,
}

/// The process has started.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct StartEvent {
    /// Its process id inside the sandbox.
    #[serde(default)]
    pub pid: u32,
}

/// Output bytes, base64 in JSON.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct DataEvent {
    /// Bytes written to stdout, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Bytes written to stderr, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Bytes written to a pseudo-terminal, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<String>,
}

/// The process has ended.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// Omitted for 0 (proto3 JSON); -1 when a signal ended the process.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exit_code: i32,
    /// Whether the process has exited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
    /// Its status as text, e.g. `exit status 3` or `signal: killed`.
    #[serde(default)]
    pub status: String,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// A keep-alive: no content.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct KeepAlive {}

/// The payload of the end-of-stream frame.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct EndOfStream {
    /// Set when the stream ended in an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
}

/// A Connect error: in an end-of-stream frame, or the body of a failed unary
/// call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectError {
    /// The Connect error code, e.g. `not_found` or `deadline_exceeded`.
    pub code: String,
    /// What went wrong, for people.
    #[serde(default)]
    pub message: String,
}

/// `POST /process.Process/SendSignal` request (unary, unframed JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendSignalRequest {
    /// The process to signal.
    pub process: ProcessSelector,
    /// The signal, as proto's enum name (`SIGNAL_SIGTERM`, `SIGNAL_SIGKILL`).
    pub signal: String,
}

/// Which process: by pid or by tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSelector {
    /// The process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The tag given at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `POST /process.Process/Connect` request: attach to a running process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Which process.
    pub process: ProcessSelector,
}

/// `POST /process.Process/SendSignal` answer: empty on success.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct SendSignalResponse {}

/// `POST /process.Process/List` answer (unary): the running processes.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ListResponse {
    /// One entry per process.
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// One running process as `List` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// How it was started.
    pub config: ProcessConfig,
    /// Its process id inside the sandbox.
    pub pid: u32,
    /// The tag it was started with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// One written file in the answer of `POST /files`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryInfo {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// The last component of `path`.
    pub name: String,
    /// A file or a folder.
    #[serde(rename = "type")]
    pub kind: EntryKind,
}

/// What a filesystem entry is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_event_omits_zero_values_like_proto_json() {
        let ok = EndEvent {
            exit_code: 0,
            exited: true,
            status: "exit status 0".into(),
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).expect("serializes"),
            r#"{"exited":true,"status":"exit status 0"}"#
        );
        let parsed: EndEvent = serde_json::from_str(
            r#"{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}"#,
        )
        .expect("parses");
        assert_eq!(parsed.exit_code, 3);
    }

    #[test]
    fn process_config_debug_shows_variable_names_not_values() {
        let config = ProcessConfig {
            cmd: "node".into(),
            envs: BTreeMap::from([("ANTHROPIC_API_KEY".into(), "sk-ant-secret".into())]),
            ..Default::default()
        };
        let debug = format!("{config:?}");
        assert!(debug.contains("ANTHROPIC_API_KEY"), "{debug}");
        assert!(!debug.contains("sk-ant-secret"), "{debug}");
    }
}
