//! Several nodes sharing one store: each a real server (its own runner, its own tokio runtime,
//! its own loopback port) over one [`MemoryStore::shared`], driven by real gRPC clients. This
//! is the protocol a PostgreSQL backend will carry between machines: work is claimed from the
//! store, each node holds what it runs under a lease, changes reach the other nodes through
//! the store's feed, and a node that dies has its work taken over when its lease ends.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{error_code, metadata, sleep_input};
use oprun::model::OperationId;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, Operation, WaitOperationRequest,
};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{SleepInput, SleepOutput, SubmitTaskRequest};
use oprun::store::memory::MemoryStore;
use oprun::store::Store;
use oprun::{
    Code, Kind, Registry, Runner, RunnerConfig, Task, TaskContext, TaskError, TaskOptions,
};
use prost_types::Any;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// How many times each operation's worker started, over all nodes.
#[derive(Default)]
struct Tally(Mutex<HashMap<OperationId, usize>>);

impl Tally {
    fn runs(&self) -> HashMap<OperationId, usize> {
        self.0.lock().unwrap().clone()
    }
}

/// Sleeps like `sleep` (cooperatively cancelled), counting its runs in a [`Tally`].
struct Counted(Arc<Tally>);

impl Kind for Counted {
    const KIND: &'static str = "counted";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Counted {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry_safe(true)
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        *self
            .0
             .0
            .lock()
            .unwrap()
            .entry(ctx.id().clone())
            .or_default() += 1;
        let duration = input
            .duration
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(SleepOutput { steps_done: 1 }),
            () = ctx.cancelled() => Err(TaskError::cancelled()),
        }
    }
}

/// Like [`Counted`], but not safe to run twice: a node that dies while running it leaves it
/// ABORTED.
struct Once(Arc<Tally>);

impl Kind for Once {
    const KIND: &'static str = "once";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Once {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry_safe(false)
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        Counted(Arc::clone(&self.0)).run(input, ctx).await
    }
}

/// A node: a runner and its server on a runtime of their own, so that the node can die (its
/// runtime dropped mid-flight: no shutdown, no last write, its lease left to run out) while
/// the others go on.
struct Node {
    name: String,
    addr: SocketAddr,
    runner: Runner,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Node {
    /// Starts a node named `name` over `store`.
    fn start(
        name: &str,
        store: &Arc<MemoryStore>,
        tally: &Arc<Tally>,
        config: RunnerConfig,
    ) -> Self {
        let mut registry = Registry::with_builtins();
        registry
            .register(Counted(Arc::clone(tally)))
            .expect("a kind of its own name");
        registry
            .register(Once(Arc::clone(tally)))
            .expect("a kind of its own name");
        let store: Arc<dyn Store> = Arc::clone(store) as Arc<dyn Store>;
        let config = config
            .node(name.to_owned())
            .follow_interval(Duration::from_millis(20));
        // Built and entered on a plain thread: a runtime cannot be blocked on from the test's.
        let (runtime, runner, addr, shutdown) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            let (runner, addr, shutdown) = runtime.block_on(async move {
                let runner = Runner::start(registry, store, config)
                    .await
                    .expect("the runner starts");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                let (tx, rx) = oneshot::channel::<()>();
                tokio::spawn(oprun::server::serve(
                    listener,
                    runner.clone(),
                    async {
                        let _ = rx.await;
                    },
                    Duration::from_secs(5),
                ));
                (runner, addr, tx)
            });
            (runtime, runner, addr, shutdown)
        })
        .join()
        .expect("the node starts");
        Self {
            name: name.to_owned(),
            addr,
            runner,
            runtime: Some(runtime),
            shutdown: Some(shutdown),
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    async fn submit(&self, kind: &str, input: Any) -> Operation {
        TaskServiceClient::new(self.channel().await)
            .submit_task(SubmitTaskRequest {
                kind: kind.into(),
                input: Some(input),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
    }

    async fn get(&self, name: &str) -> Operation {
        OperationsClient::new(self.channel().await)
            .get_operation(GetOperationRequest { name: name.into() })
            .await
            .expect("get")
            .into_inner()
    }

    async fn cancel(&self, name: &str) {
        OperationsClient::new(self.channel().await)
            .cancel_operation(CancelOperationRequest { name: name.into() })
            .await
            .expect("cancel");
    }

    /// WaitOperation on this node, up to `seconds`.
    async fn wait(&self, name: &str, seconds: i64) -> Operation {
        OperationsClient::new(self.channel().await)
            .wait_operation(WaitOperationRequest {
                name: name.into(),
                timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            })
            .await
            .expect("wait")
            .into_inner()
    }

    /// Polls GetOperation on this node until `ready` holds, up to 10 s.
    async fn until(&self, name: &str, what: &str, ready: impl Fn(&Operation) -> bool) -> Operation {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let op = self.get(name).await;
            if ready(&op) {
                return op;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never {what} (seen from node {}): {:?}",
                self.name,
                metadata(&op)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the node gracefully: it gives up its lease.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.runner
            .shutdown(Duration::from_secs(5))
            .await
            .expect("the node shuts down");
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// The node dies: its runtime is dropped with everything on it, nothing more is written.
    fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn counted(ms: u64) -> Any {
    sleep_input(ms, 1, "")
}

fn running(op: &Operation) -> bool {
    metadata(op).state == State::Running as i32
}

/// The node that runs (or ran) an operation, from the store.
async fn owner(store: &MemoryStore, name: &str) -> Option<String> {
    let id = OperationId::parse_name(name).expect("a name");
    store.get(&id).await.expect("get").and_then(|r| r.owner)
}

/// Nodes `a` and `b` of one running at a time: `a` starts alone and takes a long operation
/// (returned), so that what is submitted next runs on `b`.
async fn full_a_then_b(store: &Arc<MemoryStore>, tally: &Arc<Tally>) -> (Node, Node, Operation) {
    let config = RunnerConfig::default().max_running(1);
    let a = Node::start("a", store, tally, config.clone());
    let long = a.submit("counted", counted(3_600_000)).await;
    a.until(&long.name, "ran on a", running).await;
    let b = Node::start("b", store, tally, config);
    (a, b, long)
}

/// Work submitted to a full node runs on another; a Wait on the first returns as soon as the
/// other ends it; a cancel sent to one node stops the worker on the other, which ends the
/// operation CANCELLED for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_work_and_follow_each_other() {
    let store = Arc::new(MemoryStore::shared());
    let tally = Arc::new(Tally::default());
    let (a, b, long) = full_a_then_b(&store, &tally).await;
    assert_eq!(owner(&store, &long.name).await.as_deref(), Some("a"));

    let short = a.submit("counted", counted(50)).await;
    // Wait answers when the operation ends (well within its 60 s), not at its timeout.
    let done = tokio::time::timeout(Duration::from_secs(10), a.wait(&short.name, 60))
        .await
        .expect("a Wait on a still waits 10 s after b ended the operation");
    assert!(
        done.done,
        "a Wait on a returned before b ended it: {done:?}"
    );
    assert_eq!(error_code(&done), None, "{done:?}");
    assert_eq!(owner(&store, &short.name).await.as_deref(), Some("b"));

    // Cancelled through b, stopped on a; both see the one result.
    b.cancel(&long.name).await;
    let on_b = b.wait(&long.name, 10).await;
    assert!(
        on_b.done,
        "the worker on a never stopped: {:?}",
        metadata(&on_b)
    );
    assert_eq!(error_code(&on_b), Some(Code::Cancelled as i32));
    assert_eq!(a.get(&long.name).await, on_b);
    assert_eq!(
        tally
            .runs()
            .get(&OperationId::parse_name(&long.name).unwrap()),
        Some(&1)
    );
    a.stop().await;
    b.stop().await;
}

/// A node that dies mid-work loses it when its lease ends: a node still up takes it over by
/// the restart rule (a retry-safe kind runs again there, attempt 2; another ends ABORTED, never
/// run twice). A node that stops gracefully gives its lease up, so its work moves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_of_a_node_that_dies_is_taken_over() {
    let store = Arc::new(MemoryStore::shared());
    let tally = Arc::new(Tally::default());
    let config = RunnerConfig::default().lease(Duration::from_millis(600));
    let doomed = Node::start("doomed", &store, &tally, config.clone());
    let again = doomed.submit("counted", counted(3_600_000)).await;
    let once = doomed.submit("once", counted(3_600_000)).await;
    doomed.until(&again.name, "ran", running).await;
    doomed.until(&once.name, "ran", running).await;

    let survivor = Node::start("survivor", &store, &tally, config);
    doomed.kill();
    let moved = survivor
        .until(&again.name, "ran again on the survivor", |op| {
            running(op) && metadata(op).attempt == 2
        })
        .await;
    assert!(!moved.done);
    assert_eq!(
        owner(&store, &again.name).await.as_deref(),
        Some("survivor")
    );
    let aborted = survivor.until(&once.name, "ended", |op| op.done).await;
    assert_eq!(
        error_code(&aborted),
        Some(Code::Aborted as i32),
        "{aborted:?}"
    );
    let runs = tally.runs();
    assert_eq!(
        runs.get(&OperationId::parse_name(&again.name).unwrap()),
        Some(&2)
    );
    assert_eq!(
        runs.get(&OperationId::parse_name(&once.name).unwrap()),
        Some(&1)
    );

    // A graceful stop hands the work over without waiting for the lease.
    let heir = Node::start(
        "heir",
        &store,
        &tally,
        RunnerConfig::default().lease(Duration::from_secs(3600)),
    );
    survivor.stop().await;
    let inherited = heir
        .until(&again.name, "ran on the heir", |op| {
            running(op) && metadata(op).attempt == 3
        })
        .await;
    assert!(!inherited.done);
    heir.cancel(&again.name).await;
    assert_eq!(
        error_code(&heir.wait(&again.name, 10).await),
        Some(Code::Cancelled as i32)
    );
    heir.stop().await;
}

/// Two nodes taking work from one store, submissions spread over both, never start one
/// operation twice, and both take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_run_one_operation_twice() {
    let store = Arc::new(MemoryStore::shared());
    let tally = Arc::new(Tally::default());
    let config = RunnerConfig::default().max_running(2);
    let nodes = [
        Node::start("one", &store, &tally, config.clone()),
        Node::start("two", &store, &tally, config),
    ];
    let mut names = Vec::new();
    for i in 0..60 {
        names.push(nodes[i % 2].submit("counted", counted(20)).await.name);
    }
    let mut owners = HashMap::<String, usize>::new();
    for (i, name) in names.iter().enumerate() {
        let op = nodes[(i + 1) % 2].wait(name, 30).await;
        assert!(op.done, "{name} not done");
        assert_eq!(error_code(&op), None, "{op:?}");
        *owners
            .entry(owner(&store, name).await.expect("an owner"))
            .or_default() += 1;
    }
    let runs = tally.runs();
    assert_eq!(runs.len(), names.len());
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    assert_eq!(owners.len(), 2, "one node did all the work: {owners:?}");
    let [one, two] = nodes;
    one.stop().await;
    two.stop().await;
}

/// A node that cannot renew its lease (its store refuses writes) stops its worker once the
/// lease has ended, writes none of its result, and when it can write again queues the
/// operation again by the restart rule (attempt 2), which then runs to its end. Without the
/// lease check the worker would finish and its end would land once writes came back, as
/// attempt 1, although another node could have taken the work over meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_renew_its_lease_stops_its_workers() {
    use common::faults::FaultyStore;
    use std::sync::atomic::Ordering;
    let store = FaultyStore::new(Arc::new(MemoryStore::shared()));
    let config = RunnerConfig::default()
        .node("alone".into())
        .lease(Duration::from_millis(600))
        .follow_interval(Duration::from_millis(20));
    let runner = Runner::start(
        Registry::with_builtins(),
        Arc::clone(&store) as Arc<dyn Store>,
        config,
    )
    .await
    .expect("the runner starts");
    let op = runner
        .submit(oprun::Submission::new("sleep", sleep_input(1_500, 3, "")))
        .await
        .expect("submit");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runner.get(&op.id).await.expect("get").state != oprun::model::State::Running {
        assert!(std::time::Instant::now() < deadline, "it never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.refuse_writes.store(true, Ordering::SeqCst);
    // Past the lease and past the worker's own end: nothing it did may land.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    store.refuse_writes.store(false, Ordering::SeqCst);
    let done = runner
        .wait(&op.id, Duration::from_secs(20))
        .await
        .expect("wait");
    assert!(done.is_done(), "{done:?}");
    assert_eq!(done.state, oprun::model::State::Succeeded, "{done:?}");
    assert_eq!(
        done.attempt, 2,
        "the first run was stopped, not finished: {done:?}"
    );
    runner
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
}

/// `max_queued` holds over all nodes of a shared store: what one node queued fills the queue
/// for the others once they count the store (every `queue_recount`), and work one node
/// queued and another ran leaves the queue of both. (Counted by each node alone, the second
/// node took a full queue more, and the first stayed full for good of work it never ran.)
#[tokio::test(start_paused = true)]
async fn the_queue_bound_holds_over_all_nodes() {
    use oprun::model::State as Stored;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
    let start = |node: &str, max_running: usize| {
        let config = RunnerConfig::default()
            .node(node.into())
            .max_queued(3)
            .queue_full_wait(Duration::ZERO)
            .max_running(max_running)
            .queue_recount(Duration::from_millis(100));
        Runner::start(Registry::with_builtins(), Arc::clone(&store), config)
    };
    let a = start("a", 1).await.expect("a starts");
    let b = start("b", 3).await.expect("b starts");
    let submit = |runner: &Runner, ms: u64| {
        let runner = runner.clone();
        async move {
            runner
                .submit(oprun::Submission::new("sleep", sleep_input(ms, 1, "")))
                .await
        }
    };
    // `a` runs a long one and queues three more; the dispatchers take what they can.
    let long = submit(&a, 3_600_000).await.expect("a takes the first");
    let mut queued = Vec::new();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..3 {
        queued.push(submit(&a, 3_600_000).await.expect("a has room"));
    }
    // `b` (room for three) runs what `a` queued, once it hears of it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let states = futures::future::join_all(queued.iter().map(|op| a.get(&op.id))).await;
    let running = states
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.state == Stored::Running))
        .count();
    assert_eq!(running, 3, "b runs what a queued: {states:?}");
    assert_eq!(a.get(&long.id).await.expect("get").state, Stored::Running);
    // Nothing waits: `a` has room again although it queued three it never ran.
    for _ in 0..3 {
        submit(&a, 3_600_000)
            .await
            .expect("a's queue emptied when b ran its work");
    }
    // Those three wait (`a` is full, `b` is full): once `b` counts the store, it refuses.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = submit(&b, 1)
        .await
        .expect_err("the cluster's queue is full");
    assert_eq!(
        tonic::Status::from(refused).code(),
        tonic::Code::ResourceExhausted
    );
    for runner in [a, b] {
        runner
            .shutdown(Duration::from_secs(1))
            .await
            .expect("shutdown");
    }
}

/// Waits for its cancellation and notes when it came.
struct Watched(Arc<Mutex<Option<tokio::time::Instant>>>);

impl Kind for Watched {
    const KIND: &'static str = "watched";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Watched {
    async fn run(&self, _: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        ctx.cancelled().await;
        *self.0.lock().unwrap() = Some(tokio::time::Instant::now());
        Err(TaskError::cancelled())
    }
}

/// A node whose lease renewal hangs (a silent network) stops its workers when its lease ends
/// by its own count. (Checked only between renewals, it stopped them after the hung renewal
/// and the hung rescue had each timed out: up to two thirds of a lease late, while another
/// node could already run the work.)
#[tokio::test(start_paused = true)]
async fn workers_stop_when_the_lease_ends_though_the_renewal_hangs() {
    use common::faults::FaultyStore;
    use std::sync::atomic::Ordering;
    let store = FaultyStore::new(Arc::new(MemoryStore::shared()));
    let cancelled = Arc::new(Mutex::new(None));
    let mut registry = Registry::with_builtins();
    registry
        .register(Watched(Arc::clone(&cancelled)))
        .expect("a kind of its own name");
    let lease = Duration::from_secs(3);
    let config = RunnerConfig::default().node("alone".into()).lease(lease);
    let runner = Runner::start(registry, Arc::clone(&store) as Arc<dyn Store>, config)
        .await
        .expect("the runner starts");
    let started = tokio::time::Instant::now();
    runner
        .submit(oprun::Submission::new("watched", sleep_input(0, 1, "")))
        .await
        .expect("submit");
    // The renewal a third of a lease in goes through; every one after it hangs.
    tokio::time::sleep(lease / 2).await;
    store.hang_leases.store(true, Ordering::SeqCst);
    tokio::time::sleep(lease * 3).await;
    let at = cancelled
        .lock()
        .unwrap()
        .expect("the worker was stopped")
        .duration_since(started);
    let ends = lease / 3 + lease;
    assert!(
        at <= ends,
        "the lease ended {ends:?} in (renewed {:?} in), the worker was stopped {at:?} in",
        lease / 3
    );
    runner.begin_shutdown();
}

/// A rescue that hangs (given up after a third of the lease, each time) while renewals go
/// through never costs the node its lease. (With the lease's end fixed before a renewal, a
/// renewal followed by a slow rescue let the old end fire: every worker was stopped as "lease
/// lost" on a node that held its lease.)
#[tokio::test(start_paused = true)]
async fn a_hanging_rescue_never_costs_a_renewed_lease() {
    use common::faults::FaultyStore;
    use std::sync::atomic::Ordering;
    let store = FaultyStore::new(Arc::new(MemoryStore::shared()));
    let cancelled = Arc::new(Mutex::new(None));
    let mut registry = Registry::with_builtins();
    registry
        .register(Watched(Arc::clone(&cancelled)))
        .expect("a kind of its own name");
    let config = RunnerConfig::default()
        .node("alone".into())
        .lease(Duration::from_secs(3));
    let runner = Runner::start(registry, Arc::clone(&store) as Arc<dyn Store>, config)
        .await
        .expect("the runner starts");
    // (After the start, whose recovery looks for orphans once.)
    store.hang_rescues.store(true, Ordering::SeqCst);
    let op = runner
        .submit(oprun::Submission::new("watched", sleep_input(0, 1, "")))
        .await
        .expect("submit");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        *cancelled.lock().unwrap(),
        None,
        "the worker was stopped on a node whose renewals went through"
    );
    let now = runner.get(&op.id).await.expect("get");
    assert_eq!(now.state, oprun::model::State::Running, "{now:?}");
    runner.begin_shutdown();
}

/// The watch streams work across nodes: from a, WatchOperation follows to its end an operation
/// b runs, and WatchOperations sees b's ends, both through the store's feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_follow_the_work_of_other_nodes() {
    use oprun::proto::oprun::v1::watch_service_client::WatchServiceClient;
    use oprun::proto::oprun::v1::{WatchOperationRequest, WatchOperationsRequest};
    let store = Arc::new(MemoryStore::shared());
    let tally = Arc::new(Tally::default());
    let (a, b, long) = full_a_then_b(&store, &tally).await;
    let mut ends = WatchServiceClient::new(a.channel().await)
        .watch_operations(WatchOperationsRequest {
            filter: "state = SUCCEEDED".into(),
        })
        .await
        .expect("watch all")
        .into_inner();
    let short = a.submit("counted", counted(300)).await;
    let mut one = WatchServiceClient::new(a.channel().await)
        .watch_operation(WatchOperationRequest {
            name: short.name.clone(),
        })
        .await
        .expect("watch one")
        .into_inner();
    let mut last = None;
    while let Some(op) = tokio::time::timeout(Duration::from_secs(10), one.message())
        .await
        .expect("a change within 10 s")
        .expect("the stream")
    {
        last = Some(op);
    }
    let last = last.expect("states");
    assert!(
        last.done,
        "the stream on a ended before b ended it: {last:?}"
    );
    assert_eq!(owner(&store, &short.name).await.as_deref(), Some("b"));
    let ended = tokio::time::timeout(Duration::from_secs(10), ends.message())
        .await
        .expect("an end within 10 s")
        .expect("the stream")
        .expect("open");
    assert_eq!(ended.name, short.name);
    drop(ends);
    a.cancel(&long.name).await;
    a.stop().await;
    b.stop().await;
}
