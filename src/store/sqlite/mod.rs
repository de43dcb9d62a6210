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
mod schema;
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
use crate::store::row::{created_bounds, RowImage, FILTER_COLUMNS};
use crate::store::row::{NODES_SQL, QUEUED_SQL};
use crate::store::tally;
use schema::{row_to_record, RawRow, COLUMNS};
use writer::{checkpointer, writer_loop, Command, InsertOutcome, WalBound, WriteOutcome};

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

/// A filter's values bound as they are.
impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            SqlValue::Integer(n) => ToSqlOutput::Owned(Value::Integer(*n)),
            SqlValue::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            SqlValue::Blob(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
        })
    }
}

/// How long a connection waits for another's lock before its statement fails as busy.
const BUSY_PATIENCE: Duration = Duration::from_secs(5);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(e.to_string())
}

/// Maps a SQLite error: damage is [`StoreError::Corrupt`] (it will not heal by retrying); a
/// full disk (or `--max-db-size`) is named plainly; the rest is unavailable.
fn sql_error(e: rusqlite::Error) -> StoreError {
    if matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::Utf8Error(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    ) {
        return StoreError::Corrupt(format!(
            "a stored value cannot be read back ({e}); stop oprun and run `oprun store check` \
             on its data directory"
        ));
    }
    match e.sqlite_error_code() {
        // TOOBIG: a record header whose lengths are garbage reads as a value past SQLite's
        // 1 GB limit; oprun never writes one (inputs are bounded by `--max-input-bytes` and
        // gRPC's message limit), so it is damage.
        Some(
            rusqlite::ErrorCode::DatabaseCorrupt
            | rusqlite::ErrorCode::NotADatabase
            | rusqlite::ErrorCode::TooBig,
        ) => StoreError::Corrupt(format!(
            "{e}; stop oprun and run `oprun store check` on its data directory"
        )),
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::unavailable_because(
            format!("the store is full (no space left on its disk, or --max-db-size reached): {e}"),
            e,
        ),
        _ => StoreError::unavailable_because(e.to_string(), e),
    }
}

/// Makes `conn` wait for other connections' locks in fine steps (20 µs doubling to 1 ms), for
/// up to `patience`.
fn wait_patiently(conn: &mut Connection, patience: Duration) -> rusqlite::Result<()> {
    let mut since = Instant::now();
    conn.busy_handler(Some(move |attempt: i32| {
        if attempt == 0 {
            since = Instant::now();
        }
        if since.elapsed() >= patience {
            return false;
        }
        let shift = u32::try_from(attempt.clamp(0, 6)).unwrap_or(6);
        thread::sleep(Duration::from_micros(20u64 << shift).min(Duration::from_millis(1)));
        true
    }))
}

/// Takes the data directory's exclusive lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "another oprun process is using {} (it holds {}); stop it or choose another \
             --data-dir",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(unavailable(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// How many prepared statements the writer keeps.
const WRITER_STATEMENTS: usize = 128;

/// Opens a connection to `path` with `flags` that waits for locks for up to `patience`.
fn connect(path: &Path, flags: OpenFlags, patience: Duration) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
    wait_patiently(&mut conn, patience).map_err(sql_error)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/oprun.sqlite3`, after checking its integrity.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the directory or database cannot be opened,
    /// [`StoreError::Corrupt`] when the file is damaged or not a usable oprun database,
    /// [`StoreError::Locked`] when another process uses the directory.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DATABASE_FILE);
        let mut conn = connect(&path, OpenFlags::default(), BUSY_PATIENCE)?;
        let sync = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        let damaged = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                StoreError::Corrupt(format!(
                    "{} is damaged: {e}; oprun will not use it. Run `oprun store check \
                     --data-dir {}` for the details, then restore the file from a backup (or \
                     move it aside to start with an empty store)",
                    path.display(),
                    dir.display()
                ))
            }
            _ => unavailable(format!("cannot initialise {}: {e}", path.display())),
        };
        // Checkpoints never run inside a commit that submitters wait for (see `writer`).
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA wal_autocheckpoint=0;"
        ))
        .map_err(damaged)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(damaged)?;
        if version > schema::VERSION {
            return Err(StoreError::Corrupt(format!(
                "{} has schema version {version}, newer than this oprun understands \
                 ({}); run a newer oprun",
                path.display(),
                schema::VERSION
            )));
        }
        if options.integrity_check {
            let started = Instant::now();
            let problems = check::quick(&conn).map_err(damaged)?;
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store integrity checked"
            );
            if !problems.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "{} is damaged ({}); oprun will not use it. Run `oprun store check \
                     --data-dir {}` for the details, then restore the file from a backup (or \
                     move it aside to start with an empty store)",
                    path.display(),
                    check::summarize(&problems),
                    dir.display()
                )));
            }
        }
        schema::prepare(&mut conn, version)?;
        // The store is exclusive (the directory's lock): no earlier process's lease lives on.
        conn.execute_batch("UPDATE nodes SET lease_until = 0;")
            .map_err(sql_error)?;
        if let Some(bytes) = options.max_size_bytes {
            let pages = (bytes / 4096).max(8);
            conn.execute_batch(&format!("PRAGMA max_page_count = {pages};"))
                .map_err(sql_error)?;
        }
        let mut readers = Vec::with_capacity(options.readers.max(1));
        for _ in 0..options.readers.max(1) {
            readers.push(Mutex::new(connect(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                BUSY_PATIENCE,
            )?));
        }
        let checkpoint_conn = connect(&path, OpenFlags::default(), BUSY_PATIENCE)?;
        let (checkpoint_tx, checkpoint_rx) = mpsc::sync_channel::<()>(1);
        let copying = Arc::new(AtomicBool::new(false));
        let running = Arc::clone(&copying);
        thread::Builder::new()
            .name("oprun-sqlite-checkpoint".into())
            .spawn(move || checkpointer(checkpoint_conn, checkpoint_rx, running))
            .map_err(unavailable)?;
        // From here on the connection is the writer's: it only ever waits for readers still in
        // the log during a restart, briefly.
        wait_patiently(&mut conn, writer::WRITER_PATIENCE).map_err(sql_error)?;
        let wal = WalBound::new(
            &mut conn,
            options.wal_limit_bytes.max(1 << 20),
            checkpoint_tx,
            copying,
        )
        .map_err(sql_error)?;
        // Room for every statement the writer runs, two per registered kind among them (see
        // `writer::for_kind`): an evicted statement is prepared again.
        conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        let (tx, rx) = mpsc::channel();
        let max_batch = options.max_batch.max(1);
        let stats = crate::metrics::CommitStats::default();
        let writer_stats = stats.clone();
        thread::Builder::new()
            .name("oprun-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch, wal, &writer_stats))
            .map_err(unavailable)?;
        Ok(Self {
            writer: Mutex::new(Some(tx)),
            readers: Arc::new(readers),
            path,
            lock: Mutex::new(Some(lock)),
            damaged: AtomicBool::new(false),
            stats,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The operation whose `column` (a unique one: `id` or `request_id`) is `value`.
    async fn read_one(
        &self,
        column: &'static str,
        value: String,
    ) -> Result<Option<OperationRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM operations WHERE {column} = ?1"
            ))
            .and_then(|mut s| s.query_row(params![value], row_to_record).optional())
            .map_err(sql_error)?
            .map(RawRow::decode)
            .transpose()
        })
        .await
    }

    /// Remembers damage, so that later writes are refused.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Corrupt(e)) = &result {
            if !self.damaged.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    error = %e,
                    path = %self.path.display(),
                    "the store is damaged (DATA_LOSS); it refuses writes from now on"
                );
            }
        }
        result
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        if self.damaged.load(Ordering::Acquire) {
            return Err(StoreError::Corrupt(format!(
                "{} is damaged and takes no more writes; stop oprun and run `oprun store check`",
                self.path.display()
            )));
        }
        let (tx, rx) = oneshot::channel();
        {
            let guard = self
                .writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender.send(make(tx)).map_err(|_| StoreError::Closed)?;
        }
        self.note(rx.await.map_err(|_| StoreError::Closed)?)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        let result = tokio::task::spawn_blocking(move || {
            // Take the first free reader; if all are busy, wait for one chosen by thread id.
            for r in readers.iter() {
                if let Ok(conn) = r.try_lock() {
                    return f(&conn);
                }
            }
            let i = thread_index() % readers.len();
            let conn = readers[i]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|e| unavailable(format!("read task failed: {e}")))?;
        self.note(result)
    }
}

fn thread_index() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    thread::current().id().hash(&mut h);
    usize::try_from(h.finish() % 1024).unwrap_or(0)
}

/// [`COLUMNS`] of the table named `alias` in a join.
fn qualified(alias: &str) -> String {
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
fn orphans_sql() -> String {
    format!(
        "SELECT {} FROM operations o INDEXED BY operations_owner \
         LEFT JOIN nodes n ON n.id = o.owner \
         WHERE o.state = 2 AND (o.owner IS NULL OR o.owner != ?1) \
         AND (n.lease_until IS NULL OR n.lease_until < ?2) ORDER BY o.seq LIMIT ?3",
        qualified("o")
    )
}

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The columns of a schedule's row, as [`schedule_row`] reads them.
const SCHEDULE_COLUMNS: &str = "id, body, wake, version";

/// A schedule's row, from [`SCHEDULE_COLUMNS`].
fn schedule_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<crate::store::ScheduleRow> {
    Ok(crate::store::ScheduleRow {
        id: row.get(0)?,
        body: row.get(1)?,
        wake: row.get(2)?,
        version: row.get(3)?,
    })
}

/// The query of `list`: rows after a `seq` and before another that match a filter (its SQL
/// in `clause`), in `seq` order, up to a limit. Placeholders: the two `seq`s, the filter's,
/// the limit.
fn list_query(clause: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM operations WHERE seq > ? AND seq < ? AND ({clause}) \
         ORDER BY seq LIMIT ?"
    )
}

/// Runs a listing query whose placeholders are `bounds` (`seq`s), the filter's, then the
/// limit, and decodes its rows.
fn page(
    conn: &Connection,
    sql: &str,
    bounds: &[i64],
    filter: Vec<SqlValue>,
    limit: usize,
) -> Result<Vec<OperationRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_error)?;
    let params = bounds
        .iter()
        .map(|b| SqlValue::Integer(*b))
        .chain(filter)
        .chain(std::iter::once(SqlValue::Integer(sql_limit(limit))));
    let rows: Vec<RawRow> = stmt
        .query_map(params_from_iter(params), row_to_record)
        .and_then(Iterator::collect)
        .map_err(sql_error)?;
    rows.into_iter().map(RawRow::decode).collect()
}

/// Where the matches of a filter that bounds `create_time` (at or after `after`, before
/// `before`) can be: `(floor, ceiling)`, none at or below `floor` nor at or above `ceiling`;
/// `None` when none can be. One or two seeks of `operations_created_max` (see the schema's
/// version 6) and, for an upper bound, one of `operations_created_lag`: an operation created
/// before `before` has a `created_max` below `before` plus the largest lag of any (how far
/// `created_max` is past an operation's own `create_time`).
fn created_window(
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
fn inserted(mut record: OperationRecord, outcome: InsertOutcome) -> Result<Inserted, StoreError> {
    match outcome {
        InsertOutcome::New(seq) => {
            record.seq = seq;
            Ok(Inserted::New(record))
        }
        InsertOutcome::Existing(row) => Ok(Inserted::Existing(row.decode()?)),
    }
}

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
                    "SELECT {COLUMNS} FROM operations WHERE state = 1 AND deadline <= ?1 \
                     ORDER BY deadline LIMIT ?2"
                ))
                .and_then(|mut s| {
                    s.query_map(params![now, sql_limit(limit)], row_to_record)?
                        .collect()
                })
                .map_err(sql_error)?;
            let next: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(deadline) FROM operations WHERE state = 1 AND deadline > ?1",
                )
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
        let (created_after, created_before) = created_bounds(filter);
        let filter = filter.to_sqlite(&FILTER_COLUMNS);
        self.read(move |conn| {
            // Bounds on `create_time`: the walk goes where the matches can be.
            let Some((floor, ceiling)) = created_window(conn, created_after, created_before)?
            else {
                return Ok(Vec::new());
            };
            page(
                conn,
                &list_query(&filter.clause),
                &[after.max(floor), ceiling],
                filter.params,
                limit,
            )
        })
        .await
    }

    async fn list_newest(
        &self,
        before: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let (created_after, created_before) = created_bounds(filter);
        let filter = filter.to_sqlite(&FILTER_COLUMNS);
        self.read(move |conn| {
            // Newest first is `seq` backwards: the primary key, whatever the filter; with
            // bounds on `create_time`, from and down to where the matches can be.
            let Some((floor, ceiling)) = created_window(conn, created_after, created_before)?
            else {
                return Ok(Vec::new());
            };
            let sql = format!(
                "SELECT {COLUMNS} FROM operations WHERE seq < ? AND seq > ? AND ({}) \
                 ORDER BY seq DESC LIMIT ?",
                filter.clause
            );
            page(
                conn,
                &sql,
                &[before.min(ceiling), floor],
                filter.params,
                limit,
            )
        })
        .await
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
mod tests {
    use super::*;
    use crate::model::State;

    // The SQLite store keeps the store contract: each store in a temporary directory the
    // test keeps until it ends.
    crate::store_conformance_tests!(mod conforms, #[tokio::test], make: {
        let dirs = Arc::new(Mutex::new(Vec::new()));
        move || {
            let dirs = Arc::clone(&dirs);
            async move {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
                dirs.lock().unwrap().push(dir);
                store
            }
        }
    });

    /// What was acknowledged is read back after the store is closed and opened again.
    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let rec = OperationRecord::new_queued("sleep".into(), prost_types::Any::default(), None);
        let Inserted::New(rec) = store.insert(rec).await.unwrap() else {
            panic!("expected a new record");
        };
        store.close().await.unwrap();
        let reopened = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        assert_eq!(reopened.get(&rec.id).await.unwrap(), Some(rec));
    }

    /// A file that is not a database stops start-up with a corruption error.
    #[test]
    fn refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("oprun.sqlite3"), vec![0x5a; 8192]).unwrap();
        let err = SqliteStore::open(dir.path(), SqliteOptions::default())
            .err()
            .expect("a corrupt file must not open");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    /// The plan SQLite chooses for `list` with `filter`, its steps joined by "; ".
    fn plan(conn: &Connection, filter: &str) -> String {
        let sql = Filter::parse(filter).unwrap().to_sqlite(&FILTER_COLUMNS);
        let params = [SqlValue::Integer(0), SqlValue::Integer(i64::MAX)]
            .into_iter()
            .chain(sql.params)
            .chain(std::iter::once(SqlValue::Integer(50)));
        explain(conn, &list_query(&sql.clause), params_from_iter(params))
    }

    /// The plan SQLite chooses for `sql` with `params`, its steps joined by "; ".
    fn explain(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> String {
        let steps: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params, |r| r.get(3))
            .and_then(Iterator::collect)
            .unwrap();
        steps.join("; ")
    }

    /// Stores `n` sleeps, a third of them failed with NOT_FOUND, a third running.
    async fn fill(store: &SqliteStore, n: usize) -> Vec<OperationRecord> {
        let mut stored = Vec::new();
        for i in 0..n {
            let mut rec =
                OperationRecord::new_queued("sleep".into(), prost_types::Any::default(), None);
            match i % 3 {
                0 => rec.fail(State::Failed, crate::Code::NotFound, "gone"),
                1 => rec.state = State::Running,
                _ => {}
            }
            let Inserted::New(rec) = store.insert(rec).await.unwrap() else {
                panic!("expected a new record");
            };
            stored.push(rec);
        }
        stored
    }

    /// The summary is a full count after a restart, and a database of the version before
    /// the tallies gets them filled from a full count when opened.
    #[tokio::test]
    async fn the_summary_is_a_full_count_across_restarts_and_the_upgrade() {
        use crate::store::conformance::{churn, counted_summaries, summaries};
        let dir = tempfile::tempdir().unwrap();
        let open = || SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let store = open();
        churn(&store, "x", 100).await;
        churn(&store, "y", 30).await;
        let want = counted_summaries(&store).await;
        assert_eq!(summaries(&store).await, want);
        store.close().await.unwrap();
        drop(store);
        let store = open();
        assert_eq!(summaries(&store).await, want, "after a restart");
        store.close().await.unwrap();
        drop(store);
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch(
                "DROP TABLE tally_counts; DROP TABLE tally_ends; \
                 DROP INDEX operations_created_max; DROP INDEX operations_created_lag; \
                 ALTER TABLE operations DROP COLUMN created_max; PRAGMA user_version = 5;",
            )
            .unwrap();
            conn.execute("DELETE FROM operations WHERE seq % 5 = 0", [])
                .unwrap();
        }
        let store = open();
        assert_ne!(counted_summaries(&store).await, want, "some were deleted");
        assert_eq!(
            summaries(&store).await,
            counted_summaries(&store).await,
            "filled"
        );
    }

    /// A list whose filter tests `done`, `state`, `kind`, `error.code` or `name` reads one
    /// index range, already in `seq` order: no scan of the table and no sort, however many
    /// operations the filter skips.
    #[tokio::test]
    async fn selective_filters_read_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        fill(&store, 6).await;
        let conn = Connection::open(store.path()).unwrap();
        for (filter, index) in [
            ("done = false", "operations_unfinished (seq>? AND seq<?)"),
            ("state=RUNNING", "operations_unfinished (seq>? AND seq<?)"),
            ("state=QUEUED", "operations_unfinished (seq>? AND seq<?)"),
            (
                "state=FAILED",
                "operations_end_state (state=? AND seq>? AND seq<?)",
            ),
            (
                "state=CANCELLED",
                "operations_end_state (state=? AND seq>? AND seq<?)",
            ),
            (
                "kind=sleep",
                "operations_by_kind (kind=? AND seq>? AND seq<?)",
            ),
            (
                "error.code = 1",
                "operations_failed (error_code=? AND seq>? AND seq<?)",
            ),
            (
                "error.code=NOT_FOUND done=true",
                "operations_failed (error_code=? AND seq>? AND seq<?)",
            ),
            (
                "name=operations/abc",
                "sqlite_autoindex_operations_1 (id=?)",
            ),
        ] {
            let plan = plan(&conn, filter);
            assert!(
                plan.contains(&format!("USING INDEX {index}")),
                "{filter}: {plan}"
            );
            assert!(!plan.contains("SCAN"), "{filter}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{filter}: {plan}");
        }
        // A filter no index serves in `seq` order (a time, a range of codes, a pattern) walks
        // `seq` from the page's start and stops at the limit, rather than sort.
        for filter in [
            "done=true",
            "create_time > 2026-01-02T15:04:05Z",
            "error.code >= 5",
            "kind = sl*",
        ] {
            let plan = plan(&conn, filter);
            assert!(
                plan.contains("USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
                "{plan}"
            );
        }
    }

    /// The look for other nodes' left work, every second, reads the RUNNING rows alone,
    /// however many operations the store holds (it walked the whole table).
    #[tokio::test]
    async fn the_look_for_left_work_reads_the_running_rows_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        fill(&store, 6).await;
        let conn = Connection::open(store.path()).unwrap();
        let plan = explain(&conn, &orphans_sql(), params!["n", 0, 10]);
        assert!(plan.contains("USING INDEX operations_owner"), "{plan}");
        assert!(!plan.contains("SCAN o;"), "{plan}");
    }

    /// A filter with a `create_time` lower bound starts its walk where the first operation
    /// created at or after it can be (one seek of `operations_created_max`), and one with an
    /// upper bound ends it where the last can be (that seek past the largest lag, one seek
    /// of `operations_created_lag`), both ways, so a bound in the middle of a long history
    /// does not walk the other half; and where `create_time` does not grow with `seq` (a
    /// clock set back, or forward), the pages are still every match (see
    /// [`crate::store::conformance::skewed_creations`]).
    #[tokio::test]
    async fn create_time_bounds_walk_only_where_the_matches_can_be() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
        let stored = crate::store::conformance::skewed_creations(&store).await;
        let conn = Connection::open(store.path()).unwrap();
        let floor = |since: SystemTime| {
            created_window(&conn, Some(micros(since)), None)
                .unwrap()
                .map(|w| w.0)
        };
        // Below the first whose `created_max` reaches the time: the 52nd (at 510 s) for 500 s,
        // as the 51st (at 5 s) keeps the 50th's 490 s; the 81st (set forward) for 995 s.
        assert_eq!(floor(at(500)), Some(stored[51].seq - 1));
        assert_eq!(floor(at(995)), Some(stored[80].seq - 1));
        assert_eq!(floor(at(3_000)), None, "none was created so late");
        let seek = explain(
            &conn,
            "SELECT seq FROM operations INDEXED BY operations_created_max WHERE created_max >= ? \
             ORDER BY created_max, seq LIMIT 1",
            [0],
        );
        assert!(
            seek.contains("USING COVERING INDEX operations_created_max"),
            "{seek}"
        );
        assert!(!seek.contains("TEMP B-TREE"), "{seek}");

        // Upper bounds: the 82nd (810 s, 1,190 s behind the 2,000 s before it) has the largest
        // lag.
        let ceiling = |before: SystemTime| {
            created_window(&conn, None, Some(micros(before)))
                .unwrap()
                .map(|w| w.1)
        };
        assert_eq!(
            ceiling(at(10)),
            Some(stored[80].seq),
            "10 s + 1,190 s: first reached by the one set forward"
        );
        assert_eq!(ceiling(at(3_000)), Some(i64::MAX), "none reaches 3,485 s");
        let lag = explain(
            &conn,
            "SELECT created_max - create_time FROM operations \
             INDEXED BY operations_created_lag WHERE created_max > create_time \
             ORDER BY created_max - create_time DESC LIMIT 1",
            [],
        );
        assert!(!lag.contains("TEMP B-TREE"), "{lag}");

        // Every match, both ways: the conformance suite's check.
        crate::store::conformance::create_time_bounds_list_every_match(&store, &stored).await;
    }

    /// A store made before the filter indexes existed opens, gets them, and lists with
    /// filters as before.
    #[tokio::test]
    async fn a_store_without_the_filter_indexes_gets_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let stored = fill(&store, 6).await;
        store.close().await.unwrap();
        let indexes = |conn: &Connection| -> Vec<String> {
            let mut stmt = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .and_then(Iterator::collect)
                .unwrap()
        };
        const FILTER_INDEXES: [&str; 3] = [
            "operations_by_kind",
            "operations_end_state",
            "operations_failed",
        ];
        let all = {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            let all = indexes(&conn);
            conn.execute_batch(
                "DROP INDEX operations_end_state; DROP INDEX operations_by_kind; \
                 DROP INDEX operations_failed;",
            )
            .unwrap();
            let left = indexes(&conn);
            assert!(
                FILTER_INDEXES.iter().all(|i| !left.iter().any(|l| l == i)),
                "{left:?}"
            );
            all
        };
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let conn = Connection::open(store.path()).unwrap();
        assert_eq!(indexes(&conn), all);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::VERSION);
        let failed = Filter::parse("error.code=NOT_FOUND").unwrap();
        let listed = store.list(0, &failed, 10).await.unwrap();
        let expected: Vec<_> = stored.iter().step_by(3).cloned().collect();
        assert_eq!(listed, expected);
    }
}
