//! Durable storage of operations behind one trait, [`Store`], with one conformance suite
//! (`store::conformance`, behind the `conformance` feature) that every backend passes.
//!
//! Backends: [`sqlite::SqliteStore`] (the embedded default, group-committed) and
//! [`memory::MemoryStore`] (for tests and benchmarks; nothing survives a restart).
//! A PostgreSQL backend for several nodes fits the same trait.

pub mod memory;
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::time::SystemTime;

use async_trait::async_trait;
use prost::Message;
use prost_types::{Any, Timestamp};

use crate::filter::{Filter, FilterFields};
use crate::model::{OperationId, OperationRecord, Outcome, State};
use crate::proto::google::longrunning::{operation, Operation};
use crate::proto::oprun::v1::OperationMetadata;

/// Errors of a store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot answer now (I/O error, lock timeout, closed connection): retry later.
    #[error("the operation store is unavailable: {0}")]
    Unavailable(String),
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

/// What a retention sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Finished operations removed.
    pub deleted: usize,
    /// Finished operations kept.
    pub finished: usize,
    /// When the oldest kept finished operation ended.
    pub oldest_finished: Option<SystemTime>,
}

/// The result of an insert.
#[derive(Debug, Clone, PartialEq)]
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
    /// record carries a `request_id` already used, stores nothing and returns the existing
    /// operation.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn insert(&self, record: OperationRecord) -> Result<Inserted, StoreError>;

    /// Replaces the stored state of an existing operation (matched by id). Updating a
    /// missing operation is not an error (it may have been deleted meanwhile).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn update(&self, record: &OperationRecord) -> Result<(), StoreError>;

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

    /// Removes finished operations that ended before `finished_before`, then the oldest
    /// finished ones beyond `keep_at_most`. Unfinished operations are never removed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the write could not be made durable.
    async fn sweep(
        &self,
        finished_before: SystemTime,
        keep_at_most: Option<usize>,
    ) -> Result<Swept, StoreError>;

    /// Every operation that is not done, in `seq` order (for recovery at start-up).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds unreadable data.
    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError>;

    /// Makes every acknowledged write durable and releases the store.
    ///
    /// # Errors
    /// [`StoreError`] when the final flush fails.
    async fn close(&self) -> Result<(), StoreError>;
}

/// Whether a record matches a filter.
pub(crate) fn record_matches(filter: &Filter, r: &OperationRecord) -> bool {
    filter.is_empty()
        || filter.matches(&FilterFields {
            name: &r.id.name(),
            done: r.is_done(),
            kind: &r.kind,
            state: r.state.as_str(),
            error_code: r.error_code(),
            create_time: r.create_time,
            update_time: r.update_time,
        })
}

/// The stored body of a record: its wire `Operation` (metadata and result).
pub(crate) fn encode_body(r: &OperationRecord) -> Vec<u8> {
    r.to_operation().encode_to_vec()
}

/// Encodes an input `Any`.
pub(crate) fn encode_input(input: &Any) -> Vec<u8> {
    input.encode_to_vec()
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

/// Rebuilds a record from its stored parts.
pub(crate) fn decode_record(
    seq: i64,
    id: String,
    request_id: Option<String>,
    input: &[u8],
    body: &[u8],
) -> Result<OperationRecord, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("operations/{id}: {what}"));
    let op = Operation::decode(body).map_err(|e| corrupt(format!("body: {e}")))?;
    let input = Any::decode(input).map_err(|e| corrupt(format!("input: {e}")))?;
    let meta_any = op
        .metadata
        .ok_or_else(|| corrupt("no metadata".to_owned()))?;
    let meta = OperationMetadata::decode(meta_any.value.as_slice())
        .map_err(|e| corrupt(format!("metadata: {e}")))?;
    let state =
        State::from_i32(meta.state).ok_or_else(|| corrupt(format!("state {}", meta.state)))?;
    let time = |t: Option<Timestamp>| -> Result<Option<SystemTime>, StoreError> {
        t.map(|t| SystemTime::try_from(t).map_err(|e| corrupt(format!("timestamp: {e}"))))
            .transpose()
    };
    let outcome = match op.result {
        Some(operation::Result::Response(any)) => Some(Outcome::Response(any)),
        Some(operation::Result::Error(status)) => Some(Outcome::Error(status)),
        None => None,
    };
    if state.is_done() != outcome.is_some() {
        return Err(corrupt(format!(
            "state {} does not agree with its result",
            state.as_str()
        )));
    }
    let create_time =
        time(meta.create_time)?.ok_or_else(|| corrupt("no create_time".to_owned()))?;
    let start_time = time(meta.start_time)?;
    let next_attempt_time = time(meta.next_attempt_time)?;
    let deadline = time(meta.deadline)?;
    let update_time = time(meta.update_time)?.unwrap_or(create_time);
    let end_time = time(meta.end_time)?;
    Ok(OperationRecord {
        seq,
        id: OperationId::from_stored(id),
        kind: meta.kind,
        input,
        request_id,
        state,
        create_time,
        start_time,
        update_time,
        end_time,
        progress: meta.progress.unwrap_or_default(),
        status_message: meta.status_message,
        requested_cancellation: meta.requested_cancellation,
        attempt: meta.attempt.max(1),
        details: meta.details,
        outcome,
        next_attempt_time,
        deadline,
        last_error: meta.last_error,
    })
}
