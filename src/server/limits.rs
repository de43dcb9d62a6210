//! What one client may hold of the server: the tower layer around every call that bounds the
//! bytes of responses waiting for clients to read them, and tells the connection a call is in
//! flight (so it is not closed as idle).
//!
//! A response that a client does not read (an HTTP/2 flow-control window of zero) stays in the
//! server's memory until the client reads it or goes away. Each response's encoded size is
//! taken from one budget, shared by every connection, when the response is ready, and given
//! back when the call ends (sent, or reset when the connection closes); a response that does
//! not fit in what is left is answered RESOURCE_EXHAUSTED instead (with a `RetryInfo`).
//!
//! A response still waiting after the unread timeout has its connection closed (see
//! `super::incoming`), which ends every call on it and gives their bytes back: one client
//! cannot hold the budget for long.
//!
//! The response is handed to the connection in [`CHUNK`]-byte pieces: hyper takes one piece,
//! then waits for the client's window before it takes the next, so what it holds per call is
//! one piece (and h2's send buffer what the window allows) while the rest stays here, counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::incoming::{CallGuard, Connections, UnreadGuard};
pub(crate) use crate::budget::ResponseBudget;

use crate::budget::CHUNK;

/// The layer: every call is counted on its connection and its response is budgeted.
#[derive(Debug, Clone)]
pub(crate) struct LimitsLayer {
    budget: ResponseBudget,
    connections: Arc<Connections>,
}

impl LimitsLayer {
    pub(crate) fn new(budget: ResponseBudget, connections: Arc<Connections>) -> Self {
        Self {
            budget,
            connections,
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`LimitsLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct Limits<S> {
    inner: S,
    layer: LimitsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Limits<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let ext = req.extensions();
        let info = ext.get::<TcpConnectInfo>().cloned().or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(|i| i.get_ref().clone())
        });
        let activity = info.and_then(|info| self.layer.connections.find(&info));
        let call = activity.as_ref().map(|activity| activity.begin());
        let budget = self.layer.budget.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let (parts, mut body) = response.await?.into_parts();
            // A unary response is ready at once: take its first frame now to learn its size.
            // (A stream's first message may not be; it then passes through unbudgeted.)
            let first = match futures::FutureExt::now_or_never(std::future::poll_fn(|cx| {
                Pin::new(&mut body).poll_frame(cx)
            })) {
                Some(Some(Ok(frame))) => Some(frame),
                Some(Some(Err(e))) => {
                    let status = tonic::Status::from_error(e.into());
                    return Ok(status.into_http());
                }
                Some(None) | None => None,
            };
            let size = first
                .as_ref()
                .and_then(Frame::data_ref)
                .map_or(0, Bytes::len);
            let permit = if size == 0 {
                None
            } else {
                match budget.take(size) {
                    Some(permit) => Some(permit),
                    None => return Ok(budget.exhausted(size).into_http()),
                }
            };
            let (first, rest) = match first.map(Frame::into_data) {
                Some(Ok(data)) => (None, data),
                Some(Err(frame)) => (Some(frame), Bytes::new()),
                None => (None, Bytes::new()),
            };
            // Until the call ends (hyper takes the next piece only once the client's window
            // has room, and ends the call after the last), the unread timeout watches it.
            let unread = activity
                .filter(|_| !rest.is_empty())
                .map(|activity| activity.hold_unread());
            let body = Budgeted {
                inner: body,
                rest,
                first,
                permit: permit.map(|p| (budget, p)),
                _unread: unread,
                _call: call,
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

/// A response body that holds its bytes' share of the budget until it ends, hands its first
/// message on in [`CHUNK`]-byte pieces, and keeps its call counted on the connection.
struct Budgeted<B> {
    inner: B,
    /// What is left of the message taken early to learn the response's size.
    rest: Bytes,
    /// A first frame that was not data (trailers of an empty response), to pass on as is.
    first: Option<Frame<Bytes>>,
    /// The response's share of the budget, given back when the body is dropped.
    permit: Option<(ResponseBudget, OwnedSemaphorePermit)>,
    /// Held until the call ends: the response waits for the client's window meanwhile.
    _unread: Option<UnreadGuard>,
    _call: Option<CallGuard>,
}

impl<B> Drop for Budgeted<B> {
    fn drop(&mut self) {
        if let Some((budget, permit)) = self.permit.take() {
            budget.release(permit);
        }
    }
}

impl<B> Body for Budgeted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if !self.rest.is_empty() {
            let n = self.rest.len().min(CHUNK);
            let piece = self.rest.split_to(n);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let n = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        // The upper bound first: a lower one above it would not be taken.
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(n));
        }
        hint.set_lower(inner.lower().saturating_add(n));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget hands out bytes until it is spent and takes them back when released.
    #[test]
    fn budget_is_bounded() {
        let budget = ResponseBudget::new(1000);
        let a = budget.take(600).expect("fits");
        assert!(budget.take(600).is_none(), "600 + 600 > 1000");
        drop(a);
        assert!(budget.take(600).is_some());
        let msg = budget.exhausted(600).message().to_owned();
        assert!(msg.contains("600-byte"), "{msg}");
    }
}
