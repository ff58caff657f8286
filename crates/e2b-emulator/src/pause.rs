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
use super::webhooks::{self, Details};
use super::{Emulator, EmulatorError, Entry, lock};
use e2b_wire::events;

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
    match pause_entry(&emulator, &entry, request.memory != Some(false)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => EmulatorError::new(
            StatusCode::CONFLICT,
            format!("Error pausing sandbox - sandbox '{id}' is already paused"),
        )
        .into_response(),
        Err(message) => {
            tracing::warn!(sandbox = %id, %message, "pausing failed");
            EmulatorError::new(StatusCode::INTERNAL_SERVER_ERROR, "Error pausing sandbox")
                .into_response()
        }
    }
}

/// Pauses `entry`, keeping its processes' memory or not; `false` when it
/// was paused already. Its clock stops, and its `endAt` becomes the time it
/// was paused, as E2B lists a paused sandbox.
async fn pause_entry(emulator: &Emulator, entry: &Entry, memory: bool) -> Result<bool, String> {
    let _transition = entry.transition.lock().await;
    if is_paused(entry) {
        return Ok(false);
    }
    signal_every_process(entry, if memory { "STOP" } else { "KILL" }).await?;
    if !memory {
        // E2B answers once the snapshot is taken, and a resume from disk
        // alone boots afresh: no killed process may still be listed then.
        let until = tokio::time::Instant::now() + KILLED_GONE_WITHIN;
        while !entry.sandbox.processes().is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    entry.paused.store(true, Ordering::SeqCst);
    entry.sandbox.clear_lifetime();
    *lock(&entry.end_at) = std::time::SystemTime::now();
    webhooks::publish(emulator, entry, events::PAUSED, Details::default());
    Ok(true)
}

/// How long a memory-less pause waits for the processes it killed to be
/// gone.
const KILLED_GONE_WITHIN: Duration = Duration::from_secs(5);

/// How often an `autoPause` sandbox's end is looked at.
const AUTO_PAUSE_TICK: Duration = Duration::from_millis(100);

/// E2B's `autoPause`: when a sandbox created with it reaches its end (which
/// set-timeout and connect move), it is paused instead of killed, and
/// again after each resume. Ends with the sandbox.
pub(super) async fn at_timeout(emulator: Emulator, entry: std::sync::Arc<Entry>) {
    loop {
        tokio::time::sleep(AUTO_PAUSE_TICK).await;
        let alive = emulator
            .entry(&entry.id)
            .is_some_and(|current| std::sync::Arc::ptr_eq(&current, &entry));
        if !alive {
            return;
        }
        let due = std::time::SystemTime::now() >= *lock(&entry.end_at);
        if due
            && !is_paused(&entry)
            && let Err(message) = pause_entry(&emulator, &entry, true).await
        {
            tracing::warn!(sandbox = %entry.id, %message, "pausing at the timeout failed");
        }
    }
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
    if resume_if_paused(&emulator, &entry, request.timeout.map(Duration::from_secs)).await {
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
pub(super) async fn resume_if_paused(
    emulator: &Emulator,
    entry: &Entry,
    timeout: Option<Duration>,
) -> bool {
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
    webhooks::publish(emulator, entry, events::RESUMED, Details::default());
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
