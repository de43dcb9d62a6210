//! Serving the runner over gRPC: the caller binds the socket and owns shutdown, which makes
//! the server both testable (port 0) and embeddable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::ServerTlsConfig;
use tracing::info;

use crate::auth::{AuthLayer, Tokens};
use crate::error::Error;
use crate::scheduler::Runner;
use crate::service::{OperationsApi, SnapshotApi, TaskApi};

/// Errors of [`serve`] and [`serve_with`].
#[derive(Debug, thiserror::Error)]
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
}

/// An error and its sources on one line: tonic's transport errors say only "transport error"
/// at the top.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// How [`serve_with`] serves, built with consuming setters:
///
/// ```
/// # use std::time::Duration;
/// # use oprun::server::ServeOptions;
/// let options = ServeOptions::new().grace(Duration::from_secs(10));
/// // .tls(ServerTlsConfig::new().identity(..)) for TLS, .auth(tokens) for bearer tokens.
/// ```
#[derive(Debug, Clone)]
pub struct ServeOptions {
    grace: Duration,
    tls: Option<ServerTlsConfig>,
    auth: Option<Arc<Tokens>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeOptions {
    /// Plaintext, no authentication, 30 s of shutdown grace.
    pub fn new() -> Self {
        Self {
            grace: Duration::from_secs(30),
            tls: None,
            auth: None,
        }
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
/// # Errors
/// [`ServeError::Tls`] at once when the TLS settings are refused (the runner is still shut
/// down first); otherwise as [`serve`].
pub async fn serve_with(
    listener: TcpListener,
    runner: Runner,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let ServeOptions { grace, tls, auth } = options;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(b) => b,
            Err(e) => {
                runner.shutdown(grace).await?;
                return Err(ServeError::Tls(e));
            }
        };
    }
    let signal = {
        let runner = runner.clone();
        async move {
            shutdown.await;
            // Release Wait calls and stop new work before tonic drains in-flight calls.
            runner.begin_shutdown();
        }
    };
    // Around the whole router, so a call is refused before any service sees it.
    let served = builder
        .layer(tower::util::option_layer(auth.map(AuthLayer::new)))
        .add_service(OperationsApi::server(runner.clone()))
        .add_service(TaskApi::server(runner.clone()))
        .add_optional_service(SnapshotApi::server(runner.clone()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await;
    info!("stopped accepting calls");
    let stopped = runner.shutdown(grace).await;
    served?;
    stopped?;
    Ok(())
}
