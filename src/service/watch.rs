//! `oprun.v1.WatchService`: streams of operation changes (see [`Runner::watch_operation`] and
//! [`Runner::watch_operations`]).
//!
//! Served by hand rather than through the generated server, so that the bytes of a change are
//! made once for every reader: a stream's body is the batches' gRPC form, each batch encoded
//! once however many readers of its filter send it (the generated server would encode every
//! change again for each reader). The REST gateway, calling in process, asks for the stream
//! itself instead ([`Handoff`]) and writes the batches' server-sent-events form, also made once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::Message;
use tonic::Status;
use tracing::Instrument;

use crate::error::Error;
use crate::model::OperationId;
use crate::proto::oprun::v1::{WatchOperationRequest, WatchOperationsRequest};
use crate::scheduler::{Changes, OperationChanged, Runner};

/// The largest request a stream is opened with (tonic's default for any method).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The WatchService over a [`Runner`].
#[derive(Clone)]
pub struct WatchApi {
    runner: Runner,
}

impl WatchApi {
    /// The service, ready to mount on a tonic router.
    pub fn server(runner: Runner) -> Self {
        Self { runner }
    }
}

impl tonic::server::NamedService for WatchApi {
    const NAME: &'static str = "oprun.v1.WatchService";
}

/// A slot an in-process caller (the REST gateway) puts into a call's extensions to be handed
/// the stream of batches itself, instead of their gRPC form: the call then answers at once
/// with no messages, and the slot holds the stream.
#[derive(Clone, Default)]
pub struct Handoff(Arc<Mutex<Option<Changes>>>);

impl Handoff {
    /// The stream the call left, if it left one.
    pub fn take(&self) -> Option<Changes> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn put(&self, changes: Changes) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(changes);
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for WatchApi {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let runner = self.runner.clone();
        Box::pin(async move {
            Ok(answer(runner, request)
                .await
                .unwrap_or_else(Status::into_http))
        })
    }
}

/// Opens the stream the request asks for, or says why not.
async fn answer(
    runner: Runner,
    request: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    let (parts, body) = request.into_parts();
    let handoff = parts.extensions.get::<Handoff>().cloned();
    let changes = match parts.uri.path() {
        "/oprun.v1.WatchService/WatchOperation" => {
            let span = tracing::info_span!("rpc.WatchOperation");
            async {
                let request: WatchOperationRequest = decode(body).await?;
                let id = OperationId::parse_name(&request.name).map_err(Error::from)?;
                Ok::<_, Status>(runner.watch_operation(&id).await?)
            }
            .instrument(span)
            .await?
        }
        "/oprun.v1.WatchService/WatchOperations" => {
            let span = tracing::info_span!("rpc.WatchOperations");
            async {
                let request: WatchOperationsRequest = decode(body).await?;
                let filter = super::parse_filter(&request.filter)?;
                Ok::<_, Status>(runner.watch_operations(filter, &request.filter))
            }
            .instrument(span)
            .await?
        }
        other => {
            return Err(Status::unimplemented(format!(
                "oprun.v1.WatchService has no method {}",
                crate::text::quote(other.rsplit('/').next().unwrap_or(other))
            )))
        }
    };
    let mut response = http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::empty())
        .map_err(|e| Status::internal(format!("cannot build the response: {e}")))?;
    match handoff {
        Some(slot) => {
            slot.put(changes);
            *response.body_mut() = body_of(futures::stream::empty());
        }
        None => *response.body_mut() = body_of(grpc_frames(changes)),
    }
    Ok(response)
}

/// A gRPC body: the frames of `stream`, then the trailers of its end.
fn body_of(
    stream: impl futures::Stream<Item = Result<Bytes, Status>> + Send + 'static,
) -> tonic::body::Body {
    tonic::body::Body::new(StreamBody::new(ended(stream)))
}

/// The frames of `stream`: its data, then trailers with the status it ended with (OK, or the
/// first error, after which nothing more is read).
fn ended(
    stream: impl futures::Stream<Item = Result<Bytes, Status>> + Send + 'static,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Status>> + Send + 'static {
    futures::stream::unfold(Some(Box::pin(stream)), |state| async move {
        let mut stream = state?;
        match stream.next().await {
            Some(Ok(bytes)) => Some((Ok(Frame::data(bytes)), Some(stream))),
            Some(Err(status)) => Some((Ok(Frame::trailers(trailers(&status))), None)),
            None => Some((Ok(Frame::trailers(trailers(&Status::ok("")))), None)),
        }
    })
}

/// The trailers that end a stream with `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    // A trailers-only answer's headers are the status's `grpc-*` headers.
    let headers = status
        .clone()
        .into_http::<tonic::body::Body>()
        .into_parts()
        .0
        .headers;
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("grpc-"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Each batch of `changes` in its gRPC form (length-prefixed messages), made once per batch.
fn grpc_frames(
    changes: Changes,
) -> impl futures::Stream<Item = Result<Bytes, Status>> + Send + 'static {
    changes.map(|batch| {
        let batch = batch.map_err(Status::from)?;
        Ok(batch.grpc_form(|changes| {
            let mut out = BytesMut::new();
            for change in changes {
                let message = proto_form(change);
                out.put_u8(0);
                out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
                out.put_slice(&message);
            }
            out.freeze()
        }))
    })
}

/// The change's `google.longrunning.Operation`, encoded once for every stream that sends it.
pub(crate) fn proto_form(change: &OperationChanged) -> Bytes {
    change
        .wire
        .proto
        .get_or_init(|| Bytes::from(change.record.to_operation().encode_to_vec()))
        .clone()
}

/// The request message of a call: one length-prefixed, uncompressed message.
async fn decode<M: Message + Default>(body: tonic::body::Body) -> Result<M, Status> {
    let bytes = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            Status::invalid_argument(format!(
                "the request could not be read (at most {MAX_REQUEST_BYTES} bytes): {e}"
            ))
        })?
        .to_bytes();
    let Some((&compressed, rest)) = bytes.split_first() else {
        return Err(crate::proto::codec::malformed("the request has no message"));
    };
    if compressed != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not accepted; send this one uncompressed",
        ));
    }
    let Some((length, message)) = rest.split_first_chunk::<4>() else {
        return Err(crate::proto::codec::malformed(
            "the message's length is cut short",
        ));
    };
    let length = usize::try_from(u32::from_be_bytes(*length)).unwrap_or(usize::MAX);
    if message.len() != length {
        return Err(crate::proto::codec::malformed(
            "the request is not one whole length-prefixed message",
        ));
    }
    M::decode(message).map_err(|e| crate::proto::codec::malformed(&e.to_string()))
}
