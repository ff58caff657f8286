//! A cron trigger as a Vercel cron job: a five-field schedule in UTC, in
//! numbers only, that calls `GET /triggers/cron/<name>`.
//!
//! Vercel reads every schedule in UTC. A trigger in another zone fires at
//! UTC times that move with the zone's offset (09:00 in Prague is 08:00
//! UTC in winter and 07:00 in summer), so its Vercel schedule covers every
//! UTC time the trigger can fire at, under each offset the zone uses: the
//! hours (and minutes, for zones off the hour) shifted by each offset, and
//! the days shifted where that crosses midnight, and, for a time the
//! clocks skip when they go forward, the first time after the jump, when
//! croner fires it. It may call more often
//! than the trigger fires; the route then fires only when the trigger's own
//! schedule is due, in its own zone, at the time Vercel called for
//! ([`called_for`]), and answers "not due" otherwise.
//!
//! Vercel takes no `MON`/`JAN` names and not both day fields restricted,
//! so weekdays are numbers (0 is Sunday) and a trigger that restricts both
//! day fields is called every day and checked.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex, PoisonError};

use chrono::{DateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

use super::cron_fields::{
    DAYS_OF_MONTH, DAYS_OF_WEEK, Days, Fields, HOURS, MINUTES, MONTHS, Steps, Values, is_full,
    write_field,
};
use super::schedule::Schedule;

/// The years whose UTC offsets a zone's schedule covers: fixed, so that a
/// checked-in vercel.json stays the same from one day to the next. (The
/// zone rules are those of the build's time zone database; past 2045 they
/// repeat the last ones it knows.)
const OFFSET_YEARS: std::ops::Range<i32> = 2025..2046;
/// How often the zone's offset is sampled over those years: every offset
/// that lasts longer than this is found, and the minute it starts.
const OFFSET_SAMPLE: TimeDelta = TimeDelta::days(1);
/// The latest Vercel calls for a time: on the Hobby plan a job is called
/// within the hour of its time ("0 1 * * *" anywhere from 1:00 to 1:59).
const LATEST_CALL: TimeDelta = TimeDelta::minutes(61);

/// A trigger's Vercel cron job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VercelSchedule {
    /// The five-field UTC schedule for `vercel.json`.
    pub expression: String,
    /// The most times it calls in one day: past 1, Vercel's Hobby plan
    /// refuses it.
    pub calls_per_day: usize,
}

/// The path Vercel calls for the cron trigger `name`.
pub fn path(name: &str) -> String {
    format!("/triggers/cron/{name}")
}

/// The Vercel schedule of `schedule`, or why there is none.
pub fn schedule(schedule: &Schedule) -> Result<VercelSchedule, String> {
    let fields = Fields::of(schedule)?;
    let utc = in_utc(&fields, &zone_rules(schedule.zone()));
    let (day_of_month, day_of_week) = match &utc.days {
        Days::OfMonth(days) => (
            write_field(days, &DAYS_OF_MONTH, Steps::Standard, None),
            "*".to_owned(),
        ),
        // Both: the weekdays alone call on every day that can fire.
        Days::OfWeek(days) | Days::Both { of_week: days, .. } => (
            "*".to_owned(),
            write_field(days, &DAYS_OF_WEEK, Steps::Listed, None),
        ),
        // Vercel takes no schedule with both day fields restricted.
        Days::Every | Days::Either { .. } => ("*".to_owned(), "*".to_owned()),
    };
    Ok(VercelSchedule {
        expression: format!(
            "{} {} {day_of_month} {} {day_of_week}",
            write_field(&utc.minutes, &MINUTES, Steps::Standard, None),
            write_field(&utc.hours, &HOURS, Steps::Standard, None),
            write_field(&utc.months, &MONTHS, Steps::Standard, None),
        ),
        calls_per_day: utc.minutes.len() * utc.hours.len(),
    })
}

/// The fire time a call of the trigger's cron job at `now` stands for:
/// the latest time of its Vercel schedule at or before `now`, if it is
/// recent enough to be the one called for. The route fires when
/// `schedule` is due then.
pub(crate) fn called_for(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let vercel = self::schedule(schedule).ok()?;
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(&vercel.expression)
        .ok()?;
    let minute = now.with_second(0)?.with_nanosecond(0)?;
    let time = cron.find_previous_occurrence(&minute, true).ok()?;
    (minute - time < LATEST_CALL).then_some(time)
}

/// What of a zone's rules moves its fire times in UTC, over
/// [`OFFSET_YEARS`].
#[derive(Debug, Clone, Default)]
struct ZoneRules {
    /// Every offset it uses, in minutes east of UTC.
    offsets: BTreeSet<i32>,
    /// The wall-clock times its clocks skip when they go forward.
    gaps: BTreeSet<Gap>,
}

/// Wall-clock minutes a zone skips: croner fires a time in them at their
/// end, the first wall-clock time after the jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Gap {
    /// The first skipped minute of the day, local.
    start: i32,
    /// How many minutes are skipped.
    length: i32,
    /// The offset from the end of the gap on, in minutes east.
    offset_after: i32,
}

impl Gap {
    /// When local minute-of-day `at` is in the gap: the fire's UTC time,
    /// in minutes from the start of `at`'s local day.
    fn fires_at(&self, at: i32) -> Option<i32> {
        let into = (at - self.start).rem_euclid(MINUTES_PER_DAY);
        if into >= self.length {
            return None;
        }
        // A gap across midnight began the day before.
        let start = if at >= self.start {
            self.start
        } else {
            self.start - MINUTES_PER_DAY
        };
        Some(start + self.length - self.offset_after)
    }
}

/// The rules of `zone`, worked out once per zone, since each call of the
/// route needs them.
fn zone_rules(zone: Tz) -> ZoneRules {
    static KNOWN: LazyLock<Mutex<HashMap<Tz, ZoneRules>>> = LazyLock::new(Mutex::default);
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    known.entry(zone).or_insert_with(|| sample(zone)).clone()
}

/// The offset at `at`, in minutes east.
fn offset_at(zone: Tz, at: DateTime<Utc>) -> i32 {
    at.with_timezone(&zone)
        .offset()
        .fix()
        .local_minus_utc()
        .div_euclid(60)
}

fn sample(zone: Tz) -> ZoneRules {
    let mut rules = ZoneRules::default();
    let (Some(start), Some(end)) = (
        Utc.with_ymd_and_hms(OFFSET_YEARS.start, 1, 1, 0, 0, 0)
            .single(),
        Utc.with_ymd_and_hms(OFFSET_YEARS.end, 1, 1, 0, 0, 0)
            .single(),
    ) else {
        rules.offsets.insert(0);
        return rules;
    };
    let mut at = start;
    let mut offset = offset_at(zone, at);
    rules.offsets.insert(offset);
    while at < end {
        let next = at + OFFSET_SAMPLE;
        let next_offset = offset_at(zone, next);
        if next_offset != offset {
            rules.offsets.insert(next_offset);
            if next_offset > offset {
                // The minute the clocks jump, found by halving.
                let (mut before, mut after) = (at, next);
                while after - before > TimeDelta::minutes(1) {
                    let middle = before + (after - before) / 2;
                    if offset_at(zone, middle) == offset {
                        before = middle;
                    } else {
                        after = middle;
                    }
                }
                let minute_of_day = |t: DateTime<Utc>| {
                    i32::try_from(t.timestamp().div_euclid(60)).unwrap_or_default()
                };
                rules.gaps.insert(Gap {
                    start: (minute_of_day(after) + offset).rem_euclid(MINUTES_PER_DAY),
                    length: next_offset - offset,
                    offset_after: next_offset,
                });
            }
        }
        at = next;
        offset = next_offset;
    }
    rules
}

const MINUTES_PER_DAY: i32 = 24 * 60;

/// `fields`, read in a zone with `rules`, as fields in UTC that hold every
/// time they fire at.
fn in_utc(fields: &Fields, rules: &ZoneRules) -> Fields {
    let mut minutes = Values::new();
    let mut hours = Values::new();
    // Which way the day moves: -1 when a local time is the day before in
    // UTC, 1 when it is the day after.
    let mut shifts = BTreeSet::new();
    let mut add = |utc: i32| {
        shifts.insert(utc.div_euclid(MINUTES_PER_DAY));
        let of_day = utc.rem_euclid(MINUTES_PER_DAY);
        // Below 60 and 24: the conversions cannot fail.
        minutes.insert(u8::try_from(of_day % 60).unwrap_or_default());
        hours.insert(u8::try_from(of_day / 60).unwrap_or_default());
    };
    for hour in &fields.hours {
        for minute in &fields.minutes {
            let local = i32::from(*hour) * 60 + i32::from(*minute);
            for offset in &rules.offsets {
                add(local - offset);
            }
            for gap in &rules.gaps {
                if let Some(utc) = gap.fires_at(local) {
                    add(utc);
                }
            }
        }
    }
    let days = match &fields.days {
        Days::Every => Days::Every,
        Days::OfMonth(days) => Days::OfMonth(shift_days_of_month(days, &shifts)),
        Days::OfWeek(days) => Days::OfWeek(shift_days_of_week(days, &shifts)),
        Days::Either { of_month, of_week } => Days::Either {
            of_month: shift_days_of_month(of_month, &shifts),
            of_week: shift_days_of_week(of_week, &shifts),
        },
        Days::Both { of_month, of_week } => Days::Both {
            of_month: shift_days_of_month(of_month, &shifts),
            of_week: shift_days_of_week(of_week, &shifts),
        },
    };
    // A day moved across a month's first or last moves into another month.
    let months = if shifts.iter().all(|s| *s == 0) || is_full(&fields.months, &MONTHS) {
        fields.months.clone()
    } else {
        fields
            .months
            .iter()
            .flat_map(|m| {
                shifts
                    .iter()
                    .map(move |s| (i32::from(*m) - 1 + s).rem_euclid(12) + 1)
            })
            .filter_map(|m| u8::try_from(m).ok())
            .collect()
    };
    Fields {
        minutes,
        hours,
        months,
        days,
    }
}

fn shift_days_of_week(days: &Values, shifts: &BTreeSet<i32>) -> Values {
    days.iter()
        .flat_map(|d| {
            shifts
                .iter()
                .map(move |s| (i32::from(*d) + s).rem_euclid(7))
        })
        .filter_map(|d| u8::try_from(d).ok())
        .collect()
}

/// Days of the month moved by each shift: the day before the 1st is the
/// 28th to the 31st, and the day after the 28th to the 31st may be the 1st.
fn shift_days_of_month(days: &Values, shifts: &BTreeSet<i32>) -> Values {
    let mut shifted = Values::new();
    for day in days {
        for shift in shifts {
            match shift {
                -1 if *day == 1 => shifted.extend(28..=31),
                -1 => {
                    shifted.insert(day - 1);
                }
                1 => {
                    if *day < 31 {
                        shifted.insert(day + 1);
                    }
                    if *day >= 28 {
                        shifted.insert(1);
                    }
                }
                _ => {
                    shifted.insert(*day);
                }
            }
        }
    }
    shifted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn vercel(expression: &str, zone: Option<&str>) -> VercelSchedule {
        schedule(&Schedule::parse(expression, zone).expect("valid")).expect("a Vercel schedule")
    }

    #[test]
    fn a_utc_schedule_is_the_same_schedule_in_numbers() {
        for (written, expected) in [
            ("0 9 * * MON-FRI", "0 9 * * 1-5"),
            ("*/15 * * * *", "*/15 * * * *"),
            ("0 0 * * 7", "0 0 * * 0"),
            ("30 4 1 jan,jul *", "30 4 1 1,7 *"),
            // Both day fields: called daily, and checked.
            ("0 9 1 * MON", "0 9 * * *"),
            ("0 9 1-7 * +MON", "0 9 * * 1"),
        ] {
            let schedule = vercel(written, None);
            assert_eq!(schedule.expression, expected, "{written}");
        }
        assert_eq!(vercel("0 9 * * *", Some("UTC")).calls_per_day, 1);
        assert_eq!(vercel("*/15 * * * *", None).calls_per_day, 96);
    }

    #[test]
    fn a_zone_with_daylight_saving_is_called_under_both_offsets() {
        // Prague is UTC+1 in winter and UTC+2 in summer.
        let prague = vercel("0 9 * * MON-FRI", Some("Europe/Prague"));
        assert_eq!(prague.expression, "0 7,8 * * 1-5");
        assert_eq!(prague.calls_per_day, 2);
        // Kolkata, UTC+5:30, no daylight saving: the minutes move.
        assert_eq!(
            vercel("0 9 * * *", Some("Asia/Kolkata")).expression,
            "30 3 * * *"
        );
        // Auckland, UTC+12/+13: 09:00 Monday there is Sunday in UTC.
        assert_eq!(
            vercel("0 9 * * MON", Some("Pacific/Auckland")).expression,
            "0 20,21 * * 0"
        );
        // 02:30 does not happen in New York on the day the clocks go
        // forward; the run is at 03:00 then, 07:00 UTC.
        assert_eq!(
            vercel("30 2 * * *", Some("America/New_York")).expression,
            "0,30 6,7 * * *"
        );
        // New York, UTC-5/-4: 22:00 on 31 December is 1 January in UTC.
        assert_eq!(
            vercel("0 22 31 DEC *", Some("America/New_York")).expression,
            "0 2,3 1 1 *"
        );
    }

    /// Over a year of the trigger's own fire times, each is a time of the
    /// Vercel schedule, and a call then fires it; every other time of the
    /// Vercel schedule is answered "not due".
    #[test]
    fn every_fire_time_is_called_for_and_no_other_fires() {
        for (expression, zone) in [
            ("0 9 * * MON-FRI", "Europe/Prague"),
            ("30 1 * * *", "America/New_York"),
            ("30 2 * * *", "America/New_York"),
            ("0 9 * * MON", "Pacific/Auckland"),
            ("15 0 1 * *", "Asia/Tokyo"),
            ("0 9 1 * MON", "Europe/Prague"),
            ("0 */4 * * *", "Asia/Kathmandu"),
            ("30 1 * * SUN", "Europe/London"),
            // Half an hour of daylight saving.
            ("15 2 * * *", "Australia/Lord_Howe"),
            ("*/20 3 * * *", "Australia/Adelaide"),
        ] {
            let trigger = Schedule::parse(expression, Some(zone)).expect("valid");
            let vercel = Schedule::parse(&schedule(&trigger).expect("vercel").expression, None)
                .expect("the Vercel schedule is a schedule");
            let (start, end) = (utc("2026-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"));
            let mut fired = 0;
            let mut at = start;
            while let Some(next) = vercel.next_after(at).filter(|n| *n < end) {
                // Vercel calls a little late; the call stands for `next`.
                let call = next + TimeDelta::seconds(40);
                assert_eq!(
                    called_for(&trigger, call),
                    Some(next),
                    "{expression} {zone}"
                );
                if trigger.is_due(next) {
                    fired += 1;
                }
                at = next;
            }
            let mut due = 0;
            let mut at = start;
            while let Some(next) = trigger.next_after(at).filter(|n| *n < end) {
                assert!(
                    vercel.is_due(next),
                    "{expression} in {zone} fires at {next}, which Vercel does not call at"
                );
                due += 1;
                at = next;
            }
            assert_eq!(fired, due, "{expression} {zone}");
            assert!(due > 0, "{expression} {zone}");
        }
    }

    #[test]
    fn a_late_call_stands_for_the_hour_it_was_due_in_and_no_earlier() {
        let daily = Schedule::parse("0 1 * * *", None).expect("valid");
        // The Hobby plan calls "0 1 * * *" anywhere from 1:00 to 1:59.
        assert_eq!(
            called_for(&daily, utc("2026-03-02T01:59:10Z")),
            Some(utc("2026-03-02T01:00:00Z"))
        );
        assert_eq!(called_for(&daily, utc("2026-03-02T03:00:00Z")), None);
        assert_eq!(called_for(&daily, utc("2026-03-02T00:59:00Z")), None);
    }
}
