//! [`PostgresStore`]: operations in a PostgreSQL database that several oprun nodes share.
//!
//! The driver is `tokio-postgres` with a `deadpool-postgres` pool: async all the way down,
//! statements prepared once per connection (and cached), queries pipelined on a connection,
//! and the connection's own message stream for `LISTEN`; no compile-time database access
//! (sqlx's checked macros would need a database to build).
//!
//! Every method is one statement, or one short transaction, so no lock is held across a
//! round trip to the runner. How the shared-store promises are kept:
//! * a claim takes due rows with `FOR UPDATE SKIP LOCKED` and starts them in the same
//!   statement, so two nodes never claim one operation and neither waits for the other;
//! * a write is fenced in its `WHERE` (the version read, or owner + attempt while RUNNING);
//! * `seq` order is commit order (see [`schema`]), so paging by `seq` is AIP-158-correct;
//! * the change feed orders rows by the transaction that last changed them and stops below
//!   the oldest transaction still running, so no change is passed while it is in flight.
//!
//! Filters are compiled to SQL (`Filter::to_postgres`) over the same partial indexes as the
//! SQLite schema.

// Pieces of SQL as macros, so that every statement is one literal (`concat!`), built at
// compile time rather than at each call.

/// The columns a read selects, in [`raw`]'s order.
macro_rules! columns {
    () => {
        "seq, id, request_id, input, body, state, version, owner, attempt, start_time, \
         update_time, end_time, next_attempt_time, deadline, cancel_requested"
    };
}

/// The id of the current transaction, as stored in `changed_by`.
macro_rules! this_transaction {
    () => {
        "pg_current_xact_id()::text::bigint"
    };
}

/// The oldest transaction still running: changes below it are all committed (or gone).
macro_rules! settled {
    () => {
        "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
    };
}

mod batch;
mod claims;
mod connect;
mod gated;
mod inserts;
mod listen;
mod queries;
pub mod schema;
mod tally;
#[cfg(any(test, feature = "conformance"))]
pub mod testing;
mod tls;
mod writes;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

pub use connect::migrate;
pub use schema::Migrated;

pub(crate) use connect::pg_error;
use connect::{pool_error, Database};
use queries::*;

use super::row::{decode_record, Columns, RowImage, FILTER_COLUMNS};
use super::walk::{created_bounds, Listing, Walk};
use super::{
    from_micros, micros, Changes, Claim, Claimed, Deadlines, Inserted, NodeLease, Rank, Store,
    StoreError, Summary, Swept, Written,
};
use crate::filter::{Filter, SqlValue};
use crate::model::{Fence, OperationId, OperationRecord};

/// How to reach the database.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Connections in the pool.
    pub pool_size: usize,
    /// The schema to keep oprun's tables in (created if missing), instead of the
    /// connection's default (`public`, usually). Several oprun clusters, or tests, can share
    /// one database this way.
    pub schema: Option<String>,
}

setters!(PostgresOptions {
    pool_size: usize,
} optional {
    schema: String,
});

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            schema: None,
        }
    }
}

/// Operations in PostgreSQL, shared by every node that connects to the same database.
pub struct PostgresStore {
    pool: Pool,
    closed: AtomicBool,
    /// Raised by the `LISTEN` connection for every change any node commits (its value:
    /// whether notifications work now).
    signal: tokio::sync::watch::Sender<bool>,
    /// Stops the `LISTEN` connection.
    stop: CancellationToken,
    /// The `LISTEN` connection's task and the summary's folder, awaited at close.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Inserts, committed in groups.
    inserter: inserts::Inserter,
    /// Fenced writes, committed in groups.
    writer: writes::Writer,
    /// What the groups' commits took and carried.
    stats: crate::metrics::CommitStats,
}

#[async_trait]
impl Store for PostgresStore {
    fn commit_stats(&self) -> Option<crate::metrics::CommitStats> {
        Some(self.stats.clone())
    }

    async fn insert(&self, mut record: OperationRecord) -> Result<Inserted, StoreError> {
        // A taken request id or unique key is usually found here, without a write; one taken
        // meanwhile (by another node, or in the same batch) inserts nothing and is read
        // after. A unique key's holder may end between the two: then the insert is tried
        // again (the row encoded again only then).
        let mut encoded = Some(RowImage::of(&record, true));
        for _ in 0..INSERT_TRIES {
            let row = encoded
                .take()
                .unwrap_or_else(|| RowImage::of(&record, true));
            if row.request_id.is_some() || row.unique_key.is_some() {
                if let Some(existing) = taken(&self.client().await?, &row).await? {
                    return Ok(Inserted::Existing(existing));
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            if let Some(seq) = self.inserter.call(row).await? {
                record.seq = seq;
                return Ok(Inserted::New(record));
            }
        }
        Err(unstored())
    }

    async fn insert_many(
        &self,
        records: Vec<OperationRecord>,
    ) -> Result<Vec<Inserted>, StoreError> {
        let rows: Vec<RowImage> = records.iter().map(|r| RowImage::of(r, true)).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let mut seqs = inserts::insert_rows(&tx, &rows).await?;
        let mut answers = Vec::with_capacity(records.len());
        for (mut record, row) in records.into_iter().zip(&rows) {
            let mut tries = 0;
            let answer = loop {
                if let Some(seq) = seqs.get(&row.id) {
                    record.seq = *seq;
                    break Inserted::New(record);
                }
                // Taken: by an earlier row of this batch, or by a committed operation.
                if let Some(existing) = taken(&tx, row).await? {
                    break Inserted::Existing(existing);
                }
                tries += 1;
                if tries >= INSERT_TRIES {
                    return Err(unstored());
                }
                seqs.extend(inserts::insert_rows(&tx, std::slice::from_ref(row)).await?);
            };
            answers.push(answer);
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(answers)
    }

    async fn write(&self, record: &OperationRecord, fence: &Fence) -> Result<Written, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let write = writes::Write {
            row: RowImage::of(record, false),
            fence: fence.clone(),
        };
        self.writer.call(write).await?
    }

    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        self.claim_due(claim).await
    }

    async fn heartbeat(&self, node: &str, lease_until: SystemTime) -> Result<(), StoreError> {
        self.query(
            concat!(
                "WITH gone AS (DELETE FROM nodes n WHERE n.lease_until < $3 AND n.id <> $1 \
               AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.state = ",
                running_sql!(),
                " AND o.owner = n.id)) \
             INSERT INTO nodes (id, lease_until) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until"
            ),
            &[
                &node,
                &micros(lease_until),
                &super::forget_before(micros(lease_until)),
            ],
        )
        .await?;
        Ok(())
    }

    async fn orphans(
        &self,
        node: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let rows = self
            .query(ORPHANS, &[&node, &micros(now), &count(limit)])
            .await?;
        records(&rows)
    }

    async fn deadlines(&self, now: SystemTime, limit: usize) -> Result<Deadlines, StoreError> {
        let now = micros(now);
        let passed = self.query(DEADLINES_PASSED, &[&now, &count(limit)]).await?;
        let next = self
            .query(
                concat!(
                    "SELECT min(deadline) FROM operations WHERE state = ",
                    queued_sql!(),
                    " \
                 AND deadline IS NOT NULL AND deadline > $1"
                ),
                &[&now],
            )
            .await?;
        let next: Option<i64> = match next.first() {
            Some(row) => row.try_get(0).map_err(pg_error)?,
            None => None,
        };
        Ok(Deadlines {
            passed: records(&passed)?,
            next: next.map(from_micros),
        })
    }

    async fn get(&self, id: &OperationId) -> Result<Option<OperationRecord>, StoreError> {
        self.select_one(BY_ID, id.as_str()).await
    }

    async fn find_request(&self, request_id: &str) -> Result<Option<OperationRecord>, StoreError> {
        self.select_one(BY_REQUEST, request_id).await
    }

    async fn delete_done(&self, id: &OperationId) -> Result<Option<bool>, StoreError> {
        let deleted = self
            .query(
                "DELETE FROM operations WHERE id = $1 AND done = 1 RETURNING seq",
                &[&id.as_str()],
            )
            .await?;
        if !deleted.is_empty() {
            return Ok(Some(true));
        }
        let kept = self
            .query("SELECT done FROM operations WHERE id = $1", &[&id.as_str()])
            .await?;
        Ok(kept.first().map(|_| false))
    }

    async fn list(
        &self,
        after: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        self.walk(Listing::Oldest { after }, filter, limit).await
    }

    async fn list_newest(
        &self,
        before: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        self.walk(Listing::Newest { before }, filter, limit).await
    }

    async fn summarize(
        &self,
        since: SystemTime,
        bucket: std::time::Duration,
    ) -> Result<Summary, StoreError> {
        let (span, since, width) = crate::store::tally::span_for(since, bucket);
        let span32 = i32::try_from(span).unwrap_or(1);
        let client = self.client().await?;
        let counts = client
            .query(tally::COUNTS, &[])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, i32, i64)>, tokio_postgres::Error>>()
            .map_err(pg_error)?;
        let ends = client
            .query(tally::ENDS, &[&span32, &since])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<(i64, i64)>, tokio_postgres::Error>>()
            .map_err(pg_error)?;
        crate::store::tally::summary_from(counts, ends, since, width)
    }

    async fn sweep(
        &self,
        finished_before: SystemTime,
        keep_at_most: Option<usize>,
    ) -> Result<Swept, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // One node sweeps at a time; the others only read what is left.
        let sweeping = try_xact_lock(&tx, SWEEP_LOCK).await?;
        let mut deleted = if sweeping {
            tx.execute(
                "DELETE FROM operations WHERE done = 1 AND end_time < $1",
                &[&micros(finished_before)],
            )
            .await
            .map_err(pg_error)?
        } else {
            0
        };
        let mut finished = None;
        if let Some(keep) = keep_at_most {
            // The tallies, not a count of the finished rows (a million at the cap).
            let counted: i64 = tx
                .query_one(tally::FINISHED, &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(pg_error)?;
            let mut kept = u64::try_from(counted).unwrap_or(0);
            let keep = u64::try_from(keep).unwrap_or(u64::MAX);
            if sweeping && kept > keep {
                let excess = i64::try_from(kept - keep).unwrap_or(i64::MAX);
                let n = tx
                    .execute(
                        "DELETE FROM operations WHERE seq IN (SELECT seq FROM operations \
                         WHERE done = 1 ORDER BY end_time, seq LIMIT $1)",
                        &[&excess],
                    )
                    .await
                    .map_err(pg_error)?;
                deleted += n;
                kept -= n;
            }
            finished = Some(usize::try_from(kept).unwrap_or(usize::MAX));
        }
        let oldest: Option<i64> = tx
            .query_one("SELECT min(end_time) FROM operations WHERE done = 1", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Swept {
            deleted: usize::try_from(deleted).unwrap_or(usize::MAX),
            finished,
            oldest_finished: oldest.map(from_micros),
        })
    }

    async fn queued(&self) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        self.query(super::row::QUEUED_SQL, &[])
            .await?
            .iter()
            .map(|row| {
                let n: i64 = row.try_get(1).map_err(pg_error)?;
                Ok((
                    row.try_get(0).map_err(pg_error)?,
                    usize::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError> {
        records(&self.query(UNFINISHED, &[]).await?)
    }

    fn is_exclusive(&self) -> bool {
        false
    }

    async fn register(
        &self,
        what: crate::store::Registered,
        name: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.query(
            &format!(
                "INSERT INTO {} (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                what.table()
            ),
            &[&name, &value],
        )
        .await?;
        Ok(())
    }

    async fn unregister(
        &self,
        what: crate::store::Registered,
        name: &str,
    ) -> Result<(), StoreError> {
        self.query(
            &format!("DELETE FROM {} WHERE name = $1", what.table()),
            &[&name],
        )
        .await?;
        Ok(())
    }

    async fn registered(
        &self,
        what: crate::store::Registered,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT name, value FROM {} ORDER BY name", what.table()),
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<_, String>(0).map_err(pg_error)?,
                    row.try_get::<_, Vec<u8>>(1).map_err(pg_error)?,
                ))
            })
            .collect()
    }

    async fn put_schedule(
        &self,
        row: &crate::store::ScheduleRow,
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let written = match expected {
            None => {
                self.query(
                    "INSERT INTO schedules (id, body, wake, version) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                    &[&row.id, &row.body, &row.wake, &row.version],
                )
                .await?
            }
            Some(version) => {
                self.query(
                    "UPDATE schedules SET body = $2, wake = $3, version = $4 \
                     WHERE id = $1 AND version = $5 RETURNING id",
                    &[&row.id, &row.body, &row.wake, &row.version, &version],
                )
                .await?
            }
        };
        Ok(!written.is_empty())
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let rows = self
            .query("DELETE FROM schedules WHERE id = $1 RETURNING id", &[&id])
            .await?;
        Ok(!rows.is_empty())
    }

    async fn schedule(&self, id: &str) -> Result<Option<crate::store::ScheduleRow>, StoreError> {
        let rows = self
            .query(
                "SELECT id, body, wake, version FROM schedules WHERE id = $1",
                &[&id],
            )
            .await?;
        rows.iter().map(schedule_row).next().transpose()
    }

    async fn schedules(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::ScheduleRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT id, body, wake, version FROM schedules WHERE id > $1 \
                 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        rows.iter().map(schedule_row).collect()
    }

    async fn due_schedules(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<crate::store::DueSchedules, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT id, body, wake, version FROM schedules \
                 WHERE wake IS NOT NULL AND wake <= $1 ORDER BY wake LIMIT $2",
                &[&now, &limit],
            )
            .await?;
        let due = rows.iter().map(schedule_row).collect::<Result<_, _>>()?;
        let next = self
            .query(
                "SELECT min(wake) FROM schedules WHERE wake IS NOT NULL AND wake > $1",
                &[&now],
            )
            .await?;
        let next_wake = match next.first() {
            Some(row) => row.try_get::<_, Option<i64>>(0).map_err(pg_error)?,
            None => None,
        };
        Ok(crate::store::DueSchedules { due, next_wake })
    }

    async fn nodes(&self) -> Result<Vec<NodeLease>, StoreError> {
        let rows = self.query(super::row::NODES_SQL, &[]).await?;
        rows.iter()
            .map(|row| {
                let until: i64 = row.try_get(1).map_err(pg_error)?;
                let running: i64 = row.try_get(2).map_err(pg_error)?;
                Ok(NodeLease {
                    id: row
                        .try_get::<_, Option<String>>(0)
                        .map_err(pg_error)?
                        .unwrap_or_default(),
                    lease_until: from_micros(until),
                    running: usize::try_from(running).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn changes(&self, after: Option<i64>, limit: usize) -> Result<Changes, StoreError> {
        let Some(after) = after else {
            let rows = self.query(HEAD, &[]).await?;
            let head: i64 = match rows.first() {
                Some(row) => row.try_get(0).map_err(pg_error)?,
                None => 0,
            };
            return Ok(Changes {
                operations: Vec::new(),
                next: head,
            });
        };
        let limit = count(limit.max(1));
        let mut rows = self.query(CHANGES, &[&after, &limit]).await?;
        let last = |rows: &[Row]| -> Result<Option<(i64, i64)>, StoreError> {
            rows.last()
                .map(|row| {
                    Ok((
                        row.try_get(COLUMN_COUNT).map_err(pg_error)?,
                        row.try_get(0).map_err(pg_error)?,
                    ))
                })
                .transpose()
        };
        // A page ends with the whole of its last transaction's changes, so that the position
        // (a transaction) can be resumed after without missing any.
        if rows.len() == usize::try_from(limit).unwrap_or(usize::MAX) {
            if let Some((xact, seq)) = last(&rows)? {
                let rest = self.query(CHANGES_REST, &[&xact, &seq]).await?;
                rows.extend(rest);
            }
        }
        let next = last(&rows)?.map_or(after, |(xact, _)| xact);
        Ok(Changes {
            operations: records(&rows)?,
            next,
        })
    }

    fn change_signal(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.signal.subscribe())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            let _ = task.await;
        }
        self.pool.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
