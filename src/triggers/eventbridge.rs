//! A cron trigger as an EventBridge Scheduler schedule: its expression, its
//! flexible time window, and the input the schedule hands the Lambda
//! function, which the Lambda door recognizes ([`crate::doors::scheduled`]).
//!
//! EventBridge's cron has six fields (minutes hours day-of-month month
//! day-of-week year), wants `?` in one of the two day fields, and numbers
//! weekdays 1 to 7 from Sunday where standard cron has 0 to 6 (and 7 for
//! Sunday again). Weekdays are written by name (`MON-FRI`), which both
//! read alike. What EventBridge cannot say is refused, never approximated:
//! a schedule that restricts both day fields (cron's "either" rule) has no
//! EventBridge form.

use std::time::Duration;

use super::cron_fields::{
    DAYS_OF_MONTH, DAYS_OF_WEEK, Days, Fields, HOURS, MINUTES, MONTHS, Steps, WEEKDAY_NAMES,
    write_field,
};
use super::schedule::Schedule;

/// The input's key that names the trigger: how the Lambda door tells a
/// schedule's invocation from an HTTP event.
pub const TRIGGER_KEY: &str = "sandstorm_trigger";
/// The input's key for the time the schedule fired for.
pub const SCHEDULED_TIME_KEY: &str = "scheduled_time";
/// The input's key for EventBridge's id of the attempt.
pub const EXECUTION_ID_KEY: &str = "execution_id";
/// The input's key for the attempt's number, from 1.
pub const ATTEMPT_KEY: &str = "attempt";

/// The longest flexible time window EventBridge Scheduler allows, in
/// minutes.
const MAX_WINDOW_MINUTES: u64 = 1440;

/// `cron(...)` for `schedule`, read in its own time zone (the schedule's
/// `ScheduleExpressionTimezone`), or why EventBridge cannot express it.
pub fn expression(schedule: &Schedule) -> Result<String, String> {
    let fields = Fields::of(schedule)?;
    let (day_of_month, day_of_week) = match &fields.days {
        Days::Every => ("*".to_owned(), "?".to_owned()),
        Days::OfMonth(days) => (
            write_field(days, &DAYS_OF_MONTH, Steps::FromStart, None),
            "?".to_owned(),
        ),
        Days::OfWeek(days) => (
            "?".to_owned(),
            // EventBridge takes no step in this field.
            write_field(days, &DAYS_OF_WEEK, Steps::Listed, Some(&WEEKDAY_NAMES)),
        ),
        Days::Either { .. } | Days::Both { .. } => {
            return Err(format!(
                "{:?} restricts both the day of the month and the day of the week, which \
                 EventBridge Scheduler cannot express (one of them must be ?); give one of \
                 them as *, or make two triggers",
                schedule.expression()
            ));
        }
    };
    Ok(format!(
        "cron({} {} {day_of_month} {} {day_of_week} *)",
        write_field(&fields.minutes, &MINUTES, Steps::FromStart, None),
        write_field(&fields.hours, &HOURS, Steps::FromStart, None),
        write_field(&fields.months, &MONTHS, Steps::FromStart, None),
    ))
}

/// The schedule's flexible time window in whole minutes, `jitter` rounded
/// up; `None` (mode `OFF`) for no jitter.
pub fn window_minutes(jitter: Duration) -> Option<u64> {
    (!jitter.is_zero()).then(|| jitter.as_secs().div_ceil(60).clamp(1, MAX_WINDOW_MINUTES))
}

/// The input a schedule of trigger `name` hands the function, as JSON
/// text: the trigger's name, and EventBridge Scheduler's context
/// attributes, which it fills in at each invocation.
pub fn input(name: &str) -> String {
    serde_json::json!({
        TRIGGER_KEY: name,
        SCHEDULED_TIME_KEY: "<aws.scheduler.scheduled-time>",
        EXECUTION_ID_KEY: "<aws.scheduler.execution-id>",
        ATTEMPT_KEY: "<aws.scheduler.attempt-number>",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(expression: &str) -> Result<String, String> {
        super::expression(&Schedule::parse(expression, None).expect("valid"))
    }

    #[test]
    fn five_field_cron_becomes_eventbridges_six_fields() {
        for (standard, eventbridge) in [
            ("0 9 * * MON-FRI", "cron(0 9 ? * MON-FRI *)"),
            ("0 9 * * 1-5", "cron(0 9 ? * MON-FRI *)"),
            ("* * * * *", "cron(* * * * ? *)"),
            ("*/15 * * * *", "cron(0/15 * * * ? *)"),
            ("30 */6 1 * *", "cron(30 0/6 1 * ? *)"),
            ("0 0 * * 0", "cron(0 0 ? * SUN *)"),
            // Sunday as 7, as standard cron allows.
            ("0 0 * * 7", "cron(0 0 ? * SUN *)"),
            ("0 0 * * SAT,SUN", "cron(0 0 ? * SUN,SAT *)"),
            ("5 4 1,15 jan,jul *", "cron(5 4 1,15 1,7 ? *)"),
            ("0 12 * * ?", "cron(0 12 * * ? *)"),
            ("0 0 1-31 * MON", "cron(0 0 * * ? *)"),
        ] {
            assert_eq!(
                converted(standard).as_deref(),
                Ok(eventbridge),
                "{standard}"
            );
        }
    }

    /// Read back (its year dropped, as croner reads `?`, names and `a/b`
    /// as EventBridge does), each expression fires at the times of the
    /// schedule it was made from.
    #[test]
    fn each_expression_fires_when_its_schedule_does() {
        for (written, zone) in [
            ("0 9 * * MON-FRI", "Europe/Prague"),
            ("*/7 */5 * * *", "UTC"),
            ("5 4 */3 * *", "America/New_York"),
            ("0 0 * 2-11/3 SUN", "Asia/Tokyo"),
            ("45 23 1,15,31 * *", "Pacific/Auckland"),
        ] {
            let schedule = Schedule::parse(written, Some(zone)).expect("valid");
            let converted = expression(&schedule).expect("expressible");
            let five = converted
                .strip_prefix("cron(")
                .and_then(|e| e.strip_suffix(" *)"))
                .expect("cron(... *)");
            // croner writes EventBridge's `5/15` as `5-59/15`.
            let five: Vec<String> = five
                .split(' ')
                .zip([59, 23, 31, 12, 7])
                .map(|(field, last)| match field.split_once('/') {
                    Some((from, step)) => format!("{from}-{last}/{step}"),
                    None => field.to_owned(),
                })
                .collect();
            let read_back = Schedule::parse(&five.join(" "), Some(zone)).expect("croner reads it");
            let mut at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .expect("a time")
                .with_timezone(&chrono::Utc);
            for _ in 0..500 {
                let next = schedule.next_after(at).expect("a next time");
                assert_eq!(
                    read_back.next_after(at),
                    Some(next),
                    "{written} as {converted}"
                );
                at = next;
            }
        }
    }

    #[test]
    fn what_eventbridge_cannot_express_is_refused_saying_why() {
        let both = converted("0 9 1 * MON").expect_err("both day fields");
        assert!(
            both.contains("day of the month") && both.contains("day of the week"),
            "{both}"
        );
        let last = converted("0 9 L * *").expect_err("last day");
        assert!(last.contains("L, W or #"), "{last}");
    }

    #[test]
    fn jitter_is_a_window_in_whole_minutes() {
        assert_eq!(window_minutes(Duration::ZERO), None);
        assert_eq!(window_minutes(Duration::from_secs(1)), Some(1));
        assert_eq!(window_minutes(Duration::from_secs(60)), Some(1));
        assert_eq!(window_minutes(Duration::from_secs(61)), Some(2));
        assert_eq!(window_minutes(Duration::from_secs(3600)), Some(60));
    }

    #[test]
    fn the_input_names_the_trigger_and_asks_for_the_context_attributes() {
        let input: serde_json::Value = serde_json::from_str(&input("digest")).expect("JSON");
        assert_eq!(
            input,
            serde_json::json!({
                "sandstorm_trigger": "digest",
                "scheduled_time": "<aws.scheduler.scheduled-time>",
                "execution_id": "<aws.scheduler.execution-id>",
                "attempt": "<aws.scheduler.attempt-number>",
            })
        );
    }
}
