//! Durable storage of operations behind one trait, [`Store`], with one conformance suite
//! (`store::conformance`, behind the `conformance` feature) that every backend passes.
//!
//! The store is the source of work: a node [`claim`](Store::claim)s the queued operations that
//! are due, holds them under a lease it renews with [`heartbeat`](Store::heartbeat), writes
//! every change [`fenced`](Store::write) (so a node that lost an operation cannot change it),
//! and any node takes over the work of a node whose lease ended ([`orphans`](Store::orphans)).
//!
//! A store several nodes share also keeps a [change feed](Store::changes): each operation's
//! latest change in the order they happened, which a node follows to learn what other nodes
//! did (an operation it waits for ended, a cancel request for work it runs, new work to
//! claim). An *exclusive* store (one process owns the data) needs none: every change passes
//! through that process.
//!
//! Backends: [`sqlite::SqliteStore`] (the embedded default, group-committed; exclusive, its
//! data directory is locked) and [`memory::MemoryStore`] (for tests and benchmarks; nothing
//! survives a restart; exclusive, or shared by several runners in one process with
//! [`memory::MemoryStore::shared`], which is how the multi-node protocol is tested) and
//! [`postgres::PostgresStore`] (several nodes on one database; not exclusive: leases, fences
//! and the change feed carry what the nodes must know of each other).

// The state numbers the SQL backends' statements compare `state` with, as literals for
// `concat!` (their statements are built at compile time); `row::QUEUED` and `row::RUNNING`
// are the same numbers for `format!`, taken from the protos' enum, and a test holds the two
// together.

/// `QUEUED`'s number in SQL text.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! queued_sql {
    () => {
        "1"
    };
}

/// `RUNNING`'s number in SQL text.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! running_sql {
    () => {
        "2"
    };
}

/// The assignments of a claim's start in SQL, as [`Change::Start`](crate::model::Change::Start)
/// makes it: QUEUED → RUNNING, owned by the node at `$node` from the time at `$at` (the
/// backend's placeholders), one version on; the row leaves the queue (`due`). The conformance
/// check `a_claim_starts_as_the_state_machine_does` holds the two together.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! start_sql {
    ($node:literal, $at:literal) => {
        concat!(
            "state = ",
            running_sql!(),
            ", owner = ",
            $node,
            ", start_time = ",
            $at,
            ", update_time = ",
            $at,
            ", next_attempt_time = NULL, due = NULL, version = version + 1"
        )
    };
}

mod claim;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
mod schedules;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod fence;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod row;
pub(crate) mod tally;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod walk;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

pub(crate) use claim::{Choice, Gates, KeyGate, Offer, Rank, RateGate, Share};
pub use claim::{Claim, Claimed, Rate, RunningLimits};
pub use schedules::{DueSchedules, ScheduleRow};

use crate::filter::{Filter, FilterFields};
use crate::model::{Fence, OperationId, OperationRecord, State};

/// Errors of a store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot answer now (I/O error, lock timeout, closed connection): retry later.
    #[error("the operation store is unavailable: {message}")]
    Unavailable {
        /// What failed, for people: the cause's own words included.
        message: String,
        /// The error that caused it, when there is one (a database or I/O error).
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// Stored data cannot be read back; never silently ignored.
    #[error("the operation store holds unreadable data: {0}")]
    Corrupt(String),
    /// The store has been closed.
    #[error("the operation store is closed")]
    Closed,
    /// Another process holds the store (its data directory is locked).
    #[error("{0}")]
    Locked(String),
}

impl StoreError {
    /// The store cannot answer now, for the reason `message` gives.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// The store cannot answer now because of `source`; `message` says what failed in words
    /// that include the source's own.
    pub fn unavailable_because(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// How long after its lease ended a node with no running work is still listed.
pub const FORGET_NODES_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The time (microseconds) before which a node's lease must have ended for a heartbeat
/// renewing until `lease_until` (microseconds) to forget it.
pub(crate) fn forget_before(lease_until: i64) -> i64 {
    lease_until.saturating_sub(i64::try_from(FORGET_NODES_AFTER.as_micros()).unwrap_or(i64::MAX))
}

/// What a retention sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Finished operations removed.
    pub deleted: usize,
    /// Finished operations kept: counted only when a sweep is given a cap (`keep_at_most`),
    /// `None` otherwise (counting reads every finished operation's index entry: 45 ms at a
    /// million, in the writer, once a second once operations expire steadily).
    pub finished: Option<usize>,
    /// When the oldest kept finished operation ended.
    pub oldest_finished: Option<SystemTime>,
}

/// The result of a fenced [`Store::write`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Written {
    /// Stored. `version` is the stored version now, and `requested_cancellation` whether a
    /// cancel request is recorded (an owner's write keeps one written meanwhile by someone
    /// else).
    Applied {
        /// The stored version after the write.
        version: u64,
        /// Whether a cancel request is recorded.
        requested_cancellation: bool,
    },
    /// The fence did not hold: the operation changed since (another node took it, or a
    /// cancel, deadline or rescue came first). Nothing was written; this is what is stored
    /// (`None` when the operation is gone).
    Stale(Option<Box<OperationRecord>>),
}

/// Queued operations whose deadline has passed, and the next deadline to come.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deadlines {
    /// Queued operations whose deadline is at or before the asked time.
    pub passed: Vec<OperationRecord>,
    /// The earliest deadline of a queued operation after the asked time.
    pub next: Option<SystemTime>,
}

/// What [`Store::summarize`] counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Each kind and state with at least one operation, and how many.
    pub counts: Vec<(String, State, u64)>,
    /// `(i, n)`: `n` operations ended in the `i`th bucket after `since` (from 0; buckets
    /// without any are left out).
    pub finished: Vec<(u64, u64)>,
}

impl Summary {
    /// A summary from SQL rows: `(kind, state, count)` and `(bucket, count)`.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a state or a count that cannot be.
    pub(crate) fn from_rows(
        counts: Vec<(String, i32, i64)>,
        finished: Vec<(i64, i64)>,
    ) -> Result<Self, StoreError> {
        let unsigned = |n: i64| {
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("a negative count: {n}")))
        };
        Ok(Self {
            counts: counts
                .into_iter()
                .map(|(kind, state, n)| {
                    let state = State::from_i32(state)
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown state {state}")))?;
                    Ok((kind, state, unsigned(n)?))
                })
                .collect::<Result<_, StoreError>>()?,
            finished: finished
                .into_iter()
                .map(|(i, n)| Ok((unsigned(i)?, unsigned(n)?)))
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

/// A page of the change feed ([`Store::changes`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Operations changed after the asked position, each once, as it is now, in the order of
    /// their latest change. (An operation deleted meanwhile is not in it.)
    pub operations: Vec<OperationRecord>,
    /// The position to ask after next: the latest change in this page, or the asked
    /// position when nothing changed since (the feed's head when none was given).
    pub next: i64,
}

/// A node's lease and what it runs, from [`Store::nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLease {
    /// The node's name.
    pub id: String,
    /// When its lease ends unless renewed.
    pub lease_until: SystemTime,
    /// Operations RUNNING under it.
    pub running: usize,
}

/// What a store keeps beside operations: each an encoded message under a name, durable like
/// the operations and seen by every node sharing the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Registered {
    /// Kinds declared by workers (an `oprun.v1.KindDeclaration`), by kind name: they stay
    /// known after their workers leave and across restarts.
    Kind,
    /// Worker sessions (an `oprun.v1.WorkerSession`), by session name. A session's lease is
    /// the node lease of its name ([`Store::heartbeat`]).
    Session,
}

impl Registered {
    /// The table (SQL backends) that keeps them.
    pub fn table(self) -> &'static str {
        match self {
            Registered::Kind => "kinds",
            Registered::Session => "sessions",
        }
    }
}

/// The result of an insert.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Inserted {
    /// Stored; the record now carries its `seq`.
    New(OperationRecord),
    /// An operation with the same `request_id` already existed; it is returned unchanged.
    Existing(OperationRecord),
}

/// Where operations are kept. Every method that returns `Ok` after a write has made it durable
/// (to the backend's promise).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new operation and assigns its `seq` (increasing in insertion order). If the
    /// record carries a `request_id` already used, or a `unique_key` that an unfinished
    /// operation of its kind holds, stores nothing and returns that operation.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn insert(&self, record: OperationRecord) -> Result<Inserted, StoreError>;

    /// Inserts several operations in one transaction: every one is stored (or found, as
    /// [`insert`](Store::insert) finds an operation by request id or unique key: also one
    /// inserted earlier in the same call), or none is. Answers one [`Inserted`] per record,
    /// in order.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable: then none is.
    async fn insert_many(&self, records: Vec<OperationRecord>)
        -> Result<Vec<Inserted>, StoreError>;

    /// Writes `record`, a change of a stored operation, if `fence` still holds: for
    /// [`Fence::Version`], the stored version is the one given (and `record.version` is the
    /// next); for [`Fence::Owner`], the operation is still RUNNING that attempt on that node
    /// (the stored version is then incremented, and a cancel request recorded meanwhile is
    /// kept). Otherwise writes nothing and answers [`Written::Stale`].
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn write(&self, record: &OperationRecord, fence: &Fence) -> Result<Written, StoreError>;

    /// Starts queued operations for a node: up to `claim.total`, at most the given number of
    /// each kind, highest priority first, then oldest due (due: `next_attempt_time`, or
    /// `create_time`), then first inserted; none whose time has not come. Each is made RUNNING and owned by the node in the same write, so
    /// two claimers never get the same operation.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError>;

    /// Renews (or takes) `node`'s lease until `lease_until`. Operations a node runs are its
    /// own while its lease lasts. Nodes whose lease ended more than [`FORGET_NODES_AFTER`]
    /// before `lease_until` and that own no RUNNING work are forgotten (a node started with
    /// a fresh name each time would otherwise stay listed for good).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn heartbeat(&self, node: &str, lease_until: SystemTime) -> Result<(), StoreError>;

    /// Up to `limit` RUNNING operations owned by a node other than `node` whose lease ended
    /// before `now` (or that has none): work to take over by the restart rule.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn orphans(
        &self,
        node: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError>;

    /// Up to `limit` QUEUED operations whose deadline is at or before `now`, and the next
    /// deadline of a queued operation after it. (A running operation's deadline is its
    /// worker's own.)
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn deadlines(&self, now: SystemTime, limit: usize) -> Result<Deadlines, StoreError>;

    /// Reads one operation.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn get(&self, id: &OperationId) -> Result<Option<OperationRecord>, StoreError>;

    /// Reads the operation that carries `request_id`, if any.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn find_request(&self, request_id: &str) -> Result<Option<OperationRecord>, StoreError>;

    /// Deletes an operation if it is done. Returns what was there: `None` when nothing was,
    /// `Some(false)` when the operation exists but is not done (and so was kept).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn delete_done(&self, id: &OperationId) -> Result<Option<bool>, StoreError>;

    /// Up to `limit` operations with `seq > after`, in `seq` order, that match `filter`.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn list(
        &self,
        after: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError>;

    /// Up to `limit` operations with `seq < before`, newest (highest `seq`) first, that match
    /// `filter`.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn list_newest(
        &self,
        before: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError>;

    /// How many operations there are of each kind in each state, and how many finished at
    /// or after `since`, by `bucket` (see [`Summary`]), to the second: `since` is rounded
    /// down to one, `bucket` taken in whole seconds (at least one), an end counted in its
    /// second. Read from the tallies each backend keeps as operations change
    /// (`store::tally`), never by counting them; ends are kept for two days before now.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn summarize(
        &self,
        since: SystemTime,
        bucket: std::time::Duration,
    ) -> Result<Summary, StoreError>;

    /// Removes finished operations that ended before `finished_before`, then the oldest
    /// finished ones beyond `keep_at_most` (and then counts those kept, see [`Swept`]).
    /// Unfinished operations are never removed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn sweep(
        &self,
        finished_before: SystemTime,
        keep_at_most: Option<usize>,
    ) -> Result<Swept, StoreError>;

    /// How many operations are queued (ready, delayed or backing off), by kind: what a node
    /// sharing the store checks the queue bounds against.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn queued(&self) -> Result<std::collections::HashMap<String, usize>, StoreError>;

    /// Every operation that is not done, in `seq` order (for recovery at start-up).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError>;

    /// Whether one process owns the store (true for the embedded stores): at open every lease
    /// of an earlier process ended, work of a kind this process does not register can run
    /// nowhere else, and every change passes through this process (no feed is followed).
    /// No default: a networked backend that said `true` by mistake would lose leases and
    /// the change feed without a sound.
    fn is_exclusive(&self) -> bool;

    /// The change feed, for a store several nodes share: up to `limit` operations changed
    /// after position `after` (by an insert, a write or a claim), each once as it is now, in
    /// the order of their latest change. `after: None` asks only for the feed's head (the
    /// position to follow from: every change made after it shows after it; a change made
    /// just before it may show too, as the operation is now). A store may show a change a
    /// moment after it was made (PostgreSQL's once every older transaction has ended), never
    /// before it can be read. An exclusive store need not keep a feed; the runner never asks
    /// one for it.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read; [`StoreError::Unavailable`] from a store
    /// that keeps no feed.
    async fn changes(&self, after: Option<i64>, limit: usize) -> Result<Changes, StoreError> {
        let _ = (after, limit);
        Err(StoreError::unavailable(
            "this store keeps no change feed: one process owns it, and every change passes \
             through that process"
                .to_owned(),
        ))
    }

    /// Keeps `value` under `name` among `what` (replacing what was there), durably.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn register(&self, what: Registered, name: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Forgets what is kept under `name` among `what` (nothing kept is not an error).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn unregister(&self, what: Registered, name: &str) -> Result<(), StoreError>;

    /// Everything kept among `what`, by name.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn registered(&self, what: Registered) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Writes a schedule: a new one when `expected` is `None` (refused, `Ok(false)`, when the
    /// id is taken), else a change of the stored one if its version is still `expected`
    /// (`row.version` is then `expected + 1`; `Ok(false)` when it is gone or was changed).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn put_schedule(
        &self,
        row: &ScheduleRow,
        expected: Option<i64>,
    ) -> Result<bool, StoreError>;

    /// Deletes a schedule; `Ok(false)` when there is none of that id.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError>;

    /// The schedule of that id.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn schedule(&self, id: &str) -> Result<Option<ScheduleRow>, StoreError>;

    /// Up to `limit` schedules whose id sorts after `after`, by id.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn schedules(&self, after: &str, limit: usize) -> Result<Vec<ScheduleRow>, StoreError>;

    /// Up to `limit` schedules whose wake time is at or before `now` (microseconds), earliest
    /// first, and the earliest wake time after `now`.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn due_schedules(&self, now: i64, limit: usize) -> Result<DueSchedules, StoreError>;

    /// Every node that holds (or held) a lease, with how many operations run under it, by
    /// id; a node owning running work without a lease is listed with a lease at the epoch.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn nodes(&self) -> Result<Vec<NodeLease>, StoreError>;

    /// A signal the store raises when its feed may have news (a database that pushes
    /// notifications, as PostgreSQL's `LISTEN` does), so that a node reads the feed when it
    /// fires and otherwise polls only as a safety net. The receiver sees a change
    /// ([`changed`](tokio::sync::watch::Receiver::changed)) when the feed may have news; its
    /// value says whether the store raises it for every change now (while it cannot, followers
    /// poll). `None` (the default): poll.
    fn change_signal(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// Makes every acknowledged write durable and releases the store.
    ///
    /// # Errors
    /// [`StoreError`] when the final flush fails.
    async fn close(&self) -> Result<(), StoreError>;

    /// The store's commit statistics (`oprun_store_commit_seconds`,
    /// `oprun_store_batch_size`), if it keeps them.
    fn commit_stats(&self) -> Option<crate::metrics::CommitStats> {
        None
    }
}

/// Whether `r` matches `filter`.
pub(crate) fn record_matches(filter: &Filter, r: &OperationRecord) -> bool {
    matches_in_state(filter, r, r.state)
}

/// Whether `r` matched `filter` before its last change, which it made from state `before`
/// (the fields such a change sets: state, done, and the error of an end).
pub(crate) fn matched_before(filter: &Filter, r: &OperationRecord, before: State) -> bool {
    matches_in_state(filter, r, before)
}

/// Whether `r`, in `state` (with its error only if that state is an end), matches `filter`.
fn matches_in_state(filter: &Filter, r: &OperationRecord, state: State) -> bool {
    filter.is_empty()
        || filter.matches(&FilterFields {
            name: &r.id.name(),
            done: state.is_done(),
            kind: &r.kind,
            state: state.as_str(),
            error_code: if state.is_done() {
                r.error_code()
            } else {
                None
            },
            create_time: r.create_time,
            update_time: r.update_time,
            priority: r.priority,
            schedule: r.schedule.as_deref().unwrap_or_default(),
        })
}

/// Microseconds since the Unix epoch, for indexed time columns.
pub(crate) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The inverse of [`micros`].
pub(crate) fn from_micros(us: i64) -> SystemTime {
    let magnitude = std::time::Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}
