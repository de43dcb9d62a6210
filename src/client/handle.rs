//! Following an operation: [`OperationHandle`] waits for its end (WaitOperation, falling back
//! to polling), streams its progress (WatchOperation, reopened when the stream breaks),
//! cancels it, and reads its typed result or error.

use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use prost::{Message, Name};

use crate::Code;

use crate::model::type_name;
use crate::proto::google::longrunning::{
    operation, CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, Operation,
    WaitOperationRequest,
};
use crate::proto::oprun::v1::{OperationMetadata, WatchOperationRequest};

use super::{Client, ClientError};

/// How long [`OperationHandle::wait`] asks the server to wait per call.
const WAIT_CALL: Duration = Duration::from_secs(50);

/// Polling with Get when WaitOperation is not served: from 1 s, ×1.5, up to 20 s (the
/// backoff of Google's own clients).
const POLL_FIRST: Duration = Duration::from_secs(1);

const POLL_MAX: Duration = Duration::from_secs(20);

/// How many times in a row a call is retried on UNAVAILABLE (a restart, a lost connection),
/// a second apart.
const RETRIES: u32 = 30;

/// An operation, and the type of its response.
pub struct OperationHandle<O> {
    pub(super) client: Client,
    pub(super) name: String,
    pub(super) _output: PhantomData<fn() -> O>,
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
    use crate::proto::google::longrunning::operation;

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
