// examples/embed.rs: oprun inside your own tonic server, next to your services, with a real
// shutdown path (`cargo run --example embed`; Ctrl-C stops it). OPRUN_LISTEN and
// OPRUN_DATA_DIR override the address and the data directory.
use std::sync::Arc;
use std::time::Duration;

use oprun::service::{OperationsApi, TaskApi};
use oprun::store::sqlite::{SqliteOptions, SqliteStore};
use oprun::{Registry, Runner, RunnerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::var("OPRUN_LISTEN").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let data_dir = std::env::var("OPRUN_DATA_DIR").unwrap_or_else(|_| "./oprun-data".into());

    let kinds = Registry::with_builtins(); // register your own kinds here
    let store = SqliteStore::open(data_dir.as_ref(), SqliteOptions::default())?;
    let runner = Runner::start(kinds, Arc::new(store), RunnerConfig::default()).await?;

    let shutdown = {
        let runner = runner.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            runner.begin_shutdown(); // refuse new work, release WaitOperation calls
        }
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(OperationsApi::server(runner.clone()))
        .add_service(TaskApi::server(runner.clone()))
        // .add_service(YourServiceServer::new(your_service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    // Give running workers time to stop, then flush and close the store.
    runner.shutdown(Duration::from_secs(30)).await?;
    Ok(())
}
