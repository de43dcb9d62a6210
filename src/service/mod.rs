//! gRPC surfaces: thin adapters from the generated service traits to the [`Runner`].
//!
//! Each service is a value you mount on any tonic router (`oprun serve` does exactly that), so
//! the runner embeds in a user's own server. Errors become a `tonic::Status` here and nowhere
//! else, through `From<Error> for Status`.
//!
//! [`Runner`]: crate::scheduler::Runner

mod admin;
mod operations;
mod schedules;
mod snapshot;
mod tasks;
mod watch;
mod worker;

pub use admin::AdminApi;
pub use operations::OperationsApi;
pub use schedules::ScheduleApi;
pub use snapshot::SnapshotApi;
pub use tasks::TaskApi;
pub(crate) use watch::proto_form;
pub use watch::{Handoff, WatchApi};
pub use worker::{WorkerApi, WorkerEvents};

/// The `traceparent` header of a call (W3C Trace Context), if it has one.
fn traceparent<T>(request: &tonic::Request<T>) -> Option<String> {
    let value = request.metadata().get("traceparent")?.to_str().ok()?;
    let checked = crate::model::traceparent(value)?;
    if let Some((trace_id, parent_id)) = crate::model::trace_ids(&checked) {
        let span = tracing::Span::current();
        span.record("trace_id", tracing::field::display(trace_id));
        span.record("parent_id", tracing::field::display(parent_id));
        crate::otel::join_trace(&span, &checked);
    }
    Some(checked)
}

/// The role of the call's caller, when the server checks tokens (the auth layer put it in
/// the request); `None` when it does not (every caller may do everything).
fn caller_role<T>(request: &tonic::Request<T>) -> Option<crate::auth::Role> {
    request
        .extensions()
        .get::<crate::auth::Caller>()
        .map(|caller| caller.role)
}

/// Default ListOperations page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest ListOperations page size; larger requests are clamped.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A request's `page_size`: 0 is [`DEFAULT_PAGE_SIZE`], larger than [`MAX_PAGE_SIZE`] is
/// clamped.
///
/// # Errors
/// INVALID_ARGUMENT for a negative size.
fn page_size(page_size: i32) -> Result<usize, crate::error::Error> {
    match usize::try_from(page_size) {
        Err(_) => Err(crate::error::Error::invalid_argument(
            "page_size",
            format!(
                "page_size must not be negative (got {page_size}); 0 means the default of \
                 {DEFAULT_PAGE_SIZE}"
            ),
        )),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// A request's AIP-160 `filter`.
///
/// # Errors
/// INVALID_ARGUMENT (reason `INVALID_FILTER`) saying what is wrong with it.
fn parse_filter(filter: &str) -> Result<crate::filter::Filter, crate::error::Error> {
    crate::filter::Filter::parse(filter).map_err(|e| {
        crate::error::Error::invalid_argument_because("filter", "INVALID_FILTER", e.to_string())
    })
}
