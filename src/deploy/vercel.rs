//! `vercel.json`'s cron jobs, one per cron trigger, and the rewrites that
//! bring the router's routes and the webhook triggers' paths to the
//! function.
//!
//! - `crons`: an entry `{"path": "/triggers/cron/<name>", "schedule"}` per
//!   cron trigger ([`crate::triggers::vercel_cron`] writes the UTC
//!   schedule). Entries with another path are someone else's and stay.
//! - `rewrites`: every route of the router ([`ROUTES`]) and every webhook
//!   trigger's path go to `api/query.rs` (`/health` to `api/health.rs`).
//!   Missing ones are added; none is removed, so a rewrite of a path no
//!   trigger has any more stays until removed by hand (it only reaches
//!   the router's 404).
//!
//! Everything else in the file is kept, in its order.

use super::json::Json;
use super::{Written, cron_triggers, webhook_paths};
use crate::triggers::Definition;
use crate::triggers::vercel_cron;

/// The function that serves every route.
pub const QUERY_FUNCTION: &str = "/api/query";
/// The function behind `/health`.
pub const HEALTH_FUNCTION: &str = "/api/health";

/// The router's routes, as Vercel rewrite sources, and the function each
/// goes to. A test holds them to the router's.
pub const ROUTES: [(&str, &str); 16] = [
    ("/query", QUERY_FUNCTION),
    ("/runs", QUERY_FUNCTION),
    ("/runs/:id", QUERY_FUNCTION),
    ("/runs/:id/cancel", QUERY_FUNCTION),
    ("/runs/:id/events", QUERY_FUNCTION),
    ("/runs/:id/messages", QUERY_FUNCTION),
    ("/runs/:id/replay", QUERY_FUNCTION),
    ("/runs/:id/ended", QUERY_FUNCTION),
    ("/health", HEALTH_FUNCTION),
    ("/webhooks/e2b", QUERY_FUNCTION),
    ("/", QUERY_FUNCTION),
    ("/dashboard/:file", QUERY_FUNCTION),
    ("/openapi.json", QUERY_FUNCTION),
    ("/triggers", QUERY_FUNCTION),
    ("/triggers/fire/:name", QUERY_FUNCTION),
    ("/triggers/cron/:name", QUERY_FUNCTION),
];

/// What the cron path of every trigger starts with: the `crons` entries
/// that are ours.
const CRON_PATH_PREFIX: &str = "/triggers/cron/";

/// A cron job of `vercel.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cron {
    path: String,
    schedule: String,
}

/// `vercel.json`'s text with the crons and rewrites `definitions` need.
pub fn write(text: &str, definitions: &[Definition]) -> Result<Written, String> {
    let mut config = read(text)?;
    let (wanted, notes) = crons(definitions)?;
    let mut crons: Vec<Json> = entries(&config, "crons")
        .into_iter()
        .filter(|entry| !is_ours(entry))
        .cloned()
        .collect();
    crons.extend(
        wanted
            .iter()
            .map(|cron| Json::strings(&[("path", &cron.path), ("schedule", &cron.schedule)])),
    );
    let mut rewrites: Vec<Json> = entries(&config, "rewrites").into_iter().cloned().collect();
    for (source, destination) in rewrites_wanted(definitions) {
        if !has_rewrite(&rewrites, &source, destination) {
            rewrites.push(Json::strings(&[
                ("source", &source),
                ("destination", destination),
            ]));
        }
    }
    config.set("rewrites", Json::Array(rewrites));
    if crons.is_empty() {
        if let Json::Object(fields) = &mut config {
            fields.retain(|(key, _)| key != "crons");
        }
    } else {
        config.set("crons", Json::Array(crons));
    }
    Ok(Written {
        text: config.pretty(),
        notes,
    })
}

/// What differs between `vercel.json` and what `definitions` need, one
/// line each; empty when nothing does.
pub fn check(text: &str, definitions: &[Definition]) -> Result<Vec<String>, String> {
    let config = read(text)?;
    let (wanted, _) = crons(definitions)?;
    let have: Vec<Cron> = entries(&config, "crons")
        .into_iter()
        .filter(|entry| is_ours(entry))
        .map(|entry| Cron {
            path: entry
                .get("path")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
            schedule: entry
                .get("schedule")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    let mut differences = Vec::new();
    for cron in &wanted {
        match have.iter().find(|h| h.path == cron.path) {
            None => differences.push(format!(
                "crons: {} is missing (schedule {:?})",
                cron.path, cron.schedule
            )),
            Some(found) if found.schedule != cron.schedule => differences.push(format!(
                "crons: {} has schedule {:?}; sandstorm.json makes {:?}",
                cron.path, found.schedule, cron.schedule
            )),
            Some(_) => {}
        }
    }
    for found in &have {
        if !wanted.iter().any(|w| w.path == found.path) {
            differences.push(format!(
                "crons: {} is not a cron trigger of sandstorm.json",
                found.path
            ));
        }
    }
    let rewrites = entries(&config, "rewrites");
    for (source, destination) in rewrites_wanted(definitions) {
        if !has_rewrite(
            &rewrites.iter().copied().cloned().collect::<Vec<_>>(),
            &source,
            destination,
        ) {
            differences.push(format!("rewrites: {source} -> {destination} is missing"));
        }
    }
    Ok(differences)
}

fn read(text: &str) -> Result<Json, String> {
    let config = Json::parse(text).map_err(|e| format!("vercel.json is not JSON: {e}"))?;
    match config {
        Json::Object(_) => Ok(config),
        _ => Err("vercel.json is not a JSON object".to_owned()),
    }
}

/// The entries of the array `key`, none when it is absent.
fn entries<'a>(config: &'a Json, key: &str) -> Vec<&'a Json> {
    match config.get(key) {
        Some(Json::Array(items)) => items.iter().collect(),
        _ => Vec::new(),
    }
}

fn is_ours(entry: &Json) -> bool {
    entry
        .get("path")
        .and_then(Json::as_str)
        .is_some_and(|path| path.starts_with(CRON_PATH_PREFIX))
}

fn has_rewrite(rewrites: &[Json], source: &str, destination: &str) -> bool {
    rewrites.iter().any(|r| {
        r.get("source").and_then(Json::as_str) == Some(source)
            && r.get("destination").and_then(Json::as_str) == Some(destination)
    })
}

/// The rewrites the router needs: its routes, then the webhook paths.
fn rewrites_wanted(definitions: &[Definition]) -> Vec<(String, &'static str)> {
    ROUTES
        .iter()
        .map(|(source, destination)| ((*source).to_owned(), *destination))
        .chain(
            webhook_paths(definitions)
                .into_iter()
                .map(|path| (path.to_owned(), QUERY_FUNCTION)),
        )
        .collect()
}

/// The cron jobs of `definitions`, and the notes on them.
fn crons(definitions: &[Definition]) -> Result<(Vec<Cron>, Vec<String>), String> {
    let mut crons = Vec::new();
    let mut notes = Vec::new();
    for trigger in cron_triggers(definitions) {
        let schedule = vercel_cron::schedule(trigger.schedule)
            .map_err(|why| format!("trigger {:?}: {why}", trigger.name))?;
        if schedule.calls_per_day > 1 {
            notes.push(format!(
                "trigger {:?}: {:?} calls up to {} times a day; Vercel's Hobby plan takes \
                 cron jobs that run once a day at most (Pro: once a minute)",
                trigger.name, schedule.expression, schedule.calls_per_day
            ));
        }
        if !trigger.jitter.is_zero() {
            notes.push(format!(
                "trigger {:?}: its jitter is not applied on Vercel, which calls at the \
                 scheduled minute",
                trigger.name
            ));
        }
        crons.push(Cron {
            path: vercel_cron::path(trigger.name),
            schedule: schedule.expression,
        });
    }
    Ok((crons, notes))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VERCEL_JSON: &str = include_str!("../../vercel.json");

    fn definitions(triggers: &serde_json::Value) -> Vec<Definition> {
        crate::triggers::definition::parse(triggers.as_array().expect("a list")).expect("valid")
    }

    fn triggers() -> Vec<Definition> {
        definitions(&json!([
            {"name": "digest", "type": "cron", "schedule": "0 9 * * MON-FRI",
             "timezone": "Europe/Prague", "prompt": "Write the digest", "jitter": 30},
            {"name": "triage", "type": "webhook", "path": "/github/issues", "public": true,
             "prompt": "p"},
            {"name": "nightly", "type": "cron", "schedule": "30 2 * * *", "prompt": "p"}
        ]))
    }

    #[test]
    fn each_cron_trigger_gets_a_job_and_each_path_a_rewrite() {
        let written = write(VERCEL_JSON, &triggers()).expect("written");
        let config: serde_json::Value = serde_json::from_str(&written.text).expect("JSON");
        assert_eq!(
            config["crons"],
            json!([
                {"path": "/triggers/cron/digest", "schedule": "0 7,8 * * 1-5"},
                {"path": "/triggers/cron/nightly", "schedule": "30 2 * * *"}
            ])
        );
        let rewrites = config["rewrites"].as_array().expect("rewrites");
        for source in ["/github/issues", "/triggers/cron/:name", "/runs/:id/replay"] {
            assert!(
                rewrites.contains(&json!({"source": source, "destination": "/api/query"})),
                "{source}: {rewrites:?}"
            );
        }
        assert_eq!(
            written.notes.len(),
            2,
            "Hobby and jitter: {:?}",
            written.notes
        );
        assert!(written.notes[0].contains("Hobby"), "{:?}", written.notes);
        assert!(written.notes[1].contains("jitter"), "{:?}", written.notes);
        // The rest of the file is kept, in its order.
        assert!(written.text.starts_with(
            "{\n  \"$schema\": \"https://openapi.vercel.sh/vercel.json\",\n  \"functions\": {"
        ));
        assert_eq!(
            write(&written.text, &triggers()).expect("again").text,
            written.text
        );
        assert_eq!(check(&written.text, &triggers()), Ok(Vec::new()));
    }

    #[test]
    fn other_cron_jobs_and_rewrites_stay() {
        let text = r#"{"crons": [{"path": "/api/other", "schedule": "0 0 * * *"}],
                       "rewrites": [{"source": "/x", "destination": "/elsewhere"}]}"#;
        let written = write(text, &triggers()).expect("written").text;
        let config: serde_json::Value = serde_json::from_str(&written).expect("JSON");
        assert_eq!(config["crons"][0]["path"], "/api/other");
        assert_eq!(config["crons"].as_array().map(Vec::len), Some(3));
        assert_eq!(config["rewrites"][0]["source"], "/x");
        // With no cron triggers, our jobs go and theirs stay.
        let without = write(&written, &[]).expect("written").text;
        let config: serde_json::Value = serde_json::from_str(&without).expect("JSON");
        assert_eq!(
            config["crons"],
            json!([{"path": "/api/other", "schedule": "0 0 * * *"}])
        );
    }

    /// Every path of the OpenAPI document has a rewrite, and every
    /// rewrite reaches a route of the router, not its 404.
    #[tokio::test]
    async fn the_rewrites_are_the_routers_routes() {
        use tower::ServiceExt;
        let document: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("JSON");
        for path in document["paths"].as_object().expect("paths").keys() {
            let source = path.replace('{', ":").replace('}', "");
            assert!(
                ROUTES.iter().any(|(s, _)| *s == source),
                "{path} is in src/openapi.json but has no rewrite in ROUTES"
            );
        }
        let settings = crate::settings::Settings::build(
            &crate::env::EnvVars::default(),
            std::path::Path::new("/nonexistent"),
            crate::settings::Profile::Server,
            crate::settings::SandboxChoice {
                catalog: crate::doors::PROVIDERS,
                requested: None,
                setup: crate::sandbox::provider::Setup::CheckOnly,
                executable: None,
            },
        )
        .expect("settings");
        let provider = std::sync::Arc::new(crate::sandbox::scripted::Scripted::new(
            Vec::new(),
            crate::sandbox::scripted::Then::Exit(0),
        ));
        let router = crate::app::app(crate::app::AppState::new(settings, provider));
        for (source, _) in ROUTES {
            let path = source
                .replace(":id", "run_x")
                .replace(":name", "x")
                .replace(":file", "app.js");
            let request = http::Request::get(&path)
                .body(axum::body::Body::empty())
                .expect("request");
            let response = router.clone().oneshot(request).await.expect("response");
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("body")
                .to_bytes();
            assert!(
                !String::from_utf8_lossy(&body).contains("no such route"),
                "{source} ({path}) is not a route of the router"
            );
        }
    }

    #[test]
    fn check_names_each_difference() {
        let written = write(VERCEL_JSON, &triggers()).expect("written").text;
        let edited = written
            .replace("0 7,8 * * 1-5", "0 8 * * 1-5")
            .replace(
                "{ \"source\": \"/github/issues\", \"destination\": \"/api/query\" },\n",
                "",
            )
            .replace(
                "{ \"source\": \"/github/issues\", \"destination\": \"/api/query\" }",
                "{ \"source\": \"/elsewhere\", \"destination\": \"/api/query\" }",
            );
        let mut fewer = triggers();
        fewer.retain(|d| d.name != "nightly");
        let differences = check(&edited, &fewer).expect("checked");
        assert_eq!(
            differences,
            [
                "crons: /triggers/cron/digest has schedule \"0 8 * * 1-5\"; sandstorm.json makes \"0 7,8 * * 1-5\"",
                "crons: /triggers/cron/nightly is not a cron trigger of sandstorm.json",
                "rewrites: /github/issues -> /api/query is missing",
            ]
        );
    }
}
