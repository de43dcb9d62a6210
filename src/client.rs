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
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use prost::{Message, Name};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::Code;
use tonic_types::StatusExt;

use crate::auth::BearerToken;
use crate::kind::Kind;
use crate::model::type_name;
use crate::proto::google::longrunning::operations_client::OperationsClient;
use crate::proto::google::longrunning::{
    operation, CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, Operation,
    WaitOperationRequest,
};
use crate::proto::oprun::v1::admin_service_client::AdminServiceClient;
use crate::proto::oprun::v1::task_service_client::TaskServiceClient;
use crate::proto::oprun::v1::watch_service_client::WatchServiceClient;
use crate::proto::oprun::v1::{
    BatchResult, BatchSubmitTasksRequest, CancelOperationsRequest, DeleteOperationsRequest,
    OperationMetadata, RetryPolicy, SubmitTaskRequest, WatchOperationRequest,
};

/// How long [`OperationHandle::wait`] asks the server to wait per call.
const WAIT_CALL: Duration = Duration::from_secs(50);
/// Polling with Get when WaitOperation is not served: from 1 s, ×1.5, up to 20 s (the
/// backoff of Google's own clients).
const POLL_FIRST: Duration = Duration::from_secs(1);
const POLL_MAX: Duration = Duration::from_secs(20);
/// How many times in a row a call is retried on UNAVAILABLE (a restart, a lost connection),
/// a second apart.
const RETRIES: u32 = 30;

/// What went wrong, typed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The settings cannot make a connection (a malformed address, unusable TLS files).
    #[error("{message}")]
    Config {
        /// What is wrong with the settings, and how to fix it.
        message: String,
        /// The error that said so, when there is one.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// Nothing answered at the address.
    #[error("{message}")]
    Connect {
        /// What was tried, and what to check.
        message: String,
        /// The transport's error, when there is one.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// A submission's options cannot be sent (a timeout longer than a protobuf `Duration`
    /// holds, a `not_before` outside the timestamp range): nothing was submitted.
    #[error("{0}")]
    Options(String),
    /// A call failed: its `google.rpc` code, message and error details.
    #[error("{code:?}: {message}")]
    Rpc {
        /// The status code.
        code: Code,
        /// The server's message.
        message: String,
        /// The standard error details (`ErrorInfo`, `BadRequest`, `RetryInfo`, …).
        details: Box<tonic_types::ErrorDetails>,
    },
    /// The operation ended with an error (`error.code = 1` for a cancelled one): its code,
    /// message and details.
    #[error("the operation failed with {code:?}: {message}")]
    Failed {
        /// The `google.rpc` code.
        code: Code,
        /// The message.
        message: String,
        /// Its details, as they came.
        details: Vec<prost_types::Any>,
    },
    /// The response is not the type expected, or does not decode.
    #[error("cannot read the response: {0}")]
    Decode(String),
}

impl ClientError {
    /// A [`ClientError::Config`] with no source.
    fn config(message: String) -> Self {
        Self::Config {
            message,
            source: None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Rpc {
            code: s.code().into(),
            message: s.message().to_owned(),
            details: Box::new(s.get_error_details()),
        }
    }
}

impl ClientError {
    /// The `google.rpc` code, for a failed call or a failed operation.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc { code, .. } | Self::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The bearer token, if the client has one.
#[derive(Clone)]
pub struct Credentials(Option<BearerToken>);

impl Interceptor for Credentials {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(token) => token.call(request),
            None => Ok(request),
        }
    }
}

/// A connection that sends the client's token on every call.
pub type Conn = InterceptedService<Channel, Credentials>;

/// How [`Client`] connects, with consuming setters.
#[derive(Clone)]
pub struct ClientBuilder {
    addr: String,
    token: Option<String>,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` on every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the CA whose PEM certificate this is (for an `https://` address).
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Presents this PEM certificate and key (mutual TLS).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The address with a scheme: `host:port` alone means plaintext `http://`.
    pub fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Connects.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a malformed address, token or TLS settings (an `https://`
    /// address needs a CA certificate; TLS settings need `https://`);
    /// [`ClientError::Connect`] when nothing answers.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let credentials = match &self.token {
            Some(token) => Some(BearerToken::new(token).map_err(ClientError::config)?),
            None => None,
        };
        let url = self.url();
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|e| ClientError::Config {
                message: format!(
                    "{:?} is not an address: {e}; give host:port, e.g. 127.0.0.1:50051",
                    self.addr
                ),
                source: Some(Arc::new(e)),
            })?
            .connect_timeout(self.connect_timeout);
        if endpoint.uri().scheme_str() == Some("https") {
            let Some(ca) = &self.ca else {
                return Err(ClientError::config(format!(
                    "{} is https:// and needs the PEM certificate of the CA that signed the \
                     server's certificate",
                    self.addr
                )));
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| ClientError::Config {
                message: format!("TLS settings: {}", crate::server::error_chain(&e)),
                source: Some(Arc::new(e)),
            })?;
        } else if self.ca.is_some() || self.identity.is_some() {
            return Err(ClientError::config(format!(
                "a CA certificate or a client identity is for TLS, but {} is not https://",
                self.addr
            )));
        }
        let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
            message: cannot_connect(&url, &e),
            source: Some(Arc::new(e)),
        })?;
        Ok(Client {
            conn: InterceptedService::new(channel, Credentials(credentials)),
        })
    }
}

/// One line for a connection that failed: the deepest cause (the OS's words), and a hint.
pub(crate) fn cannot_connect(url: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    format!(
        "cannot connect to {url}: {cause}; is `oprun serve` running on {authority}? (set the \
         address with --addr or OPRUN_ADDR)"
    )
}

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

/// An operation, and the type of its response.
pub struct OperationHandle<O> {
    client: Client,
    name: String,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for OperationHandle<O> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            name: self.name.clone(),
            _output: PhantomData,
        }
    }
}

impl<O> std::fmt::Debug for OperationHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationHandle")
            .field("name", &self.name)
            .finish()
    }
}

/// A stream of an operation's states, from [`OperationHandle::progress`].
pub type Progress = Pin<Box<dyn Stream<Item = Result<Operation, ClientError>> + Send>>;

impl<O> OperationHandle<O> {
    /// The operation's name (`operations/{id}`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its current state.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] (NOT_FOUND once it is deleted).
    pub async fn get(&self) -> Result<Operation, ClientError> {
        Ok(self
            .client
            .operations()
            .get_operation(GetOperationRequest {
                name: self.name.clone(),
            })
            .await?
            .into_inner())
    }

    /// Waits until it is done and returns it: WaitOperation, again after each timeout; Get
    /// with backoff (from 1 s, ×1.5, up to 20 s) against a server without WaitOperation.
    /// UNAVAILABLE (a restart) is retried.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] for any other failed call.
    pub async fn wait(&self) -> Result<Operation, ClientError> {
        let mut ops = self.client.operations();
        let mut unavailable = 0;
        loop {
            let waited = ops
                .wait_operation(WaitOperationRequest {
                    name: self.name.clone(),
                    timeout: prost_types::Duration::try_from(WAIT_CALL).ok(),
                })
                .await;
            match waited {
                Ok(op) if op.get_ref().done => return Ok(op.into_inner()),
                Ok(_) => unavailable = 0,
                Err(s) if s.code() == tonic::Code::Unimplemented => return self.poll().await,
                Err(s) if retryable(&s) && unavailable < RETRIES => {
                    unavailable += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    async fn poll(&self) -> Result<Operation, ClientError> {
        let mut delay = POLL_FIRST;
        loop {
            let op = self.get().await?;
            if op.done {
                return Ok(op);
            }
            tokio::time::sleep(delay).await;
            delay = delay.mul_f64(1.5).min(POLL_MAX);
        }
    }

    /// Its states as they change (the server's WatchOperation stream: the current state at
    /// once, then each change, coalesced to at most about 20 a second), ending after the one
    /// that is done. The stream is opened again when the server drops it (a restart).
    pub fn progress(&self) -> Progress {
        let state = Follow {
            handle: self.clone().erase(),
            stream: None,
            done: false,
            reopens: 0,
        };
        Box::pin(futures::stream::unfold(state, next_state))
    }

    /// Asks the server to cancel it (it then ends with code CANCELLED unless it finished
    /// first).
    ///
    /// # Errors
    /// [`ClientError::Rpc`] (NOT_FOUND for an unknown operation).
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.client
            .operations()
            .cancel_operation(CancelOperationRequest {
                name: self.name.clone(),
            })
            .await?;
        Ok(())
    }

    /// Deletes it (it must be done).
    ///
    /// # Errors
    /// [`ClientError::Rpc`]: FAILED_PRECONDITION while it is not done.
    pub async fn delete(&self) -> Result<(), ClientError> {
        self.client
            .operations()
            .delete_operation(DeleteOperationRequest {
                name: self.name.clone(),
            })
            .await?;
        Ok(())
    }

    fn erase(self) -> OperationHandle<()> {
        OperationHandle {
            client: self.client,
            name: self.name,
            _output: PhantomData,
        }
    }
}

impl<O: Message + Default + Name> OperationHandle<O> {
    /// Waits until it is done, then its response unpacked as an `O`.
    ///
    /// # Errors
    /// [`ClientError::Failed`] when it ended with an error (code CANCELLED when cancelled),
    /// with the error's code, message and details; [`ClientError::Decode`] when the response
    /// is not an `O`; as [`OperationHandle::wait`] otherwise.
    pub async fn result(&self) -> Result<O, ClientError> {
        outcome(&self.wait().await?)
    }
}

/// The typed outcome of a done operation: its response as an `O`, or its error.
///
/// # Errors
/// As [`OperationHandle::result`]; [`ClientError::Decode`] for an operation that is not done.
pub fn outcome<O: Message + Default + Name>(op: &Operation) -> Result<O, ClientError> {
    match &op.result {
        Some(operation::Result::Response(any)) => {
            if type_name(&any.type_url) != O::full_name() {
                return Err(ClientError::Decode(format!(
                    "the response is a {}, not a {}",
                    type_name(&any.type_url),
                    O::full_name()
                )));
            }
            O::decode(any.value.as_slice()).map_err(|e| ClientError::Decode(e.to_string()))
        }
        Some(operation::Result::Error(status)) => Err(ClientError::Failed {
            code: Code::try_from(status.code).unwrap_or(Code::Unknown),
            message: status.message.clone(),
            details: status.details.clone(),
        }),
        None => Err(ClientError::Decode(format!(
            "{} is not done: it has no result yet",
            op.name
        ))),
    }
}

/// oprun's metadata of an operation (kind, state, progress, …), if it carries it.
pub fn metadata(op: &Operation) -> Option<OperationMetadata> {
    let any = op.metadata.as_ref()?;
    if type_name(&any.type_url) != OperationMetadata::full_name() {
        return None;
    }
    OperationMetadata::decode(any.value.as_slice()).ok()
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

struct Follow {
    handle: OperationHandle<()>,
    stream: Option<tonic::Streaming<Operation>>,
    done: bool,
    reopens: u32,
}

async fn next_state(mut s: Follow) -> Option<(Result<Operation, ClientError>, Follow)> {
    if s.done {
        return None;
    }
    loop {
        let stream = match &mut s.stream {
            Some(stream) => stream,
            None => {
                let opened = s
                    .handle
                    .client
                    .watches()
                    .watch_operation(WatchOperationRequest {
                        name: s.handle.name.clone(),
                    })
                    .await;
                match opened {
                    Ok(stream) => s.stream.insert(stream.into_inner()),
                    Err(e) if retryable(&e) && s.reopens < RETRIES => {
                        s.reopens += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e.into()), s));
                    }
                }
            }
        };
        match stream.message().await {
            Ok(Some(op)) => {
                s.reopens = 0;
                s.done = op.done;
                return Some((Ok(op), s));
            }
            // Ended before the operation did (the server is shutting down), or dropped:
            // open it again, on this server or the one that replaces it.
            Ok(None) => {}
            Err(e) if retryable(&e) => {}
            Err(e) => {
                s.done = true;
                return Some((Err(e.into()), s));
            }
        }
        s.stream = None;
        s.reopens += 1;
        if s.reopens > RETRIES {
            s.done = true;
            return Some((
                Err(ClientError::Connect {
                    message: format!(
                        "the server kept ending the watch of {} before it was done",
                        s.handle.name
                    ),
                    source: None,
                }),
                s,
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection failure reads as one line with the OS's words once, and a hint.
    #[test]
    fn connection_errors_read_well() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let line = cannot_connect("http://127.0.0.1:59999", &io);
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert!(
            line.contains("is `oprun serve` running on 127.0.0.1:59999?"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    /// A done operation's outcome is its typed response or its typed error; a response of
    /// another type is a decode error, not a wrong value.
    #[test]
    fn outcomes_are_typed() {
        use crate::proto::google::rpc::Status;
        use crate::proto::oprun::v1::{SleepInput, SleepOutput};
        let done = |result| Operation {
            name: "operations/x".into(),
            metadata: None,
            done: true,
            result: Some(result),
        };
        let ok = done(operation::Result::Response(crate::model::pack(
            &SleepOutput { steps_done: 3 },
        )));
        assert_eq!(
            outcome::<SleepOutput>(&ok)
                .expect("a SleepOutput")
                .steps_done,
            3
        );
        assert!(matches!(
            outcome::<SleepInput>(&ok),
            Err(ClientError::Decode(m)) if m.contains("SleepOutput")
        ));
        let cancelled = done(operation::Result::Error(Status {
            code: 1,
            message: "cancelled by a client".into(),
            details: vec![],
        }));
        let err = outcome::<SleepOutput>(&cancelled).expect_err("cancelled");
        assert_eq!(err.code(), Some(Code::Cancelled));
        let pending = Operation {
            name: "operations/y".into(),
            ..Default::default()
        };
        assert!(matches!(
            outcome::<SleepOutput>(&pending),
            Err(ClientError::Decode(_))
        ));
    }
}
