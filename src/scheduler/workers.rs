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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use prost::Message;
use prost_types::Any;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::kinds::Declared;
use super::outcome::WorkerEnd;
use super::Runner;
use crate::error::Error;
use crate::model::{OperationId, OperationRecord};
use crate::proto::google::rpc::Status;
use crate::proto::oprun::v1::{
    worker_event, Assignment, Cancellation, KindDeclaration, Progress, SessionKind, WorkerEvent,
    WorkerSession,
};
use crate::store::{Claim, Registered, RunningLimits};
use crate::task::{TaskContext, TaskError};
use crate::text::quote;

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

/// The sessions on this node, by name.
#[derive(Default)]
pub(crate) struct Sessions {
    map: DashMap<String, Arc<Session>>,
}

impl Sessions {
    /// The session called `name`, if it is open on this node.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Session>> {
        self.map.get(name).map(|s| Arc::clone(s.value()))
    }

    /// Every open session.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.map.iter().map(|s| Arc::clone(s.value())).collect()
    }
}

/// How a worker completed an assignment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Completion {
    /// With the kind's output message.
    Response(Any),
    /// With an error.
    Error(Status),
}

/// An assignment a session holds.
struct Held {
    token: String,
    kind: String,
    ctx: TaskContext,
    /// Where the worker's completion goes (taken by the first one).
    completion: Option<oneshot::Sender<Completion>>,
    /// Woken by each report: the heartbeat timer starts again.
    heard: Arc<Notify>,
}

#[derive(Default)]
struct State {
    /// Assignments held, by operation.
    held: HashMap<OperationId, Held>,
    /// Events not yet delivered.
    outbox: VecDeque<WorkerEvent>,
    /// Whether a stream is attached.
    streaming: bool,
    /// When it was last heard from.
    last_seen: Option<Instant>,
    last_seen_wall: Option<SystemTime>,
}

/// A worker's session.
pub(crate) struct Session {
    /// `workerSessions/{id}`: also the owner of what it runs.
    pub(crate) name: String,
    worker: String,
    /// Each kind it runs, with how many at once.
    kinds: Vec<(String, u32)>,
    /// The session ends after this long without a stream or a call.
    timeout: Duration,
    opened: SystemTime,
    node: String,
    // std Mutex: held to change the state, never across an await.
    state: Mutex<State>,
    /// Woken when an event waits in the outbox, or the session ends (for its stream or poll).
    news: Notify,
    /// Woken when its stream attaches or detaches (for the task that watches its silence).
    attachment: Notify,
    /// Cancelled when the session ends: what it holds is lost.
    ended: CancellationToken,
    /// Why it ended.
    why: Mutex<Option<String>>,
    /// Whether it takes no more work (it ends once what it holds is completed).
    draining: std::sync::atomic::AtomicBool,
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that the worker was heard from now.
    fn seen(&self, wall: SystemTime) {
        let mut state = self.state();
        state.last_seen = Some(Instant::now());
        state.last_seen_wall = Some(wall);
    }

    fn push(&self, event: WorkerEvent) {
        self.state().outbox.push_back(event);
        self.news.notify_one();
    }

    /// How many more of each kind it takes now.
    fn room(&self) -> Vec<(String, usize)> {
        if self.draining.load(Ordering::Acquire) {
            return Vec::new();
        }
        let state = self.state();
        self.kinds
            .iter()
            .filter_map(|(kind, slots)| {
                let held = state.held.values().filter(|h| &h.kind == kind).count();
                let room = usize::try_from(*slots)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(held);
                (room > 0).then(|| (kind.clone(), room))
            })
            .collect()
    }

    /// Whether it can take work now: a stream is attached, or it polled within its timeout.
    fn ready(&self) -> bool {
        if self.ended.is_cancelled() {
            return false;
        }
        let state = self.state();
        state.streaming
            || state
                .last_seen
                .is_some_and(|seen| seen.elapsed() < self.timeout)
    }

    fn takes(&self, kind: &str) -> bool {
        self.kinds.iter().any(|(k, _)| k == kind)
    }

    /// The session as the protocol describes it.
    pub(crate) fn describe(&self) -> WorkerSession {
        let state = self.state();
        WorkerSession {
            name: self.name.clone(),
            worker: self.worker.clone(),
            kinds: self
                .kinds
                .iter()
                .map(|(name, concurrency)| SessionKind {
                    name: name.clone(),
                    concurrency: *concurrency,
                })
                .collect(),
            node: self.node.clone(),
            heartbeat_timeout: prost_types::Duration::try_from(self.timeout).ok(),
            open_time: Some(self.opened.into()),
            last_seen_time: state.last_seen_wall.map(Into::into),
            running: i64::try_from(state.held.len()).unwrap_or(i64::MAX),
        }
    }
}

/// What a lease token says: the session, the operation's attempt, and a random part.
fn token_for(session: &str, attempt: u32) -> String {
    let nonce: u128 = rand::random();
    let id = session.strip_prefix("workerSessions/").unwrap_or(session);
    format!("{id}:{attempt}:{nonce:032x}")
}

/// The session a lease token names.
fn session_of_token(token: &str) -> Option<String> {
    let (id, _) = token.split_once(':')?;
    Some(format!("workerSessions/{id}"))
}

/// A refusal of a stale or unknown lease token: FAILED_PRECONDITION, reason `LEASE_STALE`.
fn stale(message: String) -> Error {
    Error::FailedPrecondition {
        message,
        reason: "LEASE_STALE",
    }
}

/// The `id` of a session name from a worker's name: lower-case letters, digits and `-`, then a
/// random part.
fn session_name(worker: &str) -> String {
    let mut slug: String = worker
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug = slug.trim_matches('-').chars().take(40).collect();
    if slug.is_empty() {
        slug = "worker".to_owned();
    }
    let suffix: u32 = rand::random();
    format!("workerSessions/{slug}-{suffix:08x}")
}

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
struct Release {
    runner: Runner,
    session: Arc<Session>,
    id: OperationId,
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
struct Attached {
    runner: Runner,
    session: Arc<Session>,
    /// Whether its last item was sent.
    over: bool,
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

fn assignment(record: &OperationRecord, declared: &Declared, token: &str) -> Assignment {
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
fn task_error(status: Status) -> TaskError {
    let code = crate::proto::google::rpc::Code::try_from(status.code)
        .unwrap_or(crate::proto::google::rpc::Code::Unknown);
    TaskError::new(code, status.message)
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
