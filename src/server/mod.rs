//! Serving the runner over gRPC: the caller binds the socket and owns shutdown, which makes
//! the server both testable (port 0) and embeddable.
//!
//! [`serve_with`] also guards the process against its clients ([`ServeLimits`]): a cap on open
//! connections and on calls in flight per connection, a budget for the bytes of responses that
//! clients have not read, HTTP/2 keepalive pings, and timeouts that close connections that never
//! complete their handshake or stay idle (`incoming`, `limits`).

mod grpc_metrics;
mod http_listener;
mod incoming;
mod limits;
mod reflection;
mod routes;

use routes::grpc_stack;
pub use routes::{rest_router, routes, RestOptions, RoutesError, HEALTH_SERVICES};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;
use tracing::info;

use incoming::{accept, ConnectionRules, Connections};
use limits::{LimitsLayer, ResponseBudget};

use crate::auth::{AuthLayer, Tokens};
use crate::error::Error;
use crate::http::BrowserRules;
use crate::scheduler::Runner;

/// Errors of [`serve`] and [`serve_with`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS settings were refused (an unreadable certificate or key, or a key that does
    /// not match the certificate). Nothing was served.
    #[error("the TLS settings were refused: {}", error_chain(.0))]
    Tls(#[source] tonic::transport::Error),
    /// The gRPC transport failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The runner could not shut down cleanly.
    #[error(transparent)]
    Runner(#[from] Error),
    /// The services could not be assembled (a build defect).
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// The HTTP listener failed.
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// An error and its sources on one line: tonic's transport errors say only "transport error"
/// at the top, and their sources often repeat each other; a source whose text the line already
/// holds is left out.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

/// What a client may hold of a server run by [`serve_with`], with documented defaults (those of
/// `oprun serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeLimits {
    /// Connections open at once; past it, new ones wait until one closes. Default 1024.
    pub max_connections: usize,
    /// Calls in flight on one HTTP/2 connection (its `SETTINGS_MAX_CONCURRENT_STREAMS`).
    /// Default 200.
    pub max_streams_per_connection: u32,
    /// Bytes of responses that clients have not read yet, over all connections; a response
    /// that does not fit is answered RESOURCE_EXHAUSTED. Default 64 MiB.
    pub max_unread_response_bytes: usize,
    /// How often an HTTP/2 ping checks that a connection's peer is alive. Default 30 s.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed. Default 10 s.
    pub keepalive_timeout: Duration,
    /// How long a new connection may take to send its first bytes (the HTTP/2 preface, or a
    /// TLS hello) and, with TLS, to complete the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no call in flight. Default 5 min.
    pub idle_timeout: Duration,
    /// How long a response may wait for a client that does not read it (its flow-control
    /// window kept shut) before the connection is closed. Default 60 s.
    pub unread_timeout: Duration,
    /// On the HTTP listener: how long a request's body may take to arrive after its headers
    /// (the headers of a connection's first request must arrive within the handshake timeout,
    /// those of a later one within the idle timeout); past it, the request is refused (400).
    /// Default 30 s.
    pub read_timeout: Duration,
}

setters!(ServeLimits {
    max_connections: usize,
    max_streams_per_connection: u32,
    max_unread_response_bytes: usize,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    unread_timeout: Duration,
    read_timeout: Duration,
});

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: 200,
            max_unread_response_bytes: 64 << 20,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            unread_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// How [`serve_with`] serves, built with consuming setters:
///
/// ```
/// # use std::time::Duration;
/// # use oprun::server::ServeOptions;
/// let options = ServeOptions::new().grace(Duration::from_secs(10));
/// // .tls(ServerTlsConfig::new().identity(..)) for TLS, .auth(tokens) for bearer tokens.
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    grace: Duration,
    tls: Option<ServerTlsConfig>,
    auth: Option<Arc<Tokens>>,
    limits: ServeLimits,
    http: Option<TcpListener>,
    http_tls: Option<Arc<rustls::ServerConfig>>,
    max_body_bytes: usize,
    browser: BrowserRules,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeOptions {
    /// Plaintext, no authentication, 30 s of shutdown grace, the default [`ServeLimits`].
    pub fn new() -> Self {
        Self {
            grace: Duration::from_secs(30),
            tls: None,
            auth: None,
            limits: ServeLimits::default(),
            http: None,
            http_tls: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            browser: BrowserRules::new(),
        }
    }

    /// Which origins and host names the HTTP listener answers (see [`BrowserRules`]). On a
    /// loopback listener, host names are checked in any case (`localhost`, IP addresses and
    /// the names these rules list).
    pub fn browser(mut self, rules: BrowserRules) -> Self {
        self.browser = rules;
        self
    }

    /// Also serve the HTTP surface ([`rest_router`]: REST/JSON, `/openapi.json`, `/healthz`,
    /// `/readyz`, `/metrics`) on `listener`, behind the same tokens.
    pub fn http(mut self, listener: TcpListener) -> Self {
        self.http = Some(listener);
        self
    }

    /// Serve the HTTP surface over TLS with these settings (see
    /// [`TlsFiles`](crate::http::TlsFiles)).
    pub fn http_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.http_tls = Some(tls);
        self
    }

    /// The largest REST request body, in bytes (default 8 MiB).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// What a client may hold of the server.
    pub fn limits(mut self, limits: ServeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How long shutdown gives running workers to stop.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serve TLS with these settings (add `client_ca_root` for mutual TLS).
    pub fn tls(mut self, tls: ServerTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Require a bearer token from `tokens` on every call, checked by
    /// [`AuthLayer`] before any service runs.
    pub fn auth(mut self, tokens: Arc<Tokens>) -> Self {
        self.auth = Some(tokens);
        self
    }
}

/// The largest REST request body [`ServeOptions`] accept by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;

/// Serves Operations, TaskService and (when the `snapshot` kind is registered) SnapshotService
/// on `listener` until `shutdown` completes; then stops accepting, lets in-flight calls finish,
/// and shuts the runner down, giving running workers `grace` to stop. Plaintext and
/// unauthenticated: [`serve_with`] adds TLS and tokens.
///
/// # Errors
/// [`ServeError`] when the transport fails or the store cannot be flushed at the end.
pub async fn serve(
    listener: TcpListener,
    runner: Runner,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), ServeError> {
    serve_with(listener, runner, shutdown, ServeOptions::new().grace(grace)).await
}

/// [`serve`] with [`ServeOptions`]: TLS (optionally mutual) and bearer-token authentication.
///
/// `listener` serves gRPC and the HTTP surface alike (REST/JSON, server-sent events, the
/// dashboard, `/metrics`, the probes, `/openapi.json`): a request whose content type is
/// `application/grpc…` is a gRPC call, anything else HTTP; HTTP/1.1 and h2 (h2c, or TLS with
/// ALPN). [`ServeOptions::http`] adds a second listener that serves the same. Only TLS given
/// as tonic's [`ServerTlsConfig`] alone (without [`ServeOptions::http_tls`]) keeps `listener`
/// to gRPC (served by tonic).
///
/// # Errors
/// [`ServeError::Tls`] at once when the TLS settings are refused (the runner is still shut
/// down first); otherwise as [`serve`].
pub async fn serve_with(
    listener: TcpListener,
    runner: Runner,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let routes = match routes(&runner) {
        Ok(r) => r,
        Err(e) => {
            runner.shutdown(options.grace).await?;
            return Err(e.into());
        }
    };
    if options.tls.is_some() && options.http_tls.is_none() {
        serve_grpc_with_tonic(listener, runner, routes, shutdown, options).await
    } else {
        serve_both(listener, runner, routes, shutdown, options).await
    }
}

/// The HTTP surface for `listener` (browsers' rules as that listener needs them), calling
/// `stack` in process.
fn http_router(
    runner: &Runner,
    listener: &TcpListener,
    stack: crate::http::GrpcService,
    max_body_bytes: usize,
    browser: &BrowserRules,
) -> Result<axum::Router, RoutesError> {
    // On loopback, only the machine's own names can be meant: a page that re-pointed its name
    // here (DNS rebinding) is refused by its Host.
    let loopback = listener
        .local_addr()
        .is_ok_and(|a| a.ip().to_canonical().is_loopback());
    let browser = if loopback && !browser.checks_hosts() {
        browser.clone().only_hosts(std::iter::empty::<&str>())
    } else {
        browser.clone()
    };
    routes::guarded_rest_router(runner, stack, max_body_bytes, browser)
}

/// How a listener served by hyper (gRPC and HTTP alike) guards its connections.
fn listener_rules(limits: &ServeLimits) -> http_listener::HttpRules {
    http_listener::HttpRules {
        connection: ConnectionRules {
            // An HTTP/1.1 client's handshake is its whole first request; a gRPC client's,
            // HTTP/2's preface (it may connect long before its first call).
            preface: u64::MAX,
            h2_preface: true,
            max_connections: limits.max_connections,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            unread_timeout: limits.unread_timeout,
        },
        read_timeout: limits.read_timeout,
        max_streams_per_connection: limits.max_streams_per_connection,
        keepalive_interval: limits.keepalive_interval,
        keepalive_timeout: limits.keepalive_timeout,
    }
}

/// gRPC calls from the network: counted (refused ones too), then checked for a token.
fn network_grpc(
    runner: &Runner,
    routes: tonic::service::Routes,
    auth: Option<Arc<Tokens>>,
) -> http_listener::GrpcCalls {
    let metrics = grpc_metrics::GrpcMetricsLayer::new(Arc::clone(runner.metrics()));
    let inner = grpc_stack(routes, auth);
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .map_response(|r: http::Response<_>| r.map(tonic::body::Body::new))
            .layer(metrics)
            .service(inner),
    )
}

/// Every listener served by hyper: gRPC and the HTTP surface on each.
async fn serve_both(
    listener: TcpListener,
    runner: Runner,
    routes: tonic::service::Routes,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let ServeOptions {
        grace,
        tls: _,
        auth,
        limits,
        http,
        http_tls,
        max_body_bytes,
        browser,
    } = options;
    // One budget for the responses of every listener.
    let budget = ResponseBudget::new(limits.max_unread_response_bytes);
    let stack = grpc_stack(routes.clone(), auth.clone());
    let grpc = network_grpc(&runner, routes, auth);
    let mut listeners = vec![listener];
    listeners.extend(http);
    let mut served = Vec::new();
    for listener in listeners {
        let router = match http_router(&runner, &listener, stack.clone(), max_body_bytes, &browser)
        {
            Ok(router) => router,
            Err(e) => {
                runner.shutdown(grace).await?;
                return Err(e.into());
            }
        };
        let rules = listener_rules(&limits);
        served.push(http_listener::serve(
            listener,
            http_listener::Surfaces {
                http: router,
                grpc: Some(grpc.clone()),
            },
            http_tls.clone(),
            rules,
            budget.clone(),
            runner.stopping(),
            grace,
        ));
    }
    let all = futures::future::join_all(served);
    tokio::pin!(all);
    let signal = async {
        shutdown.await;
        // Release Wait calls and stop new work; each listener then drains (for up to the
        // grace period) and closes what is left.
        runner.begin_shutdown();
    };
    let results = tokio::select! {
        results = &mut all => results,
        () = signal => all.await,
    };
    info!("stopped accepting calls");
    let stopped = runner.shutdown(grace).await;
    for result in results {
        result.map_err(ServeError::Http)?;
    }
    stopped?;
    Ok(())
}

/// `listener` served by tonic (gRPC only: TLS was given as tonic's settings), and an HTTP
/// listener beside it if asked.
async fn serve_grpc_with_tonic(
    listener: TcpListener,
    runner: Runner,
    routes: tonic::service::Routes,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let ServeOptions {
        grace,
        tls,
        auth,
        limits,
        http,
        http_tls,
        max_body_bytes,
        browser,
    } = options;
    // One budget for the responses of both listeners.
    let budget = ResponseBudget::new(limits.max_unread_response_bytes);
    let http_budget = budget.clone();
    let http = match http {
        None => None,
        Some(listener) => {
            let stack = grpc_stack(routes.clone(), auth.clone());
            match http_router(&runner, &listener, stack, max_body_bytes, &browser) {
                Ok(router) => Some((listener, router)),
                Err(e) => {
                    runner.shutdown(grace).await?;
                    return Err(e.into());
                }
            }
        }
    };
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls.timeout(limits.handshake_timeout)) {
            Ok(b) => b,
            Err(e) => {
                runner.shutdown(grace).await?;
                return Err(ServeError::Tls(e));
            }
        };
    }
    let (stopping, stopped_accepting) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let runner = runner.clone();
        async move {
            shutdown.await;
            // Release Wait calls and stop new work before tonic drains in-flight calls.
            runner.begin_shutdown();
            let _ = stopping.send(());
        }
    };
    let connections = Connections::new();
    let incoming = accept(
        listener,
        ConnectionRules {
            preface: incoming::PREFACE_LEN,
            h2_preface: false,
            max_connections: limits.max_connections,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            unread_timeout: limits.unread_timeout,
        },
        Arc::clone(&connections),
    );
    // Around the whole router, so a call is refused before any service sees it.
    let served = builder
        .layer(LimitsLayer::new(budget, Arc::clone(&connections)))
        // Inside the limits, outside auth: refused calls are counted too.
        .layer(grpc_metrics::GrpcMetricsLayer::new(Arc::clone(
            runner.metrics(),
        )))
        .layer(tower::util::option_layer(auth.clone().map(AuthLayer::new)))
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(incoming, signal);
    let http_served = async {
        match http {
            None => Ok(()),
            Some((listener, router)) => {
                let rules = listener_rules(&limits);
                http_listener::serve(
                    listener,
                    http_listener::Surfaces {
                        http: router,
                        grpc: Some(network_grpc(&runner, routes, auth)),
                    },
                    http_tls,
                    rules,
                    http_budget,
                    runner.stopping(),
                    grace,
                )
                .await
            }
        }
    };
    // Draining waits for every connection to close; a peer that never does must not hold the
    // process past the grace period.
    let drain_limit = async {
        match stopped_accepting.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    let both = async {
        let (grpc, http) = tokio::join!(served, http_served);
        grpc.map_err(ServeError::from)?;
        http.map_err(ServeError::Http)
    };
    let served = tokio::select! {
        served = both => served,
        () = drain_limit => {
            tracing::warn!(
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "connections still open after the shutdown grace period; closing them"
            );
            // Their tasks are tonic's own: closing their sockets ends them.
            connections.close_all();
            Ok(())
        }
    };
    info!("stopped accepting calls");
    let stopped = runner.shutdown(grace).await;
    served?;
    stopped?;
    Ok(())
}
