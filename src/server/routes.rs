//! The pieces [`serve_with`](super::serve_with) assembles, public so that an embedder can put
//! oprun next to their own services on one tonic server ([`routes`]) and mount its REST gateway
//! in their own axum app ([`rest_router`]).

use std::sync::Arc;
use std::time::Duration;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;
use tower::Layer;

use super::reflection::{ReflectionV1, ReflectionV1Alpha};
use super::DEFAULT_MAX_BODY_BYTES;
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

/// The services `grpc.health.v1` may report on (besides `""`, the whole server): each one
/// [`routes`] mounts (SnapshotService only with the `snapshot` kind). The services with HTTP
/// rules are all of them.
pub const HEALTH_SERVICES: [&str; 7] = crate::http::SERVICES;

/// The SnapshotService's full name, mounted only when the `snapshot` kind is registered.
const SNAPSHOT_SERVICE: &str = "oprun.v1.SnapshotService";

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
    let (services, snapshot) = services(runner);
    let mounted: Vec<&'static str> = HEALTH_SERVICES
        .into_iter()
        .filter(|name| snapshot || *name != SNAPSHOT_SERVICE)
        .collect();
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(follow_health(runner.clone(), reporter, mounted));
    let v1 = ReflectionV1::new(runner.types().clone())?;
    let v1alpha = ReflectionV1Alpha::new(runner.types().clone())?;
    Ok(services
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha))
}

/// oprun's own services (no health, no reflection), and whether SnapshotService is among them.
fn services(runner: &Runner) -> (Routes, bool) {
    let routes = Routes::new(OperationsApi::server(runner.clone()))
        .add_service(TaskApi::server(runner.clone()))
        .add_service(WatchApi::server(runner.clone()))
        .add_service(AdminApi::server(runner.clone()))
        .add_service(WorkerApi::server(runner.clone()))
        .add_service(ScheduleApi::server(runner.clone()));
    match SnapshotApi::server(runner.clone()) {
        Some(snapshot) => (routes.add_service(snapshot), true),
        None => (routes, false),
    }
}

/// Keeps the health statuses of `services` in step with the runner until it shuts down.
async fn follow_health(runner: Runner, reporter: HealthReporter, services: Vec<&'static str>) {
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
            set_all(&reporter, &services, status).await;
            last = Some(status);
        }
        tokio::select! {
            () = &mut stopping => break,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
    set_all(&reporter, &services, ServingStatus::NotServing).await;
}

async fn set_all(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(service, status).await;
    }
}

/// The gRPC stack the REST gateway calls: `routes` behind the same bearer-token check a
/// network client meets (when `tokens` is given).
pub(crate) fn grpc_stack(routes: Routes, tokens: Option<Arc<Tokens>>) -> GrpcService {
    match tokens {
        Some(tokens) => BoxCloneSyncService::new(AuthLayer::new(tokens).layer(routes)),
        None => BoxCloneSyncService::new(routes),
    }
}

/// How [`rest_router`] serves: `RestOptions::default()` and its setters.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RestOptions {
    /// The tokens every REST call is checked against, as a gRPC call is by
    /// [`AuthLayer`] (`None`: no check).
    pub tokens: Option<Arc<Tokens>>,
    /// The largest request body, in bytes (`None`: [`DEFAULT_MAX_BODY_BYTES`], 8 MiB).
    pub max_body_bytes: Option<usize>,
    /// Which browsers' requests are answered ([`BrowserRules::new`] by default: any host
    /// name, the server's own origin only).
    pub browser: BrowserRules,
}

setters!(RestOptions {
    browser: BrowserRules,
} optional {
    tokens: Arc<Tokens>,
    max_body_bytes: usize,
});

impl std::fmt::Debug for RestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestOptions")
            .field("tokens", &self.tokens.as_ref().map(|_| "…"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("browser", &self.browser)
            .finish()
    }
}

/// The HTTP surface of `runner`: REST/JSON for every RPC with an HTTP rule, `/openapi.json`,
/// `/healthz`, `/readyz` and `/metrics`, as an axum router to serve or to nest in an app of
/// your own. It calls oprun's services in process, behind `options.tokens` when given.
///
/// # Errors
/// [`RoutesError::Rules`] if a rule in the protos cannot be served (a build defect).
pub fn rest_router(runner: &Runner, options: RestOptions) -> Result<axum::Router, RoutesError> {
    let stack = grpc_stack(services(runner).0, options.tokens);
    guarded_rest_router(
        runner,
        stack,
        options.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        options.browser,
    )
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
