//! The statements the store runs (one literal each, built at compile time) and the reads
//! they share: by id, request id or unique key, claims, lists and their pages, the feed.

use super::*;

/// The columns a read selects, in [`raw`]'s order.
pub(super) const COLUMNS: &str = columns!();

/// The key of the advisory lock claims take turns on.
pub(super) const CLAIM_LOCK: i64 = 0x6f70_7275_6e5f_636c; // "oprun_cl"

/// The key of the advisory lock a retention sweep holds, so that one node sweeps at a time.
pub(super) const SWEEP_LOCK: i64 = 0x6f70_7275_6e5f_7377; // "oprun_sw"

/// How many columns [`COLUMNS`] names.
pub(super) const COLUMN_COUNT: usize = 15;

/// A `usize` count as a SQL `bigint`.
pub(super) fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An attempt number as a SQL `int`.
pub(super) fn attempt_sql(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

/// Reads a row selected with [`COLUMNS`] into a record.
pub(super) fn raw(row: &Row) -> Result<OperationRecord, StoreError> {
    let get = |e: tokio_postgres::Error| StoreError::Corrupt(format!("a stored row: {e}"));
    let version: i64 = row.try_get(6).map_err(get)?;
    let attempt: i32 = row.try_get(8).map_err(get)?;
    let input: &[u8] = row.try_get(3).map_err(get)?;
    let body: &[u8] = row.try_get(4).map_err(get)?;
    decode_record(
        row.try_get(0).map_err(get)?,
        row.try_get(1).map_err(get)?,
        row.try_get(2).map_err(get)?,
        input,
        body,
        &Columns {
            current: true,
            state: row.try_get(5).map_err(get)?,
            version: u64::try_from(version).unwrap_or(0),
            owner: row.try_get(7).map_err(get)?,
            attempt: u32::try_from(attempt).unwrap_or(0),
            start_time: row.try_get(9).map_err(get)?,
            update_time: row.try_get(10).map_err(get)?,
            end_time: row.try_get(11).map_err(get)?,
            next_attempt_time: row.try_get(12).map_err(get)?,
            deadline: row.try_get(13).map_err(get)?,
            requested_cancellation: row.try_get(14).map_err(get)?,
        },
    )
}

pub(super) fn records(rows: &[Row]) -> Result<Vec<OperationRecord>, StoreError> {
    rows.iter().map(raw).collect()
}

/// Runs [`CLAIM`] for `room` (per kind; `total` in all) on `client` (a connection, or the
/// transaction holding the claim lock), pipelined with the read of when the next queued
/// operation of `claim`'s kinds is due: one round trip. `also` (started by the caller, each
/// with its place in the claim's order) is merged in.
pub(super) async fn claim_on(
    client: &impl GenericClient,
    claim: &Claim,
    room: &[(&str, usize)],
    total: usize,
    also: Vec<(Rank, OperationRecord)>,
) -> Result<Claimed, StoreError> {
    let (kinds, rooms): (Vec<&str>, Vec<i64>) = room
        .iter()
        .filter(|(_, room)| *room > 0)
        .map(|(kind, room)| (*kind, count(*room)))
        .unzip();
    let all_kinds: Vec<&str> = claim.kinds.iter().map(|(k, _)| k.as_str()).collect();
    let now = micros(claim.now);
    let limit = count(total);
    let (start, next) = tokio::try_join!(
        client.prepare_cached(CLAIM),
        client.prepare_cached(NEXT_DUE)
    )
    .map_err(pg_error)?;
    let started = async {
        if kinds.is_empty() || total == 0 {
            return Ok(Vec::new());
        }
        client
            .query(&start, &[&kinds, &rooms, &now, &limit, &claim.node])
            .await
    };
    let next_params: [&(dyn ToSql + Sync); 2] = [&all_kinds, &now];
    let next_due = client.query_one(&next, &next_params);
    let (started, next) = tokio::try_join!(started, next_due).map_err(pg_error)?;
    // Highest priority first, then oldest due (the claim cleared `due` in the row; the
    // statement returns it).
    let mut operations = also;
    for row in &started {
        let due: i64 = row.try_get(COLUMN_COUNT).map_err(pg_error)?;
        let priority: i32 = row.try_get(COLUMN_COUNT + 1).map_err(pg_error)?;
        let r = raw(row)?;
        operations.push((Rank::new(priority, due, r.seq), r));
    }
    operations.sort_unstable_by_key(|(rank, _)| *rank);
    let operations = operations.into_iter().map(|(_, r)| r).collect();
    let next_due: Option<i64> = next.try_get(0).map_err(pg_error)?;
    Ok(Claimed {
        operations,
        next_due: next_due.map(from_micros),
        held: Vec::new(),
    })
}

pub(super) const BY_ID: &str = concat!("SELECT ", columns!(), " FROM operations WHERE id = $1");

pub(super) const BY_REQUEST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE request_id = $1"
);

/// The unfinished operation of a kind (`$1`) holding a unique key (`$2`).
pub(super) const BY_UNIQUE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE kind = $1 AND unique_key = $2 AND done = 0"
);

/// How many times an insert refused for a taken request id or unique key looks for the
/// operation that took it, and tries again when it finds none (a unique key's holder ended
/// meanwhile).
pub(super) const INSERT_TRIES: usize = 5;

/// The answer when an insert was refused again and again and nothing holds what it took.
pub(super) fn unstored() -> StoreError {
    StoreError::unavailable(
        "an insert was refused for a taken request id or unique key that no operation holds \
         now; retry",
    )
}

/// The operation that holds `row`'s request id, or its kind and unique key, if one does.
pub(super) async fn taken(
    client: &impl GenericClient,
    row: &RowImage,
) -> Result<Option<OperationRecord>, StoreError> {
    if let Some(rid) = &row.request_id {
        let statement = client.prepare_cached(BY_REQUEST).await.map_err(pg_error)?;
        if let Some(found) = client
            .query_opt(&statement, &[rid])
            .await
            .map_err(pg_error)?
        {
            return raw(&found).map(Some);
        }
    }
    let Some(key) = &row.unique_key else {
        return Ok(None);
    };
    let statement = client.prepare_cached(BY_UNIQUE).await.map_err(pg_error)?;
    client
        .query_opt(&statement, &[&row.kind, key])
        .await
        .map_err(pg_error)?
        .as_ref()
        .map(raw)
        .transpose()
}

/// Each kind's due work, highest priority first then oldest due (`operations_ready`),
/// skipping rows another node is claiming; then the first of those over all kinds in the same
/// order, up to the node's room; made RUNNING. Rows locked but left
/// out are free again at commit.
pub(super) const CLAIM: &str = concat!(
    "WITH wanted AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS w(kind, room)), \
     picked AS (SELECT c.seq AS claimed, c.due AS due_at, c.priority AS rank FROM wanted CROSS JOIN LATERAL ( \
         SELECT o.seq, o.due, o.priority FROM operations o \
         WHERE o.state = ", queued_sql!(), " AND o.kind = wanted.kind AND o.due <= $3 \
         ORDER BY o.priority DESC, o.due, o.seq LIMIT wanted.room FOR UPDATE SKIP LOCKED) c \
       ORDER BY c.priority DESC, c.due, c.seq LIMIT $4) \
     UPDATE operations SET ", start_sql!("$5", "$3"), ", changed_by = ",
    this_transaction!(),
    " FROM picked WHERE seq = picked.claimed RETURNING ",
    columns!(),
    ", picked.due_at, picked.rank"
);

/// When the next queued operation of the kinds (`$1`) is due, after now (`$2`).
pub(super) const NEXT_DUE: &str = concat!(
    "SELECT min(due) FROM operations \
     WHERE state = ",
    queued_sql!(),
    " AND kind = ANY($1::text[]) AND due > $2"
);

pub(super) const UNFINISHED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE done = 0 ORDER BY seq"
);

/// RUNNING work of other nodes whose lease ended (`$1` this node, `$2` now), oldest first.
/// Read every second by every node: through `operations_owner` (the RUNNING rows alone), as
/// `seq + 0` makes the planner do; ordered by `seq`, it walked the whole table in `seq` order
/// looking for them (325 ms at 300,000 operations).
pub(super) const ORPHANS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations o WHERE o.state = ",
    running_sql!(),
    " AND o.owner IS DISTINCT FROM $1 AND NOT EXISTS \
     (SELECT 1 FROM nodes n WHERE n.id = o.owner AND n.lease_until >= $2) \
     ORDER BY o.seq + 0 LIMIT $3"
);

pub(super) const DEADLINES_PASSED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE state = ",
    queued_sql!(),
    " AND deadline IS NOT NULL AND deadline <= $1 \
     ORDER BY deadline, seq LIMIT $2"
);

/// The feed's head: the position before the oldest running transaction.
pub(super) const HEAD: &str = concat!("SELECT ", settled!(), " - 1");

/// A page of the feed: changes of settled transactions after the position.
pub(super) const CHANGES: &str = concat!(
    "SELECT ",
    columns!(),
    ", changed_by FROM operations WHERE changed_by > $1 AND changed_by < ",
    settled!(),
    " ORDER BY changed_by, seq LIMIT $2"
);

/// The rest of one transaction's changes, after a page that ended inside them.
pub(super) const CHANGES_REST: &str = concat!(
    "SELECT ",
    columns!(),
    ", changed_by FROM operations WHERE changed_by = $1 AND seq > $2 ORDER BY seq"
);

impl PostgresStore {
    /// A page of [`Store::list`] or [`Store::list_newest`], from `from`.
    pub(super) async fn walk(
        &self,
        from: Listing,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let (created_after, created_before) = created_bounds(filter);
        let filter = filter.to_postgres(&FILTER_COLUMNS, 4);
        let client = self.client().await?;
        // Bounds on `create_time`: the walk goes where the matches can be.
        let Some(window) = created_window(&client, created_after, created_before).await? else {
            return Ok(Vec::new());
        };
        let walk = Walk::within(from, window);
        let limit = count(limit);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(filter.params.len() + 3);
        params.extend([&walk.above as &(dyn ToSql + Sync), &limit, &walk.below]);
        params.extend(filter.params.iter().map(|p| p as &(dyn ToSql + Sync)));
        // Not prepared and cached: clients' filters have endless shapes, and each prepared
        // statement stays on its connection (and the server) for good.
        let rows = client
            .query(&page_sql(&walk, &filter.clause), &params)
            .await
            .map_err(pg_error)?;
        records(&rows)
    }
}

/// The statement of `walk` with a filter's SQL `clause` (from `$4`). Parameters: the walk's
/// lower `seq` (`$1`), the limit (`$2`), its upper `seq` (`$3`), then the filter's.
pub(super) fn page_sql(walk: &Walk, clause: &str) -> String {
    walk.sql(COLUMNS, clause, ["$1", "$3", "$2"])
}

/// Takes the advisory lock `key` until the end of `tx`, if no other session holds it:
/// whether it did.
pub(super) async fn try_xact_lock(
    tx: &deadpool_postgres::Transaction<'_>,
    key: i64,
) -> Result<bool, StoreError> {
    tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(pg_error)
}

/// Where the matches of a filter that bounds `create_time` (at or after `after`, before
/// `before`) can be: `(floor, ceiling)`, none at or below `floor` nor at or above `ceiling`;
/// `None` when none can be. Seeks of `operations_created_max` (see the schema's version 9):
/// the first row whose `created_max` reaches `after`, and the first that reaches `before`
/// plus the largest lag of any operation (the `created_lag` counter: how far `created_max`
/// may be past an operation's own `create_time`); rows a node of an older build inserted
/// without `created_max` widen the window to hold them.
pub(super) async fn created_window(
    client: &Object,
    after: Option<i64>,
    before: Option<i64>,
) -> Result<Option<(i64, i64)>, StoreError> {
    let floor = match after {
        None => 0,
        Some(after) => {
            let first = client
                .prepare_cached(
                    "SELECT least((SELECT seq FROM operations WHERE created_max >= $1 \
                     ORDER BY created_max, seq LIMIT 1), \
                     (SELECT min(seq) FROM operations WHERE created_max IS NULL))",
                )
                .await
                .map_err(pg_error)?;
            let first: Option<i64> = client
                .query_one(&first, &[&after])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(pg_error)?;
            match first {
                Some(seq) => seq - 1,
                None => return Ok(None),
            }
        }
    };
    let ceiling = match before {
        None => i64::MAX,
        Some(before) => {
            let last = client
                .prepare_cached(
                    "SELECT (SELECT seq FROM operations WHERE created_max >= $1 + \
                     (SELECT value FROM oprun_counters WHERE name = 'created_lag') \
                     ORDER BY created_max, seq LIMIT 1), \
                     (SELECT max(seq) FROM operations WHERE created_max IS NULL)",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_one(&last, &[&before])
                .await
                .map_err(pg_error)?;
            let reached: Option<i64> = row.try_get(0).map_err(pg_error)?;
            let unknown: Option<i64> = row.try_get(1).map_err(pg_error)?;
            match (reached, unknown) {
                (None, _) => i64::MAX,
                (Some(seq), None) => seq,
                (Some(seq), Some(last)) => seq.max(last.saturating_add(1)),
            }
        }
    };
    Ok((floor < ceiling).then_some((floor, ceiling)))
}

/// A schedule's row, from `id, body, wake, version`.
pub(super) fn schedule_row(
    row: &tokio_postgres::Row,
) -> Result<crate::store::ScheduleRow, StoreError> {
    Ok(crate::store::ScheduleRow {
        id: row.try_get(0).map_err(pg_error)?,
        body: row.try_get(1).map_err(pg_error)?,
        wake: row.try_get(2).map_err(pg_error)?,
        version: row.try_get(3).map_err(pg_error)?,
    })
}
