//! Running kinds in a process of their own: [`Worker`] connects to an oprun server, declares
//! the kinds of a [`Registry`] (the same [`Task`](crate::task::Task)s a server runs in
//! process), and runs the assignments it is given over the worker protocol
//! (`oprun.v1.WorkerService`). Moving a kind out of the server is a deployment choice, not a
//! rewrite.
//!
//! ```no_run
//! use oprun::client::Client;
//! use oprun::worker::Worker;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let mut kinds = oprun::Registry::new();
//! kinds.register(oprun::kinds::sleep::Sleep)?; // an error if the name is taken
//! Worker::new(client, kinds)
//!     .name("sleeper")
//!     .concurrency("sleep", 8)
//!     .run(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! While it runs, a worker reports each assignment's progress (what its task puts in its
//! [`TaskContext`], at most every [`REPORT_EVERY`], and at least every third of the heartbeat
//! timeout so that the server knows it is alive), stops a task whose cancellation the server
//! sends, and completes each with the task's response or error (a panic is INTERNAL). When
//! its connection or session is lost it opens a new one (what it held is the server's to run
//! again). At shutdown it takes no more work, lets what runs finish for up to its grace, then
//! closes its session (what is left is handed back by the restart rule).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost_types::FileDescriptorSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tracing::{info, warn};

use crate::client::{Client, ClientError, Conn};
use crate::model::OperationId;
use crate::proto::google::rpc::Status;
use crate::proto::oprun::v1::worker_event::Event;
use crate::proto::oprun::v1::worker_service_client::WorkerServiceClient;
use crate::proto::oprun::v1::{
    complete_assignment_request, Assignment, CloseSessionRequest, CompleteAssignmentRequest,
    KindDeclaration, OpenSessionRequest, ReportProgressRequest, StreamAssignmentsRequest,
};
use crate::task::{Draft, Registry, Report, TaskContext, TaskError};

/// The least time between two progress reports of one assignment.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// The heartbeat timeout a kind declares unless told otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// How long shutdown lets running assignments finish.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// The pauses between attempts to open a session again: from 100 ms, doubling, up to 5 s.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The connection could not be made.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A kind cannot be declared: its types are not oprun's and it gives no descriptors,
    /// or the server refused the declaration (the message says why).
    #[error("{0}")]
    Declaration(String),
}

/// How one kind runs in this worker.
#[derive(Debug, Clone, Copy)]
struct KindSettings {
    concurrency: u32,
    heartbeat: Duration,
}

/// A worker process's runner of kinds (see the module's documentation).
pub struct Worker {
    client: Client,
    registry: Registry,
    name: String,
    settings: HashMap<String, KindSettings>,
    grace: Duration,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("kinds", &self.registry.names())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker that runs the kinds of `registry` (one at a time each, unless told) through
    /// `client`'s server.
    pub fn new(client: Client, registry: Registry) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Self {
            client,
            registry,
            name: format!("{host}-{}", std::process::id()),
            settings: HashMap::new(),
            grace: DEFAULT_GRACE,
        }
    }

    /// The worker's name, for people (part of its session's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many assignments of `kind` run at once (default 1).
    pub fn concurrency(mut self, kind: &str, n: u32) -> Self {
        self.kind_settings(kind).concurrency = n.max(1);
        self
    }

    /// How long an assignment of `kind` may go without a report before the server takes it
    /// back (default 30 s; this worker reports at least every third of it).
    pub fn heartbeat_timeout(mut self, kind: &str, timeout: Duration) -> Self {
        self.kind_settings(kind).heartbeat = timeout;
        self
    }

    /// How long shutdown lets running assignments finish (default 30 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    fn kind_settings(&mut self, kind: &str) -> &mut KindSettings {
        self.settings
            .entry(kind.to_owned())
            .or_insert(KindSettings {
                concurrency: 1,
                heartbeat: DEFAULT_HEARTBEAT,
            })
    }

    fn settings_of(&self, kind: &str) -> KindSettings {
        self.settings.get(kind).copied().unwrap_or(KindSettings {
            concurrency: 1,
            heartbeat: DEFAULT_HEARTBEAT,
        })
    }

    /// What this worker declares: each kind with its types and their descriptors.
    ///
    /// # Errors
    /// [`WorkerError::Declaration`] for a kind whose types are neither oprun's nor in its own
    /// descriptors.
    pub fn declarations(&self) -> Result<Vec<KindDeclaration>, WorkerError> {
        let mut out = Vec::new();
        for (name, task) in self.registry.kinds() {
            let described = task.describe();
            let options = task.options();
            let settings = self.settings_of(name);
            let own = task.descriptors();
            let mut files = FileDescriptorSet::default();
            for type_name in [
                &described.input_type,
                &described.response_type,
                &described.details_type,
            ] {
                if type_name.is_empty() {
                    continue;
                }
                let from_own = own.as_ref().and_then(|set| {
                    let mut pool = crate::proto::descriptor_pool().clone();
                    pool.add_file_descriptor_set(set.clone()).ok()?;
                    crate::types::files_defining(&pool, type_name)
                });
                let found = from_own
                    .or_else(|| {
                        crate::types::files_defining(crate::proto::descriptor_pool(), type_name)
                    })
                    .ok_or_else(|| {
                        WorkerError::Declaration(format!(
                            "kind {name:?}: {type_name} is not one of oprun's types; give its \
                             descriptors with Task::descriptors"
                        ))
                    })?;
                for file in found.file {
                    if !files.file.iter().any(|f| f.name() == file.name()) {
                        files.file.push(file);
                    }
                }
            }
            out.push(KindDeclaration {
                name: name.to_owned(),
                input_type: described.input_type,
                output_type: described.response_type,
                details_type: described.details_type,
                descriptors: Some(files),
                retry_safe: options.retry_safe,
                max_attempts: options.retry.max_attempts,
                default_timeout: options
                    .default_timeout
                    .and_then(|t| prost_types::Duration::try_from(t).ok()),
                heartbeat_timeout: prost_types::Duration::try_from(settings.heartbeat).ok(),
                concurrency: settings.concurrency,
                max_per_key: options
                    .max_per_key
                    .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            });
        }
        Ok(out)
    }

    /// Runs until `shutdown` completes: opens a session, runs what it is given, and opens a
    /// new session whenever one is lost; at shutdown lets what runs finish (up to the grace),
    /// then closes the session.
    ///
    /// # Errors
    /// [`WorkerError::Declaration`] when a kind cannot be declared (the server's refusal says
    /// why); a connection that fails is tried again.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WorkerError> {
        let declarations = self.declarations()?;
        let worker = Arc::new(self);
        let stop = CancellationToken::new();
        let watcher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.cancel();
            })
        };
        let _watching = AbortOnDrop(watcher);
        let mut pause = RECONNECT_MIN;
        loop {
            let session = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                opened = worker.open(&declarations) => opened,
            };
            match session {
                Ok(session) => {
                    pause = RECONNECT_MIN;
                    // `serve` sees `stop` itself, and drains the session before it returns.
                    let ended = Arc::clone(&worker).serve(&session, &stop).await;
                    if stop.is_cancelled() {
                        worker.stop(&session).await;
                        return Ok(());
                    }
                    if let Err(status) = ended {
                        warn!(session = %session.name, code = ?status.code(), error = %status.message(), "the session was lost; opening another");
                    }
                }
                Err(status) if refused(&status) => {
                    return Err(WorkerError::Declaration(format!(
                        "the server refused the session: {}",
                        status.message()
                    )))
                }
                Err(status) => {
                    warn!(code = ?status.code(), error = %status.message(), "cannot open a session; trying again");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RECONNECT_MAX);
        }
    }

    fn workers(&self) -> WorkerServiceClient<Conn> {
        self.client.workers()
    }

    async fn open(&self, declarations: &[KindDeclaration]) -> Result<Session, tonic::Status> {
        let mut workers = self.workers();
        let opened = workers
            .open_session(OpenSessionRequest {
                worker: self.name.clone(),
                kinds: declarations.to_vec(),
            })
            .await?
            .into_inner();
        info!(session = %opened.name, "worker session opened");
        Ok(Session {
            name: opened.name,
            running: Arc::new(Mutex::new(HashMap::new())),
            tracker: TaskTracker::new(),
        })
    }

    /// Runs the session's assignments until its stream ends (an error: the session is lost)
    /// or `stop` is cancelled (then returns at once; the caller drains).
    async fn serve(
        self: Arc<Self>,
        session: &Session,
        stop: &CancellationToken,
    ) -> Result<(), tonic::Status> {
        let mut events = self
            .workers()
            .stream_assignments(StreamAssignmentsRequest {
                session: session.name.clone(),
            })
            .await?
            .into_inner();
        let result = loop {
            let event = tokio::select! {
                () = stop.cancelled() => {
                    // Drain before the stream goes: the session then outlives it.
                    let drain = CloseSessionRequest {
                        name: session.name.clone(),
                        drain: true,
                    };
                    if let Err(e) = self.workers().close_session(drain).await {
                        warn!(error = %e, "the session could not be drained");
                    }
                    return Ok(());
                }
                event = events.message() => event,
            };
            match event {
                Ok(Some(event)) => match event.event {
                    Some(Event::Assignment(assignment)) => {
                        let worker = Arc::clone(&self);
                        let token = CancellationToken::new();
                        session
                            .running()
                            .insert(assignment.name.clone(), token.clone());
                        let running = Arc::clone(&session.running);
                        session.tracker.spawn(async move {
                            let name = assignment.name.clone();
                            worker.run_one(assignment, token).await;
                            running
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(&name);
                        });
                    }
                    Some(Event::Cancellation(cancellation)) => {
                        if let Some(token) = session.running().get(&cancellation.name) {
                            token.cancel();
                        }
                    }
                    None => {}
                },
                Ok(None) => break Err(tonic::Status::unavailable("the session's stream ended")),
                Err(status) => break Err(status),
            }
        };
        // The session is gone: what it ran is the server's to run again.
        for token in session.running().values() {
            token.cancel();
        }
        result
    }

    /// Shutdown: no more work, what runs finishes for up to the grace, then the session
    /// closes (handing back what is left).
    async fn stop(&self, session: &Session) {
        let mut workers = self.workers();
        session.tracker.close();
        if tokio::time::timeout(self.grace, session.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                grace_s = self.grace.as_secs_f64(),
                "assignments still running after the shutdown grace; handing them back"
            );
            for token in session.running().values() {
                token.cancel();
            }
        }
        let close = CloseSessionRequest {
            name: session.name.clone(),
            drain: false,
        };
        // Drained already, it may be gone: NOT_FOUND is the expected answer then.
        match workers.close_session(close).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => warn!(error = %e, "the session could not be closed"),
        }
        info!(session = %session.name, "worker stopped");
    }

    /// Runs one assignment: its task, a reporter beside it, then its completion.
    async fn run_one(&self, assignment: Assignment, token: CancellationToken) {
        let Ok(id) = OperationId::parse_name(&assignment.name) else {
            warn!(name = %assignment.name, "an assignment with a malformed name");
            return;
        };
        let Some(task) = self.registry.erased(&assignment.kind).map(Arc::clone) else {
            let error = Status {
                code: Code::Unimplemented as i32,
                message: format!("this worker does not run kind {:?}", assignment.kind),
                details: Vec::new(),
            };
            self.complete(
                &assignment,
                complete_assignment_request::Result::Error(error),
            )
            .await;
            return;
        };
        let draft = Draft::new(Report::default());
        let ctx = TaskContext::new(id, Arc::clone(&draft), token.clone(), assignment.attempt);
        let heartbeat = assignment
            .heartbeat_timeout
            .and_then(|t| Duration::try_from(t).ok())
            .unwrap_or(DEFAULT_HEARTBEAT);
        let input = assignment.input.clone().unwrap_or_default();
        let run = tokio::spawn(task.run(input, ctx));
        // What the server was last told (at first, nothing: an empty report).
        let sent = std::sync::Mutex::new(Report::default());
        let reporter = self.report(&assignment, &draft, &sent, &token, heartbeat);
        tokio::pin!(reporter);
        let joined = tokio::select! {
            joined = run => joined,
            never = &mut reporter => match never {},
        };
        // The last words ride in a final report, if there are any the server has not had.
        let last = draft.current();
        if last
            != *sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            self.send_report(&assignment, &last, &sent, &token).await;
        }
        let result = match joined {
            Ok(Ok(response)) => complete_assignment_request::Result::Response(response),
            Ok(Err(e)) => complete_assignment_request::Result::Error(status_of(&e)),
            Err(e) => complete_assignment_request::Result::Error(Status {
                code: Code::Internal as i32,
                message: format!("the task panicked: {e}"),
                details: Vec::new(),
            }),
        };
        self.complete(&assignment, result).await;
    }

    /// Reports the draft at most every [`REPORT_EVERY`] after it changes, and at least every
    /// third of the heartbeat timeout; cancels the task when the answer says so. Never ends.
    async fn report(
        &self,
        assignment: &Assignment,
        draft: &Arc<Draft>,
        sent: &std::sync::Mutex<Report>,
        token: &CancellationToken,
        heartbeat: Duration,
    ) -> std::convert::Infallible {
        let mut reports = draft.subscribe();
        reports.mark_unchanged();
        let beat = (heartbeat / 3).max(Duration::from_millis(100));
        loop {
            let changed = tokio::time::timeout(beat, reports.changed()).await;
            if matches!(changed, Ok(Err(_))) {
                return std::future::pending().await;
            }
            if changed.is_ok() {
                tokio::time::sleep(REPORT_EVERY).await;
            }
            let report = reports.borrow_and_update().clone();
            self.send_report(assignment, &report, sent, token).await;
        }
    }

    /// Sends `report`; once the server has it, it is what `sent` holds.
    async fn send_report(
        &self,
        assignment: &Assignment,
        report: &Report,
        sent: &std::sync::Mutex<Report>,
        token: &CancellationToken,
    ) {
        let answer = self
            .workers()
            .report_progress(ReportProgressRequest {
                name: assignment.name.clone(),
                lease_token: assignment.lease_token.clone(),
                progress: Some(report.progress.clone()),
                status_message: report.status_message.clone(),
                details: report.details.clone(),
            })
            .await;
        if answer.is_ok() {
            report.clone_into(
                &mut sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
        match answer {
            Ok(answer) if answer.get_ref().cancel_requested => token.cancel(),
            Ok(_) => {}
            Err(e) if e.code() == Code::FailedPrecondition || e.code() == Code::NotFound => {
                // The attempt is no longer this worker's: stop working on it.
                token.cancel();
            }
            Err(e) => warn!(name = %assignment.name, error = %e, "a progress report failed"),
        }
    }

    /// Sends the completion, trying again a few times while the server is unavailable.
    async fn complete(&self, assignment: &Assignment, result: complete_assignment_request::Result) {
        for attempt in 0..5u32 {
            let sent = self
                .workers()
                .complete_assignment(CompleteAssignmentRequest {
                    name: assignment.name.clone(),
                    lease_token: assignment.lease_token.clone(),
                    result: Some(result.clone()),
                })
                .await;
            match sent {
                Ok(_) => return,
                Err(e) if e.code() == Code::Unavailable && attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => {
                    warn!(name = %assignment.name, code = ?e.code(), error = %e.message(), "the completion was refused");
                    return;
                }
            }
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open session of this worker.
struct Session {
    name: String,
    /// The assignments running, with their tokens.
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
    tracker: TaskTracker,
}

impl Session {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A refusal that trying again will not change (a declaration the server will not take).
fn refused(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

fn status_of(e: &TaskError) -> Status {
    Status {
        code: e.code as i32,
        message: e.message.clone(),
        details: Vec::new(),
    }
}
