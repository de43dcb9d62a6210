//! Shared harness for the integration tests: a real server on an ephemeral loopback port
//! with a temporary data directory, real tonic clients, and a few test-only task kinds.
#![allow(dead_code)]

pub mod binary;
pub mod faults;
pub mod http;
pub mod remote;
pub mod served;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    operation, ListOperationsRequest, Operation, WaitOperationRequest,
};
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{OperationMetadata, SleepInput, SleepOutput, SubmitTaskRequest};
use oprun::store::sqlite::{SqliteOptions, SqliteStore};
use oprun::store::Store;
use oprun::{Kind, Registry, Runner, RunnerConfig, Task, TaskContext, TaskError, TaskOptions};
use prost::Message;
use prost_types::Any;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub runner: Runner,
    pub dir: tempfile::TempDir,
    pub gauge: Arc<Gauge>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), oprun::server::ServeError>>>,
}

/// Counts concurrent runs of the `gauge` kind and remembers the most seen at once.
#[derive(Default)]
pub struct Gauge {
    pub now: AtomicUsize,
    pub max: AtomicUsize,
    pub runs: AtomicUsize,
}

/// Like sleep, but counted by a [`Gauge`].
pub struct GaugeTask(pub Arc<Gauge>);

impl Kind for GaugeTask {
    const KIND: &'static str = "gauge";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for GaugeTask {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry_safe(true).max_concurrency(3)
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        let now = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max.fetch_max(now, Ordering::SeqCst);
        self.0.runs.fetch_add(1, Ordering::SeqCst);
        let d = Duration::try_from(input.duration.unwrap_or_default()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = ctx.cancelled() => {}
        }
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        Ok(SleepOutput { steps_done: 1 })
    }
}

/// Panics when run.
pub struct PanicTask;

impl Kind for PanicTask {
    const KIND: &'static str = "panic";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for PanicTask {
    async fn run(&self, input: SleepInput, _ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        panic!("worker exploded: {}", input.fail_message);
    }
}

/// Ignores its cancellation token and sleeps for `duration`.
pub struct StubbornTask;

impl Kind for StubbornTask {
    const KIND: &'static str = "stubborn";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for StubbornTask {
    async fn run(&self, input: SleepInput, _ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        let d = Duration::try_from(input.duration.unwrap_or_default()).unwrap_or_default();
        tokio::time::sleep(d).await;
        Ok(SleepOutput { steps_done: 1 })
    }
}

/// The kinds every test server has: the built-ins, snapshot, and the test kinds.
pub fn registry(gauge: &Arc<Gauge>, snapshot_root: &std::path::Path) -> Registry {
    let mut r = Registry::with_builtins();
    r.register(GaugeTask(Arc::clone(gauge)))
        .expect("a kind of its own name");
    r.register(PanicTask).expect("a kind of its own name");
    r.register(StubbornTask).expect("a kind of its own name");
    r.register(oprun_workers::snapshot::SnapshotTask::new(snapshot_root).expect("snapshot root"))
        .expect("a kind of its own name");
    r
}

impl TestServer {
    /// Starts a server with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(RunnerConfig::default()).await
    }

    /// Starts a server with `config`, on a fresh SQLite store.
    pub async fn start_with(config: RunnerConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config).await
    }

    /// Starts a server over an existing data directory.
    pub async fn start_in(dir: tempfile::TempDir, config: RunnerConfig) -> Self {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("data"), SqliteOptions::default()).expect("store"),
        );
        Self::start_on(dir, store, config).await
    }

    /// Starts a server over `store`, with `dir` for snapshots.
    pub async fn start_on(
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        config: RunnerConfig,
    ) -> Self {
        let gauge = Arc::new(Gauge::default());
        let registry = registry(&gauge, &dir.path().join("snapshots"));
        let runner = Runner::start(registry, store, config)
            .await
            .expect("runner");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(oprun::server::serve(
            listener,
            runner.clone(),
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        ));
        Self {
            addr,
            runner,
            dir,
            gauge,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The snapshot root.
    pub fn snapshot_root(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel().await)
    }

    pub async fn tasks(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel().await)
    }

    /// Stops the server gracefully and returns its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await
                .expect("server task")
                .expect("server stopped cleanly");
        }
        self.dir
    }

    /// Submits a sleep.
    pub async fn submit_sleep(&self, ms: u64, steps: u32) -> Operation {
        self.submit("sleep", sleep_input(ms, steps, "")).await
    }

    /// Submits a task, expecting success.
    pub async fn submit(&self, kind: &str, input: Any) -> Operation {
        self.tasks()
            .await
            .submit_task(SubmitTaskRequest {
                kind: kind.into(),
                input: Some(input),
                request_id: String::new(),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
    }

    /// GetOperation, expecting success.
    pub async fn get_op(&self, name: &str) -> Operation {
        self.operations()
            .await
            .get_operation(oprun::proto::google::longrunning::GetOperationRequest {
                name: name.into(),
            })
            .await
            .expect("get")
            .into_inner()
    }

    /// CancelOperation, expecting success.
    pub async fn cancel(&self, name: &str) {
        self.operations()
            .await
            .cancel_operation(oprun::proto::google::longrunning::CancelOperationRequest {
                name: name.into(),
            })
            .await
            .expect("cancel");
    }

    /// Waits (server side, up to 30 s) until the operation is done.
    pub async fn wait_done(&self, name: &str) -> Operation {
        let mut ops = self.operations().await;
        for _ in 0..10 {
            let op = ops
                .wait_operation(WaitOperationRequest {
                    name: name.into(),
                    timeout: Some(prost_types::Duration {
                        seconds: 3,
                        nanos: 0,
                    }),
                })
                .await
                .expect("wait")
                .into_inner();
            if op.done {
                return op;
            }
        }
        panic!("{name} did not finish within 30 s");
    }
}

/// A `SleepInput` packed into an `Any`.
/// A runner with the built-in kinds over a fresh memory store and the default settings.
pub async fn memory_runner() -> Runner {
    Runner::start(
        Registry::with_builtins(),
        Arc::new(oprun::store::memory::MemoryStore::new()),
        RunnerConfig::default(),
    )
    .await
    .expect("runner")
}

/// Every operation matching `filter`, oldest first, page after page.
pub async fn list_all(channel: &Channel, filter: &str) -> Vec<Operation> {
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let page = OperationsClient::new(channel.clone())
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                filter: filter.into(),
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        all.extend(page.operations);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

/// WaitOperation of `name` for up to 10 s; the operation, which must be done by then.
pub async fn wait_done(client: &mut OperationsClient<Channel>, name: &str) -> Operation {
    let op = client
        .wait_operation(WaitOperationRequest {
            name: name.to_owned(),
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
        })
        .await
        .expect("wait")
        .into_inner();
    assert!(op.done, "{name} not done within 10 s");
    op
}

pub fn sleep_input(ms: u64, steps: u32, fail: &str) -> Any {
    pack(&SleepInput {
        duration: Some(prost_types::Duration {
            seconds: i64::try_from(ms / 1000).unwrap(),
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap(),
        }),
        steps,
        fail_message: fail.into(),
        ..Default::default()
    })
}

/// The decoded metadata of an operation.
pub fn metadata(op: &Operation) -> OperationMetadata {
    let any = op.metadata.as_ref().expect("metadata");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/oprun.v1.OperationMetadata"
    );
    OperationMetadata::decode(any.value.as_slice()).expect("decode metadata")
}

/// The error code of a done operation (None when it succeeded).
pub fn error_code(op: &Operation) -> Option<i32> {
    match &op.result {
        Some(operation::Result::Error(s)) => Some(s.code),
        _ => None,
    }
}

/// The decoded response of a done, successful operation.
pub fn response<M: Message + Default>(op: &Operation) -> M {
    match &op.result {
        Some(operation::Result::Response(any)) => M::decode(any.value.as_slice()).expect("decode"),
        other => panic!("expected a response, got {other:?}"),
    }
}
