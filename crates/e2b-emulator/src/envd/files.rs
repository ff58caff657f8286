//! `POST /files` (multipart with one or many parts, or octet-stream) and
//! `GET /files`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use e2b_wire::envd::{EntryInfo, EntryKind};
use sandstorm::sandbox::local::FsError;
use serde::Deserialize;

use super::EnvdSandbox;
use crate::stats::route;
use crate::{Emulator, EmulatorError};

/// Relative paths are relative to the user's home, as in envd.
const HOME: &str = "/home/user";

#[derive(Debug, Deserialize)]
pub(super) struct FileQuery {
    path: Option<String>,
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{HOME}/{path}")
    }
}

fn entry_info(path: String) -> EntryInfo {
    let name = path.rsplit('/').next().unwrap_or_default().to_owned();
    EntryInfo {
        path,
        name,
        kind: EntryKind::File,
    }
}

pub(super) async fn upload(
    State(emulator): State<Emulator>,
    EnvdSandbox(entry): EnvdSandbox,
    Query(query): Query<FileQuery>,
    request: Request,
) -> Response {
    emulator.inner.stats.request(route::UPLOAD);
    let (fails, delay) = {
        let mut knobs = emulator.knobs();
        (knobs.take_upload_failure(), knobs.upload_delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if fails {
        // envd's words for a full disk.
        return EmulatorError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "not enough disk space available",
        )
        .into_response();
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if request
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity")
    {
        return EmulatorError::new(
            StatusCode::BAD_REQUEST,
            "compressed uploads are not supported by the emulator",
        )
        .into_response();
    }
    // envd picks the codec by media type: octet-stream is one raw file,
    // any multipart/* is parts; everything else is refused.
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media_type == "application/octet-stream" {
        let Some(path) = &query.path else {
            return EmulatorError::new(
                StatusCode::BAD_REQUEST,
                "path query parameter is required for raw body upload",
            )
            .into_response();
        };
        let path = absolute(path);
        return match Bytes::from_request(request, &emulator).await {
            Ok(content) => match entry.sandbox.write(path.clone(), content).await {
                Ok(()) => axum::Json(vec![entry_info(path)]).into_response(),
                Err(e) => fs_error(&e),
            },
            Err(e) => EmulatorError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
        };
    }
    if !media_type.starts_with("multipart/") {
        return EmulatorError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream"
            ),
        )
        .into_response();
    }
    let mut multipart = match Multipart::from_request(request, &emulator).await {
        Ok(m) => m,
        Err(e) => {
            return EmulatorError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response();
        }
    };
    // Parts are written as they come, as envd streams them; a refused part
    // leaves the ones before it written, and envd's message says so.
    let mut written: Vec<EntryInfo> = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                return EmulatorError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response();
            }
        };
        // envd reads only the parts named `file`.
        if field.name() != Some("file") {
            continue;
        }
        // With a `path` query every part goes there; without one each
        // part's filename is its full path (one request, many files).
        let path = match (&query.path, field.file_name()) {
            (Some(path), _) => absolute(path),
            (None, Some(name)) => absolute(name),
            (None, None) => {
                return EmulatorError::new(
                    StatusCode::BAD_REQUEST,
                    "a part without a filename needs the path query",
                )
                .into_response();
            }
        };
        if written.iter().any(|w| w.path == path) {
            return duplicate_path(&path, &written);
        }
        let content = match field.bytes().await {
            Ok(content) => content,
            Err(e) => {
                return EmulatorError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response();
            }
        };
        if let Err(e) = entry.sandbox.write(path.clone(), content).await {
            return fs_error(&e);
        }
        written.push(entry_info(path));
    }
    axum::Json(written).into_response()
}

/// envd's 400 for a second part bound for a path already written in this
/// request (several parts under one `path` query, say).
fn duplicate_path(path: &str, written: &[EntryInfo]) -> Response {
    let mut message = format!(
        "you cannot upload multiple files to the same path '{path}' in one upload request, only the first specified file was uploaded"
    );
    let others: Vec<&str> = written
        .iter()
        .map(|w| w.path.as_str())
        .filter(|p| *p != path)
        .collect();
    if others.len() > 1 {
        message.push_str(&format!(
            ", also the following files were uploaded: {}",
            others.join(", ")
        ));
    }
    EmulatorError::new(StatusCode::BAD_REQUEST, message).into_response()
}

pub(super) async fn download(
    State(emulator): State<Emulator>,
    EnvdSandbox(entry): EnvdSandbox,
    Query(query): Query<FileQuery>,
) -> Response {
    emulator.inner.stats.request(route::DOWNLOAD);
    let Some(path) = query.path else {
        return EmulatorError::new(StatusCode::BAD_REQUEST, "the path query is required")
            .into_response();
    };
    match entry.sandbox.read(absolute(&path)).await {
        Ok(content) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            content,
        )
            .into_response(),
        Err(e) => fs_error(&e),
    }
}

fn fs_error(e: &FsError) -> Response {
    let status = match &e {
        FsError::NotFound { .. } => StatusCode::NOT_FOUND,
        FsError::SandboxGone => StatusCode::BAD_GATEWAY,
        FsError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        FsError::OutsideSandbox { .. } | FsError::InvalidPath { .. } | FsError::Symlink { .. } => {
            StatusCode::BAD_REQUEST
        }
    };
    EmulatorError::new(status, e.to_string()).into_response()
}
