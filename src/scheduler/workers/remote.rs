//! Work for the sessions: the dispatcher's claims on their behalf, each within a session's
//! room, and the runs of what they were assigned (an assignment held until the worker takes
//! it, given back when its run ends).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use tokio::sync::{oneshot, Notify};
use tracing::warn;

use super::session::*;
use crate::model::{OperationId, OperationRecord};
use crate::proto::google::rpc::Status;
use crate::proto::oprun::v1::{worker_event, Assignment, Cancellation, WorkerEvent, WorkerSession};
use crate::scheduler::kinds::Declared;
use crate::scheduler::outcome::WorkerEnd;
use crate::scheduler::Runner;
use crate::store::{Claim, RunningLimits};
use crate::task::{TaskContext, TaskError};

impl Runner {
    /// Wakes the dispatcher to claim work for the sessions.
    pub(crate) fn wake_for_sessions(&self) {
        self.shared.pending.remote.store(true, Ordering::Release);
        self.shared.wakes.dispatch.notify_one();
    }

    /// Claims work for every session ready for it, within each one's room, and starts it.
    /// Returns the next time a queued operation of their kinds becomes due, if one waits.
    pub(crate) async fn claim_for_sessions(&self) -> Option<SystemTime> {
        let mut next_due: Option<SystemTime> = None;
        // Kinds found empty: no later session asks for them in this pass.
        let mut exhausted: Vec<String> = Vec::new();
        for session in self.shared.sessions.all() {
            if !session.ready() {
                continue;
            }
            let kinds: Vec<(String, usize)> = session
                .room()
                .into_iter()
                .filter(|(kind, _)| !exhausted.contains(kind))
                .collect();
            let total: usize = kinds.iter().map(|(_, room)| room).sum();
            if total == 0 {
                continue;
            }
            let claim = Claim {
                node: session.name.clone(),
                key_limits: self.key_limits(&kinds),
                rates: self.rates(&kinds),
                kinds: kinds.clone(),
                total,
                now: self.now(),
                limits: RunningLimits::none(),
            };
            match self.claim_as(&claim, false).await {
                Ok(claimed) => {
                    for (kind, room) in &kinds {
                        let got = claimed
                            .operations
                            .iter()
                            .filter(|r| &r.kind == kind)
                            .count();
                        if got < *room {
                            exhausted.push(kind.clone());
                        }
                    }
                    next_due = next_due.into_iter().chain(claimed.next_due).min();
                    for record in claimed.operations {
                        self.launch_remote(record, &session);
                    }
                }
                Err(e) => {
                    warn!(session = %session.name, error = %e, "the store refused a claim for a worker session");
                    self.shared.pending.remote.store(true, Ordering::Release);
                    return None;
                }
            }
        }
        next_due
    }

    /// Runs `record`, claimed for `session`: the runner drives it as any operation, its
    /// worker being the session's.
    fn launch_remote(&self, record: OperationRecord, session: &Arc<Session>) {
        self.launch_on(record, Some(Arc::clone(session)));
    }

    /// The worker side of a remote run: hands the assignment to the session and waits for its
    /// completion, a report at least every heartbeat timeout, or the session's end; sends a
    /// cancellation when the run's token is cancelled.
    pub(crate) async fn remote_work(
        self,
        session: Arc<Session>,
        record: OperationRecord,
        ctx: TaskContext,
    ) -> WorkerEnd {
        let Some(declared) = self.shared.kinds.declared(&record.kind) else {
            return WorkerEnd::Failed(TaskError::internal(format!(
                "kind {:?} is not declared here",
                record.kind
            )));
        };
        let token = token_for(&session.name, record.attempt);
        let (sender, mut completion) = oneshot::channel();
        let heard = Arc::new(Notify::new());
        {
            let mut state = session.state();
            state.held.insert(
                record.id.clone(),
                Held {
                    token: token.clone(),
                    kind: record.kind.clone(),
                    ctx: ctx.clone(),
                    completion: Some(sender),
                    heard: Arc::clone(&heard),
                },
            );
        }
        let _held = Release {
            runner: self.clone(),
            session: Arc::clone(&session),
            id: record.id.clone(),
        };
        let name = record.id.name();
        session.push(WorkerEvent {
            event: Some(worker_event::Event::Assignment(assignment(
                &record, &declared, &token,
            ))),
        });
        let heartbeat = declared.heartbeat();
        let mut cancel_sent = false;
        loop {
            tokio::select! {
                biased;
                done = &mut completion => return match done {
                    Ok(Completion::Response(any)) => WorkerEnd::Succeeded(any),
                    Ok(Completion::Error(status)) => WorkerEnd::Failed(task_error(status)),
                    Err(_) => WorkerEnd::Lost(format!("worker session {} dropped the assignment", session.name)),
                },
                () = session.ended.cancelled() => {
                    let why = session.why.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    return WorkerEnd::Lost(why.unwrap_or_else(|| format!("worker session {} ended", session.name)));
                }
                () = heard.notified() => {}
                () = tokio::time::sleep(heartbeat) => {
                    // A worker that misses a heartbeat is stuck or gone (its SDK reports from
                    // a task of its own): the session ends, so that no more work goes to it.
                    let why = format!(
                        "worker session {} sent no report on {name} for {}s (the kind's \
                         heartbeat timeout)",
                        session.name,
                        heartbeat.as_secs_f64()
                    );
                    self.end_session(&session, why.clone()).await;
                    return WorkerEnd::Lost(why);
                }
                () = ctx.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    session.push(WorkerEvent {
                        event: Some(worker_event::Event::Cancellation(Cancellation {
                            name: name.clone(),
                            lease_token: token.clone(),
                        })),
                    });
                }
            }
        }
    }

    /// The worker sessions open on this node.
    pub fn worker_sessions(&self) -> Vec<WorkerSession> {
        self.shared
            .sessions
            .all()
            .iter()
            .map(|s| s.describe())
            .collect()
    }

    /// Every kind known, with where it runs (in process, or which sessions on this node),
    /// how many wait, and (when asked) the files defining its types.
    pub fn kinds(&self, with_descriptors: bool) -> Vec<crate::proto::oprun::v1::TaskKind> {
        let waiting: HashMap<String, usize> = self
            .lock_slots()
            .by_kind()
            .into_iter()
            .map(|(kind, waiting, _)| (kind, waiting))
            .collect();
        let mut kinds = self.shared.kinds.describe();
        for kind in &mut kinds {
            kind.sessions = self.sessions_running(&kind.name);
            kind.waiting =
                i64::try_from(waiting.get(&kind.name).copied().unwrap_or(0)).unwrap_or(i64::MAX);
            if let Some(declared) = self.shared.kinds.declared(&kind.name) {
                kind.heartbeat_timeout = declared.declaration.heartbeat_timeout;
            }
            if with_descriptors {
                kind.descriptors = self.shared.kinds.types().files_of(&kind.name);
            }
        }
        kinds
    }

    /// The full name of `kind`'s input message, if the kind is known here.
    pub fn input_type_of(&self, kind: &str) -> Option<String> {
        self.shared
            .kinds
            .task(kind)
            .map(|t| t.describe().input_type)
    }

    /// The sessions on this node that run `kind`.
    pub(crate) fn sessions_running(&self, kind: &str) -> Vec<String> {
        self.shared
            .sessions
            .all()
            .iter()
            .filter(|s| s.takes(kind))
            .map(|s| s.name.clone())
            .collect()
    }
}

/// Gives an assignment back when its run ends (its slot in the session frees).
pub(super) struct Release {
    pub(super) runner: Runner,
    pub(super) session: Arc<Session>,
    pub(super) id: OperationId,
}

impl Drop for Release {
    fn drop(&mut self) {
        let left = {
            let mut state = self.session.state();
            state.held.remove(&self.id);
            state.held.len()
        };
        if left == 0 && self.session.draining.load(Ordering::Acquire) {
            // Drained: the session ends now.
            let runner = self.runner.clone();
            let session = Arc::clone(&self.session);
            self.runner.shared.life.tracker.spawn(async move {
                let why = format!("worker session {} was closed (drained)", session.name);
                runner.end_session(&session, why).await;
            });
        }
        self.runner.wake_for_sessions();
    }
}

/// A stream attached to a session: when it is dropped, the session ends.
pub(super) struct Attached {
    pub(super) runner: Runner,
    pub(super) session: Arc<Session>,
    /// Whether its last item was sent.
    pub(super) over: bool,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.session.state().streaming = false;
        self.session.attachment.notify_one();
        if self.session.ended.is_cancelled() || self.session.draining.load(Ordering::Acquire) {
            // A draining worker may let its stream go: it completes what it holds by calls,
            // and ends when it has (or when it is silent for its timeout).
            return;
        }
        let runner = self.runner.clone();
        let session = Arc::clone(&self.session);
        let name = session.name.clone();
        self.runner.shared.life.tracker.spawn(async move {
            runner
                .end_session(
                    &session,
                    format!("worker session {name}'s stream ended (its connection dropped)"),
                )
                .await;
        });
    }
}

pub(super) fn assignment(record: &OperationRecord, declared: &Declared, token: &str) -> Assignment {
    Assignment {
        name: record.id.name(),
        kind: record.kind.clone(),
        input: Some(record.input.clone()),
        attempt: record.attempt,
        deadline: record.deadline.map(Into::into),
        lease_token: token.to_owned(),
        heartbeat_timeout: prost_types::Duration::try_from(declared.heartbeat()).ok(),
    }
}

/// A worker's error as a task's: its code and message (an unknown code is UNKNOWN), retried
/// by code under the kind's policy.
pub(super) fn task_error(status: Status) -> TaskError {
    let code = crate::proto::google::rpc::Code::try_from(status.code)
        .unwrap_or(crate::proto::google::rpc::Code::Unknown);
    TaskError::new(code, status.message)
}
