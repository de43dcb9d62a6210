//! `oprun serve`: running the server until SIGINT or SIGTERM (its flags are in `args`).

use std::path::Path;
use std::sync::Arc;

mod args;

pub use args::{parse_store, ServeArgs, StoreKind, SyncMode};

use super::{CliResult, Failure, RegisterFailure};
use crate::scheduler::Runner;
use crate::server::ServeOptions;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::{Durability, SqliteOptions, SqliteStore};
use crate::store::Store;
use crate::task::Registry;

/// The file in the data directory that keeps the embedded store's node id.
const NODE_ID_FILE: &str = "node-id";

/// The node id kept in `data_dir` (made, and kept there, at the first start): the node of an
/// embedded store keeps its name across restarts, so operations' `node` and the Nodes list
/// name one node.
fn stored_node_id(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if !id.is_empty() && id.len() <= 255 && !id.contains(char::is_control) {
                return Ok(id.to_owned());
            }
            tracing::warn!(path = %path.display(), "the stored node id is not usable; making a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let id = crate::scheduler::default_node();
    let partial = data_dir.join(format!("{NODE_ID_FILE}.partial"));
    std::fs::write(&partial, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// Makes glibc give large freed blocks back to the system. By default it raises its mmap
/// threshold after each large block freed (up to 32 MiB), so that later large blocks (an
/// operation with a 900 KB message, read by many streams) come from its heap and stay there:
/// after 14 bursts of 200 readers of three such operations, idle RSS stayed at 45–48 MB; with
/// the threshold fixed at 128 KiB, at 26–30 MB (`WATCHERS_MODE=cycles cargo bench --bench
/// watchers`; docs/BENCHMARKS.md). A no-op on other C libraries.
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets one of glibc's tunables (under its own lock); it takes
        // no pointers.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
        if set == 0 {
            tracing::debug!("glibc refused the mmap threshold");
        }
    }
}

/// The PostgreSQL store at `url`.
#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn Store>, String> {
    use crate::store::postgres::{PostgresOptions, PostgresStore};
    let store = PostgresStore::connect(url, PostgresOptions::default())
        .await
        .map_err(|e| format!("cannot open the PostgreSQL store: {e}"))?;
    Ok(Arc::new(store))
}

/// A build without the PostgreSQL store says so.
#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str) -> Result<Arc<dyn Store>, String> {
    Err(WITHOUT_POSTGRES.to_owned())
}

/// What a build without the `postgres` feature answers a PostgreSQL URL.
#[cfg(not(feature = "postgres"))]
pub(super) const WITHOUT_POSTGRES: &str = "--store: this oprun was built without the PostgreSQL \
     store (cargo feature `postgres`); use the embedded store (the default) or a build with it";

pub(super) async fn serve(
    args: ServeArgs,
    register: impl FnOnce(&mut Registry, &ServeArgs) -> Result<(), RegisterFailure>,
) -> CliResult {
    return_large_blocks();
    // Every setting is checked before the store is opened or any work resumes.
    let (tls, http_tls) = args.tls()?.unzip();
    let tokens = args.tokens()?;
    args.check_exposure().await?;
    let mut registry = Registry::with_builtins();
    register(&mut registry, &args).map_err(|e| format!("cannot register the kinds: {e}"))?;
    let store: Arc<dyn Store> = match &args.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Postgres(url) => open_postgres(url).await?,
        StoreKind::Sqlite => Arc::new(
            SqliteStore::open(
                &args.data_dir,
                SqliteOptions {
                    durability: match args.sync {
                        SyncMode::Full => Durability::Full,
                        SyncMode::Normal => Durability::Normal,
                    },
                    max_size_bytes: args.max_db_size,
                    wal_limit_bytes: args.wal_limit,
                    ..SqliteOptions::default()
                },
            )
            .map_err(|e| format!("cannot open the store in {}: {e}", args.data_dir.display()))?,
        ),
    };
    let mut config = args.runner_config();
    if args.node_id.is_none() && matches!(args.store, StoreKind::Sqlite) {
        // The store is open, so this process holds the data directory alone.
        config.node = stored_node_id(&args.data_dir)?;
    }
    let runner = Runner::start(registry, store, config)
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let http = match args.http_addr() {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!(
                    "cannot listen on {addr} (--http-listen): {e}; --listen {} serves HTTP \
                     too, so a second listener is needed only for a separate port",
                    args.listen
                )
            })?;
            let local = l
                .local_addr()
                .map_err(|e| format!("cannot read the HTTP listening address: {e}"))?;
            Some((l, local))
        }
    };
    let store = match &args.store {
        StoreKind::Sqlite => format!("sqlite in {}", args.data_dir.display()),
        StoreKind::Memory => "memory".to_owned(),
        StoreKind::Postgres(_) => "postgresql".to_owned(),
    };
    tracing::info!(
        addr = %local,
        store = %store,
        tls = tls.is_some(),
        mutual_tls = args.tls_client_ca.is_some(),
        tokens = tokens.as_ref().map_or(0, |t| t.len()),
        "listening"
    );
    let shutdown =
        shutdown_signal().map_err(|e| format!("cannot install the signal handlers: {e}"))?;
    // The first line on stdout: tests and scripts read the bound port from it.
    println!("oprun listening on {local}");
    let mut options = ServeOptions::new()
        .grace(args.shutdown_grace)
        .limits(args.limits())
        .max_body_bytes(args.max_input_bytes.saturating_mul(2).max(1 << 20))
        .browser(args.browser_rules());
    // The second line on stdout, after the first: where HTTP is served (the same address
    // unless a second listener was asked for).
    match http {
        Some((listener, addr)) => {
            tracing::info!(addr = %addr, tls = http_tls.is_some(), "also listening (--http-listen)");
            println!("oprun http listening on {addr}");
            options = options.http(listener);
        }
        None => println!("oprun http listening on {local}"),
    }
    if let Some(tls) = http_tls {
        options = options.http_tls(tls);
    }
    if let Some(tls) = tls {
        options = options.tls(tls);
    }
    if let Some(tokens) = tokens {
        options = options.auth(tokens);
    }
    crate::server::serve_with(listener, runner, shutdown, options)
        .await
        .map_err(|e| Failure::from(e.to_string()))
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed when this
/// returns, not when the future is first polled: a supervisor may signal as soon as it reads
/// the listening line, and that signal must start a graceful shutdown, not kill the process.
pub(super) fn shutdown_signal(
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let received = {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    };
    #[cfg(not(unix))]
    let received = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Ok(async move {
        received.await;
        tracing::info!("shutdown signal received");
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::shutdown_signal;

    /// A SIGTERM that arrives after `shutdown_signal` returned but before its future is first
    /// polled (the window between the listening line and the server's first poll) is caught,
    /// not fatal. With handlers installed on first poll, the raise below kills the test process.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_caught() {
        let shutdown = shutdown_signal().expect("install the handlers");
        // SAFETY: raise only sends a signal to this process; the handler above is installed.
        let raised = unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(raised, 0);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("the shutdown future completes on the SIGTERM raised before it was polled");
    }
}
