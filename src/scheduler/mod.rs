//! The runner: turns submissions into running workers through one state machine, with the
//! store as the source of work.
//!
//! # Layout
//! - `transition`: the one place an operation's state changes: the change is checked
//!   ([`crate::model::OperationRecord::apply`]), written fenced, and only then published.
//! - `bus`: what publishing reaches: an event per change ([`OperationChanged`]) and
//!   per-operation watchers for Wait.
//! - `fanout`: the WatchOperations readers, grouped by filter, each group fed one shared
//!   [`Batch`] per interval by one task.
//! - `streams`: the streams WatchService sends (one operation, or a filter's batches).
//! - `outcome`: how a run ended → what happens next (pure).
//! - `admission`: SubmitTask: validation, request ids, the queue bounds.
//! - `dispatch`: claims due work from the store within the running limits, starts workers.
//! - `run`: drives one worker: its deadline, cancellation, progress, and its end.
//! - `running`: the running set with one owner (`RunningSet`: the runs, `Running`, and the
//!   running and waiting counts by kind, `running::slots`, that the limits and bounds read),
//!   which `run` and `transition` both use.
//! - `deadlines`: the deadlines of queued work.
//! - `recovery`: leases and the work of nodes that went away (at start: this data directory's
//!   last process).
//! - `follow`: on a store several nodes share, the changes other nodes made (the store's
//!   feed), brought to this node's bus, workers and dispatcher.
//! - `retention`: the sweeper of finished operations.
//! - `schedules`: the calls of the ScheduleService, and the fire loop that starts each
//!   schedule's operations (see [`crate::schedules`]).
//! - `queries`: Get, List, Wait, Cancel, Delete.
//! - `admin`: what operators and the dashboard ask beyond the standard queries (newest
//!   first, counts, rerun).
//! - `batch`: cancelling or deleting many operations as one operation of a built-in kind.
//! - `kinds`: the kinds a runner knows, registered in process or declared by workers (kept
//!   in the store).
//! - `workers`: worker sessions in their own processes (`oprun.v1.WorkerService`).
//! - `recount`: the queue bounds over a store several nodes share.
//! - `clock`: the clock timers read, injected.
//!
//! # How it holds state
//! The store holds every operation; this process holds only the ones it runs (`running::Running`:
//! the last durable record, the worker's draft (`task::Draft`), its cancellation token and
//! why it was cancelled), and counts by kind. Each token is a child of one root token; every
//! spawned task is tracked by a `TaskTracker` so shutdown can wait for them.

mod admin;
mod admission;
mod at_once;
pub mod batch;
mod bus;
pub mod clock;
mod config;
mod deadlines;
mod dispatch;
mod fanout;
mod follow;
mod kinds;
mod outcome;
mod queries;
mod recount;
mod recovery;
mod retention;
mod run;
mod running;
mod schedules;
mod streams;
mod submission;
mod transition;
mod workers;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::error::Error;
use crate::model::OperationId;
use crate::store::Store;
use crate::task::Registry;
pub use admin::SUMMARY_MAX_AGE;
pub use bus::OperationChanged;
pub use clock::{Clock, PausedClock, SystemClock};
pub use config::{default_node, RunnerConfig};
pub use fanout::{Batch, MIN_INTERVAL};
pub use queries::{NodeState, Page};
pub use streams::Changes;
pub use submission::{Submission, MAX_BATCH_SUBMIT, MAX_UNIQUE_KEY_LEN};
pub use workers::Completion;

/// Longest accepted `request_id`.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// How long a client is told to wait before retrying a submission refused for a full queue.
pub const QUEUE_FULL_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The first pause before a state change the store refused is written again; it doubles up to
/// [`STORE_RETRY_MAX`].
pub const STORE_RETRY_MIN: Duration = Duration::from_millis(50);
/// The longest pause between two attempts to write a refused state change.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// `registry` with the built-in batch kinds, which act through the runner (held weakly: the
/// runner holds the registry).
fn with_batches(mut registry: Registry, shared: &std::sync::Weak<Shared>) -> Registry {
    let registered = registry
        .register(batch::Batch::<false>(shared.clone()))
        .and_then(|r| r.register(batch::Batch::<true>(shared.clone())))
        .map(|_| ());
    debug_assert!(registered.is_ok(), "Runner::start refuses these names");
    registry
}

/// Who to wake when something changed. Each is a hint: a woken task reads again the state it
/// waits on, so a wake-up lost to a race costs at most a poll interval, never a stuck task.
#[derive(Default)]
struct Wakes {
    /// The dispatcher: work may be due, or a slot free.
    dispatch: Notify,
    /// The deadline sweeper: a submission carries a deadline.
    deadline: Notify,
    /// The fire loop: a schedule of this node changed.
    schedule: Notify,
    /// The submissions waiting for room in a full queue: operations left it.
    queue_room: Notify,
    /// The retention sweeper, early (see `retention`).
    sweep: Notify,
}

/// Whether the runner still takes work. Invariant: once `accepting` is false it never turns
/// true again, and `root` is cancelled and `tracker` closed right after it turns
/// (`Runner::begin_shutdown`, the one place that changes any of the three), so every worker
/// token (a child of `root`) ends and shutdown waits for every task `tracker` spawned.
struct Life {
    accepting: AtomicBool,
    root: CancellationToken,
    tracker: TaskTracker,
}

/// The retention sweeper's view of the store (see `retention`).
#[derive(Default)]
struct Retained {
    /// Finished operations in the store, as of the last sweep plus those finished since.
    finished: AtomicUsize,
    /// Whether the sweeper has no expiry scheduled (so the next finish must wake it).
    sweeper_idle: AtomicBool,
}

/// This node's hold on its work (see `recovery`). Invariant: while `lost` is true, nothing
/// is claimed; `claiming` is held across a claim and the launch of what it claimed, and while
/// the node takes back what it left when its lease ended, so neither sees the other half
/// done; a submission takes its slot to start at once under it too (see `at_once`), so that
/// no claim starts more than the room it saw.
#[derive(Default)]
struct Lease {
    /// This node's lease ended before it could renew it.
    lost: AtomicBool,
    claiming: tokio::sync::Mutex<()>,
}

/// Claims the dispatcher makes besides the ordinary one, only when one may be needed (so
/// the hot path makes no extra store call). Set by whoever may have made one needed, cleared
/// by the dispatcher before it claims.
struct Pending {
    /// Batches may wait for the dispatcher's own claim of them (see `batch`).
    control: AtomicBool,
    /// Work may wait for this node's worker sessions (see `workers`).
    remote: AtomicBool,
}

/// The runner: a cheap `Clone` handle over shared state.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

struct Shared {
    /// The kinds this node knows: in process, and declared by workers.
    kinds: kinds::Kinds,
    store: Arc<dyn Store>,
    config: RunnerConfig,
    /// The operations this node runs now, and its counts by kind (running, waiting) that
    /// the running limits and the queue bounds read; its invariant is written beside it.
    running: running::RunningSet,
    /// Who to wake when something changed.
    wakes: Wakes,
    bus: Arc<bus::Bus>,
    /// Whether this runner still takes work, and what ends with it.
    life: Life,
    /// The retention sweeper's view of the store.
    retained: Retained,
    /// This node's hold on its work.
    lease: Lease,
    /// What this node counts for Prometheus (see [`crate::metrics`]).
    metrics: Arc<crate::metrics::Metrics>,
    /// Claims the dispatcher makes besides the ordinary one.
    pending: Pending,
    /// The last summary read (see `admin`).
    summary: Mutex<Option<admin::KeptSummary>>,
    /// The WatchOperations readers.
    fanout: Arc<fanout::Fanout>,
    /// The worker sessions open on this node.
    sessions: workers::Sessions,
    /// The kinds whose start rate held due work back at this node's last claim of them, with
    /// the rate: what a QUEUED operation of theirs waits for (see `queries`).
    throttled: DashMap<String, crate::store::Rate>,
}

impl Runner {
    /// Starts a runner over `store`: takes this node's lease, takes over the work of nodes
    /// whose lease ended (at start, for the embedded stores: everything the last process was
    /// running) by the restart rule, then starts work.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be read or holds unreadable data; the runner
    /// never starts on a store it could not recover. [`Error::InvalidArgument`] when
    /// `registry` holds a kind under a built-in kind's name or descriptors that cannot be used.
    pub async fn start(
        registry: Registry,
        store: Arc<dyn Store>,
        config: RunnerConfig,
    ) -> Result<Self, Error> {
        // The feed is followed from its head as it is before recovery, so that no change made
        // by another node meanwhile is missed.
        let followed = if store.is_exclusive() {
            None
        } else {
            Some(store.changes(None, 0).await?.next)
        };
        for builtin in [batch::CANCEL_KIND, batch::DELETE_KIND] {
            if registry.contains(builtin) {
                return Err(Error::invalid_argument(
                    "kinds",
                    format!("kind {builtin:?} is built into the runner; register yours under another name"),
                ));
            }
        }
        // The types of every in-process kind that gives its own.
        let types = crate::types::Types::new();
        for (name, task) in registry.kinds() {
            if let Some(files) = task.descriptors() {
                types.add(name, &files).map_err(|e| {
                    Error::invalid_argument(
                        "descriptors",
                        format!("kind {name:?} registers descriptors that cannot be used: {e}"),
                    )
                })?;
            }
        }
        let runner = Self {
            shared: Arc::new_cyclic(|shared| Shared {
                kinds: kinds::Kinds::new(with_batches(registry, shared), types),
                metrics: Arc::new(crate::metrics::Metrics::new(store.commit_stats())),
                store,
                running: running::RunningSet::default(),
                throttled: DashMap::new(),
                wakes: Wakes::default(),
                bus: Arc::new(bus::Bus::new(followed.is_some())),
                life: Life {
                    accepting: AtomicBool::new(true),
                    root: CancellationToken::new(),
                    tracker: TaskTracker::new(),
                },
                retained: Retained::default(),
                lease: Lease::default(),
                // A batch left by the last process may be waiting.
                pending: Pending {
                    control: AtomicBool::new(true),
                    remote: AtomicBool::new(false),
                },
                summary: Mutex::new(None),
                fanout: Arc::default(),
                sessions: workers::Sessions::default(),
                config,
            }),
        };
        // Declared kinds are known before recovery applies the restart rule to their work.
        runner.shared.kinds.load(&*runner.shared.store).await?;
        if runner.shared.store.is_exclusive() {
            // The last process's worker sessions went with it (their work is taken over
            // below).
            for (name, _) in runner
                .shared
                .store
                .registered(crate::store::Registered::Session)
                .await?
            {
                runner
                    .shared
                    .store
                    .unregister(crate::store::Registered::Session, &name)
                    .await?;
            }
        }
        runner.recover().await?;
        if followed.is_some() {
            // The queue bounds hold over all nodes from the first submission.
            runner.recount().await?;
        }
        // On an exclusive store no other node holds work or can take this node's over: no
        // lease to renew, no orphans but the last process's (taken over by `recover`).
        let shared_store = followed.is_some().then_some([Task::Leases, Task::Recount]);
        for task in [
            Task::Dispatch,
            Task::Deadlines,
            Task::Retention,
            Task::Schedules,
        ]
        .into_iter()
        .chain(shared_store.into_iter().flatten())
        {
            let runner = runner.clone();
            runner.shared.life.tracker.clone().spawn(async move {
                match task {
                    Task::Dispatch => runner.dispatch_loop().await,
                    Task::Deadlines => runner.deadline_loop().await,
                    Task::Leases => runner.lease_loop().await,
                    Task::Retention => runner.sweep_loop().await,
                    Task::Recount => runner.recount_loop().await,
                    Task::Schedules => runner.fire_loop().await,
                }
            });
        }
        if let Some(after) = followed {
            let follower = runner.clone();
            runner
                .shared
                .life
                .tracker
                .spawn(async move { follower.follow_loop(after).await });
        }
        info!(node = %runner.shared.config.node, shared_store = followed.is_some(), "runner started");
        Ok(runner)
    }

    /// The kinds registered in this process.
    pub fn registry(&self) -> &Registry {
        self.shared.kinds.in_process()
    }

    /// The message types this runner knows: oprun's, its in-process kinds', and those of the
    /// kinds workers declared.
    pub fn types(&self) -> &crate::types::Types {
        self.shared.kinds.types()
    }

    /// The configuration.
    pub fn config(&self) -> &RunnerConfig {
        &self.shared.config
    }

    /// Whether this runner can serve: not shutting down, and its store answers a read within
    /// `timeout` (for readiness probes: `/readyz`, `grpc.health.v1`).
    ///
    /// # Errors
    /// [`Error::ShuttingDown`], or [`Error::Store`] when the store fails or does not answer
    /// in time.
    pub async fn ready(&self, timeout: Duration) -> Result<(), Error> {
        if !self.shared.life.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        // A read of an id no operation has: it reaches the table every call reads.
        let probe = OperationId::from_stored("readiness-probe".to_owned());
        match tokio::time::timeout(timeout, self.shared.store.get(&probe)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Store(crate::store::StoreError::unavailable(
                format!("the store did not answer within {} ms", timeout.as_millis()),
            ))),
        }
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared.metrics
    }

    /// This node's metrics in the Prometheus text format, the gauges read now.
    pub fn metrics_text(&self) -> String {
        let gauges = self.lock_slots().by_kind();
        self.shared.metrics.encode(&gauges)
    }

    /// Completes when shutdown begins ([`begin_shutdown`](Self::begin_shutdown)).
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.shared.life.root.clone().cancelled_owned()
    }

    /// Every change of every operation from now on, after it is durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OperationChanged>> {
        self.shared.bus.subscribe()
    }

    /// Runs an embedder's servers and shuts everything down in the right order, in one call:
    /// `servers` (built to stop gracefully on [`stopping`](Self::stopping), e.g. tonic's
    /// `serve_with_incoming_shutdown(.., runner.stopping())` and axum's
    /// `with_graceful_shutdown(runner.stopping())`) run until `signal` completes or they end
    /// by themselves; then shutdown begins (new work refused, Wait calls and watch streams
    /// released, so that the servers' in-flight calls end), the servers finish, and
    /// [`shutdown`](Self::shutdown) gives running workers `grace` and closes the store.
    /// Returns what the servers returned.
    ///
    /// ```no_run
    /// # async fn run(runner: oprun::Runner, listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
    /// let routes = oprun::server::routes(&runner)?;
    /// let grpc = tonic::transport::Server::builder().add_routes(routes).serve_with_incoming_shutdown(
    ///     tokio_stream::wrappers::TcpListenerStream::new(listener),
    ///     runner.stopping(),
    /// );
    /// let ctrl_c = async { let _ = tokio::signal::ctrl_c().await; };
    /// runner.serve_until(ctrl_c, grpc, std::time::Duration::from_secs(30)).await??;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    pub async fn serve_until<T>(
        &self,
        signal: impl Future<Output = ()>,
        servers: impl Future<Output = T>,
        grace: Duration,
    ) -> Result<T, Error> {
        tokio::pin!(servers);
        let served = tokio::select! {
            served = &mut servers => served,
            () = signal => {
                self.begin_shutdown();
                servers.await
            }
        };
        self.shutdown(grace).await?;
        Ok(served)
    }

    /// Stops gracefully: [`begin_shutdown`](Self::begin_shutdown), then waits up to `grace`
    /// for running workers, gives up this node's lease and closes the store. Operations
    /// interrupted this way stay RUNNING in the store and are resumed or aborted by the
    /// restart rule (on the next start, or by another node); they are never reported as
    /// CANCELLED, because no client cancelled them.
    ///
    /// # Errors
    /// [`Error::Store`] when the final flush of the store fails.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), Error> {
        self.begin_shutdown();
        if tokio::time::timeout(grace, self.shared.life.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "workers still running after the shutdown grace period; leaving them to recovery"
            );
        }
        // Its worker sessions went with it: their records, and their leases (what they ran
        // is for the restart rule, here at the next start or on another node at once).
        for session in self.shared.sessions.all() {
            let store = &self.shared.store;
            let gone = store
                .unregister(crate::store::Registered::Session, &session.name)
                .await
                .and(
                    store
                        .heartbeat(&session.name, std::time::SystemTime::UNIX_EPOCH)
                        .await,
                );
            if let Err(e) = gone {
                warn!(session = %session.name, error = %e, "could not end a worker session");
            }
        }
        // Others may take over what this node left at once, rather than when its lease ends.
        if let Err(e) = self
            .shared
            .store
            .heartbeat(&self.shared.config.node, std::time::SystemTime::UNIX_EPOCH)
            .await
        {
            warn!(error = %e, "could not give up this node's lease");
        }
        self.shared.store.close().await?;
        info!("shut down");
        Ok(())
    }

    /// The first, synchronous half of shutdown: refuse new submissions, start nothing new,
    /// cancel every running worker with the reason "shutdown", and release Wait calls.
    pub fn begin_shutdown(&self) {
        if !self.shared.life.accepting.swap(false, Ordering::AcqRel) {
            return;
        }
        info!(running = self.running(), "shutting down");
        self.shared
            .running
            .each(|r| r.mark(crate::model::CancelReason::Shutdown));
        self.shared.life.root.cancel();
        self.shared.life.tracker.close();
    }

    /// How many operations are not done yet, as this node counts them (queued or running).
    /// The counts follow the store's answers to this node's writes, so for a moment after an
    /// end is committed a read may show it done while it is still counted here.
    pub fn unfinished(&self) -> usize {
        self.lock_slots().unfinished()
    }

    /// How many operations this node runs now.
    pub fn running(&self) -> usize {
        self.lock_slots().running()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, running::slots::Slots> {
        self.shared.running.slots()
    }

    /// Now, to the microsecond (the precision operations keep).
    fn now(&self) -> std::time::SystemTime {
        crate::model::time::to_micros(self.shared.config.clock.now())
    }
}

/// The runner's background tasks.
#[derive(Clone, Copy)]
enum Task {
    Dispatch,
    Deadlines,
    Leases,
    Retention,
    Recount,
    Schedules,
}
