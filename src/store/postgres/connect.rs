//! Reaching the database: options, the pool, migrations, and how driver errors map to store
//! errors.

use super::*;

/// How long connecting to the database may take.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a call may wait for a pooled connection.
pub(super) const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Maps a driver error to a store error: damaged data is [`StoreError::Corrupt`]; everything
/// else (a lost connection, a full disk, a timeout, a refused statement) is
/// [`StoreError::Unavailable`], worth a retry.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        // The driver's own message ("error connecting to server") hides why: say it.
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    };
    match e.code() {
        Some(c) if *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED => {
            StoreError::Corrupt(text)
        }
        Some(c) if *c == SqlState::DISK_FULL => {
            StoreError::unavailable_because(format!("the store is full: {text}"), e)
        }
        _ => StoreError::unavailable_because(text, e),
    }
}

pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        other => StoreError::unavailable_because(other.to_string(), other),
    }
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            SqlValue::Integer(n) => n.to_sql(ty, out),
            SqlValue::Text(text) => text.as_str().to_sql(ty, out),
            SqlValue::Blob(bytes) => bytes.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        // The filter compiler casts each placeholder to the type of its value.
        *ty == Type::INT8 || *ty == Type::TEXT || *ty == Type::BYTEA
    }

    to_sql_checked!();
}

impl PostgresStore {
    /// Connects to the database at `url` (libpq syntax: `postgres://USER@HOST:PORT/DB` or
    /// `host=… dbname=…`), brings its schema up to date and returns the store.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the URL is malformed or the database cannot be
    /// reached; [`StoreError::Corrupt`] when its schema is newer than this build.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let database = database(url, options.schema.as_deref())?;
        if let Some(schema) = &options.schema {
            let (client, connection) = database
                .config
                .connect(database.tls.clone())
                .await
                .map_err(pg_error)?;
            let driver = tokio::spawn(connection);
            let created = client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_identifier(schema)
                ))
                .await
                .map_err(pg_error);
            drop(client);
            let _ = driver.await;
            created?;
        }
        migrate_with(&database).await?;
        let manager = Manager::from_config(
            database.config.clone(),
            database.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| {
                StoreError::unavailable_because(format!("cannot make a connection pool: {e}"), e)
            })?;
        let signal = tokio::sync::watch::Sender::new(false);
        let stop = CancellationToken::new();
        let listener = tokio::spawn(listen::run(database, signal.clone(), stop.clone()));
        let folder = tokio::spawn(tally::run(pool.clone(), stop.clone()));
        let stats = crate::metrics::CommitStats::default();
        let inserter = inserts::start(pool.clone(), stats.clone());
        let writer = writes::start(pool.clone(), stats.clone());
        Ok(Self {
            pool,
            closed: AtomicBool::new(false),
            signal,
            stop,
            tasks: std::sync::Mutex::new(vec![listener, folder]),
            inserter,
            writer,
            stats,
        })
    }

    pub(super) async fn client(&self) -> Result<Object, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs one statement and returns its rows.
    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&statement, params).await.map_err(pg_error)
    }

    /// The one operation `sql` (a `SELECT` of [`COLUMNS`] with one parameter) finds.
    pub(super) async fn select_one(
        &self,
        sql: &str,
        value: &str,
    ) -> Result<Option<OperationRecord>, StoreError> {
        let rows = self.query(sql, &[&value]).await?;
        rows.first().map(raw).transpose()
    }
}

/// Brings the schema of the database at `url` up to date (what `oprun migrate` runs).
///
/// # Errors
/// As [`PostgresStore::connect`].
pub async fn migrate(url: &str, schema: Option<&str>) -> Result<Migrated, StoreError> {
    migrate_with(&database(url, schema)?).await
}

pub(super) async fn migrate_with(database: &Database) -> Result<Migrated, StoreError> {
    let (mut client, connection) = database
        .config
        .connect(database.tls.clone())
        .await
        .map_err(pg_error)?;
    let driver = tokio::spawn(connection);
    let migrated = schema::migrate(&mut client).await;
    drop(client);
    let _ = driver.await;
    migrated
}

/// Where the database is and how to reach it.
pub(super) struct Database {
    pub(super) config: tokio_postgres::Config,
    /// TLS as the connection string's `sslmode` asks (see [`tls`]).
    pub(super) tls: tokio_postgres_rustls::MakeRustlsConnect,
}

pub(super) fn database(url: &str, schema: Option<&str>) -> Result<Database, StoreError> {
    let (url, mut tls) = tls::split(url)?;
    let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| {
        StoreError::unavailable(format!(
            "not a PostgreSQL connection string ({e}); expected postgres://USER@HOST:PORT/DB"
        ))
    })?;
    if config.get_application_name().is_none() {
        config.application_name("oprun");
    }
    // A database that stops answering is noticed: connections time out, idle ones are probed,
    // and a session that dies inside a transaction (a claim holds the claim lock) has it
    // ended by the server rather than by TCP's two hours.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives_idle(std::time::Duration::from_secs(30));
    let mut options = config.get_options().unwrap_or_default().to_owned();
    options.push_str(" -c idle_in_transaction_session_timeout=60000");
    // Claims read what others committed last (SKIP LOCKED under a stricter isolation fails
    // with serialisation errors), whatever the database's default.
    options.push_str(" -c default_transaction_isolation=read\\ committed");
    if let Some(schema) = schema {
        options.push_str(&format!(" -c search_path={}", quote_identifier(schema)));
    }
    config.options(options.trim_start());
    tls.settle(config.get_ssl_mode());
    config.ssl_mode(tls.driver_mode());
    Ok(Database {
        config,
        tls: tls.connector()?,
    })
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
