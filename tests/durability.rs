//! What the store makes durable, and what the runner shows of it: a refused write is never
//! published (done never reverts), the write-ahead log stays within its bound under sustained
//! writes, and a damaged database file is refused at start-up and answered DATA_LOSS at run
//! time.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::binary::{oprun, run_to_exit};
use common::faults::FaultyStore;
use common::{error_code, metadata, sleep_input, TestServer};
use oprun::model::{Change, Fence, OperationRecord, Outcome, State};
use oprun::proto::google::longrunning::{DeleteOperationRequest, WaitOperationRequest};
use oprun::proto::oprun::v1::operation_metadata;
use oprun::store::sqlite::{SqliteOptions, SqliteStore};
use oprun::store::{Inserted, Store, StoreError};

use oprun::RunnerConfig;

/// A `tracing` writer into a shared buffer, to count what the runner logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything logged in this test process. Installed once as the global subscriber: a
    /// per-thread one misses events whose call sites another thread registered first.
    fn global() -> &'static Captured {
        static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Captured::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
            logs
        })
    }

    /// The lines that mention `needle`.
    fn lines_with(&self, needle: &str) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn state(op: &oprun::proto::google::longrunning::Operation) -> operation_metadata::State {
    operation_metadata::State::try_from(metadata(op).state).unwrap()
}

/// Issue 6, item 1: while the store refuses an operation's final write (a full disk), nothing
/// shows it done: WaitOperation keeps waiting, GetOperation answers RUNNING, Delete refuses a
/// running operation. The write is retried with backoff and logged once, not once per retry;
/// when the store takes it, Wait and Get agree on the result.
#[tokio::test]
async fn a_refused_end_is_never_published() {
    let logs = Captured::global();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("data"), SqliteOptions::default()).unwrap();
    let store = FaultyStore::new(Arc::new(sqlite));
    let server = TestServer::start_on(dir, store.clone(), RunnerConfig::default()).await;
    let op = server
        .submit("sleep", sleep_input(400, 2, "the end, 3,000 bytes long"))
        .await;
    // Wait until it runs, then fill the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&server.get_op(&op.name).await) != operation_metadata::State::Running {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.refuse_writes.store(true, Ordering::SeqCst);

    // The worker ends within 400 ms; its end cannot be written.
    let mut ops = server.operations().await;
    let waited = ops
        .wait_operation(WaitOperationRequest {
            name: op.name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !waited.done,
        "Wait showed an end the store never took: {waited:?}"
    );
    let got = server.get_op(&op.name).await;
    assert!(!got.done);
    assert_eq!(state(&got), operation_metadata::State::Running);
    let deleted = ops
        .delete_operation(DeleteOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        deleted.code(),
        tonic::Code::FailedPrecondition,
        "{deleted:?}"
    );
    let refused = store.refused.load(Ordering::SeqCst);
    assert!(
        refused >= 3,
        "the end was tried {refused} times in 2 s; it must be retried"
    );

    // Room again: the retried write goes through and everyone sees the same end.
    store.refuse_writes.store(false, Ordering::SeqCst);
    let waited = server.wait_done(&op.name).await;
    assert_eq!(error_code(&waited), Some(2), "UNKNOWN, from fail_message");
    let got = server.get_op(&op.name).await;
    assert_eq!(got, waited, "Get and Wait disagree after the write");
    assert_eq!(state(&got), operation_metadata::State::Failed);
    let stored = server
        .runner
        .get(&oprun::model::OperationId::parse_name(&op.name).unwrap())
        .await
        .unwrap();
    assert!(stored.is_done());

    let text = logs.lines_with(&op.name);
    assert_eq!(
        text.matches("the store refused").count(),
        1,
        "logged once per operation, not once per retry:\n{text}"
    );
    assert!(
        text.contains("the store took the write after refusing it"),
        "{text}"
    );
    server.stop().await;
}

/// A start the store refuses leaves the operation QUEUED (it never runs unrecorded); it starts
/// once the store takes it again.
#[tokio::test]
async fn a_refused_start_leaves_the_operation_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(Arc::new(oprun::store::memory::MemoryStore::new()));
    let server = TestServer::start_on(dir, store.clone(), RunnerConfig::default()).await;
    // The submission is taken; the RUNNING write that follows it (the claim) is refused.
    // (Due a moment later, it is queued: one due now with room would be stored started.)
    store.refuse_claims.store(true, Ordering::SeqCst);
    let op = server
        .runner
        .submit(
            oprun::Submission::new("gauge", sleep_input(0, 1, ""))
                .not_before(std::time::SystemTime::now() + Duration::from_millis(20)),
        )
        .await
        .unwrap();
    assert_eq!(op.state, State::Queued);
    // However slow this machine, the start is tried and refused, and tried again (a pass of
    // the dispatcher tries two claims: its batches', then the others').
    let before = store.refused.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.refused.load(Ordering::SeqCst) < before + 3 {
        assert!(Instant::now() < deadline, "the start is retried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let now = server.runner.get(&op.id).await.unwrap();
    assert_eq!(now.state, State::Queued, "{now:?}");
    assert_eq!(
        server.gauge.runs.load(Ordering::SeqCst),
        0,
        "it ran unrecorded"
    );
    store.refuse_claims.store(false, Ordering::SeqCst);
    let done = server.wait_done(&op.id.name()).await;
    assert!(done.done);
    assert_eq!(error_code(&done), None);
    server.stop().await;
}

/// A CancelOperation whose client goes away after the store took the cancel (its deadline
/// passed, its connection closed: the server drops the call) still has the cancel published:
/// the runner counts the operation done, and a Wait returns it at once. (The write and its
/// publication were one future that the caller could drop between the two: the operation
/// stayed counted as queued, and Waits slept until their timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_caller_went_away_is_still_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(Arc::new(oprun::store::memory::MemoryStore::new()));
    let server = TestServer::start_on(dir, store.clone(), RunnerConfig::default()).await;
    // Queued for a day: only the cancel ends it.
    let op = server
        .runner
        .submit(
            oprun::Submission::new("sleep", sleep_input(0, 1, ""))
                .not_before(SystemTime::now() + Duration::from_secs(86_400)),
        )
        .await
        .unwrap();
    assert_eq!(server.runner.unfinished(), 1);
    let (reached, release) = store.hold_replies(|r| r.state == State::Cancelled);
    let cancel = {
        let (runner, id) = (server.runner.clone(), op.id.clone());
        tokio::spawn(async move { runner.cancel(&id).await })
    };
    reached.notified().await;
    // The store took the cancel; its caller goes away before the answer.
    cancel.abort();
    let _ = cancel.await;
    release.notify_one();
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        server.runner.wait(&op.id, Duration::from_secs(60)),
    )
    .await
    .expect("a Wait for the cancelled operation returns at once, not at its timeout")
    .unwrap();
    assert_eq!(waited.state, State::Cancelled);
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        while server.runner.unfinished() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "the runner still counts the cancelled operation as unfinished"
    );
    server.stop().await;
}

/// Issue 6, item 2: under sustained writes with readers alongside, the write-ahead log file
/// never grows past its bound (plus one commit's pages), whereas it grew without bound before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_ahead_log_stays_bounded() {
    const LIMIT: u64 = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(bounded_store(dir.path(), LIMIT));
    let wal = dir.path().join("oprun.sqlite3-wal");
    let largest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (wal, largest, stop) = (wal.clone(), Arc::clone(&largest), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                largest.fetch_max(size, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // A reader that keeps read transactions coming, as Get and List do.
    let reader = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = store
                    .list(0, &oprun::filter::Filter::parse("").unwrap(), 50)
                    .await;
            }
        })
    };
    // 8 writers; every record carries 2 KB, so 12,000 writes put ~25 MB through the log.
    let mut writers = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for _ in 0..750 {
                let mut r =
                    OperationRecord::new_queued("sleep".into(), sleep_input(0, 1, ""), None);
                r.status_message = "x".repeat(2048);
                let Inserted::New(r) = store.insert(r).await.unwrap() else {
                    panic!("new");
                };
                let running = r
                    .apply(Change::Start { node: "n".into() }, SystemTime::now())
                    .unwrap();
                store
                    .write(&running, &Fence::Version(r.version))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    sampler.join().unwrap();
    let largest = largest.load(Ordering::SeqCst);
    // One commit may add up to a batch's pages past the point where the log restarts.
    assert!(
        largest <= LIMIT + LIMIT / 2,
        "the WAL reached {largest} bytes; its bound is {LIMIT}"
    );
    assert!(largest > 0, "the WAL was never seen");
    store.close().await.unwrap();
}

/// Writes `len` bytes of garbage in the middle of `path`.
fn damage(path: &std::path::Path, len: usize) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let size = f.seek(SeekFrom::End(0)).unwrap();
    assert!(
        size > 16 * 4096,
        "the file is too small to damage meaningfully: {size}"
    );
    let mut probe = [0u8; 1];
    f.seek(SeekFrom::Start(size / 2)).unwrap();
    f.read_exact(&mut probe).unwrap();
    f.seek(SeekFrom::Start(size / 2)).unwrap();
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8 ^ 0xa5).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
}

/// Fills a fresh store in `dir` with `n` finished operations and closes it (the WAL is copied
/// into the database file).
async fn filled_store(dir: &std::path::Path, n: usize) {
    let store = SqliteStore::open(dir, SqliteOptions::default()).unwrap();
    for i in 0..n {
        let mut r = OperationRecord::new_queued("sleep".into(), sleep_input(0, 1, ""), None);
        r.status_message = format!("operation {i} {}", "y".repeat(300));
        let Inserted::New(r) = store.insert(r).await.unwrap() else {
            panic!("new");
        };
        let failed = Outcome::error(oprun::Code::Unknown, "done");
        let done = r
            .apply(
                Change::Finish {
                    state: State::Failed,
                    outcome: failed,
                },
                SystemTime::now(),
            )
            .unwrap();
        store
            .write(&done, &Fence::Version(r.version))
            .await
            .unwrap();
    }
    store.close().await.unwrap();
}

/// Issue 6, item 3: a database file with damaged pages stops `oprun serve` with a clear
/// message (it started, and wrote into it, before); `oprun store check` names the damage and
/// exits non-zero, and says a sound file is sound.
#[tokio::test]
async fn a_damaged_file_is_refused_at_start_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    filled_store(&data, 600).await;
    let check = run_to_exit(oprun().args(["store", "check", "--data-dir"]).arg(&data)).await;
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "a sound store: {out}");
    assert!(out.contains("sound (600 operations"), "{out}");

    damage(&data.join("oprun.sqlite3"), 3000);
    let serve = run_to_exit(
        oprun()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data),
    )
    .await;
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(
        !serve.status.success(),
        "oprun served a damaged store: {err}"
    );
    assert!(err.contains("is damaged"), "{err}");
    assert!(
        err.contains("oprun store check"),
        "the message says what to do: {err}"
    );

    let check = run_to_exit(oprun().args(["store", "check", "--data-dir"]).arg(&data)).await;
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(out.contains("DAMAGED"), "{out}");
}

/// Issue 6, item 3: corruption met at run time is DATA_LOSS (never UNAVAILABLE, which clients
/// retry forever), logged as DATA_LOSS, and from then on the store refuses writes.
#[tokio::test]
async fn corruption_at_run_time_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), 1000).await;
    damage(&dir.path().join("oprun.sqlite3"), 64 << 10);
    let store =
        SqliteStore::open(dir.path(), SqliteOptions::default().integrity_check(false)).unwrap();
    let mut after = 0;
    let failure = loop {
        match store
            .list(after, &oprun::filter::Filter::parse("").unwrap(), 100)
            .await
        {
            Ok(page) if page.is_empty() => panic!("read every row of a damaged file"),
            Ok(page) => after = page.last().unwrap().seq,
            Err(e) => break e,
        }
    };
    assert!(matches!(failure, StoreError::Corrupt(_)), "{failure:?}");
    let status = tonic::Status::from(oprun::Error::from(failure));
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    let write = store
        .insert(OperationRecord::new_queued(
            "sleep".into(),
            sleep_input(0, 1, ""),
            None,
        ))
        .await
        .unwrap_err();
    assert!(matches!(write, StoreError::Corrupt(_)), "{write:?}");
}

/// A read that outlasts the writer's patience (here a read transaction held for 5 s, as
/// `oprun store check` beside a running server would) never stalls commits for much more than a
/// second: the log passes its bound while the read lasts, and is cut back to it once the read
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_delays_the_bound_not_the_writes() {
    const LIMIT: u64 = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(bounded_store(dir.path(), LIMIT));
    let insert = |store: Arc<SqliteStore>| async move {
        let mut r = OperationRecord::new_queued("sleep".into(), sleep_input(0, 1, ""), None);
        r.status_message = "x".repeat(2048);
        let started = Instant::now();
        store.insert(r).await.unwrap();
        started.elapsed()
    };
    for _ in 0..100 {
        insert(Arc::clone(&store)).await;
    }
    // A reader that holds its snapshot (and so the log) for 5 s.
    let path = dir.path().join("oprun.sqlite3");
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let reading = Arc::clone(&reading);
        std::thread::spawn(move || {
            let conn = rusqlite_reader(&path);
            conn.execute_batch("BEGIN").unwrap();
            let _: i64 = conn
                .query_row("SELECT COUNT(*) FROM operations", [], |r| r.get(0))
                .unwrap();
            std::thread::sleep(Duration::from_secs(5));
            conn.execute_batch("COMMIT").unwrap();
            reading.store(false, Ordering::SeqCst);
        })
    };
    // Writes go on while the read lasts; once the log is well past its bound they slow down,
    // so that the log stays tens of megabytes (not hundreds) and the copy back after the read
    // takes no longer on a slow disk than on a fast one.
    let wal = dir.path().join("oprun.sqlite3-wal");
    let mut slowest = Duration::ZERO;
    while reading.load(Ordering::SeqCst) {
        slowest = slowest.max(insert(Arc::clone(&store)).await);
        if std::fs::metadata(&wal).map_or(0, |m| m.len()) > 4 * LIMIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    reader.join().unwrap();
    let grown = std::fs::metadata(&wal).unwrap().len();
    assert!(
        slowest < Duration::from_millis(2500),
        "a write waited {slowest:?} behind the long read"
    );
    assert!(
        grown > LIMIT,
        "the log ({grown} bytes) never reached its bound"
    );
    // The read is over: once the writer's backoff has passed, its next restart copies what the
    // log holds and cuts it back to its bound. How many commits that takes depends on how fast
    // this machine writes, so write on until the log is back or a generous while has passed.
    let ended = Instant::now();
    let mut after = std::fs::metadata(&wal).unwrap().len();
    while after > LIMIT + LIMIT / 2 && ended.elapsed() < Duration::from_secs(30) {
        for _ in 0..100 {
            insert(Arc::clone(&store)).await;
        }
        after = std::fs::metadata(&wal).unwrap().len();
    }
    assert!(
        after <= LIMIT + LIMIT / 2,
        "the WAL is {after} bytes {:?} after the long read ended (it reached {grown}); its \
         bound is {LIMIT}",
        ended.elapsed()
    );
    store.close().await.unwrap();
}

/// A store in `dir` whose write-ahead log is bounded at `limit` bytes (commits synced as for a
/// process crash, to write fast).
fn bounded_store(dir: &std::path::Path, limit: u64) -> SqliteStore {
    SqliteStore::open(
        dir,
        SqliteOptions::default()
            .wal_limit_bytes(limit)
            .durability(oprun::store::sqlite::Durability::Normal),
    )
    .unwrap()
}

/// A plain read-only connection to a database file.
fn rusqlite_reader(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}
