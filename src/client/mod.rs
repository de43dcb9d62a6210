//! A Rust client for oprun: connect (TLS, bearer token), submit typed tasks, and follow the
//! operations they become: wait for the end, stream progress, cancel, and read the typed
//! result or a typed error.
//!
//! ```no_run
//! use oprun::client::Client;
//! use oprun::kinds::sleep::Sleep;
//! use oprun::proto::oprun::v1::SleepInput;
//!
//! # async fn run() -> Result<(), oprun::client::ClientError> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let input = SleepInput { duration: Some(prost_types::Duration { seconds: 2, nanos: 0 }), steps: 4, ..Default::default() };
//! let handle = client.submit::<Sleep>(input).await?;
//! println!("submitted {}", handle.name());
//! let output = handle.result().await?; // waits, then unpacks SleepOutput
//! assert_eq!(output.steps_done, 4);
//! # Ok(()) }
//! ```
//!
//! Over TLS with a token: `Client::builder("https://host:50051").ca_certificate(pem)
//! .token("…").connect()`.

use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use crate::kind::Kind;
use crate::proto::google::longrunning::operations_client::OperationsClient;
use crate::proto::oprun::v1::admin_service_client::AdminServiceClient;
use crate::proto::oprun::v1::task_service_client::TaskServiceClient;
use crate::proto::oprun::v1::watch_service_client::WatchServiceClient;
use crate::proto::oprun::v1::{
    BatchResult, BatchSubmitTasksRequest, CancelOperationsRequest, DeleteOperationsRequest,
    RetryPolicy, SubmitTaskRequest,
};

mod connect;
mod error;
mod handle;

pub use connect::{ClientBuilder, Conn, Credentials};
pub use error::ClientError;
pub use handle::{metadata, outcome, OperationHandle, Progress};

/// A connection to an oprun server (cheap to clone: clones share it).
#[derive(Clone)]
pub struct Client {
    conn: Conn,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// What [`Client::submit_with`] sends besides the input: `SubmitOptions::default()` and its
/// builder methods, e.g. `SubmitOptions::default().request_id("nightly-2026-12-07")`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubmitOptions {
    /// AIP-155 idempotency key: a repeat with the same id returns the same operation.
    pub request_id: Option<String>,
    /// The operation ends DEADLINE_EXCEEDED if it is not done this long after submission.
    pub timeout: Option<Duration>,
    /// Higher runs first, from -100 to 100 (0: the default).
    pub priority: i32,
    /// While an operation of the kind with this key is not done, the submission answers it
    /// instead of starting another.
    pub unique_key: Option<String>,
    /// At most this many attempts (no more than the kind allows).
    pub max_attempts: Option<u32>,
    /// Operations of the kind with the same key share its limit per key.
    pub concurrency_key: Option<String>,
    /// The operation waits QUEUED and starts no earlier than this.
    pub not_before: Option<SystemTime>,
}

impl SubmitOptions {
    /// With an AIP-155 idempotency key.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Ends DEADLINE_EXCEEDED if not done this long after submission.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Higher runs first, from -100 to 100.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Answered by the operation of the kind with this key that is not done, if any.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// At most this many attempts.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Shares the kind's limit per key with the operations of this key.
    #[must_use]
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Starts no earlier than `at`.
    #[must_use]
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }
}

/// The SubmitTaskRequest of an input of kind `K` with `options`.
///
/// # Errors
/// [`ClientError::Options`] for a timeout or a `not_before` the wire cannot carry.
fn request<K: Kind>(
    input: &K::Input,
    options: SubmitOptions,
) -> Result<SubmitTaskRequest, ClientError> {
    let timeout = options
        .timeout
        .map(|t| {
            crate::model::time::to_duration(t).ok_or_else(|| {
                ClientError::Options(format!(
                    "a timeout of {} s is longer than a protobuf Duration holds (10,000 years)",
                    t.as_secs()
                ))
            })
        })
        .transpose()?;
    let not_before = options
        .not_before
        .map(|at| {
            crate::model::time::to_timestamp(at).ok_or_else(|| {
                ClientError::Options(format!(
                    "not_before {at:?} is outside the timestamp range (years 1 to 9999)"
                ))
            })
        })
        .transpose()?;
    Ok(SubmitTaskRequest {
        kind: K::KIND.to_owned(),
        input: Some(crate::model::pack(input)),
        request_id: options.request_id.unwrap_or_default(),
        timeout,
        not_before,
        priority: options.priority,
        unique_key: options.unique_key.unwrap_or_default(),
        retry_policy: options.max_attempts.map(|max_attempts| RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }),
        concurrency_key: options.concurrency_key.unwrap_or_default(),
    })
}

impl Client {
    /// Connects to `addr` (`host:port` or `http://host:port`) with no token and no TLS; see
    /// [`Client::builder`] for those.
    ///
    /// # Errors
    /// As [`ClientBuilder::connect`].
    pub async fn connect(addr: impl Into<String>) -> Result<Self, ClientError> {
        Self::builder(addr).connect().await
    }

    /// Settings for a connection to `addr` (`https://` for TLS).
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addr: addr.into(),
            token: None,
            ca: None,
            identity: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The connection, for stubs of other services.
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// The standard Operations stub on this connection.
    pub fn operations(&self) -> OperationsClient<Conn> {
        OperationsClient::new(self.conn.clone())
    }

    /// The TaskService stub on this connection.
    pub fn tasks(&self) -> TaskServiceClient<Conn> {
        TaskServiceClient::new(self.conn.clone())
    }

    /// The WorkerService stub on this connection (what [`crate::worker`] runs on).
    pub fn workers(
        &self,
    ) -> crate::proto::oprun::v1::worker_service_client::WorkerServiceClient<Conn> {
        crate::proto::oprun::v1::worker_service_client::WorkerServiceClient::new(self.conn.clone())
    }

    /// The AdminService stub on this connection.
    pub fn admin(&self) -> AdminServiceClient<Conn> {
        AdminServiceClient::new(self.conn.clone())
    }

    /// The WatchService stub on this connection.
    pub fn watches(&self) -> WatchServiceClient<Conn> {
        WatchServiceClient::new(self.conn.clone())
    }

    /// Submits a task of kind `K`; a handle on the operation it became.
    ///
    /// # Errors
    /// [`ClientError::Rpc`]: INVALID_ARGUMENT for a kind the server does not have or a bad
    /// input, RESOURCE_EXHAUSTED when its queue stays full, …
    pub async fn submit<K: Kind>(
        &self,
        input: K::Input,
    ) -> Result<OperationHandle<K::Output>, ClientError> {
        self.submit_with::<K>(input, SubmitOptions::default()).await
    }

    /// [`Client::submit`] with a request id or a timeout.
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub async fn submit_with<K: Kind>(
        &self,
        input: K::Input,
        options: SubmitOptions,
    ) -> Result<OperationHandle<K::Output>, ClientError> {
        let op = self
            .tasks()
            .submit_task(request::<K>(&input, options)?)
            .await?
            .into_inner();
        Ok(self.operation(op.name))
    }

    /// Submits several tasks of kind `K` in one call (BatchSubmitTasks, at most 1,000): all
    /// are created or none. Handles in the order of `inputs`.
    ///
    /// # Errors
    /// As [`Client::submit`]; the message of an error that one input caused starts with its
    /// index (`requests[i]: `), and then none was created.
    pub async fn submit_many<K: Kind>(
        &self,
        inputs: impl IntoIterator<Item = (K::Input, SubmitOptions)>,
    ) -> Result<Vec<OperationHandle<K::Output>>, ClientError> {
        let requests = inputs
            .into_iter()
            .map(|(input, options)| request::<K>(&input, options))
            .collect::<Result<_, _>>()?;
        let ops = self
            .tasks()
            .batch_submit_tasks(BatchSubmitTasksRequest { requests })
            .await?
            .into_inner()
            .operations;
        Ok(ops.into_iter().map(|op| self.operation(op.name)).collect())
    }

    /// Cancels every operation matching an AIP-160 `filter` on the server, as an operation of
    /// its own (AdminService.CancelOperations): its handle, whose progress counts the
    /// operations looked at and whose result says what it did. A repeated `request_id`
    /// returns the batch it started.
    ///
    /// # Errors
    /// [`ClientError::Rpc`]: INVALID_ARGUMENT for an empty or malformed filter,
    /// PERMISSION_DENIED without the `submitter` role.
    pub async fn cancel_matching(
        &self,
        filter: &str,
        request_id: Option<String>,
    ) -> Result<OperationHandle<BatchResult>, ClientError> {
        let op = self
            .admin()
            .cancel_operations(CancelOperationsRequest {
                filter: filter.to_owned(),
                names: Vec::new(),
                request_id: request_id.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(self.operation(op.name))
    }

    /// Deletes every finished operation matching an AIP-160 `filter` on the server, as an
    /// operation of its own (AdminService.DeleteOperations), like
    /// [`Client::cancel_matching`].
    ///
    /// # Errors
    /// [`ClientError::Rpc`]: INVALID_ARGUMENT for an empty or malformed filter,
    /// PERMISSION_DENIED without the `admin` role.
    pub async fn delete_matching(
        &self,
        filter: &str,
        request_id: Option<String>,
    ) -> Result<OperationHandle<BatchResult>, ClientError> {
        let op = self
            .admin()
            .delete_operations(DeleteOperationsRequest {
                filter: filter.to_owned(),
                names: Vec::new(),
                request_id: request_id.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(self.operation(op.name))
    }

    /// A handle on an existing operation whose response is an `O`.
    pub fn operation<O>(&self, name: impl Into<String>) -> OperationHandle<O> {
        OperationHandle {
            client: self.clone(),
            name: name.into(),
            _output: PhantomData,
        }
    }
}
