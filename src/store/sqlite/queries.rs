//! The statements the store's reads share: lists and their pages, `create_time` windows,
//! orphans, schedules.

use super::*;
use crate::store::row::RUNNING;

/// [`COLUMNS`] of the table named `alias` in a join.
pub(super) fn qualified(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The query of `orphans`: RUNNING work of other nodes (`?1` this node) whose lease ended
/// (`?2` now), oldest first, at most `?3`. Run every second: it reads `operations_owner` (the
/// RUNNING rows alone); left to choose, SQLite walked the whole table in `seq` order to save
/// sorting the few it finds (267 ms at a million operations).
pub(super) fn orphans_sql() -> String {
    format!(
        "SELECT {} FROM operations o INDEXED BY operations_owner \
         LEFT JOIN nodes n ON n.id = o.owner \
         WHERE o.state = {RUNNING} AND (o.owner IS NULL OR o.owner != ?1) \
         AND (n.lease_until IS NULL OR n.lease_until < ?2) ORDER BY o.seq LIMIT ?3",
        qualified("o")
    )
}

pub(super) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The columns of a schedule's row, as [`schedule_row`] reads them.
pub(super) const SCHEDULE_COLUMNS: &str = "id, body, wake, version";

/// A schedule's row, from [`SCHEDULE_COLUMNS`].
pub(super) fn schedule_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<crate::store::ScheduleRow> {
    Ok(crate::store::ScheduleRow {
        id: row.get(0)?,
        body: row.get(1)?,
        wake: row.get(2)?,
        version: row.get(3)?,
    })
}

impl SqliteStore {
    /// A page of [`Store::list`] or [`Store::list_newest`], from `from`.
    pub(super) async fn walk(
        &self,
        from: Listing,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let (created_after, created_before) = created_bounds(filter);
        let filter = filter.to_sqlite(&FILTER_COLUMNS);
        self.read(move |conn| {
            // Bounds on `create_time`: the walk goes where the matches can be.
            let Some(window) = created_window(conn, created_after, created_before)? else {
                return Ok(Vec::new());
            };
            let walk = Walk::within(from, window);
            let mut stmt = conn
                .prepare_cached(&page_sql(&walk, &filter.clause))
                .map_err(sql_error)?;
            let params = [SqlValue::Integer(walk.above), SqlValue::Integer(walk.below)]
                .into_iter()
                .chain(filter.params)
                .chain(std::iter::once(SqlValue::Integer(sql_limit(limit))));
            let rows: Vec<RawRow> = stmt
                .query_map(params_from_iter(params), row_to_record)
                .and_then(Iterator::collect)
                .map_err(sql_error)?;
            rows.into_iter().map(RawRow::decode).collect()
        })
        .await
    }
}

/// The statement of `walk` with the filter's SQL `clause`. Placeholders: the walk's two
/// `seq`s, the filter's, the limit.
pub(super) fn page_sql(walk: &Walk, clause: &str) -> String {
    walk.sql(COLUMNS, clause, ["?", "?", "?"])
}

/// Where the matches of a filter that bounds `create_time` (at or after `after`, before
/// `before`) can be: `(floor, ceiling)`, none at or below `floor` nor at or above `ceiling`;
/// `None` when none can be. One or two seeks of `operations_created_max` (see the schema's
/// version 6) and, for an upper bound, one of `operations_created_lag`: an operation created
/// before `before` has a `created_max` below `before` plus the largest lag of any (how far
/// `created_max` is past an operation's own `create_time`).
pub(super) fn created_window(
    conn: &Connection,
    after: Option<i64>,
    before: Option<i64>,
) -> Result<Option<(i64, i64)>, StoreError> {
    let first_reaching = |at: i64| {
        conn.prepare_cached(
            "SELECT seq FROM operations INDEXED BY operations_created_max \
             WHERE created_max >= ? ORDER BY created_max, seq LIMIT 1",
        )
        .and_then(|mut s| s.query_row([at], |r| r.get::<_, i64>(0)).optional())
        .map_err(sql_error)
    };
    let floor = match after {
        None => 0,
        Some(after) => match first_reaching(after)? {
            Some(seq) => seq - 1,
            None => return Ok(None),
        },
    };
    let ceiling = match before {
        None => i64::MAX,
        Some(before) => {
            let lag: i64 = conn
                .prepare_cached(
                    "SELECT created_max - create_time FROM operations \
                     INDEXED BY operations_created_lag WHERE created_max > create_time \
                     ORDER BY created_max - create_time DESC LIMIT 1",
                )
                .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                .map_err(sql_error)?
                .unwrap_or(0);
            first_reaching(before.saturating_add(lag))?.unwrap_or(i64::MAX)
        }
    };
    Ok((floor < ceiling).then_some((floor, ceiling)))
}

/// What the writer's answer to the insert of `record` means.
pub(super) fn inserted(
    mut record: OperationRecord,
    outcome: InsertOutcome,
) -> Result<Inserted, StoreError> {
    match outcome {
        InsertOutcome::New(seq) => {
            record.seq = seq;
            Ok(Inserted::New(record))
        }
        InsertOutcome::Existing(row) => Ok(Inserted::Existing(row.decode()?)),
    }
}
