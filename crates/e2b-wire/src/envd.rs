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
    pub process: ProcessConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, Default)]
pub struct ProcessConfig {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
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
    pub event: ProcessEventJson,
}

/// Exactly one of the fields is set (a proto `oneof`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct ProcessEventJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepAlive>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct StartEvent {
    #[serde(default)]
    pub pid: u32,
}

/// Output bytes, base64 in JSON.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct DataEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// Omitted for 0 (proto3 JSON); -1 when a signal ended the process.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct KeepAlive {}

/// The payload of the end-of-stream frame.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct EndOfStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
}

/// A Connect error: in an end-of-stream frame, or the body of a failed unary
/// call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// `POST /process.Process/SendSignal` request (unary, unframed JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    pub signal: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `POST /process.Process/SendSignal` answer: empty on success.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct SendSignalResponse {}

/// `POST /process.Process/List` answer (unary): the running processes.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ListResponse {
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// One running process as `List` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
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
    #[serde(rename = "type")]
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
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
