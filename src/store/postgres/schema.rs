//! The PostgreSQL schema and its versioned migrations, embedded in the binary.
//!
//! Migrations run in order, each in its own transaction, under a session advisory lock, so
//! nodes that start at once apply each one exactly once (the others wait, then find it
//! applied). `oprun_schema` records the version; a database newer than this build is refused.
//!
//! # Version 1
//! `operations` keeps each operation's body (its wire `Operation`) next to the columns that
//! a claim, a cancel request or a fenced write change, as the SQLite schema does, and:
//! * `seq` comes from the `seq` counter in `oprun_counters`, taken by an `UPDATE` in the
//!   inserting statement. The row lock it takes is held until commit, so inserts commit in
//!   `seq` order: a reader that sees an operation sees every one with a lower `seq` (paging
//!   by `seq` never skips one that commits late, which a plain sequence would allow).
//! * `changed_by` is the id of the transaction that last changed the row (an `xid8`, as a
//!   `bigint`): the change feed reads rows whose `changed_by` is below the oldest transaction
//!   still running, so a change that commits late is never passed by a follower.
//! * `nodes` holds each node's lease, renewed by one statement per node.
//! * every insert or update of an operation sends a notification on `oprun_changes` (its id
//!   and version: a few bytes), delivered at commit to the nodes that `LISTEN`, which then
//!   read the feed.
//!
//! # Version 2
//! One notification per statement instead of one per row: a group-committed insert or write
//! of hundreds of operations sent hundreds (each queued, delivered to every listener and
//! each waking its feed read) where one wake-up says the same. The payload is the id and
//! version of one of the rows and how many the statement changed.

use tokio_postgres::Client;

use super::pg_error;
use crate::store::StoreError;

/// The schema version this build writes.
pub const VERSION: i32 = 9;

/// The key of the advisory lock migrations hold (any constant shared by every build).
const MIGRATION_LOCK: i64 = 0x6f70_7275_6e5f_6d67; // "oprun_mg"

/// Migration `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE operations (
    seq               BIGINT PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    request_id        TEXT UNIQUE,
    kind              TEXT NOT NULL,
    done              SMALLINT NOT NULL,
    state             INTEGER NOT NULL,
    error_code        INTEGER,
    create_time       BIGINT NOT NULL,
    update_time       BIGINT NOT NULL,
    end_time          BIGINT,
    input             BYTEA NOT NULL,
    body              BYTEA NOT NULL,
    version           BIGINT NOT NULL,
    owner             TEXT,
    attempt           INTEGER NOT NULL,
    start_time        BIGINT,
    next_attempt_time BIGINT,
    deadline          BIGINT,
    cancel_requested  BOOLEAN NOT NULL,
    due               BIGINT,
    changed_by        BIGINT NOT NULL
);
CREATE INDEX operations_unfinished ON operations(seq) WHERE done = 0;
CREATE INDEX operations_ended ON operations(end_time) WHERE done = 1;
CREATE INDEX operations_end_state ON operations(state, seq) WHERE done = 1;
CREATE INDEX operations_by_kind ON operations(kind, seq);
CREATE INDEX operations_failed ON operations(error_code, seq) WHERE error_code IS NOT NULL;
CREATE INDEX operations_queue ON operations(kind, due, seq) WHERE state = 1;
CREATE INDEX operations_owner ON operations(owner) WHERE state = 2;
CREATE INDEX operations_deadline ON operations(deadline)
    WHERE state = 1 AND deadline IS NOT NULL;
CREATE INDEX operations_changes ON operations(changed_by, seq);
CREATE TABLE oprun_counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO oprun_counters (name, value) VALUES ('seq', 0);
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    lease_until BIGINT NOT NULL
);
CREATE FUNCTION oprun_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('oprun_changes', NEW.id || ' ' || NEW.version);
    RETURN NULL;
END
$$;
CREATE TRIGGER operations_notify AFTER INSERT OR UPDATE ON operations
    FOR EACH ROW EXECUTE FUNCTION oprun_notify();
",
    "
DROP TRIGGER operations_notify ON operations;
DROP FUNCTION oprun_notify();
CREATE FUNCTION oprun_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    one  RECORD;
    rows BIGINT;
BEGIN
    SELECT count(*) INTO rows FROM changed;
    IF rows > 0 THEN
        SELECT id, version INTO one FROM changed LIMIT 1;
        PERFORM pg_notify('oprun_changes', one.id || ' ' || one.version || ' ' || rows);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER operations_inserted_notify AFTER INSERT ON operations
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION oprun_notify_changed();
CREATE TRIGGER operations_updated_notify AFTER UPDATE ON operations
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION oprun_notify_changed();
",
    // Filters with a `create_time` lower bound: the planner reads recent operations through
    // it rather than walking `seq` past every older one.
    "
CREATE INDEX operations_created ON operations(create_time);
",
    // Kinds declared by workers, and worker sessions (each an encoded message by name).
    "
CREATE TABLE kinds (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE sessions (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
",
    // Priorities (the claim's order: highest first, then oldest due) and unique keys (one
    // unfinished operation per kind and key). Both are in the body too; neither changes
    // once inserted.
    "
ALTER TABLE operations ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN unique_key TEXT;
CREATE INDEX operations_ready ON operations(kind, priority DESC, due, seq) WHERE state = 1;
CREATE UNIQUE INDEX operations_unique ON operations(kind, unique_key)
    WHERE done = 0 AND unique_key IS NOT NULL;
",
    // Concurrency keys: what runs of each key of a kind is counted by a claim under a limit
    // per key (in the body too; never changes once inserted). Start rates: when each start
    // of a kind with a rate was, and its key, for as long as the rate's period.
    "
ALTER TABLE operations ADD COLUMN concurrency_key TEXT;
CREATE INDEX operations_running_keys ON operations(kind, concurrency_key)
    WHERE state = 2 AND concurrency_key IS NOT NULL;
CREATE TABLE starts (
    kind TEXT NOT NULL,
    key  TEXT,
    at   BIGINT NOT NULL
);
CREATE INDEX starts_by_kind ON starts(kind, at);
",
    // Schedules (see `crate::store::ScheduleRow`), and the schedule that started an
    // operation (in the body too; never changes once inserted), for the filter on it.
    "
ALTER TABLE operations ADD COLUMN schedule TEXT;
CREATE INDEX operations_by_schedule ON operations(schedule, seq) WHERE schedule IS NOT NULL;
CREATE TABLE schedules (
    id      TEXT PRIMARY KEY,
    body    BYTEA NOT NULL,
    wake    BIGINT,
    version BIGINT NOT NULL
);
CREATE INDEX schedules_wake ON schedules(wake) WHERE wake IS NOT NULL;
",
    // The summary's tallies (see `super::tally`).
    super::tally::MIGRATION,
    // `created_max`: the latest `create_time` of the operation's insert and every one before
    // it (the counter of that name), so it only grows with `seq`: the first row whose value
    // reaches a time is where a walk in `seq` order finds the first operation created at or
    // after it. Replaces `operations_created`, whose lists sorted what they found.
    // `created_lag` (a counter) is at least the largest `created_max - create_time`: an
    // operation created before a time has a `created_max` below it plus that, which bounds
    // the walk of an upper bound. Rows a node of an older build inserts have none: a walk
    // goes over all of them.
    "
ALTER TABLE operations ADD COLUMN created_max BIGINT;
UPDATE operations SET created_max = w.latest
    FROM (SELECT seq, max(create_time) OVER (ORDER BY seq) AS latest FROM operations) AS w
    WHERE operations.seq = w.seq;
INSERT INTO oprun_counters (name, value)
    SELECT 'created_max', COALESCE(max(create_time), 0) FROM operations;
INSERT INTO oprun_counters (name, value)
    SELECT 'created_lag', COALESCE(max(created_max - create_time), 0) FROM operations;
CREATE INDEX operations_created_max ON operations(created_max, seq);
CREATE INDEX operations_created_unknown ON operations(seq) WHERE created_max IS NULL;
DROP INDEX IF EXISTS operations_created;
",
];

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The version the database had.
    pub from: i32,
    /// The version it has now.
    pub to: i32,
}

/// Brings the database's schema to [`VERSION`], applying each missing migration in its own
/// transaction, under an advisory lock so that concurrent starters serialise.
///
/// # Errors
/// [`StoreError::Unavailable`] when a statement fails; [`StoreError::Corrupt`] when the
/// database was made by a newer build.
pub async fn migrate(client: &mut Client) -> Result<Migrated, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let result = migrate_locked(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error);
    let migrated = result?;
    unlocked?;
    Ok(migrated)
}

async fn migrate_locked(client: &mut Client) -> Result<Migrated, StoreError> {
    // Made only when missing (under the lock): `IF NOT EXISTS` would send a NOTICE, which
    // the driver logs, at every start.
    let exists = client
        .query_one("SELECT to_regclass('oprun_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?
        .try_get::<_, bool>(0)
        .map_err(pg_error)?;
    if !exists {
        client
            .batch_execute("CREATE TABLE oprun_schema (version INTEGER NOT NULL)")
            .await
            .map_err(pg_error)?;
    }
    let from: i32 = client
        .query_opt("SELECT max(version) FROM oprun_schema", &[])
        .await
        .map_err(pg_error)?
        .map(|row| row.try_get::<_, Option<i32>>(0))
        .transpose()
        .map_err(pg_error)?
        .flatten()
        .unwrap_or(0);
    if from > VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {from}, made by a newer oprun; this build knows \
             versions up to {VERSION}: run the newer build"
        )));
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(from).unwrap_or(0))
    {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO oprun_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    Ok(Migrated { from, to: VERSION })
}
