//! Cron expressions: parsing, validation and civil-time matching.
//!
//! A [`Cron`] is parsed from the classic five-field form
//! `minute hour day-of-month month day-of-week`, or from six fields with a
//! leading `second`. Each field accepts `*`, a number, `a-b`, `*/n`, `a-b/n`,
//! `a/n` (from `a` to the field's end) and comma lists of these. Months also
//! accept `JAN`–`DEC` and days of the week `SUN`–`SAT` (any case); day of week
//! `7` is another name for Sunday, and `?` means `*` in the two day fields.
//! The macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight` and `@hourly` stand for their usual five-field expansions.
//!
//! Days follow Vixie cron: when both day-of-month and day-of-week are
//! restricted (neither is written as `*` or `?`), a day matches if *either*
//! matches; otherwise both must match.
//!
//! This module knows nothing about time zones or instants: it answers "does
//! this civil date match" and "which is the first (or last) matching time of
//! day from here". Turning that into fire instants, including the daylight
//! saving rules, is the job of the sibling `calendar` module.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Date;

/// Seconds in one civil day.
const SECONDS_PER_DAY: u32 = 86_400;

/// The hour bitset that covers every hour of the day (bits 0–23).
const ALL_HOURS: u64 = (1 << 24) - 1;

/// Month names accepted in the month field, in order from January (= 1).
const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// Day names accepted in the day-of-week field, in order from Sunday (= 0).
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The longest length of each month, February counted as 29 days.
const LONGEST_MONTH: [i8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// The macros and the five-field specs they stand for.
const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// A parsed cron expression.
///
/// Every field is kept as a bitset in which bit `n` is set when the value
/// `n` is allowed. The normalized source text is kept for [`fmt::Display`],
/// so `spec.parse::<Cron>()?.to_string()` round-trips.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    /// Allowed seconds, bits 0–59 (only bit 0 for five-field specs).
    seconds: u64,
    /// Allowed minutes, bits 0–59.
    minutes: u64,
    /// Allowed hours, bits 0–23.
    hours: u64,
    /// Allowed days of the month, bits 1–31.
    days_of_month: u64,
    /// Allowed months, bits 1–12.
    months: u64,
    /// Allowed days of the week, bits 0–6 with 0 = Sunday.
    days_of_week: u64,
    /// Both day fields are restricted, so a day matches when either does.
    days_either: bool,
    /// The source text, trimmed and with fields separated by single spaces.
    text: String,
}

/// Why a cron spec was refused.
///
/// The message names the offending field and its text and says what is
/// wrong, for example `hour field "25": 25 is outside 0-23`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// The field at fault: `"second"`, `"minute"`, `"hour"`,
    /// `"day-of-month"`, `"month"`, `"day-of-week"`, or `"spec"` when the
    /// spec as a whole is wrong (field count, unknown macro).
    pub field: &'static str,
    /// A short sentence that names the field and says what is wrong.
    pub message: String,
}

impl CronError {
    /// An error in one field, rendered as `{field} field "{text}": {detail}`.
    fn in_field(field: &Field, text: &str, detail: impl fmt::Display) -> CronError {
        CronError {
            field: field.name,
            message: format!("{} field \"{text}\": {detail}", field.name),
        }
    }

    /// An error in the spec as a whole.
    fn in_spec(message: String) -> CronError {
        CronError {
            field: "spec",
            message,
        }
    }
}

/// Which names, if any, a field accepts besides numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Names {
    /// Numbers only.
    None,
    /// `JAN`–`DEC`.
    Months,
    /// `SUN`–`SAT`.
    Days,
}

/// The static description of one cron field.
#[derive(Debug)]
struct Field {
    /// The name used in error messages and [`CronError::field`].
    name: &'static str,
    /// The smallest value.
    min: u8,
    /// The largest value that may be written (7 for day of week).
    max: u8,
    /// The value that `*` and `a/n` run up to (6 for day of week).
    last: u8,
    /// Names accepted besides numbers.
    names: Names,
    /// Whether `?` is accepted as `*`.
    question_mark: bool,
}

/// The second field (first of six).
const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    last: 59,
    names: Names::None,
    question_mark: false,
};

/// The minute field.
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    last: 59,
    names: Names::None,
    question_mark: false,
};

/// The hour field.
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    last: 23,
    names: Names::None,
    question_mark: false,
};

/// The day-of-month field.
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    last: 31,
    names: Names::None,
    question_mark: true,
};

/// The month field.
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    last: 12,
    names: Names::Months,
    question_mark: false,
};

/// The day-of-week field; 7 is accepted and means Sunday.
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    last: 6,
    names: Names::Days,
    question_mark: true,
};

impl Cron {
    /// Parses a cron spec (five or six fields, or a macro).
    ///
    /// # Errors
    ///
    /// Returns a [`CronError`] naming the offending field when the spec has
    /// the wrong number of fields, a field is malformed or out of range, or
    /// the day-of-month and month fields can never match together (such as
    /// `0 0 30 2 *`).
    pub fn parse(spec: &str) -> Result<Cron, CronError> {
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let text = fields.join(" ");
        if let [single] = fields.as_slice() {
            if single.starts_with('@') {
                return Cron::parse_macro(single);
            }
        }
        match *fields.as_slice() {
            [minute, hour, dom, month, dow] => {
                Cron::from_fields(["0", minute, hour, dom, month, dow], text)
            }
            [second, minute, hour, dom, month, dow] => {
                Cron::from_fields([second, minute, hour, dom, month, dow], text)
            }
            _ => Err(CronError::in_spec(format!(
                "cron spec \"{text}\" has {} fields; it needs 5 (minute hour \
                 day-of-month month day-of-week) or 6 (with seconds first)",
                fields.len()
            ))),
        }
    }

    /// Whether `date` is a day on which this spec fires (month and day
    /// fields, with the Vixie either/both rule for the two day fields).
    pub fn matches_date(&self, date: Date) -> bool {
        if !has_bit(self.months, date.month()) {
            return false;
        }
        let by_month_day = has_bit(self.days_of_month, date.day());
        let by_weekday = has_bit(self.days_of_week, date.weekday().to_sunday_zero_offset());
        if self.days_either {
            by_month_day || by_weekday
        } else {
            by_month_day && by_weekday
        }
    }

    /// Whether the hour field covers all 24 hours (as in `* * * * *` or
    /// `30 * * * *`). Such specs follow real time across daylight saving
    /// changes; the others ("fixed-hour" specs) follow the wall clock.
    pub fn all_hours(&self) -> bool {
        self.hours & ALL_HOURS == ALL_HOURS
    }

    /// The first matching time of day at or after `second_of_day`
    /// (0–86399), as seconds since midnight, or `None` if no time later in
    /// the day matches. Only the second, minute and hour fields are used.
    pub(crate) fn first_time_at_or_after(&self, second_of_day: u32) -> Option<u32> {
        if second_of_day >= SECONDS_PER_DAY {
            return None;
        }
        let (h0, m0, s0) = split_time(second_of_day);
        for hour in bits_upward(self.hours, h0, 23) {
            let minute_from = if hour == h0 { m0 } else { 0 };
            for minute in bits_upward(self.minutes, minute_from, 59) {
                let second_from = if hour == h0 && minute == m0 { s0 } else { 0 };
                if let Some(second) = bits_upward(self.seconds, second_from, 59).next() {
                    return Some(join_time(hour, minute, second));
                }
            }
        }
        None
    }

    /// The last matching time of day at or before `second_of_day`
    /// (values above 86399 are treated as 86399), as seconds since
    /// midnight, or `None` if no earlier time in the day matches.
    pub(crate) fn last_time_at_or_before(&self, second_of_day: u32) -> Option<u32> {
        let (h0, m0, s0) = split_time(second_of_day.min(SECONDS_PER_DAY - 1));
        for hour in bits_downward(self.hours, h0) {
            let minute_to = if hour == h0 { m0 } else { 59 };
            for minute in bits_downward(self.minutes, minute_to) {
                let second_to = if hour == h0 && minute == m0 { s0 } else { 59 };
                if let Some(second) = bits_downward(self.seconds, second_to).next() {
                    return Some(join_time(hour, minute, second));
                }
            }
        }
        None
    }

    /// Expands a macro such as `@daily`.
    fn parse_macro(name: &str) -> Result<Cron, CronError> {
        let expansion = MACROS
            .iter()
            .find(|(macro_name, _)| macro_name.eq_ignore_ascii_case(name))
            .map(|(_, expansion)| *expansion)
            .ok_or_else(|| {
                CronError::in_spec(format!(
                    "cron spec \"{name}\": unknown macro {name}; use @yearly, @annually, \
                     @monthly, @weekly, @daily, @midnight or @hourly"
                ))
            })?;
        let mut cron = Cron::parse(expansion)?;
        cron.text = name.to_string();
        Ok(cron)
    }

    /// Builds a spec from its six field texts (seconds first) and checks
    /// that it can fire.
    fn from_fields(fields: [&str; 6], text: String) -> Result<Cron, CronError> {
        let [second, minute, hour, day_of_month, month, day_of_week] = fields;
        let cron = Cron {
            seconds: parse_field(&SECOND, second)?,
            minutes: parse_field(&MINUTE, minute)?,
            hours: parse_field(&HOUR, hour)?,
            days_of_month: parse_field(&DAY_OF_MONTH, day_of_month)?,
            months: parse_field(&MONTH, month)?,
            days_of_week: parse_field(&DAY_OF_WEEK, day_of_week)?,
            days_either: is_restricted(day_of_month) && is_restricted(day_of_week),
            text,
        };
        if !cron.day_of_month_fits_a_month(day_of_month) {
            return Err(CronError::in_field(
                &DAY_OF_MONTH,
                day_of_month,
                format_args!(
                    "no month allowed by the month field \"{month}\" has such a day, \
                     so the spec can never fire"
                ),
            ));
        }
        Ok(cron)
    }

    /// Whether some allowed month has some allowed day of the month
    /// (February counted as 29 days), or the day-of-week field alone can
    /// make the spec fire under the either rule.
    fn day_of_month_fits_a_month(&self, day_of_month: &str) -> bool {
        if self.days_either || !is_restricted(day_of_month) {
            return true;
        }
        (1i8..=12).zip(LONGEST_MONTH).any(|(month, longest)| {
            has_bit(self.months, month) && (1..=longest).any(|day| has_bit(self.days_of_month, day))
        })
    }
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(spec: &str) -> Result<Cron, CronError> {
        Cron::parse(spec)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether a day field restricts days, as crontab(5) reads it: one that does not start with
/// `*` (or `?`) does; `*/2` does not, so `0 0 */2 * MON` is odd days that are Mondays.
fn is_restricted(text: &str) -> bool {
    !text.starts_with('*') && !text.starts_with('?')
}

/// Whether bit `value` is set; negative or too-large values are not.
fn has_bit(bits: u64, value: i8) -> bool {
    u32::try_from(value)
        .ok()
        .and_then(|shift| bits.checked_shr(shift))
        .is_some_and(|shifted| shifted & 1 == 1)
}

/// The set bits of `bits` from `from` up to `to`, lowest first.
fn bits_upward(bits: u64, from: u32, to: u32) -> impl Iterator<Item = u32> {
    (from..=to).filter(move |&bit| bits.checked_shr(bit).is_some_and(|b| b & 1 == 1))
}

/// The set bits of `bits` from `to` down to 0, highest first.
fn bits_downward(bits: u64, to: u32) -> impl Iterator<Item = u32> {
    (0..=to)
        .rev()
        .filter(move |&bit| bits.checked_shr(bit).is_some_and(|b| b & 1 == 1))
}

/// Splits seconds since midnight into hour, minute and second.
fn split_time(second_of_day: u32) -> (u32, u32, u32) {
    (
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    )
}

/// Joins hour, minute and second into seconds since midnight.
fn join_time(hour: u32, minute: u32, second: u32) -> u32 {
    hour * 3600 + minute * 60 + second
}

/// Parses one field into its bitset.
fn parse_field(field: &Field, text: &str) -> Result<u64, CronError> {
    if text == "?" {
        if !field.question_mark {
            return Err(CronError::in_field(
                field,
                text,
                "? is only allowed in the day-of-month and day-of-week fields",
            ));
        }
        return parse_field(field, "*");
    }
    let mut bits = 0;
    for item in text.split(',') {
        bits |= parse_item(field, text, item)?;
    }
    Ok(bits)
}

/// Parses one comma-separated item (`*`, `a`, `a-b`, with an optional
/// `/step`) of the field whose whole text is `text`.
fn parse_item(field: &Field, text: &str, item: &str) -> Result<u64, CronError> {
    if item.is_empty() {
        return Err(CronError::in_field(field, text, "a list item is empty"));
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(field, text, step)?)),
        None => (item, None),
    };
    let (low, high) = if range == "*" {
        (field.min, field.last)
    } else if let Some((low, high)) = range.split_once('-') {
        let low = parse_value(field, text, low)?;
        let high = parse_value(field, text, high)?;
        if low > high {
            return Err(CronError::in_field(
                field,
                text,
                format_args!("the range {range} runs backwards"),
            ));
        }
        (low, high)
    } else {
        let value = parse_value(field, text, range)?;
        if step.is_some() {
            (value, field.last.max(value))
        } else {
            (value, value)
        }
    };
    let mut bits = 0u64;
    for value in (low..=high).step_by(usize::from(step.unwrap_or(1))) {
        // Day of week 7 is another name for Sunday, bit 0.
        let bit = if field.names == Names::Days {
            value % 7
        } else {
            value
        };
        bits |= 1u64 << bit;
    }
    Ok(bits)
}

/// Parses the step after `/`: a number from 1 to the field's width.
fn parse_step(field: &Field, text: &str, step: &str) -> Result<u8, CronError> {
    let width = u32::from(field.last - field.min) + 1;
    let value = parse_number(step).ok_or_else(|| {
        CronError::in_field(
            field,
            text,
            format_args!("the step \"{step}\" is not a number"),
        )
    })?;
    if value == 0 {
        return Err(CronError::in_field(
            field,
            text,
            "a step must be at least 1",
        ));
    }
    u8::try_from(value)
        .ok()
        .filter(|_| value <= width)
        .ok_or_else(|| {
            CronError::in_field(field, text, format_args!("a step must be at most {width}"))
        })
}

/// Parses one value: a number in the field's range or, where allowed, a
/// month or day name.
fn parse_value(field: &Field, text: &str, value: &str) -> Result<u8, CronError> {
    if value.is_empty() {
        return Err(CronError::in_field(field, text, "a value is missing"));
    }
    if let Some(number) = parse_number(value) {
        return u8::try_from(number)
            .ok()
            .filter(|n| (field.min..=field.max).contains(n))
            .ok_or_else(|| {
                CronError::in_field(
                    field,
                    text,
                    format_args!("{value} is outside {}-{}", field.min, field.max),
                )
            });
    }
    let (names, first, kind): (&[&str], u8, &str) = match field.names {
        Names::None => (&[], 0, "is not a number"),
        Names::Months => (&MONTH_NAMES, 1, "is not a number or a month name"),
        Names::Days => (&DAY_NAMES, 0, "is not a number or a day name"),
    };
    names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(value))
        .and_then(|index| u8::try_from(index).ok())
        .and_then(|index| index.checked_add(first))
        .ok_or_else(|| CronError::in_field(field, text, format_args!("{value} {kind}")))
}

/// Parses a plain decimal number (ASCII digits only), saturating at
/// `u32::MAX` so that huge numbers are reported as out of range.
fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u32>().unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    /// Parses a spec that the test knows is valid.
    fn cron(spec: &str) -> Cron {
        match Cron::parse(spec) {
            Ok(cron) => cron,
            Err(err) => panic!("{spec:?} should parse: {err}"),
        }
    }

    /// Parses a spec that the test knows is invalid.
    fn error(spec: &str) -> CronError {
        match Cron::parse(spec) {
            Ok(cron) => panic!("{spec:?} should be refused, got {cron:?}"),
            Err(err) => err,
        }
    }

    /// The set values of a bitset, lowest first.
    fn values(bits: u64) -> Vec<u32> {
        bits_upward(bits, 0, 63).collect()
    }

    /// Five-field specs fire at second 0 and parse every item form.
    #[test]
    fn parses_item_forms() {
        let c = cron("*/15 1-3,22 1,15-17 */4 *");
        assert_eq!(values(c.seconds), vec![0]);
        assert_eq!(values(c.minutes), vec![0, 15, 30, 45]);
        assert_eq!(values(c.hours), vec![1, 2, 3, 22]);
        assert_eq!(values(c.days_of_month), vec![1, 15, 16, 17]);
        assert_eq!(values(c.months), vec![1, 5, 9]);
        assert_eq!(values(c.days_of_week), vec![0, 1, 2, 3, 4, 5, 6]);
    }

    /// Ranges with steps and `a/n` (from a to the field's end).
    #[test]
    fn parses_steps() {
        let c = cron("10-30/10 5/20 0-23/6 2/10 * *");
        assert_eq!(values(c.seconds), vec![10, 20, 30]);
        assert_eq!(values(c.minutes), vec![5, 25, 45]);
        assert_eq!(values(c.hours), vec![0, 6, 12, 18]);
        assert_eq!(values(c.days_of_month), vec![2, 12, 22]);
    }

    /// Six fields put seconds first.
    #[test]
    fn parses_six_fields() {
        let c = cron("30 */5 * * * *");
        assert_eq!(values(c.seconds), vec![30]);
        assert_eq!(values(c.minutes).len(), 12);
    }

    /// Month and day names are accepted in any case, also in ranges.
    #[test]
    fn parses_names() {
        let c = cron("0 0 * jan,Mar-may,DEC mon-FRI");
        assert_eq!(values(c.months), vec![1, 3, 4, 5, 12]);
        assert_eq!(values(c.days_of_week), vec![1, 2, 3, 4, 5]);
        assert_eq!(values(cron("0 0 * * sun,sat").days_of_week), vec![0, 6]);
    }

    /// Day of week 7 is Sunday, alone and at the end of a range.
    #[test]
    fn day_of_week_seven_is_sunday() {
        assert_eq!(values(cron("0 0 * * 7").days_of_week), vec![0]);
        assert_eq!(values(cron("0 0 * * 5-7").days_of_week), vec![0, 5, 6]);
        assert_eq!(values(cron("0 0 * * 0,7").days_of_week), vec![0]);
    }

    /// `?` means `*` in the day fields and keeps the both-must-match rule.
    #[test]
    fn question_mark_in_day_fields() {
        assert_eq!(cron("0 0 ? * MON"), {
            let mut c = cron("0 0 * * MON");
            c.text = "0 0 ? * MON".to_string();
            c
        });
        assert!(!cron("0 0 1 * ?").days_either);
    }

    /// Macros expand to their usual specs and display as written.
    #[test]
    fn parses_macros() {
        let cases = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ];
        for (name, expansion) in cases {
            let parsed = cron(name);
            let mut expected = cron(expansion);
            expected.text = name.to_string();
            assert_eq!(parsed, expected, "{name}");
            assert_eq!(parsed.to_string(), name);
        }
        assert_eq!(cron(" @Daily ").to_string(), "@Daily");
    }

    /// Display is the trimmed spec with single spaces, and it parses back
    /// to an equal value.
    #[test]
    fn display_round_trips() {
        for spec in [
            "  0   0 *  * *  ",
            "*/5 * * * *",
            "0 30 9 * * MON-FRI",
            "0 0 1,15 * ?",
            "@hourly",
        ] {
            let parsed = cron(spec);
            let shown = parsed.to_string();
            assert_eq!(shown, spec.split_whitespace().collect::<Vec<_>>().join(" "));
            assert_eq!(cron(&shown), parsed);
            assert_eq!(shown.parse::<Cron>(), Ok(parsed));
        }
    }

    /// Both day fields restricted: a day matches if either matches (Vixie).
    #[test]
    fn vixie_either_rule() {
        let c = cron("0 0 1 * MON");
        assert!(c.days_either);
        assert!(c.matches_date(date(2026, 4, 1))); // a Wednesday, the 1st
        assert!(c.matches_date(date(2026, 4, 6))); // a Monday
        assert!(!c.matches_date(date(2026, 4, 7))); // neither
    }

    /// One day field unrestricted: both must match.
    #[test]
    fn both_rule_when_one_day_field_is_star() {
        let by_weekday = cron("0 0 * * MON");
        assert!(by_weekday.matches_date(date(2026, 4, 6)));
        assert!(!by_weekday.matches_date(date(2026, 4, 1)));
        let by_day = cron("0 0 1 * *");
        assert!(by_day.matches_date(date(2026, 4, 1)));
        assert!(!by_day.matches_date(date(2026, 4, 6)));
        let by_month = cron("0 0 * 2 *");
        assert!(by_month.matches_date(date(2026, 2, 10)));
        assert!(!by_month.matches_date(date(2026, 3, 10)));
    }

    /// The hour field decides between all-hours and fixed-hour specs.
    #[test]
    fn all_hours() {
        assert!(cron("* * * * *").all_hours());
        assert!(cron("30 * * * *").all_hours());
        assert!(cron("0 0-23 * * *").all_hours());
        assert!(cron("0 */1 * * *").all_hours());
        assert!(!cron("0 */2 * * *").all_hours());
        assert!(!cron("30 2 * * *").all_hours());
        assert!(!cron("@daily").all_hours());
    }

    /// Time-of-day search finds the next and previous matching second.
    #[test]
    fn time_of_day_search() {
        let c = cron("15,45 10 9,17 * * *");
        let t = |h: u32, m: u32, s: u32| join_time(h, m, s);
        assert_eq!(c.first_time_at_or_after(0), Some(t(9, 10, 15)));
        assert_eq!(c.first_time_at_or_after(t(9, 10, 15)), Some(t(9, 10, 15)));
        assert_eq!(c.first_time_at_or_after(t(9, 10, 16)), Some(t(9, 10, 45)));
        assert_eq!(c.first_time_at_or_after(t(9, 10, 46)), Some(t(17, 10, 15)));
        assert_eq!(c.first_time_at_or_after(t(17, 10, 46)), None);
        assert_eq!(c.first_time_at_or_after(SECONDS_PER_DAY), None);
        assert_eq!(c.last_time_at_or_before(t(23, 59, 59)), Some(t(17, 10, 45)));
        assert_eq!(c.last_time_at_or_before(t(17, 10, 44)), Some(t(17, 10, 15)));
        assert_eq!(c.last_time_at_or_before(t(17, 10, 14)), Some(t(9, 10, 45)));
        assert_eq!(c.last_time_at_or_before(t(9, 10, 14)), None);
        assert_eq!(c.last_time_at_or_before(u32::MAX), Some(t(17, 10, 45)));
    }

    /// Every-second specs match every second.
    #[test]
    fn every_second_time_search() {
        let c = cron("* * * * * *");
        assert_eq!(c.first_time_at_or_after(12_345), Some(12_345));
        assert_eq!(c.last_time_at_or_before(12_345), Some(12_345));
    }

    /// A wrong field count names the spec and says what is accepted.
    #[test]
    fn error_field_count() {
        let err = error("* * *");
        assert_eq!(err.field, "spec");
        assert_eq!(
            err.to_string(),
            "cron spec \"* * *\" has 3 fields; it needs 5 (minute hour day-of-month month \
             day-of-week) or 6 (with seconds first)"
        );
        assert_eq!(error("").field, "spec");
        assert_eq!(error("* * * * * * *").field, "spec");
    }

    /// An unknown macro lists the known ones.
    #[test]
    fn error_unknown_macro() {
        let err = error("@reboot");
        assert_eq!(err.field, "spec");
        assert!(err.message.contains("unknown macro @reboot"), "{err}");
        assert!(err.message.contains("@hourly"), "{err}");
    }

    /// Values outside a field's range name the field and the range.
    #[test]
    fn error_out_of_range() {
        let cases = [
            (
                "* 25 * * *",
                "hour",
                "hour field \"25\": 25 is outside 0-23",
            ),
            (
                "60 * * * *",
                "minute",
                "minute field \"60\": 60 is outside 0-59",
            ),
            (
                "61 * * * * *",
                "second",
                "second field \"61\": 61 is outside 0-59",
            ),
            (
                "* * 0 * *",
                "day-of-month",
                "day-of-month field \"0\": 0 is outside 1-31",
            ),
            (
                "* * 32 * *",
                "day-of-month",
                "day-of-month field \"32\": 32 is outside 1-31",
            ),
            (
                "* * * 13 *",
                "month",
                "month field \"13\": 13 is outside 1-12",
            ),
            (
                "* * * * 8",
                "day-of-week",
                "day-of-week field \"8\": 8 is outside 0-7",
            ),
            (
                "1,99 * * * *",
                "minute",
                "minute field \"1,99\": 99 is outside 0-59",
            ),
            (
                "* 99999999999 * * *",
                "hour",
                "hour field \"99999999999\": 99999999999 is outside 0-23",
            ),
        ];
        for (spec, field, message) in cases {
            let err = error(spec);
            assert_eq!(err.field, field, "{spec}");
            assert_eq!(err.message, message, "{spec}");
        }
    }

    /// Steps must be numbers from 1 to the field's width.
    #[test]
    fn error_steps() {
        let err = error("*/0 * * * *");
        assert_eq!(err.field, "minute");
        assert_eq!(
            err.message,
            "minute field \"*/0\": a step must be at least 1"
        );
        let err = error("* */x * * *");
        assert_eq!(err.field, "hour");
        assert_eq!(
            err.message,
            "hour field \"*/x\": the step \"x\" is not a number"
        );
        let err = error("* */25 * * *");
        assert_eq!(
            err.message,
            "hour field \"*/25\": a step must be at most 24"
        );
        let err = error("* * * * */");
        assert_eq!(err.field, "day-of-week");
        assert_eq!(
            err.message,
            "day-of-week field \"*/\": the step \"\" is not a number"
        );
    }

    /// Names that are not months or days say what was expected.
    #[test]
    fn error_bad_names() {
        let err = error("0 0 * FOO *");
        assert_eq!(err.field, "month");
        assert_eq!(
            err.message,
            "month field \"FOO\": FOO is not a number or a month name"
        );
        let err = error("0 0 * * MONDAY");
        assert_eq!(err.field, "day-of-week");
        assert_eq!(
            err.message,
            "day-of-week field \"MONDAY\": MONDAY is not a number or a day name"
        );
        let err = error("0 noon * * *");
        assert_eq!(err.field, "hour");
        assert_eq!(err.message, "hour field \"noon\": noon is not a number");
        let err = error("0 0 JAN * *");
        assert_eq!(err.field, "day-of-month");
        assert_eq!(
            err.message,
            "day-of-month field \"JAN\": JAN is not a number"
        );
        let err = error("+5 * * * *");
        assert_eq!(err.message, "minute field \"+5\": +5 is not a number");
    }

    /// Backward ranges are refused rather than wrapped.
    #[test]
    fn error_backward_range() {
        let err = error("0 0 10-2 * *");
        assert_eq!(err.field, "day-of-month");
        assert_eq!(
            err.message,
            "day-of-month field \"10-2\": the range 10-2 runs backwards"
        );
        let err = error("0 0 * * FRI-MON");
        assert_eq!(err.field, "day-of-week");
        assert_eq!(
            err.message,
            "day-of-week field \"FRI-MON\": the range FRI-MON runs backwards"
        );
    }

    /// Empty list items, missing range ends and misplaced `?` are refused.
    #[test]
    fn error_malformed_items() {
        let err = error("1,,2 * * * *");
        assert_eq!(err.message, "minute field \"1,,2\": a list item is empty");
        let err = error("0 0 * 1, *");
        assert_eq!(err.field, "month");
        assert_eq!(err.message, "month field \"1,\": a list item is empty");
        let err = error("0 -5 * * *");
        assert_eq!(err.message, "hour field \"-5\": a value is missing");
        let err = error("0 1-2-3 * * *");
        assert_eq!(err.message, "hour field \"1-2-3\": 2-3 is not a number");
        let err = error("0 ? * * *");
        assert_eq!(err.field, "hour");
        assert_eq!(
            err.message,
            "hour field \"?\": ? is only allowed in the day-of-month and day-of-week fields"
        );
    }

    /// Specs whose day-of-month never occurs in an allowed month are
    /// refused with a message naming both fields.
    #[test]
    fn error_never_fires() {
        for (spec, dom, month) in [
            ("0 0 30 2 *", "30", "2"),
            ("0 0 31 4,6 *", "31", "4,6"),
            ("0 0 30-31 FEB *", "30-31", "FEB"),
            ("0 0 31 4,6,9,11 ?", "31", "4,6,9,11"),
        ] {
            let err = error(spec);
            assert_eq!(err.field, "day-of-month", "{spec}");
            assert_eq!(
                err.message,
                format!(
                    "day-of-month field \"{dom}\": no month allowed by the month field \
                     \"{month}\" has such a day, so the spec can never fire"
                )
            );
        }
    }

    /// Sparse but possible specs are accepted: leap day, or a weekday that
    /// rescues an impossible day under the either rule.
    #[test]
    fn sparse_specs_are_accepted() {
        cron("0 0 29 2 *");
        cron("0 0 31 4,5 *");
        let rescued = cron("0 0 30 2 MON");
        assert!(rescued.matches_date(date(2026, 2, 2)));
    }

    /// Leap day matches only in leap years; the 31st only in long months.
    #[test]
    fn matches_real_dates_only() {
        let leap = cron("0 0 29 2 *");
        assert!(leap.matches_date(date(2028, 2, 29)));
        assert!(!leap.matches_date(date(2026, 3, 1)));
        let last = cron("0 0 31 * *");
        assert!(last.matches_date(date(2026, 1, 31)));
        assert!(!last.matches_date(date(2026, 4, 30)));
    }
}
