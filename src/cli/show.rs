//! How the client subcommands show operations: one line for a list, the times and attempt a
//! person needs for one operation, and `watch`'s live view.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use prost::{Message, Name};

use futures::StreamExt;

use super::client::{codec, ClientArgs};
use super::{CliResult, Failure};
use crate::model::type_name;
use crate::proto::google::longrunning::{operation, ListOperationsResponse, Operation};
use crate::proto::oprun::v1::{operation_metadata, ListNodesResponse, OperationMetadata};

/// At most one progress line per this long when `watch` writes lines (stdout not a terminal);
/// a change of state is written at once.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// The operation's metadata, if it carries oprun's.
pub(super) use crate::client::metadata as metadata_of;

fn state_name(m: &OperationMetadata) -> &'static str {
    operation_metadata::State::try_from(m.state)
        .unwrap_or(operation_metadata::State::Unspecified)
        .as_str_name()
}

/// A timestamp to the second, RFC 3339 in UTC; `-` when unset.
pub(super) fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| {
            prost_types::Timestamp {
                seconds: t.seconds,
                nanos: 0,
            }
            .to_string()
        },
    )
}

/// `completed/total unit`, or nothing when there is no total.
fn progress(m: &OperationMetadata) -> String {
    m.progress
        .as_ref()
        .filter(|p| p.total > 0)
        .map(|p| {
            format!("{}/{} {}", p.completed, p.total, p.unit)
                .trim_end()
                .to_owned()
        })
        .unwrap_or_default()
}

/// The error of a done operation, as `CODE (n): message`.
fn error_line(status: &crate::proto::google::rpc::Status) -> String {
    format!(
        "{:?} ({}): {}",
        tonic::Code::from_i32(status.code),
        status.code,
        status.message
    )
}

/// How a done operation ended, for a person: `SUCCEEDED`, or its state and error line.
pub(super) fn ending(op: &Operation) -> String {
    let meta = metadata_of(op).unwrap_or_default();
    match &op.result {
        Some(operation::Result::Error(s)) => {
            format!("{} with {}", state_name(&meta), error_line(s))
        }
        _ => state_name(&meta).to_owned(),
    }
}

/// One operation on one line: name, kind, state, progress.
pub(super) fn summary(op: &Operation) -> String {
    let meta = metadata_of(op).unwrap_or_default();
    let progress = progress(&meta);
    format!(
        "{}  {}  {}{}",
        op.name,
        meta.kind,
        state_name(&meta),
        if progress.is_empty() {
            String::new()
        } else {
            format!("  {progress}")
        }
    )
}

/// An operation, as JSON or in full for a person.
pub(super) fn print_operation(client: &ClientArgs, op: &Operation) -> CliResult {
    let codec = codec()?;
    if client.json {
        println!("{}", codec.message_to_json(op).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let meta = metadata_of(op).unwrap_or_default();
    println!("{}", summary(op));
    let mut fields: Vec<(&str, String)> = vec![
        ("created", time(meta.create_time.as_ref())),
        ("started", time(meta.start_time.as_ref())),
        ("updated", time(meta.update_time.as_ref())),
    ];
    if meta.end_time.is_some() {
        fields.push(("ended", time(meta.end_time.as_ref())));
    }
    fields.push(("attempt", meta.attempt.max(1).to_string()));
    if let Some(policy) = &meta.retry_policy {
        fields.push(("max attempts", policy.max_attempts.to_string()));
    }
    if meta.priority != 0 {
        fields.push(("priority", meta.priority.to_string()));
    }
    if !meta.unique_key.is_empty() {
        fields.push(("unique key", meta.unique_key.clone()));
    }
    if !meta.concurrency_key.is_empty() {
        fields.push(("key", meta.concurrency_key.clone()));
    }
    if !meta.schedule.is_empty() {
        fields.push(("schedule", meta.schedule.clone()));
        fields.push(("fire time", time(meta.fire_time.as_ref())));
    }
    if !meta.node.is_empty() {
        fields.push(("node", meta.node.clone()));
    }
    if meta.deadline.is_some() {
        fields.push(("deadline", time(meta.deadline.as_ref())));
    }
    if meta.next_attempt_time.is_some() {
        fields.push(("next attempt", time(meta.next_attempt_time.as_ref())));
    }
    if meta.requested_cancellation && !op.done {
        fields.push(("cancel", "requested".to_owned()));
    }
    if !meta.status_message.is_empty() {
        fields.push(("status", meta.status_message.clone()));
    }
    if let Some(last) = &meta.last_error {
        fields.push(("last error", error_line(last)));
    }
    match &op.result {
        Some(operation::Result::Response(any)) => {
            let body = codec
                .to_json(type_name(&any.type_url), &any.value)
                .map(|j| j.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| format!("({} bytes of {})", any.value.len(), any.type_url));
            fields.push(("response", body));
        }
        Some(operation::Result::Error(status)) => fields.push(("error", error_line(status))),
        None => {}
    }
    for (name, value) in fields {
        println!("  {:<13}{value}", format!("{name}:"));
    }
    Ok(())
}

/// A page of operations, as JSON or as a table with a header.
pub(super) fn print_list(client: &ClientArgs, resp: &ListOperationsResponse) -> CliResult {
    if client.json {
        return print_json(resp);
    }
    let rows: Vec<[String; 7]> = resp
        .operations
        .iter()
        .map(|op| {
            let meta = metadata_of(op).unwrap_or_default();
            [
                op.name.clone(),
                meta.kind.clone(),
                state_name(&meta).to_owned(),
                meta.priority.to_string(),
                time(meta.create_time.as_ref()),
                progress(&meta),
                meta.node.clone(),
            ]
        })
        .collect();
    print_table(
        [
            "NAME", "KIND", "STATE", "PRI", "CREATED", "PROGRESS", "NODE",
        ],
        &rows,
    );
    if rows.is_empty() {
        println!("(no operations)");
    }
    if !resp.next_page_token.is_empty() {
        println!("next page: --page-token {}", resp.next_page_token);
    }
    Ok(())
}

/// Prints a response as proto3 JSON.
pub(super) fn print_json<M: Message + Name>(resp: &M) -> CliResult {
    println!(
        "{}",
        codec()?.message_to_json(resp).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Prints `rows` under `header`, each column as wide as its widest cell.
pub(super) fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let header = header.map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        println!("{}", line.trim_end());
    }
}

/// The nodes on the server's store, and the worker sessions, as JSON or as a table.
pub(super) fn print_nodes(client: &ClientArgs, resp: &ListNodesResponse) -> CliResult {
    if client.json {
        return print_json(resp);
    }
    let rows: Vec<[String; 5]> = resp
        .nodes
        .iter()
        .map(|n| {
            let what = match &n.session {
                None => "node".to_owned(),
                Some(s) => format!(
                    "worker {} on {}: {}",
                    s.worker,
                    s.node,
                    s.kinds
                        .iter()
                        .map(|k| format!("{}×{}", k.name, k.concurrency))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            [
                n.id.clone(),
                if n.live { "live" } else { "lease ended" }.to_owned(),
                if n.holds_store {
                    "- (holds the store)".to_owned()
                } else {
                    time(n.lease_expire_time.as_ref())
                },
                n.running.to_string(),
                what,
            ]
        })
        .collect();
    print_table(["NODE", "STATE", "LEASE UNTIL", "RUNNING", "WHAT"], &rows);
    Ok(())
}

/// The task kinds, as JSON or as a table.
pub(super) fn print_kinds(
    client: &ClientArgs,
    resp: &crate::proto::oprun::v1::ListTaskKindsResponse,
) -> CliResult {
    if client.json {
        return print_json(resp);
    }
    let rows: Vec<[String; 6]> = resp
        .kinds
        .iter()
        .map(|k| {
            let place = if k.in_process {
                "in process".to_owned()
            } else if k.sessions.is_empty() {
                "workers (none connected here)".to_owned()
            } else {
                format!("workers: {}", k.sessions.join(", "))
            };
            [
                k.name.clone(),
                place,
                k.input_type.clone(),
                k.response_type.clone(),
                k.waiting.to_string(),
                if k.retry_safe { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    print_table(
        ["KIND", "RUNS", "INPUT", "RESPONSE", "WAITING", "RETRY-SAFE"],
        &rows,
    );
    Ok(())
}

/// The exit status an operation's end calls for: success, or exit code 3 when it ended with an
/// error.
pub(super) fn outcome(op: &Operation) -> CliResult {
    match &op.result {
        Some(operation::Result::Error(s)) => Err(Failure::operation_failed(format!(
            "{} ended with {}",
            op.name,
            error_line(s)
        ))),
        _ => Ok(()),
    }
}

/// Follows an operation until it is done: a live bar on a terminal, else one line per change
/// (at most one a second, a change of state at once). It reads the server's WatchOperation
/// stream through the client's [`progress`](crate::client::OperationHandle::progress) (no
/// polling), which opens it again when the server drops it while restarting.
pub(super) async fn watch(client: &ClientArgs, name: &str) -> CliResult {
    let handle = super::client::client(client).await?.operation::<()>(name);
    let mut view = if std::io::stdout().is_terminal() && !client.json {
        View::Bar(Bar::new())
    } else {
        View::Lines(Lines::default())
    };
    let mut progress = handle.progress();
    let mut last = None;
    while let Some(op) = progress.next().await {
        let op = op.map_err(|e| e.to_string())?;
        let meta = metadata_of(&op).unwrap_or_default();
        match &mut view {
            View::Bar(bar) => bar.show(&meta),
            View::Lines(lines) if !client.json => lines.show(&meta),
            View::Lines(_) => {}
        }
        last = Some(op);
    }
    if let View::Bar(bar) = view {
        bar.finish();
    }
    let op = last.ok_or_else(|| Failure::from(format!("the watch of {name} ended at once")))?;
    print_operation(client, &op)?;
    outcome(&op)
}

enum View {
    Bar(Bar),
    Lines(Lines),
}

/// The terminal view: a spinner while queued (or without a total), a bar with the unit,
/// elapsed time and ETA while the worker reports a total.
struct Bar {
    bar: ProgressBar,
    with_total: Option<bool>,
}

impl Bar {
    fn new() -> Self {
        Self {
            bar: ProgressBar::new_spinner(),
            with_total: None,
        }
    }

    fn show(&mut self, meta: &OperationMetadata) {
        let total = meta
            .progress
            .as_ref()
            .map_or(0, |p| u64::try_from(p.total).unwrap_or(0));
        let with_total = total > 0 && meta.state != operation_metadata::State::Queued as i32;
        if self.with_total != Some(with_total) {
            let template = if with_total {
                "{spinner} [{bar:30}] {pos}/{len} {msg} [{elapsed}, ETA {eta}]"
            } else {
                "{spinner} {msg} [{elapsed}]"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                self.bar.set_style(style.progress_chars("=> "));
            }
            self.bar.enable_steady_tick(Duration::from_millis(120));
            self.with_total = Some(with_total);
        }
        if let Some(p) = &meta.progress {
            self.bar.set_length(total);
            self.bar
                .set_position(u64::try_from(p.completed.max(0)).unwrap_or(0));
        }
        let unit = meta.progress.as_ref().map_or("", |p| p.unit.as_str());
        let mut msg = state_name(meta).to_owned();
        if with_total && !unit.is_empty() {
            msg = format!("{unit} {msg}");
        }
        if !meta.status_message.is_empty() {
            msg = format!("{msg} {}", meta.status_message);
        }
        self.bar.set_message(msg);
    }

    fn finish(self) {
        self.bar.finish();
    }
}

/// The line view, for a pipe or a file.
#[derive(Default)]
struct Lines {
    last: Option<(i32, String)>,
    written: Option<Instant>,
}

impl Lines {
    fn show(&mut self, meta: &OperationMetadata) {
        let line = format!(
            "{} {}{}{}",
            state_name(meta),
            progress(meta),
            if meta.status_message.is_empty() {
                ""
            } else {
                " — "
            },
            meta.status_message
        )
        .replace("  ", " ")
        .trim_end()
        .to_owned();
        let changed_state = self.last.as_ref().is_none_or(|(s, _)| *s != meta.state);
        let changed = self.last.as_ref().is_none_or(|(_, l)| *l != line);
        let due = self.written.is_none_or(|at| at.elapsed() >= LINE_INTERVAL);
        if changed_state || (changed && due) {
            println!("{} {line}", time(meta.update_time.as_ref()));
            self.written = Some(Instant::now());
            self.last = Some((meta.state, line));
        }
    }
}
