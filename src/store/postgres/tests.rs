//! The PostgreSQL store against a real server: summaries over two nodes, paging under
//! concurrent inserts, index use, sweeps, grouped writes, TLS, isolation, closing.

use std::sync::Arc;

use super::connect::quote_identifier;
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
    // The nodes' own folds (every second) wait while this session holds the fold's lock, so
    // that the summaries below are read before any delta is folded, however slow the machine.
    let (holder, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a session of its own");
    let driver = tokio::spawn(connection);
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&tally::FOLD_LOCK])
        .await
        .expect("the fold's lock");
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
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&tally::FOLD_LOCK])
        .await
        .expect("the fold's lock given back");
    drop(holder);
    driver.abort();
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
                    let r = OperationRecord::new_queued("sleep".into(), Default::default(), None);
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
        let walk = Walk::within(Listing::Oldest { after: 0 }, (0, i64::MAX));
        let limit = 100_i64;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&walk.above, &limit, &walk.below];
        params.extend(filter.params.iter().map(|p| p as &(dyn ToSql + Sync)));
        let plan = explain(&client, &page_sql(&walk, &filter.clause), &params).await;
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
    let walk = Walk::within(Listing::Oldest { after: 0 }, (18_000, i64::MAX));
    let limit = 100_i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&walk.above, &limit, &walk.below];
    params.extend(filter.params.iter().map(|p| p as &(dyn ToSql + Sync)));
    let seqs: Vec<i64> = client
        .query(&page_sql(&walk, &filter.clause), &params)
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
