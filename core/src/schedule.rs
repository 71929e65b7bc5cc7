//! When a policy's windows open: a cron expression in UTC, or a fixed interval.
//!
//! `"*/15 * * * *"`, `"30 2 * * 1-5"`, `"@hourly"`, `"@daily"`, or `"every 10m"` (`s`, `m`, `h`,
//! `d`). Cron has the five classic fields (minute, hour, day of month, month, day of week with 0
//! or 7 for Sunday), lists, ranges and steps, and month and day names; when both day fields are
//! restricted a day matching either one counts, as in Vixie cron.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime, Time};

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Every(u64),
    Cron(Box<Cron>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "schedule {text:?}: {why}; write a cron expression in UTC such as \"0 */6 * * *\", \
     \"@daily\", or an interval such as \"every 30m\""
)]
pub struct ScheduleError {
    text: String,
    why: String,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The set of values one cron field allows, as a bit mask.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is not a number between {min} and {max}"))?;
        if v < min || v > max {
            return Err(format!("{v} is outside {min}–{max}"));
        }
        Ok(v)
    };
    let mut mask = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("step {s:?} is not a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            mask |= 1 << v;
            v += step;
        }
    }
    Ok(mask)
}

fn parse_every(rest: &str) -> Result<u64, String> {
    let rest = rest.trim();
    let (num, unit) = rest.split_at(
        rest.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{rest:?} is not an interval like 30m"))?;
    let seconds = match unit.trim() {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => return Err(format!("unknown unit {other:?} (s, m, h or d)")),
    };
    if seconds == 0 {
        return Err("an interval of zero".into());
    }
    Ok(seconds)
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why: String| ScheduleError {
            text: text.to_string(),
            why,
        };
        let trimmed = text.trim();
        let expanded = match trimmed {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            other => other,
        };
        let kind = if let Some(rest) = expanded.strip_prefix("every ") {
            Kind::Every(parse_every(rest).map_err(err)?)
        } else {
            let parts: Vec<&str> = expanded.split_whitespace().collect();
            if parts.len() != 5 {
                return Err(err(format!(
                    "{} fields where cron has 5 (minute hour day-of-month month day-of-week)",
                    parts.len()
                )));
            }
            let weekdays = field(parts[4], 0, 7, &WEEKDAYS).map_err(&err)?;
            // 7 is Sunday too.
            let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
            Kind::Cron(Box::new(Cron {
                minutes: field(parts[0], 0, 59, &[]).map_err(&err)?,
                hours: field(parts[1], 0, 23, &[]).map_err(&err)? as u32,
                days: field(parts[2], 1, 31, &[]).map_err(&err)? as u32,
                months: field(parts[3], 1, 12, &MONTHS).map_err(&err)? as u16,
                weekdays: weekdays as u8,
                days_restricted: parts[2] != "*",
                weekdays_restricted: parts[4] != "*",
            }))
        };
        Ok(Self {
            text: trimmed.to_string(),
            kind,
        })
    }
}

impl TryFrom<String> for Schedule {
    type Error = ScheduleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Schedule> for String {
    fn from(s: Schedule) -> String {
        s.text
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Cron {
    fn day_matches(&self, t: OffsetDateTime) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().number_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }
}

impl Schedule {
    /// The first time strictly after `after` (UTC), to the second for intervals and to the
    /// minute for cron; `None` if the expression never matches (such as `0 0 31 2 *`).
    ///
    /// Intervals count from the Unix epoch, so every coordinator agrees on the instants and a
    /// leader change neither skips nor repeats one.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let after = after.to_offset(time::UtcOffset::UTC);
        match &self.kind {
            Kind::Every(s) => {
                let t = after.unix_timestamp();
                let next = (t.div_euclid(*s as i64) + 1) * *s as i64;
                OffsetDateTime::from_unix_timestamp(next).ok()
            }
            Kind::Cron(c) => {
                // Whole minutes only; walk by month, then day, then hour, then minute.
                let mut t = after.replace_second(0).ok()?.replace_nanosecond(0).ok()?
                    + Duration::minutes(1);
                let limit = after + Duration::days(366 * 5);
                while t <= limit {
                    if c.months & (1 << u8::from(t.month())) == 0 {
                        let (y, m) = if t.month() == time::Month::December {
                            (t.year() + 1, time::Month::January)
                        } else {
                            (t.year(), t.month().next())
                        };
                        t = time::Date::from_calendar_date(y, m, 1)
                            .ok()?
                            .with_time(Time::MIDNIGHT)
                            .assume_utc();
                        continue;
                    }
                    if !c.day_matches(t) {
                        t = (t.date().next_day()?)
                            .with_time(Time::MIDNIGHT)
                            .assume_utc();
                        continue;
                    }
                    if c.hours & (1 << t.hour()) == 0 {
                        t = t.replace_minute(0).ok()? + Duration::hours(1);
                        continue;
                    }
                    if c.minutes & (1 << t.minute()) == 0 {
                        t += Duration::minutes(1);
                        continue;
                    }
                    return Some(t);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(expr: &str, after: OffsetDateTime) -> Option<OffsetDateTime> {
        expr.parse::<Schedule>().unwrap().next_after(after)
    }

    #[test]
    fn cron_and_intervals_table() {
        let t = datetime!(2026-11-21 10:17:42 UTC); // a Saturday
        let cases = [
            ("*/15 * * * *", Some(datetime!(2026-11-21 10:30 UTC))),
            ("0 * * * *", Some(datetime!(2026-11-21 11:00 UTC))),
            ("@hourly", Some(datetime!(2026-11-21 11:00 UTC))),
            ("@daily", Some(datetime!(2026-11-22 00:00 UTC))),
            ("30 2 * * 1-5", Some(datetime!(2026-11-23 02:30 UTC))),
            ("0 0 * * sun", Some(datetime!(2026-11-22 00:00 UTC))),
            ("0 0 * * 7", Some(datetime!(2026-11-22 00:00 UTC))),
            ("0 3 1 * *", Some(datetime!(2026-12-01 03:00 UTC))),
            ("0 0 1 jan *", Some(datetime!(2027-01-01 00:00 UTC))),
            ("17 10 * * *", Some(datetime!(2026-11-22 10:17 UTC))),
            ("18 10 * * *", Some(datetime!(2026-11-21 10:18 UTC))),
            // Both day fields: either matches (the 1st, or a Monday).
            ("0 0 1 * mon", Some(datetime!(2026-11-23 00:00 UTC))),
            ("0 0 29 2 *", Some(datetime!(2028-02-29 00:00 UTC))),
            ("0 0 31 2 *", None),
            ("5,10-12/2 * * * *", Some(datetime!(2026-11-21 11:05 UTC))),
            ("every 10m", Some(datetime!(2026-11-21 10:20 UTC))),
            ("every 1h", Some(datetime!(2026-11-21 11:00 UTC))),
            ("every 45s", Some(datetime!(2026-11-21 10:18:00 UTC))),
        ];
        for (expr, want) in cases {
            assert_eq!(next(expr, t), want, "{expr}");
        }
        // Strictly after: a time on the schedule gives the next one.
        assert_eq!(
            next("*/15 * * * *", datetime!(2026-11-21 10:30 UTC)),
            Some(datetime!(2026-11-21 10:45 UTC))
        );
        assert_eq!(
            next("every 10m", datetime!(2026-11-21 10:20 UTC)),
            Some(datetime!(2026-11-21 10:30 UTC))
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (expr, says) in [
            ("* * * *", "4 fields"),
            ("60 * * * *", "outside 0–59"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("0 0 * foo *", "not a number"),
            ("every 5y", "unknown unit"),
            ("every 0m", "zero"),
        ] {
            let e = expr.parse::<Schedule>().unwrap_err().to_string();
            assert!(e.contains(says), "{expr}: {e}");
            assert!(e.contains("every 30m"), "{e}");
        }
    }
}
