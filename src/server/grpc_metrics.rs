//! The conventional gRPC server metrics (`grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_handling_seconds`): a tower layer that counts each
//! call when it arrives and again when its status is known: in the response headers for a
//! trailers-only answer, else in the trailers at the end of the body. A body dropped before
//! its end (the client went away) counts as CANCELLED.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::http::code_name;
use crate::metrics::{CallSeries, GrpcLabels, Metrics};

/// What the metrics say about each known method: service, method, type.
type Methods = HashMap<String, GrpcLabels>;

/// The layer; see the module documentation.
#[derive(Clone)]
pub(crate) struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
    /// The methods, with their series in `metrics`.
    methods: Arc<MethodTable>,
}

/// Each known method by path, and the one all paths no service has share (so that no client
/// can grow the registry).
struct MethodTable {
    known: HashMap<&'static str, Arc<Method>>,
    unknown: Arc<Method>,
}

/// A method's labels and its series.
struct Method {
    labels: GrpcLabels,
    series: CallSeries,
}

impl Method {
    fn new(labels: GrpcLabels) -> Arc<Self> {
        Arc::new(Self {
            labels,
            series: CallSeries::default(),
        })
    }
}

impl GrpcMetricsLayer {
    /// Counts into `metrics`, naming methods (and their type) from oprun's descriptors.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        static METHODS: std::sync::OnceLock<Methods> = std::sync::OnceLock::new();
        let methods = METHODS.get_or_init(|| {
            let mut methods = Methods::new();
            add_methods(&mut methods, crate::proto::descriptor_pool());
            for set in [
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ] {
                if let Ok(pool) = prost_reflect::DescriptorPool::decode(set) {
                    add_methods(&mut methods, &pool);
                }
            }
            methods
        });
        let known = methods
            .iter()
            .map(|(path, labels)| (path.as_str(), Method::new(*labels)))
            .collect();
        let unknown = Method::new(GrpcLabels {
            grpc_type: "unknown",
            grpc_service: "unknown",
            grpc_method: "unknown",
        });
        Self {
            metrics,
            methods: Arc::new(MethodTable { known, unknown }),
        }
    }

    /// The method at `path` (a client's typo, or garbage: the unknown one).
    fn method(&self, path: &str) -> Arc<Method> {
        let MethodTable { known, unknown } = &*self.methods;
        Arc::clone(known.get(path).unwrap_or(unknown))
    }
}

fn add_methods(methods: &mut Methods, pool: &prost_reflect::DescriptorPool) {
    for service in pool.services() {
        for method in service.methods() {
            let grpc_type = match (method.is_client_streaming(), method.is_server_streaming()) {
                (false, false) => "unary",
                (false, true) => "server_stream",
                (true, false) => "client_stream",
                (true, true) => "bidi_stream",
            };
            // Leaked once per process and method of the descriptors (a fixed, small set):
            // the labels are then copied per call, never allocated.
            let grpc_service: &'static str = Box::leak(service.full_name().into());
            let grpc_method: &'static str = Box::leak(method.name().into());
            methods.insert(
                format!("/{grpc_service}/{grpc_method}"),
                GrpcLabels {
                    grpc_type,
                    grpc_service,
                    grpc_method,
                },
            );
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps.
#[derive(Clone)]
pub(crate) struct GrpcMetricsService<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = self.layer.method(req.uri().path());
        let metrics = Arc::clone(&self.layer.metrics);
        metrics.call_started(&method.series, &method.labels);
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            let mut pending = Some(Pending {
                metrics,
                method,
                started,
            });
            if let Some(code) = grpc_code(response.headers()) {
                if let Some(p) = pending.take() {
                    p.handled(code);
                }
            }
            Ok(response.map(|inner| MeteredBody { inner, pending }))
        })
    }
}

/// A call whose status is not counted yet.
struct Pending {
    metrics: Arc<Metrics>,
    method: Arc<Method>,
    started: Instant,
}

impl Pending {
    fn handled(self, code: &'static str) {
        self.metrics.call_handled(
            &self.method.series,
            self.method.labels,
            code,
            self.started.elapsed(),
        );
    }
}

/// The `grpc-status` in a header map, as a code name.
fn grpc_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    let code = tonic::Code::from_i32(value.parse().ok()?);
    Some(code_name(code))
}

/// A response body that counts the call's status when its trailers pass (or when it is
/// dropped first).
pub(crate) struct MeteredBody<B> {
    inner: B,
    pending: Option<Pending>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    if let Some(p) = self.pending.take() {
                        p.handled(code);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = self.pending.take() {
                    p.handled("UNKNOWN");
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = self.pending.take() {
                    p.handled("UNAVAILABLE");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.handled("CANCELLED");
        }
    }
}
