//! The command line's grammar: [`Cli`] and its subcommands, as clap parses them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::client::ClientArgs;
use super::operations::BatchArgs;
use super::parse_rfc3339;
use super::serve::ServeArgs;
use super::{schedule, worker};
use crate::auth::Role;

/// oprun: background jobs as google.longrunning Operations.
#[derive(Parser, Debug)]
#[command(name = "oprun", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
    /// How client commands (and workers) reach the server: before or after the subcommand.
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
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
pub(super) enum WorkerCommand {
    /// Run any executable as a kind: its input (a JSON object) on its stdin, progress from
    /// its stdout's JSON lines (`{"progress": {"completed": 3, "total": 10, "unit":
    /// "files"}, "status": "…"}`), its response the JSON object it writes to $OPRUN_OUTPUT;
    /// exit 0 succeeds, another exit fails with the end of its stderr; a cancel sends SIGTERM
    /// to its process group, then SIGKILL after --grace. E.g.
    /// `oprun worker exec --kind thumbnail --concurrency 4 -- ./thumbnail.sh`.
    Exec(worker::ExecArgs),
}

#[derive(Subcommand, Debug)]
pub(super) enum StoreCommand {
    /// Check the store in a data directory thoroughly (every page, index and operation); prints
    /// what is damaged and exits 1 if anything is. Safe beside a running server.
    Check {
        /// The data directory (as given to `oprun serve --data-dir`).
        #[arg(long, env = "OPRUN_DATA_DIR", default_value = "./oprun-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum TokenCommand {
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
