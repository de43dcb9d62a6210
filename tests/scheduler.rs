//! The scheduler in process, with tokio's clock paused: grace periods, Wait timeouts and caps,
//! progress coalescing, recovery after a crash, and shutdown. No sockets here (paused time and
//! real sockets do not mix).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::sleep_input;
use oprun::model::{OperationRecord, State};
use oprun::proto::oprun::v1::{SleepInput, SleepOutput};
use oprun::store::memory::MemoryStore;
use oprun::store::{Inserted, Store};
use oprun::{
    Code, Kind, Registry, Runner, RunnerConfig, Submission, Task, TaskContext, TaskError,
    TaskOptions,
};

/// Reports progress `steps` times in a tight loop, yielding between reports.
struct Chatty;

impl Kind for Chatty {
    const KIND: &'static str = "chatty";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Chatty {
    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        for i in 1..=input.steps {
            ctx.progress(i64::from(i), i64::from(input.steps), "ticks");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(SleepOutput {
            steps_done: input.steps,
        })
    }
}

/// A kind that is not safe to run twice.
struct OnceOnly;

impl Kind for OnceOnly {
    const KIND: &'static str = "once";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for OnceOnly {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry_safe(false)
    }

    async fn run(&self, _input: SleepInput, _ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        Ok(SleepOutput { steps_done: 1 })
    }
}

fn registry() -> Registry {
    let mut r = Registry::with_builtins();
    r.register(common::StubbornTask)
        .expect("a kind of its own name");
    r.register(Chatty).expect("a kind of its own name");
    r.register(OnceOnly).expect("a kind of its own name");
    r
}

/// A runner whose wall clock follows tokio's (paused) clock.
async fn start(store: Arc<dyn Store>, config: RunnerConfig) -> Runner {
    let config = config.clock(Arc::new(oprun::scheduler::PausedClock::new()));
    Runner::start(registry(), store, config)
        .await
        .expect("runner starts")
}

/// A worker that ignores its token is aborted after the grace period, and the operation still
/// ends CANCELLED, saying so.
#[tokio::test(start_paused = true)]
async fn stubborn_worker_is_aborted_after_grace() {
    let runner = start(Arc::new(MemoryStore::new()), RunnerConfig::default()).await;
    let op = runner
        .submit(Submission::new("stubborn", sleep_input(3_600_000, 1, "")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(runner.get(&op.id).await.unwrap().state, State::Running);
    runner.cancel(&op.id).await.unwrap();
    let before_grace = runner.wait(&op.id, Duration::from_secs(29)).await.unwrap();
    assert!(
        !before_grace.is_done(),
        "still within the 30 s grace period"
    );
    assert!(before_grace.requested_cancellation);
    let done = runner.wait(&op.id, Duration::from_secs(2)).await.unwrap();
    assert_eq!(done.state, State::Cancelled);
    assert_eq!(done.error_code(), Some(Code::Cancelled as i32));
    let message = match &done.outcome {
        Some(oprun::model::Outcome::Error(s)) => s.message.clone(),
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(message.contains("grace period"), "{message}");
    assert_eq!(
        runner.running(),
        0,
        "the aborted worker's slot is free again"
    );
}

/// Wait returns at its timeout with the operation not done, and never waits past the
/// server's cap.
#[tokio::test(start_paused = true)]
async fn wait_times_out_and_is_capped() {
    let runner = start(
        Arc::new(MemoryStore::new()),
        RunnerConfig::default().max_wait(Duration::from_secs(60)),
    )
    .await;
    let op = runner
        .submit(Submission::new("sleep", sleep_input(3_600_000, 1, "")))
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let r = runner.wait(&op.id, Duration::from_secs(10)).await.unwrap();
    assert!(!r.is_done());
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    let t0 = tokio::time::Instant::now();
    let r = runner
        .wait(&op.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(!r.is_done());
    assert_eq!(t0.elapsed(), Duration::from_secs(60), "capped at max_wait");
    runner.cancel(&op.id).await.unwrap();
}

/// Wait wakes at the moment the operation finishes, not at its timeout.
#[tokio::test(start_paused = true)]
async fn wait_wakes_on_completion() {
    let runner = start(Arc::new(MemoryStore::new()), RunnerConfig::default()).await;
    let op = runner
        .submit(Submission::new("sleep", sleep_input(5_000, 5, "")))
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let r = runner.wait(&op.id, Duration::from_secs(50)).await.unwrap();
    assert!(r.is_done());
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5_100),
        "{waited:?}"
    );
}

/// Progress is persisted coalesced (a few writes, not one per report) and always at the end.
#[tokio::test(start_paused = true)]
async fn progress_writes_are_coalesced() {
    let store = common::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
    let runner = start(store.clone(), RunnerConfig::default()).await;
    let op = runner
        .submit(Submission::new("chatty", sleep_input(0, 1000, "")))
        .await
        .unwrap();
    let done = runner.wait(&op.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, State::Succeeded);
    // 1000 reports over ~1 s of virtual time at one write per 250 ms: a handful of writes.
    let updates = store.updates.load(Ordering::SeqCst);
    assert!(
        updates <= 12,
        "{updates} store updates for 1000 progress reports"
    );
    let stored = store.get(&op.id).await.unwrap().unwrap();
    assert_eq!(
        stored.progress.completed, 1000,
        "the final progress is persisted"
    );
    assert_eq!(stored.state, State::Succeeded);
}

/// After a crash, queued operations are queued again; a running retry-safe one is re-run with
/// attempt 2; a running one of a kind that is not retry-safe ends ABORTED saying why.
#[tokio::test(start_paused = true)]
async fn recovery_requeues_or_aborts() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let insert = |kind: &str, state: State| {
        let store = store.clone();
        let kind = kind.to_owned();
        async move {
            let mut r = OperationRecord::new_queued(kind, sleep_input(10, 1, ""), None);
            r.state = state;
            match store.insert(r).await.unwrap() {
                Inserted::New(r) => r,
                other => unreachable!("no request_id: {other:?}"),
            }
        }
    };
    let queued = insert("sleep", State::Queued).await;
    let running_safe = insert("sleep", State::Running).await;
    let running_once = insert("once", State::Running).await;
    let unknown = insert("retired-kind", State::Queued).await;

    let runner = start(store.clone(), RunnerConfig::default()).await;
    let aborted = runner.get(&running_once.id).await.unwrap();
    assert_eq!(aborted.state, State::Failed);
    assert_eq!(aborted.error_code(), Some(Code::Aborted as i32));
    match &aborted.outcome {
        Some(oprun::model::Outcome::Error(s)) => {
            assert!(s.message.contains("restarted"), "{}", s.message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let gone = runner.get(&unknown.id).await.unwrap();
    assert_eq!(gone.error_code(), Some(Code::FailedPrecondition as i32));

    let rerun = runner
        .wait(&running_safe.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(rerun.state, State::Succeeded);
    assert_eq!(rerun.attempt, 2);
    let q = runner
        .wait(&queued.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(q.state, State::Succeeded);
    assert_eq!(q.attempt, 1);
}

/// Shutdown cancels workers with the reason "shutdown": the operation is left RUNNING in the
/// store for recovery (never CANCELLED), Wait calls are released, and new submissions are
/// refused as UNAVAILABLE.
#[tokio::test(start_paused = true)]
async fn shutdown_is_not_a_cancel() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runner = start(store.clone(), RunnerConfig::default()).await;
    let op = runner
        .submit(Submission::new("sleep", sleep_input(3_600_000, 10, "")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiter = {
        let runner = runner.clone();
        let id = op.id.clone();
        tokio::spawn(async move { runner.wait(&id, Duration::from_secs(50)).await })
    };
    tokio::task::yield_now().await;
    runner.shutdown(Duration::from_secs(5)).await.unwrap();
    let waited = waiter.await.unwrap().unwrap();
    assert!(!waited.is_done(), "Wait is released with the latest state");
    let stored = store.get(&op.id).await.unwrap().unwrap();
    assert_eq!(
        stored.state,
        State::Running,
        "left for recovery, not CANCELLED"
    );
    assert!(stored.outcome.is_none());
    let e = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
}

/// A kind of its own under the name of a built-in batch kind.
struct Impostor;

impl Kind for Impostor {
    const KIND: &'static str = oprun::scheduler::batch::CANCEL_KIND;
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Impostor {
    async fn run(&self, _input: SleepInput, _ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        Ok(SleepOutput { steps_done: 0 })
    }
}

/// Registration never replaces a kind silently: a second kind under a taken name is refused
/// and the first stays; a kind named as a built-in batch kind stops the runner from starting.
#[tokio::test]
async fn a_taken_kind_name_is_refused() {
    let mut kinds = registry();
    let taken = kinds.register(Chatty).map(|_| ()).unwrap_err();
    assert_eq!(
        taken,
        oprun::RegisterError::Taken {
            kind: "chatty".into()
        }
    );
    assert!(taken
        .to_string()
        .contains("\"chatty\" is registered already"));
    assert!(kinds.contains("chatty"));
    assert!(Registry::with_builtins()
        .register(oprun::kinds::sleep::Sleep)
        .is_err());

    kinds.register(Impostor).expect("free in the registry");
    let refused = Runner::start(kinds, Arc::new(MemoryStore::new()), RunnerConfig::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        tonic::Status::from(refused).code(),
        tonic::Code::InvalidArgument
    );
}
