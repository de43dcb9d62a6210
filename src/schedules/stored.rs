//! A schedule as the store keeps it, and how a client's schedule is checked.

use std::time::{Duration, SystemTime};

use prost::Message;
use prost_types::Timestamp;

use super::calendar::{self, Calendar};
use super::cron::Cron;
use super::{DEFAULT_CATCHUP_WINDOW, MAX_CATCHUP_WINDOW, MAX_INTERVAL, MAX_NOTE_LEN, MIN_INTERVAL};
use crate::error::Error;
use crate::model::time;
use crate::proto::oprun::v1::schedule::OverlapPolicy;
use crate::proto::oprun::v1::Schedule;
use crate::store::{from_micros, micros, ScheduleRow, StoreError};

/// How often a node looks again at a schedule whose buffered fire waits for the previous
/// run to end.
pub const BUFFER_POLL: Duration = Duration::from_secs(1);

/// The stored body: the wire form (with its output fields as of the last write) and what
/// the fire loop keeps beside it.
#[derive(Clone, PartialEq, Message)]
pub struct Stored {
    /// The schedule as clients see it (recent runs without their outcomes).
    #[prost(message, optional, tag = "1")]
    pub schedule: Option<Schedule>,
    /// A fire decided but not yet started: whoever reads it starts it (by a request id that
    /// makes every start of it the same operation).
    #[prost(message, optional, tag = "2")]
    pub pending: Option<Timestamp>,
}

impl Stored {
    /// Reads a stored row's body.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when it does not decode or holds no schedule.
    pub fn decode_row(row: &ScheduleRow) -> Result<Self, StoreError> {
        let stored = Self::decode(row.body.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("schedules/{}: body: {e}", row.id)))?;
        if stored.schedule.is_none() {
            return Err(StoreError::Corrupt(format!(
                "schedules/{}: body holds no schedule",
                row.id
            )));
        }
        Ok(stored)
    }

    /// The schedule (a decoded one always has it).
    pub fn schedule(&self) -> &Schedule {
        static EMPTY: std::sync::OnceLock<Schedule> = std::sync::OnceLock::new();
        self.schedule
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Schedule::default))
    }

    /// The schedule, to change.
    pub fn schedule_mut(&mut self) -> &mut Schedule {
        self.schedule.get_or_insert_with(Schedule::default)
    }

    /// Its row: `id`, this body, when a node should next act on it (given that it is
    /// written at `now`), and `version`.
    pub fn row(&self, id: &str, version: i64, now: SystemTime) -> ScheduleRow {
        ScheduleRow {
            id: id.to_owned(),
            body: self.encode_to_vec(),
            wake: self.wake(now).map(micros),
            version,
        }
    }

    /// When a node should next act on it: at once for a pending fire; never while paused;
    /// at the next fire time, or sooner to look whether a buffered fire may start.
    pub fn wake(&self, now: SystemTime) -> Option<SystemTime> {
        if let Some(pending) = &self.pending {
            return Some(timestamp(pending));
        }
        let schedule = self.schedule();
        if schedule.paused {
            return None;
        }
        let next = schedule.next_run_time.as_ref().map(timestamp);
        if schedule.buffered_run_time.is_some() {
            let poll = time::add(now, BUFFER_POLL).unwrap_or(now);
            return Some(next.map_or(poll, |next| next.min(poll)));
        }
        next
    }

    /// Its fire times.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when its spec no longer parses (it was checked when written).
    pub fn calendar(&self) -> Result<Calendar, StoreError> {
        calendar_of(self.schedule())
            .map_err(|e| StoreError::Corrupt(format!("{}: spec: {e}", self.schedule().name)))
    }
}

/// The first fire after `after` that a `Timestamp` can show (none past 9999-12-31).
pub fn next_fire(calendar: &Calendar, after: SystemTime) -> Option<SystemTime> {
    calendar.next_after(after).filter(|t| *t <= time::latest())
}

/// A stored time (written by this module through [`stamp`], so within range).
pub fn timestamp(t: &Timestamp) -> SystemTime {
    time::timestamp(t).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A time as stored, to the microsecond (as every store keeps times).
pub fn stamp(t: SystemTime) -> Timestamp {
    Timestamp::from(from_micros(micros(t)))
}

/// The fire times of a checked `schedule`. An interval counts from the Unix epoch, so that
/// its fires fall on round times: every hour on the hour (UTC), every 30 s at :00 and :30.
///
/// # Errors
/// INVALID_ARGUMENT naming the field at fault.
pub fn calendar_of(schedule: &Schedule) -> Result<Calendar, Error> {
    match (&schedule.interval, schedule.cron.is_empty()) {
        (Some(_), false) => Err(Error::invalid_argument(
            "schedule.cron",
            "set one of cron and interval, not both",
        )),
        (None, true) => Err(Error::invalid_argument(
            "schedule.cron",
            "a schedule needs a cron spec (e.g. \"0 3 * * *\") or an interval (e.g. \"3600s\")",
        )),
        (Some(interval), true) => {
            if !schedule.time_zone.is_empty() {
                return Err(Error::invalid_argument(
                    "schedule.time_zone",
                    "time_zone applies to a cron spec; an interval counts real time",
                ));
            }
            let every = time::duration(interval).map_err(|e| {
                Error::invalid_argument(
                    "schedule.interval",
                    format!("interval is not a valid duration: {e}"),
                )
            })?;
            if every < MIN_INTERVAL || every > MAX_INTERVAL {
                return Err(Error::invalid_argument(
                    "schedule.interval",
                    format!(
                        "interval is {} ms; it must be at least {} s and at most {} days (use a \
                         cron spec such as @yearly for longer)",
                        every.as_millis(),
                        MIN_INTERVAL.as_secs(),
                        MAX_INTERVAL.as_secs() / 86_400
                    ),
                ));
            }
            Ok(Calendar::Interval {
                every,
                anchor: SystemTime::UNIX_EPOCH,
            })
        }
        (None, false) => {
            let cron = Cron::parse(&schedule.cron).map_err(|e| {
                Error::invalid_argument_because("schedule.cron", "INVALID_CRON", e.to_string())
            })?;
            let zone = calendar::time_zone(&schedule.time_zone).map_err(|e| {
                Error::invalid_argument_because(
                    "schedule.time_zone",
                    "UNKNOWN_TIME_ZONE",
                    e.to_string(),
                )
            })?;
            Ok(Calendar::Cron { cron, zone })
        }
    }
}

/// The catch-up window a schedule asks for (unset: [`DEFAULT_CATCHUP_WINDOW`]).
///
/// # Errors
/// INVALID_ARGUMENT when it is negative or longer than [`MAX_CATCHUP_WINDOW`].
pub fn catchup_window(schedule: &Schedule) -> Result<Duration, Error> {
    let Some(window) = &schedule.catchup_window else {
        return Ok(DEFAULT_CATCHUP_WINDOW);
    };
    let window = time::duration(window).map_err(|e| {
        Error::invalid_argument(
            "schedule.catchup_window",
            format!("catchup_window is not a valid duration: {e}"),
        )
    })?;
    if window > MAX_CATCHUP_WINDOW {
        return Err(Error::invalid_argument(
            "schedule.catchup_window",
            format!(
                "catchup_window is {} s; it may be at most {} s (366 days)",
                window.as_secs(),
                MAX_CATCHUP_WINDOW.as_secs()
            ),
        ));
    }
    Ok(window)
}

/// Checks what a client may set of a schedule (the task is checked by the runner, which knows
/// the kinds): its spec, overlap policy, catch-up window and note.
///
/// # Errors
/// INVALID_ARGUMENT naming the field at fault.
pub fn check(schedule: &Schedule) -> Result<(), Error> {
    calendar_of(schedule)?;
    if OverlapPolicy::try_from(schedule.overlap_policy).is_err() {
        return Err(Error::invalid_argument(
            "schedule.overlap_policy",
            format!(
                "overlap_policy {} is not one of SKIP, ALLOW, BUFFER_ONE, CANCEL_PREVIOUS",
                schedule.overlap_policy
            ),
        ));
    }
    catchup_window(schedule)?;
    check_note(&schedule.note)
}

/// Checks a note's length.
///
/// # Errors
/// INVALID_ARGUMENT when it is longer than [`MAX_NOTE_LEN`] bytes.
pub fn check_note(note: &str) -> Result<(), Error> {
    if note.len() > MAX_NOTE_LEN {
        return Err(Error::invalid_argument(
            "schedule.note",
            format!("note is {} bytes; the limit is {MAX_NOTE_LEN}", note.len()),
        ));
    }
    Ok(())
}

/// The overlap policy (SKIP when unspecified).
pub fn overlap_policy(schedule: &Schedule) -> OverlapPolicy {
    match OverlapPolicy::try_from(schedule.overlap_policy) {
        Ok(OverlapPolicy::Unspecified) | Err(_) => OverlapPolicy::Skip,
        Ok(policy) => policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(seconds: i64) -> Schedule {
        Schedule {
            interval: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Schedule::default()
        }
    }

    #[test]
    fn a_spec_is_one_of_cron_and_interval() {
        assert!(check(&every(1)).is_ok());
        let both = Schedule {
            cron: "* * * * *".into(),
            ..every(60)
        };
        assert!(check(&both).unwrap_err().to_string().contains("not both"));
        let none = Schedule::default();
        assert!(check(&none)
            .unwrap_err()
            .to_string()
            .contains("needs a cron"));
        let short = every(0);
        assert!(check(&short)
            .unwrap_err()
            .to_string()
            .contains("at least 1 s"));
        let long = every(300_000_000_000);
        assert!(check(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 366 days"));
        let far = Calendar::Interval {
            every: Duration::from_secs(366 * 24 * 3600),
            anchor: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(next_fire(&far, time::latest()), None, "none past 9999");
        let zoned = Schedule {
            time_zone: "Europe/Paris".into(),
            ..every(60)
        };
        assert!(check(&zoned)
            .unwrap_err()
            .to_string()
            .contains("applies to a cron"));
    }

    #[test]
    fn cron_and_zone_errors_name_their_field() {
        let bad_hour = Schedule {
            cron: "0 25 * * *".into(),
            ..Schedule::default()
        };
        let Error::InvalidArgument { field, message, .. } = check(&bad_hour).unwrap_err() else {
            panic!("not INVALID_ARGUMENT");
        };
        assert_eq!(field, "schedule.cron");
        assert!(message.contains("hour"), "{message}");
        let bad_zone = Schedule {
            cron: "0 3 * * *".into(),
            time_zone: "Mars/Olympus".into(),
            ..Schedule::default()
        };
        let Error::InvalidArgument { field, message, .. } = check(&bad_zone).unwrap_err() else {
            panic!("not INVALID_ARGUMENT");
        };
        assert_eq!(field, "schedule.time_zone");
        assert!(message.contains("Mars/Olympus"), "{message}");
    }

    #[test]
    fn policy_window_and_note_are_checked() {
        let policy = Schedule {
            overlap_policy: 9,
            ..every(1)
        };
        assert!(check(&policy)
            .unwrap_err()
            .to_string()
            .contains("overlap_policy 9"));
        let window = Schedule {
            catchup_window: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..every(1)
        };
        assert!(check(&window).is_err());
        let note = Schedule {
            note: "x".repeat(MAX_NOTE_LEN + 1),
            ..every(1)
        };
        assert!(check(&note).unwrap_err().to_string().contains("note is"));
        assert_eq!(catchup_window(&every(1)).unwrap(), DEFAULT_CATCHUP_WINDOW);
        assert_eq!(overlap_policy(&every(1)), OverlapPolicy::Skip);
    }

    #[test]
    fn wake_follows_pending_pause_and_buffer() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let next = now + Duration::from_secs(30);
        let mut stored = Stored {
            schedule: Some(Schedule {
                next_run_time: Some(stamp(next)),
                ..every(60)
            }),
            pending: None,
        };
        assert_eq!(stored.wake(now), Some(next));
        stored.schedule_mut().buffered_run_time = Some(stamp(now));
        assert_eq!(stored.wake(now), Some(now + BUFFER_POLL));
        stored.schedule_mut().paused = true;
        assert_eq!(stored.wake(now), None);
        stored.pending = Some(stamp(now - Duration::from_secs(2)));
        assert_eq!(stored.wake(now), Some(now - Duration::from_secs(2)));
    }
}
