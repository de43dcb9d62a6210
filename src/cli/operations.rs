//! The subcommands about operations: submit, list, cancel, wait, and the batch ones,
//! following.

use std::time::Duration;

use super::client::{codec, connect, status_line, ClientArgs};
use super::{client, show, CliResult, Failure};
use crate::proto::google::longrunning::{ListOperationsResponse, Operation};
use crate::proto::oprun::v1::admin_service_client::AdminServiceClient;
use crate::proto::oprun::v1::task_service_client::TaskServiceClient;
use crate::proto::oprun::v1::{ListTaskKindsRequest, QueryOperationsRequest, SubmitTaskRequest};

/// The time `delay` from now, as a `not_before`.
pub(super) fn in_from_now(delay: Duration) -> Result<prost_types::Timestamp, String> {
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
pub(super) fn show_new(client: &ClientArgs, op: &Operation, quiet: bool) -> CliResult {
    if quiet && !client.json {
        println!("{}", op.name);
        return Ok(());
    }
    show::print_operation(client, op)
}

/// Lists up to `limit` operations (0: all), newest first unless `oldest`, a page at a time.
pub(super) async fn list(
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
pub(super) async fn cancel(client: &ClientArgs, name: &str) -> CliResult {
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
pub(super) async fn submit(
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
pub(super) async fn kind_input(
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
pub(super) struct BatchArgs {
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
pub(super) async fn follow_batch(client: &ClientArgs, batch: BatchArgs, delete: bool) -> CliResult {
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

pub(super) async fn wait(client: &ClientArgs, name: &str, timeout: Option<Duration>) -> CliResult {
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
