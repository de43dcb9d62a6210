//! The task API: how a kind of work runs and is registered.
//!
//! A kind is a Rust type implementing [`Kind`] (a stable kind name, an input message, a
//! response message, optionally a details message: what clients need) and [`Task`] (an async
//! `run` that receives the decoded input and a [`TaskContext`]). The context reports progress (never waiting on I/O) and
//! carries the operation's [`CancellationToken`].
//!
//! ```
//! use oprun::task::{Kind, Task, TaskContext, TaskError, TaskOptions};
//! use oprun::proto::oprun::v1::{SleepInput, SleepOutput};
//!
//! /// Counts to `steps`, one step at a time, and stops when cancelled.
//! struct Count;
//!
//! impl Kind for Count {
//!     const KIND: &'static str = "count";
//!     type Input = SleepInput;
//!     type Output = SleepOutput;
//! }
//!
//! impl Task for Count {
//!     async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
//!         for i in 0..input.steps {
//!             if ctx.is_cancelled() {
//!                 return Err(TaskError::cancelled());
//!             }
//!             ctx.progress(i64::from(i) + 1, i64::from(input.steps), "steps");
//!         }
//!         Ok(SleepOutput { steps_done: input.steps })
//!     }
//! }
//!
//! let mut kinds = oprun::task::Registry::new();
//! kinds.register(Count)?;
//! assert!(kinds.get("count").is_some());
//! // A second kind under a taken name is refused, never swapped in silently.
//! assert!(kinds.register(Count).is_err());
//! # Ok::<(), oprun::task::RegisterError>(())
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::{Message, Name};
use prost_types::Any;
use tokio_util::sync::CancellationToken;

use tokio::sync::watch;

use crate::auth::Role;
use crate::error::Error;
pub use crate::kind::Kind;
use crate::model::{pack, type_name, OperationId};
use crate::proto::google::rpc::Code;
use crate::proto::oprun::v1::{Progress, TaskKind};
use crate::text::quote;

/// How the runner treats a kind: `TaskOptions::default()` and its setters, e.g.
/// `TaskOptions::default().retry_safe(true).max_concurrency(4)`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskOptions {
    /// Whether a run interrupted by a crash or shutdown may run again (`attempt` + 1).
    /// Kinds that are not retry-safe end ABORTED instead (at-most-once).
    pub retry_safe: bool,
    /// At most this many operations of the kind run at once; `None` uses the runner's
    /// per-kind default.
    pub max_concurrency: Option<usize>,
    /// How failures the worker marks retryable are retried.
    pub retry: RetryPolicy,
    /// The timeout applied when a submission sets none.
    pub default_timeout: Option<Duration>,
    /// At most this many operations of the kind wait at once (queued, delayed or backing
    /// off); past it, submissions answer RESOURCE_EXHAUSTED. `None`: only the global bound.
    pub max_queued: Option<usize>,
    /// The least role a caller needs to start an operation of the kind, by SubmitTask or by
    /// RerunOperation (when the server checks tokens): [`Role::Submitter`] by default. A kind
    /// whose work only an admin may do (the built-in delete batch) says [`Role::Admin`].
    pub start_role: Role,
    /// At most this many operations of the kind with one concurrency key run at once, over
    /// every node (`None`: no limit per key; `oprun serve --kind-key-limit` overrides it).
    pub max_per_key: Option<usize>,
}

impl Default for TaskOptions {
    /// Not retry-safe, the runner's default concurrency, no retries, no timeout, only the
    /// global queue bound, started by a submitter.
    fn default() -> Self {
        Self {
            retry_safe: false,
            max_concurrency: None,
            retry: RetryPolicy::default(),
            default_timeout: None,
            max_queued: None,
            start_role: Role::Submitter,
            max_per_key: None,
        }
    }
}

setters!(TaskOptions {
    retry_safe: bool,
    retry: RetryPolicy,
    start_role: Role,
} optional {
    max_concurrency: usize,
    default_timeout: Duration,
    max_queued: usize,
    max_per_key: usize,
});

/// Exponential backoff with jitter for retryable failures: [`RetryPolicy::exponential`] or
/// `RetryPolicy::default()`, and its setters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retry).
    pub max_attempts: u32,
    /// The delay before the second attempt.
    pub initial_delay: Duration,
    /// The longest delay between attempts.
    pub max_delay: Duration,
    /// Each delay is the previous one times this.
    pub multiplier: f64,
    /// Each delay is shortened by a random fraction of itself of up to this (0 to 1).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// No retries.
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

setters!(RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
});

impl RetryPolicy {
    /// Up to `max_attempts` attempts, from 1 s doubling up to 5 min, with 20% jitter.
    pub fn exponential(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// This policy as a submission narrowed it (its checked
    /// [`RetryPolicy`](crate::proto::oprun::v1::RetryPolicy), kept in the operation's
    /// metadata): its attempts and backoff bounds, this policy's multiplier and jitter.
    pub fn narrowed(&self, by: Option<&crate::proto::oprun::v1::RetryPolicy>) -> Self {
        let Some(by) = by else {
            return self.clone();
        };
        let duration = |d: &Option<prost_types::Duration>, or: Duration| {
            d.as_ref()
                .and_then(|d| Duration::try_from(*d).ok())
                .unwrap_or(or)
        };
        Self {
            max_attempts: match by.max_attempts {
                0 => self.max_attempts,
                n => n.min(self.max_attempts),
            },
            initial_delay: duration(&by.initial_backoff, self.initial_delay),
            max_delay: duration(&by.max_backoff, self.max_delay),
            ..self.clone()
        }
    }

    /// The delay after failed attempt `attempt` (from 1). `unit` is a random number in
    /// `[0, 1)` that sets the jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max_delay)
    }
}

/// How a [`Kind`] of work runs as an operation.
pub trait Task: Kind + Send + Sync {
    /// How the runner treats this kind.
    fn options(&self) -> TaskOptions {
        TaskOptions::default()
    }

    /// The files that define the kind's messages (with their imports), when they are not
    /// oprun's own protos: with them every JSON path (REST, server-sent events, the CLI, the
    /// dashboard) reads and writes the kind's types. A prost-generated crate gets them from
    /// its encoded descriptor set (`FileDescriptorSet::decode(DESCRIPTOR_SET)`). The default:
    /// none.
    fn descriptors(&self) -> Option<prost_types::FileDescriptorSet> {
        None
    }

    /// Checks an input at submission, before the operation is created, so that bad input is
    /// refused synchronously with a precise status. The default accepts everything.
    ///
    /// # Errors
    /// A [`TaskError`] whose code and message the client receives as the RPC status.
    fn validate(&self, _input: &Self::Input) -> Result<(), TaskError> {
        Ok(())
    }

    /// Does the work. Cooperate with cancellation: check or await
    /// [`TaskContext::cancelled`]; a run that ignores its token is aborted after the grace
    /// period.
    ///
    /// # Errors
    /// A [`TaskError`] ends the operation FAILED with that status.
    fn run(
        &self,
        input: Self::Input,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

/// Whether a failure may be retried (under the kind's [`RetryPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retry {
    /// Decided by the code: UNAVAILABLE, ABORTED and RESOURCE_EXHAUSTED are retryable.
    #[default]
    ByCode,
    /// Never retry this failure.
    Never,
    /// Retry, not before this long (instead of the policy's backoff).
    After(Duration),
}

/// A worker's failure: a `google.rpc.Code` and a message for the operation's `error`, and
/// whether it may be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct TaskError {
    /// The status code (never OK).
    pub code: Code,
    /// A developer-facing message.
    pub message: String,
    /// Whether it may be retried.
    pub retry: Retry,
}

impl TaskError {
    /// An error with a code; `Code::Ok` is turned into `Code::Unknown`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let code = if code == Code::Ok {
            Code::Unknown
        } else {
            code
        };
        Self {
            code,
            message: message.into(),
            retry: Retry::ByCode,
        }
    }

    /// The worker stopped because its token was cancelled.
    pub fn cancelled() -> Self {
        Self::new(Code::Cancelled, "the operation was cancelled")
    }

    /// Bad input.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// A failure with no better code.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(Code::Unknown, message)
    }

    /// A bug or broken invariant.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// A passing failure (UNAVAILABLE): retried under the kind's policy.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// Marks the failure retryable not before `delay` (an explicit "retry after").
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry = Retry::After(delay);
        self
    }

    /// Marks the failure as never retryable, whatever its code.
    #[must_use]
    pub fn permanent(mut self) -> Self {
        self.retry = Retry::Never;
        self
    }

    /// Whether the failure may be retried.
    pub fn is_retryable(&self) -> bool {
        match self.retry {
            Retry::Never => false,
            Retry::After(_) => true,
            Retry::ByCode => matches!(
                self.code,
                Code::Unavailable | Code::Aborted | Code::ResourceExhausted
            ),
        }
    }
}

/// What a worker has reported and the runner has not written yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Report {
    /// Work done so far.
    pub progress: Progress,
    /// The worker's latest words.
    pub status_message: String,
    /// The kind's own progress message.
    pub details: Option<Any>,
}

/// A worker's reports, kept in memory: the worker changes them without waiting; the runner
/// watches them and writes them (coalesced), and only what it wrote is shown to clients.
#[derive(Debug)]
pub(crate) struct Draft {
    // watch: the writer wants only the latest report, and to be woken when it changes.
    report: watch::Sender<Report>,
}

impl Draft {
    /// A draft starting from what the operation showed last.
    pub fn new(report: Report) -> Arc<Self> {
        Arc::new(Self {
            report: watch::Sender::new(report),
        })
    }

    /// Changes the report and wakes whoever watches it.
    fn update(&self, f: impl FnOnce(&mut Report)) {
        self.report.send_modify(f);
    }

    /// The latest report.
    pub fn current(&self) -> Report {
        self.report.borrow().clone()
    }

    /// A receiver woken at every change.
    pub fn subscribe(&self) -> watch::Receiver<Report> {
        self.report.subscribe()
    }
}

/// What a running worker sees of its operation.
///
/// Cheap to clone. Reporting methods change the operation's draft in memory and never
/// wait on I/O; the runner writes progress coalesced (a few times a second at most, and at the
/// end), and clients see it once written.
#[derive(Clone)]
pub struct TaskContext {
    id: OperationId,
    draft: Arc<Draft>,
    token: CancellationToken,
    attempt: u32,
}

impl TaskContext {
    pub(crate) fn new(
        id: OperationId,
        draft: Arc<Draft>,
        token: CancellationToken,
        attempt: u32,
    ) -> Self {
        Self {
            id,
            draft,
            token,
            attempt,
        }
    }

    /// The operation's id.
    pub fn id(&self) -> &OperationId {
        &self.id
    }

    /// Which run this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The operation's cancellation token: cancelled on a client's cancel, the deadline, or
    /// at shutdown.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when cancellation is requested.
    ///
    /// # Cancel safety
    /// Cancel safe: race it with the work in `tokio::select!`.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Reports progress as `completed` of `total` `unit`s.
    pub fn progress(&self, completed: i64, total: i64, unit: &str) {
        self.draft.update(|r| {
            r.progress = Progress {
                completed,
                total,
                unit: unit.to_owned(),
            };
        });
    }

    /// Sets the status message shown to clients.
    pub fn status(&self, message: impl Into<String>) {
        let message = message.into();
        self.draft.update(|r| r.status_message = message);
    }

    /// Sets the kind's own progress message (`metadata.details`).
    pub fn details<M: Name>(&self, details: &M) {
        let any = pack(details);
        self.draft.update(|r| r.details = Some(any));
    }

    /// Changes what is given of a report (a remote worker's), keeping the rest.
    pub(crate) fn report(
        &self,
        progress: Option<Progress>,
        status_message: Option<String>,
        details: Option<Any>,
    ) {
        self.draft.update(|r| {
            if let Some(progress) = progress {
                r.progress = progress;
            }
            if let Some(message) = status_message {
                r.status_message = message;
            }
            if details.is_some() {
                r.details = details;
            }
        });
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A registered kind with its types erased, as the scheduler runs it.
pub(crate) trait ErasedTask: Send + Sync {
    fn describe(&self) -> TaskKind;
    fn options(&self) -> TaskOptions;
    /// The files defining the kind's types, when they are not oprun's own.
    fn descriptors(&self) -> Option<prost_types::FileDescriptorSet> {
        None
    }
    /// Decodes and validates an input `Any`.
    fn check_input(&self, input: &Any) -> Result<(), Error>;
    fn run(&self, input: Any, ctx: TaskContext) -> BoxFuture<Result<Any, TaskError>>;
}

struct Erased<T>(Arc<T>);

impl<T: Task> Erased<T> {
    fn decode(&self, input: &Any) -> Result<T::Input, Error> {
        let expected = T::Input::full_name();
        let got = type_name(&input.type_url);
        if got != expected {
            return Err(Error::invalid_argument_because(
                "input",
                "WRONG_INPUT_TYPE",
                format!(
                    "kind {:?} takes input of type {expected}, got {}",
                    T::KIND,
                    quote(&input.type_url)
                ),
            ));
        }
        T::Input::decode(input.value.as_slice()).map_err(|e| {
            Error::invalid_argument_because(
                "input",
                "MALFORMED_INPUT",
                format!("input is not a valid {expected}: {e}"),
            )
        })
    }
}

impl<T: Task> ErasedTask for Erased<T> {
    fn describe(&self) -> TaskKind {
        let options = self.0.options();
        TaskKind {
            name: T::KIND.to_owned(),
            input_type: T::Input::full_name(),
            response_type: T::Output::full_name(),
            details_type: T::DETAILS_TYPE.unwrap_or_default().to_owned(),
            retry_safe: options.retry_safe,
            max_concurrency: options
                .max_concurrency
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            max_attempts: options.retry.max_attempts.max(1),
            default_timeout: options
                .default_timeout
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            in_process: true,
            max_per_key: options
                .max_per_key
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            ..TaskKind::default()
        }
    }

    fn options(&self) -> TaskOptions {
        self.0.options()
    }

    fn descriptors(&self) -> Option<prost_types::FileDescriptorSet> {
        self.0.descriptors()
    }

    fn check_input(&self, input: &Any) -> Result<(), Error> {
        let decoded = self.decode(input)?;
        self.0.validate(&decoded).map_err(task_error_to_rpc)
    }

    fn run(&self, input: Any, ctx: TaskContext) -> BoxFuture<Result<Any, TaskError>> {
        let task = Arc::clone(&self.0);
        let decoded = self.decode(&input);
        Box::pin(async move {
            let input = decoded.map_err(|e| TaskError::invalid_argument(e.to_string()))?;
            let output = task.run(input, ctx).await?;
            Ok(pack(&output))
        })
    }
}

/// Maps a kind's validation failure to the RPC error the submitter sees, keeping the kind's
/// code (a code that makes no sense for a refusal becomes INVALID_ARGUMENT).
fn task_error_to_rpc(e: TaskError) -> Error {
    let code = match e.code {
        Code::Ok | Code::Cancelled | Code::Unknown => Code::InvalidArgument,
        code => code,
    };
    if code == Code::InvalidArgument {
        return Error::invalid_argument_because("input", "INPUT_REFUSED", e.message);
    }
    Error::InputRefused {
        code,
        message: e.message,
    }
}

/// Why a kind could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// A kind of that name is registered already.
    #[error("a kind named {kind:?} is registered already; each kind needs a name of its own")]
    Taken {
        /// The name asked for.
        kind: String,
    },
}

/// The registered kinds, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn ErasedTask>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a kind.
    ///
    /// # Errors
    /// [`RegisterError::Taken`] when a kind of that name is registered already (the registry
    /// is left as it was: a kind is never replaced silently).
    pub fn register<T: Task>(&mut self, task: T) -> Result<&mut Self, RegisterError> {
        self.register_erased(T::KIND, Arc::new(Erased(Arc::new(task))))
    }

    /// Registers a kind with its types erased (its name given at run time).
    pub(crate) fn register_erased(
        &mut self,
        kind: &str,
        task: Arc<dyn ErasedTask>,
    ) -> Result<&mut Self, RegisterError> {
        match self.kinds.entry(kind.to_owned()) {
            std::collections::btree_map::Entry::Occupied(_) => Err(RegisterError::Taken {
                kind: kind.to_owned(),
            }),
            std::collections::btree_map::Entry::Vacant(free) => {
                free.insert(task);
                Ok(self)
            }
        }
    }

    /// Whether a kind is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// A kind's description.
    pub fn get(&self, kind: &str) -> Option<TaskKind> {
        self.kinds.get(kind).map(|k| k.describe())
    }

    /// Every kind's description, by name.
    pub fn describe(&self) -> Vec<TaskKind> {
        self.kinds.values().map(|k| k.describe()).collect()
    }

    /// The registered names, comma-separated (for error messages).
    pub fn names(&self) -> String {
        self.kinds.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    pub(crate) fn erased(&self, kind: &str) -> Option<&Arc<dyn ErasedTask>> {
        self.kinds.get(kind)
    }

    /// Every kind, by name.
    pub(crate) fn kinds(&self) -> impl Iterator<Item = (&str, &Arc<dyn ErasedTask>)> {
        self.kinds.iter().map(|(name, task)| (name.as_str(), task))
    }
}
