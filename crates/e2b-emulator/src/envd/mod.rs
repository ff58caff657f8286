//! envd, the daemon inside each E2B sandbox: files over plain HTTP,
//! processes over Connect RPC. Every call but `/health` names its sandbox in
//! `E2b-Sandbox-Id` and proves access with `X-Access-Token`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use e2b_wire::envd::ENVD_PORT;
use subtle::ConstantTimeEq;

use super::stats::route;
use super::{Emulator, EmulatorError, Entry};

mod attach;
mod files;
mod process;

pub(crate) use attach::Processes;

pub(super) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(files::download).post(files::upload))
        .route("/process.Process/Start", post(process::start))
        .route("/process.Process/Connect", post(attach::connect))
        .route("/process.Process/SendSignal", post(process::send_signal))
        .route("/process.Process/List", post(process::list))
}

/// 204 without auth, like envd; for a sandbox that is gone, the 502 that
/// E2B's proxy answers (the SDKs' `is_running` reads it as "not running").
async fn health(State(emulator): State<Emulator>, request: Request) -> Response {
    emulator.inner.stats.request(route::HEALTH);
    let (parts, _) = request.into_parts();
    if let Err(refused) = check_routing(&emulator, &parts) {
        return refused.into_response();
    }
    match sandbox_id(&parts) {
        Some(id)
            if emulator
                .entry(&id)
                .is_none_or(|entry| crate::pause::is_paused(&entry)) =>
        {
            sandbox_not_found(&id)
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

/// What E2B's edge proxy answers for a sandbox that is gone; the SDKs look
/// for "was not found" to report it as not running.
fn sandbox_not_found(id: &str) -> Response {
    EmulatorError::new(
        StatusCode::BAD_GATEWAY,
        format!("The sandbox {id} was not found"),
    )
    .into_response()
}

/// The sandbox an envd call is for, after its access token was checked.
pub(crate) struct EnvdSandbox(pub(crate) Arc<Entry>);

impl FromRequestParts<Emulator> for EnvdSandbox {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, emulator: &Emulator) -> Result<Self, Response> {
        check_routing(emulator, parts).map_err(ProxyError::into_response)?;
        let id = sandbox_id(parts).unwrap_or_default();
        let entry = emulator.entry(&id).ok_or_else(|| sandbox_not_found(&id))?;
        // E2B's proxy finds only running sandboxes; a paused one is as
        // absent as one that never was.
        if crate::pause::is_paused(&entry) {
            return Err(sandbox_not_found(&id));
        }
        let token = parts
            .headers
            .get("x-access-token")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // A sandbox created without `secure` has no token: its envd lets
        // any caller in, as E2B's does.
        let ok = entry
            .access_token
            .as_ref()
            .is_none_or(|expected| bool::from(token.ct_eq(expected.expose().as_bytes())));
        if !ok {
            return Err(EmulatorError::new(
                StatusCode::UNAUTHORIZED,
                "invalid or missing X-Access-Token",
            )
            .into_response());
        }
        Ok(EnvdSandbox(entry))
    }
}

/// What E2B's edge proxy checks before it routes by header: with either of
/// `E2b-Sandbox-Id` and `E2b-Sandbox-Port` the other is required (400
/// `missing header`) and the port must be a number (400 `Invalid sandbox
/// port`), answered as Go's `http.Error` does. Envd listens on one port;
/// another one reaches nothing.
fn check_routing(emulator: &Emulator, parts: &Parts) -> Result<(), ProxyError> {
    if emulator.inner.lenient {
        return Ok(());
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .filter(|v| !v.is_empty())
    };
    let (id, port) = (header("e2b-sandbox-id"), header("e2b-sandbox-port"));
    if id.is_none() && port.is_none() {
        return Ok(());
    }
    let (Some(_), Some(port)) = (id, port) else {
        return Err(ProxyError(StatusCode::BAD_REQUEST, "missing header".into()));
    };
    match port.parse::<u64>() {
        Err(_) => Err(ProxyError(
            StatusCode::BAD_REQUEST,
            "Invalid sandbox port".into(),
        )),
        Ok(p) if p != u64::from(ENVD_PORT) => Err(ProxyError(
            StatusCode::BAD_GATEWAY,
            format!("The emulator serves only envd's port {ENVD_PORT}, not {p}"),
        )),
        Ok(_) => Ok(()),
    }
}

/// A refusal of E2B's edge proxy: a plain-text error as Go's `http.Error`
/// writes it.
struct ProxyError(StatusCode, String);

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let ProxyError(status, message) = self;
        (
            status,
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                ),
                (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            format!("{message}\n"),
        )
            .into_response()
    }
}

/// The `E2b-Sandbox-Id` header, or the id in a `49983-{id}.{domain}` host.
fn sandbox_id(parts: &Parts) -> Option<String> {
    if let Some(id) = parts
        .headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
    {
        return Some(id.to_owned());
    }
    let host = parts.headers.get("host").and_then(|v| v.to_str().ok())?;
    let rest = host.strip_prefix(&format!("{ENVD_PORT}-"))?;
    Some(rest.split('.').next()?.to_owned())
}
