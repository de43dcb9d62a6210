//! The real `oprun` binary as a child process: what survives `kill -9`, what a graceful
//! shutdown leaves for the next start, idempotency across restarts, and refusing to start on
//! a corrupt store.

mod common;

use common::binary::{oprun, spawn_serve, tail};

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{error_code, metadata, sleep_input};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
    WaitOperationRequest,
};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::SubmitTaskRequest;
use prost::Message;
use tonic::transport::Channel;

/// Poll interval when following an operation through GetOperation.
const POLL: Duration = Duration::from_millis(20);

/// Polls `child` until it exits or `limit` passes.
async fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `oprun serve` running as a child process. Dropping it kills the process (and, when the
/// test is failing, prints the tail of its log).
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `oprun serve` on a free loopback port over `data_dir`, with `extra` flags, and
    /// waits for its listening line.
    fn start(data_dir: &Path, log_name: &str, extra: &[&str]) -> Self {
        let log = data_dir
            .parent()
            .expect("data dir has a parent")
            .join(log_name);
        let mut cmd = oprun();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        let (child, addr) = spawn_serve(cmd, &log);
        Self { child, addr, log }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect")
    }

    async fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel().await)
    }

    async fn tasks(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel().await)
    }

    /// SIGKILL: no graceful shutdown of any kind.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit.
    async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        match wait_exit(&mut self.child, limit).await {
            Some(status) => status,
            None => panic!(
                "oprun did not exit within {limit:?} of SIGTERM; its log:\n{}",
                tail(&self.log, 30)
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn submit(
    tasks: &mut TaskServiceClient<Channel>,
    ms: u64,
    steps: u32,
    rid: &str,
) -> Operation {
    tasks
        .submit_task(SubmitTaskRequest {
            kind: "sleep".into(),
            input: Some(sleep_input(ms, steps, "")),
            request_id: rid.into(),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
}

async fn get(ops: &mut OperationsClient<Channel>, name: &str) -> Operation {
    ops.get_operation(GetOperationRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("get {name}: {:?}: {}", s.code(), s.message()))
        .into_inner()
}

/// Polls GetOperation until `pred` holds, for at most 20 s.
async fn poll_until(
    ops: &mut OperationsClient<Channel>,
    name: &str,
    what: &str,
    pred: impl Fn(&Operation) -> bool,
) -> Operation {
    let limit = Duration::from_secs(20);
    let deadline = Instant::now() + limit;
    loop {
        let op = get(ops, name).await;
        if pred(&op) {
            return op;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not {what} within {limit:?}; last seen: {:?}",
            metadata(&op)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (WaitOperation, bounded to 20 s in total) until the operation is done.
async fn wait_done(ops: &mut OperationsClient<Channel>, name: &str) -> Operation {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let op = ops
            .wait_operation(WaitOperationRequest {
                name: name.into(),
                timeout: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
            })
            .await
            .expect("wait")
            .into_inner();
        if op.done {
            return op;
        }
        assert!(Instant::now() < deadline, "{name} not done within 20 s");
    }
}

/// Whether the sleep's worker has started: RUNNING with its first progress report. The worker
/// is only started once its RUNNING state is durable, so this also means a crash now leaves
/// the operation RUNNING in the store.
fn worker_started(op: &Operation) -> bool {
    let m = metadata(op);
    m.state == State::Running as i32 && m.progress.is_some_and(|p| p.total > 0)
}

fn state_of(op: &Operation) -> State {
    State::try_from(metadata(op).state).expect("known state")
}

/// After `kill -9` and a restart on the same data directory, every acknowledged operation is
/// still there: finished ones byte-identical, the ones that were running queued again with
/// `attempt == 2` (sleep is retry-safe), the queued ones still queued with `attempt == 1`,
/// and the concurrency limits still hold. They can then be cancelled (CANCELLED, code 1), and
/// SIGTERM stops the server with exit status 0.
#[tokio::test]
async fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let limits = ["--max-running", "2", "--kind-limit", "sleep=2"];
    let mut server = Server::start(&data, "first.log", &limits);
    let mut tasks = server.tasks().await;
    let mut ops = server.operations().await;

    let mut finished = Vec::new();
    for _ in 0..3 {
        finished.push(submit(&mut tasks, 50, 2, "").await.name);
    }
    let mut before = Vec::new();
    for name in &finished {
        let done = wait_done(&mut ops, name).await;
        assert_eq!(error_code(&done), None, "{:?}", done.result);
        // Read back once more: what Get answers now is what must survive.
        before.push(get(&mut ops, name).await.encode_to_vec());
    }

    let mut running = Vec::new();
    for _ in 0..2 {
        running.push(submit(&mut tasks, 60_000, 600, "").await.name);
    }
    for name in &running {
        poll_until(&mut ops, name, "RUNNING", worker_started).await;
    }
    let mut queued = Vec::new();
    for _ in 0..5 {
        let op = submit(&mut tasks, 60_000, 600, "").await;
        assert_eq!(state_of(&op), State::Queued);
        queued.push(op.name);
    }
    for name in &queued {
        let op = get(&mut ops, name).await;
        assert_eq!(state_of(&op), State::Queued, "limits keep {name} queued");
    }

    server.kill9();
    drop(server);
    let mut server = Server::start(&data, "second.log", &limits);
    let mut ops = server.operations().await;

    for (name, old) in finished.iter().zip(&before) {
        let now = get(&mut ops, name).await;
        assert!(
            now.encode_to_vec() == *old,
            "{name} changed across the crash:\nbefore: {:?}\nafter: {now:?}",
            Operation::decode(old.as_slice()).unwrap()
        );
    }
    let mut seen_running = 0;
    for name in &running {
        let op = get(&mut ops, name).await;
        let m = metadata(&op);
        assert!(
            !op.done,
            "{name} was interrupted, not finished: {:?}",
            op.result
        );
        assert_eq!(m.attempt, 2, "{name} is re-run as attempt 2");
        assert!(!m.requested_cancellation);
        let state = state_of(&op);
        assert!(
            matches!(state, State::Queued | State::Running),
            "{name}: {state:?}"
        );
        seen_running += usize::from(state == State::Running);
    }
    for name in &queued {
        let op = get(&mut ops, name).await;
        let m = metadata(&op);
        assert!(!op.done, "{name}: {:?}", op.result);
        assert_eq!(m.attempt, 1, "{name} never ran");
        let state = state_of(&op);
        assert!(
            matches!(state, State::Queued | State::Running),
            "{name}: {state:?}"
        );
        seen_running += usize::from(state == State::Running);
    }
    // None of these finish for a minute, so the running set only grows while we read it.
    assert!(
        seen_running <= 2,
        "{seen_running} running with a limit of 2"
    );

    let unfinished: Vec<_> = running.iter().chain(&queued).cloned().collect();
    for name in &unfinished {
        ops.cancel_operation(CancelOperationRequest { name: name.clone() })
            .await
            .expect("cancel");
    }
    for name in &unfinished {
        let op = wait_done(&mut ops, name).await;
        assert_eq!(error_code(&op), Some(1), "{name}: {:?}", op.result);
        assert_eq!(state_of(&op), State::Cancelled);
    }

    let status = server.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// SIGTERM shuts down gracefully (exit status 0 within 10 s) and never reports an operation
/// it interrupted as CANCELLED: after a restart the running sleep is run again, as attempt 2.
#[tokio::test]
async fn sigterm_exits_cleanly_and_resumes_running_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, "first.log", &[]);
    let mut tasks = server.tasks().await;
    let mut ops = server.operations().await;
    let name = submit(&mut tasks, 60_000, 600, "").await.name;
    poll_until(&mut ops, &name, "RUNNING", worker_started).await;

    let status = server.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(server);

    let server = Server::start(&data, "second.log", &[]);
    let mut ops = server.operations().await;
    let op = get(&mut ops, &name).await;
    assert!(
        !op.done,
        "shutdown must not end the operation: {:?}",
        op.result
    );
    assert_ne!(state_of(&op), State::Cancelled);
    assert!(!metadata(&op).requested_cancellation);
    let op = poll_until(&mut ops, &name, "RUNNING again", worker_started).await;
    assert_eq!(metadata(&op).attempt, 2);
    assert!(!op.done);
}

/// A `request_id` is remembered across a crash: after `kill -9` and a restart, submitting
/// again with the same id returns the same operation, and only one operation exists.
#[tokio::test]
async fn request_id_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, "first.log", &[]);
    let first = submit(&mut server.tasks().await, 60_000, 600, "r-123").await;
    server.kill9();
    drop(server);

    let server = Server::start(&data, "second.log", &[]);
    let again = submit(&mut server.tasks().await, 60_000, 600, "r-123").await;
    assert_eq!(again.name, first.name);
    let listed = server
        .operations()
        .await
        .list_operations(ListOperationsRequest {
            name: "operations".into(),
            filter: String::new(),
            page_size: 0,
            page_token: String::new(),
            return_partial_success: false,
        })
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = listed
        .operations
        .iter()
        .map(|op| op.name.as_str())
        .collect();
    assert_eq!(names, vec![first.name.as_str()]);
    assert!(listed.next_page_token.is_empty());
}

/// `oprun serve` refuses to start on a store file that is not a database: it exits with a
/// non-zero status within 10 s, says so in one line on stderr naming the store, and never
/// announces that it is listening.
#[tokio::test]
async fn corrupt_store_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("oprun.sqlite3"), vec![0x5a; 8192]).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = oprun()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn oprun serve");
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "oprun serve kept running on a corrupt store:\n{}",
            tail(&log, 30)
        );
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr = fs::read_to_string(&log).unwrap();

    assert!(!status.success(), "{status:?}");
    assert!(!stdout.contains("listening"), "stdout: {stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error expected:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("oprun: "), "{line}");
    assert!(
        line.contains("store"),
        "the error should mention the store: {line}"
    );
    assert!(
        line.contains(&data.join("oprun.sqlite3").display().to_string())
            || line.contains(&data.display().to_string()),
        "the error should name where the store is: {line}"
    );
}

/// A batch taken over after `kill -9` counts what every attempt did: the attempt that runs it
/// after the restart goes on from the first one's durable progress (its counts, and the last
/// operation it looked at), so the result says that (nearly) all the operations were
/// cancelled, not only those the last attempt cancelled. The only ones a result can miss are
/// those cancelled after the first attempt's last progress write (here at most 20 ms of work).
/// Before, the second attempt counted from zero: about two thirds of them.
#[tokio::test]
async fn a_batch_taken_over_after_kill_9_counts_every_attempt() {
    use oprun::proto::oprun::v1::admin_service_client::AdminServiceClient;
    use oprun::proto::oprun::v1::{BatchResult, CancelOperationsRequest};

    const N: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--progress-interval", "20ms"];
    let mut server = Server::start(&data, "first.log", &flags);
    let tasks = server.tasks().await;
    // Delayed starts: queued all along, until the batch cancels them.
    let later =
        prost_types::Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(3600));
    let mut submitted = 0;
    while submitted < N {
        let chunk = (N - submitted).min(100);
        let calls = (0..chunk).map(|_| {
            let mut tasks = tasks.clone();
            async move {
                tasks
                    .submit_task(SubmitTaskRequest {
                        kind: "sleep".into(),
                        input: Some(sleep_input(10, 1, "")),
                        not_before: Some(later),
                        ..Default::default()
                    })
                    .await
                    .expect("submit")
            }
        });
        futures::future::join_all(calls).await;
        submitted += chunk;
    }
    let batch = AdminServiceClient::new(server.channel().await)
        .cancel_operations(CancelOperationsRequest {
            filter: "kind = \"sleep\" AND done = false".into(),
            names: Vec::new(),
            request_id: String::new(),
        })
        .await
        .expect("batch")
        .into_inner()
        .name;
    let mut ops = server.operations().await;
    poll_until(&mut ops, &batch, "a third through", |op| {
        metadata(op)
            .progress
            .is_some_and(|p| p.completed >= i64::try_from(N / 3).unwrap_or(0))
    })
    .await;
    server.kill9();

    let server = Server::start(&data, "second.log", &flags);
    let mut ops = server.operations().await;
    let done = wait_done(&mut ops, &batch).await;
    assert_eq!(metadata(&done).attempt, 2, "taken over once");
    let Some(oprun::proto::google::longrunning::operation::Result::Response(any)) = &done.result
    else {
        panic!("the batch failed: {:?}", done.result);
    };
    let result = BatchResult::decode(any.value.as_slice()).expect("a BatchResult");
    // Every operation was cancelled, by one attempt or the other.
    let mut cancelled = 0;
    let mut token = String::new();
    loop {
        let page = ops
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                filter: "kind = \"sleep\" AND state = CANCELLED".into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        cancelled += page.operations.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(cancelled, N, "every operation cancelled");
    let n = i64::try_from(N).unwrap_or(i64::MAX);
    assert!(
        result.matched <= n && result.matched >= n - 100,
        "the result counts both attempts' work: {result:?} of {N}"
    );
    assert_eq!(result.changed, result.matched, "{result:?}");
    let progress = metadata(&done).progress.expect("progress");
    assert_eq!(progress.completed, progress.total, "{progress:?}");
}
