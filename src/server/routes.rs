//! The pieces [`serve_with`](super::serve_with) assembles, public so that an embedder can put
//! oprun next to their own services on one tonic server ([`routes`]) and mount its REST gateway
//! in their own axum app ([`rest_router`]).

use std::time::Duration;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;
use tower::Layer;

use super::reflection::{ReflectionV1, ReflectionV1Alpha};
use crate::auth::{AuthLayer, Tokens};
use crate::http::{BrowserRules, Gateway, GrpcService, RulesError};
use crate::scheduler::Runner;
use crate::service::{
    AdminApi, OperationsApi, ScheduleApi, SnapshotApi, TaskApi, WatchApi, WorkerApi,
};

/// How often the health service checks that the store answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long one such check may take before the store counts as unavailable.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The services `grpc.health.v1` reports on (besides `""`, the whole server).
/// (The services with HTTP rules are all of them.)
pub const HEALTH_SERVICES: [&str; 7] = crate::http::SERVICES;

/// Why the routes cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutesError {
    /// The reflection service refused the descriptor sets.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// An HTTP rule cannot be served.
    #[error("cannot serve the HTTP rules: {0}")]
    Rules(#[from] RulesError),
}

/// oprun's gRPC services as tonic [`Routes`]: Operations, TaskService, WatchService,
/// SnapshotService (when the `snapshot` kind is registered), `grpc.health.v1.Health` and server reflection (v1 and
/// v1alpha). Add services of your own with `.add_service(...)` and serve them with
/// `Server::builder().add_routes(routes)`:
///
/// ```no_run
/// # async fn run(runner: oprun::Runner) -> Result<(), Box<dyn std::error::Error>> {
/// let routes = oprun::server::routes(&runner)?;
/// // routes = routes.add_service(MyServiceServer::new(my_service));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// tonic::transport::Server::builder()
///     .add_routes(routes)
///     .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
///     .await?;
/// # Ok(()) }
/// ```
///
/// Health follows the runner: SERVING while its store answers (checked every 5 s),
/// NOT_SERVING while it does not and from the moment shutdown begins. Must be called within
/// a tokio runtime (it starts that check).
///
/// # Errors
/// [`RoutesError`] if the embedded descriptors cannot serve reflection (a build defect).
pub fn routes(runner: &Runner) -> Result<Routes, RoutesError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(follow_health(runner.clone(), reporter));
    let v1 = ReflectionV1::new(runner.types().clone())?;
    let v1alpha = ReflectionV1Alpha::new(runner.types().clone())?;
    let mut routes = Routes::new(OperationsApi::server(runner.clone()))
        .add_service(TaskApi::server(runner.clone()))
        .add_service(WatchApi::server(runner.clone()))
        .add_service(AdminApi::server(runner.clone()))
        .add_service(WorkerApi::server(runner.clone()))
        .add_service(ScheduleApi::server(runner.clone()))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha);
    if let Some(snapshot) = SnapshotApi::server(runner.clone()) {
        routes = routes.add_service(snapshot);
    }
    Ok(routes)
}

/// Keeps the health statuses in step with the runner until it shuts down.
async fn follow_health(runner: Runner, reporter: HealthReporter) {
    let stopping = runner.stopping();
    tokio::pin!(stopping);
    let mut last = None;
    loop {
        let status = match runner.ready(HEALTH_TIMEOUT).await {
            Ok(()) => ServingStatus::Serving,
            Err(e) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::warn!(error = %e, "health: NOT_SERVING");
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            set_all(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            () = &mut stopping => break,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// The gRPC stack the REST gateway calls: `routes` behind the same bearer-token check a
/// network client meets (when `tokens` is given).
pub fn grpc_stack(routes: Routes, tokens: Option<std::sync::Arc<Tokens>>) -> GrpcService {
    match tokens {
        Some(tokens) => BoxCloneSyncService::new(AuthLayer::new(tokens).layer(routes)),
        None => BoxCloneSyncService::new(routes),
    }
}

/// The HTTP surface over `grpc` (see [`grpc_stack`]): REST/JSON for every RPC with an HTTP
/// rule, `/openapi.json`, `/healthz`, `/readyz` and `/metrics`, as an axum router to serve
/// or to nest in an app of your own. Request bodies are capped at `max_body_bytes`. A
/// browser's request from another origin is refused ([`BrowserRules::new`]: any host name, the
/// server's own origin only).
///
/// # Errors
/// [`RoutesError::Rules`] if a rule in the protos cannot be served (a build defect).
pub fn rest_router(
    runner: &Runner,
    grpc: GrpcService,
    max_body_bytes: usize,
) -> Result<axum::Router, RoutesError> {
    guarded_rest_router(runner, grpc, max_body_bytes, BrowserRules::new())
}

/// [`rest_router`] answering browsers by `rules`.
pub(crate) fn guarded_rest_router(
    runner: &Runner,
    grpc: GrpcService,
    max_body_bytes: usize,
    rules: BrowserRules,
) -> Result<axum::Router, RoutesError> {
    let kinds = runner.clone();
    let gateway = Gateway::new(
        runner.types().clone(),
        &crate::http::SERVICES,
        grpc,
        max_body_bytes,
    )?
    .with_input_types(std::sync::Arc::new(move |kind| kinds.input_type_of(kind)));
    Ok(crate::http::router(runner.clone(), gateway, rules))
}
