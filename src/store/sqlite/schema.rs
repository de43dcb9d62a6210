//! The SQLite schema, its versions, and how a row is read back.
//!
//! # Version 2
//! Next to each operation's body (its wire `Operation`), the fields that a claim, a cancel
//! request or a fenced write change are columns, authoritative where `layout = 2`: `state`,
//! `version`, `owner`, `attempt`, `start_time`, `update_time`, `end_time`,
//! `next_attempt_time`, `deadline`, `cancel_requested`; `due` orders the queue (the next
//! attempt's time, or the creation time, while QUEUED). A claim is then one `UPDATE` of
//! columns, never a rewrite of the body. `nodes` holds the nodes' leases.
//!
//! # Version 3
//! `priority` (from the submission; 0 before) and `unique_key` (NULL without one) are columns,
//! for the claim's order (`operations_ready`: priority, then due time, then `seq`) and for
//! the one unfinished operation per kind and unique key (`operations_unique`). Both are
//! also in the body, which reads take them from; they never change once inserted.
//!
//! # Version 4
//! `concurrency_key` (NULL without one) is a column, and `operations_running_keys` counts the
//! RUNNING operations of a kind by key for a claim under a limit per key. `starts` keeps
//! when each operation of a kind with a start rate started (and its key), for as long as the
//! rate's period: a claim counts them.
//!
//! # Version 5
//! `schedule` (NULL for an operation no schedule started) is a column, for the filter
//! `schedule = "schedules/x"` (`operations_by_schedule`), and `schedules` keeps the schedules
//! (see [`crate::store::ScheduleRow`]), `schedules_wake` ordering them by when a node should
//! next act on them.
//!
//! # Version 6
//! `tally_counts` (operations of each kind in each state: a row per kind) and `tally_ends` (ends by second and by
//! minute) keep the summary (see [`crate::store::tally`]), moved by the writer in the
//! transaction that changes the operations (by what each change moved: counted in memory
//! over a batch, written once before its commit), the sweep and deletes included.
//! Opening an older database fills them from a full count, once.
//!
//! `created_max` is the latest `create_time` of the operation and every one inserted before
//! it (set by the insert from the row before it; rows deleted since do not matter): it only
//! grows with `seq`, so the first row whose `created_max` reaches a time is where a walk in
//! `seq` order finds the first operation created at or after it (none before it can be).
//! `operations_created_max` serves that seek; it replaces `operations_created` (an index on
//! `create_time`, whose lists sorted what they found). An upper bound is found the same way
//! from the largest lag, `created_max - create_time`, of any operation
//! (`operations_created_lag`, which holds only the operations created before one inserted
//! ahead of them). Opening an older database fills `created_max` in `seq` order, once.
//!
//! Version 1 (before) kept those fields in the body only. Opening one adds the columns, fills
//! them for the unfinished operations from their bodies (a finished one never changes again:
//! its body stays authoritative, `layout` NULL), and sets the version, in one transaction.

use rusqlite::{params, Connection, Transaction};

use super::sql_error;
use crate::model::OperationRecord;
use crate::store::row::due;
use crate::store::row::{decode_record, Columns};
use crate::store::{micros, StoreError};

/// The schema version this build writes (`PRAGMA user_version`).
pub(super) const VERSION: i64 = 6;

/// The `layout` of a row whose columns are authoritative.
pub(super) const LAYOUT_CURRENT: i64 = 2;

/// The table as version 2 creates it, with its indexes.
const CREATE: &str = "
CREATE TABLE IF NOT EXISTS operations (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    request_id        TEXT UNIQUE,
    kind              TEXT NOT NULL,
    done              INTEGER NOT NULL,
    state             INTEGER NOT NULL,
    error_code        INTEGER,
    create_time       INTEGER NOT NULL,
    update_time       INTEGER NOT NULL,
    end_time          INTEGER,
    input             BLOB NOT NULL,
    body              BLOB NOT NULL,
    layout            INTEGER,
    version           INTEGER NOT NULL DEFAULT 1,
    owner             TEXT,
    attempt           INTEGER NOT NULL DEFAULT 1,
    start_time        INTEGER,
    next_attempt_time INTEGER,
    deadline          INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    due               INTEGER,
    priority          INTEGER NOT NULL DEFAULT 0,
    unique_key        TEXT,
    concurrency_key   TEXT,
    schedule          TEXT,
    created_max       INTEGER
);
";

/// The columns version 3 adds to a version 2 table.
const ADD_COLUMNS_3: &str = "
ALTER TABLE operations ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN unique_key TEXT;
";

/// The column version 4 adds to a version 3 table.
const ADD_COLUMNS_4: &str = "
ALTER TABLE operations ADD COLUMN concurrency_key TEXT;
";

/// The column version 5 adds to a version 4 table.
const ADD_COLUMNS_5: &str = "
ALTER TABLE operations ADD COLUMN schedule TEXT;
";

/// The column version 6 adds to a version 5 table, filled in `seq` order, and the index it
/// replaces.
const ADD_COLUMNS_6: &str = "
ALTER TABLE operations ADD COLUMN created_max INTEGER;
UPDATE operations SET created_max = w.latest
    FROM (SELECT seq, MAX(create_time) OVER (ORDER BY seq) AS latest FROM operations) AS w
    WHERE operations.seq = w.seq;
DROP INDEX IF EXISTS operations_created;
";

/// The columns version 2 adds to a version 1 table.
const ADD_COLUMNS: &str = "
ALTER TABLE operations ADD COLUMN layout INTEGER;
ALTER TABLE operations ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE operations ADD COLUMN owner TEXT;
ALTER TABLE operations ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE operations ADD COLUMN start_time INTEGER;
ALTER TABLE operations ADD COLUMN next_attempt_time INTEGER;
ALTER TABLE operations ADD COLUMN deadline INTEGER;
ALTER TABLE operations ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN due INTEGER;
";

/// Indexes and tables both versions end with. `operations_unfinished` serves recovery and
/// `done = false` filters, `operations_ended` retention, `operations_end_state` filters on a
/// final state, `operations_ready` claims (due work of a kind, highest priority first, then
/// oldest due), `operations_queue` when the next queued operation of a kind is due,
/// `operations_unique` keeps one unfinished operation per kind and unique key,
/// `operations_owner` the rescue of a node's work, `operations_deadline` the queued deadline
/// sweep; `operations_by_kind` and `operations_failed` filters on the kind and the error
/// code; `operations_created_max` filters with a `create_time` lower bound (see the
/// module's version 6). Every SQLite index holds the rowid, `seq`. A filter's index holds an equality column (or none) then `seq`, so that
/// `col = ? AND seq > ?` is one range read, already in `seq` order.
///
/// Every index is written on every change of a column it holds, and the writer's cost (its
/// pages in the log, the B-tree work) grows with them: so most are partial, holding only the
/// rows they look for (unfinished, queued or running operations, queued deadlines, finished
/// ones), and an operation enters and leaves each at most once in its life; their queries
/// name the same condition, literally (SQLite uses a partial index only then: the filter
/// compiler writes `done` and `state` as numbers for this). `kind` never changes once
/// inserted. A database made before an index existed gets it when next opened (IF NOT
/// EXISTS): an index changes no table, so the schema version stays.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS operations_unfinished ON operations(seq) WHERE done = 0;
CREATE INDEX IF NOT EXISTS operations_ended ON operations(end_time) WHERE done = 1;
CREATE INDEX IF NOT EXISTS operations_end_state ON operations(state, seq) WHERE done = 1;
CREATE INDEX IF NOT EXISTS operations_by_kind ON operations(kind, seq);
CREATE INDEX IF NOT EXISTS operations_created_max ON operations(created_max);
CREATE INDEX IF NOT EXISTS operations_created_lag ON operations(created_max - create_time)
    WHERE created_max > create_time;
CREATE INDEX IF NOT EXISTS operations_failed ON operations(error_code, seq)
    WHERE error_code IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_queue ON operations(kind, due, seq) WHERE state = 1;
CREATE INDEX IF NOT EXISTS operations_ready ON operations(kind, priority DESC, due, seq)
    WHERE state = 1;
CREATE UNIQUE INDEX IF NOT EXISTS operations_unique ON operations(kind, unique_key)
    WHERE done = 0 AND unique_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_running_keys ON operations(kind, concurrency_key)
    WHERE state = 2 AND concurrency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS starts (
    kind TEXT NOT NULL,
    key  TEXT,
    at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS starts_by_kind ON starts(kind, at);
CREATE INDEX IF NOT EXISTS operations_owner ON operations(owner) WHERE state = 2;
CREATE INDEX IF NOT EXISTS operations_deadline ON operations(deadline)
    WHERE state = 1 AND deadline IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_by_schedule ON operations(schedule, seq)
    WHERE schedule IS NOT NULL;
CREATE TABLE IF NOT EXISTS schedules (
    id      TEXT PRIMARY KEY,
    body    BLOB NOT NULL,
    wake    INTEGER,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_wake ON schedules(wake) WHERE wake IS NOT NULL;
CREATE TABLE IF NOT EXISTS nodes (
    id          TEXT PRIMARY KEY,
    lease_until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kinds (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
";

/// The tallies (see the module's version 6), which the writer moves with each change it
/// makes (`writer::write_tally`). Ends are counted in the second and the minute of
/// `end_time`.
const TALLY: &str = "
CREATE TABLE IF NOT EXISTS tally_counts (
    kind      TEXT PRIMARY KEY,
    queued    INTEGER NOT NULL,
    running   INTEGER NOT NULL,
    succeeded INTEGER NOT NULL,
    failed    INTEGER NOT NULL,
    cancelled INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tally_ends (
    span INTEGER NOT NULL,
    at   INTEGER NOT NULL,
    n    INTEGER NOT NULL,
    PRIMARY KEY (span, at)
) WITHOUT ROWID;
";

/// Fills the tallies of a database made before them, from a full count.
const TALLY_FILL: &str = "
DELETE FROM tally_counts;
DELETE FROM tally_ends;
INSERT INTO tally_counts (kind, queued, running, succeeded, failed, cancelled)
    SELECT kind, SUM(state = 1), SUM(state = 2), SUM(state = 3), SUM(state = 4),
        SUM(state = 5)
    FROM operations GROUP BY kind;
INSERT INTO tally_ends (span, at, n) SELECT 1, end_time / 1000000, COUNT(*) FROM operations
    WHERE done = 1 AND end_time IS NOT NULL GROUP BY 2;
INSERT INTO tally_ends (span, at, n) SELECT 60, end_time / 60000000 * 60, COUNT(*)
    FROM operations WHERE done = 1 AND end_time IS NOT NULL GROUP BY 2;
";

/// Creates the schema in a database of version `from` (0: empty), or brings one of an
/// earlier version up to this one, in one transaction.
///
/// # Errors
/// [`StoreError`] when a statement fails or an unfinished operation's body cannot be read.
pub(super) fn prepare(conn: &mut Connection, from: i64) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sql_error)?;
    match from {
        0 => tx.execute_batch(CREATE).map_err(sql_error)?,
        1 => {
            // Version 1's indexes held every operation; their successors hold only the rows
            // they serve.
            tx.execute_batch(
                "DROP INDEX IF EXISTS operations_finished; \
                 DROP INDEX IF EXISTS operations_unfinished;",
            )
            .map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS).map_err(sql_error)?;
            fill_unfinished(&tx)?;
            tx.execute_batch(ADD_COLUMNS_3).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_4).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_5).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_6).map_err(sql_error)?;
        }
        2 => {
            tx.execute_batch(ADD_COLUMNS_3).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_4).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_5).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_6).map_err(sql_error)?;
        }
        3 => {
            tx.execute_batch(ADD_COLUMNS_4).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_5).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_6).map_err(sql_error)?;
        }
        4 => {
            tx.execute_batch(ADD_COLUMNS_5).map_err(sql_error)?;
            tx.execute_batch(ADD_COLUMNS_6).map_err(sql_error)?;
        }
        5 => tx.execute_batch(ADD_COLUMNS_6).map_err(sql_error)?,
        _ => {}
    }
    tx.execute_batch(INDEXES).map_err(sql_error)?;
    tx.execute_batch(TALLY).map_err(sql_error)?;
    if (1..6).contains(&from) {
        tx.execute_batch(TALLY_FILL).map_err(sql_error)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {VERSION};"))
        .map_err(sql_error)?;
    tx.commit().map_err(sql_error)
}

/// Fills the new columns of every unfinished version-1 row from its body.
fn fill_unfinished(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<RawRow> = tx
        .prepare(&format!(
            "SELECT {COLUMNS} FROM operations WHERE done = 0 AND layout IS NULL"
        ))
        .and_then(|mut s| s.query_map([], row_to_record)?.collect())
        .map_err(sql_error)?;
    let mut update = tx
        .prepare(
            "UPDATE operations SET layout = ?2, attempt = ?3, start_time = ?4, \
             next_attempt_time = ?5, deadline = ?6, cancel_requested = ?7, due = ?8 \
             WHERE seq = ?1",
        )
        .map_err(sql_error)?;
    for row in rows {
        let r = row.decode()?;
        update
            .execute(params![
                r.seq,
                LAYOUT_CURRENT,
                r.attempt,
                r.start_time.map(micros),
                r.next_attempt_time.map(micros),
                r.deadline.map(micros),
                r.requested_cancellation,
                due(&r),
            ])
            .map_err(sql_error)?;
    }
    Ok(())
}

/// The columns a read selects, in [`row_to_record`]'s order.
pub(super) const COLUMNS: &str = "seq, id, request_id, input, body, layout, state, version, \
     owner, attempt, start_time, update_time, end_time, next_attempt_time, deadline, \
     cancel_requested";

/// A row as read, before its body is decoded (which callers do off the writer thread).
pub(super) struct RawRow {
    seq: i64,
    id: String,
    request_id: Option<String>,
    input: Vec<u8>,
    body: Vec<u8>,
    columns: Columns,
}

/// Reads a row selected with [`COLUMNS`].
pub(super) fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    let layout: Option<i64> = row.get(5)?;
    let version: i64 = row.get(7)?;
    let attempt: i64 = row.get(9)?;
    Ok(RawRow {
        seq: row.get(0)?,
        id: row.get(1)?,
        request_id: row.get(2)?,
        input: row.get(3)?,
        body: row.get(4)?,
        columns: Columns {
            current: layout == Some(LAYOUT_CURRENT),
            state: row.get(6)?,
            version: u64::try_from(version).unwrap_or(0),
            owner: row.get(8)?,
            attempt: u32::try_from(attempt).unwrap_or(0),
            start_time: row.get(10)?,
            update_time: row.get(11)?,
            end_time: row.get(12)?,
            next_attempt_time: row.get(13)?,
            deadline: row.get(14)?,
            requested_cancellation: row.get(15)?,
        },
    })
}

impl RawRow {
    /// The record the row holds.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when its body cannot be decoded or disagrees with its state.
    pub(super) fn decode(self) -> Result<OperationRecord, StoreError> {
        decode_record(
            self.seq,
            self.id,
            self.request_id,
            &self.input,
            &self.body,
            &self.columns,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;
    use crate::store::row::{encode_body, encode_input};

    /// The version 1 table, as the first releases created it.
    const VERSION_1: &str = "
CREATE TABLE operations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    request_id  TEXT UNIQUE,
    kind        TEXT NOT NULL,
    done        INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    error_code  INTEGER,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    end_time    INTEGER,
    input       BLOB NOT NULL,
    body        BLOB NOT NULL
);
PRAGMA user_version = 1;
";

    fn insert_v1(conn: &Connection, r: &OperationRecord) {
        conn.execute(
            "INSERT INTO operations (id, kind, done, state, error_code, create_time, \
             update_time, end_time, input, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.id.as_str(),
                r.kind,
                r.is_done(),
                r.state.to_proto() as i32,
                r.error_code(),
                micros(r.create_time),
                micros(r.update_time),
                r.end_time.map(micros),
                encode_input(&r.input),
                encode_body(r),
            ],
        )
        .unwrap();
    }

    /// A version 1 database opens as version 2 with every operation as it was: the unfinished
    /// ones (a delayed start, a retry's attempt) get their columns from their bodies, the
    /// finished ones keep their bodies authoritative.
    #[test]
    fn version_1_is_migrated() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(VERSION_1).unwrap();
        let base =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut delayed = OperationRecord::new_queued("sleep".into(), Default::default(), None);
        delayed.next_attempt_time = Some(base);
        delayed.attempt = 3;
        delayed.deadline = Some(base + std::time::Duration::from_secs(60));
        let mut finished = OperationRecord::new_queued("sleep".into(), Default::default(), None);
        finished.start_time = Some(base);
        finished.attempt = 2;
        finished.fail(State::Failed, crate::Code::Unknown, "x");
        insert_v1(&conn, &delayed);
        insert_v1(&conn, &finished);

        prepare(&mut conn, 1).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        let read = |id: &str| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"),
                params![id],
                row_to_record,
            )
            .unwrap()
            .decode()
            .unwrap()
        };
        let got = read(delayed.id.as_str());
        assert_eq!(
            (
                got.attempt,
                got.next_attempt_time,
                got.deadline,
                got.version
            ),
            (3, Some(base), delayed.deadline, 1)
        );
        let due: i64 = conn
            .query_row(
                "SELECT due FROM operations WHERE id = ?1",
                params![delayed.id.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(due, micros(base));
        let got = read(finished.id.as_str());
        assert_eq!((got.attempt, got.start_time), (2, Some(base)));
        assert!(got.is_done());
    }
}
