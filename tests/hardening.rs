//! Production hardening, in process: retries with backoff, deadlines, delayed start,
//! backpressure and limits, retention, and store faults. Timers run on tokio's paused clock;
//! retention is wall-clock based, so its tests run in real time with short periods.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::sleep_input;
use oprun::filter::Filter;
use oprun::model::{OperationId, OperationRecord, Outcome, State};
use oprun::proto::oprun::v1::{SleepInput, SleepOutput};
use oprun::store::memory::MemoryStore;
use oprun::store::sqlite::{SqliteOptions, SqliteStore};
use oprun::store::{Store, StoreError};
use oprun::{
    Code, Kind, Registry, RetryPolicy, Runner, RunnerConfig, Submission, Task, TaskContext,
    TaskError, TaskOptions,
};
use tokio::time::Instant;

/// Fails its first `steps` attempts with the error chosen by `fail_message`
/// ("unavailable", "invalid", "permanent", "after7"), then succeeds. Deterministic backoff:
/// 1 s, doubling, no jitter, 4 attempts.
struct Flaky;

fn flaky_error(kind: &str) -> TaskError {
    match kind {
        "invalid" => TaskError::invalid_argument("bad data"),
        "permanent" => TaskError::unavailable("down for good").permanent(),
        "after7" => {
            TaskError::new(Code::ResourceExhausted, "busy").retry_after(Duration::from_secs(7))
        }
        _ => TaskError::unavailable("backend unavailable"),
    }
}

impl Kind for Flaky {
    const KIND: &'static str = "flaky";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Flaky {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry(
            RetryPolicy::exponential(4)
                .initial_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(60))
                .multiplier(2.0)
                .jitter(0.0),
        )
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        if ctx.attempt() <= input.steps {
            return Err(flaky_error(&input.fail_message));
        }
        Ok(SleepOutput {
            steps_done: ctx.attempt(),
        })
    }
}

/// Sleeps; its default timeout is 3 s and at most 2 may wait at once.
struct Bounded;

impl Kind for Bounded {
    const KIND: &'static str = "bounded";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Bounded {
    fn options(&self) -> TaskOptions {
        TaskOptions::default()
            .default_timeout(Duration::from_secs(3))
            .max_queued(2)
            .max_concurrency(1)
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        let d = Duration::try_from(input.duration.unwrap_or_default()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(SleepOutput { steps_done: 1 }),
            () = ctx.cancelled() => Err(TaskError::cancelled()),
        }
    }
}

fn flaky(fails: u32, how: &str) -> Submission {
    Submission::new("flaky", sleep_input(0, fails, how))
}

/// Asks to be retried at once on its first attempt; later attempts run until cancelled.
struct AgainAtOnce;

impl Kind for AgainAtOnce {
    const KIND: &'static str = "again";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for AgainAtOnce {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry(RetryPolicy::exponential(2))
    }

    async fn run(&self, _: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        if ctx.attempt() == 1 {
            return Err(TaskError::unavailable("once more").retry_after(Duration::ZERO));
        }
        ctx.cancelled().await;
        Err(TaskError::cancelled())
    }
}

fn registry() -> Registry {
    let mut r = Registry::with_builtins();
    r.register(Flaky).expect("a kind of its own name");
    r.register(AgainAtOnce).expect("a kind of its own name");
    r.register(Bounded).expect("a kind of its own name");
    r.register(common::StubbornTask)
        .expect("a kind of its own name");
    r
}

/// A runner whose wall clock follows tokio's (paused) clock.
async fn runner_with(store: Arc<dyn Store>, config: RunnerConfig) -> Runner {
    let config = config.clock(Arc::new(oprun::scheduler::PausedClock::new()));
    Runner::start(registry(), store, config)
        .await
        .expect("runner starts")
}

/// A runner on a memory store whose full queues refuse at once.
async fn runner() -> Runner {
    runner_with(Arc::new(MemoryStore::new()), refusing()).await
}

/// The default configuration, but a full queue refuses at once (no `queue_full_wait`).
fn refusing() -> RunnerConfig {
    RunnerConfig::default().queue_full_wait(Duration::ZERO)
}

fn error_of(r: &OperationRecord) -> (i32, String) {
    match &r.outcome {
        Some(Outcome::Error(s)) => (s.code, s.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn code_of(e: oprun::Error) -> tonic::Status {
    tonic::Status::from(e)
}

/// A retryable failure queues the operation again with attempt + 1, the next attempt time and
/// the last error visible; backoff is exponential (1 s, then 2 s); it then succeeds.
#[tokio::test(start_paused = true)]
async fn retryable_failures_back_off_and_retry() {
    let runner = runner().await;
    let t0 = Instant::now();
    let op = runner.submit(flaky(2, "unavailable")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiting = runner.get(&op.id).await.unwrap();
    assert_eq!(waiting.state, State::Queued);
    assert_eq!(waiting.attempt, 2);
    assert!(
        waiting.next_attempt_time.is_some(),
        "the next attempt time is visible"
    );
    let last = waiting.last_error.clone().expect("the last error is kept");
    assert_eq!(last.code, Code::Unavailable as i32);
    assert!(
        waiting.status_message.contains("attempt 2"),
        "{}",
        waiting.status_message
    );

    let done = runner.wait(&op.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, State::Succeeded);
    assert_eq!(done.attempt, 3);
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_millis(3100),
        "backoff 1 s + 2 s, got {elapsed:?}"
    );
}

/// When the attempts run out, the operation fails with the last error and the attempt count.
#[tokio::test(start_paused = true)]
async fn final_failure_keeps_the_last_error() {
    let runner = runner().await;
    let op = runner.submit(flaky(10, "unavailable")).await.unwrap();
    let done = runner.wait(&op.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, State::Failed);
    assert_eq!(done.attempt, 4, "max_attempts 4");
    let (code, message) = error_of(&done);
    assert_eq!(code, Code::Unavailable as i32);
    assert!(
        message.contains("backend unavailable") && message.contains("attempt 4"),
        "{message}"
    );
}

/// Non-retryable failures (by code, or marked permanent) fail at once, on attempt 1.
#[tokio::test(start_paused = true)]
async fn non_retryable_failures_fail_at_once() {
    let runner = runner().await;
    for how in ["invalid", "permanent"] {
        let t0 = Instant::now();
        let op = runner.submit(flaky(1, how)).await.unwrap();
        let done = runner.wait(&op.id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(done.state, State::Failed, "{how}");
        assert_eq!(done.attempt, 1, "{how}");
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{how}: no backoff"
        );
    }
}

/// An explicit "retry after" outcome sets the delay instead of the policy's backoff.
#[tokio::test(start_paused = true)]
async fn retry_after_sets_the_delay() {
    let runner = runner().await;
    let t0 = Instant::now();
    let op = runner.submit(flaky(1, "after7")).await.unwrap();
    let done = runner.wait(&op.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, State::Succeeded);
    assert_eq!(done.attempt, 2);
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(7) && elapsed < Duration::from_millis(7100),
        "{elapsed:?}"
    );
}

/// A running operation past its deadline has its token cancelled and ends
/// DEADLINE_EXCEEDED (code 4), not CANCELLED; a worker that ignores the token gets the
/// cancel grace period first.
#[tokio::test(start_paused = true)]
async fn deadline_ends_running_operations() {
    let runner = runner().await;
    let t0 = Instant::now();
    let op = runner
        .submit(
            Submission::new("sleep", sleep_input(3_600_000, 10, ""))
                .timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert!(op.deadline.is_some(), "the deadline is visible in metadata");
    let done = runner.wait(&op.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, State::Failed);
    let (code, message) = error_of(&done);
    assert_eq!(code, Code::DeadlineExceeded as i32);
    assert!(message.contains("deadline"), "{message}");
    assert!(!done.requested_cancellation, "no client cancelled it");
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_millis(5100),
        "{elapsed:?}"
    );

    let t0 = Instant::now();
    let stubborn = runner
        .submit(
            Submission::new("stubborn", sleep_input(3_600_000, 1, ""))
                .timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let done = runner
        .wait(&stubborn.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(error_of(&done).0, Code::DeadlineExceeded as i32);
    assert!(error_of(&done).1.contains("grace period"));
    assert!(
        t0.elapsed() >= Duration::from_secs(35),
        "5 s deadline + 30 s grace"
    );
}

/// A queued operation whose deadline passes ends at once without running; a kind's default
/// timeout applies when the submission sets none.
#[tokio::test(start_paused = true)]
async fn deadline_expires_queued_operations_and_kind_default_applies() {
    let runner = runner().await;
    // `bounded` runs one at a time with a 3 s default timeout.
    let first = runner
        .submit(Submission::new("bounded", sleep_input(10_000, 1, "")))
        .await
        .unwrap();
    let second = runner
        .submit(Submission::new("bounded", sleep_input(10, 1, "")))
        .await
        .unwrap();
    let t0 = Instant::now();
    let second_done = runner
        .wait(&second.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(error_of(&second_done).0, Code::DeadlineExceeded as i32);
    assert!(second_done.start_time.is_none(), "it never started");
    assert!(t0.elapsed() <= Duration::from_secs(3));
    let first_done = runner
        .wait(&first.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        error_of(&first_done).0,
        Code::DeadlineExceeded as i32,
        "default timeout 3 s"
    );
}

/// A delayed start waits QUEUED (with the time visible) until its time, then runs; it can be
/// cancelled while waiting, and it survives a restart.
#[tokio::test(start_paused = true)]
async fn delayed_start_waits_and_survives_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runner = runner_with(store.clone(), RunnerConfig::default()).await;
    let at = SystemTime::now() + Duration::from_secs(10);
    let delayed = |ms| Submission::new("sleep", sleep_input(ms, 1, "")).not_before(at);
    let op = runner.submit(delayed(0)).await.unwrap();
    let cancelled = runner.submit(delayed(0)).await.unwrap();
    let survivor = runner.submit(delayed(0)).await.unwrap();
    assert_eq!(
        op.next_attempt_time,
        Some(oprun::model::time::to_micros(at))
    );

    runner.cancel(&cancelled.id).await.unwrap();
    let c = runner.get(&cancelled.id).await.unwrap();
    assert_eq!(c.state, State::Cancelled, "cancelled at once while waiting");

    let early = runner
        .wait(&op.id, Duration::from_millis(9_900))
        .await
        .unwrap();
    assert_eq!(early.state, State::Queued, "not before its time");
    let done = runner.wait(&op.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.state, State::Succeeded);

    // Restart before the survivor's (new) time.
    runner.shutdown(Duration::from_secs(1)).await.unwrap();
    let again = Submission::new("sleep", sleep_input(0, 1, ""))
        .not_before(SystemTime::now() + Duration::from_secs(20));
    let runner = runner_with(store.clone(), RunnerConfig::default()).await;
    let later = runner.submit(again).await.unwrap();
    let kept = runner.get(&survivor.id).await.unwrap();
    assert!(matches!(
        kept.state,
        State::Queued | State::Running | State::Succeeded
    ));
    let still = runner
        .wait(&later.id, Duration::from_secs(19))
        .await
        .unwrap();
    assert_eq!(still.state, State::Queued, "the delay survives a restart");
    let done = runner
        .wait(&later.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.state, State::Succeeded);
}

/// Past the queue bound (global or per kind) SubmitTask answers RESOURCE_EXHAUSTED with a
/// RetryInfo, and nothing already accepted is dropped.
#[tokio::test(start_paused = true)]
async fn full_queues_push_back() {
    let runner = runner_with(
        Arc::new(MemoryStore::new()),
        refusing().max_running(1).max_queued(3),
    )
    .await;
    let blocker = runner
        .submit(Submission::new("sleep", sleep_input(1_000, 1, "")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut accepted = vec![blocker.id.clone()];
    for _ in 0..3 {
        accepted.push(
            runner
                .submit(Submission::new("sleep", sleep_input(0, 1, "")))
                .await
                .unwrap()
                .id,
        );
    }
    let refused = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap_err();
    let status = code_of(refused);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-queued"),
        "{}",
        status.message()
    );
    use tonic_types::StatusExt;
    let retry = status.get_details_retry_info().expect("RetryInfo detail");
    assert!(retry.retry_delay.is_some());
    for id in &accepted {
        let done = runner.wait(id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            done.state,
            State::Succeeded,
            "accepted work is never dropped"
        );
    }

    // The per-kind bound: `bounded` allows 2 waiting.
    let runner = self::runner().await;
    let _running = runner
        .submit(Submission::new("bounded", sleep_input(100, 1, "")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    runner
        .submit(Submission::new("bounded", sleep_input(0, 1, "")))
        .await
        .unwrap();
    runner
        .submit(Submission::new("bounded", sleep_input(0, 1, "")))
        .await
        .unwrap();
    let refused = runner
        .submit(Submission::new("bounded", sleep_input(0, 1, "")))
        .await
        .unwrap_err();
    let status = code_of(refused);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("bounded"), "{}", status.message());
    runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .expect("other kinds still accepted");
}

/// With `queue_full_wait`, a submission to a full queue waits for room instead of being
/// refused: it is accepted as soon as a queued operation starts, and refused only when no
/// room comes within the wait. (Before it, the submission was refused at once.)
#[tokio::test(start_paused = true)]
async fn a_full_queue_slows_submissions_to_the_pace_of_the_work() {
    let runner = runner_with(
        Arc::new(MemoryStore::new()),
        RunnerConfig::default()
            .max_running(1)
            .max_queued(1)
            .queue_full_wait(Duration::from_secs(5)),
    )
    .await;
    let first = runner
        .submit(Submission::new("sleep", sleep_input(1_000, 1, "")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let queued = runner
        .submit(Submission::new("sleep", sleep_input(60_000, 1, "")))
        .await
        .unwrap();
    // Full: this one waits until `first` ends (after 1 s) and `queued` starts.
    let t0 = Instant::now();
    let waited = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .expect("accepted once there was room");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_secs(2),
        "waited {took:?}"
    );
    assert_eq!(runner.get(&first.id).await.unwrap().state, State::Succeeded);
    assert_eq!(runner.get(&queued.id).await.unwrap().state, State::Running);
    // Full again, and nothing leaves the queue for 60 s: refused once the 5 s are over.
    let t0 = Instant::now();
    let refused = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap_err();
    assert_eq!(code_of(refused).code(), tonic::Code::ResourceExhausted);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "waited {took:?}"
    );
    assert_eq!(runner.get(&waited.id).await.unwrap().state, State::Queued);
}

/// Issue 6, item 10: a repeated `request_id` returns the original operation even while the
/// queue is full (it answered RESOURCE_EXHAUSTED before); a new request is still refused.
#[tokio::test(start_paused = true)]
async fn a_repeated_request_id_is_answered_while_the_queue_is_full() {
    let runner = runner_with(
        Arc::new(MemoryStore::new()),
        refusing().max_running(1).max_queued(1),
    )
    .await;
    let _running = runner
        .submit(Submission::new("sleep", sleep_input(1_000, 1, "")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let request = Submission::new("sleep", sleep_input(0, 1, ""))
        .request_id("0b1d7c1e-7a43-4e8e-9d57-5a3c2d1b0f00".into());
    let original = runner.submit(request.clone()).await.unwrap();
    // The queue is full now.
    let refused = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap_err();
    assert_eq!(code_of(refused).code(), tonic::Code::ResourceExhausted);
    let repeated = runner.submit(request).await.expect("a repeat is answered");
    assert_eq!(repeated.id, original.id);
}

/// Oversized inputs and non-positive timeouts are INVALID_ARGUMENT naming the limit.
#[tokio::test(start_paused = true)]
async fn limits_are_named() {
    let runner = runner_with(
        Arc::new(MemoryStore::new()),
        RunnerConfig::default().max_input_bytes(64),
    )
    .await;
    let big = sleep_input(0, 1, &"x".repeat(100));
    let status = code_of(
        runner
            .submit(Submission::new("sleep", big))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("limit is 64 bytes"),
        "{}",
        status.message()
    );
    let status = code_of(
        runner
            .submit(Submission::new("sleep", sleep_input(0, 1, "")).timeout(Duration::ZERO))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("timeout"));
}

/// Finished operations are removed after the retention period; unfinished ones never are.
#[tokio::test]
async fn retention_removes_old_finished_operations() {
    let runner = runner_with(
        Arc::new(MemoryStore::new()),
        RunnerConfig::default().retention(Duration::from_millis(300)),
    )
    .await;
    let done = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap();
    let running = runner
        .submit(Submission::new("sleep", sleep_input(60_000, 1, "")))
        .await
        .unwrap();
    runner.wait(&done.id, Duration::from_secs(5)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match runner.get(&done.id).await {
            Err(oprun::Error::NotFound { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not removed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        runner.get(&running.id).await.is_ok(),
        "unfinished operations are kept"
    );
    runner.cancel(&running.id).await.unwrap();
}

/// With a cap on retained finished operations, the oldest are removed first. The cap is
/// enforced in batches: between sweeps it may be exceeded by 1% of the cap (at least one).
#[tokio::test]
async fn retention_cap_keeps_the_newest() {
    let runner = runner_with(
        Arc::new(MemoryStore::new()),
        RunnerConfig::default().max_retained(3),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let op = runner
            .submit(Submission::new("sleep", sleep_input(0, 1, "")))
            .await
            .unwrap();
        runner.wait(&op.id, Duration::from_secs(5)).await.unwrap();
        ids.push(op.id);
    }
    let everything = Filter::parse("").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = runner.list(&everything, 0, 100).await.unwrap();
        let kept: Vec<_> = page.operations.iter().map(|r| r.id.clone()).collect();
        if kept.len() <= 4 {
            assert!(kept.len() >= 3, "never below the cap: {}", kept.len());
            assert_eq!(kept, ids[8 - kept.len()..].to_vec(), "the newest are kept");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cap not enforced within 10 s: {}",
            kept.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second store on the same data directory is refused with a clear message; once the first
/// is closed, the directory can be opened again.
#[tokio::test]
async fn data_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    let err = SqliteStore::open(dir.path(), SqliteOptions::default())
        .err()
        .expect("a second open must be refused");
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(err.to_string().contains("another oprun process"), "{err}");
    first.close().await.unwrap();
    let again =
        SqliteStore::open(dir.path(), SqliteOptions::default()).expect("reopen after close");
    again.close().await.unwrap();
}

/// A full disk (simulated by a size cap) makes submissions fail with UNAVAILABLE while the
/// operations already stored stay intact and readable.
#[tokio::test]
async fn full_store_fails_submissions_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            dir.path(),
            SqliteOptions::default().max_size_bytes(96 * 1024),
        )
        .unwrap(),
    );
    let runner = runner_with(store.clone(), RunnerConfig::default()).await;
    let mut stored = Vec::new();
    let refusal = loop {
        match runner
            .submit(Submission::new(
                "sleep",
                sleep_input(3_600_000, 1, &"p".repeat(2000)),
            ))
            .await
        {
            Ok(op) => stored.push(op.id),
            Err(e) => break tonic::Status::from(e),
        }
        assert!(stored.len() < 1000, "the size cap never bit");
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(refusal.message().contains("full"), "{}", refusal.message());
    assert!(!stored.is_empty());
    for id in &stored {
        let r = store
            .get(id)
            .await
            .unwrap()
            .expect("stored operations stay intact");
        assert_eq!(r.kind, "sleep");
    }
}

/// A store failure is answered UNAVAILABLE (which clients retry), never INTERNAL.
#[tokio::test]
async fn store_failures_are_unavailable() {
    let down = common::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
    let runner = runner_with(down.clone(), RunnerConfig::default()).await;
    down.refuse_writes.store(true, Ordering::SeqCst);
    down.refuse_reads.store(true, Ordering::SeqCst);
    let submit = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(submit).code(), tonic::Code::Unavailable);
    let get = runner.get(&OperationId::generate()).await.unwrap_err();
    assert_eq!(tonic::Status::from(get).code(), tonic::Code::Unavailable);
    let list = runner
        .list(&Filter::parse("").unwrap(), 0, 10)
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(list).code(), tonic::Code::Unavailable);
}

/// Attempts on record never exceed the retry policy (runs counted by the worker itself).
#[tokio::test(start_paused = true)]
async fn runs_never_exceed_the_policy() {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    struct Counted;
    impl Kind for Counted {
        const KIND: &'static str = "counted";
        type Input = SleepInput;
        type Output = SleepOutput;
    }

    impl Task for Counted {
        fn options(&self) -> TaskOptions {
            TaskOptions::default().retry(RetryPolicy::exponential(3).jitter(0.0))
        }
        async fn run(&self, _: SleepInput, _: TaskContext) -> Result<SleepOutput, TaskError> {
            RUNS.fetch_add(1, Ordering::SeqCst);
            Err(TaskError::unavailable("always"))
        }
    }
    let mut r = registry();
    r.register(Counted).expect("a kind of its own name");
    let runner = Runner::start(
        r,
        Arc::new(MemoryStore::new()),
        RunnerConfig::default().clock(Arc::new(oprun::scheduler::PausedClock::new())),
    )
    .await
    .unwrap();
    let op = runner
        .submit(Submission::new("counted", sleep_input(0, 1, "")))
        .await
        .unwrap();
    let done = runner.wait(&op.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, State::Failed);
    assert_eq!(RUNS.load(Ordering::SeqCst), 3);
    assert_eq!(done.attempt, 3);
}

/// A cancel that arrives while a failed attempt's retry is being recorded ends the operation
/// CANCELLED at once, even when every slot is then taken (it must not sit QUEUED with a
/// cancelled token). The store holds the retry's write open until the cancel is in.
#[tokio::test(start_paused = true)]
async fn cancel_during_retry_bookkeeping_ends_the_operation() {
    let gate = common::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
    let (reached, release) =
        gate.hold_writes(|r| r.kind == "flaky" && r.state == State::Queued && r.attempt == 2);
    let runner = runner_with(gate.clone(), RunnerConfig::default().max_running(1)).await;
    let flaky_op = runner.submit(flaky(1, "unavailable")).await.unwrap();
    // Queued behind it; takes the only slot for an hour once the flaky attempt releases it.
    let long = runner
        .submit(Submission::new("sleep", sleep_input(3_600_000, 1, "")))
        .await
        .unwrap();
    reached.notified().await;
    runner.cancel(&flaky_op.id).await.unwrap();
    release.notify_one();
    let done = runner
        .wait(&flaky_op.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.state, State::Cancelled, "cancelled, not left queued");
    assert_eq!(error_of(&done).0, Code::Cancelled as i32);
    runner.cancel(&long.id).await.unwrap();
}

/// A submission whose caller goes away while its insert is under way gives its place in the
/// queue back (the insert goes on, on a task of its own, and counts what it stored): with a
/// queue of one, later submissions find room again. (The place stayed taken for good: each
/// caller that went away midway shrank the queue by one, until it refused everything.)
#[tokio::test(start_paused = true)]
async fn a_submission_whose_caller_went_away_gives_its_place_back() {
    let gate = common::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
    let (reached, release) = gate.hold_writes(|r| r.kind == "sleep" && r.attempt == 1);
    let runner = runner_with(gate.clone(), refusing().max_queued(1)).await;
    let submitting = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .submit(Submission::new("sleep", sleep_input(0, 1, "")))
                .await
        }
    });
    reached.notified().await;
    // The caller goes away while the insert waits.
    submitting.abort();
    assert!(submitting.await.unwrap_err().is_cancelled());
    gate.hold_writes(|_| false);
    release.notify_one();
    let until = Instant::now() + Duration::from_secs(5);
    let next = loop {
        match runner
            .submit(Submission::new("sleep", sleep_input(0, 1, "")))
            .await
        {
            Ok(next) => break next,
            Err(e) => {
                assert!(Instant::now() < until, "the queue stayed full: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let done = runner.wait(&next.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.state, State::Succeeded);
}

/// On a store only this node uses, a submission with room starts at once (answered RUNNING)
/// when its kind is safe to retry; one of a kind that is not is queued (a shutdown during
/// its insert must leave it QUEUED, not RUNNING for the restart rule to abort).
#[tokio::test(start_paused = true)]
async fn only_kinds_safe_to_retry_start_at_once() {
    let runner = runner().await;
    let safe = runner
        .submit(Submission::new("sleep", sleep_input(3_600_000, 1, "")))
        .await
        .unwrap();
    assert_eq!(safe.state, State::Running, "{safe:?}");
    assert_eq!(safe.attempt, 1);
    let unsafe_to_retry = runner
        .submit(Submission::new("again", sleep_input(0, 1, "")))
        .await
        .unwrap();
    assert_eq!(unsafe_to_retry.state, State::Queued);
    runner.cancel(&safe.id).await.unwrap();
}

/// A running slot taken for a submission to start at once, and not used (its insert found
/// the operation holding its unique key), goes back with a wake of the dispatcher: work
/// queued meanwhile for want of that slot starts. (Given back silently, the slot stayed
/// free while the queued operation waited for an unrelated wake.)
#[tokio::test(start_paused = true)]
async fn a_slot_taken_to_start_at_once_and_not_used_wakes_the_dispatcher() {
    let gate = common::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
    let runner = runner_with(gate.clone(), RunnerConfig::default().max_running(2)).await;
    let keyed =
        || Submission::new("sleep", sleep_input(3_600_000, 1, "")).unique_key("k".to_owned());
    let holder = runner.submit(keyed()).await.unwrap();
    assert_eq!(holder.state, State::Running);
    let (reached, release) = gate.hold_writes(|r| r.unique_key.as_deref() == Some("k"));
    // Takes the second slot, and waits in its insert.
    let repeat = tokio::spawn({
        let runner = runner.clone();
        async move { runner.submit(keyed()).await }
    });
    reached.notified().await;
    let queued = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap();
    assert_eq!(queued.state, State::Queued, "no slot was free");
    gate.hold_writes(|_| false);
    release.notify_one();
    assert_eq!(repeat.await.unwrap().unwrap().id, holder.id);
    let done = runner
        .wait(&queued.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.state, State::Succeeded, "{done:?}");
    runner.cancel(&holder.id).await.unwrap();
}

/// A worker that returned gives its slot to the next operation while its end is written:
/// with one slot, the next operation starts although the store holds the first one's end
/// open. (Held until the end was written, the slot made every run wait a commit.)
#[tokio::test(start_paused = true)]
async fn a_returned_worker_frees_its_slot_before_its_end_is_written() {
    let gate = common::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
    let (reached, release) = gate.hold_writes(|r| r.kind == "sleep" && r.is_done());
    let runner = runner_with(gate.clone(), RunnerConfig::default().max_running(1)).await;
    let first = runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap();
    let next = runner
        .submit(Submission::new("sleep", sleep_input(3_600_000, 1, "")))
        .await
        .unwrap();
    reached.notified().await;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while runner.get(&next.id).await.unwrap().state != State::Running {
        assert!(
            tokio::time::Instant::now() < until,
            "the next operation waited for the first one's end to be written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runner.get(&first.id).await.unwrap().state, State::Running);
    release.notify_one();
    let done = runner
        .wait(&first.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.state, State::Succeeded);
    runner.cancel(&next.id).await.unwrap();
}

/// A retry due at once can be claimed again before this node has followed the retry's own
/// write: the new run is what this node holds from then on. (Following the older write
/// removed the new run from the running map: a cancel then never reached its worker, and it
/// ran on.)
#[tokio::test(start_paused = true)]
async fn a_retry_claimed_before_its_write_was_followed_stays_held() {
    let gate = common::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
    // Shared, as PostgreSQL is: on an exclusive store a claim looks only for what this node
    // counts queued, which a retry is once its write was followed.
    gate.shared.store(true, Ordering::SeqCst);
    let (reached, release) =
        gate.hold_replies(|r| r.kind == "again" && r.state == State::Queued && r.attempt == 2);
    let runner = runner_with(gate.clone(), RunnerConfig::default()).await;
    let op = runner
        .submit(Submission::new("again", sleep_input(0, 1, "")))
        .await
        .unwrap();
    reached.notified().await;
    // Anything that wakes the dispatcher now (here a submission) claims the retry.
    runner
        .submit(Submission::new("sleep", sleep_input(0, 1, "")))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let now = runner.get(&op.id).await.unwrap();
        if now.state == State::Running && now.attempt == 2 {
            break;
        }
        assert!(Instant::now() < until, "attempt 2 never started: {now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    runner.cancel(&op.id).await.unwrap();
    let done = runner.wait(&op.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        done.state,
        State::Cancelled,
        "the cancel never reached attempt 2's worker: {done:?}"
    );
    assert_eq!(runner.unfinished(), 0);
}
