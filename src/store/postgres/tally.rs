//! The summary's tallies on PostgreSQL (see [`crate::store::tally`]).
//!
//! Every node changes operations at once, so no statement updates a shared count: statement
//! triggers on `operations` append what each statement changed (by kind and state, and by
//! second of end) to `tally_deltas`, in its transaction, which no other writer waits on.
//! Each node folds the deltas into `tally_counts` and `tally_ends` once a second, one node
//! at a time (an advisory lock), in one statement; a summary reads the totals and the
//! deltas not yet folded in one statement, so it sees each change once, folded or not.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::pg_error;
use crate::store::tally::ends_forgotten_before;
use crate::store::StoreError;

/// The migration that adds the tallies and fills them from a full count. The triggers are
/// created first: `CREATE TRIGGER` holds off every other writer until the migration commits,
/// so the count misses none and no change is counted twice.
pub(super) const MIGRATION: &str = "
CREATE TABLE tally_counts (
    kind  TEXT NOT NULL,
    state INTEGER NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (kind, state)
);
CREATE TABLE tally_ends (
    span INTEGER NOT NULL,
    at   BIGINT NOT NULL,
    n    BIGINT NOT NULL,
    PRIMARY KEY (span, at)
);
CREATE TABLE tally_deltas (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT,
    state      INTEGER,
    end_second BIGINT,
    n          BIGINT NOT NULL
);
CREATE FUNCTION oprun_tally_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tally_deltas (kind, state, end_second, n)
    SELECT kind, state, NULL, count(*) FROM added GROUP BY kind, state
    UNION ALL
    SELECT NULL, NULL, end_time / 1000000, count(*) FROM added
        WHERE done = 1 AND end_time IS NOT NULL GROUP BY end_time / 1000000;
    RETURN NULL;
END
$$;
CREATE FUNCTION oprun_tally_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH changed AS (
        SELECT b.kind, b.state AS was, a.state AS now,
               CASE WHEN b.done = 1 THEN b.end_time / 1000000 END AS ended_was,
               CASE WHEN a.done = 1 THEN a.end_time / 1000000 END AS ended_now
        FROM before_rows b JOIN after_rows a ON a.seq = b.seq
        WHERE b.state <> a.state OR b.done <> a.done
            OR b.end_time IS DISTINCT FROM a.end_time
    )
    INSERT INTO tally_deltas (kind, state, end_second, n)
    SELECT kind, state, NULL, sum(n) FROM (
        SELECT kind, was AS state, -1 AS n FROM changed WHERE was <> now
        UNION ALL
        SELECT kind, now, 1 FROM changed WHERE was <> now
    ) c GROUP BY kind, state HAVING sum(n) <> 0
    UNION ALL
    SELECT NULL, NULL, second, sum(n) FROM (
        SELECT ended_was AS second, -1 AS n FROM changed
            WHERE ended_was IS NOT NULL AND ended_was IS DISTINCT FROM ended_now
        UNION ALL
        SELECT ended_now, 1 FROM changed
            WHERE ended_now IS NOT NULL AND ended_was IS DISTINCT FROM ended_now
    ) e GROUP BY second HAVING sum(n) <> 0;
    RETURN NULL;
END
$$;
CREATE FUNCTION oprun_tally_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tally_deltas (kind, state, end_second, n)
    SELECT kind, state, NULL, -count(*) FROM removed GROUP BY kind, state
    UNION ALL
    SELECT NULL, NULL, end_time / 1000000, -count(*) FROM removed
        WHERE done = 1 AND end_time IS NOT NULL GROUP BY end_time / 1000000;
    RETURN NULL;
END
$$;
CREATE TRIGGER operations_tally_inserted AFTER INSERT ON operations
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION oprun_tally_inserted();
CREATE TRIGGER operations_tally_updated AFTER UPDATE ON operations
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION oprun_tally_updated();
CREATE TRIGGER operations_tally_deleted AFTER DELETE ON operations
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION oprun_tally_deleted();
INSERT INTO tally_counts (kind, state, n)
    SELECT kind, state, count(*) FROM operations GROUP BY kind, state;
INSERT INTO tally_ends (span, at, n)
    SELECT s.span, o.end_time / 1000000 / s.span * s.span, count(*)
    FROM operations o CROSS JOIN (VALUES (1), (60)) AS s(span)
    WHERE o.done = 1 AND o.end_time IS NOT NULL GROUP BY 1, 2;
";

/// The key of the advisory lock a fold holds (any constant shared by every build).
pub(super) const FOLD_LOCK: i64 = 0x6f70_7275_6e5f_7466; // "oprun_tf"

/// Folds up to 50,000 deltas into the totals, in one statement: how many.
const FOLD: &str = "
WITH moved AS (
    DELETE FROM tally_deltas WHERE id IN (SELECT id FROM tally_deltas ORDER BY id LIMIT 50000)
    RETURNING kind, state, end_second, n
), counted AS (
    INSERT INTO tally_counts (kind, state, n)
    SELECT kind, state, sum(n)::bigint FROM moved WHERE kind IS NOT NULL
        GROUP BY kind, state ORDER BY kind, state
    ON CONFLICT (kind, state) DO UPDATE SET n = tally_counts.n + EXCLUDED.n
), ended AS (
    INSERT INTO tally_ends (span, at, n)
    SELECT s.span, m.end_second / s.span * s.span, sum(m.n)::bigint
        FROM moved m CROSS JOIN (VALUES (1), (60)) AS s(span)
        WHERE m.end_second IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (span, at) DO UPDATE SET n = tally_ends.n + EXCLUDED.n
)
SELECT count(*) FROM moved
";

/// Forgets ends before second `$1` (see [`ends_forgotten_before`]).
const FORGET: &str = "DELETE FROM tally_ends WHERE at < $1";

/// Counts by kind and state: the totals and the deltas not yet folded.
pub(super) const COUNTS: &str = "
SELECT kind, state, sum(n)::bigint FROM (
    SELECT kind, state, n FROM tally_counts
    UNION ALL
    SELECT kind, state, n FROM tally_deltas WHERE kind IS NOT NULL
) t GROUP BY kind, state
";

/// Ends in the tally of span `$1` from second `$2` on: the totals and the deltas.
pub(super) const ENDS: &str = "
SELECT at, sum(n)::bigint FROM (
    SELECT at, n FROM tally_ends WHERE span = $1 AND at >= $2
    UNION ALL
    SELECT end_second / $1 * $1, n FROM tally_deltas WHERE end_second >= $2
) t GROUP BY at
";

/// How many finished operations there are, in a transaction that may have just deleted
/// some (its own deltas count).
pub(super) const FINISHED: &str = "
SELECT COALESCE(sum(n), 0)::bigint FROM (
    SELECT n FROM tally_counts WHERE state >= 3
    UNION ALL
    SELECT n FROM tally_deltas WHERE state >= 3
) t
";

/// Folds the deltas in, if no other node is folding: how many were folded.
///
/// # Errors
/// [`StoreError::Unavailable`] when the database cannot be written.
pub(super) async fn fold(pool: &Pool) -> Result<u64, StoreError> {
    let mut client = pool.get().await.map_err(super::pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    if !super::try_xact_lock(&tx, FOLD_LOCK).await? {
        return Ok(0);
    }
    let folded: i64 = tx
        .query_one(FOLD, &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(pg_error)?;
    tx.execute(FORGET, &[&ends_forgotten_before()])
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(u64::try_from(folded).unwrap_or(0))
}

/// Folds the deltas in once a second until `stop`.
pub(super) async fn run(pool: Pool, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match fold(&pool).await {
            Ok(n) if n > 0 => debug!(folded = n, "folded the summary's deltas"),
            Ok(_) => {}
            Err(e) => debug!(error = %e, "could not fold the summary's deltas; next second"),
        }
    }
}
