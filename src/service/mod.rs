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

/// Default ListOperations page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest ListOperations page size; larger requests are clamped.
pub const MAX_PAGE_SIZE: usize = 1000;
