//! Group commit for fenced writes (a worker's progress and end, a cancel, a rescue): every
//! write waiting goes in one `UPDATE … FROM unnest(…)` statement, each row under its own fence
//! (see [`super::batch`]). Two writes of the same operation never share a statement (an
//! `UPDATE` joins each row once); the second goes in the next round of the same group.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::batch::Batcher;
use super::{attempt_sql, pg_error, pool_error, records};
use crate::model::Fence;
use crate::store::fence::FenceSql;
use crate::store::row::RowImage;
use crate::store::{StoreError, Written};

/// The most writes in one statement.
const MAX_BATCH: usize = 512;

/// How often a statement that lost a deadlock (two groups locking the same rows in another
/// order, which PostgreSQL breaks by failing one) is tried.
const DEADLOCK_TRIES: usize = 3;

/// One write: the columns to store and the fence they are stored under.
pub(super) struct Write {
    pub row: RowImage,
    pub fence: Fence,
}

/// The writing task's mailbox. Each write has its own answer: a group's rounds commit one by
/// one, so a round that fails fails only its own writes and those after it, never one that
/// an earlier round committed.
pub(super) type Writer = Batcher<Write, Result<Written, StoreError>>;

/// Starts the writing task over `pool`; it ends when the `Writer` is dropped.
pub(super) fn start(pool: Pool, stats: crate::metrics::CommitStats) -> Writer {
    Batcher::start(MAX_BATCH, Some(stats), move |writes: Vec<Write>| {
        let pool = pool.clone();
        async move { write_group(&pool, &writes).await }
    })
}

/// Each write with its fence: a version fence stores the given version and cancel flag; an
/// owner fence (the node running attempt `fence_attempt`) moves the version on by one and
/// keeps a cancel request written meanwhile.
static WRITE_BATCH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let fence = FenceSql {
        row: "o.",
        expected: "w.expected",
        owner: "w.fence_owner",
        attempt: "w.fence_attempt",
        version: "w.version",
        cancel: "w.cancel",
    };
    format!(
        "WITH w AS (SELECT * FROM unnest($1::text[], $2::smallint[], $3::int[], $4::int[], \
         $5::bigint[], $6::bigint[], $7::bytea[], $8::text[], $9::int[], $10::bigint[], \
         $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bool[], \
         $16::bigint[], $17::text[], $18::int[]) AS w(id, done, state, error_code, \
         update_time, end_time, body, owner, attempt, start_time, next_attempt_time, deadline, \
         due, version, cancel, expected, fence_owner, fence_attempt)) \
         UPDATE operations o SET done = w.done, state = w.state, error_code = w.error_code, \
         update_time = w.update_time, end_time = w.end_time, body = w.body, owner = w.owner, \
         attempt = w.attempt, start_time = w.start_time, \
         next_attempt_time = w.next_attempt_time, deadline = w.deadline, due = w.due, {}, \
         changed_by = {} FROM w WHERE o.id = w.id AND {} \
         RETURNING o.id, o.version, o.cancel_requested",
        fence.written(),
        this_transaction!(),
        fence.admits()
    )
});

const STORED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE id = ANY($1::text[])"
);

async fn write_group(
    pool: &Pool,
    writes: &[Write],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let mut answers: Vec<Option<Result<Written, StoreError>>> = vec![None; writes.len()];
    if let Err(e) = write_rounds(pool, writes, &mut answers).await {
        for answer in answers.iter_mut().filter(|a| a.is_none()) {
            *answer = Some(Err(e.clone()));
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

/// Writes `writes` in rounds (no operation twice in one), answering each write as its round
/// commits; stops at the first round that fails, leaving the rest unanswered.
async fn write_rounds(
    pool: &Pool,
    writes: &[Write],
    answers: &mut [Option<Result<Written, StoreError>>],
) -> Result<(), StoreError> {
    let mut left: Vec<usize> = (0..writes.len()).collect();
    while !left.is_empty() {
        // This round: the first write of each operation left; the others wait for the next.
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = left
            .iter()
            .partition(|&&i| seen.insert(writes[i].row.id.as_str()));
        let batch: Vec<&Write> = round.iter().map(|&i| &writes[i]).collect();
        let mut tries = 0;
        let applied = loop {
            tries += 1;
            match write_round(pool, &batch).await {
                Err(Failed::Deadlock(_)) if tries < DEADLOCK_TRIES => continue,
                Err(Failed::Deadlock(e)) => return Err(pg_error(e)),
                Err(Failed::Store(e)) => return Err(e),
                Ok(applied) => break applied,
            }
        };
        let stale: Vec<&str> = batch
            .iter()
            .map(|w| w.row.id.as_str())
            .filter(|id| !applied.contains_key(*id))
            .collect();
        // The round committed: its applied writes are answered whatever comes next.
        let stored = if stale.is_empty() {
            Ok(HashMap::new())
        } else {
            read_stored(pool, &stale).await
        };
        for i in round {
            let id = writes[i].row.id.as_str();
            answers[i] = Some(match (applied.get(id), &stored) {
                (Some(&(version, requested_cancellation)), _) => Ok(Written::Applied {
                    version,
                    requested_cancellation,
                }),
                (None, Ok(stored)) => Ok(Written::Stale(stored.get(id).cloned().map(Box::new))),
                (None, Err(e)) => Err(e.clone()),
            });
        }
        left = later;
    }
    Ok(())
}

/// What is stored now for the operations whose fence did not hold, by id.
async fn read_stored(
    pool: &Pool,
    ids: &[&str],
) -> Result<HashMap<String, crate::model::OperationRecord>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let statement = client.prepare_cached(STORED).await.map_err(pg_error)?;
    let rows = client.query(&statement, &[&ids]).await.map_err(pg_error)?;
    Ok(records(&rows)?
        .into_iter()
        .map(|r| (r.id.as_str().to_owned(), r))
        .collect())
}

enum Failed {
    Deadlock(tokio_postgres::Error),
    Store(StoreError),
}

/// Writes a round (no operation twice); what each applied write left (version, cancel
/// requested), by id.
async fn write_round(
    pool: &Pool,
    batch: &[&Write],
) -> Result<HashMap<String, (u64, bool)>, Failed> {
    let rows: Vec<&RowImage> = batch.iter().map(|w| &w.row).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let done: Vec<i16> = rows.iter().map(|r| i16::from(r.done)).collect();
    let states: Vec<i32> = rows.iter().map(|r| r.state).collect();
    let codes: Vec<Option<i32>> = rows.iter().map(|r| r.error_code).collect();
    let updated: Vec<i64> = rows.iter().map(|r| r.update_time).collect();
    let ended: Vec<Option<i64>> = rows.iter().map(|r| r.end_time).collect();
    let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
    let owners: Vec<Option<&str>> = rows.iter().map(|r| r.owner.as_deref()).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| attempt_sql(r.attempt)).collect();
    let started: Vec<Option<i64>> = rows.iter().map(|r| r.start_time).collect();
    let next_attempts: Vec<Option<i64>> = rows.iter().map(|r| r.next_attempt_time).collect();
    let deadlines: Vec<Option<i64>> = rows.iter().map(|r| r.deadline).collect();
    let dues: Vec<Option<i64>> = rows.iter().map(|r| r.due).collect();
    let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let cancels: Vec<bool> = rows.iter().map(|r| r.cancel_requested).collect();
    let mut expected: Vec<Option<i64>> = Vec::with_capacity(batch.len());
    let mut fence_owners: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut fence_attempts: Vec<Option<i32>> = Vec::with_capacity(batch.len());
    for w in batch {
        match &w.fence {
            Fence::Version(v) => {
                expected.push(Some(i64::try_from(*v).unwrap_or(i64::MAX)));
                fence_owners.push(None);
                fence_attempts.push(None);
            }
            Fence::Owner { node, attempt } => {
                expected.push(None);
                fence_owners.push(Some(node.as_str()));
                fence_attempts.push(Some(attempt_sql(*attempt)));
            }
        }
    }
    let params: [&(dyn ToSql + Sync); 18] = [
        &ids,
        &done,
        &states,
        &codes,
        &updated,
        &ended,
        &bodies,
        &owners,
        &attempts,
        &started,
        &next_attempts,
        &deadlines,
        &dues,
        &versions,
        &cancels,
        &expected,
        &fence_owners,
        &fence_attempts,
    ];
    let client = pool.get().await.map_err(|e| Failed::Store(pool_error(e)))?;
    let statement = client
        .prepare_cached(&WRITE_BATCH)
        .await
        .map_err(|e| Failed::Store(pg_error(e)))?;
    let written = client.query(&statement, &params).await.map_err(|e| {
        if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) {
            Failed::Deadlock(e)
        } else {
            Failed::Store(pg_error(e))
        }
    })?;
    let store = |e: tokio_postgres::Error| Failed::Store(pg_error(e));
    written
        .iter()
        .map(|row| {
            let id: String = row.try_get(0).map_err(store)?;
            let version: i64 = row.try_get(1).map_err(store)?;
            let cancel: bool = row.try_get(2).map_err(store)?;
            Ok((id, (u64::try_from(version).unwrap_or(0), cancel)))
        })
        .collect()
}
