// examples/embed.rs: oprun inside your own servers, next to your services: its gRPC services
// (with health and reflection) on your tonic server, its REST gateway nested in your axum app,
// with a real shutdown path (`cargo run --example embed`; Ctrl-C stops it). OPRUN_LISTEN,
// OPRUN_HTTP_LISTEN and OPRUN_DATA_DIR override the addresses and the data directory.
use std::sync::Arc;
use std::time::Duration;

use oprun::server::RestOptions;
use oprun::store::sqlite::{SqliteOptions, SqliteStore};
use oprun::{Registry, Runner, RunnerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
    let data_dir = env("OPRUN_DATA_DIR", "./oprun-data");

    let kinds = Registry::with_builtins(); // register your own kinds here
    let store = SqliteStore::open(data_dir.as_ref(), SqliteOptions::default())?;
    let runner = Runner::start(kinds, Arc::new(store), RunnerConfig::default()).await?;

    // gRPC: oprun's services, health and reflection, plus yours.
    let routes = oprun::server::routes(&runner)?;
    // let routes = routes.add_service(YourServiceServer::new(your_service));
    // REST: oprun's gateway (calling its services in process) under /oprun in your app.
    let rest = oprun::server::rest_router(&runner, RestOptions::default())?;
    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|| async { "hello from your app\n" }),
        )
        .nest("/oprun", rest);

    let grpc_listener =
        tokio::net::TcpListener::bind(env("OPRUN_LISTEN", "127.0.0.1:50051")).await?;
    let http_listener =
        tokio::net::TcpListener::bind(env("OPRUN_HTTP_LISTEN", "127.0.0.1:8080")).await?;
    println!("listening on {}", grpc_listener.local_addr()?);
    println!("http on {}", http_listener.local_addr()?);
    // Both servers stop taking calls once the runner's shutdown begins.
    let grpc = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            runner.stopping(),
        );
    let http = axum::serve(http_listener, app).with_graceful_shutdown(runner.stopping());
    let servers = async { tokio::join!(grpc, http) };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // One call: serve until Ctrl-C, begin shutdown (new work refused, Wait calls released),
    // let the servers finish, give running workers 30 s, close the store.
    let (grpc, http) = runner
        .serve_until(ctrl_c, servers, Duration::from_secs(30))
        .await?;
    grpc?;
    http?;
    Ok(())
}
