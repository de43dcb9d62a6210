//! What a node does with a schedule whose wake time came, decided without I/O: the fire loop
//! reads the state and whether the previous run is still going, calls [`decide`], and writes
//! the result fenced by the schedule's version; the time is injected, so DST days, outages
//! and late nodes are tested with plain instants.

use std::time::{Duration, SystemTime};

use super::calendar::Calendar;
use super::stored::{catchup_window, next_fire, overlap_policy, stamp, timestamp, Stored};
use super::{FIRE_GRACE, MAX_RECENT_RUNS};
use crate::proto::oprun::v1::schedule::OverlapPolicy;
use crate::proto::oprun::v1::ScheduleRun;

/// The most fire times one decision counts (a schedule firing every second that no node ran
/// for days): past it, the skipped count grows by this much per decision.
pub const MAX_COUNTED: u64 = 100_000;

/// Decides what the schedule does at `now`, given whether its previous run is still going:
/// a buffered fire whose previous run ended becomes pending; a due fire is decided by the
/// catch-up window (fires missed past it are skipped and counted; the latest one within it
/// stands for all of them) and the overlap policy (pending, buffered or skipped), and the
/// next fire time moves past `now`. Answers whether anything changed. A pending fire must be
/// started (and cleared) before anything else is decided: then nothing changes.
pub fn decide(
    stored: &mut Stored,
    calendar: &Calendar,
    now: SystemTime,
    previous_running: bool,
) -> bool {
    if stored.pending.is_some() || stored.schedule().paused {
        return false;
    }
    if let Some(buffered) = &stored.schedule().buffered_run_time {
        if !previous_running {
            stored.pending = Some(*buffered);
            stored.schedule_mut().buffered_run_time = None;
            return true;
        }
    }
    let Some(next) = stored.schedule().next_run_time.as_ref().map(timestamp) else {
        return false;
    };
    if next > now {
        return false;
    }
    // Within this much of now a fire runs; older ones were missed.
    let window = catchup_window(stored.schedule())
        .unwrap_or_default()
        .max(FIRE_GRACE);
    let before_next = next
        .checked_sub(Duration::from_micros(1))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    // Counted up to a bound; the latest is found however many there are.
    let (due, latest) = calendar.fires_between(before_next, now, MAX_COUNTED);
    let latest = latest.unwrap_or(next);
    let on_time = now.duration_since(latest).unwrap_or_default() <= window;
    let mut skipped = due.saturating_sub(u64::from(on_time));
    if on_time {
        let policy = overlap_policy(stored.schedule());
        match policy {
            OverlapPolicy::Skip | OverlapPolicy::Unspecified if previous_running => skipped += 1,
            OverlapPolicy::BufferOne if previous_running => {
                let schedule = stored.schedule_mut();
                if schedule.buffered_run_time.is_none() {
                    schedule.buffered_run_time = Some(stamp(latest));
                } else {
                    skipped += 1;
                }
            }
            _ => stored.pending = Some(stamp(latest)),
        }
    }
    let schedule = stored.schedule_mut();
    schedule.skipped_runs = schedule
        .skipped_runs
        .saturating_add(i64::try_from(skipped).unwrap_or(i64::MAX));
    schedule.next_run_time = next_fire(calendar, now).map(stamp);
    true
}

/// Records a run: newest first among the recent runs, counted when it started an operation
/// (a fire that could not start one, say for a kind no longer known, shows its error); a
/// pending fire of that time is cleared.
pub fn record_run(stored: &mut Stored, run: ScheduleRun) {
    if run.fire_time.is_some() && stored.pending == run.fire_time && !run.triggered {
        stored.pending = None;
    }
    let schedule = stored.schedule_mut();
    if !run.operation.is_empty() {
        schedule.started_runs = schedule.started_runs.saturating_add(1);
    }
    schedule.recent_runs.insert(0, run);
    schedule.recent_runs.truncate(MAX_RECENT_RUNS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::oprun::v1::Schedule;

    const T0: u64 = 1_800_000_000;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + seconds)
    }

    /// Every second from T0, with `policy` and a 60 s catch-up window, next fire at T0 + 1.
    fn every_second(policy: OverlapPolicy) -> (Stored, Calendar) {
        let calendar = Calendar::Interval {
            every: Duration::from_secs(1),
            anchor: at(0),
        };
        let stored = Stored {
            schedule: Some(Schedule {
                interval: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                overlap_policy: policy as i32,
                next_run_time: Some(stamp(at(1))),
                ..Schedule::default()
            }),
            pending: None,
        };
        (stored, calendar)
    }

    fn run(stored: &mut Stored) -> SystemTime {
        let fire = stored.pending.expect("a pending fire");
        record_run(
            stored,
            ScheduleRun {
                fire_time: Some(fire),
                operation: "operations/x".into(),
                ..ScheduleRun::default()
            },
        );
        timestamp(&fire)
    }

    #[test]
    fn a_due_fire_becomes_pending_and_the_next_moves_on() {
        let (mut stored, calendar) = every_second(OverlapPolicy::Allow);
        assert!(!decide(&mut stored, &calendar, at(0), false));
        let late = at(1) + Duration::from_millis(3);
        assert!(decide(&mut stored, &calendar, late, true));
        assert_eq!(stored.pending, Some(stamp(at(1))));
        assert_eq!(stored.schedule().next_run_time, Some(stamp(at(2))));
        // Nothing else is decided before the pending fire starts.
        assert!(!decide(&mut stored, &calendar, at(5), false));
        assert_eq!(run(&mut stored), at(1));
        assert_eq!(stored.pending, None);
        assert_eq!(stored.schedule().started_runs, 1);
        assert_eq!(stored.schedule().skipped_runs, 0);
    }

    #[test]
    fn skip_counts_a_fire_while_the_previous_runs() {
        let (mut stored, calendar) = every_second(OverlapPolicy::Skip);
        assert!(decide(&mut stored, &calendar, at(1), true));
        assert_eq!(stored.pending, None);
        assert_eq!(stored.schedule().skipped_runs, 1);
        assert!(decide(&mut stored, &calendar, at(2), false));
        assert_eq!(stored.pending, Some(stamp(at(2))));
    }

    #[test]
    fn buffer_one_keeps_one_fire_for_when_the_previous_ends() {
        let (mut stored, calendar) = every_second(OverlapPolicy::BufferOne);
        assert!(decide(&mut stored, &calendar, at(1), true));
        assert_eq!(stored.schedule().buffered_run_time, Some(stamp(at(1))));
        assert!(decide(&mut stored, &calendar, at(2), true));
        assert_eq!(
            stored.schedule().skipped_runs,
            1,
            "a second fire is skipped"
        );
        assert_eq!(stored.schedule().buffered_run_time, Some(stamp(at(1))));
        // The previous run ended: the buffered fire starts, then the due one is decided.
        assert!(decide(
            &mut stored,
            &calendar,
            at(2) + Duration::from_millis(500),
            false
        ));
        assert_eq!(stored.pending, Some(stamp(at(1))));
        assert_eq!(stored.schedule().buffered_run_time, None);
        run(&mut stored);
        assert!(decide(&mut stored, &calendar, at(3), true));
        assert_eq!(stored.schedule().buffered_run_time, Some(stamp(at(3))));
    }

    #[test]
    fn cancel_previous_and_allow_always_run() {
        for policy in [OverlapPolicy::CancelPrevious, OverlapPolicy::Allow] {
            let (mut stored, calendar) = every_second(policy);
            assert!(decide(&mut stored, &calendar, at(1), true));
            assert_eq!(stored.pending, Some(stamp(at(1))), "{policy:?}");
        }
    }

    #[test]
    fn an_outage_runs_the_latest_missed_fire_once_within_the_window() {
        let (mut stored, calendar) = every_second(OverlapPolicy::Skip);
        // Nobody ran from T0 + 1 to T0 + 11: ten fires missed, and one is due now.
        let now = at(11) + Duration::from_millis(200);
        assert!(decide(&mut stored, &calendar, now, false));
        assert_eq!(stored.pending, Some(stamp(at(11))));
        assert_eq!(stored.schedule().skipped_runs, 10);
        assert_eq!(stored.schedule().next_run_time, Some(stamp(at(12))));
    }

    #[test]
    fn fires_older_than_the_window_are_all_skipped() {
        let calendar = Calendar::Interval {
            every: Duration::from_secs(3600),
            anchor: at(0),
        };
        let (mut stored, _) = every_second(OverlapPolicy::Allow);
        let schedule = stored.schedule_mut();
        schedule.interval = Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        });
        schedule.next_run_time = Some(stamp(at(3600)));
        schedule.catchup_window = Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        });
        // Back 30 minutes after the 2nd hour's fire: two fires missed, the last one too old.
        assert!(decide(&mut stored, &calendar, at(3 * 3600 - 1800), false));
        assert_eq!(stored.pending, None);
        assert_eq!(stored.schedule().skipped_runs, 2);
        assert_eq!(stored.schedule().next_run_time, Some(stamp(at(3 * 3600))));
    }

    #[test]
    fn huge_outages_are_counted_up_to_a_bound_and_still_run_the_latest() {
        let (mut stored, calendar) = every_second(OverlapPolicy::Allow);
        let now = at(5_000_000);
        assert!(decide(&mut stored, &calendar, now, false));
        assert_eq!(stored.pending, Some(stamp(now)));
        assert_eq!(
            stored.schedule().skipped_runs,
            i64::try_from(MAX_COUNTED - 1).unwrap()
        );
    }

    /// A cron schedule in New York, its next fire after `from`.
    fn new_york(spec: &str, from: &str) -> (Stored, Calendar) {
        let calendar = Calendar::Cron {
            cron: crate::schedules::cron::Cron::parse(spec).expect("a spec"),
            zone: crate::schedules::calendar::time_zone("America/New_York").expect("a zone"),
        };
        let next = calendar.next_after(utc(from)).expect("a fire");
        let stored = Stored {
            schedule: Some(Schedule {
                cron: spec.into(),
                time_zone: "America/New_York".into(),
                next_run_time: Some(stamp(next)),
                ..Schedule::default()
            }),
            pending: None,
        };
        (stored, calendar)
    }

    fn utc(text: &str) -> SystemTime {
        let t: prost_types::Timestamp = text.parse().expect("RFC 3339");
        SystemTime::try_from(t).expect("a time")
    }

    /// The clock is injected: the decisions of a daily 02:30 fire around the day New York
    /// springs forward (02:30 does not exist: it runs at 03:00 EDT, the first instant after
    /// the gap) and a daily 01:30 fire around the day it falls back (01:30 happens twice: it
    /// runs once, at the first).
    #[test]
    fn dst_days_follow_the_time_zone() {
        let (mut stored, calendar) = new_york("30 2 * * *", "2026-03-07T12:00:00Z");
        assert_eq!(
            stored.schedule().next_run_time,
            Some(stamp(utc("2026-03-08T07:00:00Z"))),
            "03:00 EDT"
        );
        assert!(!decide(
            &mut stored,
            &calendar,
            utc("2026-03-08T06:59:59Z"),
            false
        ));
        assert!(decide(
            &mut stored,
            &calendar,
            utc("2026-03-08T07:00:00.3Z"),
            false
        ));
        assert_eq!(stored.pending, Some(stamp(utc("2026-03-08T07:00:00Z"))));
        assert_eq!(
            stored.schedule().next_run_time,
            Some(stamp(utc("2026-03-09T06:30:00Z"))),
            "02:30 EDT the day after"
        );
        let (mut stored, calendar) = new_york("30 1 * * *", "2026-10-31T12:00:00Z");
        assert!(decide(
            &mut stored,
            &calendar,
            utc("2026-11-01T05:30:00.1Z"),
            false
        ));
        assert_eq!(
            stored.pending,
            Some(stamp(utc("2026-11-01T05:30:00Z"))),
            "01:30 EDT"
        );
        run(&mut stored);
        assert_eq!(
            stored.schedule().next_run_time,
            Some(stamp(utc("2026-11-02T06:30:00Z"))),
            "not again at 01:30 EST the same night"
        );
        assert!(!decide(
            &mut stored,
            &calendar,
            utc("2026-11-01T06:30:00.1Z"),
            false
        ));
    }

    #[test]
    fn a_paused_schedule_decides_nothing() {
        let (mut stored, calendar) = every_second(OverlapPolicy::Allow);
        stored.schedule_mut().paused = true;
        assert!(!decide(&mut stored, &calendar, at(10), false));
    }

    #[test]
    fn recent_runs_keep_the_newest_ten() {
        let (mut stored, _) = every_second(OverlapPolicy::Allow);
        for i in 0..15 {
            stored.pending = Some(stamp(at(i)));
            run(&mut stored);
        }
        let runs = &stored.schedule().recent_runs;
        assert_eq!(runs.len(), MAX_RECENT_RUNS);
        assert_eq!(runs[0].fire_time, Some(stamp(at(14))));
        assert_eq!(stored.schedule().started_runs, 15);
    }
}
