//! The `oprun` command line: `serve` runs the server; the other subcommands are clients.
//!
//! Binaries only parse arguments: a binary calls [`main`] with a function that registers its
//! own kinds (the built-in `sleep` is always there).
//!
//! # Exit codes
//! Every subcommand exits with one of these ([`EXIT_CODES`]):
//! 0 it succeeded; 1 it failed (one line on stderr says why); 2 the command line was wrong;
//! 3 the operation it waited for (`wait`, `watch`) ended with an error; 4 `wait` timed out
//! before the operation was done; 5 `cancel` found the operation already done.

mod client;
mod otlp;
mod schedule;
mod serve;
mod show;
mod store;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::auth::Role;
use crate::proto::google::longrunning::{ListOperationsResponse, Operation};
use crate::proto::oprun::v1::admin_service_client::AdminServiceClient;
use crate::proto::oprun::v1::snapshot_service_client::SnapshotServiceClient;
use crate::proto::oprun::v1::task_service_client::TaskServiceClient;
use crate::proto::oprun::v1::{
    CreateSnapshotRequest, ListNodesRequest, ListTaskKindsRequest, QueryOperationsRequest,
    RerunOperationRequest, RetryPolicy, SubmitTaskRequest,
};
use crate::task::Registry;
use client::{codec, connect, full_name, status_line, ClientArgs};

pub use serve::{ServeArgs, StoreKind, SyncMode};

/// Why the binary's own kinds could not be registered for `serve` (what its `register`
/// function returns): any error, e.g. a [`crate::task::RegisterError`] or a message.
pub type RegisterFailure = Box<dyn std::error::Error + Send + Sync>;

/// The exit codes of every subcommand, as documented: (code, meaning).
pub const EXIT_CODES: [(u8, &str); 6] = [
    (0, "succeeded"),
    (1, "the command failed"),
    (2, "the command line was wrong (usage)"),
    (3, "the operation ended with an error"),
    (4, "a wait timed out before the operation was done"),
    (5, "cancel: the operation was already done"),
];

/// Why a subcommand did not succeed: a one-line message and the exit code it calls for.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// The operation waited for ended with an error (exit code 3).
    fn operation_failed(message: String) -> Self {
        Self { code: 3, message }
    }

    /// The operation was not done when the wait ended (exit code 4).
    fn timed_out(message: String) -> Self {
        Self { code: 4, message }
    }

    /// The operation to cancel was already done (exit code 5).
    fn already_done(message: String) -> Self {
        Self { code: 5, message }
    }
}

impl From<String> for Failure {
    /// The command failed (exit code 1).
    fn from(message: String) -> Self {
        Self { code: 1, message }
    }
}

/// How a subcommand ends.
type CliResult = Result<(), Failure>;

/// Reads a PEM file named by `flag`.
fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn parse_rfc3339(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an RFC 3339 time such as 2026-11-22T08:00:00Z"))
}

/// oprun: background jobs as google.longrunning Operations.
#[derive(Parser, Debug)]
#[command(name = "oprun", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How client commands (and workers) reach the server: before or after the subcommand.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Submit a task of a registered kind.
    Submit {
        /// The kind, e.g. `sleep`.
        kind: String,
        /// The kind's input as proto3 JSON, e.g. '{"duration":"2s","steps":4}' (a Duration is
        /// seconds with an `s`, e.g. "90s"; a Timestamp is RFC 3339, e.g. "2026-11-22T08:00:00Z").
        #[arg(long, default_value = "{}")]
        input: String,
        /// AIP-155 idempotency key: repeating it returns the same operation.
        #[arg(long, default_value = "")]
        request_id: String,
        /// The operation's own deadline: it ends DEADLINE_EXCEEDED if not done this long after
        /// submission, e.g. `5m` (this command does not wait: see `oprun wait --timeout`).
        #[arg(long = "deadline-in", alias = "timeout", value_parser = humantime::parse_duration)]
        deadline_in: Option<Duration>,
        /// Keep the operation queued until this time (RFC 3339, e.g. 2026-11-22T08:00:00Z).
        #[arg(long, value_parser = parse_rfc3339, conflicts_with = "delay")]
        not_before: Option<prost_types::Timestamp>,
        /// Keep the operation queued this long from now, e.g. `5m` (a relative --not-before).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Print the new operation's name alone (for scripts: `op=$(oprun submit -q …)`).
        #[arg(short, long)]
        quiet: bool,
        /// Higher runs first, from -100 to 100 (default 0).
        #[arg(long, short = 'p', default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// While an operation of this kind with this key is not done, return it instead of
        /// starting another.
        #[arg(long, default_value = "")]
        unique_key: String,
        /// At most this many attempts (no more than the kind allows).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Operations of the kind with this key share its limit per key (`max_per_key`).
        #[arg(long, default_value = "")]
        concurrency_key: String,
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
        /// Print the new operation's name alone.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run a finished operation again: a new operation with its kind, input and deadline (the
    /// finished one is left as it is).
    Rerun {
        /// `operations/{id}` or the bare id.
        name: String,
        /// AIP-155 idempotency key of the new operation.
        #[arg(long, default_value = "")]
        request_id: String,
        /// Print the new operation's name alone.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show an operation.
    Get {
        /// `operations/{id}` or the bare id.
        name: String,
    },
    /// List operations, newest first.
    List {
        /// An AIP-160 filter, e.g. 'kind = "sleep" AND done = false'.
        #[arg(long, default_value = "")]
        filter: String,
        /// Oldest first instead.
        #[arg(long)]
        oldest: bool,
        /// At most this many (0: all of them, page after page).
        #[arg(long, alias = "page-size", default_value_t = 50)]
        limit: u32,
        /// Continue from the `next page: --page-token …` a previous list printed.
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Wait until an operation is done (or the timeout passes) and show it. Exit code 3 when
    /// it ended with an error, 4 when it is not done when the timeout passes.
    Wait {
        /// `operations/{id}` or the bare id.
        name: String,
        /// Longest wait, e.g. `30s` or `2h` (default: until it is done).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Follow an operation until it is done: a live bar on a terminal, one line per change
    /// otherwise. Exit code 3 when it ended with an error.
    Watch {
        /// `operations/{id}` or the bare id.
        name: String,
    },
    /// Request cancellation of an operation, or (`--filter`) of every operation matching a
    /// filter: a batch the server runs as an operation of its own, followed until done. Exit
    /// code 5 when the operation was already done.
    Cancel {
        /// `operations/{id}` or the bare id.
        #[arg(required_unless_present = "filter", conflicts_with = "filter")]
        name: Option<String>,
        #[command(flatten)]
        batch: BatchArgs,
    },
    /// Delete a finished operation, or (`--filter`) every finished operation matching a
    /// filter: a batch the server runs as an operation of its own, followed until done.
    #[command(after_help = "Examples:\n  \
        oprun delete operations/01a24e8618f671989fcfe3c7a775b7c9\n  \
        oprun delete --filter 'state = CANCELLED'\n  \
        oprun delete --filter 'kind = \"export\" AND update_time < \"2026-11-01T00:00:00Z\"'")]
    Delete {
        /// `operations/{id}` or the bare id.
        #[arg(required_unless_present = "filter", conflicts_with = "filter")]
        name: Option<String>,
        #[command(flatten)]
        batch: BatchArgs,
    },
    /// List the task kinds: each one's types, where it runs (in the server's process, or in
    /// which worker sessions) and how many operations of it wait.
    Kinds,
    /// List the nodes on the server's store: each one's lease and how many operations it
    /// runs (one node on the embedded store; every node on a shared PostgreSQL store).
    Nodes,
    /// Run work in a worker process of its own (connected to a server).
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Start operations on a calendar or at an interval: create, get, list, pause, resume,
    /// trigger, delete.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Manage bearer tokens for `serve --tokens-file`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Look after the embedded store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Bring a PostgreSQL store's schema up to date (`serve` also does this at start; nodes
    /// starting at once take turns).
    Migrate {
        /// The PostgreSQL URL, as given to `oprun serve --store`.
        #[arg(long, env = "OPRUN_STORE")]
        store: String,
    },
}

#[derive(Subcommand, Debug)]
enum WorkerCommand {
    /// Run any executable as a kind: its input (a JSON object) on its stdin, progress from
    /// its stdout's JSON lines (`{"progress": {"completed": 3, "total": 10, "unit":
    /// "files"}, "status": "…"}`), its response the JSON object it writes to $OPRUN_OUTPUT;
    /// exit 0 succeeds, another exit fails with the end of its stderr; a cancel sends SIGTERM
    /// to its process group, then SIGKILL after --grace. E.g.
    /// `oprun worker exec --kind thumbnail --concurrency 4 -- ./thumbnail.sh`.
    Exec(worker::ExecArgs),
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Check the store in a data directory thoroughly (every page, index and operation); prints
    /// what is damaged and exits 1 if anything is. Safe beside a running server.
    Check {
        /// The data directory (as given to `oprun serve --data-dir`).
        #[arg(long, env = "OPRUN_DATA_DIR", default_value = "./oprun-data")]
        data_dir: PathBuf,
    },
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

/// Runs the command line. `register` adds the binary's own kinds for `serve`, given the
/// serve settings (for example the snapshot root). Returns the exit code ([`EXIT_CODES`]).
pub fn main(
    register: impl FnOnce(&mut Registry, &ServeArgs) -> Result<(), RegisterFailure>,
) -> ExitCode {
    let cli = Cli::parse();
    // A server or a worker: logs at info, and keeps Rust's handling of SIGPIPE.
    let serving = matches!(cli.command, Command::Serve(_) | Command::Worker(_));
    if !serving {
        // A client's output piped into `head` ends quietly, as other command-line tools do,
        // instead of panicking on a broken pipe. (The server keeps Rust's default, ignoring
        // SIGPIPE, so that a client's closed socket is only an error on that socket.)
        #[cfg(unix)]
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let log_file = match &cli.command {
        Command::Serve(args) => args.log_file.clone(),
        Command::Worker(WorkerCommand::Exec(args)) => args.log_file.clone(),
        _ => None,
    };
    let otlp = match &cli.command {
        Command::Serve(args) => otlp::wanted(args.otlp_endpoint.as_deref()),
        _ => None,
    };
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
    // In the runtime: the OTLP exporter's channel runs on it.
    let tracing = {
        let _entered = runtime.enter();
        init_tracing(
            if serving { "info" } else { "warn" },
            log_file.as_deref(),
            otlp,
        )
    };
    let provider = match tracing {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("oprun: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ended = runtime.block_on(run(cli, register));
    if let Some(provider) = provider {
        // The spans not yet sent, sent before the runtime (which carries them) goes.
        if let Err(e) = provider.shutdown() {
            eprintln!("oprun: OpenTelemetry spans may be lost: {e}");
        }
    }
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            if log_file.is_some() {
                tracing::error!("{message}");
            }
            eprintln!("oprun: {message}");
            ExitCode::from(code)
        }
    }
}

/// Logs to stderr, or appended to `file`, at `default` unless `OPRUN_LOG` or `RUST_LOG` say;
/// with `otlp`, spans also go to OpenTelemetry (the provider returned, to flush at exit).
fn init_tracing(
    default: &str,
    file: Option<&Path>,
    otlp: Option<Option<String>>,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("OPRUN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, ansi) = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        // Colours only for a person at a terminal, not in a file or a journal.
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let provider = otlp
        .map(|endpoint| otlp::provider(endpoint.as_deref()))
        .transpose()?;
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer),
        )
        .with(provider.as_ref().map(otlp::layer))
        .try_init();
    Ok(provider)
}

async fn run(
    cli: Cli,
    register: impl FnOnce(&mut Registry, &ServeArgs) -> Result<(), RegisterFailure>,
) -> CliResult {
    let Cli { command, client } = cli;
    match command {
        Command::Serve(args) => serve::serve(*args, register).await,
        Command::Submit {
            kind,
            input,
            request_id,
            deadline_in,
            not_before,
            delay,
            quiet,
            priority,
            unique_key,
            max_attempts,
            concurrency_key,
        } => {
            let not_before = match delay {
                Some(delay) => Some(in_from_now(delay).map_err(|e| format!("--delay: {e}"))?),
                None => not_before,
            };
            let request = SubmitTaskRequest {
                kind,
                request_id,
                timeout: deadline_in
                    .map(prost_types::Duration::try_from)
                    .transpose()
                    .map_err(|e| format!("--deadline-in: {e}"))?,
                not_before,
                input: None,
                priority,
                unique_key,
                retry_policy: max_attempts.map(|max_attempts| RetryPolicy {
                    max_attempts,
                    ..RetryPolicy::default()
                }),
                concurrency_key,
            };
            let op = submit(&client, request, &input).await?;
            show_new(&client, &op, quiet)
        }
        Command::Snapshot {
            source_dir,
            destination,
            request_id,
            quiet,
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
            show_new(&client, &op, quiet)
        }
        Command::Rerun {
            name,
            request_id,
            quiet,
        } => {
            let op = AdminServiceClient::new(connect(&client).await?)
                .rerun_operation(RerunOperationRequest {
                    name: full_name(&name),
                    request_id,
                })
                .await
                .map_err(status_line)?
                .into_inner();
            show_new(&client, &op, quiet)
        }
        Command::Get { name } => {
            let op = client::client(&client)
                .await?
                .operation::<()>(full_name(&name))
                .get()
                .await
                .map_err(|e| e.to_string())?;
            show::print_operation(&client, &op)
        }
        Command::List {
            filter,
            oldest,
            limit,
            page_token,
        } => list(&client, filter, oldest, limit, page_token).await,
        Command::Wait { name, timeout } => wait(&client, &full_name(&name), timeout).await,
        Command::Watch { name } => show::watch(&client, &full_name(&name)).await,
        Command::Store(StoreCommand::Check { data_dir }) => store::check(&data_dir),
        Command::Schedule(command) => schedule::run(&client, command).await,
        Command::Migrate { store } => store::migrate(&store).await,
        Command::Cancel { name: None, batch } => follow_batch(&client, batch, false).await,
        Command::Delete { name: None, batch } => follow_batch(&client, batch, true).await,
        Command::Cancel {
            name: Some(name), ..
        } => cancel(&client, &full_name(&name)).await,
        Command::Delete {
            name: Some(name), ..
        } => {
            client::client(&client)
                .await?
                .operation::<()>(full_name(&name))
                .delete()
                .await
                .map_err(|e| e.to_string())?;
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
        Command::Kinds => {
            let mut c = TaskServiceClient::new(connect(&client).await?);
            let resp = c
                .list_task_kinds(ListTaskKindsRequest::default())
                .await
                .map_err(status_line)?
                .into_inner();
            show::print_kinds(&client, &resp)
        }
        Command::Worker(WorkerCommand::Exec(args)) => worker::exec(args, &client).await,
        Command::Nodes => {
            let mut c = TaskServiceClient::new(connect(&client).await?);
            let resp = c
                .list_nodes(ListNodesRequest {})
                .await
                .map_err(status_line)?
                .into_inner();
            show::print_nodes(&client, &resp)
        }
    }
}

/// The time `delay` from now, as a `not_before`.
fn in_from_now(delay: Duration) -> Result<prost_types::Timestamp, String> {
    std::time::SystemTime::now()
        .checked_add(delay)
        .map(prost_types::Timestamp::from)
        .ok_or_else(|| {
            format!(
                "{} from now is past the end of time",
                humantime::format_duration(delay)
            )
        })
}

/// Shows a new operation: its name alone when `quiet`, else as `get` does.
fn show_new(client: &ClientArgs, op: &Operation, quiet: bool) -> CliResult {
    if quiet && !client.json {
        println!("{}", op.name);
        return Ok(());
    }
    show::print_operation(client, op)
}

/// Lists up to `limit` operations (0: all), newest first unless `oldest`, a page at a time.
async fn list(
    client: &ClientArgs,
    filter: String,
    oldest: bool,
    limit: u32,
    mut page_token: String,
) -> CliResult {
    /// The most one request asks for (the server's own cap).
    const PAGE: u32 = 1000;
    let mut admin = AdminServiceClient::new(connect(client).await?);
    let mut all = ListOperationsResponse::default();
    loop {
        let want = match limit {
            0 => PAGE,
            n => (n - all.operations.len() as u32).min(PAGE),
        };
        let page = admin
            .query_operations(QueryOperationsRequest {
                filter: filter.clone(),
                page_size: want as i32,
                page_token,
                order_by: if oldest {
                    "create_time"
                } else {
                    "create_time desc"
                }
                .into(),
            })
            .await
            .map_err(status_line)?
            .into_inner();
        all.operations.extend(page.operations);
        page_token = page.next_page_token;
        let full = limit != 0 && all.operations.len() as u32 >= limit;
        if page_token.is_empty() || full {
            all.next_page_token = page_token;
            break;
        }
    }
    show::print_list(client, &all)
}

/// Requests cancellation of `name`, unless it is already done: then says how it ended (exit
/// code 5).
async fn cancel(client: &ClientArgs, name: &str) -> CliResult {
    let handle = client::client(client).await?.operation::<()>(name);
    let op = handle.get().await.map_err(|e| e.to_string())?;
    if op.done {
        if client.json {
            show::print_operation(client, &op)?;
        }
        return Err(Failure::already_done(format!(
            "{name} was already done: {}; nothing to cancel",
            show::ending(&op)
        )));
    }
    handle.cancel().await.map_err(|e| e.to_string())?;
    if !client.json {
        println!("cancellation requested for {name}");
    }
    Ok(())
}

/// Submits `request` with `input` (proto3 JSON of the kind's input type).
async fn submit(
    client: &ClientArgs,
    mut request: SubmitTaskRequest,
    input: &str,
) -> Result<Operation, Failure> {
    let channel = connect(client).await?;
    request.input = Some(kind_input(&channel, &request.kind, input).await?);
    let op = TaskServiceClient::new(channel)
        .submit_task(request)
        .await
        .map_err(status_line)?
        .into_inner();
    Ok(op)
}

/// The input of `kind` from its proto3 JSON (`--input`), in the type the server says the
/// kind takes.
async fn kind_input(
    channel: &client::Conn,
    kind: &str,
    input: &str,
) -> Result<prost_types::Any, Failure> {
    let kinds = TaskServiceClient::new(channel.clone())
        .list_task_kinds(ListTaskKindsRequest::default())
        .await
        .map_err(status_line)?
        .into_inner()
        .kinds;
    let Some(k) = kinds.iter().find(|k| k.name == kind) else {
        let names: Vec<_> = kinds.iter().map(|k| k.name.as_str()).collect();
        return Err(format!(
            "unknown kind {kind:?}; registered kinds: {}",
            names.join(", ")
        )
        .into());
    };
    Ok(codec()?
        .any_from_json(&k.input_type, input)
        .map_err(|e| format!("--input: {e}"))?)
}

/// Waits until the operation is done, calling WaitOperation again whenever the server's own
/// cap ends a call first, until `timeout` (none: for as long as it takes).
/// The flags of a batch `cancel` or `delete`.
#[derive(clap::Args, Debug, Clone)]
struct BatchArgs {
    /// Act on every operation matching this AIP-160 filter (that exists when the batch
    /// starts), e.g. 'kind = "sleep" AND state = RUNNING'.
    #[arg(long)]
    filter: Option<String>,
    /// AIP-155 idempotency key of the batch: repeating it follows the same batch.
    #[arg(long, requires = "filter")]
    request_id: Option<String>,
}

/// Starts a batch cancel (or delete) of what `batch` selects and follows it until it is done
/// (its name first, on a line of its own, as `submit` prints), then shows it.
async fn follow_batch(client: &ClientArgs, batch: BatchArgs, delete: bool) -> CliResult {
    let c = client::client(client).await?;
    let filter = batch.filter.unwrap_or_default();
    let handle = if delete {
        c.delete_matching(&filter, batch.request_id).await
    } else {
        c.cancel_matching(&filter, batch.request_id).await
    }
    .map_err(|e| e.to_string())?;
    if !client.json {
        println!("{}", handle.name());
    }
    show::watch(client, handle.name()).await
}

async fn wait(client: &ClientArgs, name: &str, timeout: Option<Duration>) -> CliResult {
    let handle = client::client(client).await?.operation::<()>(name);
    let waited = match timeout {
        None => Some(handle.wait().await),
        Some(t) => tokio::time::timeout(t, handle.wait()).await.ok(),
    };
    let op = match waited {
        Some(op) => op.map_err(|e| e.to_string())?,
        // Timed out: the latest state, to show.
        None => handle.get().await.map_err(|e| e.to_string())?,
    };
    show::print_operation(client, &op)?;
    if !op.done {
        let state = show::metadata_of(&op).map(|m| m.state).unwrap_or_default();
        return Err(Failure::timed_out(format!(
            "{name} is not done after {} (state {})",
            humantime::format_duration(timeout.unwrap_or_default()),
            crate::proto::oprun::v1::operation_metadata::State::try_from(state)
                .map_or("UNKNOWN", |s| s.as_str_name())
        )));
    }
    show::outcome(&op)
}
