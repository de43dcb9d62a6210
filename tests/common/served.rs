//! A server in this process, as `oprun serve` runs it: `serve_with` on ephemeral loopback
//! port, gRPC and HTTP on one listener, the built-in kinds over a memory store that can be made to fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oprun::auth::Tokens;
use oprun::server::{ServeLimits, ServeOptions};
use oprun::store::memory::MemoryStore;
use oprun::{Registry, Runner, RunnerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::faults::FaultyStore;
use super::http::{request, Reply};

pub struct Served {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub store: Arc<FaultyStore>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), oprun::server::ServeError>>>,
}

impl Served {
    pub async fn start(tokens: Option<Arc<Tokens>>) -> Self {
        Self::start_with(tokens, ServeLimits::default()).await
    }

    /// [`Served::start`] with these limits.
    pub async fn start_with(tokens: Option<Arc<Tokens>>, limits: ServeLimits) -> Self {
        let store = FaultyStore::new(Arc::new(MemoryStore::new()));
        let runner = Runner::start(
            Registry::with_builtins(),
            Arc::clone(&store) as _,
            RunnerConfig::default(),
        )
        .await
        .expect("runner");
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let grpc = grpc_listener.local_addr().expect("addr");
        let http = grpc;
        let mut options = ServeOptions::new()
            .grace(Duration::from_secs(5))
            .limits(limits)
            .max_body_bytes(64 << 10);
        if let Some(tokens) = tokens {
            options = options.auth(tokens);
        }
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(oprun::server::serve_with(
            grpc_listener,
            runner,
            async {
                let _ = rx.await;
            },
            options,
        ));
        Self {
            grpc,
            http,
            store,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(self.http, method, path, &[], body).await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Reply {
        let auth = format!("Bearer {token}");
        request(self.http, method, path, &[("authorization", &auth)], body).await
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("join").expect("clean shutdown");
        }
    }
}
