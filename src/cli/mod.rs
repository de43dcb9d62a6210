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

mod args;
mod client;
mod operations;
mod otlp;
mod schedule;
mod serve;
mod show;
mod store;
mod worker;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::proto::oprun::v1::admin_service_client::AdminServiceClient;
use crate::proto::oprun::v1::snapshot_service_client::SnapshotServiceClient;
use crate::proto::oprun::v1::task_service_client::TaskServiceClient;
use crate::proto::oprun::v1::{
    CreateSnapshotRequest, ListNodesRequest, ListTaskKindsRequest, RerunOperationRequest,
    RetryPolicy, SubmitTaskRequest,
};
use crate::task::Registry;
pub use args::Cli;
use args::{Command, StoreCommand, TokenCommand, WorkerCommand};
use client::{connect, full_name, status_line};
use operations::{cancel, follow_batch, in_from_now, list, show_new, submit, wait};

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
