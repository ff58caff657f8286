//! `moto_server` (PyPI `moto[server]`) on loopback: the AWS services the
//! serverless doors call (Secrets Manager, DynamoDB), with real SDK
//! requests.

use std::time::Duration;

use super::doors::door_command;
use super::process::Process;
use super::tools::{MOTO_PIP, tool};

/// A running `moto_server`, stopped when dropped.
pub struct Moto {
    /// Its base URL, an endpoint for any service.
    pub url: String,
    proc: Process,
}

impl Moto {
    /// What it logged.
    pub fn output(&self) -> String {
        self.proc.output()
    }
}

/// `moto_server` on port 0; it prints the address it got
/// (` * Running on http://127.0.0.1:PORT`).
pub async fn start() -> Moto {
    let mut command = door_command(tool("moto_server", MOTO_PIP), None::<(&str, &str)>);
    command.args(["-H", "127.0.0.1", "-p", "0"]);
    let (proc, url) = Process::start("moto_server", command, Duration::from_secs(60), |line| {
        let (_, rest) = line.split_once("Running on ")?;
        rest.split_whitespace().next().map(str::to_owned)
    })
    .await;
    Moto { url, proc }
}

/// The variables that point a door's AWS SDK at `endpoint`, with dummy
/// credentials (moto checks no signature).
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ]
}
