//! gRPC surfaces: thin adapters from the generated service traits to the [`Runner`].
//!
//! Each service is a value you mount on any tonic router (`oprun serve` does exactly that), so
//! the runner embeds in a user's own server. Errors become a `tonic::Status` here and nowhere
//! else, through `From<Error> for Status`.
//!
//! [`Runner`]: crate::scheduler::Runner

mod operations;
mod snapshot;
mod tasks;
mod watch;

pub use operations::OperationsApi;
pub use snapshot::SnapshotApi;
pub use tasks::TaskApi;
pub use watch::{OperationStream, WatchApi};

/// The `traceparent` header of a call (W3C Trace Context), if it has one.
fn traceparent<T>(request: &tonic::Request<T>) -> Option<String> {
    let value = request.metadata().get("traceparent")?.to_str().ok()?;
    let checked = crate::model::traceparent(value)?;
    if let Some((trace_id, parent_id)) = crate::model::trace_ids(&checked) {
        let span = tracing::Span::current();
        span.record("trace_id", tracing::field::display(trace_id));
        span.record("parent_id", tracing::field::display(parent_id));
    }
    Some(checked)
}

/// Default ListOperations page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest ListOperations page size; larger requests are clamped.
pub const MAX_PAGE_SIZE: usize = 1000;
