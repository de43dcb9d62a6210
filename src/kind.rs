//! What a kind of work *is*: its name and its message types ([`Kind`]). How it runs is
//! [`crate::task::Task`], which builds on this trait; clients ([`crate::client`]) and every
//! JSON path need only this one, so a client never compiles a worker's implementation.

use prost::{Message, Name};

/// A kind of work, as clients and the server's surfaces see it: a stable name and the
/// messages it takes, answers and reports.
///
/// A team that keeps its kinds in a crate of their own (shared by the services that submit
/// and the workers that run) implements `Kind` there for a marker type; a worker implements
/// [`Task`](crate::task::Task) on its own type whose `Kind` names the same name and types.
///
/// ```
/// use oprun::proto::oprun::v1::{SleepInput, SleepOutput};
///
/// /// Counts to `steps` (the submitting side needs nothing more).
/// pub struct Count;
///
/// impl oprun::Kind for Count {
///     const KIND: &'static str = "count";
///     type Input = SleepInput;
///     type Output = SleepOutput;
/// }
/// ```
pub trait Kind: 'static {
    /// The kind's name. Stable forever once released: stored operations refer to it.
    const KIND: &'static str;
    /// The full name of the details message the kind reports, if any.
    const DETAILS_TYPE: Option<&'static str> = None;
    /// The input message.
    type Input: Message + Name + Default + Send + 'static;
    /// The response message.
    type Output: Message + Name + Send + 'static;
}
