//! envd, the daemon inside each sandbox: files over plain HTTP, processes
//! over Connect (`spec/envd/envd.yaml`, `spec/envd/process/process.proto`).

use e2b_wire::connect::{CONNECT_JSON, FLAG_MESSAGE, encode};
use e2b_wire::envd::{ConnectRequest, ENVD_PORT, ProcessConfig, ProcessSelector, StartRequest};
use http_body_util::BodyExt as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::multipart::{Form, Part};

use super::E2bSandbox;
use super::http::{self, PROVIDER};
use super::process::{process_stream, process_stream_with_pid};
use crate::sandbox::{ProcessRef, ProcessSpec, ProcessStream, SandboxError, SandboxFile};

/// envd before 0.4.0 had no default user; the SDKs name `user` explicitly
/// for those, and leave the choice to envd (the template's user) after.
const ENVD_DEFAULT_USER: (u64, u64, u64) = (0, 4, 0);
const DEFAULT_USER: &str = "user";
/// `DEFAULT_USER` with an empty password in HTTP Basic form (`user:`),
/// which is how an old envd learns the user of a process.
const LEGACY_USER_AUTHORIZATION: &str = "Basic dXNlcjo=";
/// `root:` in HTTP Basic form: envd runs the process as root.
const ROOT_AUTHORIZATION: &str = "Basic cm9vdDo=";

/// Who a process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunAs {
    /// The template's user, `user`: everything the agent runs.
    User,
    /// root: only the model proxy, which must be out of the agent's reach.
    Root,
}

/// Connect caps `Connect-Timeout-Ms` at ten digits.
const MAX_CONNECT_TIMEOUT_MS: u128 = 9_999_999_999;

impl E2bSandbox {
    /// Headers that route a request to this sandbox's envd and authorize it.
    /// The token is marked sensitive, so no HTTP library prints it.
    fn envd_headers(&self, op: &'static str) -> Result<HeaderMap, SandboxError> {
        let invalid = |what: &str| SandboxError::Other {
            op,
            message: format!("the sandbox's {what} is not a valid HTTP header value"),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "e2b-sandbox-id",
            HeaderValue::from_str(&self.id).map_err(|_| invalid("id"))?,
        );
        headers.insert("e2b-sandbox-port", HeaderValue::from(ENVD_PORT));
        if let Some(token) = &self.access_token {
            let mut value =
                HeaderValue::from_str(token.expose()).map_err(|_| invalid("access token"))?;
            value.set_sensitive(true);
            headers.insert("x-access-token", value);
        }
        Ok(headers)
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
    /// `landed`, when given, is the upload's last file, whose presence
    /// means the whole upload was written (see `launch`): an attempt whose
    /// answer was lost but which wrote it is not repeated, since a process
    /// may already be reading the files.
    pub(super) async fn upload_files(
        &self,
        files: Vec<SandboxFile>,
        landed: Option<&str>,
    ) -> Result<(), SandboxError> {
        if files.is_empty() {
            return Ok(());
        }
        let url = format!("{}/files", self.envd_url);
        let headers = self.envd_headers("upload")?;
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
                .file_name(file.path.clone())
                // As the JS SDK labels each part (the Python SDK guesses
                // from the name); envd writes the bytes as they are.
                .headers(reqwest::header::HeaderMap::from_iter([(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/octet-stream"),
                )]));
                form.part("file", part)
            })
        };
        let send = || {
            let mut request = self
                .shared
                .http
                .post(&url)
                .headers(headers.clone())
                .query(self.user_query())
                .multipart(form());
            if let Some(path) = &single_path {
                request = request.query(&[("path", path)]);
            }
            http::call(request, "upload", self.shared.options.request_timeout)
        };
        // Writing the same files twice is harmless, so a dropped connection
        // earns one more try; an answer from envd is final.
        let answer = match send().await {
            Err(SandboxError::Transport { message, .. }) => {
                if let Some(last) = landed
                    && self.download(last).await.is_ok()
                {
                    tracing::warn!(sandbox = %self.id, error = %message, "upload's answer was lost, but every file landed");
                    return Ok(());
                }
                tracing::warn!(sandbox = %self.id, error = %message, "upload failed, retrying once");
                send().await?
            }
            other => other?,
        };
        if !answer.status.is_success() {
            return Err(self.envd_failure("upload", answer.status, &answer.body));
        }
        Ok(())
    }

    /// `GET /files?path=...`: the file's raw bytes, over HTTP/1.1 (see
    /// [`http::file_client`]).
    pub(super) async fn download(&self, path: &str) -> Result<bytes::Bytes, SandboxError> {
        self.download_as(path, RunAs::User).await
    }

    /// [`download`](Self::download) as `run_as`: root reads what only root
    /// writes (the model proxy's spend records) as envd's root.
    pub(super) async fn download_as(
        &self,
        path: &str,
        run_as: RunAs,
    ) -> Result<bytes::Bytes, SandboxError> {
        let mut request = self
            .shared
            .files
            .get(format!("{}/files", self.envd_url))
            .headers(self.envd_headers("read_file")?)
            .query(&[("path", path)]);
        request = match run_as {
            RunAs::Root => request.header(AUTHORIZATION, ROOT_AUTHORIZATION),
            RunAs::User => request.query(self.user_query()),
        };
        let answer = http::call(request, "read_file", self.shared.options.request_timeout).await?;
        if !answer.status.is_success() {
            return Err(self.envd_failure("read_file", answer.status, &answer.body));
        }
        Ok(answer.body)
    }

    /// `POST /process.Process/Start`: a Connect server stream with the JSON
    /// codec, read through the stream client (see `stream_client` for why
    /// not reqwest). The process is argv, never a shell line.
    pub(super) async fn start_process(
        &self,
        process: ProcessSpec,
    ) -> Result<ProcessStream, SandboxError> {
        Ok(self.start_process_as(process, RunAs::User).await?.1)
    }

    /// [`start_process`](Self::start_process) as `run_as`, with the
    /// process's pid inside the sandbox (from the stream's first event).
    pub(super) async fn start_process_as(
        &self,
        process: ProcessSpec,
        run_as: RunAs,
    ) -> Result<(u32, ProcessStream), SandboxError> {
        self.start_call(process, run_as)?.send().await
    }

    /// [`start_process_as`](Self::start_process_as), made ready to be sent
    /// later or from a task of its own.
    pub(super) fn start_call(
        &self,
        process: ProcessSpec,
        run_as: RunAs,
    ) -> Result<ProcessCall, SandboxError> {
        let message = StartRequest {
            process: ProcessConfig {
                cmd: process.cmd,
                args: process.args,
                envs: process.envs,
                cwd: Some(process.cwd).filter(|cwd| !cwd.is_empty()),
            },
            // Sent either way, as the SDKs do: without it envd keeps a
            // stdin pipe open that nobody writes to.
            stdin: Some(process.stdin),
            tag: process.tag,
        };
        self.process_call("start", "Start", &message, process.timeout, run_as)
    }

    /// `POST /process.Process/Connect`: the same stream as a start's, for a
    /// process already running (from now on, as envd sends it).
    pub(super) async fn attach_process(
        &self,
        process: ProcessRef,
    ) -> Result<ProcessStream, SandboxError> {
        let process = match process {
            ProcessRef::Pid(pid) => ProcessSelector {
                pid: Some(pid),
                tag: None,
            },
            ProcessRef::Tag(tag) => ProcessSelector {
                pid: None,
                tag: Some(tag),
            },
        };
        let (_, stream) = self
            .process_call(
                "attach",
                "Connect",
                &ConnectRequest { process },
                None,
                RunAs::User,
            )?
            .send()
            .await?;
        Ok(stream)
    }

    /// One of envd's process streams, made ready: `method` of the process
    /// service with `message`, and `lifetime` as the process's deadline
    /// when starting.
    fn process_call(
        &self,
        op: &'static str,
        method: &str,
        message: &impl serde::Serialize,
        lifetime: Option<std::time::Duration>,
        run_as: RunAs,
    ) -> Result<ProcessCall, SandboxError> {
        let options = &self.shared.options;
        let payload = serde_json::to_vec(message).map_err(|e| SandboxError::Other {
            op,
            message: e.to_string(),
        })?;
        let url = format!("{}/process.Process/{method}", self.envd_url);
        let mut request = ::http::Request::post(url)
            .body(encode(FLAG_MESSAGE, &payload))
            .map_err(|e| SandboxError::Other {
                op,
                message: e.to_string(),
            })?;
        let headers = request.headers_mut();
        headers.extend(self.envd_headers(op)?);
        headers.insert(USER_AGENT, HeaderValue::from_static(http::USER_AGENT));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONNECT_JSON));
        headers.insert("connect-protocol-version", HeaderValue::from_static("1"));
        headers.insert(
            "keepalive-ping-interval",
            HeaderValue::from(options.keepalive_interval.as_secs().max(1)),
        );
        // envd ends the process when this runs out: it is the process's
        // lifetime, not a limit on us reading the stream.
        if let Some(limit) = lifetime {
            let ms = limit.as_millis().clamp(1, MAX_CONNECT_TIMEOUT_MS);
            headers.insert(
                "connect-timeout-ms",
                HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
            );
        }
        match run_as {
            RunAs::Root => {
                headers.insert(AUTHORIZATION, HeaderValue::from_static(ROOT_AUTHORIZATION));
            }
            RunAs::User if self.legacy_user => {
                headers.insert(
                    AUTHORIZATION,
                    HeaderValue::from_static(LEGACY_USER_AUTHORIZATION),
                );
            }
            RunAs::User => {}
        }
        Ok(ProcessCall {
            op,
            starts: method == "Start",
            request,
            shared: self.shared.clone(),
            secrets: self.secrets().cloned().collect(),
        })
    }
}

/// One envd process call, ready to send: everything it needs, owned, so it
/// can go out from a task of its own (the model proxy's start, sent while
/// its runner's output is already being read).
pub(super) struct ProcessCall {
    op: &'static str,
    /// A `Start`, whose stream begins with the process's pid; otherwise a
    /// `Connect`.
    starts: bool,
    request: ::http::Request<bytes::Bytes>,
    shared: std::sync::Arc<super::Shared>,
    /// What an error message must never contain.
    secrets: Vec<crate::secret::Secret>,
}

impl ProcessCall {
    /// Sends the call and returns the process's stream, with its pid for a
    /// `Start` (0 for a `Connect`, returned at once).
    pub(super) async fn send(self) -> Result<(u32, ProcessStream), SandboxError> {
        let ProcessCall {
            op,
            starts,
            request,
            shared,
            secrets,
        } = self;
        let options = &shared.options;
        let response = shared
            .streams
            .open(request, op, options.request_timeout)
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = http::error_body(response.into_body().into_data_stream()).await;
            let secrets: Vec<_> = secrets.iter().collect();
            return Err(http::status_error(op, status, &body, false, &secrets));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(CONNECT_JSON);
        if !content_type.starts_with(CONNECT_JSON) {
            return Err(SandboxError::Other {
                op,
                message: format!(
                    "{PROVIDER} answered with content type {content_type}, not {CONNECT_JSON}"
                ),
            });
        }
        let body = response.into_body().into_data_stream();
        if starts {
            process_stream_with_pid(body, options.stream_idle_timeout).await
        } else {
            // A Connect to a quiet process may send nothing for a long
            // while: it is returned at once, without a pid.
            Ok((0, process_stream(body, options.stream_idle_timeout)))
        }
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
    fn the_legacy_authorization_is_the_default_user_in_basic_form() {
        use base64::Engine as _;
        let credentials = LEGACY_USER_AUTHORIZATION
            .strip_prefix("Basic ")
            .expect("a Basic authorization");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .expect("base64");
        assert_eq!(decoded, format!("{DEFAULT_USER}:").as_bytes());
    }
}
