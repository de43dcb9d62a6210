//! What the SQL backends share: a record as they store it (its indexed columns next to its
//! encoded body, and back), the filter columns, and the statements and gates both run.

use std::time::SystemTime;

use prost::Message;
use prost_types::{Any, Timestamp};

use crate::filter::SqlColumns;
use crate::model::{OperationId, OperationRecord, Outcome, State};
use crate::proto::google::longrunning::{operation, Operation};
use crate::proto::oprun::v1::OperationMetadata;
use crate::store::{from_micros, micros, Rate, RateGate, StoreError};

/// `QUEUED`'s number, as the `state` column holds it (for `format!`ed statements).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) const QUEUED: i32 = crate::proto::oprun::v1::operation_metadata::State::Queued as i32;
/// `RUNNING`'s number, as the `state` column holds it (for `format!`ed statements).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) const RUNNING: i32 = crate::proto::oprun::v1::operation_metadata::State::Running as i32;

/// The columns of `operations` as a filter sees them, in both SQL backends (see
/// [`crate::filter::Filter::to_sqlite`]): times are microseconds since the epoch, `state` the
/// `OperationMetadata.State` number, `done` 0 or 1, `error_code` NULL unless the operation
/// ended with an error.
pub(crate) const FILTER_COLUMNS: SqlColumns = SqlColumns {
    id: "id",
    kind: "kind",
    done: "done",
    state: "state",
    error_code: "error_code",
    create_time: "create_time",
    update_time: "update_time",
    priority: "priority",
    schedule: "schedule",
};

/// A record's columns as a backend stores them, encoded by the caller (so a writer thread or
/// a database round trip only runs SQL).
pub(crate) struct RowImage {
    pub id: String,
    pub request_id: Option<String>,
    pub kind: String,
    pub done: bool,
    pub state: i32,
    pub error_code: Option<i32>,
    pub create_time: i64,
    pub update_time: i64,
    pub end_time: Option<i64>,
    /// Encoded only for inserts (the input never changes).
    pub input: Vec<u8>,
    pub body: Vec<u8>,
    pub version: i64,
    pub owner: Option<String>,
    pub attempt: u32,
    pub start_time: Option<i64>,
    pub next_attempt_time: Option<i64>,
    pub deadline: Option<i64>,
    pub cancel_requested: bool,
    pub due: Option<i64>,
    /// Written only by inserts (it never changes).
    pub priority: i32,
    /// Written only by inserts (it never changes).
    pub unique_key: Option<String>,
    /// Written only by inserts (it never changes).
    pub concurrency_key: Option<String>,
    /// Written only by inserts (it never changes).
    pub schedule: Option<String>,
}

impl RowImage {
    pub(crate) fn of(r: &OperationRecord, with_input: bool) -> Self {
        Self {
            id: r.id.as_str().to_owned(),
            request_id: r.request_id.clone(),
            kind: r.kind.clone(),
            done: r.is_done(),
            state: r.state.to_proto() as i32,
            error_code: r.error_code(),
            create_time: micros(r.create_time),
            update_time: micros(r.update_time),
            end_time: r.end_time.map(micros),
            input: if with_input {
                encode_input(&r.input)
            } else {
                Vec::new()
            },
            body: encode_body(r),
            version: i64::try_from(r.version).unwrap_or(i64::MAX),
            owner: r.owner.clone(),
            attempt: r.attempt,
            start_time: r.start_time.map(micros),
            next_attempt_time: r.next_attempt_time.map(micros),
            deadline: r.deadline.map(micros),
            cancel_requested: r.requested_cancellation,
            due: due(r),
            priority: r.priority,
            unique_key: r.unique_key.clone(),
            concurrency_key: r.concurrency_key.clone(),
            schedule: r.schedule.clone(),
        }
    }
}

/// Where a queued operation stands in the queue: its next attempt's time, or its creation
/// time; none when it is not queued.
pub(crate) fn due(r: &OperationRecord) -> Option<i64> {
    (r.state == State::Queued).then(|| micros(r.next_attempt_time.unwrap_or(r.create_time)))
}

/// The rate gate of a kind from the starts counted in its period: `(key, n, oldest)` rows
/// (the key NULL for starts without one), as the SQL backends read them.
pub(crate) fn rate_gate(rate: Rate, rows: Vec<(Option<String>, i64, i64)>) -> RateGate {
    let count = |n: i64| usize::try_from(n).unwrap_or(usize::MAX);
    let total = rows.iter().map(|(_, n, _)| count(*n)).sum();
    let oldest = rows.iter().map(|(_, _, at)| *at).min();
    let per_key = rows
        .into_iter()
        .filter_map(|(key, n, _)| Some((key?, count(n))));
    RateGate::new(rate, total, per_key, oldest)
}

/// For the SQL backends' `nodes`: every node with a lease, then owners of running work without one; with what they run.
pub(crate) const NODES_SQL: &str = concat!(
    "SELECT n.id, n.lease_until, count(o.seq) FROM nodes n \
     LEFT JOIN operations o ON o.owner = n.id AND o.state = ",
    running_sql!(),
    " GROUP BY n.id, n.lease_until \
     UNION ALL \
     SELECT o.owner, 0, count(*) FROM operations o WHERE o.state = ",
    running_sql!(),
    " \
     AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = o.owner) GROUP BY o.owner \
     ORDER BY 1"
);

/// The stored body of a record: its wire `Operation` (metadata and result).
pub(crate) fn encode_body(r: &OperationRecord) -> Vec<u8> {
    r.to_operation().encode_to_vec()
}

/// Encodes an input `Any`.
pub(crate) fn encode_input(input: &Any) -> Vec<u8> {
    input.encode_to_vec()
}

/// The columns a backend keeps next to a record's body: what a claim, a cancel request or a
/// fenced write changes without rewriting the body. Where `current` (every row written since
/// the columns exist), they win over the body, an absent time included; otherwise (a row
/// finished before they existed, which never changes again) the body holds those fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Columns {
    pub current: bool,
    pub state: i32,
    pub version: u64,
    pub owner: Option<String>,
    pub attempt: u32,
    pub start_time: Option<i64>,
    pub update_time: i64,
    pub end_time: Option<i64>,
    pub next_attempt_time: Option<i64>,
    pub deadline: Option<i64>,
    pub requested_cancellation: bool,
}

/// Rebuilds a record from its stored parts: the body, with the columns laid over it.
pub(crate) fn decode_record(
    seq: i64,
    id: String,
    request_id: Option<String>,
    input: &[u8],
    body: &[u8],
    columns: &Columns,
) -> Result<OperationRecord, StoreError> {
    let name = format!("operations/{id}");
    let corrupt = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
    let op = Operation::decode(body).map_err(|e| corrupt(format!("body: {e}")))?;
    let input = Any::decode(input).map_err(|e| corrupt(format!("input: {e}")))?;
    let meta_any = op
        .metadata
        .ok_or_else(|| corrupt("no metadata".to_owned()))?;
    let meta = OperationMetadata::decode(meta_any.value.as_slice())
        .map_err(|e| corrupt(format!("metadata: {e}")))?;
    let state = State::from_i32(columns.state)
        .ok_or_else(|| corrupt(format!("state {}", columns.state)))?;
    let time = |t: Option<Timestamp>| -> Result<Option<SystemTime>, StoreError> {
        t.map(|t| SystemTime::try_from(t).map_err(|e| corrupt(format!("timestamp: {e}"))))
            .transpose()
    };
    let column_or = |column: Option<i64>, body: Option<Timestamp>| {
        if columns.current {
            Ok(column.map(from_micros))
        } else {
            time(body)
        }
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
    Ok(OperationRecord {
        seq,
        id: OperationId::from_stored(id),
        kind: meta.kind,
        input,
        request_id,
        state,
        create_time,
        start_time: column_or(columns.start_time, meta.start_time)?,
        update_time: from_micros(columns.update_time),
        end_time: column_or(columns.end_time, meta.end_time)?,
        progress: meta.progress.unwrap_or_default(),
        status_message: meta.status_message,
        traceparent: meta.traceparent,
        requested_cancellation: if columns.current {
            columns.requested_cancellation
        } else {
            meta.requested_cancellation
        },
        attempt: if columns.current {
            columns.attempt
        } else {
            meta.attempt
        }
        .max(1),
        details: meta.details,
        outcome,
        next_attempt_time: column_or(columns.next_attempt_time, meta.next_attempt_time)?,
        deadline: column_or(columns.deadline, meta.deadline)?,
        last_error: meta.last_error,
        version: columns.version.max(1),
        owner: columns.owner.clone(),
        priority: meta.priority,
        unique_key: (!meta.unique_key.is_empty()).then_some(meta.unique_key),
        retry_policy: meta.retry_policy,
        concurrency_key: (!meta.concurrency_key.is_empty()).then_some(meta.concurrency_key),
        schedule: (!meta.schedule.is_empty()).then_some(meta.schedule),
        fire_time: time(meta.fire_time)?,
    })
}

/// For the SQL backends' `queued`: queued operations by kind (the queue index's rows).
pub(crate) const QUEUED_SQL: &str = concat!(
    "SELECT kind, count(*) FROM operations WHERE state = ",
    queued_sql!(),
    " GROUP BY kind"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The state numbers written into SQL text are the protos'.
    #[test]
    fn the_sql_state_numbers_are_the_protos() {
        assert_eq!(queued_sql!(), QUEUED.to_string());
        assert_eq!(running_sql!(), RUNNING.to_string());
        assert_eq!(QUEUED, crate::model::State::Queued.to_proto() as i32);
        assert_eq!(RUNNING, crate::model::State::Running.to_proto() as i32);
    }
}
