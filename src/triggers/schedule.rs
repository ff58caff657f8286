//! A cron trigger's schedule: a standard five-field cron expression
//! (minute hour day-of-month month day-of-week, names like `MON-FRI`
//! allowed) in an IANA time zone, UTC unless one is named. `croner` reads
//! it; `chrono-tz` knows the zones, so 09:00 in Prague stays 09:00 across
//! daylight saving.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// When a cron trigger fires.
#[derive(Clone)]
pub struct Schedule {
    /// The expression as written.
    expression: String,
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Reads `expression` in `timezone` (UTC when `None`). The error names
    /// the field at fault (`schedule` or `timezone`) and why.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Self, (String, String)> {
        let refuse = |why: String| ("schedule".to_owned(), why);
        // Five fields, as standard cron, EventBridge (less its year) and
        // Vercel have them; croner would also take a seconds field.
        if expression.split_whitespace().count() != 5 {
            return Err(refuse(
                "must be a five-field cron schedule (minute hour day month weekday), \
                 e.g. \"0 9 * * MON-FRI\""
                    .into(),
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(expression)
            .map_err(|e| refuse(format!("{expression:?} is not a cron schedule: {e}")))?;
        let zone = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                (
                    "timezone".to_owned(),
                    format!("{name:?} is not an IANA time zone name (like \"Europe/Prague\")"),
                )
            })?,
        };
        Ok(Schedule {
            expression: expression.trim().to_owned(),
            cron,
            zone,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone it is read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The expression as croner read it: the platforms' schedules are
    /// made from these fields ([`super::cron_fields`]), so they mean what
    /// `ds serve`'s scheduler means.
    pub(crate) fn pattern(&self) -> &croner::CronPattern {
        &self.cron.pattern
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// Whether `at`, to the minute, is a fire time: how a platform's
    /// scheduler that calls at a fire time is checked. It counts fire
    /// times as [`Schedule::next_after`] does, so a wall-clock time that
    /// the fall back to winter time repeats is one fire, as on `ds serve`,
    /// not two.
    pub fn is_due(&self, at: DateTime<Utc>) -> bool {
        let Some(minute) = at.with_second(0).and_then(|m| m.with_nanosecond(0)) else {
            return false;
        };
        self.next_after(minute - chrono::TimeDelta::seconds(1)) == Some(minute)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} in {})", self.expression, self.zone)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.zone == other.zone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    #[test]
    fn weekday_mornings_in_prague_follow_daylight_saving() {
        let schedule = Schedule::parse("0 9 * * MON-FRI", Some("Europe/Prague")).expect("valid");
        // Friday 2026-12-04, winter (UTC+1): Monday 09:00 is 08:00 UTC.
        assert_eq!(
            schedule.next_after(utc("2026-12-04T09:30:00Z")),
            Some(utc("2026-12-07T08:00:00Z"))
        );
        // Summer (UTC+2): 07:00 UTC.
        assert_eq!(
            schedule.next_after(utc("2026-07-01T06:00:00Z")),
            Some(utc("2026-07-01T07:00:00Z"))
        );
        assert!(schedule.is_due(utc("2026-12-07T08:00:00Z")));
        assert!(schedule.is_due(utc("2026-12-07T08:00:59Z")));
        assert!(!schedule.is_due(utc("2026-12-07T09:00:00Z")));
    }

    #[test]
    fn a_time_the_fall_back_repeats_is_due_once() {
        // New York falls back on 2026-11-01: 01:30 comes at 05:30 UTC and
        // again at 06:30 UTC.
        let schedule = Schedule::parse("30 1 * * *", Some("America/New_York")).expect("valid");
        let due: Vec<bool> = ["2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"]
            .iter()
            .map(|at| schedule.is_due(utc(at)))
            .collect();
        assert_eq!(due.iter().filter(|d| **d).count(), 1, "{due:?}");
    }

    #[test]
    fn every_minute_is_allowed() {
        let schedule = Schedule::parse("* * * * *", None).expect("valid");
        assert_eq!(
            schedule.next_after(utc("2026-12-06T10:00:30Z")),
            Some(utc("2026-12-06T10:01:00Z"))
        );
    }

    #[test]
    fn mistakes_name_their_field() {
        for (expression, zone, field) in [
            ("daily", None, "schedule"),
            ("0 9 * * * *", None, "schedule"),
            ("61 9 * * *", None, "schedule"),
            ("0 9 * * FUNDAY", None, "schedule"),
            ("0 9 * * *", Some("Europe/Nowhere"), "timezone"),
        ] {
            let (named, _) = Schedule::parse(expression, zone).expect_err(expression);
            assert_eq!(named, field, "{expression}");
        }
    }
}
