//! The operation model: oprun's own types for an operation and its life, independent of the wire.
//!
//! Generated prost types stop at the surface; everything inside the runner speaks these types
//! and converts to `google.longrunning.Operation` only when answering a client.

use std::fmt;
use std::time::SystemTime;

use prost::Name;
use prost_types::{Any, Timestamp};

use crate::proto::google::longrunning::{operation, Operation};
use crate::proto::google::rpc::{Code, Status};
use crate::proto::oprun::v1::{operation_metadata, OperationMetadata, Progress, RetryPolicy};
use crate::text::quote;

pub mod time;
mod transition;

pub use transition::{Change, Fence, IllegalTransition};

/// The collection every operation lives in.
pub const COLLECTION: &str = "operations";
/// Longest accepted operation id (the part after `operations/`).
pub const MAX_ID_LEN: usize = 128;

/// A resource name that is not `operations/{id}` with a valid id; the message says what is
/// wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NameError {
    /// What is wrong, quoting (a bounded prefix of) the name.
    pub message: String,
}

impl NameError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// A validated operation id: the `{id}` in `operations/{id}`.
///
/// Ids are URL-safe (`[A-Za-z0-9_-]`), opaque, server-assigned and never reused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(String);

impl OperationId {
    /// A fresh id: a UUID version 7 in lower-case hex (32 characters). Its first 48 bits are
    /// the creation time in milliseconds and the rest a counter and random bits, so ids made
    /// later sort later (in this process): the store's id index then grows at its end, where
    /// random ids would land on a random page of it at every insert. Opaque all the same:
    /// clients must not read anything into an id (the creation time is in the metadata).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }

    /// Parses a resource name `operations/{id}`.
    ///
    /// # Errors
    /// [`NameError`] naming what is wrong when the name is empty, has another collection, or
    /// an id with characters outside `[A-Za-z0-9_-]`.
    pub fn parse_name(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::new("name is empty; expected operations/{id}"));
        }
        let Some(id) = name.strip_prefix("operations/") else {
            return Err(NameError::new(format!(
                "name {} is malformed; expected operations/{{id}}",
                quote(name)
            )));
        };
        Self::parse_id(id).map_err(|reason| {
            NameError::new(format!("name {} is malformed: {reason}", quote(name)))
        })
    }

    /// Parses a bare id, as stored.
    fn parse_id(id: &str) -> Result<Self, String> {
        if id.is_empty() {
            return Err("the id after operations/ is empty".into());
        }
        if id.len() > MAX_ID_LEN {
            return Err(format!("the id is longer than {MAX_ID_LEN} characters"));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "the id contains {bad:?}; ids use only letters, digits, '-' and '_'"
            ));
        }
        Ok(Self(id.to_owned()))
    }

    /// Rebuilds an id read back from a store, which only ever holds ids this type produced.
    pub fn from_stored(id: String) -> Self {
        Self(id)
    }

    /// The bare id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The resource name, `operations/{id}`.
    pub fn name(&self) -> String {
        // Made on every answer and every write: joined, not formatted.
        [COLLECTION, "/", &self.0].concat()
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{COLLECTION}/{}", self.0)
    }
}

/// Where an operation is in its life. Mirrors `oprun.v1.OperationMetadata.State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Accepted and durable, waiting for capacity.
    Queued,
    /// A worker is running it.
    Running,
    /// Finished with a response.
    Succeeded,
    /// Finished with an error other than a client's cancel.
    Failed,
    /// Finished because a client cancelled it.
    Cancelled,
}

impl State {
    /// Every state, in the order of their enum numbers.
    pub const ALL: [State; 5] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Cancelled,
    ];

    /// Whether the operation has finished.
    pub fn is_done(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }

    /// The enum value name used on the wire and in filters.
    pub fn as_str(self) -> &'static str {
        self.to_proto().as_str_name()
    }

    /// The wire enum.
    pub fn to_proto(self) -> operation_metadata::State {
        use operation_metadata::State as P;
        match self {
            State::Queued => P::Queued,
            State::Running => P::Running,
            State::Succeeded => P::Succeeded,
            State::Failed => P::Failed,
            State::Cancelled => P::Cancelled,
        }
    }

    /// From the stored enum number; `None` for numbers this version does not know.
    pub fn from_i32(n: i32) -> Option<Self> {
        use operation_metadata::State as P;
        Some(match P::try_from(n).ok()? {
            P::Queued => State::Queued,
            P::Running => State::Running,
            P::Succeeded => State::Succeeded,
            P::Failed => State::Failed,
            P::Cancelled => State::Cancelled,
            P::Unspecified => return None,
        })
    }
}

/// How a finished operation ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The kind's response message.
    Response(Any),
    /// A `google.rpc.Status` with a non-OK code.
    Error(Status),
}

impl Outcome {
    /// An error outcome with `code` (never OK: [`Code::Ok`] becomes [`Code::Unknown`]) and a
    /// message, with no details.
    pub fn error(code: Code, message: impl Into<String>) -> Self {
        let code = if code == Code::Ok {
            Code::Unknown
        } else {
            code
        };
        Outcome::Error(Status {
            code: code as i32,
            message: message.into(),
            details: Vec::new(),
        })
    }
}

/// Why an operation's cancellation token was cancelled. Only a client's cancel ends an
/// operation as CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// A client called CancelOperation.
    Client,
    /// The server is shutting down; the operation is resumed or aborted on the next start.
    Shutdown,
    /// The operation's deadline passed; it ends DEADLINE_EXCEEDED.
    Deadline,
    /// This node no longer holds the operation (its lease ended and another node took it
    /// over, or it was removed): the worker stops and writes nothing.
    Lost,
}

/// An operation as oprun keeps it: the metadata fields plus the input and the result.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRecord {
    /// Store-assigned position in creation order (0 until inserted); lists are ordered by it.
    pub seq: i64,
    /// The id.
    pub id: OperationId,
    /// The registered kind.
    pub kind: String,
    /// The kind's input, as submitted.
    pub input: Any,
    /// The AIP-155 idempotency key, if the client sent one.
    pub request_id: Option<String>,
    /// Life-cycle state.
    pub state: State,
    /// When it was accepted.
    pub create_time: SystemTime,
    /// When its current attempt started.
    pub start_time: Option<SystemTime>,
    /// When anything about it last changed.
    pub update_time: SystemTime,
    /// When it finished.
    pub end_time: Option<SystemTime>,
    /// Work done so far.
    pub progress: Progress,
    /// The worker's latest words.
    pub status_message: String,
    /// Whether a client asked to cancel it.
    pub requested_cancellation: bool,
    /// Which run this is, from 1.
    pub attempt: u32,
    /// The kind's own progress message.
    pub details: Option<Any>,
    /// Set exactly when the state is done.
    pub outcome: Option<Outcome>,
    /// While queued: not started before this time (delayed start or retry backoff).
    pub next_attempt_time: Option<SystemTime>,
    /// When the operation times out.
    pub deadline: Option<SystemTime>,
    /// The previous attempt's error, once a failure was retried (kept after the end).
    pub last_error: Option<Status>,
    /// How many times the stored operation has changed, from 1 at its insert. Writes that
    /// expect an older version are refused (fencing): see [`Fence`].
    pub version: u64,
    /// The node running it (while RUNNING), or that ran it last.
    pub owner: Option<String>,
    /// The W3C `traceparent` of the submitting call (validated; empty for none).
    pub traceparent: String,
    /// Higher runs first (see [`MIN_PRIORITY`] and [`MAX_PRIORITY`]); 0 by default.
    pub priority: i32,
    /// While it is not done, a submission of the same kind with this key returns it.
    pub unique_key: Option<String>,
    /// The retry policy its submission narrowed the kind's to, if it did.
    pub retry_policy: Option<RetryPolicy>,
    /// Operations of its kind with the same key share the kind's limit per key.
    pub concurrency_key: Option<String>,
    /// The schedule that started it (`schedules/{id}`), if one did.
    pub schedule: Option<String>,
    /// The fire time it ran for, when a schedule started it.
    pub fire_time: Option<SystemTime>,
}

/// The lowest priority a submission may give.
pub const MIN_PRIORITY: i32 = -100;
/// The highest priority a submission may give.
pub const MAX_PRIORITY: i32 = 100;

impl OperationRecord {
    /// A new queued operation.
    pub fn new_queued(kind: String, input: Any, request_id: Option<String>) -> Self {
        let now = time::to_micros(SystemTime::now());
        Self {
            seq: 0,
            id: OperationId::generate(),
            kind,
            input,
            request_id,
            state: State::Queued,
            create_time: now,
            start_time: None,
            update_time: now,
            end_time: None,
            progress: Progress::default(),
            status_message: String::new(),
            traceparent: String::new(),
            requested_cancellation: false,
            attempt: 1,
            details: None,
            outcome: None,
            next_attempt_time: None,
            deadline: None,
            last_error: None,
            version: 1,
            owner: None,
            priority: 0,
            unique_key: None,
            retry_policy: None,
            concurrency_key: None,
            schedule: None,
            fire_time: None,
        }
    }

    /// Whether it has finished.
    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }

    /// The error code of a finished, failed operation.
    pub fn error_code(&self) -> Option<i32> {
        match &self.outcome {
            Some(Outcome::Error(status)) => Some(status.code),
            _ => None,
        }
    }

    /// Ends the operation at the wall clock's now, outside the state machine: for unit tests'
    /// fixtures only (the runner ends operations through [`OperationRecord::apply`]).
    #[cfg(test)]
    pub(crate) fn finish(&mut self, state: State, outcome: Outcome) {
        debug_assert!(state.is_done());
        let now = time::to_micros(SystemTime::now());
        self.state = state;
        self.outcome = Some(outcome);
        self.end_time = Some(now);
        self.update_time = now;
        self.next_attempt_time = None;
    }

    /// Ends the operation with an error status (a unit tests' fixture, as `finish`).
    #[cfg(test)]
    pub(crate) fn fail(&mut self, state: State, code: Code, message: impl Into<String>) {
        self.finish(state, Outcome::error(code, message));
    }

    /// The metadata message.
    pub fn metadata(&self) -> OperationMetadata {
        OperationMetadata {
            kind: self.kind.clone(),
            state: self.state.to_proto() as i32,
            create_time: Some(Timestamp::from(self.create_time)),
            start_time: self.start_time.map(Timestamp::from),
            update_time: Some(Timestamp::from(self.update_time)),
            end_time: self.end_time.map(Timestamp::from),
            progress: Some(self.progress.clone()),
            status_message: self.status_message.clone(),
            requested_cancellation: self.requested_cancellation,
            attempt: self.attempt,
            details: self.details.clone(),
            next_attempt_time: self.next_attempt_time.map(Timestamp::from),
            deadline: self.deadline.map(Timestamp::from),
            last_error: self.last_error.clone(),
            node: self.owner.clone().unwrap_or_default(),
            traceparent: self.traceparent.clone(),
            priority: self.priority,
            unique_key: self.unique_key.clone().unwrap_or_default(),
            retry_policy: self.retry_policy,
            concurrency_key: self.concurrency_key.clone().unwrap_or_default(),
            schedule: self.schedule.clone().unwrap_or_default(),
            fire_time: self.fire_time.map(Timestamp::from),
        }
    }

    /// The wire form.
    pub fn to_operation(&self) -> Operation {
        let result = match &self.outcome {
            Some(Outcome::Response(any)) => Some(operation::Result::Response(any.clone())),
            Some(Outcome::Error(status)) => Some(operation::Result::Error(status.clone())),
            None => None,
        };
        Operation {
            name: self.id.name(),
            metadata: Some(pack(&self.metadata())),
            done: self.is_done() && result.is_some(),
            result,
        }
    }
}

/// Packs a message into an `Any` with a `type.googleapis.com/` type URL.
pub fn pack<M: Name>(message: &M) -> Any {
    Any {
        type_url: type_url::<M>(),
        value: message.encode_to_vec(),
    }
}

/// `M`'s type URL, as [`Name::type_url`] makes it for this crate's messages (the domain
/// `type.googleapis.com`), joined rather than formatted twice: every operation's metadata
/// is packed on each answer and write.
fn type_url<M: Name>() -> String {
    const DOMAIN: &str = "type.googleapis.com/";
    if M::PACKAGE.is_empty() {
        [DOMAIN, M::NAME].concat()
    } else {
        [DOMAIN, M::PACKAGE, ".", M::NAME].concat()
    }
}

/// The full message name in a type URL (`type.googleapis.com/oprun.v1.X` → `oprun.v1.X`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The type URLs `pack` joins are the ones prost makes.
    #[test]
    fn type_urls_are_prosts() {
        use crate::proto::google::longrunning::Operation;
        use crate::proto::oprun::v1::{OperationMetadata, SleepInput};
        assert_eq!(
            type_url::<OperationMetadata>(),
            OperationMetadata::type_url()
        );
        assert_eq!(type_url::<SleepInput>(), SleepInput::type_url());
        assert_eq!(type_url::<Operation>(), Operation::type_url());
        assert_eq!(
            type_url::<prost_types::Duration>(),
            prost_types::Duration::type_url()
        );
        let id = OperationId::generate();
        assert_eq!(id.name(), format!("operations/{}", id.as_str()));
    }

    /// Names are parsed strictly: the collection must be `operations` and ids URL-safe.
    #[test]
    fn parse_name_accepts_ids_and_rejects_garbage() {
        let id = OperationId::generate();
        assert_eq!(OperationId::parse_name(&id.name()).unwrap(), id);
        for bad in [
            "",
            "operations/",
            "bogus",
            "tasks/abc",
            "operations/a/b",
            "operations/a b",
        ] {
            let err = OperationId::parse_name(bad).unwrap_err();
            assert!(err.message.contains("name"), "{bad:?}: {err}");
        }
        let long = format!("operations/{}", "a".repeat(MAX_ID_LEN + 1));
        assert!(OperationId::parse_name(&long).is_err());
    }

    /// Ids made one after another sort in that order (so the store's id index grows at its
    /// end), all distinct, 32 lower-case hex characters.
    #[test]
    fn ids_are_time_ordered_and_distinct() {
        let ids: Vec<OperationId> = (0..10_000).map(|_| OperationId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
        for id in &ids {
            assert_eq!(id.as_str().len(), 32);
            assert!(id
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }

    /// Type URLs use the domain stock Google clients require.
    #[test]
    fn metadata_type_url_is_googleapis() {
        let rec = OperationRecord::new_queued("sleep".into(), Any::default(), None);
        let op = rec.to_operation();
        assert_eq!(
            op.metadata.unwrap().type_url,
            "type.googleapis.com/oprun.v1.OperationMetadata"
        );
        assert!(!op.done);
        assert!(op.result.is_none());
    }

    /// A done operation carries exactly one of error or response.
    #[test]
    fn finished_operation_has_exactly_one_result() {
        let mut rec = OperationRecord::new_queued("sleep".into(), Any::default(), None);
        rec.fail(State::Cancelled, Code::Cancelled, "cancelled");
        let op = rec.to_operation();
        assert!(op.done);
        match op.result {
            Some(operation::Result::Error(s)) => assert_eq!(s.code, 1),
            other => panic!("expected an error result, got {other:?}"),
        }
        assert_eq!(rec.error_code(), Some(1));
    }
}

/// A W3C `traceparent` header value (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`),
/// checked as the Trace Context specification asks: `None` for anything else (an invalid
/// value is ignored, never an error), and for all-zero ids or version `ff`.
pub fn traceparent(value: &str) -> Option<String> {
    let v = value.trim();
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let [version, trace, parent, flags, rest @ ..] = parts.as_slice() else {
        return None;
    };
    let ok = hex(version, 2)
        && *version != "ff"
        && (rest.is_empty() || *version != "00")
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    ok.then(|| format!("{version}-{trace}-{parent}-{flags}"))
}

/// The trace id and parent span id of a checked `traceparent`.
pub fn trace_ids(traceparent: &str) -> Option<(&str, &str)> {
    let mut parts = traceparent.split('-').skip(1);
    Some((parts.next()?, parts.next()?))
}

#[cfg(test)]
mod traceparent_tests {
    use super::*;

    /// The examples of the W3C Trace Context specification, and what it says to ignore.
    #[test]
    fn traceparent_is_checked() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(good).as_deref(), Some(good));
        assert_eq!(
            trace_ids(good),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent(bad), None, "{bad:?}");
        }
        // A later version may carry more fields; its first four are read.
        assert!(traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }
}
