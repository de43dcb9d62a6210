//! The writer thread: group commit, and every write command applied in its transactions.
//!
//! # Group commit
//! One thread owns the write connection. Callers send [`Command`]s over a channel and await a
//! reply; the writer takes every command waiting, applies them in one transaction and commits
//! once, so concurrent submissions share one WAL sync instead of paying one each. A reply is
//! sent only after the commit returned: `Ok` means durable.
//!
//! # The log's bound
//! Kept by `super::wal`: the writer asks for checkpoints as the log grows and restarts it
//! between two commits.

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::claims::{claim, ClaimedRows};
use super::schema::{row_to_record, RawRow, COLUMNS, LAYOUT_CURRENT};
use super::wal::WalBound;
use super::{sql_error, sql_limit};
use crate::model::{Fence, OperationId, State};
use crate::store::fence::FenceSql;
use crate::store::row::{RowImage, RUNNING};
use crate::store::tally::{self, Tally};
use crate::store::{from_micros, micros, Claim, StoreError, Swept};

/// What an insert found.
pub(super) enum InsertOutcome {
    /// Stored with this `seq`.
    New(i64),
    /// The `request_id` was already used by this row.
    Existing(Box<RawRow>),
}

/// What the writer thread is asked to do; each carries the channel its answer goes to.
pub(super) enum Command {
    Insert(RowImage, oneshot::Sender<Result<InsertOutcome, StoreError>>),
    /// Inserts all or none.
    InsertMany(
        Vec<RowImage>,
        oneshot::Sender<Result<Vec<InsertOutcome>, StoreError>>,
    ),
    Write(
        RowImage,
        Fence,
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
    ),
    Claim(Claim, oneshot::Sender<Result<ClaimedRows, StoreError>>),
    Heartbeat(String, i64, oneshot::Sender<Result<(), StoreError>>),
    /// Keeps (`Some`) or forgets (`None`) a registration.
    Register(
        crate::store::Registered,
        String,
        Option<Vec<u8>>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    /// Writes a schedule, fenced by its expected version (`None`: a new one).
    PutSchedule(
        crate::store::ScheduleRow,
        Option<i64>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    DeleteSchedule(String, oneshot::Sender<Result<bool, StoreError>>),
    Delete(
        OperationId,
        oneshot::Sender<Result<Option<bool>, StoreError>>,
    ),
    Sweep(
        SystemTime,
        Option<usize>,
        oneshot::Sender<Result<Swept, StoreError>>,
    ),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// What a fenced write found.
pub(super) enum WriteOutcome {
    /// Written: the stored version and cancel request now.
    Applied(i64, bool),
    /// The fence did not hold: the stored row (if any), not decoded.
    Stale(Option<Box<RawRow>>),
}

/// The longest the writer lingers for more commands before committing.
const MAX_LINGER: Duration = Duration::from_micros(500);

/// Applies commands in batches until every sender is gone or a Close arrives.
pub(super) fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    mut wal: WalBound,
    stats: &crate::metrics::CommitStats,
) {
    // Group commit with an adaptive linger: when the previous batch held more than one
    // command (callers are concurrent), wait up to as long as the last commit took (capped)
    // for more before committing, so one commit serves many and the writer spends less CPU
    // per operation. A lone caller never waits.
    let mut last_batch = 0usize;
    let mut last_commit = Duration::ZERO;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        drain(&rx, &mut batch, max_batch);
        if last_batch > 1 && batch.len() < max_batch {
            let deadline = Instant::now() + last_commit.min(MAX_LINGER);
            while batch.len() < max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(c) => {
                        batch.push(c);
                        drain(&rx, &mut batch, max_batch);
                    }
                    Err(_) => break,
                }
            }
        }
        last_batch = batch.len();
        let (closes, batch): (Vec<Command>, Vec<Command>) = batch
            .into_iter()
            .partition(|c| matches!(c, Command::Close(_)));
        let started = Instant::now();
        let writes = batch.len();
        if writes > 0 {
            apply_batch(&mut conn, batch);
            wal.after_commit(&conn);
        }
        last_commit = started.elapsed();
        if writes > 0 {
            stats.commit(writes, last_commit);
        }
        if !closes.is_empty() {
            // Answer Close only once the database file is released, so the directory can be
            // opened again (by this process or another) as soon as close() returns.
            let checkpoint = conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(sql_error);
            let closed = conn.close().map_err(|(_, e)| sql_error(e));
            let result = checkpoint.and(closed);
            for close in closes {
                if let Command::Close(tx) = close {
                    // A caller that stopped waiting is not an error.
                    let _ = tx.send(result.clone());
                }
            }
            return;
        }
    }
}
/// Moves every command already waiting into `batch`, up to `max`.
fn drain(rx: &mpsc::Receiver<Command>, batch: &mut Vec<Command>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(c) => batch.push(c),
            Err(_) => break,
        }
    }
}

/// Answers one command once the batch's commit result is known.
type Finish = Box<dyn FnOnce(&Result<(), StoreError>)>;

/// A reply that carries the command's own result if the commit succeeded, else the commit's
/// error.
fn reply<T: 'static>(
    tx: oneshot::Sender<Result<T, StoreError>>,
    result: Result<T, StoreError>,
) -> Finish {
    // A caller that stopped waiting is not an error, so the send result is ignored.
    Box::new(move |commit| drop(tx.send(commit.clone().and(result))))
}

fn apply_batch(conn: &mut Connection, batch: Vec<Command>) {
    // IMMEDIATE: take the write lock when the transaction begins (waiting up to
    // busy_timeout), rather than upgrading a read to a write midway, which SQLite refuses at
    // once with SQLITE_BUSY when another connection has written meanwhile. BEGIN and COMMIT
    // are prepared once (a transaction object parses each, every batch).
    if !conn.is_autocommit() {
        // A batch before this one whose rollback failed: nothing of it may stay.
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        let failed = Err(e);
        for cmd in batch {
            fail(cmd)(&failed);
        }
        return;
    }
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let mut batch = batch.into_iter();
    // What the batch's changes move in the summary's tallies, written with them.
    let mut tally = Tally::default();
    for cmd in batch.by_ref() {
        finishes.push(apply(conn, cmd, &mut tally));
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (e.g. disk full): nothing of this
            // batch is stored, so every command fails, and none may run outside the
            // transaction.
            break;
        }
    }
    let commit = if conn.is_autocommit() {
        Err(StoreError::unavailable(
            "the store rolled back a write (is the disk full?)".to_owned(),
        ))
    } else {
        write_tally(conn, &mut tally).and_then(|()| run_cached(conn, "COMMIT"))
    };
    if commit.is_err() && !conn.is_autocommit() {
        // Nothing of a batch that did not commit stays (its tally neither).
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "could not roll back a failed batch");
        }
    }
    for finish in finishes {
        finish(&commit);
    }
    for cmd in batch {
        fail(cmd)(&commit);
    }
}

/// Runs a statement without parameters or rows, prepared once.
fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(sql_error)
}

/// The answer to a command that was not applied: the failed commit's error is what is sent
/// (the placeholder result never is).
fn fail(cmd: Command) -> Finish {
    match cmd {
        Command::Insert(_, tx) => reply(tx, Err(StoreError::Closed)),
        Command::InsertMany(_, tx) => reply(tx, Err(StoreError::Closed)),
        Command::Write(_, _, tx) => reply(tx, Ok(WriteOutcome::Stale(None))),
        Command::Claim(_, tx) => reply(tx, Ok((Vec::new(), None, Vec::new()))),
        Command::Heartbeat(_, _, tx) | Command::Close(tx) => reply(tx, Ok(())),
        Command::Register(_, _, _, tx) => reply(tx, Err(StoreError::Closed)),
        Command::PutSchedule(_, _, tx) | Command::DeleteSchedule(_, tx) => {
            reply(tx, Err(StoreError::Closed))
        }
        Command::Delete(_, tx) => reply(tx, Ok(None)),
        Command::Sweep(_, _, tx) => reply(tx, Ok(Swept::default())),
    }
}

fn apply(tx: &Connection, cmd: Command, tally: &mut Tally) -> Finish {
    match cmd {
        Command::Insert(r, reply_to) => reply(reply_to, insert(tx, &r, tally)),
        Command::InsertMany(rows, reply_to) => reply(reply_to, insert_many(tx, &rows, tally)),
        Command::Write(r, fence, reply_to) => reply(reply_to, write(tx, &r, &fence, tally)),
        Command::Claim(claim, reply_to) => reply(reply_to, self::claim(tx, &claim, tally)),
        Command::Heartbeat(node, until, reply_to) => reply(reply_to, heartbeat(tx, &node, until)),
        Command::Register(what, name, value, reply_to) => {
            reply(reply_to, register(tx, what, &name, value.as_deref()))
        }
        Command::PutSchedule(row, expected, reply_to) => {
            reply(reply_to, put_schedule(tx, &row, expected))
        }
        Command::DeleteSchedule(id, reply_to) => reply(reply_to, delete_schedule(tx, &id)),
        Command::Delete(id, reply_to) => reply(reply_to, delete_done(tx, &id, tally)),
        Command::Sweep(before, keep, reply_to) => reply(reply_to, sweep(tx, before, keep, tally)),
        Command::Close(reply_to) => reply(reply_to, Ok(())),
    }
}

/// Adds what `tally` counted to the summary's tables (see [`crate::store::tally`]), and
/// empties it.
fn write_tally(tx: &Connection, tally: &mut Tally) -> Result<(), StoreError> {
    if tally.is_empty() {
        return Ok(());
    }
    let (counts, ends) = tally.drain();
    // A row per kind: one statement per kind a batch changed, whatever the states.
    let mut add = tx
        .prepare_cached(
            "INSERT INTO tally_counts (kind, queued, running, succeeded, failed, cancelled) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (kind) DO UPDATE SET \
             queued = queued + excluded.queued, running = running + excluded.running, \
             succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed, \
             cancelled = cancelled + excluded.cancelled",
        )
        .map_err(sql_error)?;
    for (kind, n) in counts {
        add.execute(params![kind, n[1], n[2], n[3], n[4], n[5]])
            .map_err(sql_error)?;
    }
    let mut add = tx
        .prepare_cached(
            "INSERT INTO tally_ends (span, at, n) VALUES (?1, ?2, ?3) \
             ON CONFLICT (span, at) DO UPDATE SET n = n + excluded.n",
        )
        .map_err(sql_error)?;
    for (span, at, n) in ends {
        add.execute(params![span, at, n]).map_err(sql_error)?;
    }
    Ok(())
}

/// Writes a schedule: inserts it when `expected` is `None`, else replaces the stored one if
/// its version is `expected`; whether it did.
fn put_schedule(
    tx: &Connection,
    row: &crate::store::ScheduleRow,
    expected: Option<i64>,
) -> Result<bool, StoreError> {
    let written = match expected {
        None => tx
            .prepare_cached(
                "INSERT INTO schedules (id, body, wake, version) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![row.id, row.body, row.wake, row.version])),
        Some(version) => tx
            .prepare_cached(
                "UPDATE schedules SET body = ?2, wake = ?3, version = ?4 \
                 WHERE id = ?1 AND version = ?5",
            )
            .and_then(|mut s| s.execute(params![row.id, row.body, row.wake, row.version, version])),
    }
    .map_err(sql_error)?;
    Ok(written == 1)
}

/// Deletes a schedule; whether there was one.
fn delete_schedule(tx: &Connection, id: &str) -> Result<bool, StoreError> {
    tx.prepare_cached("DELETE FROM schedules WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id]))
        .map(|n| n == 1)
        .map_err(sql_error)
}

/// Keeps (`Some`) or forgets (`None`) what is registered under `name`.
fn register(
    tx: &Connection,
    what: crate::store::Registered,
    name: &str,
    value: Option<&[u8]>,
) -> Result<(), StoreError> {
    let table = what.table();
    match value {
        Some(value) => tx
            .prepare_cached(&format!(
                "INSERT INTO {table} (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            ))
            .and_then(|mut s| s.execute(params![name, value])),
        None => tx
            .prepare_cached(&format!("DELETE FROM {table} WHERE name = ?1"))
            .and_then(|mut s| s.execute(params![name])),
    }
    .map(|_| ())
    .map_err(sql_error)
}

fn insert(tx: &Connection, r: &RowImage, tally: &mut Tally) -> Result<InsertOutcome, StoreError> {
    if let Some(rid) = &r.request_id {
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM operations WHERE request_id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![rid], row_to_record).optional())
            .map_err(sql_error)?;
        if let Some(row) = existing {
            return Ok(InsertOutcome::Existing(Box::new(row)));
        }
    }
    if let Some(key) = &r.unique_key {
        // The same condition as `operations_unique`'s, so that the index serves it.
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM operations WHERE kind = ?1 AND unique_key = ?2 \
                 AND done = 0 AND unique_key IS NOT NULL"
            ))
            .and_then(|mut s| s.query_row(params![r.kind, key], row_to_record).optional())
            .map_err(sql_error)?;
        if let Some(row) = existing {
            return Ok(InsertOutcome::Existing(Box::new(row)));
        }
    }
    tx.prepare_cached(
        "INSERT INTO operations (id, request_id, kind, done, state, error_code, create_time, \
         update_time, end_time, input, body, layout, version, owner, attempt, start_time, \
         next_attempt_time, deadline, cancel_requested, due, priority, unique_key, \
         concurrency_key, schedule, created_max) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
         ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, \
         MAX(?7, IFNULL((SELECT created_max FROM operations ORDER BY seq DESC LIMIT 1), ?7)))",
    )
    .and_then(|mut s| {
        s.execute(params![
            r.id,
            r.request_id,
            r.kind,
            r.done,
            r.state,
            r.error_code,
            r.create_time,
            r.update_time,
            r.end_time,
            r.input,
            r.body,
            LAYOUT_CURRENT,
            r.version,
            r.owner,
            r.attempt,
            r.start_time,
            r.next_attempt_time,
            r.deadline,
            r.cancel_requested,
            r.due,
            r.priority,
            r.unique_key,
            r.concurrency_key,
            r.schedule,
        ])
    })
    .map_err(sql_error)?;
    tally.add(&r.kind, r.state, r.end_time.filter(|_| r.done), 1);
    Ok(InsertOutcome::New(tx.last_insert_rowid()))
}

/// Inserts every row or none: under a savepoint, rolled back when one insert fails.
fn insert_many(
    tx: &Connection,
    rows: &[RowImage],
    tally: &mut Tally,
) -> Result<Vec<InsertOutcome>, StoreError> {
    tx.execute_batch("SAVEPOINT insert_many")
        .map_err(sql_error)?;
    // Counted only if kept.
    let mut these = Tally::default();
    let inserted: Result<Vec<InsertOutcome>, StoreError> =
        rows.iter().map(|r| insert(tx, r, &mut these)).collect();
    if inserted.is_ok() {
        tally.absorb(these);
    }
    let end = if inserted.is_ok() {
        "RELEASE insert_many"
    } else {
        "ROLLBACK TO insert_many; RELEASE insert_many"
    };
    tx.execute_batch(end).map_err(sql_error)?;
    inserted
}

/// A fenced write: `?1` is the id, `?2`…`?13` the columns it sets, `?14` and `?15` the
/// record's version and cancel request, `?16` the version read (NULL under an owner's fence),
/// `?17` and `?18` the owner's node and attempt.
static WRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let fence = FenceSql {
        row: "",
        expected: "?16",
        owner: "?17",
        attempt: "?18",
        version: "?14",
        cancel: "?15",
    };
    format!(
        "UPDATE operations SET done = ?2, state = ?3, error_code = ?4, update_time = ?5, \
         end_time = ?6, body = ?7, layout = {LAYOUT_CURRENT}, owner = ?8, attempt = ?9, \
         start_time = ?10, next_attempt_time = ?11, deadline = ?12, due = ?13, {} \
         WHERE id = ?1 AND {} RETURNING version, cancel_requested",
        fence.written(),
        fence.admits()
    )
});

fn write(
    tx: &Connection,
    r: &RowImage,
    fence: &Fence,
    tally: &mut Tally,
) -> Result<WriteOutcome, StoreError> {
    let columns = params![
        r.id,
        r.done,
        r.state,
        r.error_code,
        r.update_time,
        r.end_time,
        r.body,
        r.owner,
        r.attempt,
        r.start_time,
        r.next_attempt_time,
        r.deadline,
        r.due,
    ];
    // What the row was, for the tallies: an owner's write is to a RUNNING one.
    let (before, expected, owner, attempt) = match fence {
        Fence::Owner { node, attempt } => (Some((RUNNING, None)), None, Some(node), Some(attempt)),
        Fence::Version(v) => {
            let before = tallied(tx, &r.id)?.map(|(_, state, end)| (state, end));
            (
                before,
                Some(i64::try_from(*v).unwrap_or(i64::MAX)),
                None,
                None,
            )
        }
    };
    let mut all: Vec<&dyn rusqlite::ToSql> = columns.to_vec();
    all.extend([
        &r.version as &dyn rusqlite::ToSql,
        &r.cancel_requested,
        &expected,
        &owner,
        &attempt,
    ]);
    let written = tx
        .prepare_cached(&WRITE)
        .and_then(|mut s| {
            s.query_row(all.as_slice(), |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, bool>(1)?))
            })
            .optional()
        })
        .map_err(sql_error)?;
    if let Some((version, cancel_requested)) = written {
        let after = (r.state, r.end_time.filter(|_| r.done));
        if let Some(before) = before.filter(|b| *b != after) {
            tally.add(&r.kind, before.0, before.1, -1);
            tally.add(&r.kind, after.0, after.1, 1);
        }
        return Ok(WriteOutcome::Applied(version, cancel_requested));
    }
    let stored = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![r.id], row_to_record).optional())
        .map_err(sql_error)?;
    Ok(WriteOutcome::Stale(stored.map(Box::new)))
}

/// How the operation `id` is counted in the tallies: its kind, its state and, if it
/// finished, its end (µs).
fn tallied(tx: &Connection, id: &str) -> Result<Option<(String, i32, Option<i64>)>, StoreError> {
    tx.prepare_cached(
        "SELECT kind, state, CASE WHEN done = 1 THEN end_time END FROM operations WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.query_row(params![id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()
    })
    .map_err(sql_error)
}

fn heartbeat(tx: &Connection, node: &str, until: i64) -> Result<(), StoreError> {
    let before = crate::store::forget_before(until);
    tx.prepare_cached(concat!(
        "DELETE FROM nodes WHERE lease_until < ?1 AND id <> ?2 AND NOT EXISTS \
         (SELECT 1 FROM operations o WHERE o.state = ",
        running_sql!(),
        " AND o.owner = nodes.id)"
    ))
    .and_then(|mut s| s.execute(params![before, node]))
    .map_err(sql_error)?;
    tx.prepare_cached(
        "INSERT INTO nodes (id, lease_until) VALUES (?1, ?2) \
         ON CONFLICT(id) DO UPDATE SET lease_until = excluded.lease_until",
    )
    .and_then(|mut s| s.execute(params![node, until]))
    .map_err(sql_error)?;
    Ok(())
}

fn delete_done(
    tx: &Connection,
    id: &OperationId,
    tally: &mut Tally,
) -> Result<Option<bool>, StoreError> {
    match tallied(tx, id.as_str())? {
        None => Ok(None),
        Some((kind, state, end)) if State::from_i32(state).is_some_and(State::is_done) => {
            tx.execute("DELETE FROM operations WHERE id = ?1", params![id.as_str()])
                .map_err(sql_error)?;
            tally.add(&kind, state, end, -1);
            Ok(Some(true))
        }
        Some(_) => Ok(Some(false)),
    }
}

/// Deletes the finished rows `sql` (with `param`) selects, counting them out of `tally`:
/// how many.
fn delete_counted(
    tx: &Connection,
    sql: &str,
    param: i64,
    tally: &mut Tally,
) -> Result<usize, StoreError> {
    let mut delete = tx.prepare_cached(sql).map_err(sql_error)?;
    let mut rows = delete.query(params![param]).map_err(sql_error)?;
    let mut deleted = 0;
    while let Some(row) = rows.next().map_err(sql_error)? {
        let kind: String = row.get(0).map_err(sql_error)?;
        let state: i32 = row.get(1).map_err(sql_error)?;
        let end: Option<i64> = row.get(2).map_err(sql_error)?;
        tally.add(&kind, state, end, -1);
        deleted += 1;
    }
    Ok(deleted)
}

fn sweep(
    tx: &Connection,
    finished_before: SystemTime,
    keep_at_most: Option<usize>,
    tally: &mut Tally,
) -> Result<Swept, StoreError> {
    const RETURNING: &str = "RETURNING kind, state, end_time";
    let mut deleted = delete_counted(
        tx,
        &format!("DELETE FROM operations WHERE done = 1 AND end_time < ?1 {RETURNING}"),
        micros(finished_before),
        tally,
    )?;
    let mut finished = None;
    if let Some(keep) = keep_at_most {
        // The tallies (with what this batch moved so far, not yet written), not a count of
        // the finished rows (a million at the cap).
        let stored: i64 = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(succeeded + failed + cancelled), 0) FROM tally_counts",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_error)?;
        let mut kept = usize::try_from(stored.saturating_add(tally.finished())).unwrap_or(0);
        if kept > keep {
            let n = delete_counted(
                tx,
                &format!(
                    "DELETE FROM operations WHERE seq IN (SELECT seq FROM operations \
                     WHERE done = 1 ORDER BY end_time, seq LIMIT ?1) {RETURNING}"
                ),
                sql_limit(kept - keep),
                tally,
            )?;
            deleted += n;
            kept -= n;
        }
        finished = Some(kept);
    }
    // The ends' tallies keep what a summary reads (a day) and a day more.
    tx.prepare_cached("DELETE FROM tally_ends WHERE at < ?1")
        .and_then(|mut s| s.execute(params![tally::ends_forgotten_before()]))
        .map_err(sql_error)?;
    let oldest: Option<i64> = tx
        .query_row(
            "SELECT MIN(end_time) FROM operations WHERE done = 1",
            [],
            |r| r.get(0),
        )
        .map_err(sql_error)?;
    Ok(Swept {
        deleted,
        finished,
        oldest_finished: oldest.map(from_micros),
    })
}

#[cfg(test)]
mod tests {
    use super::super::claims::KindSql;
    use super::*;
    use crate::model::OperationRecord;
    use rusqlite::StatementStatus;

    /// Claims whose room changes from one to the next (as a node's free slots do), over two
    /// kinds in turn, reuse their prepared statements: none is prepared again (with the kind
    /// bound as a parameter and the room as `LIMIT ?`, every claim was, which cost the writer
    /// more than the claim itself). A kind with a quote in its name is claimed as well.
    #[test]
    fn claims_reuse_their_prepared_statements() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::prepare(&mut conn, 0).unwrap();
        let kinds = ["sleep", "it's"];
        {
            let tx = conn.transaction().unwrap();
            for i in 0..8 {
                let r = OperationRecord::new_queued(kinds[i % 2].into(), Default::default(), None);
                insert(&tx, &RowImage::of(&r, true), &mut Tally::default()).unwrap();
            }
            tx.commit().unwrap();
        }
        for round in 0..6 {
            let tx = conn.transaction().unwrap();
            let room = round % 3 + 1;
            let (started, _, _) = claim(
                &tx,
                &Claim {
                    node: "n".into(),
                    kinds: vec![(kinds[round % 2].into(), room)],
                    total: 8,
                    now: SystemTime::now(),
                    limits: crate::store::RunningLimits::none(),
                    key_limits: Vec::new(),
                    rates: Vec::new(),
                },
                &mut Tally::default(),
            )
            .unwrap();
            assert_eq!(started.len(), room);
            let started: Vec<OperationRecord> =
                started.into_iter().map(|r| r.decode().unwrap()).collect();
            assert!(started.iter().all(|r| r.kind == kinds[round % 2]));
            // Queued again: the next round finds the same queue.
            tx.execute_batch("UPDATE operations SET state = 1, owner = NULL, due = 0")
                .unwrap();
            tx.commit().unwrap();
        }
        let statements = kinds
            .iter()
            .map(|k| KindSql::new(k))
            .flat_map(|sql| [sql.due, sql.next_due]);
        for sql in statements {
            let stmt = conn.prepare_cached(&sql).unwrap();
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "prepared again: {sql}"
            );
            assert!(stmt.get_status(StatementStatus::Run) >= 3, "{sql}");
        }
    }
}
