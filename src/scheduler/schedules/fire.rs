//! The fire loop every node runs: reads the schedules whose wake time came, decides each
//! due fire (a fenced write), starts its operation (under the fire's request id) and records
//! it; a missed or overlapping fire follows the schedule's policy.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tracing::{info, warn, Instrument};

use super::{is_permanent, submission, WRITE_TRIES};
use crate::error::Error;
use crate::model::{time, OperationId, OperationRecord};
use crate::proto::google::rpc::Status;
use crate::proto::oprun::v1::schedule::OverlapPolicy;
use crate::proto::oprun::v1::ScheduleRun;
use crate::scheduler::Runner;
use crate::schedules::stored::{self, stamp, timestamp, Stored};
use crate::schedules::{plan, NAME_PREFIX};
use crate::store::{from_micros, micros, ScheduleRow};

/// The most due schedules one pass of the fire loop reads.
const DUE_BATCH: usize = 100;

/// How many due schedules one node acts on at once.
const CONCURRENT_FIRES: usize = 32;

/// On a store other nodes share, the longest the fire loop sleeps: a schedule another node
/// created or changed is seen within it.
const SHARED_IDLE: Duration = Duration::from_secs(1);

/// How long the fire loop waits after a pass in which a schedule failed (say, a full
/// queue refused its fire) before it tries again.
const FAILED_PAUSE: Duration = Duration::from_secs(1);

impl Runner {
    /// The fire loop: acts on every schedule whose wake time came, then sleeps until the
    /// next one's (on a shared store at most [`SHARED_IDLE`], to see the other nodes'
    /// changes), or until a call here changes one.
    pub(in crate::scheduler) async fn fire_loop(self) {
        let shared_store = !self.shared.store.is_exclusive();
        loop {
            let now = self.now();
            let wait = match self.fire_due(now).await {
                Ok(next) => {
                    let until = next.map(|next| {
                        from_micros(next)
                            .duration_since(now)
                            .unwrap_or(Duration::ZERO)
                    });
                    match (until, shared_store) {
                        (Some(until), true) => Some(until.min(SHARED_IDLE)),
                        (None, true) => Some(SHARED_IDLE),
                        (until, false) => until,
                    }
                }
                Err(e) => {
                    warn!(error = %e, "schedules: the due ones could not be read; trying again in a second");
                    Some(FAILED_PAUSE)
                }
            };
            tokio::select! {
                () = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = self.shared.wakes.schedule.notified() => {}
                () = self.shared.life.root.cancelled() => return,
            }
        }
    }

    /// One pass: acts on the schedules due at `now`; answers when to look again: now when it
    /// acted on some (their new wake times are read by the next pass), [`FAILED_PAUSE`] on
    /// when one of them failed (each failure is logged here), else the next wake time.
    async fn fire_due(&self, now: SystemTime) -> Result<Option<i64>, Error> {
        let due = self
            .shared
            .store
            .due_schedules(micros(now), DUE_BATCH)
            .await?;
        // After acting on some, their next wake times are read again at once.
        let acted = !due.due.is_empty();
        // Several at once: their writes share the store's commits.
        let results: Vec<(String, Result<(), Error>)> = futures::stream::iter(due.due)
            .map(|row| {
                let name = format!("{NAME_PREFIX}{}", row.id);
                let span = tracing::info_span!("schedule", schedule = %name);
                async move { (name, self.act_on(row).instrument(span).await) }
            })
            .buffer_unordered(CONCURRENT_FIRES)
            .collect()
            .await;
        let mut failed = false;
        for (name, result) in results {
            if let Err(e) = result {
                warn!(schedule = %name, error = %e, "schedule: fire not done; trying again");
                failed = true;
            }
        }
        Ok(if failed {
            time::add(now, FAILED_PAUSE).map(micros)
        } else if acted {
            Some(micros(now))
        } else {
            due.next_wake
        })
    }

    /// Acts on one due schedule until nothing is due in it: starts its pending fire, or
    /// decides its due one, each step a fenced write.
    async fn act_on(&self, mut row: ScheduleRow) -> Result<(), Error> {
        // Whether `row` is what this loop wrote itself (else it was read, maybe long ago).
        let mut written_here = false;
        for _ in 0..WRITE_TRIES {
            let now = self.now();
            let mut stored = Stored::decode_row(&row)?;
            let skipped_before = stored.schedule().skipped_runs;
            let mut started = None;
            if let Some(fire) = stored.pending {
                // A row read (not just written here) is read again just before the start: one
                // read before a long wait may be one whose fire another node started, recorded
                // and (its operation deleted since) left no request id to answer a second start.
                if !written_here {
                    match self.shared.store.schedule(&row.id).await? {
                        Some(fresh) if fresh.version == row.version => {}
                        Some(fresh) if fresh.wake.is_some_and(|wake| wake <= micros(now)) => {
                            row = fresh;
                            continue;
                        }
                        _ => return Ok(()),
                    }
                }
                let run = match self.start_fire(&row.id, &stored, timestamp(&fire)).await {
                    Ok(run) => run,
                    Err(e) => {
                        // It stays pending; the others due are not held back behind it.
                        self.postpone(&row, now).await;
                        return Err(e);
                    }
                };
                started = Some(if run.operation.is_empty() {
                    "failed"
                } else {
                    "started"
                });
                plan::record_run(&mut stored, run);
            } else {
                let decided = match stored.calendar() {
                    Ok(calendar) => {
                        let previous_running = self.previous_running(&stored).await?;
                        plan::decide(&mut stored, &calendar, now, previous_running)
                    }
                    Err(e) => {
                        // A spec this build refuses (a zone gone from the tz database): no
                        // next fire until it is updated, instead of an error every pass.
                        warn!(schedule = %row.id, error = %e, "schedule left without a next fire");
                        stored.schedule_mut().next_run_time = None;
                        true
                    }
                };
                if !decided && stored.wake(now).map(micros) == row.wake {
                    return Ok(());
                }
            }
            let next = stored.row(&row.id, row.version + 1, now);
            if self
                .shared
                .store
                .put_schedule(&next, Some(row.version))
                .await?
            {
                let metrics = &self.shared.metrics;
                if let Some(result) = started {
                    metrics.schedule_fires(result, 1);
                }
                let skipped = stored
                    .schedule()
                    .skipped_runs
                    .saturating_sub(skipped_before);
                metrics.schedule_fires("skipped", u64::try_from(skipped).unwrap_or(0));
                if next.wake.is_none_or(|wake| wake > micros(now)) {
                    return Ok(());
                }
                row = next;
                written_here = true;
                continue;
            }
            // Another node or a call wrote it meanwhile: go on from what it wrote, if
            // anything in it is still due.
            match self.shared.store.schedule(&row.id).await? {
                Some(fresh) if fresh.wake.is_some_and(|wake| wake <= micros(now)) => {
                    row = fresh;
                    written_here = false;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Leaves a schedule whose pending fire could not start now (a full queue, a store out
    /// of reach) for [`FAILED_PAUSE`]: its wake moves on, so that the fire loop's next passes
    /// read the schedules due behind it. Best effort: a write that fails leaves it as it is.
    async fn postpone(&self, row: &ScheduleRow, now: SystemTime) {
        let Some(later) = time::add(now, FAILED_PAUSE) else {
            return;
        };
        let postponed = ScheduleRow {
            wake: Some(micros(later)),
            version: row.version + 1,
            ..row.clone()
        };
        if let Err(e) = self
            .shared
            .store
            .put_schedule(&postponed, Some(row.version))
            .await
        {
            warn!(schedule = %row.id, error = %e, "could not postpone a fire that failed to start");
        }
    }

    /// The schedule's recent runs that are not done (an operation that cannot be found any
    /// more is done): what the overlap policy calls the previous run, however many there
    /// are (a triggered run among them).
    async fn unfinished_runs(&self, stored: &Stored) -> Result<Vec<OperationRecord>, Error> {
        let mut unfinished = Vec::new();
        for run in &stored.schedule().recent_runs {
            let Ok(id) = OperationId::parse_name(&run.operation) else {
                continue;
            };
            if let Some(record) = self.shared.store.get(&id).await? {
                if !record.is_done() {
                    unfinished.push(record);
                }
            }
        }
        Ok(unfinished)
    }

    /// Whether a run of the schedule is still going, read only where a decision needs it:
    /// under SKIP and BUFFER_ONE, or with a buffered fire (ALLOW and CANCEL_PREVIOUS start
    /// every fire).
    async fn previous_running(&self, stored: &Stored) -> Result<bool, Error> {
        let schedule = stored.schedule();
        let needed = matches!(
            stored::overlap_policy(schedule),
            OverlapPolicy::Skip | OverlapPolicy::BufferOne
        ) || schedule.buffered_run_time.is_some();
        if !needed {
            return Ok(false);
        }
        Ok(!self.unfinished_runs(stored).await?.is_empty())
    }

    /// Starts the operation of a decided fire (the same one however often it is called for
    /// that fire), cancelling the previous run first under CANCEL_PREVIOUS. A fire that
    /// cannot start for good (its kind is gone, its input no longer valid) is a run that
    /// shows why.
    async fn start_fire(
        &self,
        id: &str,
        stored: &Stored,
        fire: SystemTime,
    ) -> Result<ScheduleRun, Error> {
        let schedule = stored.schedule();
        if stored::overlap_policy(schedule) == OverlapPolicy::CancelPrevious {
            for previous in self.unfinished_runs(stored).await? {
                match self.cancel_from(previous).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let request_id = crate::scheduler::admission::fire_request_id(id, fire);
        let task = schedule.task.clone().unwrap_or_default();
        let started = match submission(&task, &schedule.name, fire, request_id.clone()) {
            Ok(submission) => self.submit(submission).await,
            Err(e) => Err(e),
        };
        let mut run = ScheduleRun {
            fire_time: Some(stamp(fire)),
            ..ScheduleRun::default()
        };
        match started {
            Ok(record) => {
                if let Ok(delay) = record.create_time.duration_since(fire) {
                    self.shared.metrics.schedule_fire_delay(delay);
                }
                run.operation = record.id.name();
            }
            Err(e) if is_permanent(&e) => {
                // The same fire started before under a task since changed: that one stands.
                let earlier = self
                    .shared
                    .store
                    .find_request(&request_id)
                    .await?
                    .filter(|r| {
                        r.schedule.as_deref() == Some(schedule.name.as_str())
                            && r.fire_time == Some(fire)
                    });
                if let Some(record) = earlier {
                    run.operation = record.id.name();
                } else {
                    warn!(schedule = %schedule.name, error = %e, "fire could not start");
                    let status = tonic::Status::from(e);
                    run.error = Some(Status {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        details: Vec::new(),
                    });
                    return Ok(run);
                }
            }
            Err(e) => return Err(e),
        }
        info!(schedule = %schedule.name, op.name = %run.operation, fire = %micros(fire), "fired");
        Ok(run)
    }
}
