//! Drives one worker: from its claim to the write of its end.
//!
//! A claimed operation becomes [`Running`] and a tracked task races three things: the worker
//! (on its own task, so a panic is caught as a `JoinError`); the token being cancelled (a
//! client, the deadline, shutdown, a lost lease) followed by the grace period, after which the
//! worker is aborted; and the progress writer, which writes the worker's [`Draft`] after a
//! change and then waits `progress_interval` (coalescing). The end is decided by
//! [`super::outcome::conclude`] and written by [`Runner::settle`]: fenced by owner and
//! attempt, retried with backoff while the store refuses it, and never if this node no longer
//! holds the operation.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tracing::{error, info, info_span, warn, Instrument};

use super::outcome::{conclude, Decision, Situation, WorkerEnd};
use super::running::Running;
use super::transition::TransitionError;
use super::{clock, Runner, STORE_RETRY_MAX, STORE_RETRY_MIN};
use crate::model::{CancelReason, Change, OperationRecord};
use crate::store::StoreError;
use crate::task::{Draft, ErasedTask, Report, TaskContext};

impl Runner {
    /// Runs a claimed operation on a tracked task.
    pub(crate) fn launch(&self, record: OperationRecord) {
        self.launch_on(record, None);
    }

    /// Runs a claimed operation on a tracked task, its worker here or `remote`'s.
    pub(crate) fn launch_on(
        &self,
        record: OperationRecord,
        remote: Option<Arc<super::workers::Session>>,
    ) {
        let Some(task) = self.shared.kinds.task(&record.kind) else {
            // Claims name only known kinds.
            error!(op.name = %record.id, op.kind = %record.kind, "claimed an operation of a kind not known here");
            if remote.is_none() {
                self.shared.running.not_launched(&record.kind);
            }
            return;
        };
        let running = Arc::new(Running {
            id: record.id.clone(),
            kind: record.kind.clone(),
            draft: Draft::new(Report {
                progress: record.progress.clone(),
                status_message: record.status_message.clone(),
                details: record.details.clone(),
            }),
            token: self.shared.life.root.child_token(),
            reason: OnceLock::new(),
            write_failures: AtomicU32::new(0),
            holds_slot: AtomicBool::new(remote.is_none()),
            remote,
            record: Mutex::new(Arc::new(record)),
        });
        if self.shared.lease.lost.load(Ordering::Acquire) {
            // Claimed as the lease ended: it is not this node's to run; taken back (queued
            // again) when the node holds a lease again.
            running.mark(CancelReason::Lost);
        }
        if !self.shared.life.accepting.load(Ordering::Acquire) {
            // Shutting down: it stays RUNNING in the store for the restart rule.
            running.mark(CancelReason::Shutdown);
        } else if running.record().requested_cancellation {
            // A cancel asked for before it started (on another node, or while its retry was
            // being written): it ends CANCELLED without running.
            running.mark(CancelReason::Client);
        }
        if let Some(earlier) = self.shared.running.enter(&running) {
            // An earlier run of it whose end (a retry due at once) was written but not yet
            // followed here: this run took its place.
            self.left(&earlier);
        }
        let runner = self.clone();
        let record = running.record();
        // The submitting call's trace: the operation's work is part of it.
        let (trace_id, parent_id) = crate::model::trace_ids(&record.traceparent).unzip();
        let span = info_span!(
            "operation",
            op.name = %running.id,
            op.kind = %running.kind,
            trace_id = trace_id.map(tracing::field::display),
            parent_id = parent_id.map(tracing::field::display)
        );
        crate::otel::join_trace(&span, &record.traceparent);
        self.shared
            .life
            .tracker
            .spawn(async move { runner.drive(running, task).await }.instrument(span));
    }

    async fn drive(self, running: Arc<Running>, task: Arc<dyn ErasedTask>) {
        let record = running.record();
        let end = if running.reason.get().is_some() {
            WorkerEnd::NotStarted
        } else {
            info!(attempt = record.attempt, "started");
            let end = self.work(&running, &task, &record).await;
            // With "started", when the worker ran here (what an audit of where work ran, or
            // the cluster tests, read from the log).
            info!(attempt = record.attempt, "worker returned");
            end
        };
        // The work ended now, before its slot goes to the next operation: what that one
        // starts at (its claim's time) is never before this end (a limit per key then never
        // shows two runs of a key overlapping).
        let ended_at = self.now();
        if !matches!(end, WorkerEnd::NotStarted) {
            self.worker_returned(&running);
        }
        let policy = task.options().retry.narrowed(record.retry_policy.as_ref());
        let decision = conclude(&Situation {
            end: &end,
            reason: running.reason.get().copied(),
            policy: &policy,
            retry_safe: task.options().retry_safe,
            attempt: record.attempt,
            created: record.create_time,
            deadline: record.deadline,
            now: ended_at,
            jitter: rand::random::<f64>(),
        });
        self.settle(&running, decision, ended_at).await;
        // Released already if its end was written; not if nothing was (interrupted, lost).
        self.release(&running);
    }

    /// The worker is done: its slot goes to the next operation while its end is written (a
    /// group commit away, or retried while the store refuses it), so that writing ends and
    /// running work overlap. The operation stays this node's (in the running map, its lease
    /// renewed) until the end is written; at most `max_running` such ends wait before they
    /// take room from new work (see [`super::running::slots::Slots::room`]).
    fn worker_returned(&self, running: &Running) {
        if self.shared.running.worker_returned(running) {
            self.shared.wakes.dispatch.notify_one();
        }
    }

    /// Runs the worker to its end, racing it with its cancellation (and the grace after it),
    /// its deadline and the progress writer.
    async fn work(
        &self,
        running: &Arc<Running>,
        task: &Arc<dyn ErasedTask>,
        record: &OperationRecord,
    ) -> WorkerEnd {
        let ctx = TaskContext::new(
            running.id.clone(),
            Arc::clone(&running.draft),
            running.token.clone(),
            record.attempt,
        );
        let ended = match &running.remote {
            None => {
                let run = task.run(record.input.clone(), ctx);
                futures::future::Either::Left(async move {
                    match run.await {
                        Ok(response) => WorkerEnd::Succeeded(response),
                        Err(e) => WorkerEnd::Failed(e),
                    }
                })
            }
            Some(session) => futures::future::Either::Right(self.clone().remote_work(
                Arc::clone(session),
                record.clone(),
                ctx,
            )),
        };
        let mut worker = self.shared.life.tracker.spawn(ended.in_current_span());
        let grace = self.shared.config.cancel_grace;
        let deadline = record.deadline.map(|d| clock::until(self.now(), d));
        let token = running.token.clone();
        tokio::select! {
            biased;
            joined = &mut worker => match joined {
                Ok(end) => end,
                Err(e) if e.is_panic() => WorkerEnd::Panicked(panic_message(e.into_panic())),
                Err(_) => WorkerEnd::Abandoned(grace),
            },
            () = async {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = async {
                        match deadline {
                            Some(d) => tokio::time::sleep(d).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        info!("deadline passed");
                        running.cancel(CancelReason::Deadline);
                    }
                }
                tokio::time::sleep(grace).await;
            } => {
                warn!(grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX), "worker ignored its cancellation past the grace period; aborting it");
                worker.abort();
                WorkerEnd::Abandoned(grace)
            }
            never = self.write_progress(running) => match never {},
        }
    }

    /// Writes the worker's reports coalesced: after a change, wait `progress_interval`, then
    /// write the latest. A run that ends within the interval writes no progress at all (its
    /// end carries it). A refused write is tried again at the next change; a stale one means
    /// this node no longer holds the operation: its worker is stopped. Never completes.
    async fn write_progress(&self, running: &Arc<Running>) -> std::convert::Infallible {
        let mut reports = running.draft.subscribe();
        reports.mark_unchanged();
        loop {
            if reports.changed().await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(self.shared.config.progress_interval).await;
            let report = reports.borrow_and_update().clone();
            let current = running.record();
            let change = Change::Progress {
                progress: report.progress,
                status_message: report.status_message,
                details: report.details,
            };
            match self.transition(&current, change, running.fence()).await {
                Ok(_) => self.note_write_success(running),
                Err(TransitionError::Store(e)) => {
                    self.note_write_failure(running, &e, "its progress");
                }
                Err(TransitionError::Stale(stored)) => {
                    self.lost(running, stored.as_deref());
                    return std::future::pending().await;
                }
                Err(TransitionError::Illegal(e)) => {
                    error!(error = %e, "progress of an operation that does not run");
                    return std::future::pending().await;
                }
            }
        }
    }

    /// This node no longer holds `running` (another node took it over, or it is gone): its
    /// worker stops and nothing more of it is written here.
    fn lost(&self, running: &Running, stored: Option<&OperationRecord>) {
        warn!(
            owner = stored.and_then(|r| r.owner.as_deref()).unwrap_or("none"),
            state = stored.map_or("gone", |r| r.state.as_str()),
            "this node no longer holds the operation; stopping its worker"
        );
        running.cancel(CancelReason::Lost);
    }

    /// Writes how the run ended (the final report folded in), fenced by owner and attempt.
    /// While the store refuses the write it is retried with backoff ([`STORE_RETRY_MIN`]
    /// doubling to [`STORE_RETRY_MAX`]) and nothing is published: the operation keeps its
    /// previous state everywhere. Gives up, writing nothing, when the runner shuts down or the
    /// store is closed (the restart rule then resumes it), or when this node no longer holds
    /// the operation.
    async fn settle(&self, running: &Arc<Running>, decision: Decision, at: SystemTime) {
        let report = running.draft.current();
        let change = match decision {
            Decision::Leave => {
                info!("interrupted; it will be resumed or aborted by the restart rule");
                return;
            }
            Decision::Finish { state, outcome } => Change::Finish { state, outcome },
            Decision::Requeue { status_message } => {
                info!(%status_message, "the worker was lost; queued again");
                Change::Requeue { status_message }
            }
            Decision::Retry {
                next_attempt,
                last_error,
                status_message,
                delay,
            } => {
                info!(
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    code = last_error.code,
                    "attempt failed; retrying"
                );
                Change::Retry {
                    next_attempt,
                    last_error,
                    status_message,
                }
            }
        };
        loop {
            // The final report rides along with the end (or the retry's own message).
            let mut current = Arc::unwrap_or_clone(running.record());
            current.progress = report.progress.clone();
            current.details = report.details.clone();
            if !matches!(change, Change::Retry { .. }) {
                current.status_message = report.status_message.clone();
            }
            let e = match self
                .transition_in_place(&current, change.clone(), running.fence(), at)
                .await
            {
                Ok(written) => {
                    self.note_write_success(running);
                    self.ended(&written);
                    if !written.is_done() && written.requested_cancellation {
                        // A cancel came while the retry was being written: no next attempt.
                        self.cancel_queued(&written).await;
                    }
                    return;
                }
                Err(TransitionError::Stale(stored)) => {
                    self.lost(running, stored.as_deref());
                    return;
                }
                Err(TransitionError::Illegal(e)) => {
                    error!(error = %e, "the end of an operation could not be recorded");
                    return;
                }
                Err(TransitionError::Store(e)) => e,
            };
            if matches!(e, StoreError::Closed) {
                return;
            }
            let delay = self.note_write_failure(running, &e, "its end");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shared.life.root.cancelled() => return,
            }
        }
    }

    /// Follows up a written end or retry: logs it, counts it, wakes who it concerns.
    pub(crate) fn ended(&self, written: &OperationRecord) {
        if written.is_done() {
            match written.error_code() {
                Some(code) => {
                    info!(op.name = %written.id, op.kind = %written.kind, state = written.state.as_str(), code, "finished")
                }
                None => {
                    info!(op.name = %written.id, op.kind = %written.kind, state = written.state.as_str(), "finished")
                }
            }
            self.finished_one();
        } else {
            // Queued again: the dispatcher learns its due time, the deadline sweeper its
            // deadline.
            if !self.shared.kinds.is_in_process(&written.kind) {
                self.shared
                    .pending
                    .remote
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            self.shared.wakes.dispatch.notify_one();
            if written.deadline.is_some() {
                self.shared.wakes.deadline.notify_one();
            }
        }
    }

    /// Counts a refused write of `running`, logging only the first of a run of refusals, and
    /// returns how long to wait before trying again.
    fn note_write_failure(&self, running: &Running, e: &StoreError, what: &str) -> Duration {
        let failures = running.write_failures.fetch_add(1, Ordering::AcqRel);
        if failures == 0 {
            warn!(
                op.name = %running.id,
                error = %e,
                "the store refused {what}; the operation keeps its previous state until the \
                 write succeeds (retrying with backoff; logged once)"
            );
        }
        let factor = 1u32 << failures.min(16);
        STORE_RETRY_MIN.saturating_mul(factor).min(STORE_RETRY_MAX)
    }

    /// Ends a run of refused writes of `running`, saying so if there was one.
    fn note_write_success(&self, running: &Running) {
        let failures = running.write_failures.swap(0, Ordering::AcqRel);
        if failures > 0 {
            info!(op.name = %running.id, failures, "the store took the write after refusing it");
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
