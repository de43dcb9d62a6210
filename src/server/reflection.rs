//! gRPC server reflection (v1 and v1alpha) over every type the server knows now: oprun's
//! protos and health's, and the types of every kind, in process or declared by a worker
//! ([`crate::types::Types`]). tonic-reflection serves a fixed set of files; this keeps one
//! built for the registry's current pool and builds another when the pool changes (a kind
//! was declared), so that `grpcurl describe resize.v1.ResizeInput` answers as soon as a
//! worker has declared `resize`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use prost_reflect::DescriptorPool;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::types::Types;

type Inner = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;
/// A built service and the pool it was built for.
type Built = Option<(Arc<DescriptorPool>, Inner)>;

/// A reflection service that follows the type registry (v1alpha when `ALPHA`).
#[derive(Clone)]
pub(crate) struct LiveReflection<const ALPHA: bool> {
    types: Types,
    /// The service built for a pool, and that pool (compared by identity: the registry hands
    /// out a new `Arc` whenever it changes).
    built: Arc<Mutex<Built>>,
}

/// gRPC server reflection, v1.
pub(crate) type ReflectionV1 = LiveReflection<false>;
/// gRPC server reflection, v1alpha.
pub(crate) type ReflectionV1Alpha = LiveReflection<true>;

impl<const ALPHA: bool> LiveReflection<ALPHA> {
    /// Reflection over `types`, built now for its current pool.
    ///
    /// # Errors
    /// tonic-reflection's, if oprun's embedded descriptors cannot serve (a build defect).
    pub(crate) fn new(types: Types) -> Result<Self, tonic_reflection::server::Error> {
        let live = Self {
            types,
            built: Arc::new(Mutex::new(None)),
        };
        live.current()?;
        Ok(live)
    }

    /// The service for the registry's pool now, built if the pool changed.
    fn current(&self) -> Result<Inner, tonic_reflection::server::Error> {
        let pool = self.types.pool();
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((for_pool, service)) = built.as_ref() {
            if Arc::ptr_eq(for_pool, &pool) {
                return Ok(service.clone());
            }
        }
        let service = build(&pool, ALPHA)?;
        *built = Some((pool, service.clone()));
        Ok(service)
    }
}

/// A tonic-reflection service over oprun's and health's files (their encoded bytes, custom
/// options kept), then every other file of `pool` (the kinds' types).
fn build(pool: &DescriptorPool, alpha: bool) -> Result<Inner, tonic_reflection::server::Error> {
    let kinds = prost_types::FileDescriptorSet {
        file: pool
            .files()
            .map(|f| f.file_descriptor_proto().clone())
            .collect(),
    };
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(kinds);
    Ok(if alpha {
        BoxCloneSyncService::new(builder.build_v1alpha()?)
    } else {
        BoxCloneSyncService::new(builder.build_v1()?)
    })
}

impl<const ALPHA: bool> Service<http::Request<Body>> for LiveReflection<ALPHA> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.current();
        Box::pin(async move {
            match service {
                Ok(service) => service.oneshot(request).await,
                Err(e) => {
                    // The registry only holds pools that built; should one not serve, say so
                    // rather than fail the connection.
                    tracing::error!(error = %e, "reflection: cannot build over the current types");
                    Ok(
                        tonic::Status::internal(format!("reflection is unavailable: {e}"))
                            .into_http(),
                    )
                }
            }
        })
    }
}

impl NamedService for LiveReflection<false> {
    const NAME: &'static str = "grpc.reflection.v1.ServerReflection";
}

impl NamedService for LiveReflection<true> {
    const NAME: &'static str = "grpc.reflection.v1alpha.ServerReflection";
}
