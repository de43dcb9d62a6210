//! A request to run a task: [`Submission`], and the bounds of its fields.

use std::time::Duration;

use prost_types::Any;

/// A request to run a task: [`Submission::new`] and its setters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Submission {
    /// The registered kind.
    pub kind: String,
    /// The kind's input message.
    pub input: Option<Any>,
    /// AIP-155 idempotency key (empty: none).
    pub request_id: String,
    /// Ends the operation DEADLINE_EXCEEDED if not done this long after submission; `None`
    /// uses the kind's default timeout.
    pub timeout: Option<Duration>,
    /// Keeps the operation queued until then.
    pub not_before: Option<std::time::SystemTime>,
    /// The W3C `traceparent` of the submitting call; kept in the operation's metadata when
    /// valid (see [`crate::model::traceparent`]), ignored otherwise.
    pub traceparent: Option<String>,
    /// The role of the caller the submission comes from, when the server checks tokens: the
    /// kind's [`TaskOptions::start_role`](crate::task::TaskOptions::start_role) must not be
    /// above it (else PERMISSION_DENIED). `None`: a caller trusted with every kind (a server
    /// without tokens, or code in this process).
    pub role: Option<crate::auth::Role>,
    /// Higher runs first, from [`MIN_PRIORITY`](crate::model::MIN_PRIORITY) to
    /// [`MAX_PRIORITY`](crate::model::MAX_PRIORITY); 0 by default.
    pub priority: i32,
    /// While an operation of the kind with this key is not done, the submission returns it
    /// instead of creating another (empty: no key; at most [`MAX_UNIQUE_KEY_LEN`] bytes).
    pub unique_key: String,
    /// Narrows the kind's retry policy for this operation (unset fields keep the kind's).
    pub retry_policy: Option<crate::proto::oprun::v1::RetryPolicy>,
    /// Operations of the kind with the same key share its limit per key (empty: no key; at
    /// most [`MAX_UNIQUE_KEY_LEN`] bytes).
    pub concurrency_key: String,
    /// The schedule the submission fires for (`schedules/{id}`; empty: none), kept in the
    /// operation's metadata.
    pub schedule: String,
    /// The fire time it runs for, with `schedule`.
    pub fire_time: Option<std::time::SystemTime>,
}

/// The longest unique key a submission may carry, in bytes.
pub const MAX_UNIQUE_KEY_LEN: usize = 128;

/// The most submissions one [`Runner::submit_many`](super::Runner::submit_many) (BatchSubmitTasks) takes.
pub const MAX_BATCH_SUBMIT: usize = 1000;

impl Submission {
    /// A submission of `kind` with `input` and nothing else.
    pub fn new(kind: impl Into<String>, input: Any) -> Self {
        Self {
            kind: kind.into(),
            input: Some(input),
            ..Self::default()
        }
    }
}

setters!(Submission {
    kind: String,
    request_id: String,
    priority: i32,
    unique_key: String,
    concurrency_key: String,
    schedule: String,
} optional {
    input: Any,
    timeout: Duration,
    not_before: std::time::SystemTime,
    traceparent: String,
    role: crate::auth::Role,
    retry_policy: crate::proto::oprun::v1::RetryPolicy,
    fire_time: std::time::SystemTime,
});
