//! The `oprun` command line: `serve` runs the server; the other subcommands are clients.
//!
//! Binaries only parse arguments: a binary calls [`main`] with a function that registers its
//! own kinds (the built-in `sleep` is always there).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use prost::{Message, Name};
use tonic::transport::Channel;
use tracing_subscriber::EnvFilter;

use crate::json::JsonCodec;
use crate::model::type_name;
use crate::proto::google::longrunning::operations_client::OperationsClient;
use crate::proto::google::longrunning::{
    operation, CancelOperationRequest, DeleteOperationRequest, GetOperationRequest,
    ListOperationsRequest, Operation, WaitOperationRequest,
};
use crate::proto::oprun::v1::snapshot_service_client::SnapshotServiceClient;
use crate::proto::oprun::v1::task_service_client::TaskServiceClient;
use crate::proto::oprun::v1::{
    operation_metadata, CreateSnapshotRequest, ListTaskKindsRequest, OperationMetadata,
    SubmitTaskRequest,
};
use crate::scheduler::{Runner, RunnerConfig};
use crate::store::memory::MemoryStore;
use crate::store::sqlite::{Durability, SqliteOptions, SqliteStore};
use crate::store::Store;
use crate::task::Registry;

/// oprun: background jobs as google.longrunning Operations.
#[derive(Parser, Debug)]
#[command(name = "oprun", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Submit a task of a registered kind.
    Submit {
        /// The kind, e.g. `sleep`.
        kind: String,
        /// The kind's input as proto3 JSON, e.g. '{"duration":"2s","steps":4}'.
        #[arg(long, default_value = "{}")]
        input: String,
        /// AIP-155 idempotency key: repeating it returns the same operation.
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Snapshot a directory on the server into a .tar.zst file (the `snapshot` kind).
    Snapshot {
        /// Source directory, inside the server's snapshot root.
        source_dir: String,
        /// Destination file, inside the server's snapshot root.
        destination: String,
        /// AIP-155 idempotency key.
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an operation.
    Get {
        /// `operations/{id}` or the bare id.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List operations.
    List {
        /// An AIP-160 filter, e.g. 'kind = "sleep" AND done = false'.
        #[arg(long, default_value = "")]
        filter: String,
        /// Page size (0: server default).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// Continue from a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait until an operation is done (or the timeout passes) and show it.
    Wait {
        /// `operations/{id}` or the bare id.
        name: String,
        /// Longest wait, e.g. `30s` (the server caps it).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a live progress bar until the operation is done.
    Watch {
        /// `operations/{id}` or the bare id.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Request cancellation of an operation.
    Cancel {
        /// `operations/{id}` or the bare id.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a finished operation.
    Delete {
        /// `operations/{id}` or the bare id.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the registered task kinds.
    Kinds {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Server address.
    #[arg(long, env = "OPRUN_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Print proto3 JSON instead of human output.
    #[arg(long)]
    json: bool,
}

/// Which store `serve` uses.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite in `--data-dir` (durable; the default).
    Sqlite,
    /// Process memory (nothing survives a restart; for tests and benchmarks).
    Memory,
}

/// Commit durability of the SQLite store.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SyncMode {
    /// Survives power loss.
    Full,
    /// Survives a process crash (`kill -9`), not power loss.
    Normal,
}

/// `oprun serve` settings. Every flag also reads an `OPRUN_*` environment variable.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "OPRUN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Where the embedded store lives.
    #[arg(long, env = "OPRUN_DATA_DIR", default_value = "./oprun-data")]
    pub data_dir: PathBuf,
    /// Root directory for the snapshot kind's paths (default: `<data-dir>/snapshots`).
    #[arg(long, env = "OPRUN_SNAPSHOT_ROOT")]
    pub snapshot_root: Option<PathBuf>,
    /// Store backend.
    #[arg(long, env = "OPRUN_STORE", value_enum, default_value = "sqlite")]
    pub store: StoreKind,
    /// SQLite commit durability.
    #[arg(long, env = "OPRUN_SYNC", value_enum, default_value = "full")]
    pub sync: SyncMode,
    /// Most operations running at once.
    #[arg(long, env = "OPRUN_MAX_RUNNING", default_value_t = 64)]
    pub max_running: usize,
    /// Per-kind limit, `KIND=N` (repeatable; overrides what a kind declares).
    #[arg(long = "kind-limit", env = "OPRUN_KIND_LIMITS", value_delimiter = ',', value_parser = parse_kind_limit)]
    pub kind_limits: Vec<(String, usize)>,
    /// How long a worker may ignore a cancel before it is aborted.
    #[arg(long, env = "OPRUN_CANCEL_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cancel_grace: Duration,
    /// How long shutdown waits for running workers.
    #[arg(long, env = "OPRUN_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// The longest a WaitOperation call waits.
    #[arg(long, env = "OPRUN_MAX_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    /// Least time between two progress writes of one operation.
    #[arg(long, env = "OPRUN_PROGRESS_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
}

impl ServeArgs {
    /// The snapshot root (`--snapshot-root`, or `<data-dir>/snapshots`).
    pub fn snapshot_root(&self) -> PathBuf {
        self.snapshot_root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("snapshots"))
    }

    /// The runner configuration these flags describe.
    pub fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            max_running: self.max_running.max(1),
            kind_limits: self.kind_limits.iter().cloned().collect(),
            cancel_grace: self.cancel_grace,
            progress_interval: self.progress_interval,
            max_wait: self.max_wait,
        }
    }
}

fn parse_kind_limit(s: &str) -> Result<(String, usize), String> {
    let (kind, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KIND=N"))?;
    let n: usize = n
        .parse()
        .map_err(|_| format!("{n:?} in {s:?} is not a whole number"))?;
    if kind.is_empty() || n == 0 {
        return Err(format!("{s:?}: the kind must be named and N at least 1"));
    }
    Ok((kind.to_owned(), n))
}

/// A one-line failure for the user.
type CliResult = Result<(), String>;

/// Runs the command line. `register` adds the binary's own kinds for `serve`, given the
/// serve settings (for example the snapshot root).
pub fn main(register: impl FnOnce(&mut Registry, &ServeArgs) -> Result<(), String>) -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    init_tracing(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oprun: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, register)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("oprun: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_env("OPRUN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(
    cli: Cli,
    register: impl FnOnce(&mut Registry, &ServeArgs) -> Result<(), String>,
) -> CliResult {
    match cli.command {
        Command::Serve(args) => serve(args, register).await,
        Command::Submit {
            kind,
            input,
            request_id,
            client,
        } => submit(&client, kind, &input, request_id).await,
        Command::Snapshot {
            source_dir,
            destination,
            request_id,
            client,
        } => {
            let mut c = SnapshotServiceClient::new(connect(&client).await?);
            let op = c
                .create_snapshot(CreateSnapshotRequest {
                    source_dir,
                    destination,
                    request_id,
                })
                .await
                .map_err(status_line)?
                .into_inner();
            print_operation(&client, &op)
        }
        Command::Get { name, client } => {
            let mut c = OperationsClient::new(connect(&client).await?);
            let op = c
                .get_operation(GetOperationRequest {
                    name: full_name(&name),
                })
                .await
                .map_err(status_line)?
                .into_inner();
            print_operation(&client, &op)
        }
        Command::List {
            filter,
            page_size,
            page_token,
            client,
        } => {
            let mut c = OperationsClient::new(connect(&client).await?);
            let resp = c
                .list_operations(ListOperationsRequest {
                    name: "operations".into(),
                    filter,
                    page_size,
                    page_token,
                    return_partial_success: false,
                })
                .await
                .map_err(status_line)?
                .into_inner();
            if client.json {
                println!(
                    "{}",
                    codec()?.message_to_json(&resp).map_err(|e| e.to_string())?
                );
            } else {
                for op in &resp.operations {
                    println!("{}", summary(op));
                }
                if !resp.next_page_token.is_empty() {
                    println!("next page: --page-token {}", resp.next_page_token);
                }
            }
            Ok(())
        }
        Command::Wait {
            name,
            timeout,
            client,
        } => {
            let mut c = OperationsClient::new(connect(&client).await?);
            let op = c
                .wait_operation(WaitOperationRequest {
                    name: full_name(&name),
                    timeout: timeout.and_then(|t| prost_types::Duration::try_from(t).ok()),
                })
                .await
                .map_err(status_line)?
                .into_inner();
            print_operation(&client, &op)
        }
        Command::Watch { name, client } => watch(&client, &full_name(&name)).await,
        Command::Cancel { name, client } => {
            let mut c = OperationsClient::new(connect(&client).await?);
            c.cancel_operation(CancelOperationRequest {
                name: full_name(&name),
            })
            .await
            .map_err(status_line)?;
            if !client.json {
                println!("cancellation requested for {}", full_name(&name));
            }
            Ok(())
        }
        Command::Delete { name, client } => {
            let mut c = OperationsClient::new(connect(&client).await?);
            c.delete_operation(DeleteOperationRequest {
                name: full_name(&name),
            })
            .await
            .map_err(status_line)?;
            if !client.json {
                println!("deleted {}", full_name(&name));
            }
            Ok(())
        }
        Command::Kinds { client } => {
            let mut c = TaskServiceClient::new(connect(&client).await?);
            let resp = c
                .list_task_kinds(ListTaskKindsRequest {})
                .await
                .map_err(status_line)?
                .into_inner();
            if client.json {
                println!(
                    "{}",
                    codec()?.message_to_json(&resp).map_err(|e| e.to_string())?
                );
            } else {
                for k in resp.kinds {
                    println!(
                        "{:<12} input {}  response {}{}",
                        k.name,
                        k.input_type,
                        k.response_type,
                        if k.retry_safe { "  (retry-safe)" } else { "" }
                    );
                }
            }
            Ok(())
        }
    }
}

async fn serve(
    args: ServeArgs,
    register: impl FnOnce(&mut Registry, &ServeArgs) -> Result<(), String>,
) -> CliResult {
    let mut registry = Registry::with_builtins();
    register(&mut registry, &args)?;
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Sqlite => Arc::new(
            SqliteStore::open(
                &args.data_dir,
                SqliteOptions {
                    durability: match args.sync {
                        SyncMode::Full => Durability::Full,
                        SyncMode::Normal => Durability::Normal,
                    },
                    ..SqliteOptions::default()
                },
            )
            .map_err(|e| format!("cannot open the store in {}: {e}", args.data_dir.display()))?,
        ),
    };
    let runner = Runner::start(registry, store, args.runner_config())
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    tracing::info!(addr = %local, data_dir = %args.data_dir.display(), "listening");
    // The one line on stdout: tests and scripts read the bound port from it.
    println!("oprun listening on {local}");
    crate::server::serve(listener, runner, shutdown_signal(), args.shutdown_grace)
        .await
        .map_err(|e| e.to_string())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

fn codec() -> Result<JsonCodec, String> {
    JsonCodec::new().map_err(|e| e.to_string())
}

async fn connect(client: &ClientArgs) -> Result<Channel, String> {
    Channel::from_shared(client.addr.clone())
        .map_err(|e| format!("invalid --addr {:?}: {e}", client.addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", client.addr))
}

fn status_line(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn full_name(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("operations/{name}")
    }
}

async fn submit(client: &ClientArgs, kind: String, input: &str, request_id: String) -> CliResult {
    let channel = connect(client).await?;
    let kinds = TaskServiceClient::new(channel.clone())
        .list_task_kinds(ListTaskKindsRequest {})
        .await
        .map_err(status_line)?
        .into_inner()
        .kinds;
    let Some(k) = kinds.iter().find(|k| k.name == kind) else {
        let names: Vec<_> = kinds.iter().map(|k| k.name.as_str()).collect();
        return Err(format!(
            "unknown kind {kind:?}; registered kinds: {}",
            names.join(", ")
        ));
    };
    let input = codec()?
        .any_from_json(&k.input_type, input)
        .map_err(|e| format!("--input: {e}"))?;
    let op = TaskServiceClient::new(channel)
        .submit_task(SubmitTaskRequest {
            kind,
            input: Some(input),
            request_id,
        })
        .await
        .map_err(status_line)?
        .into_inner();
    print_operation(client, &op)
}

fn metadata_of(op: &Operation) -> Option<OperationMetadata> {
    let any = op.metadata.as_ref()?;
    if type_name(&any.type_url) != OperationMetadata::full_name() {
        return None;
    }
    OperationMetadata::decode(any.value.as_slice()).ok()
}

fn state_name(m: &OperationMetadata) -> &'static str {
    operation_metadata::State::try_from(m.state)
        .unwrap_or(operation_metadata::State::Unspecified)
        .as_str_name()
}

fn summary(op: &Operation) -> String {
    let meta = metadata_of(op).unwrap_or_default();
    let progress = meta
        .progress
        .as_ref()
        .filter(|p| p.total > 0)
        .map(|p| format!("  {}/{} {}", p.completed, p.total, p.unit))
        .unwrap_or_default();
    format!(
        "{}  {}  {}{}",
        op.name,
        meta.kind,
        state_name(&meta),
        progress
    )
}

fn print_operation(client: &ClientArgs, op: &Operation) -> CliResult {
    let codec = codec()?;
    if client.json {
        println!("{}", codec.message_to_json(op).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("{}", summary(op));
    let meta = metadata_of(op).unwrap_or_default();
    if !meta.status_message.is_empty() {
        println!("  status: {}", meta.status_message);
    }
    match &op.result {
        Some(operation::Result::Response(any)) => {
            let body = codec
                .to_json(type_name(&any.type_url), &any.value)
                .unwrap_or_else(|_| format!("({} bytes of {})", any.value.len(), any.type_url));
            println!("  response: {body}");
        }
        Some(operation::Result::Error(status)) => {
            let code = tonic::Code::from_i32(status.code);
            println!("  error: {code:?} ({}): {}", status.code, status.message);
        }
        None => {}
    }
    Ok(())
}

/// Follows an operation with a progress bar until it is done. It polls GetOperation every
/// 200 ms: progress is not a change of done-ness, so WaitOperation would not return for it.
async fn watch(client: &ClientArgs, name: &str) -> CliResult {
    let mut c = OperationsClient::new(connect(client).await?);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut op = c
        .get_operation(GetOperationRequest { name: name.into() })
        .await
        .map_err(status_line)?
        .into_inner();
    loop {
        let meta = metadata_of(&op).unwrap_or_default();
        if let Some(p) = &meta.progress {
            bar.set_length(u64::try_from(p.total.max(0)).unwrap_or(0));
            bar.set_position(u64::try_from(p.completed.max(0)).unwrap_or(0));
        }
        let msg = if meta.status_message.is_empty() {
            state_name(&meta).to_owned()
        } else {
            format!("{} {}", state_name(&meta), meta.status_message)
        };
        bar.set_message(msg);
        bar.tick();
        if op.done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        op = c
            .get_operation(GetOperationRequest { name: name.into() })
            .await
            .map_err(status_line)?
            .into_inner();
    }
    bar.finish();
    print_operation(client, &op)?;
    match op.result {
        Some(operation::Result::Error(s)) => Err(format!(
            "{name} ended with {:?}: {}",
            tonic::Code::from_i32(s.code),
            s.message
        )),
        _ => Ok(()),
    }
}
