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
mod gated;
mod inserts;
mod listen;
pub mod schema;
mod tally;
#[cfg(any(test, feature = "conformance"))]
pub mod testing;
mod tls;
mod writes;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

pub use schema::Migrated;

use super::row::{created_bounds, decode_record, Columns, RowImage, FILTER_COLUMNS};
use super::{
    from_micros, micros, ChangeSignal, Changes, Claim, Claimed, Deadlines, Inserted, NodeLease,
    Store, StoreError, Summary, Swept, Written,
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
    /// Raised by the `LISTEN` connection for every change any node commits.
    signal: Arc<ChangeSignal>,
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

/// The columns a read selects, in [`raw`]'s order.
const COLUMNS: &str = columns!();

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a call may wait for a pooled connection.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The key of the advisory lock claims take turns on.
const CLAIM_LOCK: i64 = 0x6f70_7275_6e5f_636c; // "oprun_cl"

/// The key of the advisory lock a retention sweep holds, so that one node sweeps at a time.
const SWEEP_LOCK: i64 = 0x6f70_7275_6e5f_7377; // "oprun_sw"

/// How many columns [`COLUMNS`] names.
const COLUMN_COUNT: usize = 15;

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

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        other => StoreError::unavailable_because(other.to_string(), other),
    }
}

/// A `usize` count as a SQL `bigint`.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An attempt number as a SQL `int`.
fn attempt_sql(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

/// Reads a row selected with [`COLUMNS`] into a record.
fn raw(row: &Row) -> Result<OperationRecord, StoreError> {
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

fn records(rows: &[Row]) -> Result<Vec<OperationRecord>, StoreError> {
    rows.iter().map(raw).collect()
}

/// Runs [`CLAIM`] for `room` (per kind; `total` in all) on `client` (a connection, or the
/// transaction holding the claim lock), pipelined with the read of when the next queued
/// operation of `claim`'s kinds is due: one round trip. `also` (started by the caller, each
/// with its place in the claim's order: -priority and due) is merged in.
async fn claim_on(
    client: &impl GenericClient,
    claim: &Claim,
    room: &[(&str, usize)],
    total: usize,
    also: Vec<(i64, i64, OperationRecord)>,
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
        operations.push((-i64::from(priority), due, raw(row)?));
    }
    operations.sort_by_key(|(rank, due, r)| (*rank, *due, r.seq));
    let operations = operations.into_iter().map(|(_, _, r)| r).collect();
    let next_due: Option<i64> = next.try_get(0).map_err(pg_error)?;
    Ok(Claimed {
        operations,
        next_due: next_due.map(from_micros),
        held: Vec::new(),
    })
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
        let signal = Arc::new(ChangeSignal::default());
        let stop = CancellationToken::new();
        let listener = tokio::spawn(listen::run(database, Arc::clone(&signal), stop.clone()));
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

    async fn client(&self) -> Result<Object, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs one statement and returns its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&statement, params).await.map_err(pg_error)
    }

    /// The one operation `sql` (a `SELECT` of [`COLUMNS`] with one parameter) finds.
    async fn select_one(
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

async fn migrate_with(database: &Database) -> Result<Migrated, StoreError> {
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
struct Database {
    config: tokio_postgres::Config,
    /// TLS as the connection string's `sslmode` asks (see [`tls`]).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

fn database(url: &str, schema: Option<&str>) -> Result<Database, StoreError> {
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
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

const BY_ID: &str = concat!("SELECT ", columns!(), " FROM operations WHERE id = $1");
const BY_REQUEST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE request_id = $1"
);

/// The unfinished operation of a kind (`$1`) holding a unique key (`$2`).
const BY_UNIQUE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE kind = $1 AND unique_key = $2 AND done = 0"
);

/// How many times an insert refused for a taken request id or unique key looks for the
/// operation that took it, and tries again when it finds none (a unique key's holder ended
/// meanwhile).
const INSERT_TRIES: usize = 5;

/// The answer when an insert was refused again and again and nothing holds what it took.
fn unstored() -> StoreError {
    StoreError::unavailable(
        "an insert was refused for a taken request id or unique key that no operation holds \
         now; retry",
    )
}

/// The operation that holds `row`'s request id, or its kind and unique key, if one does.
async fn taken(
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
const CLAIM: &str = concat!(
    "WITH wanted AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS w(kind, room)), \
     picked AS (SELECT c.seq AS claimed, c.due AS due_at, c.priority AS rank FROM wanted CROSS JOIN LATERAL ( \
         SELECT o.seq, o.due, o.priority FROM operations o \
         WHERE o.state = 1 AND o.kind = wanted.kind AND o.due <= $3 \
         ORDER BY o.priority DESC, o.due, o.seq LIMIT wanted.room FOR UPDATE SKIP LOCKED) c \
       ORDER BY c.priority DESC, c.due, c.seq LIMIT $4) \
     UPDATE operations SET state = 2, owner = $5, start_time = $3, update_time = $3, \
       next_attempt_time = NULL, due = NULL, version = version + 1, changed_by = ",
    this_transaction!(),
    " FROM picked WHERE seq = picked.claimed RETURNING ",
    columns!(),
    ", picked.due_at, picked.rank"
);

/// When the next queued operation of the kinds (`$1`) is due, after now (`$2`).
const NEXT_DUE: &str = "SELECT min(due) FROM operations \
     WHERE state = 1 AND kind = ANY($1::text[]) AND due > $2";

const UNFINISHED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE done = 0 ORDER BY seq"
);

/// RUNNING work of other nodes whose lease ended (`$1` this node, `$2` now), oldest first.
/// Read every second by every node: through `operations_owner` (the RUNNING rows alone), as
/// `seq + 0` makes the planner do; ordered by `seq`, it walked the whole table in `seq` order
/// looking for them (325 ms at 300,000 operations).
const ORPHANS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations o WHERE o.state = 2 AND o.owner IS DISTINCT FROM $1 AND NOT EXISTS \
     (SELECT 1 FROM nodes n WHERE n.id = o.owner AND n.lease_until >= $2) \
     ORDER BY o.seq + 0 LIMIT $3"
);

const DEADLINES_PASSED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM operations WHERE state = 1 AND deadline IS NOT NULL AND deadline <= $1 \
     ORDER BY deadline, seq LIMIT $2"
);

/// The feed's head: the position before the oldest running transaction.
const HEAD: &str = concat!("SELECT ", settled!(), " - 1");

/// A page of the feed: changes of settled transactions after the position.
const CHANGES: &str = concat!(
    "SELECT ",
    columns!(),
    ", changed_by FROM operations WHERE changed_by > $1 AND changed_by < ",
    settled!(),
    " ORDER BY changed_by, seq LIMIT $2"
);

/// The rest of one transaction's changes, after a page that ended inside them.
const CHANGES_REST: &str = concat!(
    "SELECT ",
    columns!(),
    ", changed_by FROM operations WHERE changed_by = $1 AND seq > $2 ORDER BY seq"
);

/// The query of `list`: rows after a `seq` (`$1`) and before another (`$3`) that match a
/// filter (its SQL in `clause`, from `$4`), in `seq` order, at most `$2`.
fn list_sql(clause: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM operations WHERE seq > $1 AND seq < $3 AND ({clause}) \
         ORDER BY seq LIMIT $2"
    )
}

/// Runs a listing query whose parameters are a `seq` (`$1`), the limit (`$2`), `more`
/// (`$3`…), then the filter's, and decodes its rows. Not prepared and cached: clients'
/// filters have endless shapes, and each prepared statement stays on its connection (and the
/// server) for good.
async fn page(
    client: &Object,
    sql: &str,
    seq: i64,
    more: &[i64],
    filter: &[SqlValue],
    limit: usize,
) -> Result<Vec<OperationRecord>, StoreError> {
    let limit = count(limit);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(filter.len() + 2);
    params.push(&seq);
    params.push(&limit);
    params.extend(more.iter().map(|p| p as &(dyn ToSql + Sync)));
    params.extend(filter.iter().map(|p| p as &(dyn ToSql + Sync)));
    let rows = client.query(sql, &params).await.map_err(pg_error)?;
    records(&rows)
}

/// Takes the advisory lock `key` until the end of `tx`, if no other session holds it:
/// whether it did.
async fn try_xact_lock(
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
async fn created_window(
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
        let asked = std::time::Instant::now();
        let mut client = self.client().await?;
        let gated = claim
            .kinds
            .iter()
            .any(|(kind, room)| *room > 0 && claim.gated(kind));
        if claim.limits.is_none() && !gated {
            // No limit over the cluster: each node claims within its own room, and the claim
            // is one statement (its rows locked with SKIP LOCKED), pipelined with the
            // next-due read: one round trip.
            let room: Vec<(&str, usize)> =
                claim.kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
            return claim_on(&client, claim, &room, claim.total, Vec::new()).await;
        }
        // READ COMMITTED whatever the database's default: the count below must see what
        // claims committed while this one waited for the lock.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(pg_error)?;
        // Claims under a limit take turns over the cluster, so that what runs (read next,
        // after the lock: each statement reads what was committed before it started) is what
        // the last claim left, and two nodes cannot both take the last room under a limit.
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1)")
            .await
            .map_err(pg_error)?;
        let counted = tx
            .prepare_cached("SELECT kind, count(*) FROM operations WHERE state = 2 GROUP BY kind")
            .await
            .map_err(pg_error)?;
        let (_, counts) =
            tokio::try_join!(tx.query(&lock, &[&CLAIM_LOCK]), tx.query(&counted, &[]))
                .map_err(pg_error)?;
        // What it starts starts once it holds the lock, not when the claim was asked: a claim
        // that waited for another node's must not date its starts before what that one ended
        // (the run of a key would seem to overlap the one before it).
        let late = |claim: &Claim| Claim {
            now: crate::model::time::to_micros(claim.now + asked.elapsed()),
            ..claim.clone()
        };
        let asked_claim = claim;
        let claim = &late(asked_claim);
        let mut running = std::collections::HashMap::new();
        for row in &counts {
            let kind: String = row.try_get(0).map_err(pg_error)?;
            let n: i64 = row.try_get(1).map_err(pg_error)?;
            running.insert(kind, usize::try_from(n).unwrap_or(usize::MAX));
        }
        let (room, total) = if claim.limits.is_none() {
            (claim.kinds.clone(), claim.total)
        } else {
            claim.limits.narrow(&claim.kinds, claim.total, &running)
        };
        if !gated {
            let room: Vec<(&str, usize)> = room.iter().map(|(k, n)| (k.as_str(), *n)).collect();
            let claimed = claim_on(&tx, claim, &room, total, Vec::new()).await?;
            tx.commit().await.map_err(pg_error)?;
            return Ok(claimed);
        }
        // Some kind has a limit per concurrency key or a start rate: every kind's due work is
        // read in the claim's order, passing over what its gates refuse; the first `total`
        // over all kinds (highest priority first, whatever the kind) start.
        let mut gates = Vec::with_capacity(room.len());
        for (kind, _) in &room {
            gates.push(gated::gates(&tx, claim, kind, micros(claim.now)).await?);
        }
        // What starts is dated after the reads that let it start: an end committed while
        // this claim held the lock (and so seen by its counts) is never after its start, and
        // the starts a rate counts are dated alike.
        let claim = &late(asked_claim);
        let mut picked = Vec::new();
        let mut held = Vec::new();
        let mut rate_next: Option<SystemTime> = None;
        for ((kind, n), gates) in room.iter().zip(gates) {
            let chosen = gated::pick(&tx, kind, gates, (*n).min(total), micros(claim.now)).await?;
            if let Some(at) = chosen.rate_next {
                held.push(kind.clone());
                rate_next = Some(rate_next.map_or(at, |n| n.min(at)));
            }
            picked.extend(chosen.seqs.into_iter().map(|p| (kind.clone(), p)));
        }
        gated::keep_first(&mut picked, total);
        let started = gated::start(&tx, claim, &picked).await?;
        // No more to start: the statement reads when the next queued operation is due.
        let mut claimed = claim_on(&tx, claim, &[], 0, started).await?;
        tx.commit().await.map_err(pg_error)?;
        claimed.held = held;
        claimed.next_due = claimed.next_due.into_iter().chain(rate_next).min();
        Ok(claimed)
    }

    async fn heartbeat(&self, node: &str, lease_until: SystemTime) -> Result<(), StoreError> {
        self.query(
            "WITH gone AS (DELETE FROM nodes n WHERE n.lease_until < $3 AND n.id <> $1 \
               AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.state = 2 AND o.owner = n.id)) \
             INSERT INTO nodes (id, lease_until) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
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
                "SELECT min(deadline) FROM operations WHERE state = 1 \
                 AND deadline IS NOT NULL AND deadline > $1",
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
        let (created_after, created_before) = created_bounds(filter);
        let filter = filter.to_postgres(&FILTER_COLUMNS, 4);
        let client = self.client().await?;
        // Bounds on `create_time`: the walk goes where the matches can be.
        let Some((floor, ceiling)) = created_window(&client, created_after, created_before).await?
        else {
            return Ok(Vec::new());
        };
        let sql = list_sql(&filter.clause);
        page(
            &client,
            &sql,
            after.max(floor),
            &[ceiling],
            &filter.params,
            limit,
        )
        .await
    }

    async fn list_newest(
        &self,
        before: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let (created_after, created_before) = created_bounds(filter);
        let filter = filter.to_postgres(&FILTER_COLUMNS, 4);
        let client = self.client().await?;
        // With bounds on `create_time`, from and down to where the matches can be.
        let Some((floor, ceiling)) = created_window(&client, created_after, created_before).await?
        else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM operations WHERE seq < $1 AND seq > $3 AND ({}) \
             ORDER BY seq DESC LIMIT $2",
            filter.clause
        );
        page(
            &client,
            &sql,
            before.min(ceiling),
            &[floor],
            &filter.params,
            limit,
        )
        .await
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

    fn change_signal(&self) -> Option<Arc<ChangeSignal>> {
        Some(Arc::clone(&self.signal))
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

/// A schedule's row, from `id, body, wake, version`.
fn schedule_row(row: &tokio_postgres::Row) -> Result<crate::store::ScheduleRow, StoreError> {
    Ok(crate::store::ScheduleRow {
        id: row.try_get(0).map_err(pg_error)?,
        body: row.try_get(1).map_err(pg_error)?,
        wake: row.try_get(2).map_err(pg_error)?,
        version: row.try_get(3).map_err(pg_error)?,
    })
}

#[cfg(test)]
mod tests {
    use super::testing::TestDatabase;
    use super::*;

    // The PostgreSQL store keeps the store contract, feed included; each check has a
    // database of its own, and each store it asks for is a fresh schema of it.
    crate::store_conformance_tests!(
        mod conforms,
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)],
        make: {
            let db = Arc::new(TestDatabase::create("conformance").await);
            let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            move || {
                let n = made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let db = Arc::clone(&db);
                async move {
                    let options = PostgresOptions::default()
                        .pool_size(4)
                        .schema(format!("store_{n}"));
                    PostgresStore::connect(&db.url(), options)
                        .await
                        .expect("connect")
                }
            }
        },
        feed
    );

    /// The summary two nodes keep while both change operations at once is a full count,
    /// before and after the deltas are folded in (and the fold leaves none). A database of
    /// the version before the tallies (changed since without them) gets them filled from a
    /// full count when a node of this build opens it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_summary_two_nodes_keep_is_a_full_count() {
        use crate::store::conformance::{churn, counted_summaries, summaries};
        let db = TestDatabase::create("tally").await;
        let url = db.url();
        let connect = || PostgresStore::connect(&url, PostgresOptions::default());
        let (a, b) = (connect().await.expect("a"), connect().await.expect("b"));
        tokio::join!(churn(&a, "x", 120), churn(&b, "x", 120), churn(&b, "y", 60));
        let swept = b
            .sweep(SystemTime::UNIX_EPOCH, Some(100))
            .await
            .expect("sweep");
        assert_eq!(swept.finished, Some(100), "the cap counts from the tallies");
        let want = counted_summaries(&a).await;
        assert_eq!(summaries(&a).await, want, "before the fold, on a");
        assert_eq!(summaries(&b).await, want, "before the fold, on b");
        let client = a.client().await.expect("client");
        let pending = |sql: &'static str| {
            let client = &client;
            async move {
                let n: i64 = client.query_one(sql, &[]).await.expect("count").get(0);
                n
            }
        };
        assert!(pending("SELECT count(*) FROM tally_deltas").await > 0);
        while tally::fold(&a.pool).await.expect("fold") > 0 {}
        assert_eq!(pending("SELECT count(*) FROM tally_deltas").await, 0);
        assert_eq!(summaries(&b).await, want, "after the fold");

        client
            .batch_execute(
                "DROP TRIGGER operations_tally_inserted ON operations; \
                 DROP TRIGGER operations_tally_updated ON operations; \
                 DROP TRIGGER operations_tally_deleted ON operations; \
                 DROP FUNCTION oprun_tally_inserted(); DROP FUNCTION oprun_tally_updated(); \
                 DROP FUNCTION oprun_tally_deleted(); \
                 DROP TABLE tally_counts, tally_ends, tally_deltas; \
                 ALTER TABLE operations DROP COLUMN created_max; \
                 DELETE FROM oprun_counters WHERE name IN ('created_max', 'created_lag'); \
                 DELETE FROM oprun_schema WHERE version >= 8; \
                 DELETE FROM operations WHERE seq % 7 = 0;",
            )
            .await
            .expect("back to version 7, and a change no tally saw");
        drop(client);
        a.close().await.expect("close");
        b.close().await.expect("close");
        let c = connect().await.expect("c");
        assert_eq!(summaries(&c).await, counted_summaries(&c).await, "filled");
    }

    /// Paging by `seq` while eight connections insert: every page resumes after the last
    /// `seq` it showed, and the pages together show every operation once, in order. (With
    /// `seq` from a plain sequence, a later value can commit first and a page then passes the
    /// earlier one for good.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paging_under_concurrent_inserts_never_skips_or_repeats() {
        use std::collections::HashSet;
        let db = TestDatabase::create("paging").await;
        let store = Arc::new(
            PostgresStore::connect(
                &db.url(),
                PostgresOptions {
                    pool_size: 10,
                    schema: None,
                },
            )
            .await
            .expect("connect"),
        );
        let stop = CancellationToken::new();
        let inserters: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    while !stop.is_cancelled() {
                        let r =
                            OperationRecord::new_queued("sleep".into(), Default::default(), None);
                        ids.push(r.id.clone());
                        store.insert(r).await.expect("insert");
                    }
                    ids
                })
            })
            .collect();
        let everything = Filter::parse("").expect("the empty filter");
        let mut seen = Vec::new();
        let mut after = 0;
        let page = |after: i64| {
            let store = Arc::clone(&store);
            let everything = everything.clone();
            async move { store.list(after, &everything, 3).await.expect("list") }
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < until {
            for r in page(after).await {
                after = r.seq;
                seen.push((r.seq, r.id));
            }
        }
        stop.cancel();
        let mut inserted = HashSet::new();
        for task in inserters {
            inserted.extend(task.await.expect("an inserter"));
        }
        loop {
            let rest = page(after).await;
            if rest.is_empty() {
                break;
            }
            for r in rest {
                after = r.seq;
                seen.push((r.seq, r.id));
            }
        }
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "pages repeat or go back"
        );
        let shown: HashSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
        let skipped = inserted.difference(&shown).count();
        assert_eq!(
            skipped,
            0,
            "{skipped} of {} operations were never shown",
            inserted.len()
        );
        assert!(inserted.len() > 100, "only {} inserts", inserted.len());
    }

    /// A List with a selective filter reads an index, never the whole table: the plan
    /// PostgreSQL makes for each (with statistics over 20,000 operations) neither scans the
    /// table nor walks it in `seq` order testing each row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn selective_filters_read_an_index() {
        let db = TestDatabase::create("plans").await;
        let store = PostgresStore::connect(&db.url(), PostgresOptions::default())
            .await
            .expect("connect");
        let client = store.client().await.expect("a connection");
        // Ten common kinds and a rare one; nine in ten finished (one in a hundred FAILED with
        // code 5), the rest queued or running.
        client
            .batch_execute(
                "INSERT INTO operations (seq, id, request_id, kind, done, state, error_code, \
                 create_time, update_time, end_time, input, body, version, owner, attempt, \
                 cancel_requested, due, created_max, changed_by) \
                 SELECT n, 'op' || n, NULL, \
                   CASE WHEN n % 1000 = 7 THEN 'rare' ELSE 'k' || (n % 10) END, \
                   CASE WHEN n % 10 = 0 THEN 0 ELSE 1 END, \
                   CASE WHEN n % 10 = 0 THEN 1 + n % 2 WHEN n % 100 = 1 THEN 4 ELSE 3 END, \
                   CASE WHEN n % 100 = 1 THEN 5 END, n, n, \
                   CASE WHEN n % 10 = 0 THEN NULL ELSE n END, '', '', 1, NULL, 1, FALSE, \
                   CASE WHEN n % 20 = 0 THEN n END, n, 1 \
                 FROM generate_series(1, 20000) AS n; \
                 ANALYZE operations;",
            )
            .await
            .expect("fill");
        for text in [
            r#"kind = "rare""#,
            "done = false",
            "error.code = 5",
            "state = FAILED",
            r#"name = "operations/op77""#,
            r#"kind = "rare" AND done = false"#,
        ] {
            let filter = Filter::parse(text)
                .expect("a filter")
                .to_postgres(&FILTER_COLUMNS, 4);
            let (after, limit, until) = (0_i64, 100_i64, i64::MAX);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit, &until];
            params.extend(filter.params.iter().map(|p| p as &(dyn ToSql + Sync)));
            let plan = explain(&client, &list_sql(&filter.clause), &params).await;
            // Neither the table nor the whole of it in `seq` order with the filter on top.
            let walks_all = plan.contains("operations_pkey") && plan.contains("Filter");
            assert!(!plan.contains("Seq Scan") && !walks_all, "{text}: {plan}");
        }

        // The last 2,000 created (create_time n µs): the walk starts at the first, found by
        // one seek of `operations_created_max`, not by walking the 18,000 before it.
        let since = 18_001_i64;
        let window = |after: Option<i64>, before: Option<i64>| {
            let client = &client;
            async move { created_window(client, after, before).await.expect("window") }
        };
        assert_eq!(window(Some(since), None).await, Some((18_000, i64::MAX)));
        assert_eq!(window(Some(30_000), None).await, None);
        // No lag: an upper bound ends the walk at the first created at it.
        assert_eq!(window(None, Some(2_001)).await, Some((0, 2_001)));
        assert_eq!(window(Some(500), Some(2_001)).await, Some((499, 2_001)));
        let plan = explain(
            &client,
            "SELECT seq FROM operations WHERE created_max >= $1 ORDER BY created_max, seq LIMIT 1",
            &[&since],
        )
        .await;
        assert!(plan.contains("operations_created_max"), "{plan}");
        assert!(
            !plan.contains("Seq Scan") && !plan.contains("Sort"),
            "{plan}"
        );
        let text = format!(
            "create_time >= \"{}\"",
            prost_types::Timestamp::from(from_micros(since))
        );
        let filter = Filter::parse(&text)
            .expect("a filter")
            .to_postgres(&FILTER_COLUMNS, 4);
        let (after, limit, until) = (18_000_i64, 100_i64, i64::MAX);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit, &until];
        params.extend(filter.params.iter().map(|p| p as &(dyn ToSql + Sync)));
        let seqs: Vec<i64> = client
            .query(&list_sql(&filter.clause), &params)
            .await
            .expect("list")
            .iter()
            .map(|row| row.get("seq"))
            .collect();
        assert_eq!(seqs, (18_001..=18_100).collect::<Vec<i64>>());

        // The look for other nodes' left work, every second, reads the RUNNING rows alone,
        // even where they are many enough (10%) for the planner to expect to meet a hundred
        // soon walking `seq` in order.
        client
            .batch_execute(
                "UPDATE operations SET state = 2, owner = 'gone' WHERE seq % 10 = 3; \
                 ANALYZE operations;",
            )
            .await
            .expect("running rows");
        let (node, now, limit) = ("n", 0_i64, 100_i64);
        let plan = explain(&client, ORPHANS, &[&node, &now, &limit]).await;
        assert!(plan.contains("operations_owner"), "{plan}");
        assert!(!plan.contains("operations_pkey"), "{plan}");
    }

    /// The plan PostgreSQL chooses for `sql` with `params`, its lines joined.
    async fn explain(client: &Object, sql: &str, params: &[&(dyn ToSql + Sync)]) -> String {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {sql}"), params)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get(0))
            .collect();
        plan.join("\n")
    }

    /// While one node sweeps (it holds the sweep lock), another node's sweep removes nothing
    /// and reports what is there; once the first is done, the second sweeps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_node_sweeps_at_a_time() {
        use crate::model::{Change, Fence, Outcome, State};
        let db = TestDatabase::create("sweep").await;
        let store = PostgresStore::connect(&db.url(), PostgresOptions::default())
            .await
            .expect("connect");
        let now = SystemTime::now();
        for _ in 0..3 {
            let r = OperationRecord::new_queued("sleep".into(), Default::default(), None);
            let Inserted::New(r) = store.insert(r).await.expect("insert") else {
                panic!("a new operation");
            };
            let end = Change::Finish {
                state: State::Succeeded,
                outcome: Outcome::Response(Default::default()),
            };
            let done = r.apply(end, now).expect("a legal change");
            store
                .write(&done, &Fence::Version(r.version))
                .await
                .expect("write");
        }
        let later = now + std::time::Duration::from_secs(60);
        let mut other = store.client().await.expect("a connection");
        let holder = other.transaction().await.expect("begin");
        holder
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SWEEP_LOCK])
            .await
            .expect("the sweep lock");
        // Under a cap, so that each counts what it kept.
        let meanwhile = store.sweep(later, Some(100)).await.expect("sweep");
        assert_eq!((meanwhile.deleted, meanwhile.finished), (0, Some(3)));
        holder.rollback().await.expect("release");
        let after = store.sweep(later, Some(100)).await.expect("sweep");
        assert_eq!((after.deleted, after.finished), (3, Some(0)));
    }

    /// Writes made at once go to the database in groups, each under its own fence: of two
    /// writes of one operation at the version both read, one is applied and the other is
    /// stale and shown what is stored, whether they share a group or not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_keep_each_fence() {
        use crate::model::Change;
        let db = TestDatabase::create("grouped_writes").await;
        let store = PostgresStore::connect(&db.url(), PostgresOptions::default())
            .await
            .expect("connect");
        let mut stored = Vec::new();
        for _ in 0..20 {
            let r = OperationRecord::new_queued("sleep".into(), Default::default(), None);
            match store.insert(r).await.expect("insert") {
                Inserted::New(r) => stored.push(r),
                Inserted::Existing(_) => panic!("no request id was given"),
            }
        }
        let now = SystemTime::now();
        let writes: Vec<_> = stored
            .iter()
            .flat_map(|r| {
                // Twice the same cancel request, as two clients would send it.
                let next = r.apply(Change::RequestCancel, now).expect("cancel");
                [next.clone(), next].map(|next| (next, Fence::Version(r.version)))
            })
            .collect();
        let answers =
            futures::future::join_all(writes.iter().map(|(next, fence)| store.write(next, fence)))
                .await;
        for (pair, r) in answers.chunks(2).zip(&stored) {
            let applied = pair
                .iter()
                .filter(|a| matches!(a, Ok(Written::Applied { .. })))
                .count();
            assert_eq!(applied, 1, "{}: {pair:?}", r.id);
            let stale = pair.iter().find_map(|a| match a {
                Ok(Written::Stale(Some(now))) => Some(now.version),
                _ => None,
            });
            assert_eq!(stale, Some(r.version + 1), "{}: {pair:?}", r.id);
        }
        store.close().await.expect("close");
    }

    /// TLS to the database as libpq's `sslmode` asks: with `verify-full` every connection of
    /// the pool is encrypted and the server's certificate (this machine's PostgreSQL serves
    /// Debian's self-signed one, for `localhost`) is checked against `sslrootcert` and the
    /// host name; reached by an address the certificate does not name, `verify-full` refuses
    /// and `verify-ca` connects; a CA that did not sign it is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_to_the_database_is_verified_as_sslmode_asks() {
        const CA: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
        let db = TestDatabase::create("tls").await;
        let plain = PostgresStore::connect(&db.url(), PostgresOptions::default())
            .await
            .expect("connect");
        let ssl_on: String = plain.query("SHOW ssl", &[]).await.expect("show ssl")[0].get(0);
        plain.close().await.expect("close");
        assert_eq!(
            ssl_on, "on",
            "the test PostgreSQL serves no TLS (ssl = off); this test needs it on, with {CA}"
        );
        let by_name = db.url().replace("127.0.0.1", "localhost");
        let encrypted = |store: &PostgresStore| {
            let pool = store.pool.clone();
            async move {
                let client = pool.get().await.expect("a connection");
                let row = client
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await
                    .expect("pg_stat_ssl");
                row.get::<_, bool>(0)
            }
        };
        let full = PostgresStore::connect(
            &format!("{by_name}?sslmode=verify-full&sslrootcert={CA}"),
            PostgresOptions::default(),
        )
        .await
        .expect("verify-full by the certificate's name connects");
        assert!(
            encrypted(&full).await,
            "verify-full gave a plain connection"
        );
        full.close().await.expect("close");
        assert!(
            !encrypted(&{
                PostgresStore::connect(&db.url(), PostgresOptions::default())
                    .await
                    .expect("connect")
            })
            .await,
            "no sslmode gave TLS"
        );

        let by_address = format!("{}?sslmode=verify-full&sslrootcert={CA}", db.url());
        let refused = PostgresStore::connect(&by_address, PostgresOptions::default())
            .await
            .err()
            .expect("verify-full by an address the certificate does not name");
        assert!(refused.to_string().contains("certificate"), "{refused}");
        let ca = PostgresStore::connect(
            &format!("{}?sslmode=verify-ca&sslrootcert={CA}", db.url()),
            PostgresOptions::default(),
        )
        .await
        .expect("verify-ca by address connects");
        assert!(encrypted(&ca).await, "verify-ca gave a plain connection");
        ca.close().await.expect("close");

        // Public roots did not sign the server's certificate.
        const PUBLIC: &str = "/etc/ssl/certs/ca-certificates.crt";
        let unknown = PostgresStore::connect(
            &format!("{by_name}?sslmode=verify-full&sslrootcert={PUBLIC}"),
            PostgresOptions::default(),
        )
        .await
        .err()
        .expect("a certificate no root signed");
        assert!(unknown.to_string().contains("UnknownIssuer"), "{unknown}");
    }

    /// A database whose default isolation is stricter still gets READ COMMITTED from the
    /// store's connections: a claim outside a transaction of its own (no cluster-wide limit)
    /// must read what other claims committed, not fail with serialisation errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_read_committed_whatever_the_default() {
        let db = TestDatabase::create("isolation").await;
        let (admin, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_isolation = 'serializable'",
                quote_identifier(db.name())
            ))
            .await
            .expect("alter database");
        drop(admin);
        let _ = driver.await;
        let store = PostgresStore::connect(&db.url(), PostgresOptions::default())
            .await
            .expect("connect");
        let rows = store
            .query("SHOW transaction_isolation", &[])
            .await
            .expect("show");
        assert_eq!(rows[0].get::<_, String>(0), "read committed");
        store.close().await.expect("close");
    }

    /// Closing the store closes its connections, the `LISTEN` one included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_closes_every_connection() {
        let db = TestDatabase::create("close").await;
        let url = db.url();
        for _ in 0..3 {
            let store = PostgresStore::connect(&url, PostgresOptions::default())
                .await
                .expect("connect");
            store.find_request("none").await.expect("a read");
            store.close().await.expect("close");
        }
        let (admin, connection) =
            tokio_postgres::connect(&testing::server_url(), tokio_postgres::NoTls)
                .await
                .expect("the server");
        let driver = tokio::spawn(connection);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let open: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&db.name()],
                )
                .await
                .expect("count")
                .get(0);
            if open == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "{open} connections left open after close"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(admin);
        let _ = driver.await;
    }
}
