//! `ds serve`'s own scheduler for cron triggers. (Lambda and Vercel fire
//! them from the platform's scheduler instead: a function has no clock of
//! its own between invocations.)
//!
//! One task sleeps until the next fire time of any trigger, then fires
//! what is due:
//!
//! - **Missed fires are skipped, and logged.** A fire found more than
//!   [`MISSED_AFTER`] late (the machine slept, the process was stopped) is
//!   not made up for: a digest due at 09:00 is no use at 15:00, and a
//!   backlog of every-minute runs would be worse.
//! - **No overlap by default.** With `"overlap": false` a fire is skipped,
//!   and logged, while the trigger's previous run still goes.
//! - **Jitter.** With `"jitter": N`, each fire waits a random 0 to N
//!   seconds after its time, so many servers on one schedule do not all
//!   start at once.
//!
//! The triggers are read from the settings of the moment at each wake (at
//! least once a minute), so `ds serve --reload` adds and drops schedules.
//! Time comes from a [`Clock`], which tests set ahead to just before a fire
//! time rather than wait for real minutes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use http::HeaderMap;

use super::fire::{self, Call};
use super::{Source, Trigger};
use crate::app::AppState;

/// How late a fire may be found and still be fired.
pub(crate) const MISSED_AFTER: Duration = Duration::from_secs(60);
/// The longest the scheduler sleeps before it looks at the settings again.
const LONGEST_SLEEP: Duration = Duration::from_secs(60);

/// Wall-clock time as the scheduler sees it: the system's, or the system's
/// moved by a fixed offset (`SANDSTORM_TEST_CLOCK_START`, for tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    offset: chrono::TimeDelta,
}

impl Clock {
    /// The system's clock.
    pub(crate) fn system() -> Self {
        Clock {
            offset: chrono::TimeDelta::zero(),
        }
    }

    /// A clock that reads `start` now and runs at the real rate from there.
    pub(crate) fn starting_at(start: SystemTime) -> Self {
        let start: DateTime<Utc> = start.into();
        Clock {
            offset: start - Utc::now(),
        }
    }

    /// The time now.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// A cron trigger's next fire.
#[derive(Debug, Clone, PartialEq)]
struct Next {
    /// The schedule's time.
    due: DateTime<Utc>,
    /// When it is fired: `due` plus the jitter drawn for it.
    at: DateTime<Utc>,
}

/// What to do with a fire whose time has come.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Fire,
    /// Found too late; skipped.
    Missed,
    /// The previous run still goes, and the trigger does not overlap.
    Overlapping,
}

fn decide(late_by: Duration, overlap: bool, going: u32) -> Decision {
    if late_by > MISSED_AFTER {
        Decision::Missed
    } else if !overlap && going > 0 {
        Decision::Overlapping
    } else {
        Decision::Fire
    }
}

/// Starts the scheduler on its own task, for as long as the server runs.
pub(crate) fn start(state: AppState, clock: Clock) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(state, clock))
}

async fn run(state: AppState, clock: Clock) {
    // By trigger name: its schedule as last read, and its next fire.
    let mut pending: BTreeMap<String, (String, Next)> = BTreeMap::new();
    loop {
        let now = clock.now();
        let settings = state.settings();
        let crons: Vec<&Trigger> = settings
            .triggers
            .all()
            .iter()
            .filter(|t| matches!(t.definition.source, Source::Cron { .. }))
            .collect();
        pending.retain(|name, (key, _)| {
            crons
                .iter()
                .any(|t| &t.definition.name == name && schedule_key(t) == *key)
        });
        for trigger in &crons {
            if !pending.contains_key(&trigger.definition.name)
                && let Some(next) = next_fire(trigger, now)
            {
                tracing::info!(
                    trigger = %trigger.definition.name,
                    next = %next.due.to_rfc3339(),
                    "cron trigger scheduled"
                );
                pending.insert(
                    trigger.definition.name.clone(),
                    (schedule_key(trigger), next),
                );
            }
        }
        for trigger in &crons {
            let name = &trigger.definition.name;
            let Some((_, next)) = pending.get(name).cloned() else {
                continue;
            };
            if next.at > now {
                continue;
            }
            let Source::Cron { overlap, .. } = &trigger.definition.source else {
                continue;
            };
            let late_by = (now - next.at).to_std().unwrap_or_default();
            let going = state.trigger_limits().going(name);
            match decide(late_by, *overlap, going) {
                Decision::Fire => fire_one(&state, trigger, next.due).await,
                Decision::Missed => tracing::warn!(
                    trigger = %name,
                    due = %next.due.to_rfc3339(),
                    late_by = ?late_by,
                    "cron trigger's fire missed (the server was not running, or asleep); \
                     skipped, not made up for"
                ),
                Decision::Overlapping => tracing::warn!(
                    trigger = %name,
                    due = %next.due.to_rfc3339(),
                    going,
                    "cron trigger's fire skipped: its previous run still goes (\"overlap\": false)"
                ),
            }
            // The next fire after this one, or after now when fires were
            // missed: those are skipped, not queued.
            match next_fire(trigger, next.due.max(now - chrono_from(MISSED_AFTER))) {
                Some(following) => {
                    pending.insert(name.clone(), (schedule_key(trigger), following));
                }
                None => {
                    pending.remove(name);
                }
            }
        }
        let wake = pending
            .values()
            .map(|(_, next)| next.at)
            .min()
            .map_or(LONGEST_SLEEP, |at| {
                (at - clock.now()).to_std().unwrap_or_default()
            })
            .min(LONGEST_SLEEP);
        tokio::time::sleep(wake).await;
    }
}

async fn fire_one(state: &AppState, trigger: &Trigger, due: DateTime<Utc>) {
    let call = Call {
        body: None,
        headers: HeaderMap::new(),
        fired_at: due.into(),
        platform_deadline: None,
        request_id: format!(
            "cron-{}-{}",
            trigger.definition.name,
            uuid::Uuid::new_v4().simple()
        ),
    };
    if let Err(error) = fire::fire(state, trigger, call).await {
        tracing::warn!(
            trigger = %trigger.definition.name,
            due = %due.to_rfc3339(),
            %error,
            "cron trigger's fire was refused"
        );
    }
}

/// The fire after `after`, with its jitter drawn.
fn next_fire(trigger: &Trigger, after: DateTime<Utc>) -> Option<Next> {
    let Source::Cron {
        schedule, jitter, ..
    } = &trigger.definition.source
    else {
        return None;
    };
    let due = schedule.next_after(after)?;
    Some(Next {
        due,
        at: due + chrono_from(draw(*jitter)),
    })
}

/// A random delay from zero to `most`.
fn draw(most: Duration) -> Duration {
    let most_ms = u64::try_from(most.as_millis()).unwrap_or(u64::MAX);
    if most_ms == 0 {
        return Duration::ZERO;
    }
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    Duration::from_millis(random % (most_ms + 1))
}

fn chrono_from(duration: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::zero())
}

/// What makes a reloaded trigger's schedule another one.
fn schedule_key(trigger: &Trigger) -> String {
    match &trigger.definition.source {
        Source::Cron {
            schedule, jitter, ..
        } => format!(
            "{} {} {}",
            schedule.expression(),
            schedule.zone().name(),
            jitter.as_millis()
        ),
        Source::Webhook { .. } => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triggers::definition;

    fn cron(entry: serde_json::Value) -> Trigger {
        let definitions = definition::parse(&[entry]).expect("valid");
        Trigger {
            definition: definitions.into_iter().next().expect("one"),
            secret: None,
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_late_fire_is_missed_and_an_overlapping_one_skipped() {
        assert_eq!(decide(Duration::from_secs(1), false, 0), Decision::Fire);
        assert_eq!(
            decide(MISSED_AFTER + Duration::from_secs(1), false, 0),
            Decision::Missed
        );
        assert_eq!(decide(Duration::ZERO, false, 1), Decision::Overlapping);
        assert_eq!(decide(Duration::ZERO, true, 1), Decision::Fire);
    }

    #[test]
    fn jitter_delays_a_fire_within_its_bound() {
        let trigger = cron(serde_json::json!({"name": "c", "type": "cron",
            "schedule": "*/5 * * * *", "jitter": 30, "prompt": "p"}));
        for _ in 0..50 {
            let next = next_fire(&trigger, utc("2026-12-06T10:01:00Z")).expect("a fire");
            assert_eq!(next.due, utc("2026-12-06T10:05:00Z"));
            assert!(next.at >= next.due && next.at <= next.due + chrono::TimeDelta::seconds(30));
        }
    }

    #[test]
    fn a_clock_set_ahead_runs_from_there() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Clock::starting_at(start);
        let read: SystemTime = clock.now().into();
        let drift = read.duration_since(start).unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_secs(5), "{drift:?}");
    }
}
