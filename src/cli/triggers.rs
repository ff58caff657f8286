//! `ds triggers list` and `ds triggers fire`: sandstorm.json's triggers
//! from the command line, through the same `/triggers` routes a server
//! answers (in this process, or a deployed one with `--server`).
//!
//! `ds triggers fire` fires a trigger as its webhook or schedule would,
//! with the server's token in place of the trigger's secret. In this
//! process the run is then followed to its end, as `ds attach` follows
//! one: a local sandbox lives only as long as `ds` does.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde_json::Value;

use super::runs::{self, Endpoint};
use super::{Fatal, exit, render};

/// `ds triggers list`: one line a trigger.
pub(super) async fn list(
    endpoint: &Endpoint,
    headers: &[(HeaderName, HeaderValue)],
    json: bool,
) -> Result<u8, Fatal> {
    let body = endpoint
        .json_with(Method::GET, "/triggers", headers, Bytes::new())
        .await?;
    let triggers = body["triggers"].as_array().cloned().unwrap_or_default();
    if json {
        for trigger in &triggers {
            println!("{trigger}");
        }
        return Ok(exit::OK);
    }
    if triggers.is_empty() {
        eprintln!("no triggers in sandstorm.json");
        return Ok(exit::OK);
    }
    println!("{:<24} {:<8} {:<44} NEXT", "NAME", "TYPE", "FIRES ON");
    for trigger in &triggers {
        println!(
            "{:<24} {:<8} {:<44} {}",
            text(&trigger["name"]),
            text(&trigger["type"]),
            fires_on(trigger),
            next(trigger),
        );
    }
    Ok(exit::OK)
}

/// `ds triggers fire NAME`: the run it started, followed here to its end
/// (in this process) or named for `ds attach` (on a server).
pub(super) async fn fire(
    endpoint: Endpoint,
    name: &str,
    payload: Option<&Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
    options: render::Options,
) -> Result<u8, Fatal> {
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Fatal::usage(format!("{name:?} is not a trigger name")));
    }
    let body = payload.map_or_else(Bytes::new, |p| Bytes::from(p.to_string()));
    let answer = endpoint
        .json_with(
            Method::POST,
            &format!("/triggers/fire/{name}"),
            &headers,
            body,
        )
        .await?;
    let run_id = answer["run_id"]
        .as_str()
        .ok_or_else(|| Fatal::usage(format!("the server started no run: {answer}")))?
        .to_owned();
    if matches!(endpoint, Endpoint::Remote { .. }) {
        if matches!(options.mode, render::Mode::Json) {
            println!("{answer}");
        } else {
            println!("{run_id}");
            eprintln!("trigger {name} fired; follow it with: ds attach {run_id} --server ...");
        }
        return Ok(exit::OK);
    }
    eprintln!("trigger {name} fired: {run_id}");
    // The server answers once the run's agent has started, or after a
    // minute of trying: a run still starting is not known by its id yet.
    let status_path = format!("/runs/{run_id}");
    let started = tokio::time::Instant::now();
    while endpoint
        .json_with(Method::GET, &status_path, &headers, Bytes::new())
        .await
        .is_err()
    {
        if started.elapsed() > SANDBOX_START_LIMIT {
            return Err(Fatal {
                code: exit::RUN_FAILED,
                message: format!(
                    "run {run_id} did not start within {}s",
                    SANDBOX_START_LIMIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    runs::attach(endpoint, &run_id, 0, headers, options).await
}

/// How long `ds triggers fire` waits for its run's sandbox to exist.
const SANDBOX_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// What fires a trigger, for the list.
fn fires_on(trigger: &Value) -> String {
    match text(&trigger["type"]) {
        "webhook" => format!(
            "POST {} ({})",
            text(&trigger["path"]),
            if trigger["public"] == Value::Bool(true) {
                "PUBLIC: no secret"
            } else {
                "secret required"
            }
        ),
        "cron" => format!(
            "{} {}",
            text(&trigger["schedule"]),
            text(&trigger["timezone"])
        ),
        other => other.to_owned(),
    }
}

fn next(trigger: &Value) -> &str {
    match text(&trigger["type"]) {
        "cron" => trigger["next_fire_at"].as_str().unwrap_or("never"),
        _ => "on call",
    }
}
