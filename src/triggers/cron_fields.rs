//! A cron schedule as sets of values, field by field, taken from croner's
//! own reading of it.
//!
//! The platforms' schedulers read cron otherwise than `ds serve` does:
//! EventBridge Scheduler numbers weekdays from 1 and wants `?` in one of
//! the two day fields; Vercel takes numbers only, and only in UTC. So
//! their expressions are written out from the values croner found
//! ([`Fields::of`]), never rewritten from the text: whatever the text
//! said (`*/15`, `MON-FRI`, `7` for Sunday), the platform's schedule
//! fires at the times `ds serve`'s scheduler would.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use croner::CronComponent;

use super::schedule::Schedule;

/// The values of one field.
pub(crate) type Values = BTreeSet<u8>;

/// Minutes of the hour.
pub(crate) const MINUTES: RangeInclusive<u8> = 0..=59;
/// Hours of the day.
pub(crate) const HOURS: RangeInclusive<u8> = 0..=23;
/// Days of the month.
pub(crate) const DAYS_OF_MONTH: RangeInclusive<u8> = 1..=31;
/// Months, January first.
pub(crate) const MONTHS: RangeInclusive<u8> = 1..=12;
/// Days of the week, Sunday first, as standard cron numbers them.
pub(crate) const DAYS_OF_WEEK: RangeInclusive<u8> = 0..=6;
/// The weekdays' names, from Sunday: both EventBridge and croner read them.
pub(crate) const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A schedule's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fields {
    /// The minutes it fires at.
    pub minutes: Values,
    /// The hours it fires in.
    pub hours: Values,
    /// The months it fires in.
    pub months: Values,
    /// The days it fires on.
    pub days: Days,
}

/// Which days a schedule fires on: cron's two day fields together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Days {
    /// Every day.
    Every,
    /// These days of the month.
    OfMonth(Values),
    /// These days of the week (0 is Sunday).
    OfWeek(Values),
    /// Both fields restricted: cron's rule is a day that matches either.
    Either {
        /// Days of the month.
        of_month: Values,
        /// Days of the week.
        of_week: Values,
    },
    /// Both fields restricted with croner's `+` before the weekday: a day
    /// that matches both.
    Both {
        /// Days of the month.
        of_month: Values,
        /// Days of the week.
        of_week: Values,
    },
}

impl Fields {
    /// The fields of `schedule`, or why they cannot be written out for a
    /// platform: `L`, `W` and `#` depend on the month, and the platforms'
    /// readings of them differ from croner's.
    pub(crate) fn of(schedule: &Schedule) -> Result<Self, String> {
        let pattern = schedule.pattern();
        for (component, field) in [
            (&pattern.days, "day-of-month"),
            (&pattern.days_of_week, "day-of-week"),
        ] {
            if component.has_modifiers() {
                return Err(format!(
                    "{:?} uses L, W or # in its {field} field, which no platform schedule is \
                     written with here; list the days instead",
                    schedule.expression()
                ));
            }
        }
        let of_month = values(&pattern.days, &DAYS_OF_MONTH);
        let of_week = values(&pattern.days_of_week, &DAYS_OF_WEEK);
        let every_day_of_month = is_full(&of_month, &DAYS_OF_MONTH);
        let every_day_of_week = is_full(&of_week, &DAYS_OF_WEEK);
        // As croner's day match: a field written `*` is ignored, and with
        // both restricted a day matches either (both, with `+`).
        let days = match (pattern.is_dom_wildcard(), pattern.is_dow_wildcard()) {
            (_, true) if every_day_of_month => Days::Every,
            (_, true) => Days::OfMonth(of_month),
            (true, false) if every_day_of_week => Days::Every,
            (true, false) => Days::OfWeek(of_week),
            (false, false) if pattern.matches_dom_and_dow() => {
                match (every_day_of_month, every_day_of_week) {
                    (true, true) => Days::Every,
                    (true, false) => Days::OfWeek(of_week),
                    (false, true) => Days::OfMonth(of_month),
                    (false, false) => Days::Both { of_month, of_week },
                }
            }
            (false, false) if every_day_of_month || every_day_of_week => Days::Every,
            (false, false) => Days::Either { of_month, of_week },
        };
        Ok(Fields {
            minutes: values(&pattern.minutes, &MINUTES),
            hours: values(&pattern.hours, &HOURS),
            months: values(&pattern.months, &MONTHS),
            days,
        })
    }
}

/// The values croner set in `component`, within `range`.
fn values(component: &CronComponent, range: &RangeInclusive<u8>) -> Values {
    component
        .values()
        .into_iter()
        .filter_map(|v| u8::try_from(v).ok())
        .filter(|v| range.contains(v))
        .collect()
}

/// Whether `values` holds every value of `range`.
pub(crate) fn is_full(values: &Values, range: &RangeInclusive<u8>) -> bool {
    range.clone().all(|v| values.contains(&v))
}

/// How a field's steps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Steps {
    /// Not at all: the values are listed.
    Listed,
    /// `5/15`: from 5, every 15 (EventBridge's form).
    FromStart,
    /// `*/15` or `5-59/15` (standard cron's form).
    Standard,
}

/// One field written out: `*` for every value, a step when the values are
/// one (reaching the end of `range`), else a list of values and ranges of
/// three or more (`1-5,7`). `names`, when given, names the values from
/// the start of `range`.
pub(crate) fn write_field(
    values: &Values,
    range: &RangeInclusive<u8>,
    steps: Steps,
    names: Option<&[&str]>,
) -> String {
    if is_full(values, range) {
        return "*".to_owned();
    }
    let sorted: Vec<u8> = values.iter().copied().collect();
    if steps != Steps::Listed
        && let Some(step) = step_of(&sorted, *range.end())
    {
        let first = sorted[0];
        return match steps {
            Steps::FromStart => format!("{first}/{step}"),
            Steps::Standard if first == *range.start() => format!("*/{step}"),
            _ => format!("{first}-{}/{step}", range.end()),
        };
    }
    let name = |value: u8| match names {
        Some(names) => names
            .get(usize::from(value - range.start()))
            .map_or_else(|| value.to_string(), |n| (*n).to_owned()),
        None => value.to_string(),
    };
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{}-{}", name(sorted[i]), name(sorted[j])));
        } else {
            parts.extend(sorted[i..=j].iter().map(|v| name(*v)));
        }
        i = j + 1;
    }
    parts.join(",")
}

/// The step of `sorted` when it is three or more values the same step
/// apart whose next would pass `last`.
fn step_of(sorted: &[u8], last: u8) -> Option<u8> {
    let [first, second, ..] = sorted else {
        return None;
    };
    let step = second - first;
    let evenly = sorted.windows(2).all(|pair| pair[1] - pair[0] == step);
    let end = *sorted.last()?;
    (sorted.len() >= 3 && step > 1 && evenly && u16::from(end) + u16::from(step) > u16::from(last))
        .then_some(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(expression: &str) -> Result<Fields, String> {
        Fields::of(&Schedule::parse(expression, None).expect("valid"))
    }

    fn set(values: impl IntoIterator<Item = u8>) -> Values {
        values.into_iter().collect()
    }

    #[test]
    fn the_fields_are_the_values_croner_read() {
        let weekdays = fields("*/15 9-17 * JAN,JUL mon-fri").expect("plain");
        assert_eq!(weekdays.minutes, set([0, 15, 30, 45]));
        assert_eq!(weekdays.hours, set(9..=17));
        assert_eq!(weekdays.months, set([1, 7]));
        assert_eq!(weekdays.days, Days::OfWeek(set(1..=5)));
        // Sunday is 0 or 7.
        assert_eq!(
            fields("0 0 * * 7").expect("sunday").days,
            Days::OfWeek(set([0]))
        );
        assert_eq!(
            fields("0 0 1,15 * *").expect("dom").days,
            Days::OfMonth(set([1, 15]))
        );
        assert_eq!(fields("0 0 * * *").expect("daily").days, Days::Every);
        assert_eq!(
            fields("0 0 ? * *").expect("question mark").days,
            Days::Every
        );
    }

    #[test]
    fn two_restricted_day_fields_keep_crons_either_rule() {
        assert_eq!(
            fields("0 0 1 * MON").expect("either").days,
            Days::Either {
                of_month: set([1]),
                of_week: set([1])
            }
        );
        // croner's `+`: both.
        assert_eq!(
            fields("0 0 1-7 * +MON").expect("both").days,
            Days::Both {
                of_month: set(1..=7),
                of_week: set([1])
            }
        );
        // A field that is every day in all but name: either is every day.
        assert_eq!(fields("0 0 1-31 * MON").expect("every").days, Days::Every);
        assert_eq!(
            fields("0 0 1-31 * +MON").expect("mondays").days,
            Days::OfWeek(set([1]))
        );
    }

    #[test]
    fn month_dependent_days_are_refused_naming_the_field() {
        for (expression, field) in [
            ("0 0 L * *", "day-of-month"),
            ("0 0 15W * *", "day-of-month"),
            ("0 0 * * 5L", "day-of-week"),
            ("0 0 * * FRI#2", "day-of-week"),
        ] {
            let error = fields(expression).expect_err(expression);
            assert!(error.contains(field), "{expression}: {error}");
        }
    }

    #[test]
    fn fields_are_written_as_steps_ranges_and_lists() {
        let write = |values: Values, range: &RangeInclusive<u8>, steps| {
            write_field(&values, range, steps, None)
        };
        assert_eq!(write(set(0..=59), &MINUTES, Steps::FromStart), "*");
        assert_eq!(
            write(set([0, 15, 30, 45]), &MINUTES, Steps::FromStart),
            "0/15"
        );
        assert_eq!(
            write(set([0, 15, 30, 45]), &MINUTES, Steps::Standard),
            "*/15"
        );
        assert_eq!(
            write(set([5, 20, 35, 50]), &MINUTES, Steps::Standard),
            "5-59/15"
        );
        // A step that stops short of the end is a list.
        assert_eq!(
            write(set([0, 15, 30]), &MINUTES, Steps::Standard),
            "0,15,30"
        );
        assert_eq!(write(set([0, 15, 30]), &MINUTES, Steps::Listed), "0,15,30");
        assert_eq!(
            write(
                set([1, 2, 3, 4, 5, 7, 9, 10]),
                &DAYS_OF_MONTH,
                Steps::Listed
            ),
            "1-5,7,9,10"
        );
        assert_eq!(
            write_field(
                &set([1, 2, 3, 4, 5]),
                &DAYS_OF_WEEK,
                Steps::Listed,
                Some(&WEEKDAY_NAMES)
            ),
            "MON-FRI"
        );
        assert_eq!(
            write_field(
                &set([0, 6]),
                &DAYS_OF_WEEK,
                Steps::Listed,
                Some(&WEEKDAY_NAMES)
            ),
            "SUN,SAT"
        );
    }
}
