//! Serving the runner over gRPC: the caller binds the socket and owns shutdown, which makes
//! the server both testable (port 0) and embeddable.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use crate::error::Error;
use crate::scheduler::Runner;
use crate::service::{OperationsApi, SnapshotApi, TaskApi};

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The runner could not shut down cleanly.
    #[error(transparent)]
    Runner(#[from] Error),
}

/// Serves Operations, TaskService and (when the `snapshot` kind is registered) SnapshotService
/// on `listener` until `shutdown` completes; then stops accepting, lets in-flight calls finish,
/// and shuts the runner down, giving running workers `grace` to stop.
///
/// # Errors
/// [`ServeError`] when the transport fails or the store cannot be flushed at the end.
pub async fn serve(
    listener: TcpListener,
    runner: Runner,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), ServeError> {
    let signal = {
        let runner = runner.clone();
        async move {
            shutdown.await;
            // Release Wait calls and stop new work before tonic drains in-flight calls.
            runner.begin_shutdown();
        }
    };
    let served = tonic::transport::Server::builder()
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
