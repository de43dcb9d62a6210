//! The HTTP surface (`oprun serve --http-listen`): the REST/JSON gateway of every RPC with a
//! `google.api.http` rule ([`gateway`]), its OpenAPI document (`/openapi.json`), liveness and
//! readiness (`/healthz`, `/readyz`) and Prometheus metrics (`/metrics`).
//!
//! [`router`] builds it as an axum [`Router`] an embedder can mount in an app of their own;
//! `oprun serve` runs it on its HTTP listener (`crate::server`, with TLS settings from
//! [`TlsFiles`]). Requests from browsers on other origins are refused first
//! ([`BrowserRules`]).

mod codec;
pub mod dashboard;
mod error;
pub mod gateway;
mod guard;
mod openapi;
mod request_json;
mod routes;
mod sse;
mod strict_json;
pub mod template;
mod tls;

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::StatusCode;

pub(crate) use error::error_response;
pub use error::{code_name, http_status};
pub use gateway::{Gateway, GrpcService, RulesError};
pub use guard::BrowserRules;
pub use tls::{HttpTlsError, TlsFiles};

use crate::scheduler::Runner;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The services whose HTTP rules oprun serves.
pub const SERVICES: [&str; 7] = [
    "google.longrunning.Operations",
    "oprun.v1.TaskService",
    "oprun.v1.SnapshotService",
    "oprun.v1.WatchService",
    "oprun.v1.AdminService",
    "oprun.v1.WorkerService",
    "oprun.v1.ScheduleService",
];

#[derive(Clone)]
struct AppState {
    gateway: Gateway,
    runner: Runner,
    /// The last document rendered, with the kinds it was rendered for: each request shares
    /// the bytes until the kinds change.
    openapi: std::sync::Arc<std::sync::Mutex<(Vec<openapi::KindInput>, bytes::Bytes)>>,
}

/// The HTTP surface as an axum router: the dashboard at `/`, `/healthz`, `/readyz`,
/// `/openapi.json`, `/metrics`, and every other
/// path through `gateway`; requests a browser sends from another origin, or to a host name
/// `rules` do not answer, are refused first (see [`BrowserRules`]).
pub fn router(runner: Runner, gateway: Gateway, rules: BrowserRules) -> Router {
    let openapi = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), bytes::Bytes::new())));
    let guarded = std::sync::Arc::new(rules);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .merge(dashboard::router())
        .fallback(fallback)
        .method_not_allowed_fallback(wrong_method)
        .with_state(AppState {
            gateway,
            runner,
            openapi,
        })
        .layer(axum::middleware::from_fn_with_state(guarded, guard::guard))
}

async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        r#"{"status":"SERVING"}"#,
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let (code, body) = match state.runner.ready(READY_TIMEOUT).await {
        Ok(()) => (StatusCode::OK, serde_json::json!({"status": "SERVING"})),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "NOT_SERVING", "reason": why.to_string()}),
        ),
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.runner.metrics_text(),
    )
        .into_response()
}

async fn openapi_json(State(state): State<AppState>) -> Response {
    let kinds: Vec<openapi::KindInput> = state
        .runner
        .kinds(false)
        .into_iter()
        .map(|k| openapi::KindInput {
            kind: k.name,
            input_type: k.input_type,
        })
        .collect();
    let document = {
        let mut cached = state
            .openapi
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.1.is_empty() || cached.0 != kinds {
            let rendered = openapi::document(&state.gateway, &state.gateway.pool(), &kinds);
            *cached = (kinds, bytes::Bytes::from(rendered.to_string()));
        }
        cached.1.clone()
    };
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        document,
    )
        .into_response()
}

/// A method `/healthz`, `/readyz`, `/metrics` or `/openapi.json` is not served with (they
/// take GET and HEAD): the same JSON 405 as the gateway's.
async fn wrong_method(
    State(state): State<AppState>,
    request: http::Request<axum::body::Body>,
) -> Response {
    error::method_not_allowed(
        request.method(),
        request.uri().path(),
        &["GET", "HEAD"],
        &state.gateway.pool(),
    )
}

async fn fallback(
    State(state): State<AppState>,
    request: http::Request<axum::body::Body>,
) -> Response {
    state.gateway.handle(request).await
}
