//! Worker sessions: workers in their own processes (any language) that declare the kinds they
//! run, take assignments, report progress and complete them (`oprun.v1.WorkerService`).
//!
//! A session lives on the node that opened it. Its assignments are claimed from the store for
//! it (the claim's owner is the session's name, so an operation's `node` names the session
//! that runs it, and the store's fences hold for it as for a node), then run by the runner as
//! any operation is ([`super::run`]): progress written coalesced, the deadline and the cancel
//! grace enforced, the end decided by the outcome policy and written fenced. Only the worker
//! is elsewhere: the run hands the assignment to the session (pushed on its stream, or left
//! for its next poll) and waits for the worker's completion, which arrives through
//! [`Runner::complete_assignment`].
//!
//! Every assignment carries a lease token that names its session and attempt. A report or a
//! completion whose token is not the one of an assignment its session holds now (the attempt
//! was taken over, cancelled past its grace, timed out, or its session ended) is refused and
//! changes nothing.
//!
//! A session ends when its stream ends, when it is closed, or when it has neither a stream nor
//! a call for its heartbeat timeout; an assignment is lost when its worker does not report
//! for its kind's heartbeat timeout. A lost assignment follows the restart rule (retry-safe
//! kinds are queued again with `attempt + 1`, others FAILED naming the session). The session's
//! lease (the node lease of its name) is renewed with its node's and ended with it, so that if
//! its node dies, another node takes its work over by the same rule.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prost::Message;
use prost_types::Any;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Runner;
use crate::error::Error;
use crate::model::OperationId;
use crate::proto::oprun::v1::{
    worker_event, Assignment, Cancellation, KindDeclaration, Progress, WorkerEvent, WorkerSession,
};
use crate::store::Registered;
use crate::text::quote;

mod remote;
mod session;

use remote::*;
pub use session::Completion;
use session::*;
pub(crate) use session::{Session, Sessions};

/// The most kinds one session declares.
const MAX_KINDS: usize = 64;
/// The most assignments of one kind one session takes at once.
const MAX_CONCURRENCY: u32 = 1000;
/// The longest worker name.
const MAX_WORKER_NAME: usize = 128;
/// The longest a poll waits, and how long when it does not say.
const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(30);
/// The longest status message and progress unit a report carries.
const MAX_STATUS_BYTES: usize = 4096;
const MAX_UNIT_BYTES: usize = 64;

impl Runner {
    /// Opens a session for `worker` running `declarations` (each declared durably first).
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a malformed request or declaration; FAILED_PRECONDITION for a
    /// declaration incompatible with its kind's earlier one; UNAVAILABLE when shutting down
    /// or the store fails.
    pub async fn open_session(
        &self,
        worker: String,
        declarations: Vec<KindDeclaration>,
    ) -> Result<WorkerSession, Error> {
        if !self.shared.life.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        if worker.len() > MAX_WORKER_NAME || worker.chars().any(char::is_control) {
            return Err(Error::invalid_argument(
                "worker",
                format!(
                    "worker must be at most {MAX_WORKER_NAME} bytes of printable text, got {}",
                    quote(&worker)
                ),
            ));
        }
        if declarations.is_empty() || declarations.len() > MAX_KINDS {
            return Err(Error::invalid_argument(
                "kinds",
                format!(
                    "a session declares from 1 to {MAX_KINDS} kinds, got {}",
                    declarations.len()
                ),
            ));
        }
        let mut kinds: Vec<(String, u32)> = Vec::new();
        let mut timeout = Duration::ZERO;
        for declaration in declarations {
            if kinds.iter().any(|(k, _)| *k == declaration.name) {
                return Err(Error::invalid_argument(
                    "kinds",
                    format!("kind {} is declared twice", quote(&declaration.name)),
                ));
            }
            let concurrency = match declaration.concurrency {
                0 => 1,
                n if n <= MAX_CONCURRENCY => n,
                n => {
                    return Err(Error::invalid_argument(
                        "kinds",
                        format!(
                            "kind {}: concurrency is {n}; at most {MAX_CONCURRENCY}",
                            quote(&declaration.name)
                        ),
                    ))
                }
            };
            let declared = self
                .shared
                .kinds
                .declare(&*self.shared.store, declaration)
                .await?;
            timeout = timeout.max(declared.heartbeat());
            kinds.push((declared.declaration.name.clone(), concurrency));
        }
        let now = self.now();
        let session = Arc::new(Session {
            name: session_name(&worker),
            worker,
            kinds,
            timeout,
            opened: now,
            node: self.shared.config.node.clone(),
            state: Mutex::new(State::default()),
            news: Notify::new(),
            attachment: Notify::new(),
            ended: self.shared.life.root.child_token(),
            why: Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        session.seen(now);
        let described = session.describe();
        // Its lease first: nothing it runs may look abandoned to another node.
        self.renew_session(&session).await?;
        self.shared
            .store
            .register(
                Registered::Session,
                &session.name,
                &described.encode_to_vec(),
            )
            .await?;
        self.shared
            .sessions
            .map
            .insert(session.name.clone(), Arc::clone(&session));
        info!(
            session = %session.name,
            worker = %session.worker,
            kinds = ?session.kinds,
            "worker session opened"
        );
        let runner = self.clone();
        let watched = Arc::clone(&session);
        self.shared
            .life
            .tracker
            .spawn(async move { runner.watch_session(watched).await });
        self.wake_for_sessions();
        Ok(described)
    }

    /// Renews a session's lease: until its timeout from now, plus this node's own lease on a
    /// shared store (so that the session outlives a slow renewal of its node's).
    async fn renew_session(&self, session: &Session) -> Result<(), Error> {
        let until = self
            .now()
            .checked_add(session.timeout.max(self.shared.config.lease))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.shared.store.heartbeat(&session.name, until).await?;
        Ok(())
    }

    /// Ends the session when it has neither a stream nor a call for its timeout, renewing its
    /// lease meanwhile; gives up what it holds when it ends.
    async fn watch_session(self, session: Arc<Session>) {
        let renew_every = session.timeout.min(self.shared.config.lease) / 3;
        let mut next_renewal = Instant::now() + renew_every;
        loop {
            let silent_until = {
                let state = session.state();
                (!state.streaming)
                    .then(|| state.last_seen.map(|seen| seen + session.timeout))
                    .flatten()
            };
            if silent_until.is_some_and(|until| Instant::now() >= until) {
                self.end_session(
                    &session,
                    format!(
                        "worker session {} was not heard from for {}s (its heartbeat timeout)",
                        session.name,
                        session.timeout.as_secs_f64()
                    ),
                )
                .await;
                return;
            }
            let wake = silent_until.map_or(next_renewal, |until| until.min(next_renewal));
            tokio::select! {
                () = session.ended.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
                // A stream attached or detached: its silence counts differently.
                () = session.attachment.notified() => {}
            }
            if Instant::now() >= next_renewal {
                if let Err(e) = self.renew_session(&session).await {
                    warn!(session = %session.name, error = %e, "a worker session's lease could not be renewed");
                }
                next_renewal = Instant::now() + renew_every;
            }
        }
    }

    /// Ends a session: it takes no more work, what it holds is lost (the restart rule), its
    /// lease ends and its record goes.
    async fn end_session(&self, session: &Arc<Session>, why: String) {
        {
            let mut reason = session.why.lock().unwrap_or_else(PoisonError::into_inner);
            if reason.is_some() {
                return;
            }
            *reason = Some(why.clone());
        }
        info!(session = %session.name, %why, "worker session ended");
        session.ended.cancel();
        session.news.notify_waiters();
        self.shared
            .sessions
            .map
            .remove_if(&session.name, |_, s| Arc::ptr_eq(s, session));
        let store = &self.shared.store;
        if let Err(e) = store.unregister(Registered::Session, &session.name).await {
            warn!(session = %session.name, error = %e, "a worker session's record could not be removed");
        }
        // Ended now: on a shared store, what it still holds is another node's to take over if
        // this one cannot write it.
        if let Err(e) = store.heartbeat(&session.name, SystemTime::UNIX_EPOCH).await {
            warn!(session = %session.name, error = %e, "a worker session's lease could not be ended");
        }
    }

    /// Closes a session at its worker's request: at once, or (`drain`) once the assignments
    /// it holds are completed, giving it none meanwhile.
    ///
    /// # Errors
    /// NOT_FOUND when no such session is open on this node.
    pub async fn close_session(&self, name: &str, drain: bool) -> Result<(), Error> {
        let session = self.session(name)?;
        if drain {
            session.draining.store(true, Ordering::Release);
            if !session.state().held.is_empty() {
                info!(session = %name, "worker session draining");
                return Ok(());
            }
        }
        self.end_session(&session, format!("worker session {name} was closed"))
            .await;
        Ok(())
    }

    /// The session called `name` on this node.
    fn session(&self, name: &str) -> Result<Arc<Session>, Error> {
        self.shared
            .sessions
            .get(name)
            .ok_or_else(|| Error::NotFound {
                name: format!(
                    "{} (no such worker session is open on this node: it ended, or lives on \
                 another node; open a new one)",
                    crate::text::quote(name)
                ),
            })
    }

    /// The events of a session as they come, for its stream: what waits first. The session
    /// ends when the returned stream is dropped (its worker went away).
    ///
    /// # Errors
    /// NOT_FOUND for an unknown session; FAILED_PRECONDITION when a stream is already
    /// attached.
    pub fn stream_assignments(
        &self,
        name: &str,
    ) -> Result<impl futures::Stream<Item = Result<WorkerEvent, Error>> + Send + 'static, Error>
    {
        let session = self.session(name)?;
        {
            let mut state = session.state();
            if state.streaming {
                return Err(Error::FailedPrecondition {
                    message: format!("worker session {name} already has a stream attached"),
                    reason: "SESSION_STREAMING",
                });
            }
            state.streaming = true;
        }
        session.attachment.notify_one();
        session.seen(self.now());
        self.wake_for_sessions();
        let attached = Attached {
            runner: self.clone(),
            session,
            over: false,
        };
        Ok(futures::stream::unfold(
            attached,
            |mut attached| async move {
                if attached.over {
                    return None;
                }
                loop {
                    let next = attached.session.state().outbox.pop_front();
                    if let Some(event) = next {
                        return Some((Ok(event), attached));
                    }
                    tokio::select! {
                        () = attached.session.news.notified() => {}
                        () = attached.session.ended.cancelled() => {
                            // At shutdown the worker is told to go elsewhere (UNAVAILABLE);
                            // otherwise the stream just ends with its session.
                            if attached.runner.shared.life.root.is_cancelled() {
                                attached.over = true;
                                return Some((Err(Error::ShuttingDown), attached));
                            }
                            return None;
                        }
                    }
                }
            },
        ))
    }

    /// Waits up to `wait` for assignments or cancellations of the session and returns them.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown session; INVALID_ARGUMENT for a wait out of range.
    pub async fn poll_assignments(
        &self,
        name: &str,
        wait: Option<Duration>,
    ) -> Result<(Vec<Assignment>, Vec<Cancellation>), Error> {
        let wait = match wait {
            None => DEFAULT_POLL_WAIT,
            Some(w) if w <= MAX_POLL_WAIT => w,
            Some(_) => {
                return Err(Error::invalid_argument(
                    "wait",
                    format!("wait must be at most {}s", MAX_POLL_WAIT.as_secs()),
                ))
            }
        };
        let session = self.session(name)?;
        session.seen(self.now());
        self.wake_for_sessions();
        let until = Instant::now() + wait;
        loop {
            let events: Vec<WorkerEvent> = session.state().outbox.drain(..).collect();
            if !events.is_empty() || Instant::now() >= until {
                session.seen(self.now());
                let mut assignments = Vec::new();
                let mut cancellations = Vec::new();
                for event in events {
                    match event.event {
                        Some(worker_event::Event::Assignment(a)) => assignments.push(a),
                        Some(worker_event::Event::Cancellation(c)) => cancellations.push(c),
                        None => {}
                    }
                }
                return Ok((assignments, cancellations));
            }
            tokio::select! {
                () = session.news.notified() => {}
                () = tokio::time::sleep_until(until) => {}
                () = session.ended.cancelled() => {
                    return Err(Error::NotFound { name: format!("{name} (the session ended)") });
                }
            }
        }
    }

    /// Finds the assignment a report or completion names, checking its token.
    fn held<T>(
        &self,
        name: &str,
        token: &str,
        with: impl FnOnce(&Arc<Session>, &mut Held) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let id = OperationId::parse_name(name)?;
        let session_name = session_of_token(token)
            .ok_or_else(|| Error::invalid_argument("lease_token", "lease_token is malformed"))?;
        let session = self.shared.sessions.get(&session_name).ok_or_else(|| {
            stale(format!(
                "the lease token's session {session_name} is not open on this node (it \
                     ended, or lives on another node): the attempt is no longer yours"
            ))
        })?;
        session.seen(self.now());
        let mut state = session.state();
        let Some(held) = state.held.get_mut(&id) else {
            return Err(stale(format!(
                "{name} is not held by worker session {session_name} (taken over, cancelled \
                 past its grace, timed out, or done): the attempt is no longer yours"
            )));
        };
        if held.token != token {
            return Err(stale(format!(
                "the lease token is not the one of {name}'s current attempt: the attempt is \
                 no longer yours"
            )));
        }
        with(&session, held)
    }

    /// A worker's report of an assignment's progress; whether its cancellation was asked for.
    ///
    /// # Errors
    /// FAILED_PRECONDITION (`LEASE_STALE`) for a token that no longer holds the operation;
    /// INVALID_ARGUMENT for a malformed or oversized report.
    pub fn report_progress(
        &self,
        name: &str,
        token: &str,
        progress: Option<Progress>,
        status_message: String,
        details: Option<Any>,
    ) -> Result<bool, Error> {
        if status_message.len() > MAX_STATUS_BYTES {
            return Err(Error::invalid_argument(
                "status_message",
                format!(
                    "status_message is {} bytes; at most {MAX_STATUS_BYTES}",
                    status_message.len()
                ),
            ));
        }
        if let Some(p) = &progress {
            if p.unit.len() > MAX_UNIT_BYTES || p.completed < 0 || p.total < 0 {
                return Err(Error::invalid_argument(
                    "progress",
                    format!(
                        "progress needs counts not below 0 and a unit of at most \
                         {MAX_UNIT_BYTES} bytes"
                    ),
                ));
            }
        }
        if let Some(d) = &details {
            if d.value.len() > self.shared.config.max_input_bytes {
                return Err(Error::invalid_argument(
                    "details",
                    format!(
                        "details are {} bytes; at most {} (--max-input-bytes)",
                        d.value.len(),
                        self.shared.config.max_input_bytes
                    ),
                ));
            }
        }
        self.held(name, token, |_, held| {
            if let (Some(d), Some(kind)) = (&details, self.shared.kinds.declared(&held.kind)) {
                let expected = &kind.declaration.details_type;
                if crate::model::type_name(&d.type_url) != expected.as_str() {
                    return Err(Error::invalid_argument(
                        "details",
                        format!(
                            "details must be a {}, got {}",
                            if expected.is_empty() {
                                "nothing (the kind declares no details type)"
                            } else {
                                expected
                            },
                            quote(&d.type_url)
                        ),
                    ));
                }
            }
            let status = (!status_message.is_empty()).then_some(status_message);
            held.ctx.report(progress, status, details);
            held.heard.notify_one();
            Ok(held.ctx.is_cancelled())
        })
    }

    /// A worker's completion of an assignment.
    ///
    /// # Errors
    /// FAILED_PRECONDITION (`LEASE_STALE`) for a token that no longer holds the operation,
    /// or a second completion; INVALID_ARGUMENT for a response of another type than the
    /// kind's output, or an error with code OK.
    pub fn complete_assignment(
        &self,
        name: &str,
        token: &str,
        completion: Completion,
    ) -> Result<(), Error> {
        self.held(name, token, |_, held| {
            match &completion {
                Completion::Response(any) => {
                    if let Some(kind) = self.shared.kinds.declared(&held.kind) {
                        kind.check_output(any)?;
                    }
                }
                Completion::Error(status) if status.code == 0 => {
                    return Err(Error::invalid_argument(
                        "error",
                        "error.code is OK (0); complete with a response, or an error code",
                    ))
                }
                Completion::Error(_) => {}
            }
            let Some(sender) = held.completion.take() else {
                return Err(stale(format!("{name} was already completed")));
            };
            // The run is waiting for it (it holds the assignment until it takes it).
            let _ = sender.send(completion);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Session names are readable and unique; tokens name their session.
    #[test]
    fn names_and_tokens() {
        let a = session_name("Resize Worker @ host-1");
        assert!(
            a.starts_with("workerSessions/resize-worker---host-1-"),
            "{a}"
        );
        assert_ne!(a, session_name("Resize Worker @ host-1"));
        assert!(session_name("").starts_with("workerSessions/worker-"));
        let token = token_for(&a, 3);
        assert_eq!(session_of_token(&token).as_deref(), Some(a.as_str()));
        assert_ne!(token, token_for(&a, 3));
        assert_eq!(session_of_token("garbage"), None);
    }
}
