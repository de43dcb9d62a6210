//! Checked conversions between the wire's `Timestamp`/`Duration` and std time, within the
//! ranges the protobuf well-known types document.
//!
//! Every time a client sends is validated here before it meets an instant: a `Timestamp` lies
//! within 0001-01-01T00:00:00Z..=9999-12-31T23:59:59.999999999Z with nanos in 0..1e9; a
//! `Duration` lies within ±10,000 years with nanos in ±1e9 agreeing with the seconds' sign.
//! Arithmetic where a duration meets an instant uses [`add`], which cannot overflow.

use std::time::{Duration, SystemTime};

/// Seconds of 0001-01-01T00:00:00Z, the earliest valid `Timestamp`.
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Seconds of 9999-12-31T23:59:59Z, the latest valid `Timestamp`'s second.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
/// The longest valid `Duration`: 10,000 years of 365.25 days.
pub const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

const NANOS_PER_SECOND: i32 = 1_000_000_000;

/// Why a wire time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// A `Timestamp` before year 1 or after year 9999.
    #[error("seconds {0} is outside the valid range 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z")]
    TimestampOutOfRange(i64),
    /// A `Timestamp` whose nanos are outside 0..1e9.
    #[error("nanos {0} is outside 0..=999999999")]
    TimestampNanos(i32),
    /// A `Duration` longer than 10,000 years either way.
    #[error("seconds {0} is outside the valid range of ±{MAX_DURATION_SECONDS} (10,000 years)")]
    DurationOutOfRange(i64),
    /// A `Duration` whose nanos are outside ±1e9 or disagree with the seconds' sign.
    #[error("nanos {nanos} is outside ±999999999 or has a sign other than seconds' ({seconds})")]
    DurationNanos {
        /// The seconds sent.
        seconds: i64,
        /// The nanos sent.
        nanos: i32,
    },
    /// A negative `Duration` where only non-negative ones make sense.
    #[error("it is negative")]
    Negative,
}

/// `t` as a `Timestamp`, when it lies in the documented range (years 1 to 9999).
pub fn to_timestamp(t: SystemTime) -> Option<prost_types::Timestamp> {
    let stamp = prost_types::Timestamp::from(t);
    timestamp(&stamp).is_ok().then_some(stamp)
}

/// `d` as a `Duration`, when it lies in the documented range (10,000 years).
pub fn to_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d)
        .ok()
        .filter(|wire| duration(wire).is_ok())
}

/// A valid `Timestamp` as a `SystemTime`.
///
/// # Errors
/// [`TimeError`] when it is outside the documented range.
pub fn timestamp(t: &prost_types::Timestamp) -> Result<SystemTime, TimeError> {
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds) {
        return Err(TimeError::TimestampOutOfRange(t.seconds));
    }
    if !(0..NANOS_PER_SECOND).contains(&t.nanos) {
        return Err(TimeError::TimestampNanos(t.nanos));
    }
    let magnitude = Duration::new(t.seconds.unsigned_abs(), 0);
    let whole = if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(magnitude)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(magnitude)
    };
    // The nanos are non-negative and under a second; every year-1..9999 instant fits.
    whole
        .and_then(|w| w.checked_add(Duration::from_nanos(t.nanos.unsigned_abs().into())))
        .ok_or(TimeError::TimestampOutOfRange(t.seconds))
}

/// A valid, non-negative `Duration` as a std `Duration`.
///
/// # Errors
/// [`TimeError`] when it is outside the documented range or negative.
pub fn duration(d: &prost_types::Duration) -> Result<Duration, TimeError> {
    if !(-MAX_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&d.seconds) {
        return Err(TimeError::DurationOutOfRange(d.seconds));
    }
    let signs_agree = (d.seconds >= 0 && d.nanos >= 0) || (d.seconds <= 0 && d.nanos <= 0);
    if d.nanos <= -NANOS_PER_SECOND || d.nanos >= NANOS_PER_SECOND || !signs_agree {
        return Err(TimeError::DurationNanos {
            seconds: d.seconds,
            nanos: d.nanos,
        });
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(TimeError::Negative);
    }
    Ok(Duration::new(
        d.seconds.unsigned_abs(),
        d.nanos.unsigned_abs(),
    ))
}

/// `t` to the microsecond (towards the past): the precision operations keep their times at, so
/// that a store's integer columns hold them exactly.
pub fn to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => {
            SystemTime::UNIX_EPOCH
                + Duration::from_micros(d.as_micros().try_into().unwrap_or(u64::MAX))
        }
        Err(e) => {
            let before = e.duration();
            let whole = Duration::from_micros(before.as_micros().try_into().unwrap_or(u64::MAX));
            let up = if whole < before {
                whole + Duration::from_micros(1)
            } else {
                whole
            };
            SystemTime::UNIX_EPOCH - up
        }
    }
}

/// The latest instant a `Timestamp` can carry: 9999-12-31T23:59:59.999999999Z.
pub fn latest() -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::new(
            MAX_TIMESTAMP_SECONDS.unsigned_abs(),
            NANOS_PER_SECOND.unsigned_abs() - 1,
        )
}

/// `t + d`, or `None` where that is past the latest valid `Timestamp` (so it could not be
/// shown to a client: a deadline or next attempt that far away is never).
pub fn add(t: SystemTime, d: Duration) -> Option<SystemTime> {
    t.checked_add(d).filter(|sum| *sum <= latest())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos }
    }

    fn dur(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    /// The documented Timestamp range is accepted to its ends and refused past them.
    #[test]
    fn timestamp_range() {
        assert!(timestamp(&ts(MIN_TIMESTAMP_SECONDS, 0)).is_ok());
        assert!(timestamp(&ts(MAX_TIMESTAMP_SECONDS, 999_999_999)).is_ok());
        assert_eq!(
            timestamp(&ts(0, 5)).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(5)
        );
        for (s, n) in [
            (MIN_TIMESTAMP_SECONDS - 1, 0),
            (MAX_TIMESTAMP_SECONDS + 1, 0),
            (i64::MAX, 0),
            (i64::MIN, 0),
            (0, -1),
            (0, 1_000_000_000),
            (0, i32::MIN),
        ] {
            assert!(timestamp(&ts(s, n)).is_err(), "{s} {n}");
        }
    }

    /// Durations: ±10,000 years, nanos within ±1e9 and of the seconds' sign; negatives are
    /// refused by name.
    #[test]
    fn duration_range() {
        assert_eq!(duration(&dur(1, 500)).unwrap(), Duration::new(1, 500));
        assert!(duration(&dur(MAX_DURATION_SECONDS, 999_999_999)).is_ok());
        assert_eq!(
            duration(&dur(MAX_DURATION_SECONDS + 1, 0)),
            Err(TimeError::DurationOutOfRange(MAX_DURATION_SECONDS + 1))
        );
        assert!(matches!(
            duration(&dur(i64::MAX, 0)),
            Err(TimeError::DurationOutOfRange(_))
        ));
        assert!(matches!(
            duration(&dur(1, -1)),
            Err(TimeError::DurationNanos { .. })
        ));
        assert!(matches!(
            duration(&dur(0, 1_000_000_000)),
            Err(TimeError::DurationNanos { .. })
        ));
        assert_eq!(duration(&dur(-1, 0)), Err(TimeError::Negative));
        assert_eq!(duration(&dur(0, -5)), Err(TimeError::Negative));
    }

    /// Adding never panics, and never gives an instant a `Timestamp` cannot carry.
    #[test]
    fn add_is_checked() {
        assert!(add(SystemTime::now(), Duration::MAX).is_none());
        assert!(add(SystemTime::UNIX_EPOCH, Duration::from_secs(1)).is_some());
        let ten_thousand_years = Duration::from_secs(MAX_DURATION_SECONDS.unsigned_abs());
        assert!(add(SystemTime::now(), ten_thousand_years).is_none());
        let latest = prost_types::Timestamp::from(latest());
        assert_eq!(latest.seconds, MAX_TIMESTAMP_SECONDS);
        assert!(timestamp(&latest).is_ok());
    }
}
