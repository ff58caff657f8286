//! envd, the daemon inside each sandbox: files over plain HTTP, processes
//! over Connect (`spec/envd/envd.yaml`, `spec/envd/process/process.proto`).

use reqwest::header::CONTENT_TYPE;
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, StatusCode};

use super::E2bSandbox;
use super::http::{self, PROVIDER};
use super::process::process_stream;
use crate::connect::{FLAG_MESSAGE, encode};
use crate::envd::{ENVD_PORT, ProcessConfig, StartRequest};
use crate::sandbox::{ProcessSpec, ProcessStream, SandboxError, SandboxFile};

const CONNECT_JSON: &str = "application/connect+json";

/// envd before 0.4.0 had no default user; the SDKs name `user` explicitly
/// for those, and leave the choice to envd (the template's user) after.
const ENVD_DEFAULT_USER: (u64, u64, u64) = (0, 4, 0);
const DEFAULT_USER: &str = "user";

/// Connect caps `Connect-Timeout-Ms` at ten digits.
const MAX_CONNECT_TIMEOUT_MS: u128 = 9_999_999_999;

impl E2bSandbox {
    /// Headers that route a request to this sandbox's envd and authorize it.
    fn envd(&self, request: RequestBuilder) -> RequestBuilder {
        let request = request
            .header("E2b-Sandbox-Id", &self.id)
            .header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        match &self.access_token {
            Some(token) => request.header("X-Access-Token", token.expose()),
            None => request,
        }
    }

    /// `username=user` for an old envd, nothing for a current one.
    fn user_query(&self) -> &'static [(&'static str, &'static str)] {
        if self.legacy_user {
            &[("username", DEFAULT_USER)]
        } else {
            &[]
        }
    }

    fn envd_failure(&self, op: &'static str, status: StatusCode, body: &[u8]) -> SandboxError {
        let secrets: Vec<_> = self.secrets().collect();
        http::status_error(op, status, body, false, &secrets)
    }

    /// One multipart `POST /files` for every file: with more than one part
    /// envd takes each part's filename as its full destination path, and
    /// with exactly one the `path` query must name it (as the SDKs send).
    pub(super) async fn upload_files(&self, files: Vec<SandboxFile>) -> Result<(), SandboxError> {
        if files.is_empty() {
            return Ok(());
        }
        let url = format!("{}/files", self.envd_url);
        let single_path = match files.as_slice() {
            [only] => Some(only.path.clone()),
            _ => None,
        };
        let form = || {
            files.iter().fold(Form::new(), |form, file| {
                let part = Part::stream_with_length(
                    reqwest::Body::from(file.content.clone()),
                    file.content.len() as u64,
                )
                .file_name(file.path.clone());
                form.part("file", part)
            })
        };
        let send = || {
            let mut request = self
                .envd(self.shared.http.post(&url))
                .query(self.user_query())
                .multipart(form());
            if let Some(path) = &single_path {
                request = request.query(&[("path", path)]);
            }
            http::call(request, "upload", self.shared.options.request_timeout)
        };
        // Writing the same files twice is harmless, so a dropped connection
        // earns one more try; an answer from envd is final.
        let (status, body) = match send().await {
            Err(SandboxError::Transport { message, .. }) => {
                tracing::warn!(sandbox = %self.id, error = %message, "upload failed, retrying once");
                send().await?
            }
            other => other?,
        };
        if !status.is_success() {
            return Err(self.envd_failure("upload", status, &body));
        }
        Ok(())
    }

    /// `GET /files?path=...`: the file's raw bytes.
    pub(super) async fn download(&self, path: &str) -> Result<bytes::Bytes, SandboxError> {
        let request = self
            .envd(self.shared.http.get(format!("{}/files", self.envd_url)))
            .query(&[("path", path)])
            .query(self.user_query());
        let (status, body) =
            http::call(request, "read_file", self.shared.options.request_timeout).await?;
        if !status.is_success() {
            return Err(self.envd_failure("read_file", status, &body));
        }
        Ok(body)
    }

    /// `POST /process.Process/Start`: a Connect server stream with the JSON
    /// codec. The process is argv, never a shell line.
    pub(super) async fn start_process(
        &self,
        process: ProcessSpec,
    ) -> Result<ProcessStream, SandboxError> {
        let options = &self.shared.options;
        let message = StartRequest {
            process: ProcessConfig {
                cmd: process.cmd,
                args: process.args,
                envs: process.envs,
                cwd: Some(process.cwd).filter(|cwd| !cwd.is_empty()),
            },
            stdin: None,
            tag: None,
        };
        let payload = serde_json::to_vec(&message).map_err(|e| SandboxError::Other {
            op: "start",
            message: e.to_string(),
        })?;
        let mut request = self
            .envd(
                self.shared
                    .http
                    .post(format!("{}/process.Process/Start", self.envd_url)),
            )
            .header(CONTENT_TYPE, CONNECT_JSON)
            .header("Connect-Protocol-Version", "1")
            .header(
                "Keepalive-Ping-Interval",
                options.keepalive_interval.as_secs().max(1).to_string(),
            )
            .body(encode(FLAG_MESSAGE, &payload));
        // envd ends the process when this runs out: it is the process's
        // lifetime, not a limit on us reading the stream.
        if let Some(limit) = process.timeout {
            let ms = limit.as_millis().clamp(1, MAX_CONNECT_TIMEOUT_MS);
            request = request.header("Connect-Timeout-Ms", ms.to_string());
        }
        if self.legacy_user {
            // "user:" in Basic form, which is how old envd learns the user.
            request = request.header("Authorization", "Basic dXNlcjo=");
        }

        let response = http::open(request, "start", options.request_timeout).await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = http::error_body(response).await;
            return Err(self.envd_failure("start", status, &body));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(CONNECT_JSON);
        if !content_type.starts_with(CONNECT_JSON) {
            return Err(SandboxError::Other {
                op: "start",
                message: format!(
                    "{PROVIDER} answered with content type {content_type}, not {CONNECT_JSON}"
                ),
            });
        }
        Ok(process_stream(
            response.bytes_stream(),
            options.stream_idle_timeout,
        ))
    }
}

/// Whether envd `version` predates default users. An unreadable version is
/// taken as current: every envd E2B runs today is newer than 0.4.0.
pub(super) fn needs_explicit_user(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) => {
            (major, minor, patch) < ENVD_DEFAULT_USER
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_envd_older_than_0_4_0_gets_an_explicit_user() {
        assert!(needs_explicit_user("0.3.9"));
        assert!(needs_explicit_user("0.1.0"));
        assert!(!needs_explicit_user("0.4.0"));
        assert!(!needs_explicit_user("0.5.7"));
        assert!(!needs_explicit_user("1.0.0"));
        assert!(!needs_explicit_user(""));
        assert!(!needs_explicit_user("weird"));
    }

    #[test]
    fn the_basic_user_header_is_user_colon() {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode("dXNlcjo=")
            .expect("base64");
        assert_eq!(decoded, b"user:");
    }
}
