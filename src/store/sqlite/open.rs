//! Opening the store: the data directory's lock, connections that wait patiently for each
//! other, how SQLite's errors map to store errors, and the reads that run on the readers.

use super::*;

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
pub(super) const BUSY_PATIENCE: Duration = Duration::from_secs(5);

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(e.to_string())
}

/// Maps a SQLite error: damage is [`StoreError::Corrupt`] (it will not heal by retrying); a
/// full disk (or `--max-db-size`) is named plainly; the rest is unavailable.
pub(super) fn sql_error(e: rusqlite::Error) -> StoreError {
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
pub(super) fn wait_patiently(conn: &mut Connection, patience: Duration) -> rusqlite::Result<()> {
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
pub(super) fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
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
pub(super) const WRITER_STATEMENTS: usize = 128;

/// Opens a connection to `path` with `flags` that waits for locks for up to `patience`.
pub(super) fn connect(
    path: &Path,
    flags: OpenFlags,
    patience: Duration,
) -> Result<Connection, StoreError> {
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
        wait_patiently(&mut conn, super::wal::WRITER_PATIENCE).map_err(sql_error)?;
        let wal = WalBound::new(
            &mut conn,
            options.wal_limit_bytes.max(1 << 20),
            checkpoint_tx,
            copying,
        )
        .map_err(sql_error)?;
        // Room for every statement the writer runs, two per registered kind among them (see
        // `claims::KindSql`): an evicted statement is prepared again.
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
    pub(super) async fn read_one(
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
    pub(super) fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
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

    pub(super) async fn send<T>(
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

    pub(super) async fn read<T: Send + 'static>(
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

pub(super) fn thread_index() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    thread::current().id().hash(&mut h);
    usize::try_from(h.finish() % 1024).unwrap_or(0)
}
