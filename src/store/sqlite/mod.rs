//! The embedded default store: SQLite (bundled, no system library) in `--data-dir`.
//!
//! # Writes
//! One writer thread owns the write connection and group-commits every command waiting
//! (`writer`); it also keeps the write-ahead log within its bound
//! ([`SqliteOptions::wal_limit_bytes`]).
//!
//! # Reads
//! A small pool of read connections used from blocking threads; WAL lets them read while the
//! writer commits. A list's filter is compiled to SQL (`Filter::to_sqlite`) and runs as the
//! query's `WHERE` condition, so a selective filter on `done`, `state`, `kind`, `error.code` or
//! `name` reads one index range in `seq` order instead of scanning the table.
//!
//! # Damage
//! The file's integrity is checked before it is used ([`check`]); a damaged file stops
//! start-up. SQLite's corruption errors met later are [`StoreError::Corrupt`] (DATA_LOSS to
//! clients), and from the first one on the store refuses writes, so nothing more is written
//! into a damaged file.
//!
//! # Waiting for locks
//! Every connection waits for another's lock with a fine-grained busy handler (20 µs doubling
//! to 1 ms) instead of SQLite's default (1, 2, 5, 10, 15, 20… ms), whose coarse sleeps made one
//! request in a hundred wait ~40 ms under load.

pub mod check;
mod claims;
mod open;
mod queries;
mod schema;
mod wal;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    from_micros, micros, Claim, Claimed, Deadlines, Inserted, NodeLease, Store, StoreError,
    Summary, Swept, Written,
};
use crate::filter::{Filter, SqlValue};
use crate::model::{Fence, OperationId, OperationRecord};
use crate::store::row::{RowImage, FILTER_COLUMNS};
use crate::store::row::{NODES_SQL, QUEUED, QUEUED_SQL};
use crate::store::tally;
use crate::store::walk::{created_bounds, Listing, Walk};
use open::*;
use queries::*;
use schema::{row_to_record, RawRow, COLUMNS};
use wal::{checkpointer, WalBound};
use writer::{writer_loop, Command, InsertOutcome, WriteOutcome};

/// How hard a commit pushes data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss (one WAL fsync per group commit).
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit survives a process crash (`kill -9`) but the last
    /// commits may be lost on power loss.
    Normal,
}

/// The write-ahead log's default bound: 64 MiB.
pub const DEFAULT_WAL_LIMIT: u64 = 64 << 20;

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Commit durability.
    pub durability: Durability,
    /// Most commands applied in one transaction.
    pub max_batch: usize,
    /// Read connections.
    pub readers: usize,
    /// Largest size of the database file; writes past it fail as on a full disk.
    pub max_size_bytes: Option<u64>,
    /// The bound on the write-ahead log file (`oprun.sqlite3-wal`), in bytes. The log is
    /// restarted from its beginning once it passes half of it; at the bound, commits wait for
    /// that to succeed.
    pub wal_limit_bytes: u64,
    /// Check the file's integrity (SQLite's `quick_check`) when opening it, and refuse a
    /// damaged one. On by default; off only for tests that need to open a damaged file.
    pub integrity_check: bool,
}

setters!(SqliteOptions {
    durability: Durability,
    max_batch: usize,
    readers: usize,
    wal_limit_bytes: u64,
    integrity_check: bool,
} optional {
    max_size_bytes: u64,
});

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            max_batch: 2048,
            readers: 2,
            max_size_bytes: None,
            wal_limit_bytes: DEFAULT_WAL_LIMIT,
            integrity_check: true,
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    // std mpsc: sending never blocks, and the receiving side is a plain thread.
    writer: Mutex<Option<mpsc::Sender<Command>>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    path: PathBuf,
    /// The exclusive lock on `oprun.lock`, held until `close` (or the process ends).
    lock: Mutex<Option<std::fs::File>>,
    /// Set at the first corruption error: from then on writes are refused.
    damaged: AtomicBool,
    /// What the writer's commits took and carried.
    stats: crate::metrics::CommitStats,
}

/// The file whose exclusive lock marks a data directory as in use.
pub const LOCK_FILE: &str = "oprun.lock";
/// The database file in a data directory.
pub const DATABASE_FILE: &str = "oprun.sqlite3";

#[async_trait]
impl Store for SqliteStore {
    fn commit_stats(&self) -> Option<crate::metrics::CommitStats> {
        Some(self.stats.clone())
    }

    async fn insert(&self, record: OperationRecord) -> Result<Inserted, StoreError> {
        let image = RowImage::of(&record, true);
        inserted(record, self.send(|tx| Command::Insert(image, tx)).await?)
    }

    async fn insert_many(
        &self,
        records: Vec<OperationRecord>,
    ) -> Result<Vec<Inserted>, StoreError> {
        let images = records.iter().map(|r| RowImage::of(r, true)).collect();
        let outcomes = self.send(|tx| Command::InsertMany(images, tx)).await?;
        records
            .into_iter()
            .zip(outcomes)
            .map(|(record, outcome)| inserted(record, outcome))
            .collect()
    }

    async fn write(&self, record: &OperationRecord, fence: &Fence) -> Result<Written, StoreError> {
        let image = RowImage::of(record, false);
        let fence = fence.clone();
        match self.send(|tx| Command::Write(image, fence, tx)).await? {
            WriteOutcome::Applied(version, requested_cancellation) => Ok(Written::Applied {
                version: u64::try_from(version).unwrap_or(0),
                requested_cancellation,
            }),
            WriteOutcome::Stale(row) => Ok(Written::Stale(
                row.map(|r| r.decode().map(Box::new)).transpose()?,
            )),
        }
    }

    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        let claim = claim.clone();
        let (rows, next_due, held) = self.send(|tx| Command::Claim(claim, tx)).await?;
        Ok(Claimed {
            operations: rows
                .into_iter()
                .map(RawRow::decode)
                .collect::<Result<_, _>>()?,
            next_due: next_due.map(from_micros),
            held,
        })
    }

    async fn heartbeat(&self, node: &str, lease_until: SystemTime) -> Result<(), StoreError> {
        let node = node.to_owned();
        let until = micros(lease_until);
        self.send(|tx| Command::Heartbeat(node, until, tx)).await
    }

    async fn orphans(
        &self,
        node: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let node = node.to_owned();
        let now = micros(now);
        self.read(move |conn| {
            let rows: Vec<RawRow> = conn
                .prepare_cached(&orphans_sql())
                .and_then(|mut s| {
                    s.query_map(params![node, now, sql_limit(limit)], row_to_record)?
                        .collect()
                })
                .map_err(sql_error)?;
            rows.into_iter().map(RawRow::decode).collect()
        })
        .await
    }

    async fn deadlines(&self, now: SystemTime, limit: usize) -> Result<Deadlines, StoreError> {
        let now = micros(now);
        self.read(move |conn| {
            let rows: Vec<RawRow> = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM operations WHERE state = {QUEUED} AND deadline <= ?1 \
                     ORDER BY deadline LIMIT ?2"
                ))
                .and_then(|mut s| {
                    s.query_map(params![now, sql_limit(limit)], row_to_record)?
                        .collect()
                })
                .map_err(sql_error)?;
            let next: Option<i64> = conn
                .prepare_cached(concat!(
                    "SELECT MIN(deadline) FROM operations WHERE state = ",
                    queued_sql!(),
                    " AND deadline > ?1"
                ))
                .and_then(|mut s| s.query_row(params![now], |r| r.get(0)))
                .map_err(sql_error)?;
            Ok(Deadlines {
                passed: rows
                    .into_iter()
                    .map(RawRow::decode)
                    .collect::<Result<_, _>>()?,
                next: next.map(from_micros),
            })
        })
        .await
    }

    async fn get(&self, id: &OperationId) -> Result<Option<OperationRecord>, StoreError> {
        self.read_one("id", id.as_str().to_owned()).await
    }

    async fn find_request(&self, request_id: &str) -> Result<Option<OperationRecord>, StoreError> {
        self.read_one("request_id", request_id.to_owned()).await
    }

    async fn delete_done(&self, id: &OperationId) -> Result<Option<bool>, StoreError> {
        let id = id.clone();
        self.send(|tx| Command::Delete(id, tx)).await
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

    async fn summarize(&self, since: SystemTime, bucket: Duration) -> Result<Summary, StoreError> {
        let (span, since, width) = tally::span_for(since, bucket);
        self.read(move |conn| {
            let mut counts: Vec<(String, i32, i64)> = Vec::new();
            let mut by_kind = conn
                .prepare_cached(
                    "SELECT kind, queued, running, succeeded, failed, cancelled \
                     FROM tally_counts",
                )
                .map_err(sql_error)?;
            let mut rows = by_kind.query([]).map_err(sql_error)?;
            while let Some(row) = rows.next().map_err(sql_error)? {
                let kind: String = row.get(0).map_err(sql_error)?;
                // Columns 1 to 5: QUEUED (1) to CANCELLED (5).
                for (column, state) in (1..=5).zip(1_i32..) {
                    let n: i64 = row.get(column).map_err(sql_error)?;
                    counts.push((kind.clone(), state, n));
                }
            }
            let ends: Vec<(i64, i64)> = conn
                .prepare_cached("SELECT at, n FROM tally_ends WHERE span = ?1 AND at >= ?2")
                .and_then(|mut s| {
                    s.query_map([span, since], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(sql_error)?;
            tally::summary_from(counts, ends, since, width)
        })
        .await
    }

    async fn sweep(
        &self,
        finished_before: SystemTime,
        keep_at_most: Option<usize>,
    ) -> Result<Swept, StoreError> {
        self.send(|tx| Command::Sweep(finished_before, keep_at_most, tx))
            .await
    }

    async fn register(
        &self,
        what: crate::store::Registered,
        name: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.send(|tx| Command::Register(what, name, Some(value), tx))
            .await
    }

    async fn unregister(
        &self,
        what: crate::store::Registered,
        name: &str,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.send(|tx| Command::Register(what, name, None, tx))
            .await
    }

    async fn registered(
        &self,
        what: crate::store::Registered,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT name, value FROM {} ORDER BY name",
                    what.table()
                ))
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(sql_error)?;
            Ok(rows)
        })
        .await
    }

    async fn put_schedule(
        &self,
        row: &crate::store::ScheduleRow,
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let row = row.clone();
        self.send(|tx| Command::PutSchedule(row, expected, tx))
            .await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.send(|tx| Command::DeleteSchedule(id, tx)).await
    }

    async fn schedule(&self, id: &str) -> Result<Option<crate::store::ScheduleRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"
            ))
            .and_then(|mut s| s.query_row([&id], schedule_row).optional())
            .map_err(sql_error)
        })
        .await
    }

    async fn schedules(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::ScheduleRow>, StoreError> {
        let after = after.to_owned();
        let limit = sql_limit(limit);
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .and_then(|mut s| {
                s.query_map(rusqlite::params![after, limit], schedule_row)?
                    .collect()
            })
            .map_err(sql_error)
        })
        .await
    }

    async fn due_schedules(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<crate::store::DueSchedules, StoreError> {
        let limit = sql_limit(limit);
        self.read(move |conn| {
            // Both read `schedules_wake`, whose condition they name.
            let due = conn
                .prepare_cached(&format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedules \
                     WHERE wake IS NOT NULL AND wake <= ?1 ORDER BY wake LIMIT ?2"
                ))
                .and_then(|mut s| {
                    s.query_map(rusqlite::params![now, limit], schedule_row)?
                        .collect()
                })
                .map_err(sql_error)?;
            let next_wake = conn
                .prepare_cached(
                    "SELECT min(wake) FROM schedules WHERE wake IS NOT NULL AND wake > ?1",
                )
                .and_then(|mut s| s.query_row([now], |row| row.get(0)))
                .map_err(sql_error)?;
            Ok(crate::store::DueSchedules { due, next_wake })
        })
        .await
    }

    async fn nodes(&self) -> Result<Vec<NodeLease>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(NODES_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map([], |row| {
                    let id: Option<String> = row.get(0)?;
                    let running: i64 = row.get(2)?;
                    Ok(NodeLease {
                        id: id.unwrap_or_default(),
                        lease_until: from_micros(row.get(1)?),
                        running: usize::try_from(running).unwrap_or(0),
                    })
                })
                .and_then(Iterator::collect)
                .map_err(sql_error)?;
            Ok(rows)
        })
        .await
    }

    async fn queued(&self) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(QUEUED_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map([], |row| {
                    let n: i64 = row.get(1)?;
                    Ok((row.get(0)?, usize::try_from(n).unwrap_or(0)))
                })
                .and_then(Iterator::collect)
                .map_err(sql_error)?;
            Ok(rows)
        })
        .await
    }

    /// Its data directory is locked: one process owns it.
    fn is_exclusive(&self) -> bool {
        true
    }

    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM operations WHERE done = 0 ORDER BY seq"
                ))
                .map_err(sql_error)?;
            let rows: Vec<RawRow> = stmt
                .query_map([], row_to_record)
                .and_then(Iterator::collect)
                .map_err(sql_error)?;
            rows.into_iter().map(RawRow::decode).collect()
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let result = self.send(Command::Close).await;
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Dropping the file releases the data directory for another process.
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match result {
            Err(StoreError::Closed) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests;
