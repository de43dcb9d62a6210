//! Schedules on the runner: the calls of `oprun.v1.ScheduleService` here, and the fire loop
//! every node runs in `fire`.
//!
//! Every change of a schedule is a fenced write of its row (its version): a call, or one
//! node's step of the fire loop, reads it, changes it, and writes it only if nobody wrote
//! it meanwhile, else reads it again. A due fire goes through three writes' worth of states:
//! decided (pending, with the next fire time moved on), started (an operation submitted
//! under the request id `schedule/{id}/{fire time in µs}`, a form no client's request id
//! takes), recorded (pending cleared, the run at the head of the recent runs). A node that
//! dies between two of them leaves the pending fire for the next node (or itself, restarted)
//! to start again; the request id makes that start answer the same operation. Two nodes
//! deciding at once write once: the second's fenced write fails and it reads what the first
//! decided.

use std::time::SystemTime;

use tracing::{info, warn};

mod fire;

use super::{Runner, Submission};
use crate::error::Error;
use crate::model::{time, OperationId, OperationRecord};
use crate::proto::google::rpc::Status;
use crate::proto::oprun::v1::{Schedule, ScheduleRun, ScheduleTask};
use crate::schedules::stored::{self, stamp, Stored};
use crate::schedules::{check_id, generate_id, id_of, plan, NAME_PREFIX};
use crate::store::{micros, ScheduleRow};

/// How many times a change is read and written again when other writers keep winning.
const WRITE_TRIES: usize = 16;

/// The fields an update may name (all of them when it names none).
const UPDATABLE: [&str; 8] = [
    "task",
    "cron",
    "time_zone",
    "interval",
    "overlap_policy",
    "catchup_window",
    "paused",
    "note",
];

/// Errors a fire cannot get past by trying again (the run records them); others (a full
/// queue, a store out of reach, shutting down) leave the fire pending.
fn is_permanent(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument { .. }
            | Error::InputRefused { .. }
            | Error::FailedPrecondition { .. }
            | Error::AlreadyExists { .. }
    )
}

/// An error of the task's checks, naming the field inside the schedule.
fn in_task(e: Error) -> Error {
    match e {
        Error::InvalidArgument {
            field,
            message,
            reason,
        } => Error::InvalidArgument {
            field: format!("schedule.task.{field}").into(),
            message: format!("task: {message}"),
            reason,
        },
        other => other,
    }
}

/// The submission a schedule's task makes.
fn submission(
    task: &ScheduleTask,
    name: &str,
    fire: SystemTime,
    request_id: String,
) -> Result<Submission, Error> {
    let timeout = task
        .timeout
        .as_ref()
        .map(|t| {
            time::duration(t).map_err(|e| {
                Error::invalid_argument("timeout", format!("timeout is not a valid duration: {e}"))
            })
        })
        .transpose()?;
    Ok(Submission {
        kind: task.kind.clone(),
        input: task.input.clone(),
        request_id,
        timeout,
        priority: task.priority,
        concurrency_key: task.concurrency_key.clone(),
        retry_policy: task.retry_policy,
        schedule: name.to_owned(),
        fire_time: Some(fire),
        ..Submission::default()
    })
}

impl Runner {
    /// Creates a schedule named `schedules/{id}` (a generated id when `id` is empty) from
    /// what a client may set of `schedule` (output fields are ignored). Its first fire is
    /// the first fire time after now.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad id, spec (the cron field at fault named), time zone,
    /// overlap policy, catch-up window or task (as SubmitTask judges it); PERMISSION_DENIED
    /// when `role` may not start the task's kind; ALREADY_EXISTS when the id is taken;
    /// UNAVAILABLE when the store fails.
    pub async fn create_schedule(
        &self,
        id: &str,
        schedule: Schedule,
        role: Option<crate::auth::Role>,
    ) -> Result<Schedule, Error> {
        let id = if id.is_empty() {
            generate_id()
        } else {
            check_id("schedule_id", id)?;
            id.to_owned()
        };
        let now = self.now();
        let name = format!("{NAME_PREFIX}{id}");
        let mut fresh = Schedule {
            name: name.clone(),
            create_time: Some(stamp(now)),
            update_time: Some(stamp(now)),
            ..Schedule::default()
        };
        merge(&mut fresh, schedule, &UPDATABLE);
        stored::check(&fresh)?;
        self.check_task(&fresh, role).await?;
        let mut stored = Stored {
            schedule: Some(fresh),
            pending: None,
        };
        restart_calendar(&mut stored, now)?;
        // Versions start at the creation time (µs), not 1: a schedule deleted and created
        // again under its id never shows a version a stale writer of the old one expects.
        let version = micros(now).max(1);
        if !self
            .shared
            .store
            .put_schedule(&stored.row(&id, version, now), None)
            .await?
        {
            return Err(Error::ScheduleExists { name });
        }
        self.shared.wakes.schedule.notify_one();
        info!(schedule = %name, "schedule created");
        Ok(self.with_outcomes(stored).await)
    }

    /// The schedule of that name, its recent runs with how they ended.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a malformed name; NOT_FOUND when there is none; UNAVAILABLE
    /// when the store fails.
    pub async fn get_schedule(&self, name: &str) -> Result<Schedule, Error> {
        let (_, stored) = self.read_schedule(name).await?;
        Ok(self.with_outcomes(stored).await)
    }

    /// Up to `limit` schedules whose id sorts after `after`, by id.
    ///
    /// # Errors
    /// UNAVAILABLE when the store fails; DATA_LOSS for a stored schedule that does not
    /// decode.
    pub async fn list_schedules(&self, after: &str, limit: usize) -> Result<Vec<Schedule>, Error> {
        let rows = self.shared.store.schedules(after, limit).await?;
        let mut schedules = Vec::with_capacity(rows.len());
        for row in rows {
            let stored = Stored::decode_row(&row)?;
            schedules.push(self.with_outcomes(stored).await);
        }
        Ok(schedules)
    }

    /// Changes the fields of the schedule named by `schedule.name` that `mask` names (every
    /// updatable one when it is empty). A new cron, interval or time zone fires from now.
    ///
    /// # Errors
    /// As [`create_schedule`](Self::create_schedule); INVALID_ARGUMENT for a field the mask
    /// names that cannot change; NOT_FOUND when there is no such schedule.
    pub async fn update_schedule(
        &self,
        schedule: Schedule,
        mask: &[String],
        role: Option<crate::auth::Role>,
    ) -> Result<Schedule, Error> {
        let paths: Vec<&str> = if mask.is_empty() {
            UPDATABLE.to_vec()
        } else {
            let mut paths = Vec::with_capacity(mask.len());
            for path in mask {
                let Some(known) = UPDATABLE.iter().find(|p| **p == path.as_str()) else {
                    return Err(Error::invalid_argument(
                        "update_mask",
                        format!(
                            "update_mask names {}, which cannot be changed; it may name {}",
                            crate::text::quote(path),
                            UPDATABLE.join(", ")
                        ),
                    ));
                };
                paths.push(*known);
            }
            paths
        };
        let name = schedule.name.clone();
        let stored = self
            .change_schedule(&name, role, |stored, now| {
                let current = stored.schedule_mut();
                merge(current, schedule.clone(), &paths);
                current.update_time = Some(stamp(now));
                Ok(())
            })
            .await?;
        info!(schedule = %name, "schedule updated");
        Ok(self.with_outcomes(stored).await)
    }

    /// Deletes a schedule; the operations it started are left as they are.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a malformed name; NOT_FOUND when there is none; UNAVAILABLE
    /// when the store fails.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        let id = id_of("name", name)?;
        if !self.shared.store.delete_schedule(&id).await? {
            return Err(Error::ScheduleNotFound {
                name: name.to_owned(),
            });
        }
        info!(schedule = %name, "schedule deleted");
        Ok(())
    }

    /// Pauses a schedule, with `note` as its note (empty: none): it fires no more until
    /// resumed, and the fires meanwhile do not run later.
    ///
    /// # Errors
    /// As [`delete_schedule`](Self::delete_schedule); INVALID_ARGUMENT for a note too long.
    pub async fn pause_schedule(&self, name: &str, note: &str) -> Result<Schedule, Error> {
        let note = note.to_owned();
        let stored = self
            .change_schedule(name, None, |stored, now| {
                stored::check_note(&note)?;
                let schedule = stored.schedule_mut();
                schedule.paused = true;
                schedule.note.clone_from(&note);
                schedule.update_time = Some(stamp(now));
                Ok(())
            })
            .await?;
        info!(schedule = %name, "schedule paused");
        Ok(self.with_outcomes(stored).await)
    }

    /// Resumes a paused schedule, with `note` as its note (empty: none): it fires from the
    /// first fire time after now (a schedule that was not paused keeps its next fire).
    ///
    /// # Errors
    /// As [`pause_schedule`](Self::pause_schedule); PERMISSION_DENIED when `role` may not
    /// start the schedule's kind.
    pub async fn resume_schedule(
        &self,
        name: &str,
        note: &str,
        role: Option<crate::auth::Role>,
    ) -> Result<Schedule, Error> {
        let note = note.to_owned();
        let stored = self
            .change_schedule(name, role, |stored, now| {
                let schedule = stored.schedule_mut();
                schedule.paused = false;
                schedule.note.clone_from(&note);
                schedule.update_time = Some(stamp(now));
                Ok(())
            })
            .await?;
        info!(schedule = %name, "schedule resumed");
        Ok(self.with_outcomes(stored).await)
    }

    /// Starts one operation of the schedule now, whatever its calendar, pause or overlap
    /// policy; it counts as the schedule's latest run. A repeated `request_id` answers the
    /// operation it started.
    ///
    /// # Errors
    /// As [`get_schedule`](Self::get_schedule); as [`submit`](Self::submit) for the task.
    pub async fn trigger_schedule(
        &self,
        name: &str,
        request_id: String,
        traceparent: Option<String>,
        role: Option<crate::auth::Role>,
    ) -> Result<OperationRecord, Error> {
        let (_, stored) = self.read_schedule(name).await?;
        // A client's request id, checked as SubmitTask checks it (a fire's id is no client's).
        let request_id = super::admission::check_request_id(&request_id)?.unwrap_or_default();
        let now = self.now();
        let schedule = stored.schedule();
        let mut submission = submission(
            schedule.task.as_ref().unwrap_or(&ScheduleTask::default()),
            &schedule.name,
            now,
            request_id,
        )
        .map_err(in_task)?;
        submission.traceparent = traceparent;
        submission.role = role;
        let record = self.submit(submission).await.map_err(in_task)?;
        let operation = record.id.name();
        let fire = record.fire_time.unwrap_or(now);
        let recorded = self
            .change_schedule(name, None, |stored, _| {
                if !stored
                    .schedule()
                    .recent_runs
                    .iter()
                    .any(|run| run.operation == operation)
                {
                    plan::record_run(
                        stored,
                        ScheduleRun {
                            fire_time: Some(stamp(fire)),
                            operation: operation.clone(),
                            triggered: true,
                            ..ScheduleRun::default()
                        },
                    );
                }
                Ok(())
            })
            .await;
        if let Err(e) = recorded {
            // The operation runs; only the schedule's list of runs misses it.
            warn!(schedule = %name, op.name = %operation, error = %e, "triggered run not recorded");
        }
        info!(schedule = %name, op.name = %operation, "schedule triggered");
        Ok(record)
    }

    /// Checks a schedule's task as a submission by `role`.
    async fn check_task(
        &self,
        schedule: &Schedule,
        role: Option<crate::auth::Role>,
    ) -> Result<(), Error> {
        let Some(task) = &schedule.task else {
            return Err(Error::invalid_argument(
                "schedule.task",
                "a schedule needs a task: the kind and input of the operations it starts",
            ));
        };
        let mut submission =
            submission(task, &schedule.name, self.now(), String::new()).map_err(in_task)?;
        submission.role = role;
        self.check_submission(submission).await.map_err(in_task)
    }

    /// The schedule of that name, as stored.
    async fn read_schedule(&self, name: &str) -> Result<(ScheduleRow, Stored), Error> {
        let id = id_of("name", name)?;
        let Some(row) = self.shared.store.schedule(&id).await? else {
            return Err(Error::ScheduleNotFound {
                name: name.to_owned(),
            });
        };
        let stored = Stored::decode_row(&row)?;
        Ok((row, stored))
    }

    /// Reads the schedule, applies `change` and writes it fenced, again while other writers
    /// win. Checks what it would write first: its spec when it changed or the schedule is
    /// resumed (a schedule whose spec a later build refuses can still be paused, noted and
    /// read), its note, and (with a caller's `role`, and whenever the task changed) its task
    /// as a submission by that role: a caller who may not start the task's kind may not make
    /// the schedule start it either. The next fire moves only when the calendar changes or
    /// the schedule is paused or resumed: a fire due meanwhile is not dropped by an
    /// unrelated change.
    async fn change_schedule(
        &self,
        name: &str,
        role: Option<crate::auth::Role>,
        mut change: impl FnMut(&mut Stored, SystemTime) -> Result<(), Error>,
    ) -> Result<Stored, Error> {
        for _ in 0..WRITE_TRIES {
            let (row, mut stored) = self.read_schedule(name).await?;
            let now = self.now();
            let before = stored.schedule().clone();
            change(&mut stored, now)?;
            let after = stored.schedule();
            let calendar_changed = after.cron != before.cron
                || after.interval != before.interval
                || after.time_zone != before.time_zone;
            let resumed = before.paused && !after.paused;
            if calendar_changed
                || resumed
                || after.overlap_policy != before.overlap_policy
                || after.catchup_window != before.catchup_window
            {
                stored::check(after)?;
            }
            stored::check_note(&after.note)?;
            if role.is_some() || after.task != before.task {
                self.check_task(after, role).await?;
            }
            if calendar_changed || after.paused != before.paused {
                restart_calendar(&mut stored, now)?;
            }
            let next = stored.row(&row.id, row.version + 1, now);
            if self
                .shared
                .store
                .put_schedule(&next, Some(row.version))
                .await?
            {
                self.shared.wakes.schedule.notify_one();
                return Ok(stored);
            }
        }
        Err(Error::Store(crate::store::StoreError::unavailable(
            format!("{name} kept changing under this call; retry it"),
        )))
    }

    /// The schedule's wire form, with how each recent run ended (as far as its operation can
    /// still be read).
    async fn with_outcomes(&self, stored: Stored) -> Schedule {
        let mut schedule = stored.schedule.unwrap_or_default();
        for run in &mut schedule.recent_runs {
            let Ok(id) = OperationId::parse_name(&run.operation) else {
                continue;
            };
            if let Ok(Some(record)) = self.shared.store.get(&id).await {
                run.done = record.is_done();
                run.state = record.state.to_proto() as i32;
                run.error = record.error_code().map(|code| Status {
                    code,
                    message: match &record.outcome {
                        Some(crate::model::Outcome::Error(status)) => status.message.clone(),
                        _ => String::new(),
                    },
                    details: Vec::new(),
                });
            }
        }
        schedule
    }
}

/// Copies the fields `paths` names from `from` into `into`.
fn merge(into: &mut Schedule, from: Schedule, paths: &[&str]) {
    for path in paths {
        match *path {
            "task" => into.task.clone_from(&from.task),
            "cron" => into.cron.clone_from(&from.cron),
            "time_zone" => into.time_zone.clone_from(&from.time_zone),
            "interval" => into.interval = from.interval,
            "overlap_policy" => into.overlap_policy = from.overlap_policy,
            "catchup_window" => into.catchup_window = from.catchup_window,
            "paused" => into.paused = from.paused,
            "note" => into.note.clone_from(&from.note),
            _ => {}
        }
    }
}

/// Sets the next fire time from `now` (none while paused).
fn restart_calendar(stored: &mut Stored, now: SystemTime) -> Result<(), Error> {
    let next = if stored.schedule().paused {
        None
    } else {
        stored::next_fire(&stored::calendar_of(stored.schedule())?, now).map(stamp)
    };
    stored.schedule_mut().next_run_time = next;
    Ok(())
}
