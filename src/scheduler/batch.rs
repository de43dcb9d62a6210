//! Batches: cancelling or deleting many operations at once, as an operation of its own.
//!
//! `CancelOperations` and `DeleteOperations` submit an operation of a built-in kind
//! ([`CANCEL_KIND`], [`DELETE_KIND`]) whose input is a [`BatchSelection`]. So a batch is
//! durable, idempotent by `request_id`, cancellable, followed like any operation (its progress
//! counts the operations looked at), and taken over by another node if its own goes away
//! (acting again on an operation already cancelled or deleted changes nothing, so the kinds
//! are retry-safe).
//!
//! A batch acts only on operations older than itself (`seq` below its own): what is
//! submitted while it runs is left alone, so it always ends, and it never acts on itself. A
//! filter is read twice, a page at a time: once to count (the progress total), once to act;
//! memory stays at one page whatever the number of operations.
//!
//! The dispatcher starts batches even when every running slot is taken
//! (`Runner::claim_control`): a "cancel everything" must not wait behind what it cancels.

use std::sync::Weak;

use tracing::info;

use super::{Runner, Shared};
use crate::auth::Role;
use crate::error::Error;
use crate::filter::Filter;
use crate::model::{OperationId, OperationRecord};
use crate::proto::oprun::v1::{BatchProgress, BatchResult, BatchSelection};
use crate::task::{Kind, RetryPolicy, Task, TaskContext, TaskError, TaskOptions};

/// The kind of the operations `CancelOperations` starts.
pub const CANCEL_KIND: &str = "oprun.cancel_operations";
/// The kind of the operations `DeleteOperations` starts.
pub const DELETE_KIND: &str = "oprun.delete_operations";
/// The kinds the dispatcher starts whatever the running limits (see the module's doc).
pub(crate) const CONTROL_KINDS: [&str; 2] = [CANCEL_KIND, DELETE_KIND];
/// How many batches of each kind run at once on a node.
const BATCH_CONCURRENCY: usize = 2;
/// The most names one batch may list.
pub const MAX_BATCH_NAMES: usize = 1000;
/// Operations read per page.
const PAGE: usize = 500;

/// What a batch does to each operation it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Cancel,
    Delete,
}

/// What acting on one operation came to.
enum Acted {
    Changed,
    Skipped,
}

/// The built-in kind that cancels (`DELETE = false`: [`CANCEL_KIND`]) or deletes
/// (`DELETE = true`: [`DELETE_KIND`]) the operations a selection names.
pub(super) struct Batch<const DELETE: bool>(pub(super) Weak<Shared>);

impl<const DELETE: bool> Kind for Batch<DELETE> {
    const KIND: &'static str = if DELETE { DELETE_KIND } else { CANCEL_KIND };
    const DETAILS_TYPE: Option<&'static str> = Some("oprun.v1.BatchProgress");
    type Input = BatchSelection;
    type Output = BatchResult;
}

impl<const DELETE: bool> Task for Batch<DELETE> {
    fn options(&self) -> TaskOptions {
        TaskOptions {
            retry_safe: true,
            max_concurrency: Some(BATCH_CONCURRENCY),
            retry: RetryPolicy::exponential(5),
            default_timeout: None,
            max_queued: None,
            // The same roles as the RPCs that start them: a submitter may cancel, only an
            // admin may delete, whichever way the batch is started (SubmitTask, Rerun).
            start_role: if DELETE { Role::Admin } else { Role::Submitter },
            max_per_key: None,
        }
    }

    fn validate(&self, input: &BatchSelection) -> Result<(), TaskError> {
        check_selection(input).map_err(TaskError::invalid_argument)
    }

    async fn run(&self, input: BatchSelection, ctx: TaskContext) -> Result<BatchResult, TaskError> {
        let action = if DELETE {
            Action::Delete
        } else {
            Action::Cancel
        };
        run_batch(&self.0, action, input, ctx).await
    }
}

/// What a selection selects: the operations named, or those matching a filter.
enum Selection {
    Names(Vec<OperationId>),
    Filter(Filter),
}

/// Checks a selection: names or a filter (one of them), each valid.
///
/// # Errors
/// A message saying what is wrong and what to send instead.
pub fn check_selection(input: &BatchSelection) -> Result<(), String> {
    parse_selection(input).map(|_| ())
}

fn parse_selection(input: &BatchSelection) -> Result<Selection, String> {
    let filter = input.filter.trim();
    match (input.names.is_empty(), filter.is_empty()) {
        (true, true) => Err(
            "select the operations with a filter or names; to select every \
             operation, say so with a filter such as `done = false`"
                .to_owned(),
        ),
        (false, false) => Err("give either a filter or names, not both".to_owned()),
        (false, true) => {
            if input.names.len() > MAX_BATCH_NAMES {
                return Err(format!(
                    "{} names given; at most {MAX_BATCH_NAMES} per request (or use a filter)",
                    input.names.len()
                ));
            }
            // Each operation once, however often it is named: a batch counts what it
            // looked at, and acting twice on one operation changes nothing the second time.
            let mut seen = std::collections::HashSet::new();
            let mut ids = Vec::with_capacity(input.names.len());
            for name in &input.names {
                let id = OperationId::parse_name(name).map_err(|e| e.to_string())?;
                if seen.insert(id.clone()) {
                    ids.push(id);
                }
            }
            Ok(Selection::Names(ids))
        }
        (true, false) => Filter::parse(filter)
            .map(Selection::Filter)
            .map_err(|e| e.to_string()),
    }
}

/// A store failure is worth another attempt (the kinds are retry-safe).
fn retryable(e: Error) -> TaskError {
    TaskError::unavailable(e.to_string())
}

async fn run_batch(
    shared: &Weak<Shared>,
    action: Action,
    input: BatchSelection,
    ctx: TaskContext,
) -> Result<BatchResult, TaskError> {
    let runner = Weak::upgrade(shared)
        .map(|shared| Runner { shared })
        .ok_or_else(|| TaskError::unavailable("the runner is shutting down"))?;
    let selection = parse_selection(&input).map_err(TaskError::invalid_argument)?;
    let me = runner.get(ctx.id()).await.map_err(retryable)?;
    // An attempt that takes the batch over goes on from where the last one's durable progress
    // says it was, with its counts: the result counts what every attempt did.
    let resumed = me
        .details
        .as_ref()
        .and_then(|any| any.to_msg::<BatchProgress>().ok());
    let mut at = resumed.unwrap_or_default();
    let mut result = at.so_far.take().unwrap_or_default();
    if resumed.is_some() {
        info!(
            op.name = %ctx.id(),
            attempt = me.attempt,
            matched = result.matched,
            "batch goes on from its last attempt's progress"
        );
    }
    match selection {
        Selection::Names(ids) => {
            at.total = i64::try_from(ids.len()).unwrap_or(i64::MAX);
            let done = usize::try_from(at.names_done).unwrap_or(0).min(ids.len());
            for (i, id) in ids.iter().enumerate().skip(done) {
                if ctx.is_cancelled() {
                    return Err(TaskError::cancelled());
                }
                let found = match runner.get(id).await {
                    Ok(record) if record.seq < me.seq => Some(record),
                    Ok(_) | Err(Error::NotFound { .. }) => None,
                    Err(e) => return Err(retryable(e)),
                };
                match found {
                    Some(record) => {
                        result.matched += 1;
                        tally(&mut result, act(&runner, action, &record).await?);
                    }
                    None => result.skipped += 1,
                }
                at.names_done = i64::try_from(i + 1).unwrap_or(i64::MAX);
                report(&ctx, action, &result, &at, at.names_done);
            }
        }
        Selection::Filter(filter) => {
            let left = count(&runner, &filter, (at.after_seq, me.seq), &ctx).await?;
            at.total = result.matched.saturating_add(left);
            let mut after = at.after_seq;
            'pages: loop {
                let page = runner.list(&filter, after, PAGE).await.map_err(retryable)?;
                for record in &page.operations {
                    if record.seq >= me.seq {
                        break 'pages;
                    }
                    if ctx.is_cancelled() {
                        return Err(TaskError::cancelled());
                    }
                    result.matched += 1;
                    tally(&mut result, act(&runner, action, record).await?);
                    at.after_seq = record.seq;
                    at.total = at.total.max(result.matched);
                    report(&ctx, action, &result, &at, result.matched);
                }
                match page.next_after {
                    Some(next) => after = next,
                    None => break,
                }
            }
            at.total = result.matched;
            report(&ctx, action, &result, &at, result.matched);
        }
    }
    info!(
        op.name = %ctx.id(),
        matched = result.matched,
        changed = result.changed,
        skipped = result.skipped,
        "batch done"
    );
    Ok(result)
}

/// How many operations between `after` and `before` (by `seq`, both excluded) match `filter`
/// (the progress total).
async fn count(
    runner: &Runner,
    filter: &Filter,
    (mut after, before): (i64, i64),
    ctx: &TaskContext,
) -> Result<i64, TaskError> {
    let mut n: i64 = 0;
    loop {
        if ctx.is_cancelled() {
            return Err(TaskError::cancelled());
        }
        let page = runner.list(filter, after, PAGE).await.map_err(retryable)?;
        let older = page
            .operations
            .iter()
            .take_while(|r| r.seq < before)
            .count();
        n = n.saturating_add(i64::try_from(older).unwrap_or(i64::MAX));
        match page.next_after {
            Some(next) if older == page.operations.len() => after = next,
            _ => return Ok(n),
        }
    }
}

async fn act(
    runner: &Runner,
    action: Action,
    record: &OperationRecord,
) -> Result<Acted, TaskError> {
    match action {
        Action::Cancel if record.is_done() => Ok(Acted::Skipped),
        Action::Cancel => match runner.cancel_from(record.clone()).await {
            Ok(()) => Ok(Acted::Changed),
            Err(Error::NotFound { .. }) => Ok(Acted::Skipped),
            Err(e) => Err(retryable(e)),
        },
        Action::Delete if !record.is_done() => Ok(Acted::Skipped),
        Action::Delete => match runner.delete_done(&record.id).await {
            Ok(()) => Ok(Acted::Changed),
            Err(Error::NotFound { .. } | Error::FailedPrecondition { .. }) => Ok(Acted::Skipped),
            Err(e) => Err(retryable(e)),
        },
    }
}

fn tally(result: &mut BatchResult, acted: Acted) {
    match acted {
        Acted::Changed => result.changed += 1,
        Acted::Skipped => result.skipped += 1,
    }
}

/// Reports progress: `seen` of the total looked at, what was done in the status, and where
/// the batch is (with its counts) in the details, which a later attempt goes on from.
fn report(ctx: &TaskContext, action: Action, result: &BatchResult, at: &BatchProgress, seen: i64) {
    ctx.progress(seen, at.total, "operations");
    ctx.details(&BatchProgress {
        so_far: Some(*result),
        ..*at
    });
    let verb = match action {
        Action::Cancel => "cancelled",
        Action::Delete => "deleted",
    };
    ctx.status(format!(
        "{verb} {} of {seen} looked at ({} skipped)",
        result.changed, result.skipped
    ));
}
