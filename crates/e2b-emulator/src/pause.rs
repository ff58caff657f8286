//! Pause and resume (`POST /sandboxes/{id}/pause`, connect, and the
//! deprecated `POST /sandboxes/{id}/resume`), as E2B's API answers them.
//!
//! E2B snapshots a paused sandbox's memory and stops its clock; the
//! sandbox then takes no envd calls (its proxy no longer finds it) and
//! never times out, until connect or resume brings it back with every
//! process where it was. The emulator stops the sandbox's processes with
//! `SIGSTOP` instead of a snapshot, and continues them on resume. A pause
//! with `"memory": false` keeps only the disk on E2B, so resuming reboots
//! the sandbox and its processes are gone: here they are killed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use sandstorm::sandbox::ProcessSpec;
use sandstorm::sandbox::local::shim::SHIM_COMMAND;
use serde::Deserialize;

use super::control::{self, End};
use super::stats::route;
use super::{Emulator, EmulatorError, Entry};

/// E2B's resume lifetime when the request names none (`ResumedSandbox`).
const DEFAULT_RESUME_TIMEOUT: Duration = Duration::from_secs(15);

/// `SandboxPauseRequest`: whether memory is kept (the default).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PauseRequest {
    memory: Option<bool>,
    // `requireHealthyGuest` is accepted and has nothing to check: the
    // emulator's envd is always healthy.
}

/// `ResumedSandbox`: the lifetime from now on.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeRequest {
    timeout: Option<u64>,
}

pub(super) fn is_paused(entry: &Entry) -> bool {
    entry.paused.load(Ordering::SeqCst)
}

/// 204 when paused; 409 when it already was (E2B's words); 404 when there
/// is no such sandbox.
pub(super) async fn pause(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    emulator.inner.stats.request(route::PAUSE);
    let (entry, request) = match optional_body::<PauseRequest>(&emulator, &id, &body) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let _transition = entry.transition.lock().await;
    if is_paused(&entry) {
        return EmulatorError::new(
            StatusCode::CONFLICT,
            format!("Error pausing sandbox - sandbox '{id}' is already paused"),
        )
        .into_response();
    }
    let signal = if request.memory == Some(false) {
        "KILL"
    } else {
        "STOP"
    };
    if let Err(message) = signal_every_process(&entry, signal).await {
        tracing::warn!(sandbox = %id, %message, "pausing failed");
        return EmulatorError::new(StatusCode::INTERNAL_SERVER_ERROR, "Error pausing sandbox")
            .into_response();
    }
    entry.paused.store(true, Ordering::SeqCst);
    entry.sandbox.clear_lifetime();
    StatusCode::NO_CONTENT.into_response()
}

/// The deprecated resume: 201 with the sandbox, or 409 when it runs.
pub(super) async fn resume(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    emulator.inner.stats.request(route::RESUME);
    let (entry, request) = match optional_body::<ResumeRequest>(&emulator, &id, &body) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    if resume_if_paused(&entry, request.timeout.map(Duration::from_secs)).await {
        (
            StatusCode::CREATED,
            axum::Json(control::sandbox_json(&entry)),
        )
            .into_response()
    } else {
        EmulatorError::new(
            StatusCode::CONFLICT,
            format!("Sandbox {id} is already running"),
        )
        .into_response()
    }
}

/// Resumes `entry` for `timeout` (E2B's 15 s default) if it is paused;
/// whether it was. Used by connect too, which resumes as it attaches.
pub(super) async fn resume_if_paused(entry: &Entry, timeout: Option<Duration>) -> bool {
    let _transition = entry.transition.lock().await;
    if !is_paused(entry) {
        return false;
    }
    if let Err(message) = signal_every_process(entry, "CONT").await {
        // Nothing left to continue (a memory-less pause killed them) is
        // not an error; anything else is logged, and the sandbox runs on.
        tracing::warn!(sandbox = %entry.id, %message, "continuing processes failed");
    }
    entry.paused.store(false, Ordering::SeqCst);
    control::end_in(
        entry,
        timeout.unwrap_or(DEFAULT_RESUME_TIMEOUT),
        End::Replace,
    );
    true
}

/// Sends `signal` to every process the agent could have started, from
/// inside the sandbox, so nothing outside it can be reached: every process
/// in its pid namespace but the shell sending it, bubblewrap's pid 1 and
/// the shim's init (the sandbox's network bridge), whose end would end the
/// sandbox itself, which a pause must not do.
async fn signal_every_process(entry: &Entry, signal: &str) -> Result<(), String> {
    let script = format!(
        r#"for p in /proc/[0-9]*; do
  pid=${{p#/proc/}}
  [ "$pid" = 1 ] || [ "$pid" = $$ ] && continue
  case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
    ''|*{SHIM_COMMAND}*) continue ;;
  esac
  kill -{signal} "$pid" 2>/dev/null
done
:"#
    );
    let spec = ProcessSpec {
        cmd: "/bin/sh".to_owned(),
        // A process that ended meanwhile cannot be signalled; that is fine.
        args: vec!["-c".to_owned(), script],
        timeout: Some(Duration::from_secs(10)),
        ..ProcessSpec::default()
    };
    let (_pid, events, _control) = entry.sandbox.spawn(spec).map_err(|e| e.to_string())?;
    let outcome: Vec<_> = events.collect().await;
    match outcome.last() {
        Some(Ok(sandstorm::sandbox::ProcessEvent::Exited(status))) if status.code == Some(0) => {
            Ok(())
        }
        other => Err(format!("kill -{signal} -1 ended with {other:?}")),
    }
}

/// The sandbox the path names (404 if none) and the request's body, which
/// E2B makes optional here (an empty body is the defaults).
fn optional_body<T: Default + serde::de::DeserializeOwned>(
    emulator: &Emulator,
    id: &str,
    body: &[u8],
) -> Result<(std::sync::Arc<Entry>, T), EmulatorError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let entry = emulator.entry(id).ok_or_else(|| control::not_found(id))?;
        return Ok((entry, T::default()));
    }
    control::sandbox_and_body(emulator, id, body)
}
