//! What a client call can fail with: [`ClientError`], with its code and sources.

use std::sync::Arc;

use crate::Code;
use tonic_types::StatusExt;

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
    pub(super) fn config(message: String) -> Self {
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
