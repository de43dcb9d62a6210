//! Calendars: the instants at which a schedule fires.
//!
//! A [`Calendar`] is either a cron spec read in a time zone or a fixed
//! interval from an anchor instant. It answers two questions: when is the
//! next fire after a given instant ([`Calendar::next_after`]), and how many
//! fires were there in a span, and which was the latest
//! ([`Calendar::fires_between`]) — the scheduler uses the second to count
//! fires it skipped while it was down.
//!
//! # Daylight saving time
//!
//! Cron fires follow the wall clock of the zone, the way Vixie cron and
//! cronie do. A spec whose hour field covers all 24 hours (an *all-hours*
//! spec, such as `*/5 * * * *` or `30 * * * *`) keeps the rhythm of real
//! time: local times skipped by a spring-forward gap do not fire, and local
//! times repeated by a fall-back fold fire at both occurrences. Any other
//! spec (a *fixed-hour* spec, such as `30 2 * * *`) keeps the wall-clock
//! promise of "once at that time of day": times in a gap fire once, at the
//! first instant after the gap, and times in a fold fire once, at their
//! first occurrence.
//!
//! The search walks *segments*, stretches of time with a constant UTC
//! offset between two transitions of the zone. Inside a segment, local time
//! is instant plus offset, so matching civil times map one-to-one onto
//! instants. At a segment's start the gap and fold rules above apply.
//! Civil candidates are found day by day and then by time of day, so sparse
//! specs such as `0 0 29 2 *` cost a few thousand cheap steps at most.
//!
//! # Precision and bounds
//!
//! Instants are handled at microsecond precision (finer parts of `after`,
//! `from`, `to` and an interval's anchor are truncated toward the past);
//! cron fires are whole seconds. A cron search looks at most
//! [`SEARCH_HORIZON_DAYS`] ahead (or back), which covers the longest
//! possible wait of any accepted spec (eight years for `0 0 29 2 *` across
//! a century), and never past the years jiff supports (-9999 to 9999).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::civil::Date;
use jiff::tz::{Offset, TimeZone, TimeZoneDatabase};
use jiff::Timestamp;

use super::cron::Cron;

/// How many days a cron search looks ahead (or back) before giving up.
///
/// Nine years of 366 days: longer than the longest wait of any spec that
/// parses, which is eight years between leap days across a century
/// (2096-02-29 to 2104-02-29).
pub const SEARCH_HORIZON_DAYS: i64 = 9 * 366;

/// Seconds in one civil day.
const SECONDS_PER_DAY: i64 = 86_400;

/// The search horizon in seconds.
const SEARCH_HORIZON_SECONDS: i64 = SEARCH_HORIZON_DAYS * SECONDS_PER_DAY;

/// Microseconds in one second.
const MICROS_PER_SECOND: i128 = 1_000_000;

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Calendar {
    /// Fires at the instants whose local time in `zone` matches `cron`.
    Cron {
        /// The cron spec, read as wall-clock time in `zone`.
        cron: Cron,
        /// The zone whose wall clock the spec follows.
        zone: TimeZone,
    },
    /// Fires at anchor + k * every (k ≥ 0 integer); `every` ≥ 1 second.
    ///
    /// Both are used at microsecond precision; an `every` shorter than one
    /// microsecond never fires.
    Interval {
        /// The period between fires.
        every: Duration,
        /// The first fire; earlier instants have no fires.
        anchor: SystemTime,
    },
}

/// A time zone name that is not in the bundled IANA database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {name:?}; use an IANA name such as Europe/Paris or UTC")]
pub struct ZoneError {
    /// The name as given, without surrounding whitespace.
    pub name: String,
}

/// Looks up a time zone by IANA name (such as `America/New_York`) in jiff's
/// bundled time zone database, so results do not depend on the host's
/// zoneinfo files. The lookup ignores ASCII case; `""` and `UTC` give UTC.
///
/// # Errors
///
/// Returns a [`ZoneError`] when the name is not a known IANA zone
/// (`Etc/Unknown`, jiff's placeholder, is refused too).
pub fn time_zone(name: &str) -> Result<TimeZone, ZoneError> {
    let name = name.trim();
    if name.is_empty() || name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    TimeZoneDatabase::bundled()
        .get(name)
        .ok()
        .filter(|zone| !zone.is_unknown())
        .ok_or_else(|| ZoneError {
            name: name.to_string(),
        })
}

impl Calendar {
    /// The first fire time strictly after `after`, or `None` if there is
    /// none before year 9999 (or within a bounded search).
    ///
    /// For a cron calendar the search covers [`SEARCH_HORIZON_DAYS`]; every
    /// spec that parses fires within that span unless the end of year 9999
    /// comes first. Calling this again with the returned instant lists the
    /// fires in order, without repeats or gaps, across daylight saving
    /// changes (see the module documentation for the rules). For an
    /// interval this is plain arithmetic; `None` means the next fire is not
    /// representable as a `SystemTime`.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match self {
            Calendar::Cron { cron, zone } => {
                let after = floor_seconds(after)?;
                ZonedCron::new(cron, zone)
                    .next_after(after)
                    .and_then(system_time_from_seconds)
            }
            Calendar::Interval { every, anchor } => {
                let after = micros_floor(after)?;
                Interval::new(*every, *anchor)?
                    .next_after(after)
                    .and_then(system_time_from_micros)
            }
        }
    }

    /// How many fire times lie in (from, to] — counted with a cap `cap`
    /// (returns min(count, cap)), used to count skipped fires — plus the
    /// latest fire time in (from, to], if any.
    ///
    /// The latest fire is reported even when the count is capped (or `cap`
    /// is 0). For an interval both answers are computed in constant time.
    /// For a cron calendar counting walks the fires one by one, so its cost
    /// grows with `min(count, cap)`; the latest fire is then found by a
    /// backward search limited to [`SEARCH_HORIZON_DAYS`] before `to`.
    pub fn fires_between(
        &self,
        from: SystemTime,
        to: SystemTime,
        cap: u64,
    ) -> (u64, Option<SystemTime>) {
        match self {
            Calendar::Cron { cron, zone } => {
                let (Some(from), Some(to)) = (floor_seconds(from), floor_seconds(to)) else {
                    return (0, None);
                };
                let (count, latest) = ZonedCron::new(cron, zone).fires_between(from, to, cap);
                (count, latest.and_then(system_time_from_seconds))
            }
            Calendar::Interval { every, anchor } => {
                let (Some(from), Some(to), Some(interval)) = (
                    micros_floor(from),
                    micros_floor(to),
                    Interval::new(*every, *anchor),
                ) else {
                    return (0, None);
                };
                let (count, latest) = interval.fires_between(from, to);
                let count = u64::try_from(count).unwrap_or(u64::MAX).min(cap);
                (count, latest.and_then(system_time_from_micros))
            }
        }
    }
}

/// An interval calendar in microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
struct Interval {
    /// The period, at least 1.
    every: i128,
    /// The first fire.
    anchor: i128,
}

impl Interval {
    /// Converts the calendar's fields; `None` if `every` rounds down to
    /// zero microseconds.
    fn new(every: Duration, anchor: SystemTime) -> Option<Interval> {
        let every = i128::try_from(every.as_micros()).ok().filter(|&e| e > 0)?;
        let anchor = micros_floor(anchor)?;
        Some(Interval { every, anchor })
    }

    /// The fire with index `k` (anchor + k * every).
    fn fire(self, k: i128) -> Option<i128> {
        k.checked_mul(self.every)?.checked_add(self.anchor)
    }

    /// The index of the first fire strictly after `after`.
    fn first_index_after(self, after: i128) -> Option<i128> {
        if after < self.anchor {
            return Some(0);
        }
        after
            .checked_sub(self.anchor)?
            .checked_div(self.every)?
            .checked_add(1)
    }

    /// The index of the last fire at or before `at`, if any.
    fn last_index_at_or_before(self, at: i128) -> Option<i128> {
        if at < self.anchor {
            return None;
        }
        at.checked_sub(self.anchor)?.checked_div(self.every)
    }

    /// The first fire strictly after `after`.
    fn next_after(self, after: i128) -> Option<i128> {
        self.fire(self.first_index_after(after)?)
    }

    /// The number of fires in (from, to] and the latest of them.
    fn fires_between(self, from: i128, to: i128) -> (i128, Option<i128>) {
        let (Some(first), Some(last)) = (
            self.first_index_after(from),
            self.last_index_at_or_before(to),
        ) else {
            return (0, None);
        };
        match last.checked_sub(first).and_then(|d| d.checked_add(1)) {
            Some(count) if count > 0 => (count, self.fire(last)),
            _ => (0, None),
        }
    }
}

/// A cron spec read in a time zone, searched in whole Unix seconds.
struct ZonedCron<'a> {
    /// The spec.
    cron: &'a Cron,
    /// The zone whose wall clock it follows.
    zone: &'a TimeZone,
    /// Whether the spec follows the wall clock across DST changes (gap
    /// times fire once after the gap, fold times once at first occurrence)
    /// rather than real time.
    fixed_hour: bool,
}

impl<'a> ZonedCron<'a> {
    /// Pairs a spec with its zone.
    fn new(cron: &'a Cron, zone: &'a TimeZone) -> ZonedCron<'a> {
        ZonedCron {
            cron,
            zone,
            fixed_hour: !cron.all_hours(),
        }
    }

    /// The first fire strictly after the whole second `after`, within the
    /// search horizon.
    fn next_after(&self, after: i64) -> Option<i64> {
        let lowest = after.checked_add(1)?;
        let highest = lowest.saturating_add(SEARCH_HORIZON_SECONDS);
        let mut segment = Segment::containing(self.zone, lowest)?;
        loop {
            if let Some(fire) = segment.first_fire(self, lowest, highest) {
                return Some(fire);
            }
            let next = segment.end.filter(|&end| end <= highest)?;
            segment = Segment::containing(self.zone, next)?;
        }
    }

    /// The last fire in `lowest..=highest` (whole seconds), looking back at
    /// most the search horizon from `highest`.
    fn last_in(&self, lowest: i64, highest: i64) -> Option<i64> {
        let lowest = lowest.max(highest.saturating_sub(SEARCH_HORIZON_SECONDS));
        if lowest > highest {
            return None;
        }
        let mut segment = Segment::containing(self.zone, highest)?;
        loop {
            if let Some(fire) = segment.last_fire(self, lowest, highest) {
                return Some(fire);
            }
            let start = segment.start.filter(|&start| start > lowest)?;
            segment = Segment::containing(self.zone, start.checked_sub(1)?)?;
        }
    }

    /// The number of fires after `from` and at or before `to` (whole
    /// seconds), capped at `cap`, and the latest of them.
    fn fires_between(&self, from: i64, to: i64, cap: u64) -> (u64, Option<i64>) {
        let mut count = 0;
        let mut latest = None;
        let mut cursor = from;
        while let Some(fire) = self.next_after(cursor).filter(|&fire| fire <= to) {
            if count == cap {
                // More fires than the cap: find the latest directly.
                let lowest = from.saturating_add(1);
                return (count, self.last_in(lowest, to).or(latest));
            }
            count += 1;
            latest = Some(fire);
            cursor = fire;
        }
        (count, latest)
    }

    /// Whether some civil time in `lowest..=highest` (local seconds)
    /// matches the spec.
    fn matches_some_local(&self, lowest: i64, highest: i64) -> bool {
        self.first_local_match(lowest, highest).is_some()
    }

    /// The first matching civil time in `lowest..=highest`, both given and
    /// returned as local seconds (civil time read as if it were UTC).
    fn first_local_match(&self, lowest: i64, highest: i64) -> Option<i64> {
        let mut day_start = lowest
            .div_euclid(SECONDS_PER_DAY)
            .checked_mul(SECONDS_PER_DAY)?;
        let mut from = u32::try_from(lowest.checked_sub(day_start)?).ok()?;
        let mut date = date_at(day_start)?;
        while day_start <= highest {
            if self.cron.matches_date(date) {
                if let Some(time) = self.cron.first_time_at_or_after(from) {
                    let local = day_start.checked_add(i64::from(time))?;
                    return (local <= highest).then_some(local);
                }
            }
            date = date.tomorrow().ok()?;
            day_start = day_start.checked_add(SECONDS_PER_DAY)?;
            from = 0;
        }
        None
    }

    /// The last matching civil time in `lowest..=highest`, both given and
    /// returned as local seconds.
    fn last_local_match(&self, lowest: i64, highest: i64) -> Option<i64> {
        let mut day_start = highest
            .div_euclid(SECONDS_PER_DAY)
            .checked_mul(SECONDS_PER_DAY)?;
        let mut to = u32::try_from(highest.checked_sub(day_start)?).ok()?;
        let mut date = date_at(day_start)?;
        while day_start.checked_add(SECONDS_PER_DAY)? > lowest {
            if self.cron.matches_date(date) {
                if let Some(time) = self.cron.last_time_at_or_before(to) {
                    let local = day_start.checked_add(i64::from(time))?;
                    return (local >= lowest).then_some(local);
                }
            }
            date = date.yesterday().ok()?;
            day_start = day_start.checked_sub(SECONDS_PER_DAY)?;
            to = u32::MAX;
        }
        None
    }
}

/// A stretch of time during which the zone's UTC offset is constant.
///
/// All values are whole seconds: instants since the Unix epoch, offsets
/// east of UTC. Zone transitions are whole seconds in the tz database.
#[derive(Clone, Copy, Debug)]
struct Segment {
    /// The transition that begins the segment, or `None` if the zone has
    /// no earlier transition.
    start: Option<i64>,
    /// The offset in force just before `start` (equal to `offset` when
    /// there is no `start`).
    offset_before: i64,
    /// The offset in force throughout the segment.
    offset: i64,
    /// The next transition (the first instant not in the segment), or
    /// `None` if the zone has no later transition.
    end: Option<i64>,
}

impl Segment {
    /// The segment that contains the instant `at`.
    fn containing(zone: &TimeZone, at: i64) -> Option<Segment> {
        let instant = Timestamp::from_second(at).ok()?;
        let offset = offset_at(zone, instant);
        // `preceding` yields transitions strictly before its argument, so
        // ask from one nanosecond later to include a transition at `at`.
        let just_after = Timestamp::new(at, 1).ok()?;
        let start = zone
            .preceding(just_after)
            .next()
            .map(|transition| transition.timestamp().as_second());
        let offset_before = match start {
            Some(start) => offset_at(zone, Timestamp::from_second(start.checked_sub(1)?).ok()?),
            None => offset,
        };
        let end = zone
            .following(instant)
            .next()
            .map(|transition| transition.timestamp().as_second());
        Some(Segment {
            start,
            offset_before,
            offset,
            end,
        })
    }

    /// The gap fire of a fixed-hour spec: the segment's start, when the
    /// clocks jumped forward there and some skipped local time matches.
    fn gap_fire(&self, cron: &ZonedCron<'_>) -> Option<i64> {
        let start = self.start?;
        if !cron.fixed_hour || self.offset_before >= self.offset {
            return None;
        }
        let skipped_from = start.checked_add(self.offset_before)?;
        let skipped_to = start.checked_add(self.offset)?.checked_sub(1)?;
        cron.matches_some_local(skipped_from, skipped_to)
            .then_some(start)
    }

    /// The instants of the segment whose local time may fire, clipped to
    /// `lowest..=highest`. For a fixed-hour spec after a fold, local times
    /// already seen before the transition are left out.
    fn regular_span(&self, cron: &ZonedCron<'_>, lowest: i64, highest: i64) -> Option<(i64, i64)> {
        let mut first = lowest;
        if let Some(start) = self.start {
            let repeated = self.offset_before.checked_sub(self.offset)?;
            let skip = if cron.fixed_hour { repeated.max(0) } else { 0 };
            first = first.max(start.checked_add(skip)?);
        }
        let last = match self.end {
            Some(end) => highest.min(end.checked_sub(1)?),
            None => highest,
        };
        (first <= last).then_some((first, last))
    }

    /// The first fire of the segment in `lowest..=highest`.
    fn first_fire(&self, cron: &ZonedCron<'_>, lowest: i64, highest: i64) -> Option<i64> {
        let gap_fire = self
            .gap_fire(cron)
            .filter(|fire| (lowest..=highest).contains(fire));
        if gap_fire.is_some() {
            return gap_fire;
        }
        let (first, last) = self.regular_span(cron, lowest, highest)?;
        let local = cron.first_local_match(
            first.checked_add(self.offset)?,
            last.checked_add(self.offset)?,
        )?;
        local.checked_sub(self.offset)
    }

    /// The last fire of the segment in `lowest..=highest`.
    fn last_fire(&self, cron: &ZonedCron<'_>, lowest: i64, highest: i64) -> Option<i64> {
        let regular = self
            .regular_span(cron, lowest, highest)
            .and_then(|(first, last)| {
                let local = cron.last_local_match(
                    first.checked_add(self.offset)?,
                    last.checked_add(self.offset)?,
                )?;
                local.checked_sub(self.offset)
            });
        regular.or_else(|| {
            self.gap_fire(cron)
                .filter(|fire| (lowest..=highest).contains(fire))
        })
    }
}

/// The zone's offset at `instant`, in seconds east of UTC.
fn offset_at(zone: &TimeZone, instant: Timestamp) -> i64 {
    i64::from(zone.to_offset(instant).seconds())
}

/// The civil date of the local second `local` (civil time read as UTC).
fn date_at(local: i64) -> Option<Date> {
    let instant = Timestamp::from_second(local).ok()?;
    Some(Offset::UTC.to_datetime(instant).date())
}

/// Microseconds since the Unix epoch, rounded toward the past.
fn micros_floor(time: SystemTime) -> Option<i128> {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i128::try_from(since.as_micros()).ok(),
        Err(before) => {
            let before = before.duration();
            let whole = i128::try_from(before.as_micros()).ok()?;
            let partial = i128::from(before.subsec_nanos() % 1_000 != 0);
            whole.checked_add(partial)?.checked_neg()
        }
    }
}

/// Whole seconds since the Unix epoch, rounded toward the past.
fn floor_seconds(time: SystemTime) -> Option<i64> {
    i64::try_from(micros_floor(time)?.div_euclid(MICROS_PER_SECOND)).ok()
}

/// The instant `micros` microseconds after (or before) the Unix epoch.
fn system_time_from_micros(micros: i128) -> Option<SystemTime> {
    let magnitude = micros.unsigned_abs();
    let seconds = u64::try_from(magnitude / MICROS_PER_SECOND.unsigned_abs()).ok()?;
    let subsec = u64::try_from(magnitude % MICROS_PER_SECOND.unsigned_abs()).ok()?;
    let span = Duration::from_secs(seconds).checked_add(Duration::from_micros(subsec))?;
    if micros >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    }
}

/// The instant `seconds` whole seconds after (or before) the Unix epoch.
fn system_time_from_seconds(seconds: i64) -> Option<SystemTime> {
    system_time_from_micros(i128::from(seconds).checked_mul(MICROS_PER_SECOND)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses an RFC 3339 instant written by the test.
    fn at(text: &str) -> SystemTime {
        let instant: Timestamp = text.parse().expect("test instants are valid RFC 3339");
        SystemTime::try_from(instant).expect("test instants fit in SystemTime")
    }

    /// Renders an instant as RFC 3339 in UTC.
    fn show(time: SystemTime) -> String {
        Timestamp::try_from(time)
            .expect("calendar results are within jiff's range")
            .to_string()
    }

    /// Looks up a zone the test knows exists.
    fn zone(name: &str) -> TimeZone {
        time_zone(name).expect("test zones are in the bundled database")
    }

    /// Parses a spec the test knows is valid.
    fn cron(spec: &str) -> Cron {
        Cron::parse(spec).expect("test specs are valid")
    }

    /// A cron calendar in the named zone.
    fn cron_in(spec: &str, zone_name: &str) -> Calendar {
        Calendar::Cron {
            cron: cron(spec),
            zone: zone(zone_name),
        }
    }

    /// The first `count` fires after `after`, found by chaining `next_after`.
    fn fires(calendar: &Calendar, after: &str, count: usize) -> Vec<String> {
        let mut cursor = at(after);
        let mut found = Vec::new();
        while found.len() < count {
            match calendar.next_after(cursor) {
                Some(next) => {
                    assert!(
                        next > cursor,
                        "{} is not after {}",
                        show(next),
                        show(cursor)
                    );
                    found.push(show(next));
                    cursor = next;
                }
                None => break,
            }
        }
        found
    }

    /// The Unix second of an RFC 3339 instant.
    fn second(text: &str) -> i64 {
        floor_seconds(at(text)).expect("test instants are in range")
    }

    /// The zone's first `count` transitions after an instant, as Unix
    /// seconds.
    fn transitions(zone: &TimeZone, after: &str, count: usize) -> Vec<i64> {
        let start: Timestamp = after.parse().expect("test instants are valid RFC 3339");
        zone.following(start)
            .take(count)
            .map(|transition| transition.timestamp().as_second())
            .collect()
    }

    /// Whether the civil date-time matches the spec, checked with the
    /// spec's own date and time-of-day tests.
    fn civil_matches(cron: &Cron, local: jiff::civil::DateTime) -> bool {
        let time = local.time();
        let of_day = u32::try_from(
            i32::from(time.hour()) * 3600
                + i32::from(time.minute()) * 60
                + i32::from(time.second()),
        )
        .expect("a time of day is not negative");
        cron.matches_date(local.date()) && cron.first_time_at_or_after(of_day) == Some(of_day)
    }

    /// The fires in `first..=last` (Unix seconds) by the documented DST
    /// rules, computed second by second with jiff's own ambiguity API and
    /// independently of the segment search.
    fn brute_force(cron: &Cron, zone: &TimeZone, first: i64, last: i64) -> Vec<i64> {
        let fixed_hour = !cron.all_hours();
        let mut found = Vec::new();
        for instant in first..=last {
            let stamp = Timestamp::from_second(instant).expect("test instants are in range");
            let local = zone.to_datetime(stamp);
            let mut fires = civil_matches(cron, local);
            if fires && fixed_hour {
                // A repeated local time fires only at its first occurrence.
                fires = zone.to_ambiguous_timestamp(local).earlier().ok() == Some(stamp);
            }
            let before = offset_at(zone, Timestamp::from_second(instant - 1).expect("in range"));
            let now = offset_at(zone, stamp);
            if !fires && fixed_hour && now > before {
                // Skipped local times fire once, at the end of the gap.
                fires = (instant + before..instant + now).any(|skipped| {
                    let skipped = Timestamp::from_second(skipped).expect("in range");
                    civil_matches(cron, Offset::UTC.to_datetime(skipped))
                });
            }
            if fires {
                found.push(instant);
            }
        }
        found
    }

    /// The fires in `first..=last` found by chaining the segment search.
    fn searched(cron: &ZonedCron<'_>, first: i64, last: i64) -> Vec<i64> {
        let mut found = Vec::new();
        let mut cursor = first - 1;
        while let Some(fire) = cron.next_after(cursor).filter(|&fire| fire <= last) {
            found.push(fire);
            cursor = fire;
        }
        found
    }

    /// `0 0 29 2 *` finds leap days only, years apart, quickly, including
    /// the eight-year wait across 2100, and gives up past year 9999.
    #[test]
    fn leap_day() {
        let calendar = cron_in("0 0 29 2 *", "UTC");
        assert_eq!(
            fires(&calendar, "2026-01-01T00:00:00Z", 3),
            [
                "2028-02-29T00:00:00Z",
                "2032-02-29T00:00:00Z",
                "2036-02-29T00:00:00Z"
            ]
        );
        assert_eq!(
            fires(&calendar, "2096-03-01T00:00:00Z", 1),
            ["2104-02-29T00:00:00Z"]
        );
        assert_eq!(calendar.next_after(at("9996-03-01T00:00:00Z")), None);
        let berlin = cron_in("0 0 29 2 *", "Europe/Berlin");
        assert_eq!(
            fires(&berlin, "2026-01-01T00:00:00Z", 1),
            ["2028-02-28T23:00:00Z"]
        );
    }

    /// The 31st fires only in the seven long months; the 30th skips
    /// February; the 29th reaches February only in leap years.
    #[test]
    fn month_ends() {
        let the_31st = cron_in("0 0 31 * *", "UTC");
        assert_eq!(
            fires(&the_31st, "2026-01-01T00:00:00Z", 8),
            [
                "2026-01-31T00:00:00Z",
                "2026-03-31T00:00:00Z",
                "2026-05-31T00:00:00Z",
                "2026-07-31T00:00:00Z",
                "2026-08-31T00:00:00Z",
                "2026-10-31T00:00:00Z",
                "2026-12-31T00:00:00Z",
                "2027-01-31T00:00:00Z",
            ]
        );
        let year_2026 = (at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"));
        let year_2028 = (at("2028-01-01T00:00:00Z"), at("2029-01-01T00:00:00Z"));
        for (day, in_2026, in_2028) in [(28, 12, 12), (29, 11, 12), (30, 11, 11), (31, 7, 7)] {
            let calendar = cron_in(&format!("0 0 {day} * *"), "UTC");
            assert_eq!(
                calendar.fires_between(year_2026.0, year_2026.1, 100).0,
                in_2026,
                "{day}"
            );
            assert_eq!(
                calendar.fires_between(year_2028.0, year_2028.1, 100).0,
                in_2028,
                "{day}"
            );
        }
        let february_30th_or_31st = cron_in("0 0 30,31 1-3 *", "UTC");
        assert_eq!(
            fires(&february_30th_or_31st, "2026-01-30T12:00:00Z", 3),
            [
                "2026-01-31T00:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-31T00:00:00Z"
            ]
        );
    }

    /// Both day fields restricted fire on either (Vixie): the 1st or any
    /// Monday.
    #[test]
    fn vixie_either_rule() {
        let calendar = cron_in("0 0 1 * MON", "UTC");
        assert_eq!(
            fires(&calendar, "2026-03-29T00:00:00Z", 4),
            [
                "2026-03-30T00:00:00Z", // Monday
                "2026-04-01T00:00:00Z", // Wednesday the 1st
                "2026-04-06T00:00:00Z", // Monday
                "2026-04-13T00:00:00Z", // Monday
            ]
        );
        let mondays_only = cron_in("0 0 * * MON", "UTC");
        assert_eq!(
            fires(&mondays_only, "2026-03-31T00:00:00Z", 1),
            ["2026-04-06T00:00:00Z"]
        );
    }

    /// The next fire is strictly after `after`, at whole seconds, also
    /// for sub-second and pre-1970 instants.
    #[test]
    fn strictly_after_at_whole_seconds() {
        let calendar = cron_in("* * * * * *", "UTC");
        assert_eq!(
            fires(&calendar, "2026-01-01T00:00:00.5Z", 1),
            ["2026-01-01T00:00:01Z"]
        );
        assert_eq!(
            fires(&calendar, "2026-01-01T00:00:01Z", 1),
            ["2026-01-01T00:00:02Z"]
        );
        assert_eq!(
            fires(&calendar, "1969-12-31T23:59:59.5Z", 1),
            ["1970-01-01T00:00:00Z"]
        );
        assert_eq!(
            fires(&calendar, "1969-12-31T23:59:58Z", 1),
            ["1969-12-31T23:59:59Z"]
        );
        let daily = cron_in("@daily", "Asia/Tokyo");
        assert_eq!(
            fires(&daily, "2026-01-01T15:00:00Z", 1),
            ["2026-01-02T15:00:00Z"]
        );
    }

    /// New York, spring forward: a fixed-hour 02:30 fires once at 03:00
    /// EDT, and several gap times collapse into that one fire.
    #[test]
    fn new_york_spring_fixed_hour() {
        let calendar = cron_in("30 2 * * *", "America/New_York");
        assert_eq!(
            fires(&calendar, "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
        );
        let quarters = cron_in("*/15 2 * * *", "America/New_York");
        assert_eq!(
            fires(&quarters, "2026-03-08T00:00:00Z", 2),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"]
        );
        let day = (at("2026-03-08T05:00:00Z"), at("2026-03-09T04:00:00Z"));
        assert_eq!(
            quarters.fires_between(day.0, day.1, 10),
            (1, Some(at("2026-03-08T07:00:00Z")))
        );
        // 02:00 (skipped) and 03:00 EDT are the same instant: one fire.
        let two_and_three = cron_in("0 2,3 * * *", "America/New_York");
        assert_eq!(
            fires(&two_and_three, "2026-03-08T00:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:00:00Z",
                "2026-03-09T07:00:00Z"
            ]
        );
        let every_second_of_two = cron_in("* * 2 * * *", "America/New_York");
        assert_eq!(
            every_second_of_two.fires_between(day.0, day.1, u64::MAX),
            (1, Some(at("2026-03-08T07:00:00Z")))
        );
    }

    /// New York, spring forward: an all-hours spec skips the missing hour
    /// and keeps one real hour between fires.
    #[test]
    fn new_york_spring_all_hours() {
        let calendar = cron_in("30 * * * *", "America/New_York");
        assert_eq!(
            fires(&calendar, "2026-03-08T05:00:00Z", 4),
            [
                "2026-03-08T05:30:00Z", // 00:30 EST
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:30:00Z", // 03:30 EDT
                "2026-03-08T08:30:00Z", // 04:30 EDT
            ]
        );
        let local_day = (at("2026-03-08T05:00:00Z"), at("2026-03-09T04:00:00Z"));
        assert_eq!(calendar.fires_between(local_day.0, local_day.1, 100).0, 23);
    }

    /// New York, fall back: a fixed-hour 01:30 fires at its first
    /// occurrence only, even when asked from inside the repeated hour.
    #[test]
    fn new_york_fall_fixed_hour() {
        let calendar = cron_in("30 1 * * *", "America/New_York");
        assert_eq!(
            fires(&calendar, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        assert_eq!(
            fires(&calendar, "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );
        let local_day = (at("2026-11-01T04:00:00Z"), at("2026-11-02T05:00:00Z"));
        assert_eq!(
            calendar.fires_between(local_day.0, local_day.1, 100),
            (1, Some(at("2026-11-01T05:30:00Z")))
        );
        let every_second_of_one = cron_in("* * 1 * * *", "America/New_York");
        assert_eq!(
            every_second_of_one.fires_between(local_day.0, local_day.1, u64::MAX),
            (3600, Some(at("2026-11-01T05:59:59Z")))
        );
    }

    /// New York, fall back: an all-hours spec fires at both occurrences of
    /// the repeated hour, every real hour.
    #[test]
    fn new_york_fall_all_hours() {
        let calendar = cron_in("30 * * * *", "America/New_York");
        assert_eq!(
            fires(&calendar, "2026-11-01T04:00:00Z", 4),
            [
                "2026-11-01T04:30:00Z", // 00:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT
                "2026-11-01T06:30:00Z", // 01:30 EST
                "2026-11-01T07:30:00Z", // 02:30 EST
            ]
        );
        let local_day = (at("2026-11-01T04:00:00Z"), at("2026-11-02T05:00:00Z"));
        assert_eq!(calendar.fires_between(local_day.0, local_day.1, 100).0, 25);
    }

    /// Berlin, both transitions, both kinds of spec.
    #[test]
    fn berlin_transitions() {
        let fixed = cron_in("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&fixed, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        assert_eq!(
            fires(&fixed, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        let all_hours = cron_in("30 * * * *", "Europe/Berlin");
        assert_eq!(
            fires(&all_hours, "2026-03-28T23:00:00Z", 3),
            [
                "2026-03-28T23:30:00Z",
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:30:00Z"
            ]
        );
        assert_eq!(
            fires(&all_hours, "2026-10-24T23:00:00Z", 4),
            [
                "2026-10-24T23:30:00Z", // 01:30 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST
                "2026-10-25T01:30:00Z", // 02:30 CET
                "2026-10-25T02:30:00Z", // 03:30 CET
            ]
        );
    }

    /// Lord Howe shifts by 30 minutes: a gap of 02:00–02:30 in October
    /// and a fold of 01:30–02:00 in April.
    #[test]
    fn lord_howe_half_hour_shift() {
        let lord_howe = zone("Australia/Lord_Howe");
        let [april, october] = transitions(&lord_howe, "2026-01-01T00:00:00Z", 2)[..] else {
            panic!("Lord Howe has two transitions a year");
        };
        assert_eq!(april, second("2026-04-04T15:00:00Z"));
        assert_eq!(october, second("2026-10-03T15:30:00Z"));

        let gap_time = cron_in("15 2 * * *", "Australia/Lord_Howe");
        assert_eq!(
            fires(&gap_time, "2026-10-02T16:00:00Z", 2),
            ["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"]
        );
        let fold_time = cron_in("45 1 * * *", "Australia/Lord_Howe");
        assert_eq!(
            fires(&fold_time, "2026-04-03T16:00:00Z", 2),
            ["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"]
        );
        assert_eq!(
            fires(&fold_time, "2026-04-04T15:10:00Z", 1),
            ["2026-04-05T15:15:00Z"]
        );
        let quarters = cron_in("*/15 * * * *", "Australia/Lord_Howe");
        assert_eq!(
            fires(&quarters, "2026-10-03T14:50:00Z", 4),
            [
                "2026-10-03T15:00:00Z", // 01:30 +10:30
                "2026-10-03T15:15:00Z", // 01:45 +10:30
                "2026-10-03T15:30:00Z", // 02:30 +11
                "2026-10-03T15:45:00Z", // 02:45 +11
            ]
        );
        assert_eq!(
            fires(&quarters, "2026-04-04T14:20:00Z", 5),
            [
                "2026-04-04T14:30:00Z", // 01:30 +11
                "2026-04-04T14:45:00Z", // 01:45 +11
                "2026-04-04T15:00:00Z", // 01:30 +10:30
                "2026-04-04T15:15:00Z", // 01:45 +10:30
                "2026-04-04T15:30:00Z", // 02:00 +10:30
            ]
        );
    }

    /// A six-field every-second spec fires every real second straight
    /// through each transition: an hour around it gives 3600 fires exactly
    /// one second apart, without repeats.
    #[test]
    fn every_second_across_transitions() {
        for name in ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"] {
            let calendar = cron_in("* * * * * *", name);
            for transition in transitions(&zone(name), "2026-01-01T00:00:00Z", 2) {
                let mut cursor = system_time_from_seconds(transition - 1801).expect("in range");
                for _ in 0..3600 {
                    let next = calendar.next_after(cursor).expect("fires every second");
                    assert_eq!(
                        next.duration_since(cursor).ok(),
                        Some(Duration::from_secs(1)),
                        "{name}"
                    );
                    cursor = next;
                }
                assert_eq!(
                    cursor,
                    system_time_from_seconds(transition + 1799).expect("in range")
                );
            }
        }
    }

    /// For many specs, zones and transitions, chaining `next_after` gives
    /// exactly the fires of a second-by-second reference of the rules, and
    /// the backward search finds the latest fire at or before any instant.
    #[test]
    fn segment_search_matches_reference() {
        let specs = [
            "30 * * * *",
            "*/15 * * * *",
            "*/20 * * * * *",
            "0,30 1,2,3 * * *",
            "15 2 * * *",
            "45 1 * * *",
            "* 2 * * *",
            "*/20 * 1-3 * * *",
            "0 0 * * *",
        ];
        let zones = ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"];
        let years = ["1969-01-01T00:00:00Z", "2026-01-01T00:00:00Z"];
        for (name, year) in zones.into_iter().flat_map(|z| years.map(|y| (z, y))) {
            let zone = zone(name);
            for transition in transitions(&zone, year, 2) {
                let (first, last) = (transition - 4 * 3600, transition + 4 * 3600);
                for spec in specs {
                    let cron = cron(spec);
                    let zoned = ZonedCron::new(&cron, &zone);
                    let found = searched(&zoned, first, last);
                    let expected = brute_force(&cron, &zone, first, last);
                    assert_eq!(found, expected, "{spec} in {name} around {transition}");
                    let mut previous = None;
                    for &fire in &found {
                        assert_eq!(zoned.last_in(first, fire), Some(fire), "{spec} {name}");
                        assert_eq!(zoned.last_in(first, fire - 1), previous, "{spec} {name}");
                        previous = Some(fire);
                    }
                    assert_eq!(zoned.last_in(first, last), previous, "{spec} {name}");
                }
            }
        }
    }

    /// Samoa skipped 2011-12-30 entirely: a noon spec fires once when the
    /// clocks land on 31 December, then at noon as usual.
    #[test]
    fn skipped_day_collapses_into_one_fire() {
        let calendar = cron_in("0 12 * * *", "Pacific/Apia");
        assert_eq!(
            fires(&calendar, "2011-12-29T00:00:00Z", 3),
            [
                "2011-12-29T22:00:00Z",
                "2011-12-30T10:00:00Z",
                "2011-12-30T22:00:00Z"
            ]
        );
    }

    /// Cron counting: exact below the cap, capped above it, and the latest
    /// fire is reported either way; empty or reversed spans have none.
    #[test]
    fn cron_fires_between() {
        let hourly = cron_in("0 * * * *", "UTC");
        let (from, to) = (at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"));
        let latest = Some(at("2026-01-02T00:00:00Z"));
        assert_eq!(hourly.fires_between(from, to, 100), (24, latest));
        assert_eq!(hourly.fires_between(from, to, 24), (24, latest));
        assert_eq!(hourly.fires_between(from, to, 5), (5, latest));
        assert_eq!(hourly.fires_between(from, to, 0), (0, latest));
        assert_eq!(hourly.fires_between(to, to, 10), (0, None));
        assert_eq!(hourly.fires_between(to, from, 10), (0, None));
        let just_before = at("2026-01-01T23:59:59.999999Z");
        assert_eq!(
            hourly.fires_between(from, just_before, 100),
            (23, Some(at("2026-01-01T23:00:00Z")))
        );
        let every_second = cron_in("* * * * * *", "Europe/Berlin");
        let (long_ago, now) = (at("2000-01-01T00:00:00Z"), at("2026-05-01T12:34:56.789Z"));
        assert_eq!(
            every_second.fires_between(long_ago, now, 1000),
            (1000, Some(at("2026-05-01T12:34:56Z")))
        );
        let leap_day = cron_in("0 0 29 2 *", "UTC");
        assert_eq!(
            leap_day.fires_between(long_ago, now, 1),
            (1, Some(at("2024-02-29T00:00:00Z")))
        );
        assert_eq!(leap_day.fires_between(long_ago, now, 100).0, 7);
    }

    /// An interval fires at the anchor, then every period, strictly after
    /// `after`, at microsecond precision.
    #[test]
    fn interval_next_after() {
        let anchor = at("2026-01-01T00:00:00Z");
        let calendar = Calendar::Interval {
            every: Duration::from_secs(3600),
            anchor,
        };
        let next = |after: &str| calendar.next_after(at(after)).map(show);
        let hour = |text: &str| Some(text.to_string());
        assert_eq!(next("2025-06-01T00:00:00Z"), hour("2026-01-01T00:00:00Z"));
        assert_eq!(
            next("2025-12-31T23:59:59.999999Z"),
            hour("2026-01-01T00:00:00Z")
        );
        assert_eq!(next("2026-01-01T00:00:00Z"), hour("2026-01-01T01:00:00Z"));
        assert_eq!(next("2026-01-01T00:30:00Z"), hour("2026-01-01T01:00:00Z"));
        assert_eq!(
            next("2026-01-01T00:59:59.9999995Z"),
            hour("2026-01-01T01:00:00Z")
        );
        assert_eq!(next("2026-01-01T01:00:00Z"), hour("2026-01-01T02:00:00Z"));
        assert_eq!(
            next("2026-01-01T01:00:00.000001Z"),
            hour("2026-01-01T02:00:00Z")
        );
        assert_eq!(next("2126-01-01T00:00:00Z"), hour("2126-01-01T01:00:00Z"));
    }

    /// Interval counting is exact arithmetic over (from, to], capped, with
    /// the latest fire, including spans before the anchor and huge spans.
    #[test]
    fn interval_fires_between() {
        let anchor = at("2026-01-01T00:00:00Z");
        let calendar = Calendar::Interval {
            every: Duration::from_secs(3600),
            anchor,
        };
        let hours = |n: u64| anchor + Duration::from_secs(3600 * n);
        let one_second = Duration::from_secs(1);
        assert_eq!(
            calendar.fires_between(anchor - one_second, anchor, 10),
            (1, Some(anchor))
        );
        assert_eq!(calendar.fires_between(anchor, anchor, 10), (0, None));
        assert_eq!(
            calendar.fires_between(anchor, hours(3), 10),
            (3, Some(hours(3)))
        );
        let half = Duration::from_secs(1800);
        assert_eq!(
            calendar.fires_between(anchor + half, hours(3) + half, 10),
            (3, Some(hours(3)))
        );
        assert_eq!(
            calendar.fires_between(hours(3) - one_second, hours(3), 10),
            (1, Some(hours(3)))
        );
        assert_eq!(
            calendar.fires_between(hours(3), hours(3) + half, 10),
            (0, None)
        );
        assert_eq!(
            calendar.fires_between(anchor - half - half, anchor - one_second, 10),
            (0, None)
        );
        assert_eq!(calendar.fires_between(hours(5), hours(2), 10), (0, None));
        assert_eq!(
            calendar.fires_between(anchor, hours(3), 2),
            (2, Some(hours(3)))
        );
        assert_eq!(
            calendar.fires_between(anchor, hours(3), 0),
            (0, Some(hours(3)))
        );

        let every_second = Calendar::Interval {
            every: one_second,
            anchor,
        };
        let thousand_years = anchor + Duration::from_secs(1000 * 365 * 86_400);
        assert_eq!(
            every_second.fires_between(anchor - one_second, thousand_years, u64::MAX),
            (1000 * 365 * 86_400 + 1, Some(thousand_years))
        );
        assert_eq!(
            every_second.fires_between(
                UNIX_EPOCH,
                thousand_years + Duration::from_millis(500),
                1000
            ),
            (1000, Some(thousand_years))
        );
    }

    /// Intervals anchored before 1970 round toward the past correctly.
    #[test]
    fn interval_before_the_epoch() {
        let calendar = Calendar::Interval {
            every: Duration::from_secs(3600),
            anchor: at("1969-12-31T22:00:00Z"),
        };
        assert_eq!(
            fires(&calendar, "1969-12-31T22:30:00.5Z", 2),
            ["1969-12-31T23:00:00Z", "1970-01-01T00:00:00Z"]
        );
        assert_eq!(
            calendar.fires_between(
                at("1969-12-31T21:00:00Z"),
                at("1970-01-01T00:59:59.9999999Z"),
                10
            ),
            (3, Some(UNIX_EPOCH))
        );
    }

    /// Degenerate intervals never fire and overflow is reported as `None`
    /// rather than a panic or a wrapped instant.
    #[test]
    fn interval_edges() {
        let anchor = at("2026-01-01T00:00:00Z");
        for every in [Duration::ZERO, Duration::from_nanos(500)] {
            let calendar = Calendar::Interval { every, anchor };
            assert_eq!(calendar.next_after(anchor), None);
            assert_eq!(calendar.fires_between(UNIX_EPOCH, anchor, 10), (0, None));
        }
        let huge = Calendar::Interval {
            every: Duration::MAX,
            anchor,
        };
        assert_eq!(huge.next_after(UNIX_EPOCH), Some(anchor));
        assert_eq!(huge.next_after(anchor), None);
        assert_eq!(
            huge.fires_between(UNIX_EPOCH, anchor, 10),
            (1, Some(anchor))
        );
    }

    /// Zone names come from the bundled database; unknown names get an
    /// actionable message.
    #[test]
    fn time_zone_lookup() {
        assert_eq!(time_zone(""), Ok(TimeZone::UTC));
        assert_eq!(time_zone("UTC"), Ok(TimeZone::UTC));
        assert_eq!(time_zone(" utc "), Ok(TimeZone::UTC));
        let paris = time_zone("europe/paris").expect("Paris is a known zone");
        assert_eq!(paris.iana_name(), Some("Europe/Paris"));
        let err = time_zone("Mars/Base").expect_err("Mars has no zone yet");
        assert_eq!(
            err.to_string(),
            "unknown time zone \"Mars/Base\"; use an IANA name such as Europe/Paris or UTC"
        );
        assert_eq!(err.name, "Mars/Base");
        assert!(time_zone("Etc/Unknown").is_err());
    }

    /// Conversions between `SystemTime` and microseconds round toward the
    /// past on both sides of the epoch.
    #[test]
    fn microsecond_conversions() {
        let cases = [
            (UNIX_EPOCH + Duration::from_nanos(1_500), 1),
            (UNIX_EPOCH - Duration::from_nanos(1_500), -2),
            (UNIX_EPOCH - Duration::from_nanos(2_000), -2),
            (UNIX_EPOCH, 0),
        ];
        for (time, micros) in cases {
            assert_eq!(micros_floor(time), Some(micros));
        }
        assert_eq!(
            floor_seconds(UNIX_EPOCH - Duration::from_millis(1)),
            Some(-1)
        );
        assert_eq!(
            system_time_from_micros(-2),
            Some(UNIX_EPOCH - Duration::from_micros(2))
        );
        assert_eq!(
            system_time_from_seconds(3),
            Some(UNIX_EPOCH + Duration::from_secs(3))
        );
    }
}
