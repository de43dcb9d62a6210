//! Group commit for inserts. Every insert takes the `seq` counter row's lock until it commits
//! (that is what keeps paging in commit order), so inserts made one by one commit one at a
//! time: one WAL flush each. Instead, one task inserts everything waiting in one statement
//! (`unnest` over arrays of the columns, one counter update for the batch): see
//! [`super::batch`].

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::ToSql;

use super::batch::Batcher;
use super::{attempt_sql, pg_error, pool_error};
use crate::store::row::RowImage;
use crate::store::StoreError;

/// The most inserts in one statement.
const MAX_BATCH: usize = 512;

/// What an insert comes to: its `seq`, or `None` when its request id was already taken.
pub(super) type Inserter = Batcher<RowImage, Option<i64>>;

/// Starts the inserting task over `pool`; it ends when the `Inserter` is dropped.
pub(super) fn start(pool: Pool, stats: crate::metrics::CommitStats) -> Inserter {
    Batcher::start(MAX_BATCH, Some(stats), move |rows: Vec<RowImage>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await.map_err(pool_error)?;
            let seqs = insert_rows(&client, &rows).await?;
            Ok(rows.iter().map(|r| seqs.get(&r.id).copied()).collect())
        }
    })
}

/// The statement: the batch's columns as arrays, numbered in order, given `seq`s after the
/// counter's value (which the batch moves on by its size), and as `created_max` the latest
/// `create_time` of any batch so far, this one's included; `created_lag` becomes at least how
/// far that is past the batch's earliest `create_time`. Each counter's update reads the one
/// before it (`next`, then `latest`), so every insert locks the rows in the same order, the
/// `seq` row first (which serialises inserts): no two wait on each other. A request id
/// already taken, or a unique key an unfinished operation of the kind holds (or either taken
/// twice in the batch), inserts nothing for that row.
const INSERT_BATCH: &str = concat!(
    "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], \
     $3::text[], $4::smallint[], $5::int[], $6::int[], $7::bigint[], $8::bigint[], \
     $9::bigint[], $10::bytea[], $11::bytea[], $12::bigint[], $13::text[], $14::int[], \
     $15::bigint[], $16::bigint[], $17::bigint[], $18::bool[], $19::bigint[], $21::int[], \
     $22::text[], $23::text[], $24::text[]) WITH ORDINALITY \
     AS i(id, request_id, kind, done, state, error_code, create_time, update_time, end_time, \
     input, body, version, owner, attempt, start_time, next_attempt_time, deadline, \
     cancel_requested, due, priority, unique_key, concurrency_key, schedule, ord)), \
     next AS (UPDATE oprun_counters SET value = value + $20 WHERE name = 'seq' RETURNING value), \
     latest AS (UPDATE oprun_counters SET value = greatest(value, \
     (SELECT max(create_time) FROM input)) \
     WHERE name = 'created_max' AND EXISTS (SELECT 1 FROM next) RETURNING value), \
     lag AS (UPDATE oprun_counters SET value = greatest(value, \
     (SELECT value FROM latest) - (SELECT min(create_time) FROM input)) \
     WHERE name = 'created_lag') \
     INSERT INTO operations (seq, id, request_id, kind, done, state, error_code, create_time, \
     update_time, end_time, input, body, version, owner, attempt, start_time, \
     next_attempt_time, deadline, cancel_requested, due, priority, unique_key, \
     concurrency_key, schedule, created_max, changed_by) \
     SELECT next.value - $20 + input.ord, input.id, input.request_id, input.kind, input.done, \
     input.state, input.error_code, input.create_time, input.update_time, input.end_time, \
     input.input, input.body, input.version, input.owner, input.attempt, input.start_time, \
     input.next_attempt_time, input.deadline, input.cancel_requested, input.due, \
     input.priority, input.unique_key, input.concurrency_key, input.schedule, latest.value, ",
    this_transaction!(),
    " FROM input, next, latest ORDER BY input.ord ON CONFLICT DO NOTHING RETURNING id, seq"
);

/// Inserts `rows` in one statement on `client` (a connection, or a transaction); answers the
/// `seq` of each row inserted, by id.
pub(super) async fn insert_rows(
    client: &impl GenericClient,
    rows: &[RowImage],
) -> Result<HashMap<String, i64>, StoreError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let request_ids: Vec<Option<&str>> = rows.iter().map(|r| r.request_id.as_deref()).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let done: Vec<i16> = rows.iter().map(|r| i16::from(r.done)).collect();
    let states: Vec<i32> = rows.iter().map(|r| r.state).collect();
    let codes: Vec<Option<i32>> = rows.iter().map(|r| r.error_code).collect();
    let created: Vec<i64> = rows.iter().map(|r| r.create_time).collect();
    let updated: Vec<i64> = rows.iter().map(|r| r.update_time).collect();
    let ended: Vec<Option<i64>> = rows.iter().map(|r| r.end_time).collect();
    let inputs: Vec<&[u8]> = rows.iter().map(|r| r.input.as_slice()).collect();
    let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
    let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let owners: Vec<Option<&str>> = rows.iter().map(|r| r.owner.as_deref()).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| attempt_sql(r.attempt)).collect();
    let started: Vec<Option<i64>> = rows.iter().map(|r| r.start_time).collect();
    let next_attempts: Vec<Option<i64>> = rows.iter().map(|r| r.next_attempt_time).collect();
    let deadlines: Vec<Option<i64>> = rows.iter().map(|r| r.deadline).collect();
    let cancels: Vec<bool> = rows.iter().map(|r| r.cancel_requested).collect();
    let dues: Vec<Option<i64>> = rows.iter().map(|r| r.due).collect();
    let priorities: Vec<i32> = rows.iter().map(|r| r.priority).collect();
    let unique_keys: Vec<Option<&str>> = rows.iter().map(|r| r.unique_key.as_deref()).collect();
    let concurrency_keys: Vec<Option<&str>> =
        rows.iter().map(|r| r.concurrency_key.as_deref()).collect();
    let schedules: Vec<Option<&str>> = rows.iter().map(|r| r.schedule.as_deref()).collect();
    let size = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 24] = [
        &ids,
        &request_ids,
        &kinds,
        &done,
        &states,
        &codes,
        &created,
        &updated,
        &ended,
        &inputs,
        &bodies,
        &versions,
        &owners,
        &attempts,
        &started,
        &next_attempts,
        &deadlines,
        &cancels,
        &dues,
        &size,
        &priorities,
        &unique_keys,
        &concurrency_keys,
        &schedules,
    ];
    let statement = client
        .prepare_cached(INSERT_BATCH)
        .await
        .map_err(pg_error)?;
    let inserted = client.query(&statement, &params).await.map_err(pg_error)?;
    inserted
        .iter()
        .map(|row| {
            Ok((
                row.try_get(0).map_err(pg_error)?,
                row.try_get(1).map_err(pg_error)?,
            ))
        })
        .collect()
}
