//! The embedded default store: SQLite (bundled, no system library) in `--data-dir`.
//!
//! # Writes: group commit
//! One writer thread owns the write connection. Callers send commands over a channel and await
//! a reply; the writer takes every command waiting, applies them in one transaction and
//! commits once, so concurrent submissions share one WAL sync instead of paying one each.
//! A reply is sent only after the commit returned: `Ok` means durable.
//!
//! # Reads
//! A small pool of read connections used from blocking threads; WAL lets them read while the
//! writer commits.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    decode_record, encode_body, encode_input, from_micros, micros, Inserted, Store, StoreError,
    Swept,
};
use crate::filter::{Filter, FilterFields};
use crate::model::{OperationId, OperationRecord, State};

/// How hard a commit pushes data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss (one WAL fsync per group commit).
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit survives a process crash (`kill -9`) but the last
    /// commits may be lost on power loss.
    Normal,
}

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Commit durability.
    pub durability: Durability,
    /// Most commands applied in one transaction.
    pub max_batch: usize,
    /// Read connections.
    pub readers: usize,
    /// Largest size of the database file; writes past it fail as on a full disk.
    pub max_size_bytes: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            max_batch: 2048,
            readers: 2,
            max_size_bytes: None,
        }
    }
}

/// A record's columns, encoded by the caller so the writer thread only runs SQL.
struct RowImage {
    id: String,
    request_id: Option<String>,
    kind: String,
    done: bool,
    state: i32,
    error_code: Option<i32>,
    create_time: i64,
    update_time: i64,
    end_time: Option<i64>,
    /// Encoded only for inserts (the input never changes).
    input: Vec<u8>,
    body: Vec<u8>,
}

impl RowImage {
    fn of(r: &OperationRecord, with_input: bool) -> Self {
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
        }
    }
}

/// What an insert found.
enum InsertOutcome {
    /// Stored with this `seq`.
    New(i64),
    /// The `request_id` was already used by this row.
    Existing(RawRow),
}

enum Command {
    Insert(RowImage, oneshot::Sender<Result<InsertOutcome, StoreError>>),
    Update(RowImage, oneshot::Sender<Result<(), StoreError>>),
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

/// The SQLite store.
pub struct SqliteStore {
    // std mpsc: sending never blocks, and the receiving side is a plain thread.
    writer: Mutex<Option<mpsc::Sender<Command>>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    path: PathBuf,
    /// The exclusive lock on `oprun.lock`, held until `close` (or the process ends).
    lock: Mutex<Option<std::fs::File>>,
}

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS operations (
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
CREATE INDEX IF NOT EXISTS operations_unfinished ON operations(done, seq);
CREATE INDEX IF NOT EXISTS operations_finished ON operations(done, end_time);
PRAGMA user_version = 1;
";

/// The file whose exclusive lock marks a data directory as in use.
pub const LOCK_FILE: &str = "oprun.lock";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Maps a SQLite error, naming a full disk (or `--max-db-size`) plainly.
fn sql_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Unavailable(format!(
            "the store is full (no space left on its disk, or --max-db-size reached): {e}"
        )),
        _ => StoreError::Unavailable(e.to_string()),
    }
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

impl SqliteStore {
    /// Opens (creating if needed) `dir/oprun.sqlite3`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the directory or database cannot be opened,
    /// [`StoreError::Corrupt`] when the file is not a usable oprun database.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let lock = lock_dir(dir)?;
        let path = dir.join("oprun.sqlite3");
        let conn = Connection::open(&path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let sync = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        // Checkpoints run on their own thread (see `checkpointer`), never inside a commit
        // that submitters are waiting for.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; \
             PRAGMA wal_autocheckpoint=0;"
        ))
        .and_then(|()| conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)))
        .and_then(|version| {
            if version > SCHEMA_VERSION {
                return Ok(Some(version));
            }
            conn.execute_batch(SCHEMA).map(|()| None)
        })
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                StoreError::Corrupt(format!("{}: {e}", path.display()))
            }
            _ => unavailable(format!("cannot initialise {}: {e}", path.display())),
        })?
        .map_or(Ok(()), |version| {
            Err(StoreError::Corrupt(format!(
                "{} has schema version {version}, newer than this oprun understands \
                 ({SCHEMA_VERSION}); run a newer oprun",
                path.display()
            )))
        })?;
        if let Some(bytes) = options.max_size_bytes {
            let pages = (bytes / 4096).max(8);
            conn.execute_batch(&format!("PRAGMA max_page_count = {pages};"))
                .map_err(unavailable)?;
        }
        let mut readers = Vec::with_capacity(options.readers.max(1));
        for _ in 0..options.readers.max(1) {
            let r = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(unavailable)?;
            r.execute_batch("PRAGMA busy_timeout=5000;")
                .map_err(unavailable)?;
            readers.push(Mutex::new(r));
        }
        let checkpoint_conn = Connection::open(&path).map_err(unavailable)?;
        checkpoint_conn
            .execute_batch("PRAGMA busy_timeout=5000;")
            .map_err(unavailable)?;
        let (checkpoint_tx, checkpoint_rx) = mpsc::sync_channel::<()>(1);
        thread::Builder::new()
            .name("oprun-sqlite-checkpoint".into())
            .spawn(move || checkpointer(checkpoint_conn, checkpoint_rx))
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel();
        let max_batch = options.max_batch.max(1);
        thread::Builder::new()
            .name("oprun-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch, checkpoint_tx))
            .map_err(unavailable)?;
        Ok(Self {
            writer: Mutex::new(Some(tx)),
            readers: Arc::new(readers),
            path,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let guard = self
                .writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender.send(make(tx)).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
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
        .map_err(|e| unavailable(format!("read task failed: {e}")))?
    }
}

fn thread_index() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    thread::current().id().hash(&mut h);
    usize::try_from(h.finish() % 1024).unwrap_or(0)
}

const COLUMNS: &str = "seq, id, request_id, input, body";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        seq: row.get(0)?,
        id: row.get(1)?,
        request_id: row.get(2)?,
        input: row.get(3)?,
        body: row.get(4)?,
    })
}

struct RawRow {
    seq: i64,
    id: String,
    request_id: Option<String>,
    input: Vec<u8>,
    body: Vec<u8>,
}

impl RawRow {
    fn decode(self) -> Result<OperationRecord, StoreError> {
        decode_record(self.seq, self.id, self.request_id, &self.input, &self.body)
    }
}

/// The longest the writer lingers for more commands before committing.
const MAX_LINGER: Duration = Duration::from_micros(500);

/// Commits between two checkpoint requests.
const COMMITS_PER_CHECKPOINT: u32 = 256;

/// Copies the WAL back into the database when the writer asks, concurrently with commits
/// (PASSIVE: it never blocks the writer or readers). Blocks on its channel when idle.
fn checkpointer(conn: Connection, rx: mpsc::Receiver<()>) {
    while rx.recv().is_ok() {
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::warn!(error = %e, "WAL checkpoint failed; it will be retried");
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    checkpoint: mpsc::SyncSender<()>,
) {
    let mut commits_since_checkpoint = 0u32;
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
        if !batch.is_empty() {
            apply_batch(&mut conn, batch);
        }
        last_commit = started.elapsed();
        commits_since_checkpoint += 1;
        if commits_since_checkpoint >= COMMITS_PER_CHECKPOINT {
            // A full channel means a checkpoint is already pending: nothing to add.
            let _ = checkpoint.try_send(());
            commits_since_checkpoint = 0;
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
    // once with SQLITE_BUSY when another connection has written meanwhile.
    match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => {
            let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
            let mut batch = batch.into_iter();
            for cmd in batch.by_ref() {
                finishes.push(apply(&tx, cmd));
                if tx.is_autocommit() {
                    // SQLite rolled the whole transaction back (e.g. disk full): nothing of
                    // this batch is stored, so every command fails, and none may run outside
                    // the transaction.
                    break;
                }
            }
            let commit = if tx.is_autocommit() {
                Err(StoreError::Unavailable(
                    "the store rolled back a write (is the disk full?)".to_owned(),
                ))
            } else {
                tx.commit().map_err(sql_error)
            };
            for finish in finishes {
                finish(&commit);
            }
            for cmd in batch {
                fail(cmd)(&commit);
            }
        }
        Err(e) => {
            let failed = Err(sql_error(e));
            for cmd in batch {
                fail(cmd)(&failed);
            }
        }
    }
}

/// The answer to a command that was not applied: the failed commit's error is what is sent
/// (the placeholder result never is).
fn fail(cmd: Command) -> Finish {
    match cmd {
        Command::Insert(_, tx) => reply(tx, Err(StoreError::Closed)),
        Command::Update(_, tx) | Command::Close(tx) => reply(tx, Ok(())),
        Command::Delete(_, tx) => reply(tx, Ok(None)),
        Command::Sweep(_, _, tx) => reply(tx, Ok(Swept::default())),
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, cmd: Command) -> Finish {
    match cmd {
        Command::Insert(r, reply_to) => reply(reply_to, insert(tx, &r)),
        Command::Update(r, reply_to) => reply(reply_to, update(tx, &r)),
        Command::Delete(id, reply_to) => reply(reply_to, delete_done(tx, &id)),
        Command::Sweep(before, keep, reply_to) => reply(reply_to, sweep(tx, before, keep)),
        Command::Close(reply_to) => reply(reply_to, Ok(())),
    }
}

fn insert(tx: &rusqlite::Transaction<'_>, r: &RowImage) -> Result<InsertOutcome, StoreError> {
    if let Some(rid) = &r.request_id {
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM operations WHERE request_id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![rid], row_to_record).optional())
            .map_err(unavailable)?;
        if let Some(row) = existing {
            return Ok(InsertOutcome::Existing(row));
        }
    }
    tx.prepare_cached(
        "INSERT INTO operations (id, request_id, kind, done, state, error_code, create_time, \
         update_time, end_time, input, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
        ])
    })
    .map_err(sql_error)?;
    Ok(InsertOutcome::New(tx.last_insert_rowid()))
}

fn update(tx: &rusqlite::Transaction<'_>, r: &RowImage) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE operations SET done = ?2, state = ?3, error_code = ?4, update_time = ?5, \
         end_time = ?6, body = ?7 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            r.id,
            r.done,
            r.state,
            r.error_code,
            r.update_time,
            r.end_time,
            r.body
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

fn delete_done(
    tx: &rusqlite::Transaction<'_>,
    id: &OperationId,
) -> Result<Option<bool>, StoreError> {
    let done: Option<bool> = tx
        .prepare_cached("SELECT done FROM operations WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![id.as_str()], |row| row.get(0))
                .optional()
        })
        .map_err(unavailable)?;
    match done {
        None => Ok(None),
        Some(false) => Ok(Some(false)),
        Some(true) => {
            tx.execute("DELETE FROM operations WHERE id = ?1", params![id.as_str()])
                .map_err(unavailable)?;
            Ok(Some(true))
        }
    }
}

fn sweep(
    tx: &rusqlite::Transaction<'_>,
    finished_before: SystemTime,
    keep_at_most: Option<usize>,
) -> Result<Swept, StoreError> {
    let mut deleted = tx
        .prepare_cached("DELETE FROM operations WHERE done = 1 AND end_time < ?1")
        .and_then(|mut s| s.execute(params![micros(finished_before)]))
        .map_err(sql_error)?;
    let mut finished: usize = tx
        .query_row("SELECT COUNT(*) FROM operations WHERE done = 1", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| usize::try_from(n).unwrap_or(0))
        .map_err(sql_error)?;
    if let Some(keep) = keep_at_most {
        if finished > keep {
            let excess = finished - keep;
            let n = tx
                .execute(
                    "DELETE FROM operations WHERE seq IN (SELECT seq FROM operations \
                     WHERE done = 1 ORDER BY end_time, seq LIMIT ?1)",
                    params![sql_limit(excess)],
                )
                .map_err(sql_error)?;
            deleted += n;
            finished -= n;
        }
    }
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

/// Rows read per query while scanning for filter matches.
const SCAN_CHUNK: usize = 1024;

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `seq`s of up to `limit` rows after `after` that match `filter`, judged on the indexed
/// columns alone (no body is decoded).
fn scan_matching(
    conn: &Connection,
    filter: &Filter,
    after: i64,
    limit: usize,
) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, id, kind, done, state, error_code, create_time, update_time \
             FROM operations WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(unavailable)?;
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let mut rows = stmt
            .query(params![cursor, sql_limit(SCAN_CHUNK)])
            .map_err(unavailable)?;
        let mut seen = 0usize;
        while let Some(row) = rows.next().map_err(unavailable)? {
            seen += 1;
            let seq: i64 = row.get(0).map_err(unavailable)?;
            cursor = seq;
            let id: String = row.get(1).map_err(unavailable)?;
            let kind: String = row.get(2).map_err(unavailable)?;
            let state: i32 = row.get(4).map_err(unavailable)?;
            let state = State::from_i32(state)
                .ok_or_else(|| StoreError::Corrupt(format!("operations/{id}: state {state}")))?;
            let fields = FilterFields {
                name: &format!("operations/{id}"),
                done: row.get(3).map_err(unavailable)?,
                kind: &kind,
                state: state.as_str(),
                error_code: row.get(5).map_err(unavailable)?,
                create_time: from_micros(row.get(6).map_err(unavailable)?),
                update_time: from_micros(row.get(7).map_err(unavailable)?),
            };
            if filter.matches(&fields) {
                out.push(seq);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        if seen < SCAN_CHUNK {
            return Ok(out);
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(&self, mut record: OperationRecord) -> Result<Inserted, StoreError> {
        let image = RowImage::of(&record, true);
        match self.send(|tx| Command::Insert(image, tx)).await? {
            InsertOutcome::New(seq) => {
                record.seq = seq;
                Ok(Inserted::New(record))
            }
            InsertOutcome::Existing(row) => Ok(Inserted::Existing(row.decode()?)),
        }
    }

    async fn update(&self, record: &OperationRecord) -> Result<(), StoreError> {
        let image = RowImage::of(record, false);
        self.send(|tx| Command::Update(image, tx)).await
    }

    async fn get(&self, id: &OperationId) -> Result<Option<OperationRecord>, StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"))
                .and_then(|mut s| s.query_row(params![id], row_to_record).optional())
                .map_err(unavailable)?
                .map(RawRow::decode)
                .transpose()
        })
        .await
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
        let filter = filter.clone();
        self.read(move |conn| {
            if filter.is_empty() {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM operations WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                    ))
                    .map_err(unavailable)?;
                let rows: Vec<RawRow> = stmt
                    .query_map(params![after, sql_limit(limit)], row_to_record)
                    .and_then(Iterator::collect)
                    .map_err(unavailable)?;
                return rows.into_iter().map(RawRow::decode).collect();
            }
            // Evaluate the filter on the indexed columns and decode only the matches.
            let matches = scan_matching(conn, &filter, after, limit)?;
            let mut get = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM operations WHERE seq = ?1"))
                .map_err(unavailable)?;
            let mut out = Vec::with_capacity(matches.len());
            for seq in matches {
                // A row deleted since the scan is simply skipped.
                if let Some(row) = get
                    .query_row(params![seq], row_to_record)
                    .optional()
                    .map_err(unavailable)?
                {
                    out.push(row.decode()?);
                }
            }
            Ok(out)
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

    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM operations WHERE done = 0 ORDER BY seq"
                ))
                .map_err(unavailable)?;
            let rows: Vec<RawRow> = stmt
                .query_map([], row_to_record)
                .and_then(Iterator::collect)
                .map_err(unavailable)?;
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

    /// The SQLite store keeps the store contract.
    #[tokio::test]
    async fn conforms() {
        let dirs = Arc::new(Mutex::new(Vec::new()));
        crate::store::conformance::run_all(|| {
            let dirs = Arc::clone(&dirs);
            async move {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
                dirs.lock().unwrap().push(dir);
                store
            }
        })
        .await;
    }

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
}
