//! Deploy files made from sandstorm.json: the serverless platforms'
//! schedules of its cron triggers, written or checked by `ds schedules`.
//!
//! A function has no clock between invocations, so on Lambda and Vercel a
//! cron trigger fires on the platform's own scheduler, which is set up in
//! the deploy files: EventBridge Scheduler schedules in the SAM template
//! ([`sam`]), `crons` in `vercel.json` ([`vercel`]). Each is made from
//! sandstorm.json alone, the same every time, so writing twice changes
//! nothing and `--check` in CI catches a file that no longer matches.

pub(crate) mod json;
pub mod sam;
pub mod vercel;

use std::time::Duration;

use crate::triggers::schedule::Schedule;
use crate::triggers::{Definition, Source};

/// A cron trigger, as a platform's schedule needs it.
#[derive(Debug, Clone, Copy)]
pub struct CronTrigger<'a> {
    /// Its name.
    pub name: &'a str,
    /// When it fires.
    pub schedule: &'a Schedule,
    /// The most random delay added to each fire time.
    pub jitter: Duration,
}

/// The cron triggers among `definitions`, in their order.
pub fn cron_triggers(definitions: &[Definition]) -> Vec<CronTrigger<'_>> {
    definitions
        .iter()
        .filter_map(|definition| match &definition.source {
            Source::Cron {
                schedule, jitter, ..
            } => Some(CronTrigger {
                name: &definition.name,
                schedule,
                jitter: *jitter,
            }),
            Source::Webhook { .. } => None,
        })
        .collect()
}

/// The paths of the webhook triggers among `definitions`, in their order.
pub fn webhook_paths(definitions: &[Definition]) -> Vec<&str> {
    definitions
        .iter()
        .filter_map(|definition| match &definition.source {
            Source::Webhook { path, .. } => Some(path.as_str()),
            Source::Cron { .. } => None,
        })
        .collect()
}

/// What writing a deploy file came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The file's new text.
    pub text: String,
    /// What its reader should know (a schedule Vercel's Hobby plan
    /// refuses, a setting a platform ignores), one line each.
    pub notes: Vec<String>,
}
