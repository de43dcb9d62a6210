//! The `oprun` command line: `serve` runs the server; the other subcommands are clients.
//!
//! Binaries only parse arguments: a binary calls [`main`] with a function that registers its
//! own kinds (the built-in `sleep` is always there).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use prost::{Message, Name};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tracing_subscriber::EnvFilter;

use crate::auth::{BearerToken, Role, Tokens};
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
use crate::server::error_chain;
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
        /// End the operation DEADLINE_EXCEEDED if not done this long after submission, e.g. `5m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Keep the operation queued until this time (RFC 3339, e.g. 2026-11-22T08:00:00Z).
        #[arg(long, value_parser = parse_rfc3339)]
        not_before: Option<prost_types::Timestamp>,
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
    /// Manage bearer tokens for `serve --tokens-file`.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a fresh random token (first line: give it to the client as --token or
    /// OPRUN_TOKEN) and its tokens-file line (second line: append it to the server's tokens
    /// file). The token is shown only here: the file stores only its hash.
    New {
        /// What the token may do: reader, submitter or admin.
        #[arg(long)]
        role: Role,
        /// A name for the token in the server's logs, e.g. `ci-deploy`.
        #[arg(long)]
        label: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Server address; `https://` connects with TLS (and needs --ca-cert).
    #[arg(long, env = "OPRUN_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    #[arg(long, env = "OPRUN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    token: Option<Secret>,
    /// PEM certificate(s) of the CA that signed the server's certificate (for https://).
    #[arg(long, env = "OPRUN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key).
    #[arg(long, env = "OPRUN_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "OPRUN_CLIENT_KEY")]
    client_key: Option<PathBuf>,
    /// Print proto3 JSON instead of human output.
    #[arg(long)]
    json: bool,
}

/// A string that never shows in `Debug` output (the bearer token).
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
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
    /// Most operations waiting at once (queued, delayed or backing off), over all kinds.
    #[arg(long, env = "OPRUN_MAX_QUEUED", default_value_t = 100_000)]
    pub max_queued: usize,
    /// Largest accepted input message, in bytes.
    #[arg(long, env = "OPRUN_MAX_INPUT_BYTES", default_value_t = 1 << 20)]
    pub max_input_bytes: usize,
    /// How long finished operations are kept.
    #[arg(long, env = "OPRUN_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Most finished operations kept (the oldest are removed first).
    #[arg(long, env = "OPRUN_MAX_RETAINED")]
    pub max_retained: Option<usize>,
    /// Largest size of the SQLite file, in bytes; past it writes fail as on a full disk.
    #[arg(long, env = "OPRUN_MAX_DB_SIZE")]
    pub max_db_size: Option<u64>,
    /// PEM certificate chain to serve TLS with (needs --tls-key).
    #[arg(long, env = "OPRUN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "OPRUN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) for mutual TLS: clients must present a certificate it signed.
    #[arg(long, env = "OPRUN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens file: `sha256:<hex> <role> [label]` per line (see `oprun token new`).
    /// Every call then needs a token whose role allows it.
    #[arg(long, env = "OPRUN_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address. Without it, `serve` refuses
    /// to listen beyond loopback unless --tokens-file is given.
    #[arg(long, env = "OPRUN_INSECURE_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub insecure_no_auth: bool,
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
            max_queued: self.max_queued,
            max_input_bytes: self.max_input_bytes,
            cancel_grace: self.cancel_grace,
            progress_interval: self.progress_interval,
            max_wait: self.max_wait,
            retention: self.retention,
            max_retained: self.max_retained,
        }
    }

    /// The TLS settings `--tls-cert`, `--tls-key` and `--tls-client-ca` describe, read and
    /// checked (the key must match the certificate); `None` for plaintext.
    ///
    /// # Errors
    /// A one-line message when only one of cert and key is given, a client CA without them,
    /// or a file is unreadable or not valid PEM.
    pub fn tls_config(&self) -> Result<Option<ServerTlsConfig>, String> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(
                    "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS \
                            with client certificates"
                        .to_owned(),
                )
            }
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err("--tls-cert needs --tls-key, the certificate's private key".to_owned())
            }
            (None, Some(_)) => {
                return Err(
                    "--tls-key needs --tls-cert, the certificate chain for that key".to_owned(),
                )
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read_file("--tls-cert", cert)?,
            read_file("--tls-key", key)?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read_file("--tls-client-ca", ca)?));
        }
        // Building a server parses the PEM files and matches the key to the certificate, so
        // a bad file stops start-up here rather than at the first connection.
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(|e| {
                format!(
                    "cannot serve TLS with --tls-cert/--tls-key/--tls-client-ca: {}",
                    error_chain(&e)
                )
            })?;
        Ok(Some(tls))
    }

    /// The tokens of `--tokens-file`, if given.
    ///
    /// # Errors
    /// A one-line message naming the file and, for a malformed line, its number.
    pub fn tokens(&self) -> Result<Option<Arc<Tokens>>, String> {
        let Some(path) = &self.tokens_file else {
            return Ok(None);
        };
        Tokens::load(path)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| format!("cannot use the tokens file {}: {e}", path.display()))
    }

    /// Refuses to serve without authentication beyond loopback: without `--tokens-file`,
    /// every address `--listen` resolves to must be a loopback one, unless
    /// `--insecure-no-auth` is given.
    ///
    /// # Errors
    /// A one-line message saying what to do.
    pub async fn check_exposure(&self) -> Result<(), String> {
        if self.tokens_file.is_some() {
            if self.insecure_no_auth {
                return Err("--insecure-no-auth contradicts --tokens-file; drop one".to_owned());
            }
            return Ok(());
        }
        let addrs: Vec<_> = tokio::net::lookup_host(&self.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", self.listen))?
            .collect();
        let loopback_only =
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().to_canonical().is_loopback());
        if loopback_only {
            return Ok(());
        }
        if self.insecure_no_auth {
            tracing::warn!(
                listen = %self.listen,
                "serving WITHOUT authentication beyond loopback (--insecure-no-auth): \
                 anyone who can reach this address can submit and delete operations"
            );
            return Ok(());
        }
        Err(format!(
            "refusing to serve {} without authentication: it is not a loopback address. \
             Give --tokens-file FILE (make tokens with `oprun token new --role ROLE`), listen on \
             127.0.0.1, or pass --insecure-no-auth to accept anyone who can reach it",
            self.listen
        ))
    }
}

/// Reads a PEM file named by `flag`.
fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn parse_rfc3339(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an RFC 3339 time such as 2026-11-22T08:00:00Z"))
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
            timeout,
            not_before,
            client,
        } => {
            let request = SubmitTaskRequest {
                kind,
                request_id,
                timeout: timeout
                    .map(prost_types::Duration::try_from)
                    .transpose()
                    .map_err(|e| format!("--timeout: {e}"))?,
                not_before,
                input: None,
            };
            submit(&client, request, &input).await
        }
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
        Command::Token(TokenCommand::New { role, label }) => {
            let token = crate::auth::new_token();
            let line = crate::auth::tokens_file_line(&token, role, label.as_deref())
                .map_err(|e| format!("--label: {e}"))?;
            println!("{token}");
            println!("{line}");
            eprintln!(
                "oprun: line 1 is the token: give it to the client (--token or OPRUN_TOKEN); \
                 it is shown only now. Line 2 goes into the server's --tokens-file."
            );
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
    // Every setting is checked before the store is opened or any work resumes.
    let tls = args.tls_config()?;
    let tokens = args.tokens()?;
    args.check_exposure().await?;
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
                    max_size_bytes: args.max_db_size,
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
    tracing::info!(
        addr = %local,
        data_dir = %args.data_dir.display(),
        tls = tls.is_some(),
        mutual_tls = args.tls_client_ca.is_some(),
        tokens = tokens.as_ref().map_or(0, |t| t.len()),
        "listening"
    );
    // The one line on stdout: tests and scripts read the bound port from it.
    println!("oprun listening on {local}");
    let mut options = crate::server::ServeOptions::new().grace(args.shutdown_grace);
    if let Some(tls) = tls {
        options = options.tls(tls);
    }
    if let Some(tokens) = tokens {
        options = options.auth(tokens);
    }
    crate::server::serve_with(listener, runner, shutdown_signal(), options)
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

/// A connection to the server that sends the client's token on every call.
type Conn = InterceptedService<Channel, Credentials>;

/// The bearer token, if the client has one.
#[derive(Clone)]
struct Credentials(Option<BearerToken>);

impl Interceptor for Credentials {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(token) => token.call(request),
            None => Ok(request),
        }
    }
}

impl ClientArgs {
    /// The TLS settings for an `https://` address.
    fn tls_config(&self) -> Result<ClientTlsConfig, String> {
        let Some(ca) = &self.ca_cert else {
            return Err(format!(
                "--addr {} is https:// and needs --ca-cert FILE, the PEM certificate of the CA \
                 that signed the server's certificate",
                self.addr
            ));
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_file("--ca-cert", ca)?));
        match (&self.client_cert, &self.client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_file("--client-cert", cert)?,
                    read_file("--client-key", key)?,
                ));
            }
            (Some(_), None) => return Err("--client-cert needs --client-key".to_owned()),
            (None, Some(_)) => return Err("--client-key needs --client-cert".to_owned()),
        }
        Ok(tls)
    }
}

async fn connect(client: &ClientArgs) -> Result<Conn, String> {
    let credentials = match &client.token {
        Some(Secret(token)) => {
            Some(BearerToken::new(token).map_err(|e| format!("--token / OPRUN_TOKEN: {e}"))?)
        }
        None => None,
    };
    let mut endpoint = Channel::from_shared(client.addr.clone())
        .map_err(|e| format!("invalid --addr {:?}: {e}", client.addr))?
        .connect_timeout(Duration::from_secs(5));
    if endpoint.uri().scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(client.tls_config()?)
            .map_err(|e| format!("TLS settings: {}", error_chain(&e)))?;
    } else if client.ca_cert.is_some()
        || client.client_cert.is_some()
        || client.client_key.is_some()
    {
        return Err(format!(
            "--ca-cert, --client-cert and --client-key are for TLS, but --addr {} is not https://",
            client.addr
        ));
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {}", client.addr, error_chain(&e)))?;
    Ok(InterceptedService::new(channel, Credentials(credentials)))
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

async fn submit(client: &ClientArgs, mut request: SubmitTaskRequest, input: &str) -> CliResult {
    let kind = request.kind.clone();
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
    request.input = Some(
        codec()?
            .any_from_json(&k.input_type, input)
            .map_err(|e| format!("--input: {e}"))?,
    );
    let op = TaskServiceClient::new(channel)
        .submit_task(request)
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
