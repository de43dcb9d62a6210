//! The HTTP listener (`--http-listen`): the REST gateway, server-sent events, the dashboard,
//! probes and metrics, served by hyper (HTTP/1.1 and h2; plaintext, or TLS with ALPN) over the
//! accept loop the gRPC listener uses, so that every guard holds here too:
//!
//! - the connection cap, and backoff when out of descriptors (`incoming`);
//! - a connection must send its whole first request's headers within the handshake timeout
//!   (a silent socket, or headers at a byte a second, are closed), and a later request's
//!   headers within the idle timeout of the previous response's end (hyper's header timer: a
//!   slow request then holds a connection no longer than an idle one may); a request body must
//!   arrive within the read timeout of its headers;
//! - a connection with no call in flight for the idle timeout is closed, and one whose response
//!   waits unread for the unread timeout;
//! - every byte of every response, a stream's events included, counts against the unread
//!   response budget from the moment it is handed to hyper until hyper has written it to the
//!   socket (the budget travels with the bytes, in [`Piece`]): a response whose first bytes do
//!   not fit is answered 429 RESOURCE_EXHAUSTED, and a stream whose next event does not fit is
//!   ended (its client reconnects and re-lists), so no reader that stops reading makes the
//!   server hold more than the budget;
//! - a request hyper cannot parse (an over-long URI or header block, bytes HTTP does not
//!   allow) is answered with Google's JSON error where the connection allows it (its first
//!   request, see [`ParseErrors`]), instead of an empty body;
//! - at shutdown, connections with nothing in flight close at once, the others get the grace
//!   period, then are closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::Router;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt;

use super::incoming::{accept, Activity, CallGuard, ConnectionRules, Connections, UnreadGuard};
use crate::budget::{ResponseBudget, CHUNK};

/// The gRPC services a listener serves beside the HTTP surface: requests whose content type
/// is `application/grpc…` go to them (behind the same token check and call metrics as a
/// gRPC-only listener's).
pub(crate) type GrpcCalls = crate::http::GrpcService;

/// How the HTTP listener serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpRules {
    pub connection: ConnectionRules,
    pub read_timeout: Duration,
    pub max_streams_per_connection: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// What a listener serves: the HTTP surface, and gRPC calls when it takes them.
pub(crate) struct Surfaces {
    pub http: Router,
    pub grpc: Option<GrpcCalls>,
}

/// Serves `surfaces` on `listener` until `shutdown`; then stops accepting, closes the connections
/// with nothing in flight, lets the others finish for up to `grace`, and closes what is left.
///
/// # Errors
/// None today (accept errors are retried); the type leaves room.
pub(crate) async fn serve(
    listener: TcpListener,
    surfaces: Surfaces,
    tls: Option<Arc<rustls::ServerConfig>>,
    rules: HttpRules,
    budget: ResponseBudget,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()> {
    let Surfaces { http: app, grpc } = surfaces;
    let connections = Connections::new();
    // Whatever way this future ends (dropped past the caller's own limit too), nothing it
    // accepted stays open.
    let _close = CloseOnDrop(Arc::clone(&connections));
    // Boxed, so that dropping it closes the listener when shutdown begins.
    let mut incoming = Box::pin(accept(listener, rules.connection, Arc::clone(&connections)));
    futures::pin_mut!(shutdown);
    let stopping = CancellationToken::new();
    let tracker = TaskTracker::new();
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            conn = incoming.next() => {
                let Some(Ok(conn)) = conn else { continue };
                let served = Served {
                    app: app.clone(),
                    grpc: grpc.clone(),
                    rules,
                    budget: budget.clone(),
                    stopping: stopping.clone(),
                };
                tracker.spawn(served.connection(conn, acceptor.clone()));
            }
        }
    }
    drop(incoming);
    stopping.cancel();
    connections.close_idle();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("HTTP connections still open after the shutdown grace period; closing them");
        connections.close_all();
        tracker.wait().await;
    }
    Ok(())
}

struct CloseOnDrop(Arc<Connections>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_all();
    }
}

/// What each connection's task needs.
struct Served {
    app: Router,
    grpc: Option<GrpcCalls>,
    rules: HttpRules,
    budget: ResponseBudget,
    stopping: CancellationToken,
}

impl Served {
    /// Serves one accepted connection to its end.
    async fn connection(self, conn: super::incoming::Conn, tls: Option<TlsAcceptor>) {
        let activity = Arc::clone(conn.activity());
        let info = TcpConnectInfo {
            local_addr: conn.addresses().map(|(local, _)| local),
            remote_addr: conn.addresses().map(|(_, remote)| remote),
        };
        match tls {
            None => {
                let io = ParseErrors::new(conn, Arc::clone(&activity));
                self.http(io, activity, info).await;
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(conn);
                match tokio::time::timeout(self.rules.connection.handshake_timeout, handshake).await
                {
                    Ok(Ok(tls)) => {
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            // HTTP/2 negotiated: a gRPC client may wait for its first call.
                            activity.mark_handshaken();
                        }
                        let io = ParseErrors::new(tls, Arc::clone(&activity));
                        self.http(io, activity, info).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = ?info.remote_addr, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = ?info.remote_addr, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn http<Io>(self, io: Io, activity: Arc<Activity>, info: TcpConnectInfo)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Runs from the end of the last response: it bounds idle keep-alive too.
            .header_read_timeout(self.rules.connection.idle_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.rules.max_streams_per_connection)
            .keep_alive_interval(self.rules.keepalive_interval)
            .keep_alive_timeout(self.rules.keepalive_timeout);
        let app = self.app;
        let grpc = self.grpc;
        let budget = self.budget;
        let read_timeout = self.rules.read_timeout;
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let call = activity.begin();
            let app = app.clone();
            let grpc = grpc.clone();
            let budget = budget.clone();
            let activity = Arc::clone(&activity);
            let info = info.clone();
            async move {
                let (mut parts, body) = request.into_parts();
                parts.extensions.insert(info);
                let protocol = if is_grpc(&parts.headers) {
                    Protocol::Grpc
                } else {
                    Protocol::Http
                };
                let response = match (protocol, grpc) {
                    (Protocol::Grpc, Some(grpc)) if parts.version == http::Version::HTTP_2 => {
                        // gRPC keeps its own deadlines (and a reflection stream stays open).
                        let request =
                            http::Request::from_parts(parts, tonic::body::Body::new(body));
                        let Ok(response) = grpc.oneshot(request).await;
                        response.map(AxumBody::new)
                    }
                    (Protocol::Grpc, Some(_)) => grpc_needs_http2(),
                    _ => {
                        let body = AxumBody::new(ReadDeadline::new(body, read_timeout));
                        let Ok(response) =
                            app.oneshot(http::Request::from_parts(parts, body)).await;
                        response
                    }
                };
                Ok::<_, Infallible>(metered(response, protocol, budget, activity, call))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(io), service);
        futures::pin_mut!(conn);
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = self.stopping.cancelled() => {}
        }
        conn.as_mut().graceful_shutdown();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    }
}

/// What a request speaks, which decides how it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    Http,
}

/// Whether the request is a gRPC call (`content-type: application/grpc`, `+proto`, …).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The answer to a gRPC call over HTTP/1.x: what it needs, in Google's JSON error.
fn grpc_needs_http2() -> http::Response<AxumBody> {
    crate::http::error_response(
        &tonic::Status::invalid_argument(
            "gRPC needs HTTP/2 (h2c with prior knowledge, or TLS with ALPN h2); this request \
             came over HTTP/1.x. REST/JSON is served here over HTTP/1.1: see /openapi.json",
        ),
        crate::proto::descriptor_pool(),
    )
}

/// The response with its body metered: its first data, when ready at once, must fit in the
/// budget (else the answer is RESOURCE_EXHAUSTED: for a gRPC call its status, for HTTP a 429
/// with Google's JSON error); later data that does not fit ends the body.
fn metered(
    response: http::Response<AxumBody>,
    protocol: Protocol,
    budget: ResponseBudget,
    activity: Arc<Activity>,
    call: CallGuard,
) -> http::Response<Metered> {
    let (parts, mut body) = response.into_parts();
    let first = futures::FutureExt::now_or_never(std::future::poll_fn(|cx| {
        Pin::new(&mut body).poll_frame(cx)
    }));
    let mut metered = Metered {
        inner: body,
        rest: Bytes::new(),
        held: None,
        trailers: None,
        budget: budget.clone(),
        activity,
        _call: call,
    };
    match first {
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => {
                let size = data.len();
                match budget.take(size) {
                    Some(permit) => {
                        metered.rest = data;
                        metered.held = Some(permit);
                    }
                    None => {
                        let refusal = match protocol {
                            Protocol::Grpc => budget.exhausted(size).into_http::<AxumBody>(),
                            Protocol::Http => crate::http::error_response(
                                &budget.exhausted(size),
                                crate::proto::descriptor_pool(),
                            ),
                        };
                        let (parts, body) = refusal.into_parts();
                        metered.inner = body;
                        return http::Response::from_parts(parts, metered);
                    }
                }
            }
            Err(frame) => metered.trailers = Some(frame),
        },
        Some(Some(Err(e))) => {
            tracing::debug!(error = %e, "a response body failed at once");
            metered.inner = AxumBody::empty();
        }
        Some(None) | None => {}
    }
    http::Response::from_parts(parts, metered)
}

/// A response body whose bytes hold their share of the budget until hyper has written them,
/// handed on in [`CHUNK`]-byte pieces, and whose call is counted on its connection until it
/// ends.
pub(crate) struct Metered {
    inner: AxumBody,
    /// What is left of the frame being handed on, and its share of the budget.
    rest: Bytes,
    held: Option<OwnedSemaphorePermit>,
    /// A first frame that was not data (trailers), to pass on as is.
    trailers: Option<Frame<Bytes>>,
    budget: ResponseBudget,
    activity: Arc<Activity>,
    _call: CallGuard,
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(permit) = self.held.take() {
            self.budget.release(permit);
        }
    }
}

/// Why a stream was ended: its next piece did not fit in the budget.
#[derive(Debug, thiserror::Error)]
#[error("the server holds its limit of responses clients have not read; this stream is ended (--max-unread-response-bytes)")]
pub(crate) struct OverBudget;

impl Body for Metered {
    type Data = Piece;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Piece>, Self::Error>>> {
        loop {
            if !self.rest.is_empty() {
                let n = self.rest.len().min(CHUNK);
                let bytes = self.rest.split_to(n);
                let share = if self.rest.is_empty() {
                    self.held.take()
                } else {
                    self.held.as_mut().and_then(|held| held.split(n))
                };
                let piece = Piece {
                    bytes,
                    share: share.map(|permit| (self.budget.clone(), permit)),
                    _unread: Some(self.activity.hold_unread()),
                };
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if let Some(frame) = self.trailers.take() {
                return Poll::Ready(Some(Ok(frame.map_data(Piece::unmetered))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => match self.budget.take(data.len()) {
                        Some(permit) => {
                            self.rest = data;
                            self.held = Some(permit);
                        }
                        None => {
                            tracing::info!(
                                bytes = data.len(),
                                "a response stream's next piece does not fit in the unread \
                                 response budget; ending the stream"
                            );
                            return Poll::Ready(Some(Err(Box::new(OverBudget))));
                        }
                    },
                    Err(frame) => return Poll::Ready(Some(Ok(frame.map_data(Piece::unmetered)))),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.trailers.is_none() && self.inner.is_end_stream()
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

/// Bytes of a response on their way to the client, holding their share of the budget (and
/// marking their connection as holding a response unread) until hyper drops them, which it
/// does once they are written to the socket.
pub(crate) struct Piece {
    bytes: Bytes,
    share: Option<(ResponseBudget, OwnedSemaphorePermit)>,
    _unread: Option<UnreadGuard>,
}

impl Piece {
    fn unmetered(bytes: Bytes) -> Self {
        Self {
            bytes,
            share: None,
            _unread: None,
        }
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        if let Some((budget, permit)) = self.share.take() {
            budget.release(permit);
        }
    }
}

impl Buf for Piece {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, n: usize) {
        self.bytes.advance(n);
    }
}

/// A request body that must arrive whole within the read timeout of its headers.
struct ReadDeadline {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl ReadDeadline {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

/// Why a request body was given up on.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} of its headers (--read-timeout)")]
struct TooSlow(Duration);

impl Body for ReadDeadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TooSlow(self.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The I/O of an HTTP connection that gives hyper's own refusal of a request it cannot parse
/// (400, 414 or 431, which hyper sends with an empty body) Google's JSON error: when nothing
/// was ever served on the connection (so what hyper writes can only be its refusal of the
/// first request), a response head of one of those statuses is replaced by the same status
/// with a JSON body. Later requests on a kept-alive connection keep hyper's bare answer.
pub(crate) struct ParseErrors<Io> {
    io: Io,
    activity: Arc<Activity>,
    /// The JSON answer being written in place of hyper's head.
    replacing: Option<Bytes>,
    /// Whether the first write was looked at.
    looked: bool,
}

impl<Io> ParseErrors<Io> {
    fn new(io: Io, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            replacing: None,
            looked: false,
        }
    }
}

/// The JSON answer to hyper's refusal whose head starts `head`, if it is one.
fn parse_error_answer(head: &[u8]) -> Option<Bytes> {
    let status = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let (code, message) = match status.get(..3)? {
        b"400" => (
            400,
            "the request is not valid HTTP/1.1 (a malformed request line, header, or bytes a \
             URI or header may not hold); HTTP/0.9 is not served",
        ),
        b"414" => (414, "the request's URI is too long"),
        b"431" => (431, "the request's headers are too large"),
        _ => return None,
    };
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "status": "INVALID_ARGUMENT",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "MALFORMED_HTTP",
                "domain": crate::proto::ERROR_DOMAIN,
            }],
        }
    })
    .to_string();
    let reason = match code {
        400 => "Bad Request",
        414 => "URI Too Long",
        _ => "Request Header Fields Too Large",
    };
    Some(Bytes::from(format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )))
}

impl<Io: AsyncWrite + Unpin> ParseErrors<Io> {
    /// Writes what is left of the replacement; ready once it is all written.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.replacing.as_mut().filter(|r| !r.is_empty()) {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rest.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `first` (the first bytes hyper writes) is its refusal of an unparsable first
    /// request; if so, the JSON answer takes its place.
    fn look(&mut self, first: &[u8]) -> bool {
        if self.looked {
            return false;
        }
        self.looked = true;
        if self.activity.served() {
            return false;
        }
        match parse_error_answer(first) {
            Some(answer) => {
                self.replacing = Some(answer);
                true
            }
            None => false,
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for ParseErrors<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for ParseErrors<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_some() {
            std::task::ready!(self.drain(cx))?;
            // hyper's own bytes are swallowed: the replacement said it all.
            return Poll::Ready(Ok(buf.len()));
        }
        if self.look(buf) {
            std::task::ready!(self.drain(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.replacing.is_some() {
            std::task::ready!(self.drain(cx))?;
            return Poll::Ready(Ok(total));
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if self.look(first) {
                std::task::ready!(self.drain(cx))?;
                return Poll::Ready(Ok(total));
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hyper's bare refusals become Google's JSON error with the same status; other heads are
    /// left alone.
    #[test]
    fn parse_errors_get_a_json_body() {
        for (head, code) in [
            (
                &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"[..],
                400,
            ),
            (b"HTTP/1.1 414 URI Too Long\r\n\r\n", 414),
            (b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n", 431),
        ] {
            let answer = parse_error_answer(head).expect("replaced");
            let text = String::from_utf8(answer.to_vec()).expect("UTF-8");
            let (head, body) = text.split_once("\r\n\r\n").expect("a head");
            assert!(head.starts_with(&format!("HTTP/1.1 {code} ")), "{head}");
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{head}"
            );
            let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
            assert_eq!(json["error"]["code"], code);
            assert_eq!(json["error"]["status"], "INVALID_ARGUMENT");
        }
        assert!(parse_error_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(
            parse_error_answer(b"\x00\x00\x12\x04").is_none(),
            "an h2 frame"
        );
    }
}
