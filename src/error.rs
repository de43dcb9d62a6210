//! The library's error type and its one mapping to `tonic::Status`.
//!
//! Every error a client can see is built here, with a `google.rpc.ErrorInfo` detail (AIP-193:
//! an upper-case reason in the `oprun.dev` domain) and, for bad input, a `BadRequest` field
//! violation.

use std::collections::HashMap;

use tonic_types::{ErrorDetails, StatusExt};

use crate::store::StoreError;

/// The `ErrorInfo.domain` of every oprun error.
pub use crate::proto::ERROR_DOMAIN;

pub use crate::text::{quote, truncate_message, MAX_STATUS_MESSAGE, QUOTE_CHARS};

/// Errors of the runner and its services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed; `field` names the request field.
    #[error("{message}")]
    InvalidArgument {
        /// The request field at fault, e.g. `page_token` (in a batch, `requests[3].kind`).
        field: std::borrow::Cow<'static, str>,
        /// What was wrong and what is accepted.
        message: String,
        /// A stable upper-case reason, e.g. `INVALID_FILTER`.
        reason: &'static str,
    },
    /// No operation has that name (it never existed, or was deleted).
    #[error("operation {name} not found")]
    NotFound {
        /// The resource name asked for.
        name: String,
    },
    /// No schedule has that name.
    #[error("schedule {name} not found; `oprun schedule list` lists them")]
    ScheduleNotFound {
        /// The resource name asked for.
        name: String,
    },
    /// A schedule of that name exists already.
    #[error("schedule {name} already exists; pick another schedule_id, or update that one")]
    ScheduleExists {
        /// The resource name asked for.
        name: String,
    },
    /// The operation is not in a state that allows the call.
    #[error("{message}")]
    FailedPrecondition {
        /// What is wrong and what to do.
        message: String,
        /// A stable upper-case reason.
        reason: &'static str,
    },
    /// The caller's role may not do what it asked (start a kind that needs a higher role).
    #[error("{message}")]
    PermissionDenied {
        /// What was refused and which roles would do.
        message: String,
        /// A stable upper-case reason, e.g. `ROLE_TOO_LOW`.
        reason: &'static str,
        /// The caller's role.
        role: crate::auth::Role,
        /// The least role that would do.
        needed: crate::auth::Role,
    },
    /// A `request_id` was reused for a different request.
    #[error("{message}")]
    AlreadyExists {
        /// What conflicts.
        message: String,
    },
    /// A kind refused the input at submission, with the code it chose (e.g. PERMISSION_DENIED
    /// for a path outside the snapshot root, NOT_FOUND for a missing source).
    #[error("{message}")]
    InputRefused {
        /// The status code the kind chose.
        code: crate::Code,
        /// What was refused and why.
        message: String,
    },
    /// A bound is reached (e.g. the queue is full); retry after `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        /// Which bound, and how to get under it.
        message: String,
        /// When a retry may succeed (sent as a `google.rpc.RetryInfo`).
        retry_after: std::time::Duration,
    },
    /// The server is shutting down and accepts no new work.
    #[error("the server is shutting down and accepts no new operations; retry on another node or after restart")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::model::NameError> for Error {
    fn from(e: crate::model::NameError) -> Self {
        Error::invalid_argument("name", e.message)
    }
}

impl Error {
    /// A bad request field, with the generic reason `INVALID_ARGUMENT`.
    pub fn invalid_argument(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
            reason: "INVALID_ARGUMENT",
        }
    }

    /// A bad request field with a specific reason.
    pub fn invalid_argument_because(
        field: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
            reason,
        }
    }

    /// This error of the request at `index` of a batch, saying which: a field becomes
    /// `requests[index].field`, and a message starts `requests[index]: `.
    #[must_use]
    pub fn in_batch(self, index: usize) -> Self {
        let at = |message: String| format!("requests[{index}]: {message}");
        match self {
            Error::InvalidArgument {
                field,
                message,
                reason,
            } => Error::InvalidArgument {
                field: format!("requests[{index}].{field}").into(),
                message: at(message),
                reason,
            },
            Error::FailedPrecondition { message, reason } => Error::FailedPrecondition {
                message: at(message),
                reason,
            },
            Error::PermissionDenied {
                message,
                reason,
                role,
                needed,
            } => Error::PermissionDenied {
                message: at(message),
                reason,
                role,
                needed,
            },
            Error::AlreadyExists { message } => Error::AlreadyExists {
                message: at(message),
            },
            Error::InputRefused { code, message } => Error::InputRefused {
                code,
                message: at(message),
            },
            Error::ResourceExhausted {
                message,
                retry_after,
            } => Error::ResourceExhausted {
                message: at(message),
                retry_after,
            },
            other => other,
        }
    }

    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use tonic::Code;
        match self {
            Error::InvalidArgument { reason, .. } => (Code::InvalidArgument, reason),
            Error::NotFound { .. } => (Code::NotFound, "OPERATION_NOT_FOUND"),
            Error::ScheduleNotFound { .. } => (Code::NotFound, "SCHEDULE_NOT_FOUND"),
            Error::ScheduleExists { .. } => (Code::AlreadyExists, "SCHEDULE_EXISTS"),
            Error::FailedPrecondition { reason, .. } => (Code::FailedPrecondition, reason),
            Error::PermissionDenied { reason, .. } => (Code::PermissionDenied, reason),
            Error::AlreadyExists { .. } => (Code::AlreadyExists, "REQUEST_ID_REUSED"),
            Error::InputRefused { code, .. } => ((*code).into(), "INPUT_REFUSED"),
            Error::ResourceExhausted { .. } => (Code::ResourceExhausted, "QUEUE_FULL"),
            Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
            // Another process holds the data directory: it may let go, so retrying may help.
            Error::Store(StoreError::Locked(_)) => (Code::Unavailable, "STORE_LOCKED"),
            // Unreadable stored data will not heal by retrying.
            Error::Store(StoreError::Corrupt(_)) => (Code::DataLoss, "STORE_DATA_CORRUPT"),
            // A store that cannot answer now is UNAVAILABLE, never INTERNAL: stock clients
            // stop polling for good on INTERNAL, but retry UNAVAILABLE.
            Error::Store(_) => (Code::Unavailable, "STORE_UNAVAILABLE"),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let (code, reason) = err.code_and_reason();
        // Every message is bounded: it travels in a header (`grpc-message`), and the details
        // repeat it.
        let message = truncate_message(&err.to_string(), MAX_STATUS_MESSAGE);
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        match &err {
            Error::InvalidArgument { field, .. } => {
                metadata.insert("field".to_owned(), field.to_string());
                details.add_bad_request_violation(field.to_string(), message.clone());
            }
            Error::NotFound { name }
            | Error::ScheduleNotFound { name }
            | Error::ScheduleExists { name } => {
                metadata.insert("name".to_owned(), name.clone());
            }
            Error::PermissionDenied { role, needed, .. } => {
                metadata.insert("role".to_owned(), role.as_str().to_owned());
                metadata.insert("required_role".to_owned(), needed.as_str().to_owned());
            }
            Error::ResourceExhausted { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
            }
            Error::Store(e) => {
                let answered = if code == tonic::Code::DataLoss {
                    "DATA_LOSS"
                } else {
                    "UNAVAILABLE"
                };
                tracing::error!(error = %e, answered, "store failure answered as {answered}");
            }
            _ => {}
        }
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        tonic::Status::with_error_details(code, message, details)
    }
}
