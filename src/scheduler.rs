//! The scheduler: turns submissions into running workers, and is the one place that changes an
//! operation's state.
//!
//! # How it holds state
//! - Every operation that is not done is *live*: a [`LiveOperation`] in a `DashMap` keyed by
//!   id, holding the current record in a `tokio::sync::watch` channel. Workers update it in
//!   memory; Get reads it; Wait subscribes to it and is woken by the change that makes the
//!   operation done (no polling).
//! - Queues and running counts sit behind one std `Mutex` (`Queues`): FIFO per kind, a global
//!   and a per-kind limit. Nothing awaits while it is held.
//! - Each operation's `CancellationToken` is a child of one root token; the reason it was
//!   cancelled (client or shutdown) is remembered, because only a client's cancel ends an
//!   operation as CANCELLED.
//! - Every spawned task is tracked by a `TaskTracker` so shutdown can wait for them.
//!
//! Durability order: a state change is persisted before it is published, so a client never
//! sees a state that a crash could take back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use prost_types::Any;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::error::{quote, Error};
use crate::filter::Filter;
use crate::model::{time, CancelReason, OperationId, OperationRecord, Outcome, State};
use crate::proto::google::rpc::Code;
use crate::store::{Inserted, Store, StoreError};
use crate::task::{ErasedTask, Registry, Retry, TaskContext, TaskError};

/// Longest accepted `request_id`.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// How the runner schedules work.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most operations running at once, over all kinds.
    pub max_running: usize,
    /// Per-kind limits that override what a kind declares.
    pub kind_limits: HashMap<String, usize>,
    /// Most operations waiting at once (queued, delayed or backing off), over all kinds;
    /// past it SubmitTask answers RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// Largest accepted input message, in bytes.
    pub max_input_bytes: usize,
    /// How long a worker may ignore a cancel before it is aborted.
    pub cancel_grace: Duration,
    /// Least time between two progress writes of one operation.
    pub progress_interval: Duration,
    /// The longest a WaitOperation call waits.
    pub max_wait: Duration,
    /// How long finished operations are kept before the sweeper removes them.
    pub retention: Duration,
    /// At most this many finished operations are kept (the oldest go first).
    pub max_retained: Option<usize>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_running: 64,
            kind_limits: HashMap::new(),
            max_queued: 100_000,
            max_input_bytes: 1 << 20,
            cancel_grace: Duration::from_secs(30),
            progress_interval: Duration::from_millis(250),
            max_wait: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 24 * 3600),
            max_retained: None,
        }
    }
}

/// How long a client is told to wait before retrying a submission refused for a full queue.
pub const QUEUE_FULL_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The first pause before a state change the store refused is written again; it doubles up to
/// [`STORE_RETRY_MAX`].
pub const STORE_RETRY_MIN: Duration = Duration::from_millis(50);
/// The longest pause between two attempts to write a refused state change.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long CancelOperation waits for a queued operation's end to be written before it
/// answers anyway (the end is written as soon as the store takes it).
const CANCEL_ACK_WAIT: Duration = Duration::from_secs(5);

/// An operation that is not done yet, as the runner holds it in memory.
pub struct LiveOperation {
    id: OperationId,
    record: watch::Sender<OperationRecord>,
    token: CancellationToken,
    reason: OnceLock<CancelReason>,
    /// Consecutive writes of this operation the store refused (for logging once and for the
    /// backoff of a start that could not be recorded).
    write_failures: AtomicU32,
}

impl LiveOperation {
    fn new(record: OperationRecord, token: CancellationToken) -> Self {
        Self {
            id: record.id.clone(),
            record: watch::Sender::new(record),
            token,
            reason: OnceLock::new(),
            write_failures: AtomicU32::new(0),
        }
    }

    /// The id.
    pub fn id(&self) -> &OperationId {
        &self.id
    }

    /// Changes the record in memory (never after it is done) and wakes watchers.
    pub(crate) fn update(&self, f: impl FnOnce(&mut OperationRecord)) {
        self.record.send_if_modified(|r| {
            if r.is_done() {
                return false;
            }
            f(r);
            r.update_time = SystemTime::now();
            true
        });
    }

    /// Replaces the whole record (never after it is done) and wakes watchers.
    fn replace(&self, record: OperationRecord) {
        self.record.send_if_modified(|r| {
            if r.is_done() {
                return false;
            }
            *r = record;
            true
        });
    }

    /// A copy of the current record.
    pub fn snapshot(&self) -> OperationRecord {
        self.record.borrow().clone()
    }

    /// Cancels the token, remembering why (the first reason wins).
    fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    fn reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }
}

/// Queued work and running counts.
#[derive(Default)]
struct Queues {
    kinds: HashMap<String, KindQueue>,
    running: usize,
    next_ticket: u64,
}

impl Queues {
    /// Operations waiting (ready, delayed or reserved by a submission in flight).
    fn waiting(&self) -> usize {
        self.kinds.values().map(KindQueue::waiting).sum()
    }
}

struct KindQueue {
    /// Ready to start, in submission order.
    ready: VecDeque<(u64, OperationId)>,
    /// Waiting for their time (delayed start or retry backoff).
    delayed: HashSet<OperationId>,
    /// Submissions admitted but not yet queued.
    reserved: usize,
    running: usize,
    limit: usize,
}

impl KindQueue {
    fn new(limit: usize) -> Self {
        Self {
            ready: VecDeque::new(),
            delayed: HashSet::new(),
            reserved: 0,
            running: 0,
            limit,
        }
    }

    fn waiting(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.reserved
    }

    /// Takes an operation out of the ready or delayed set; whether it was there.
    fn remove(&mut self, id: &OperationId) -> bool {
        let before = self.ready.len();
        self.ready.retain(|(_, waiting)| waiting != id);
        self.delayed.remove(id) || self.ready.len() != before
    }
}

/// A submission's place in its kind's queue, held from admission until it is queued.
struct Reservation<'a> {
    runner: &'a Runner,
    kind: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut q = self.runner.lock_queues();
        if let Some(k) = q.kinds.get_mut(&self.kind) {
            k.reserved = k.reserved.saturating_sub(1);
        }
    }
}

/// The runner: a cheap `Clone` handle over shared state.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Registry,
    store: Arc<dyn Store>,
    config: RunnerConfig,
    live: DashMap<OperationId, Arc<LiveOperation>>,
    // std Mutex, not tokio's: nothing awaits while it is held.
    queues: Mutex<Queues>,
    root: CancellationToken,
    tracker: TaskTracker,
    accepting: AtomicBool,
    /// Wakes the retention sweeper early (see `sweep_loop`).
    sweep_wake: Notify,
    /// Finished operations in the store, as of the last sweep plus those finished since.
    finished: AtomicUsize,
    /// Whether the sweeper has no expiry scheduled (so the next finish must wake it).
    sweeper_idle: AtomicBool,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// The operations, in creation order.
    pub operations: Vec<OperationRecord>,
    /// The `seq` to continue after, if more may follow.
    pub next_after: Option<i64>,
}

impl Runner {
    /// Starts a runner over `store`: recovers what the store holds (queued operations are
    /// queued again; ones that were running are re-run if their kind is retry-safe, or ended
    /// ABORTED), then starts work.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be read or holds unreadable data; the runner
    /// never starts on a store it could not recover.
    pub async fn start(
        registry: Registry,
        store: Arc<dyn Store>,
        config: RunnerConfig,
    ) -> Result<Self, Error> {
        let runner = Self {
            shared: Arc::new(Shared {
                registry,
                store,
                config,
                live: DashMap::new(),
                queues: Mutex::new(Queues::default()),
                root: CancellationToken::new(),
                tracker: TaskTracker::new(),
                accepting: AtomicBool::new(true),
                sweep_wake: Notify::new(),
                finished: AtomicUsize::new(0),
                sweeper_idle: AtomicBool::new(false),
            }),
        };
        runner.recover().await?;
        runner.pump();
        let sweeper = runner.clone();
        runner
            .shared
            .tracker
            .spawn(async move { sweeper.sweep_loop().await });
        Ok(runner)
    }

    /// The registered kinds.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// The configuration.
    pub fn config(&self) -> &RunnerConfig {
        &self.shared.config
    }

    async fn recover(&self) -> Result<(), Error> {
        let unfinished = self.shared.store.unfinished().await?;
        let (mut requeued, mut aborted) = (0usize, 0usize);
        for mut r in unfinished {
            let Some(task) = self.shared.registry.erased(&r.kind) else {
                r.fail(
                    State::Failed,
                    Code::FailedPrecondition,
                    format!(
                        "kind {:?} is not registered on this server; registered kinds: {}",
                        r.kind,
                        self.shared.registry.names()
                    ),
                );
                self.shared.store.update(&r).await?;
                aborted += 1;
                continue;
            };
            if r.state == State::Running {
                if task.options().retry_safe {
                    r.state = State::Queued;
                    r.attempt += 1;
                    r.start_time = None;
                    r.status_message = "queued again after a server restart".into();
                    r.update_time = SystemTime::now();
                    self.shared.store.update(&r).await?;
                    requeued += 1;
                } else {
                    r.fail(
                        State::Failed,
                        Code::Aborted,
                        format!(
                            "the server restarted while this operation was running; kind {:?} \
                             is not safe to retry, so it was not run again",
                            r.kind
                        ),
                    );
                    self.shared.store.update(&r).await?;
                    aborted += 1;
                    continue;
                }
            }
            self.enqueue(r);
        }
        let queued = self.shared.live.len();
        if queued + aborted > 0 {
            info!(
                queued,
                requeued, aborted, "recovered operations from the store"
            );
        }
        Ok(())
    }

    /// Submits a task: validates it, makes it durable, queues it. With a `request_id` already
    /// used for the same request, returns the earlier operation instead.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an unknown kind, an input of the wrong type, too large, or refused
    /// by the kind; ALREADY_EXISTS when the `request_id` was used for a different request;
    /// RESOURCE_EXHAUSTED when the queue bound is reached; UNAVAILABLE when shutting down or
    /// the store fails.
    pub async fn submit(&self, request: Submission) -> Result<OperationRecord, Error> {
        let Submission {
            kind,
            input,
            request_id,
            timeout,
            not_before,
        } = request;
        if !self.shared.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let Some(task) = self.shared.registry.erased(&kind) else {
            let message = if kind.is_empty() {
                format!(
                    "kind is empty; registered kinds: {}",
                    self.shared.registry.names()
                )
            } else {
                format!(
                    "unknown kind {}; registered kinds: {}",
                    quote(&kind),
                    self.shared.registry.names()
                )
            };
            return Err(Error::invalid_argument_because(
                "kind",
                "UNKNOWN_KIND",
                message,
            ));
        };
        let Some(input) = input else {
            let expected = task.describe().input_type;
            return Err(Error::invalid_argument(
                "input",
                format!("input is missing; kind {kind:?} takes a {expected}"),
            ));
        };
        let limit = self.shared.config.max_input_bytes;
        if input.value.len() > limit {
            return Err(Error::invalid_argument_because(
                "input",
                "INPUT_TOO_LARGE",
                format!(
                    "input is {} bytes; the limit is {limit} bytes (oprun serve --max-input-bytes)",
                    input.value.len()
                ),
            ));
        }
        let request_id = check_request_id(&request_id)?;
        let now = SystemTime::now();
        let timeout = timeout.or(task.options().default_timeout);
        let deadline = match timeout {
            None => None,
            Some(t) if t.is_zero() => {
                return Err(Error::invalid_argument(
                    "timeout",
                    "timeout must be positive; leave it unset for no timeout",
                ))
            }
            Some(t) => Some(time::add(now, t).ok_or_else(|| {
                Error::invalid_argument(
                    "timeout",
                    "timeout ends after 9999-12-31T23:59:59Z, the latest time an operation can \
                     show; leave it unset for no timeout",
                )
            })?),
        };
        // AIP-155: a repeated request_id returns the original operation whatever the queue or
        // the world looks like now (a full queue, a snapshot destination that now exists), so
        // it is looked up before the input is judged or a place in the queue is taken.
        if let Some(rid) = &request_id {
            if let Some(existing) = self.shared.store.find_request(rid).await? {
                return self.repeat(existing, &kind, Some(&input));
            }
        }
        task.check_input(&input)?;
        let reservation = self.reserve(&kind, task)?;
        // Kept only to compare with an operation inserted meanwhile with the same request_id.
        let sent = request_id.as_ref().map(|_| input.clone());
        let mut record = OperationRecord::new_queued(kind.clone(), input, request_id);
        record.deadline = deadline;
        record.next_attempt_time = not_before.filter(|t| *t > now);
        let inserted = self.shared.store.insert(record).await;
        match inserted? {
            Inserted::New(r) => {
                info!(op.name = %r.id, op.kind = %r.kind, "submitted");
                self.enqueue(r.clone());
                drop(reservation);
                self.pump();
                Ok(r)
            }
            Inserted::Existing(existing) => self.repeat(existing, &kind, sent.as_ref()),
        }
    }

    /// The answer to a submission whose `request_id` an operation already carries: that
    /// operation (its latest state) when the request is the same, else ALREADY_EXISTS.
    fn repeat(
        &self,
        existing: OperationRecord,
        kind: &str,
        input: Option<&Any>,
    ) -> Result<OperationRecord, Error> {
        if existing.kind != kind || input != Some(&existing.input) {
            return Err(Error::AlreadyExists {
                message: format!(
                    "request_id was already used for {} (kind {:?}) with a different kind or \
                     input; use a new request_id for a different request",
                    existing.id, existing.kind
                ),
            });
        }
        Ok(self.latest(existing))
    }

    /// Admits one more waiting operation of `kind`, or refuses with RESOURCE_EXHAUSTED naming
    /// the bound that is reached.
    fn reserve(&self, kind: &str, task: &Arc<dyn ErasedTask>) -> Result<Reservation<'_>, Error> {
        let kind_bound = task.options().max_queued;
        let limit = self.kind_limit(kind);
        let mut q = self.lock_queues();
        let global = self.shared.config.max_queued;
        if q.waiting() >= global {
            return Err(Error::ResourceExhausted {
                message: format!(
                    "the queue is full: {global} operations are waiting (oprun serve \
                     --max-queued); retry later"
                ),
                retry_after: QUEUE_FULL_RETRY_DELAY,
            });
        }
        let k = q
            .kinds
            .entry(kind.to_owned())
            .or_insert_with(|| KindQueue::new(limit));
        if let Some(bound) = kind_bound {
            if k.waiting() >= bound {
                return Err(Error::ResourceExhausted {
                    message: format!(
                        "the queue of kind {kind:?} is full: {bound} operations are waiting; \
                         retry later"
                    ),
                    retry_after: QUEUE_FULL_RETRY_DELAY,
                });
            }
        }
        k.reserved += 1;
        Ok(Reservation {
            runner: self,
            kind: kind.to_owned(),
        })
    }

    /// The latest state of an operation that may be live.
    fn latest(&self, stored: OperationRecord) -> OperationRecord {
        match self.shared.live.get(&stored.id) {
            Some(live) => live.snapshot(),
            None => stored,
        }
    }

    /// Makes a stored, unfinished record live: queued now or at its `next_attempt_time`, and
    /// watched for its deadline.
    fn enqueue(&self, record: OperationRecord) {
        let deadline = record.deadline;
        let due = record.next_attempt_time;
        let live = Arc::new(LiveOperation::new(record, self.shared.root.child_token()));
        self.shared.live.insert(live.id.clone(), Arc::clone(&live));
        // A fresh token is cancelled only when the runner is shutting down; the operation then
        // stays stored as it is, for the next start.
        let _ = self.schedule(&live, due);
        if let Some(deadline) = deadline {
            let runner = self.clone();
            self.shared
                .tracker
                .spawn(async move { runner.expire_at(live, deadline).await });
        }
    }

    /// Puts a live operation in its kind's ready queue, or, if `due` is in the future, in
    /// the delayed set with a timer that moves it to the ready queue then.
    ///
    /// Returns false, queueing nothing, when the operation's token is already cancelled: the
    /// check happens under the queues' lock, and `cancel`/`expire_at` cancel the token before
    /// they look in the queues, so exactly one side ends the operation.
    fn schedule(&self, live: &Arc<LiveOperation>, due: Option<SystemTime>) -> bool {
        let kind = live.record.borrow().kind.clone();
        let id = live.id.clone();
        let wait = due.and_then(|t| t.duration_since(SystemTime::now()).ok());
        let limit = self.kind_limit(&kind);
        let mut q = self.lock_queues();
        if live.token.is_cancelled() {
            return false;
        }
        q.next_ticket += 1;
        let ticket = q.next_ticket;
        let k = q.kinds.entry(kind).or_insert_with(|| KindQueue::new(limit));
        match wait {
            Some(wait) if !wait.is_zero() => {
                k.delayed.insert(id);
                let runner = self.clone();
                let live = Arc::clone(live);
                self.shared
                    .tracker
                    .spawn(async move { runner.wake_after(live, wait).await });
            }
            _ => k.ready.push_back((ticket, id)),
        }
        true
    }

    /// Moves a delayed operation to the ready queue when its time comes (unless it was
    /// cancelled or expired meanwhile).
    async fn wake_after(self, live: Arc<LiveOperation>, wait: Duration) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.shared.root.cancelled() => return,
        }
        let moved = {
            let kind = live.record.borrow().kind.clone();
            let mut q = self.lock_queues();
            q.next_ticket += 1;
            let ticket = q.next_ticket;
            q.kinds.get_mut(&kind).is_some_and(|k| {
                let was_delayed = k.delayed.remove(&live.id);
                if was_delayed {
                    k.ready.push_back((ticket, live.id.clone()));
                }
                was_delayed
            })
        };
        if moved {
            live.update(|r| r.next_attempt_time = None);
            self.pump();
        }
    }

    /// Ends the operation DEADLINE_EXCEEDED when its deadline passes before it is done.
    async fn expire_at(self, live: Arc<LiveOperation>, deadline: SystemTime) {
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let mut rx = live.record.subscribe();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = rx.wait_for(OperationRecord::is_done) => return,
            () = self.shared.root.cancelled() => return,
        }
        // Token first, then the queues: see `schedule`.
        live.cancel(CancelReason::Deadline);
        let was_waiting = self.unqueue(&live);
        info!(op.name = %live.id, waiting = was_waiting, "deadline passed");
        if was_waiting {
            self.finish(
                &live,
                State::Failed,
                Outcome::Error(status(Code::DeadlineExceeded, deadline_message(&live))),
            )
            .await;
        }
    }

    /// Takes a live operation out of its kind's ready queue or delayed set; whether it was
    /// waiting there (rather than running or starting).
    fn unqueue(&self, live: &LiveOperation) -> bool {
        let kind = live.record.borrow().kind.clone();
        let mut q = self.lock_queues();
        q.kinds.get_mut(&kind).is_some_and(|k| k.remove(&live.id))
    }

    fn kind_limit(&self, kind: &str) -> usize {
        let declared = self
            .shared
            .registry
            .erased(kind)
            .and_then(|t| t.options().max_concurrency);
        self.shared
            .config
            .kind_limits
            .get(kind)
            .copied()
            .or(declared)
            .unwrap_or(self.shared.config.max_running)
            .max(1)
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        // Every critical section leaves the queues consistent before anything can panic.
        self.shared
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts queued operations while capacity allows: the oldest waiting operation among the
    /// kinds under their limit goes first (FIFO within a kind).
    fn pump(&self) {
        if !self.shared.accepting.load(Ordering::Acquire) {
            return;
        }
        let mut starting = Vec::new();
        {
            let mut q = self.lock_queues();
            while q.running < self.shared.config.max_running {
                let next = q
                    .kinds
                    .iter()
                    .filter(|(_, k)| k.running < k.limit)
                    .filter_map(|(name, k)| k.ready.front().map(|(t, _)| (*t, name.clone())))
                    .min();
                let Some((_, kind)) = next else { break };
                let Some(kq) = q.kinds.get_mut(&kind) else {
                    break;
                };
                let Some((_, id)) = kq.ready.pop_front() else {
                    break;
                };
                kq.running += 1;
                q.running += 1;
                starting.push((kind, id));
            }
        }
        for (kind, id) in starting {
            let live = self.shared.live.get(&id).map(|e| Arc::clone(e.value()));
            let task = self.shared.registry.erased(&kind).map(Arc::clone);
            match (live, task) {
                (Some(live), Some(task)) => {
                    let runner = self.clone();
                    self.shared
                        .tracker
                        .spawn(async move { runner.run_operation(live, task).await });
                }
                _ => self.release(&kind),
            }
        }
    }

    /// Frees a running slot and starts what it allows.
    fn release(&self, kind: &str) {
        {
            let mut q = self.lock_queues();
            q.running = q.running.saturating_sub(1);
            if let Some(k) = q.kinds.get_mut(kind) {
                k.running = k.running.saturating_sub(1);
            }
        }
        self.pump();
    }

    async fn run_operation(self, live: Arc<LiveOperation>, task: Arc<dyn ErasedTask>) {
        let record = live.snapshot();
        let span = info_span!("operation", op.name = %record.id, op.kind = %record.kind);
        self.drive(live, task, record).instrument(span).await;
    }

    async fn drive(
        &self,
        live: Arc<LiveOperation>,
        task: Arc<dyn ErasedTask>,
        record: OperationRecord,
    ) {
        let kind = record.kind.clone();
        if live.token.is_cancelled() {
            // Cancelled between leaving the queue and starting: it never ran, so its slot goes
            // before its end is written (which may wait for a store that refuses writes).
            self.release(&kind);
            self.conclude(&live, &task, Err(WorkerEnd::NotStarted))
                .await;
            return;
        }
        // Persist RUNNING before publishing it: a kind that is not retry-safe must never run
        // without the store knowing, or a crash would run it twice.
        let mut running = live.snapshot();
        running.state = State::Running;
        running.start_time = Some(SystemTime::now());
        running.update_time = SystemTime::now();
        if let Err(e) = self.shared.store.update(&running).await {
            // It stays QUEUED, as stored: try again after a backoff, without the slot.
            let delay = self.note_write_failure(&live, &e, "its start");
            let due = time::add(SystemTime::now(), delay);
            self.release(&kind);
            if !self.schedule(&live, due) {
                self.conclude(&live, &task, Err(WorkerEnd::NotStarted))
                    .await;
            }
            return;
        }
        self.note_write_success(&live);
        live.update(|r| {
            r.state = State::Running;
            r.start_time = running.start_time;
        });
        info!(attempt = running.attempt, "started");

        let ctx = TaskContext::new(Arc::clone(&live), live.token.clone(), running.attempt);
        let mut worker = self
            .shared
            .tracker
            .spawn(task.run(running.input, ctx).in_current_span());
        let grace = self.shared.config.cancel_grace;
        let token = live.token.clone();
        let end = tokio::select! {
            biased;
            joined = &mut worker => match joined {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(WorkerEnd::Failed(e)),
                Err(e) if e.is_panic() => Err(WorkerEnd::Panicked(panic_message(e.into_panic()))),
                Err(_) => Err(WorkerEnd::Abandoned(grace)),
            },
            () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                warn!(grace_ms = grace.as_millis() as u64, "worker ignored its cancellation past the grace period; aborting it");
                worker.abort();
                Err(WorkerEnd::Abandoned(grace))
            }
            never = self.flush_progress(&live) => match never {},
        };
        self.conclude(&live, &task, end).await;
        self.release(&kind);
    }

    /// Persists progress coalesced: after a change, wait `progress_interval`, then write the
    /// latest record. An operation that finishes within the interval writes no progress at all
    /// (its final write carries it). Never completes.
    async fn flush_progress(&self, live: &LiveOperation) -> std::convert::Infallible {
        let mut rx = live.record.subscribe();
        rx.mark_unchanged();
        loop {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(self.shared.config.progress_interval).await;
            let record = rx.borrow_and_update().clone();
            if record.is_done() {
                return std::future::pending().await;
            }
            match self.shared.store.update(&record).await {
                Ok(()) => self.note_write_success(live),
                Err(e) => {
                    self.note_write_failure(live, &e, "its progress");
                }
            }
        }
    }

    /// Decides how a run ended and records it: a response wins; then a client's cancel
    /// (CANCELLED), the deadline (DEADLINE_EXCEEDED), a shutdown (nothing recorded); a
    /// retryable failure with attempts left is queued again after its backoff.
    async fn conclude(
        &self,
        live: &Arc<LiveOperation>,
        task: &Arc<dyn ErasedTask>,
        end: Result<Any, WorkerEnd>,
    ) {
        let abandoned = |end: &WorkerEnd| match end {
            WorkerEnd::Abandoned(grace) => format!(
                "; the worker did not stop within the {}s grace period and was aborted",
                grace.as_secs_f64()
            ),
            _ => String::new(),
        };
        let (state, outcome) = match (end, live.reason()) {
            // A run that completed despite a cancel keeps its real result.
            (Ok(response), _) => (State::Succeeded, Outcome::Response(response)),
            (Err(end), Some(CancelReason::Shutdown)) => {
                info!(
                    ?end,
                    "interrupted by shutdown; it will be resumed or aborted on the next start"
                );
                self.shared.live.remove(&live.id);
                return;
            }
            (Err(end), Some(CancelReason::Client)) => (
                State::Cancelled,
                Outcome::Error(status(
                    Code::Cancelled,
                    format!("cancelled by client request{}", abandoned(&end)),
                )),
            ),
            (Err(end), Some(CancelReason::Deadline)) => (
                State::Failed,
                Outcome::Error(status(
                    Code::DeadlineExceeded,
                    format!("{}{}", deadline_message(live), abandoned(&end)),
                )),
            ),
            (Err(WorkerEnd::Failed(e)), None) => {
                if let Some(when) = self.retry_due(live, task, &e) {
                    if self.retry(live, &e, when).await {
                        return;
                    }
                    // Cancelled (or expired, or shut down) while the retry was being recorded:
                    // end it as that says, without another attempt.
                    return Box::pin(self.conclude(live, task, Err(WorkerEnd::NotStarted))).await;
                }
                let attempts = live.record.borrow().attempt;
                let message = if attempts > 1 {
                    format!("{} (attempt {attempts})", e.message)
                } else {
                    e.message
                };
                (State::Failed, Outcome::Error(status(e.code, message)))
            }
            (Err(WorkerEnd::Panicked(msg)), None) => (
                State::Failed,
                Outcome::Error(status(
                    Code::Internal,
                    format!("the worker panicked: {msg}"),
                )),
            ),
            (Err(end), None) => (
                State::Failed,
                Outcome::Error(status(
                    Code::Internal,
                    format!("the worker ended unexpectedly: {end:?}"),
                )),
            ),
        };
        self.finish(live, state, outcome).await;
    }

    /// When a failed attempt should run again, if it should, and when: the failure is
    /// retryable, the kind's policy has attempts left, and the next attempt would start
    /// before the deadline.
    fn retry_due(
        &self,
        live: &LiveOperation,
        task: &Arc<dyn ErasedTask>,
        e: &TaskError,
    ) -> Option<(Duration, SystemTime)> {
        let policy = task.options().retry;
        let (attempt, deadline) = {
            let r = live.record.borrow();
            (r.attempt, r.deadline)
        };
        // Also while shutting down: the retry is persisted QUEUED and resumed on the next start.
        if !e.is_retryable() || attempt >= policy.max_attempts {
            return None;
        }
        let delay = match e.retry {
            Retry::After(d) => d,
            Retry::ByCode | Retry::Never => policy.delay(attempt, rand::random::<f64>()),
        };
        // A delay past what a clock can hold is no retry at all.
        let next = time::add(SystemTime::now(), delay)?;
        match deadline {
            Some(deadline) if next >= deadline => None,
            _ => Some((delay, next)),
        }
    }

    /// Queues a failed attempt again at `next`, with `attempt` + 1 and the error kept in
    /// `last_error`, once that is durable. Returns false when the operation's token was
    /// cancelled meanwhile, or the runner stopped before the store took the write (it was not
    /// queued; the caller ends it as the cancel reason says).
    async fn retry(
        &self,
        live: &Arc<LiveOperation>,
        e: &TaskError,
        (delay, next): (Duration, SystemTime),
    ) -> bool {
        let mut record = live.snapshot();
        record.state = State::Queued;
        record.attempt += 1;
        record.start_time = None;
        record.next_attempt_time = Some(next);
        record.last_error = Some(status(e.code, e.message.clone()));
        record.status_message = format!(
            "attempt {} failed ({:?}: {}); attempt {} in {:.1}s",
            record.attempt - 1,
            e.code,
            e.message,
            record.attempt,
            delay.as_secs_f64()
        );
        record.update_time = SystemTime::now();
        if !self.persist(live, &record, "a retry").await {
            return false;
        }
        info!(
            attempt = record.attempt,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            code = e.code as i32,
            "attempt failed; retrying"
        );
        live.replace(record.clone());
        self.schedule(live, record.next_attempt_time)
    }

    /// Ends a live operation: persist, then forget it, then publish (waking waiters). Nothing
    /// is published until the store took the end: while it refuses (a full disk), the
    /// operation keeps its previous state everywhere and the write is retried with backoff.
    /// If the runner stops first, the stored (previous) state is what the next start resumes.
    async fn finish(&self, live: &Arc<LiveOperation>, state: State, outcome: Outcome) {
        let mut record = live.snapshot();
        if record.is_done() {
            return;
        }
        record.finish(state, outcome);
        if !self.persist(live, &record, "its end").await {
            return;
        }
        match &record.outcome {
            Some(Outcome::Error(s)) => {
                info!(op.name = %record.id, op.kind = %record.kind, state = record.state.as_str(), code = s.code, "finished")
            }
            _ => {
                info!(op.name = %record.id, op.kind = %record.kind, state = record.state.as_str(), "finished")
            }
        }
        // Forget it before publishing: whoever a publication wakes (a Wait, then a Delete)
        // must already find it finished, in the store rather than the live map.
        self.shared.live.remove(&live.id);
        live.record.send_replace(record);
        let finished = self.shared.finished.fetch_add(1, Ordering::AcqRel) + 1;
        let over_cap = self
            .shared
            .config
            .max_retained
            .is_some_and(|cap| finished > cap + (cap / 100).max(1));
        if over_cap || self.shared.sweeper_idle.swap(false, Ordering::AcqRel) {
            self.shared.sweep_wake.notify_one();
        }
    }

    /// Writes a state change of `live` until the store takes it, retrying a refusal with
    /// backoff ([`STORE_RETRY_MIN`] doubling to [`STORE_RETRY_MAX`]): the store may have room
    /// again later. Returns false, having written nothing, when the runner shuts down or the
    /// store is closed first.
    async fn persist(
        &self,
        live: &LiveOperation,
        record: &OperationRecord,
        what: &'static str,
    ) -> bool {
        loop {
            let e = match self.shared.store.update(record).await {
                Ok(()) => {
                    self.note_write_success(live);
                    return true;
                }
                Err(e) => e,
            };
            if matches!(e, StoreError::Closed) {
                return false;
            }
            let delay = self.note_write_failure(live, &e, what);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shared.root.cancelled() => return false,
            }
        }
    }

    /// Counts a refused write of `live`, logging only the first of a run of refusals, and
    /// returns how long to wait before trying again.
    fn note_write_failure(&self, live: &LiveOperation, e: &StoreError, what: &str) -> Duration {
        let failures = live.write_failures.fetch_add(1, Ordering::AcqRel);
        if failures == 0 {
            warn!(
                op.name = %live.id,
                error = %e,
                "the store refused {what}; the operation keeps its previous state until the \
                 write succeeds (retrying with backoff; logged once)"
            );
        }
        let factor = 1u32 << failures.min(16);
        STORE_RETRY_MIN.saturating_mul(factor).min(STORE_RETRY_MAX)
    }

    /// Ends a run of refused writes of `live`, saying so if there was one.
    fn note_write_success(&self, live: &LiveOperation) {
        let failures = live.write_failures.swap(0, Ordering::AcqRel);
        if failures > 0 {
            info!(op.name = %live.id, failures, "the store took the write after refusing it");
        }
    }

    /// Removes finished operations past the retention period, and the oldest beyond the cap.
    /// Sleeps until the oldest kept one expires; an operation finishing while nothing is
    /// scheduled, or the count passing the cap (by 1%), wakes it early. No polling.
    async fn sweep_loop(self) {
        let retention = self.shared.config.retention;
        let cap = self.shared.config.max_retained;
        loop {
            let now = SystemTime::now();
            let cutoff = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
            let next = match self.shared.store.sweep(cutoff, cap).await {
                Ok(swept) => {
                    if swept.deleted > 0 {
                        info!(
                            deleted = swept.deleted,
                            kept = swept.finished,
                            "removed finished operations past retention"
                        );
                    }
                    self.shared
                        .finished
                        .store(swept.finished, Ordering::Release);
                    // An expiry past what a clock holds is never.
                    swept
                        .oldest_finished
                        .and_then(|oldest| time::add(oldest, retention))
                        .map(|expiry| {
                            expiry
                                .duration_since(now)
                                .unwrap_or_default()
                                .max(Duration::from_secs(1))
                        })
                }
                Err(e) => {
                    warn!(error = %e, "retention sweep failed; retrying in a minute");
                    Some(Duration::from_secs(60))
                }
            };
            self.shared
                .sweeper_idle
                .store(next.is_none(), Ordering::Release);
            tokio::select! {
                () = async {
                    match next {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = self.shared.sweep_wake.notified() => {}
                () = self.shared.root.cancelled() => return,
            }
        }
    }

    /// The latest state of an operation.
    ///
    /// # Errors
    /// NOT_FOUND when there is no such operation; UNAVAILABLE when the store fails.
    pub async fn get(&self, id: &OperationId) -> Result<OperationRecord, Error> {
        if let Some(live) = self.shared.live.get(id).map(|e| Arc::clone(e.value())) {
            return Ok(live.snapshot());
        }
        self.shared
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { name: id.name() })
    }

    /// Waits until the operation is done or `timeout` (capped at the configured maximum)
    /// passes, then returns its latest state.
    ///
    /// # Errors
    /// NOT_FOUND when there is no such operation; UNAVAILABLE when the store fails.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn wait(
        &self,
        id: &OperationId,
        timeout: Duration,
    ) -> Result<OperationRecord, Error> {
        let timeout = timeout.min(self.shared.config.max_wait);
        let Some(live) = self.shared.live.get(id).map(|e| Arc::clone(e.value())) else {
            return self.get(id).await;
        };
        let mut rx = live.record.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(timeout, rx.wait_for(OperationRecord::is_done)) => {}
            // At shutdown, answer now with the latest state rather than hold the server open.
            () = self.shared.root.cancelled() => {}
        }
        Ok(live.snapshot())
    }

    /// Requests cancellation. A queued operation ends CANCELLED at once; a running one has its
    /// token cancelled and ends when its worker stops (or is aborted after the grace period).
    /// A finished operation is left as it is.
    ///
    /// # Errors
    /// NOT_FOUND when there is no such operation; UNAVAILABLE when the store fails.
    pub async fn cancel(&self, id: &OperationId) -> Result<(), Error> {
        let Some(live) = self.shared.live.get(id).map(|e| Arc::clone(e.value())) else {
            return self.get(id).await.map(drop);
        };
        live.update(|r| r.requested_cancellation = true);
        // Token first, then the queues: see `schedule`.
        live.cancel(CancelReason::Client);
        let was_waiting = self.unqueue(&live);
        info!(op.name = %id, waiting = was_waiting, "cancel requested");
        if was_waiting {
            // On a tracked task, so that it completes even if this call is dropped (the
            // client gave up); answered once it is durable, or after a bound while the store
            // refuses writes (it is written as soon as the store takes it).
            let runner = self.clone();
            let ending = self.shared.tracker.spawn(async move {
                runner
                    .finish(
                        &live,
                        State::Cancelled,
                        Outcome::Error(status(
                            Code::Cancelled,
                            "cancelled by client request before it started",
                        )),
                    )
                    .await;
            });
            let _ = tokio::time::timeout(CANCEL_ACK_WAIT, ending).await;
        }
        Ok(())
    }

    /// Deletes a finished operation.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when it is not done; NOT_FOUND when there is no such operation;
    /// UNAVAILABLE when the store fails.
    pub async fn delete(&self, id: &OperationId) -> Result<(), Error> {
        let not_done = || Error::FailedPrecondition {
            message: format!("{id} is not done; cancel it first and delete it once it is done"),
            reason: "OPERATION_NOT_DONE",
        };
        if self.shared.live.contains_key(id) {
            return Err(not_done());
        }
        match self.shared.store.delete_done(id).await? {
            Some(true) => {
                info!(op.name = %id, "deleted");
                Ok(())
            }
            Some(false) => Err(not_done()),
            None => Err(Error::NotFound { name: id.name() }),
        }
    }

    /// Lists up to `limit` operations after `after` (a `seq`) that match `filter`.
    ///
    /// # Errors
    /// UNAVAILABLE when the store fails.
    pub async fn list(&self, filter: &Filter, after: i64, limit: usize) -> Result<Page, Error> {
        let mut operations = self
            .shared
            .store
            .list(after, filter, limit.saturating_add(1))
            .await?;
        let more = operations.len() > limit;
        operations.truncate(limit);
        let next_after = if more {
            operations.last().map(|r| r.seq)
        } else {
            None
        };
        for r in &mut operations {
            if let Some(live) = self.shared.live.get(&r.id) {
                let seq = r.seq;
                *r = live.snapshot();
                r.seq = seq;
            }
        }
        Ok(Page {
            operations,
            next_after,
        })
    }

    /// Stops gracefully: [`begin_shutdown`](Self::begin_shutdown), then waits up to `grace`
    /// for running workers and closes the store. Operations interrupted this way stay RUNNING
    /// in the store and are resumed or aborted on the next start; they are never reported as
    /// CANCELLED, because no client cancelled them.
    ///
    /// # Errors
    /// [`Error::Store`] when the final flush of the store fails.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), Error> {
        self.begin_shutdown();
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                grace_ms = grace.as_millis() as u64,
                "workers still running after the shutdown grace period; leaving them to recovery"
            );
        }
        self.shared.store.close().await?;
        info!("shut down");
        Ok(())
    }

    /// The first, synchronous half of shutdown: refuse new submissions, start nothing new,
    /// cancel every running worker with the reason "shutdown", and release Wait calls.
    pub fn begin_shutdown(&self) {
        if !self.shared.accepting.swap(false, Ordering::AcqRel) {
            return;
        }
        info!(running = self.running(), "shutting down");
        for entry in &self.shared.live {
            let _ = entry.value().reason.set(CancelReason::Shutdown);
        }
        self.shared.root.cancel();
        self.shared.tracker.close();
    }

    /// How many operations are not done yet (queued or running).
    pub fn unfinished(&self) -> usize {
        self.shared.live.len()
    }

    /// How many operations are running now.
    pub fn running(&self) -> usize {
        self.lock_queues().running
    }
}

/// A request to run a task.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The registered kind.
    pub kind: String,
    /// The kind's input message.
    pub input: Option<Any>,
    /// AIP-155 idempotency key (empty: none).
    pub request_id: String,
    /// Ends the operation DEADLINE_EXCEEDED if not done this long after submission; `None`
    /// uses the kind's default timeout.
    pub timeout: Option<Duration>,
    /// Keeps the operation queued until then.
    pub not_before: Option<SystemTime>,
}

impl Submission {
    /// A submission of `kind` with `input` and nothing else.
    pub fn new(kind: impl Into<String>, input: Any) -> Self {
        Self {
            kind: kind.into(),
            input: Some(input),
            ..Self::default()
        }
    }
}

fn deadline_message(live: &LiveOperation) -> String {
    let r = live.record.borrow();
    match r
        .deadline
        .and_then(|d| d.duration_since(r.create_time).ok())
    {
        Some(timeout) => format!(
            "the operation's deadline passed ({:.1}s after submission)",
            timeout.as_secs_f64()
        ),
        None => "the operation's deadline passed".to_owned(),
    }
}

/// How a worker ended without a response.
#[derive(Debug)]
enum WorkerEnd {
    /// Cancelled before it started.
    NotStarted,
    /// It returned an error.
    Failed(TaskError),
    /// It panicked.
    Panicked(String),
    /// It was aborted after ignoring its token for the grace period.
    Abandoned(Duration),
}

fn status(code: Code, message: impl Into<String>) -> crate::proto::google::rpc::Status {
    crate::proto::google::rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
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

fn check_request_id(request_id: &str) -> Result<Option<String>, Error> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > MAX_REQUEST_ID_LEN
        || !request_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(Error::invalid_argument(
            "request_id",
            format!(
                "request_id must be at most {MAX_REQUEST_ID_LEN} characters of letters, digits \
                 and -_.: (a UUID is recommended)"
            ),
        ));
    }
    Ok(Some(request_id.to_owned()))
}
