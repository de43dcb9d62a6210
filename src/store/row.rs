//! A record as the SQL backends store it: its indexed columns next to its encoded body.

use crate::filter::{Filter, SqlColumns};
use crate::model::{OperationRecord, State};
use crate::store::{encode_body, encode_input, micros};

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

/// The `create_time` bounds of `filter` in microseconds, as both SQL backends narrow a list's
/// walk by them: every match is created at or after the first and before the second (see
/// [`Filter::created_after`] and [`Filter::created_before`]).
pub(crate) fn created_bounds(filter: &Filter) -> (Option<i64>, Option<i64>) {
    (
        filter.created_after().map(micros),
        filter.created_before().map(micros),
    )
}
