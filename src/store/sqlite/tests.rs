//! The SQLite store: the conformance suite, reopening, upgrades, and what its files hold.

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
    let walk = Walk::within(Listing::Oldest { after: 0 }, (0, i64::MAX));
    explain(
        conn,
        &page_sql(&walk, &sql.clause),
        params_from_iter(params),
    )
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
