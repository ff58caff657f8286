//! `ds serve --reload`: sandstorm.json and `.env` are watched, and a change
//! rebuilds the settings for the requests that come after it. A change
//! that does not load (a sandstorm.json with a mistake, a bad setting) is
//! logged, and the settings in use stay. Runs already going keep the
//! settings they started with.
//!
//! The files are polled (their size and modification time) rather than
//! watched through inotify: two files, once a second, cost nothing, and
//! polling sees an editor's write-and-rename the same as a plain write.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::app::AppState;
use crate::settings::Settings;

/// How often the files are looked at.
const INTERVAL: Duration = Duration::from_secs(1);

/// What a file looked like: absent, or its size and modification time.
type Stamp = Option<(u64, Option<SystemTime>)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

/// Watches `files` until the process ends; on a change, `rebuild` makes
/// new settings, and `state` serves with them if they load.
pub(crate) fn watch(
    state: AppState,
    files: Vec<PathBuf>,
    rebuild: impl Fn() -> Result<Settings, String> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut seen: Vec<Stamp> = files.iter().map(stamp).collect();
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now: Vec<Stamp> = files.iter().map(stamp).collect();
            if now == seen {
                continue;
            }
            seen = now;
            match rebuild() {
                Ok(settings)
                    if settings.sandbox.provider.name != state.settings().sandbox.provider.name =>
                {
                    tracing::warn!(
                        now = settings.sandbox.provider.name,
                        "the change picks another sandbox provider; restart ds serve for that \
                         (keeping the settings in use)"
                    );
                }
                Ok(settings) => match &settings.config {
                    Ok(_) => {
                        state.reload(settings);
                        tracing::info!("reloaded sandstorm.json and .env");
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "sandstorm.json changed but is invalid; keeping the config in use"
                    ),
                },
                Err(e) => tracing::warn!(
                    error = %e,
                    "the settings changed but do not load; keeping the ones in use"
                ),
            }
        }
    });
}
