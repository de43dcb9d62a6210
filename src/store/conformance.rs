//! The store conformance suite: every backend runs [`run_all`] in its tests.
//!
//! Each check panics with a message saying which promise of [`Store`] was broken.

use std::future::Future;
use std::time::{Duration, SystemTime};

use prost_types::Any;

use super::{Claim, Inserted, Store, Swept, Written};
use crate::filter::Filter;
use crate::model::{Change, Fence, OperationRecord, Outcome, State};
use crate::proto::google::rpc::Code;

/// Runs every check against fresh stores made by `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    insert_assigns_increasing_seq(&make().await).await;
    request_id_returns_existing(&make().await).await;
    write_replaces_state(&make().await).await;
    delete_only_done(&make().await).await;
    list_pages_in_order_with_filter(&make().await).await;
    list_newest_pages_backwards_with_filter(&make().await).await;
    summarize_counts_kinds_states_and_ends(&make().await).await;
    the_summary_is_a_full_count(&make().await).await;
    {
        let store = make().await;
        let stored = skewed_creations(&store).await;
        create_time_bounds_list_every_match(&store, &stored).await;
    }
    unfinished_lists_queued_and_running(&make().await).await;
    scheduling_fields_round_trip(&make().await).await;
    sweep_removes_expired_then_oldest(&make().await).await;
    a_stale_version_is_refused(&make().await).await;
    a_stale_owner_is_refused_and_a_cancel_request_kept(&make().await).await;
    claims_take_due_work_in_order_within_limits(&make().await).await;
    orphans_are_the_work_of_expired_leases(&make().await).await;
    long_gone_idle_nodes_are_forgotten(&make().await).await;
    deadlines_of_queued_work(&make().await).await;
    queued_counts_follow_claims_and_ends(&make().await).await;
    registrations_are_kept_replaced_and_forgotten(&make().await).await;
    claims_take_higher_priorities_first(&make().await).await;
    claims_keep_each_keys_limit(&make().await).await;
    claims_keep_each_kinds_start_rate(&make().await).await;
    a_unique_key_holds_while_its_operation_is_unfinished(&make().await).await;
    insert_many_stores_all_in_order_with_each_ones_semantics(&make().await).await;
    schedules_are_kept_fenced_listed_and_deleted(&make().await).await;
    operations_of_a_schedule_are_found_by_its_name(&make().await).await;
    one_schedule_change_wins_among_concurrent_writers(std::sync::Arc::new(make().await)).await;
    one_unique_key_inserted_at_once_makes_one_operation(std::sync::Arc::new(make().await)).await;
    let shared = std::sync::Arc::new(make().await);
    two_claimers_never_get_the_same_operation(shared).await;
    one_request_id_inserted_at_once_makes_one_operation(std::sync::Arc::new(make().await)).await;
    let store = make().await;
    if !store.is_exclusive() {
        the_feed_shows_each_latest_change_once_in_order(&store).await;
        a_cancel_request_reaches_the_owner_through_the_feed(&make().await).await;
        claims_keep_the_running_limits_over_all_nodes(std::sync::Arc::new(make().await)).await;
    }
}

/// A schedule row as a check writes it.
fn schedule_row(id: &str, wake: Option<i64>, version: i64) -> super::ScheduleRow {
    super::ScheduleRow {
        id: id.to_owned(),
        body: format!("body of {id} at {version}").into_bytes(),
        wake,
        version,
    }
}

/// Schedules are created once per id, changed only at the version expected, listed by id a
/// page at a time, found by wake time, and deleted.
async fn schedules_are_kept_fenced_listed_and_deleted<S: Store>(store: &S) {
    for (id, wake) in [
        ("b", Some(30)),
        ("a", Some(10)),
        ("c", None),
        ("d", Some(20)),
    ] {
        assert!(
            store
                .put_schedule(&schedule_row(id, wake, 1), None)
                .await
                .expect("create"),
            "a new id is created"
        );
    }
    assert!(
        !store
            .put_schedule(&schedule_row("a", Some(1), 1), None)
            .await
            .expect("create"),
        "a taken id is refused"
    );
    assert_eq!(
        store.schedule("a").await.expect("read"),
        Some(schedule_row("a", Some(10), 1)),
        "the refused creation changed nothing"
    );
    assert!(
        !store
            .put_schedule(&schedule_row("a", Some(40), 3), Some(2))
            .await
            .expect("write"),
        "a stale version is refused"
    );
    assert!(
        store
            .put_schedule(&schedule_row("a", Some(40), 2), Some(1))
            .await
            .expect("write"),
        "the expected version is written"
    );
    assert_eq!(
        store.schedule("a").await.expect("read"),
        Some(schedule_row("a", Some(40), 2))
    );
    assert!(
        !store
            .put_schedule(&schedule_row("zz", Some(1), 2), Some(1))
            .await
            .expect("write"),
        "a change of a missing schedule is refused"
    );
    let ids = |rows: Vec<super::ScheduleRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(store.schedules("", 2).await.expect("list")), ["a", "b"]);
    assert_eq!(
        ids(store.schedules("b", 10).await.expect("list")),
        ["c", "d"]
    );
    let due = store.due_schedules(30, 10).await.expect("due");
    assert_eq!(
        ids(due.due),
        ["d", "b"],
        "due ones by wake time, none without one"
    );
    assert_eq!(due.next_wake, Some(40));
    let due = store.due_schedules(30, 1).await.expect("due");
    assert_eq!(ids(due.due), ["d"], "at most the limit");
    assert!(store.delete_schedule("b").await.expect("delete"));
    assert!(!store.delete_schedule("b").await.expect("delete"));
    assert_eq!(store.schedule("b").await.expect("read"), None);
    assert_eq!(
        ids(store.schedules("", 10).await.expect("list")),
        ["a", "c", "d"]
    );
}

/// An operation a schedule started keeps its name and fire time, and the filter on the
/// schedule finds exactly its operations.
async fn operations_of_a_schedule_are_found_by_its_name<S: Store>(store: &S) {
    let fire = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut ids = Vec::new();
    for schedule in [
        "schedules/nightly",
        "schedules/night",
        "",
        "schedules/nightly",
    ] {
        let mut r = queued("a");
        if !schedule.is_empty() {
            r.schedule = Some(schedule.to_owned());
            r.fire_time = Some(fire);
        }
        let r = insert_new(store, r).await;
        assert_eq!(store.get(&r.id).await.expect("get").as_ref(), Some(&r));
        ids.push(r.id);
    }
    let found = |filter: &str| {
        let filter = Filter::parse(filter).expect("parse");
        async move {
            store
                .list(0, &filter, 10)
                .await
                .expect("list")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        found("schedule = nightly").await,
        [ids[0].clone(), ids[3].clone()]
    );
    assert_eq!(
        found("schedule = \"schedules/night\"").await,
        [ids[1].clone()]
    );
    assert_eq!(
        found("schedule != nightly").await,
        [ids[1].clone(), ids[2].clone()]
    );
    assert_eq!(found("schedule = \"\"").await, [ids[2].clone()]);
}

/// Of writers changing one schedule from the same version at once, exactly one wins: the
/// fence that makes one fire's decision happen once over the cluster.
async fn one_schedule_change_wins_among_concurrent_writers<S: Store>(store: std::sync::Arc<S>) {
    assert!(store
        .put_schedule(&schedule_row("s", Some(1), 1), None)
        .await
        .expect("create"));
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_schedule(&schedule_row("s", Some(100 + i), 2), Some(1))
                    .await
                    .expect("write")
            })
        })
        .collect();
    let mut won = 0;
    for writer in writers {
        won += usize::from(writer.await.expect("join"));
    }
    assert_eq!(
        won, 1,
        "exactly one concurrent change of version 1 is written"
    );
    assert_eq!(
        store.schedule("s").await.expect("read").map(|r| r.version),
        Some(2)
    );
}

/// Declared kinds and sessions are kept by name, apart from each other, replaced by a later
/// registration of the same name, and forgotten when unregistered.
async fn registrations_are_kept_replaced_and_forgotten<S: Store>(store: &S) {
    use super::Registered;
    assert!(store
        .registered(Registered::Kind)
        .await
        .expect("read")
        .is_empty());
    store
        .register(Registered::Kind, "resize", b"one")
        .await
        .expect("register");
    store
        .register(Registered::Kind, "email", b"two")
        .await
        .expect("register");
    store
        .register(Registered::Session, "workerSessions/a", b"three")
        .await
        .expect("register");
    let kinds = store.registered(Registered::Kind).await.expect("read");
    assert_eq!(
        kinds,
        vec![
            ("email".to_owned(), b"two".to_vec()),
            ("resize".to_owned(), b"one".to_vec())
        ],
        "kinds by name, sessions apart"
    );
    store
        .register(Registered::Kind, "resize", b"four")
        .await
        .expect("register again");
    store
        .unregister(Registered::Kind, "email")
        .await
        .expect("unregister");
    store
        .unregister(Registered::Kind, "never")
        .await
        .expect("nothing kept is not an error");
    assert_eq!(
        store.registered(Registered::Kind).await.expect("read"),
        vec![("resize".to_owned(), b"four".to_vec())]
    );
    assert_eq!(
        store.registered(Registered::Session).await.expect("read"),
        vec![("workerSessions/a".to_owned(), b"three".to_vec())]
    );
}

/// A base instant far from the epoch, for tests that set times.
fn base() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Writes a change of `r` fenced by its version, expecting the store to take it.
async fn change<S: Store>(store: &S, r: &OperationRecord, change: Change) -> OperationRecord {
    let next = r.apply(change, base()).expect("a legal change");
    match store
        .write(&next, &Fence::Version(r.version))
        .await
        .expect("write")
    {
        Written::Applied { version, .. } => {
            assert_eq!(version, next.version, "the version a write stores");
            next
        }
        Written::Stale(now) => panic!("a write at the stored version was refused: {now:?}"),
    }
}

fn succeeded() -> Change {
    Change::Finish {
        state: State::Succeeded,
        outcome: Outcome::Response(Any::default()),
    }
}

fn failed() -> Change {
    Change::Finish {
        state: State::Failed,
        outcome: Outcome::Error(crate::proto::google::rpc::Status {
            code: Code::Unknown as i32,
            message: "x".into(),
            details: Vec::new(),
        }),
    }
}

fn cancelled() -> Change {
    Change::Finish {
        state: State::Cancelled,
        outcome: Outcome::Error(crate::proto::google::rpc::Status {
            code: Code::Cancelled as i32,
            message: "cancelled".into(),
            details: Vec::new(),
        }),
    }
}

/// Every operation `filter` matches, oldest first, read in pages of `size`.
async fn all_oldest_first<S: Store>(
    store: &S,
    filter: &Filter,
    size: usize,
) -> Vec<OperationRecord> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list(after, filter, size).await.expect("list");
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    all
}

/// Every operation `filter` matches, newest first, read in pages of `size`.
async fn all_newest_first<S: Store>(
    store: &S,
    filter: &Filter,
    size: usize,
) -> Vec<OperationRecord> {
    let mut all = Vec::new();
    let mut before = i64::MAX;
    loop {
        let page = store
            .list_newest(before, filter, size)
            .await
            .expect("list_newest");
        let Some(last) = page.last() else { break };
        before = last.seq;
        all.extend(page);
    }
    all
}

fn claim(node: &str, kinds: &[(&str, usize)], total: usize, now: SystemTime) -> Claim {
    Claim {
        node: node.to_owned(),
        kinds: kinds.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
        total,
        now,
        limits: super::RunningLimits::none(),
        key_limits: Vec::new(),
        rates: Vec::new(),
    }
}

fn queued(kind: &str) -> OperationRecord {
    OperationRecord::new_queued(
        kind.to_owned(),
        Any {
            type_url: "type.googleapis.com/oprun.v1.SleepInput".into(),
            value: vec![8, 1],
        },
        None,
    )
}

async fn insert_new<S: Store>(store: &S, r: OperationRecord) -> OperationRecord {
    match store.insert(r).await.expect("insert") {
        Inserted::New(r) => r,
        Inserted::Existing(r) => panic!("fresh insert returned existing {}", r.id),
    }
}

async fn insert_assigns_increasing_seq<S: Store>(store: &S) {
    let a = insert_new(store, queued("a")).await;
    let b = insert_new(store, queued("a")).await;
    assert!(
        a.seq > 0 && b.seq > a.seq,
        "seq must increase: {} then {}",
        a.seq,
        b.seq
    );
    let got = store
        .get(&a.id)
        .await
        .expect("get")
        .expect("inserted record exists");
    assert_eq!(got, a, "get must return exactly what was inserted");
}

/// Inserts with one request id at the same moment (a client's retries racing each other, or
/// one batch of a group commit) store one operation; every caller gets it.
async fn one_request_id_inserted_at_once_makes_one_operation<S: Store>(store: std::sync::Arc<S>) {
    racing_inserts(store, |r| r.request_id = Some("req-race".into())).await;
}

/// Eight inserts at once of records that `mark` makes alike (one request id, one unique key)
/// store one operation, and every caller gets it.
async fn racing_inserts<S: Store>(store: std::sync::Arc<S>, mark: fn(&mut OperationRecord)) {
    let inserts: Vec<_> = (0..8)
        .map(|_| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                let mut r = queued("a");
                mark(&mut r);
                match store.insert(r).await.expect("insert") {
                    Inserted::New(r) => (true, r.id),
                    Inserted::Existing(r) => (false, r.id),
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for insert in inserts {
        answers.push(insert.await.expect("an insert"));
    }
    assert_eq!(
        answers.iter().filter(|(new, _)| *new).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(_, id)| *id == answers[0].1),
        "every caller gets the one operation: {answers:?}"
    );
}

async fn request_id_returns_existing<S: Store>(store: &S) {
    let mut first = queued("a");
    first.request_id = Some("req-1".into());
    let first = insert_new(store, first).await;
    let mut again = queued("a");
    again.request_id = Some("req-1".into());
    match store.insert(again).await.expect("insert") {
        Inserted::Existing(r) => assert_eq!(r.id, first.id, "same request_id, same operation"),
        Inserted::New(r) => panic!("request_id reuse created a second operation {}", r.id),
    }
    let page = store
        .list(0, &Filter::parse("").expect("empty filter"), 10)
        .await
        .expect("list");
    assert_eq!(
        page.len(),
        1,
        "request_id reuse must not store a second operation"
    );
}

async fn write_replaces_state<S: Store>(store: &S) {
    let mut traced = queued("a");
    traced.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    let r = insert_new(store, traced).await;
    assert_eq!(
        store.get(&r.id).await.expect("get").map(|g| g.traceparent),
        Some(r.traceparent.clone()),
        "the submitting call's trace context is kept"
    );
    let r = change(store, &r, Change::Start { node: "n".into() }).await;
    let r = change(
        store,
        &r,
        Change::Progress {
            progress: crate::proto::oprun::v1::Progress {
                completed: 3,
                total: 10,
                unit: "steps".into(),
            },
            status_message: "working".into(),
            details: None,
        },
    )
    .await;
    assert_eq!(store.get(&r.id).await.expect("get"), Some(r.clone()));
    let r = change(store, &r, failed()).await;
    let got = store.get(&r.id).await.expect("get").expect("exists");
    assert_eq!(got.error_code(), Some(Code::Unknown as i32));
    assert!(got.is_done());
    assert_eq!(got, r, "get returns what was written");
}

async fn delete_only_done<S: Store>(store: &S) {
    let r = insert_new(store, queued("a")).await;
    assert_eq!(store.delete_done(&r.id).await.expect("delete"), Some(false));
    assert!(
        store.get(&r.id).await.expect("get").is_some(),
        "unfinished ones are kept"
    );
    let r = change(store, &r, failed()).await;
    assert_eq!(store.delete_done(&r.id).await.expect("delete"), Some(true));
    assert_eq!(store.get(&r.id).await.expect("get"), None);
    assert_eq!(store.delete_done(&r.id).await.expect("delete"), None);
}

async fn list_pages_in_order_with_filter<S: Store>(store: &S) {
    let mut want = Vec::new();
    for i in 0..30 {
        let r = insert_new(store, queued(if i % 3 == 0 { "x" } else { "y" })).await;
        if i % 3 == 0 {
            want.push(r.id.clone());
        }
    }
    let filter = Filter::parse("kind = \"x\"").expect("filter");
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list(after, &filter, 4).await.expect("list");
        assert!(page.len() <= 4, "limit respected");
        let Some(last) = page.last() else { break };
        after = last.seq;
        got.extend(page.iter().map(|r| r.id.clone()));
    }
    assert_eq!(got, want, "pages cover every match once, in creation order");
}

async fn list_newest_pages_backwards_with_filter<S: Store>(store: &S) {
    let mut want = Vec::new();
    for i in 0..30 {
        let r = insert_new(store, queued(if i % 3 == 0 { "x" } else { "y" })).await;
        if i % 3 == 0 {
            want.push(r.id.clone());
        }
    }
    want.reverse();
    let filter = Filter::parse("kind = \"x\"").expect("filter");
    let mut got = Vec::new();
    let mut before = i64::MAX;
    loop {
        let page = store
            .list_newest(before, &filter, 4)
            .await
            .expect("list_newest");
        assert!(page.len() <= 4, "limit respected");
        let Some(last) = page.last() else { break };
        before = last.seq;
        got.extend(page.iter().map(|r| r.id.clone()));
    }
    assert_eq!(got, want, "pages cover every match once, newest first");
}

async fn summarize_counts_kinds_states_and_ends<S: Store>(store: &S) {
    for kind in ["x", "x", "y"] {
        insert_new(store, queued(kind)).await;
    }
    let ended = insert_new(store, queued("y")).await;
    // `change` ends it at `base()`.
    change(store, &ended, failed()).await;
    let bucket = Duration::from_secs(10);
    let summary = store
        .summarize(base() - Duration::from_secs(25), bucket)
        .await
        .expect("summarize");
    let mut counts = summary.counts.clone();
    counts.sort_by_key(|c| (c.0.clone(), c.1.as_str()));
    assert_eq!(
        counts,
        vec![
            ("x".to_owned(), State::Queued, 2),
            ("y".to_owned(), State::Failed, 1),
            ("y".to_owned(), State::Queued, 1),
        ],
        "one count per kind and state"
    );
    assert_eq!(
        summary.finished,
        vec![(2, 1)],
        "25 s before the end: the third bucket"
    );
    let later = store
        .summarize(base() + Duration::from_secs(1), bucket)
        .await
        .expect("summarize");
    assert!(
        later.finished.is_empty(),
        "an end before `since` is not counted"
    );
}

/// 100 operations created at 0, 10, 20, … 990 s after [`base`], but the 51st at 5 s (a
/// clock set back) and the 81st at 2,000 s (set forward): the first 50 inserted one by one,
/// the rest in batches of 10.
pub async fn skewed_creations<S: Store>(store: &S) -> Vec<OperationRecord> {
    let at = |s: u64| base() + Duration::from_secs(s);
    let records: Vec<OperationRecord> = (0..100u64)
        .map(|i| {
            let mut r = queued("sleep");
            r.create_time = match i {
                50 => at(5),
                80 => at(2_000),
                _ => at(i * 10),
            };
            r
        })
        .collect();
    let mut stored = Vec::new();
    for r in &records[..50] {
        stored.push(insert_new(store, r.clone()).await);
    }
    for batch in records[50..].chunks(10) {
        for inserted in store
            .insert_many(batch.to_vec())
            .await
            .expect("insert_many")
        {
            match inserted {
                Inserted::New(r) => stored.push(r),
                Inserted::Existing(r) => panic!("fresh insert returned existing {}", r.id),
            }
        }
    }
    stored
}

/// Lists with bounds on `create_time` (`>=`, `<`, and `>` with `<=`, at times around the
/// skewed ones of [`skewed_creations`]) give every match, in order, oldest first and newest
/// first, a page of 7 at a time: however a store narrows its walk, none is missed.
pub async fn create_time_bounds_list_every_match<S: Store>(store: &S, stored: &[OperationRecord]) {
    let at = |s: u64| base() + Duration::from_secs(s);
    let stamp = |s: u64| prost_types::Timestamp::from(at(s));
    let micro = Duration::from_micros(1);
    for since in [0, 5, 6, 400, 495, 500, 501, 990, 995, 2_000, 2_001] {
        // Each filter, and the times it keeps: from (inclusive), until (exclusive).
        let bounds: [(String, Option<SystemTime>, Option<SystemTime>); 3] = [
            (
                format!("create_time >= \"{}\"", stamp(since)),
                Some(at(since)),
                None,
            ),
            (
                format!("create_time < \"{}\"", stamp(since)),
                None,
                Some(at(since)),
            ),
            (
                format!(
                    "create_time > \"{}\" AND create_time <= \"{}\"",
                    stamp(since),
                    stamp(since + 300)
                ),
                Some(at(since) + micro),
                Some(at(since + 300) + micro),
            ),
        ];
        for (filter, from, until) in bounds {
            let parsed = Filter::parse(&filter).unwrap();
            let want: Vec<i64> = stored
                .iter()
                .filter(|r| from.is_none_or(|t| r.create_time >= t))
                .filter(|r| until.is_none_or(|t| r.create_time < t))
                .map(|r| r.seq)
                .collect();
            let seqs = |listed: Vec<OperationRecord>| listed.iter().map(|r| r.seq).collect();
            let got: Vec<i64> = seqs(all_oldest_first(store, &parsed, 7).await);
            assert_eq!(got, want, "oldest first: {filter}");
            let mut got: Vec<i64> = seqs(all_newest_first(store, &parsed, 7).await);
            got.reverse();
            assert_eq!(got, want, "newest first: {filter}");
        }
    }
}

/// What [`Store::summarize`] answers, counted from every operation (the definition the
/// tallies keep incrementally).
pub async fn counted<S: Store>(store: &S, since: SystemTime, bucket: Duration) -> super::Summary {
    let all = Filter::parse("").expect("empty filter");
    let mut counts: std::collections::BTreeMap<(String, &'static str), (State, u64)> =
        std::collections::BTreeMap::new();
    let mut finished: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for r in all_oldest_first(store, &all, 100).await {
        counts
            .entry((r.kind.clone(), r.state.as_str()))
            .or_insert((r.state, 0))
            .1 += 1;
        let end = r.end_time.filter(|_| r.is_done());
        if let Some(after) = end.and_then(|end| end.duration_since(since).ok()) {
            *finished
                .entry(after.as_secs() / bucket.as_secs())
                .or_default() += 1;
        }
    }
    super::Summary {
        counts: counts
            .into_iter()
            .map(|((kind, _), (state, n))| (kind, state, n))
            .collect(),
        finished: finished.into_iter().collect(),
    }
}

/// `n` operations of `kind` through `store`: each inserted and started, two in three then
/// ended (at one of 90 seconds after [`base`]), one in six of those deleted.
pub async fn churn<S: Store>(store: &S, kind: &str, n: usize) {
    for i in 0..n {
        let r = insert_new(store, queued(kind)).await;
        let r = change(store, &r, Change::Start { node: "n".into() }).await;
        if i % 3 == 2 {
            continue;
        }
        let mut next = r.apply(succeeded(), base()).expect("legal");
        let secs = u64::try_from(i % 90).expect("small");
        next.end_time = Some(base() + Duration::from_secs(secs));
        let written = store.write(&next, &Fence::Version(r.version)).await;
        assert!(
            matches!(written, Ok(Written::Applied { .. })),
            "{written:?}"
        );
        if i % 6 == 0 {
            assert_eq!(
                store.delete_done(&next.id).await.expect("delete"),
                Some(true)
            );
        }
    }
}

/// Summaries from [`base`] on by second and by minute, as `store` answers them.
pub async fn summaries<S: Store>(store: &S) -> Vec<super::Summary> {
    let mut all = Vec::new();
    for bucket in [1, 60] {
        let mut s = store
            .summarize(base(), Duration::from_secs(bucket))
            .await
            .expect("summarize");
        s.counts.sort_by_key(|c| (c.0.clone(), c.1.as_str()));
        all.push(s);
    }
    all
}

/// The same summaries counted from every operation (see [`counted`]).
pub async fn counted_summaries<S: Store>(store: &S) -> Vec<super::Summary> {
    let mut all = Vec::new();
    for bucket in [1, 60] {
        let mut s = counted(store, base(), Duration::from_secs(bucket)).await;
        s.counts.sort_by_key(|c| (c.0.clone(), c.1.as_str()));
        all.push(s);
    }
    all
}

/// The summary, after every kind of change an operation goes through (inserts one by one
/// and in a batch, starts, ends at different seconds, a cancel, a retry, a delete, sweeps
/// by age and by cap), is what counting every operation gives, by second and by minute.
async fn the_summary_is_a_full_count<S: Store>(store: &S) {
    let mut ended = Vec::new();
    let mut running = None;
    for (i, kind) in ["a", "a", "b", "c", "a", "b", "c", "a"]
        .into_iter()
        .enumerate()
    {
        let r = insert_new(store, queued(kind)).await;
        let r = change(store, &r, Change::Start { node: "n".into() }).await;
        if i % 4 == 3 {
            running = Some(r);
            continue;
        }
        let end = if i % 2 == 0 { succeeded() } else { failed() };
        let mut next = r.apply(end, base()).expect("legal");
        let secs = u64::try_from(i).expect("small") * 37;
        next.end_time = Some(base() + Duration::from_secs(secs) + Duration::from_millis(300));
        match store
            .write(&next, &Fence::Version(r.version))
            .await
            .expect("write")
        {
            Written::Applied { .. } => ended.push(next),
            Written::Stale(now) => panic!("refused: {now:?}"),
        }
    }
    let running = running.expect("one left running");
    // Claimed, then one ended and one given progress by its owner.
    for _ in 0..3 {
        insert_new(store, queued("e")).await;
    }
    let claimed = store
        .claim(&claim("n", &[("e", 2)], 2, base()))
        .await
        .expect("claim")
        .operations;
    assert_eq!(claimed.len(), 2);
    let owner = |r: &OperationRecord| Fence::Owner {
        node: "n".into(),
        attempt: r.attempt,
    };
    let mut end = claimed[0].apply(failed(), base()).expect("legal");
    end.end_time = Some(base() + Duration::from_secs(61));
    let progress = Change::Progress {
        progress: Default::default(),
        status_message: "going".into(),
        details: None,
    };
    let going = claimed[1].apply(progress, base()).expect("legal");
    for (next, r) in [(end, &claimed[0]), (going, &claimed[1])] {
        let written = store.write(&next, &owner(r)).await;
        assert!(
            matches!(written, Ok(Written::Applied { .. })),
            "{written:?}"
        );
    }
    let batch = vec![queued("b"), queued("d"), queued("d")];
    store.insert_many(batch).await.expect("insert_many");
    let asked = insert_new(store, queued("d")).await;
    let asked = change(store, &asked, Change::RequestCancel).await;
    let _ = change(store, &asked, cancelled()).await;
    let _ = change(
        store,
        &running,
        Change::Requeue {
            status_message: "gone".into(),
        },
    )
    .await;
    assert_eq!(
        store.delete_done(&ended[0].id).await.expect("delete"),
        Some(true)
    );
    let sorted = |mut s: super::Summary| {
        s.counts.sort_by_key(|c| (c.0.clone(), c.1.as_str()));
        s
    };
    let check = |what: &'static str| async move {
        for (since, bucket) in [
            (base() - Duration::from_secs(60), Duration::from_secs(60)),
            (base() - Duration::from_secs(7), Duration::from_secs(10)),
            (base() + Duration::from_secs(40), Duration::from_secs(1)),
        ] {
            let kept = store.summarize(since, bucket).await.expect("summarize");
            assert_eq!(
                sorted(kept),
                sorted(counted(store, since, bucket).await),
                "{what}: the summary from {since:?} by {bucket:?} is a full count"
            );
        }
    };
    check("after inserts, starts, ends, a cancel and a delete").await;
    store
        .sweep(base() + Duration::from_secs(40), None)
        .await
        .expect("sweep");
    check("after a sweep by age").await;
    let swept = store.sweep(base(), Some(2)).await.expect("sweep");
    assert_eq!(swept.finished, Some(2), "the cap counts from the tallies");
    check("after a sweep by cap").await;
}

async fn unfinished_lists_queued_and_running<S: Store>(store: &S) {
    let q = insert_new(store, queued("a")).await;
    let run = insert_new(store, queued("a")).await;
    let run = change(store, &run, Change::Start { node: "n".into() }).await;
    let done = insert_new(store, queued("a")).await;
    change(store, &done, failed()).await;
    let ids: Vec<_> = store
        .unfinished()
        .await
        .expect("unfinished")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![q.id, run.id]);
}

async fn scheduling_fields_round_trip<S: Store>(store: &S) {
    let mut r = queued("a");
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    r.next_attempt_time = Some(base + Duration::from_millis(1500));
    r.deadline = Some(base + Duration::from_secs(60));
    r.last_error = Some(crate::proto::google::rpc::Status {
        code: Code::Unavailable as i32,
        message: "try again".into(),
        details: Vec::new(),
    });
    r.attempt = 3;
    let r = insert_new(store, r).await;
    assert_eq!(
        store.get(&r.id).await.expect("get"),
        Some(r),
        "retry and deadline fields survive the store"
    );
}

async fn sweep_removes_expired_then_oldest<S: Store>(store: &S) {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let r = insert_new(store, queued("a")).await;
        let mut next = r.apply(failed(), base).expect("legal");
        next.end_time = Some(base + Duration::from_secs(i));
        store
            .write(&next, &Fence::Version(r.version))
            .await
            .expect("write");
        ids.push(r.id);
    }
    let open = insert_new(store, queued("a")).await;
    let swept = store
        .sweep(base + Duration::from_millis(1500), None)
        .await
        .expect("sweep");
    assert_eq!(
        swept,
        Swept {
            deleted: 2,
            // Counted only under a cap.
            finished: None,
            oldest_finished: Some(base + Duration::from_secs(2)),
        },
        "operations that ended before the cutoff are removed"
    );
    let swept = store.sweep(base, Some(1)).await.expect("sweep");
    assert_eq!(swept.deleted, 2, "the oldest beyond the cap are removed");
    assert_eq!(swept.finished, Some(1));
    assert!(
        store.get(&ids[4]).await.expect("get").is_some(),
        "the newest is kept"
    );
    assert!(store.get(&ids[2]).await.expect("get").is_none());
    assert!(
        store.get(&open.id).await.expect("get").is_some(),
        "unfinished operations are never swept"
    );
    let swept = store
        .sweep(base + Duration::from_secs(3600), Some(0))
        .await
        .expect("sweep");
    assert_eq!(swept.finished, Some(0));
    assert_eq!(swept.oldest_finished, None);
}

/// A write fenced by a version that is no longer stored is refused and changes nothing; the
/// store answers what it holds.
async fn a_stale_version_is_refused<S: Store>(store: &S) {
    let r = insert_new(store, queued("a")).await;
    let started = change(store, &r, Change::Start { node: "n".into() }).await;
    let late = r.apply(failed(), base()).expect("legal from QUEUED");
    match store
        .write(&late, &Fence::Version(r.version))
        .await
        .expect("write")
    {
        Written::Stale(Some(now)) => assert_eq!(*now, started),
        other => panic!("a stale version was not refused: {other:?}"),
    }
    assert_eq!(store.get(&r.id).await.expect("get"), Some(started));
    let gone = OperationRecord::new_queued("a".into(), Any::default(), None);
    assert_eq!(
        store.write(&gone, &Fence::Version(1)).await.expect("write"),
        Written::Stale(None),
        "a write of an operation that is not stored"
    );
}

/// The node that runs an operation writes it fenced by owner and attempt: once another node
/// took it over (a new attempt), the old owner's write is refused. A cancel request written
/// meanwhile does not stop the owner's write, and the write keeps it: that is how the owner
/// learns of it.
async fn a_stale_owner_is_refused_and_a_cancel_request_kept<S: Store>(store: &S) {
    let r = insert_new(store, queued("a")).await;
    let run = change(store, &r, Change::Start { node: "a".into() }).await;
    let owner = Fence::Owner {
        node: "a".into(),
        attempt: run.attempt,
    };
    let asked = change(store, &run, Change::RequestCancel).await;
    let progress = run
        .apply(
            Change::Progress {
                progress: Default::default(),
                status_message: "still going".into(),
                details: None,
            },
            base(),
        )
        .expect("legal");
    match store.write(&progress, &owner).await.expect("write") {
        Written::Applied {
            version,
            requested_cancellation,
        } => {
            assert!(
                requested_cancellation,
                "the cancel request is kept and told"
            );
            assert_eq!(version, asked.version + 1);
        }
        other => panic!("the owner's write was refused: {other:?}"),
    }
    let stored = store.get(&r.id).await.expect("get").expect("exists");
    assert!(stored.requested_cancellation);
    assert_eq!(stored.status_message, "still going");
    // Another node takes it over: attempt 2 on node b.
    let requeued = change(
        store,
        &stored,
        Change::Requeue {
            status_message: "taken over".into(),
        },
    )
    .await;
    let taken = change(store, &requeued, Change::Start { node: "b".into() }).await;
    let late = run.apply(failed(), base()).expect("legal");
    match store.write(&late, &owner).await.expect("write") {
        Written::Stale(Some(now)) => assert_eq!(*now, taken),
        other => panic!("a stale owner's write was not refused: {other:?}"),
    }
    assert_eq!(store.get(&r.id).await.expect("get"), Some(taken));
}

/// Follows the feed from `after` to its end, in pages of `page`; the ids seen and the next
/// position.
async fn follow<S: Store>(store: &S, mut after: i64, page: usize) -> (Vec<OperationRecord>, i64) {
    let mut seen = Vec::new();
    loop {
        let changes = store.changes(Some(after), page).await.expect("changes");
        assert!(changes.operations.len() <= page, "a page beyond its limit");
        if changes.operations.is_empty() {
            assert_eq!(changes.next, after, "an empty page moves the position");
            return (seen, after);
        }
        assert!(changes.next > after, "the position goes forward");
        after = changes.next;
        seen.extend(changes.operations);
    }
}

/// Follows the feed from `after` until `want` operations showed, leaving out `before` (a change
/// made before the head, which may show late), or 10 s passed. (A store whose feed shows a
/// change once every older transaction has ended may need a moment.)
async fn follow_until<S: Store>(
    store: &S,
    mut after: i64,
    page: usize,
    want: usize,
    before: Option<&OperationRecord>,
) -> (Vec<OperationRecord>, i64) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let (more, next) = follow(store, after, page).await;
        seen.extend(
            more.into_iter()
                .filter(|r| before.is_none_or(|b| b.id != r.id)),
        );
        after = next;
        if seen.len() >= want || std::time::Instant::now() > until {
            return (seen, after);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A shared store's feed: from its head, every insert, write and claim shows, each operation
/// once as it is now, in the order of their latest change, paged by the limit; a deleted one
/// drops out; nothing shows twice once followed. (The head may still show a change made just
/// before it, as it is now: never one older, and never after what follows it.)
async fn the_feed_shows_each_latest_change_once_in_order<S: Store>(store: &S) {
    let before = insert_new(store, queued("a")).await;
    let head = store.changes(None, 10).await.expect("the head");
    assert!(head.operations.is_empty(), "the head alone is asked");
    let (nothing, at) = follow(store, head.next, 10).await;
    assert!(
        nothing.iter().all(|r| r.id == before.id),
        "changes older than the head show: {nothing:?}"
    );
    let a = insert_new(store, queued("a")).await;
    let b = insert_new(store, queued("b")).await;
    let c = insert_new(store, queued("a")).await;
    let a = change(store, &a, Change::Start { node: "n".into() }).await;
    let claimed = store
        .claim(&claim("m", &[("b", 1)], 1, base() + Duration::from_secs(1)))
        .await
        .expect("claim");
    assert_eq!(claimed.operations.len(), 1);
    assert_eq!(claimed.operations[0].id, b.id);
    let b = claimed.operations[0].clone();
    let (seen, at) = follow_until(store, at, 2, 3, Some(&before)).await;
    assert_eq!(
        seen,
        vec![c.clone(), a.clone(), b.clone()],
        "latest changes in order"
    );
    let (again, at) = follow_until(store, at, 2, 0, Some(&before)).await;
    assert!(again.is_empty(), "nothing shows twice: {again:?}");
    let c = change(store, &c, failed()).await;
    assert_eq!(store.delete_done(&c.id).await.expect("delete"), Some(true));
    let a = change(store, &a, failed()).await;
    let (seen, _) = follow_until(store, at, 10, 1, Some(&before)).await;
    assert_eq!(seen, vec![a], "a deleted operation drops out of the feed");
}

/// A cancel request written by one node reaches the node that runs the operation through
/// the feed, before that node writes anything.
async fn a_cancel_request_reaches_the_owner_through_the_feed<S: Store>(store: &S) {
    let r = insert_new(store, queued("a")).await;
    let run = change(
        store,
        &r,
        Change::Start {
            node: "owner".into(),
        },
    )
    .await;
    let head = store.changes(None, 0).await.expect("the head").next;
    // Another node reads the operation and records the request, fenced by the version it read.
    let read = store.get(&r.id).await.expect("get").expect("stored");
    change(store, &read, Change::RequestCancel).await;
    let (seen, _) = follow_until(store, head, 10, 1, None).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].requested_cancellation, "the owner sees the request");
    assert_eq!(seen[0].owner.as_deref(), Some("owner"));
    assert_eq!(seen[0].version, run.version + 1);
}

/// On a shared store, a claim counts what runs on every node: a kind's limit and the total
/// hold over all claimers, concurrent ones included.
async fn claims_keep_the_running_limits_over_all_nodes<S: Store>(store: std::sync::Arc<S>) {
    for kind in ["a", "a", "a", "a", "b", "b", "b", "b"] {
        insert_new(&*store, queued(kind)).await;
    }
    let limits = super::RunningLimits {
        kinds: vec![("a".to_owned(), 2)],
        total: Some(5),
    };
    let later = base() + Duration::from_secs(1);
    let mut ask = claim("n", &[("a", 1), ("b", 1)], 2, later);
    ask.limits = limits.clone();
    let first = store.claim(&ask).await.expect("claim").operations;
    assert_eq!(first.len(), 2, "within the node's own room");
    // Three nodes at once, each with room for everything.
    let claims = ["m", "o", "p"].map(|node| {
        let store = std::sync::Arc::clone(&store);
        let mut ask = claim(node, &[("a", 4), ("b", 4)], 8, later);
        ask.limits = limits.clone();
        tokio::spawn(async move { store.claim(&ask).await.expect("claim").operations })
    });
    let mut all = first;
    for c in claims {
        all.extend(c.await.expect("a claimer"));
    }
    let a = all.iter().filter(|r| r.kind == "a").count();
    assert_eq!(a, 2, "kind a's limit over all nodes: {all:?}");
    assert_eq!(all.len(), 5, "the total over all nodes: {all:?}");
}

/// A heartbeat forgets the nodes whose lease ended long before (a day) and that run nothing;
/// one that still owns running work stays listed, as does every recent one.
/// `queued` counts what waits, by kind: not what a claim started, not what ended.
async fn queued_counts_follow_claims_and_ends<S: Store>(store: &S) {
    let counts = |pairs: &[(&str, usize)]| -> std::collections::HashMap<String, usize> {
        pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    };
    assert_eq!(store.queued().await.expect("queued"), counts(&[]));
    for _ in 0..3 {
        insert_new(store, queued("a")).await;
    }
    let b = insert_new(store, queued("b")).await;
    assert_eq!(
        store.queued().await.expect("queued"),
        counts(&[("a", 3), ("b", 1)])
    );
    let claimed = store
        .claim(&claim("n1", &[("a", 1)], 1, base()))
        .await
        .expect("claim");
    assert_eq!(claimed.operations.len(), 1);
    change(store, &b, failed()).await;
    assert_eq!(store.queued().await.expect("queued"), counts(&[("a", 2)]));
}

async fn long_gone_idle_nodes_are_forgotten<S: Store>(store: &S) {
    let day = Duration::from_secs(24 * 3600);
    store.heartbeat("old", base()).await.expect("heartbeat");
    store.heartbeat("busy", base()).await.expect("heartbeat");
    store
        .heartbeat("recent", base() + day)
        .await
        .expect("heartbeat");
    insert_new(store, queued("a")).await;
    let claimed = store
        .claim(&claim("busy", &[("a", 1)], 1, base() + day))
        .await
        .expect("claim");
    assert_eq!(claimed.operations.len(), 1);
    store
        .heartbeat("new", base() + day + Duration::from_secs(2))
        .await
        .expect("heartbeat");
    let listed: Vec<(String, usize)> = store
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| (n.id, n.running))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("busy".to_owned(), 1),
            ("new".to_owned(), 0),
            ("recent".to_owned(), 0)
        ],
        "the old idle node is forgotten, the others are listed by id"
    );
}

/// A claim starts the oldest due work first, within each kind's room and the total; work whose
/// time has not come stays queued, and its time is told.
async fn claims_take_due_work_in_order_within_limits<S: Store>(store: &S) {
    let now = base() + Duration::from_secs(100);
    let mut made = Vec::new();
    for (kind, due) in [("a", 5), ("b", 1), ("a", 2), ("a", 3), ("b", 4), ("a", 200)] {
        let mut r = queued(kind);
        r.create_time = base();
        r.next_attempt_time = Some(base() + Duration::from_secs(due));
        made.push(insert_new(store, r).await);
    }
    let claimed = store
        .claim(&claim("n1", &[("a", 2), ("b", 5)], 3, now))
        .await
        .expect("claim");
    let ids: Vec<_> = claimed.operations.iter().map(|r| r.id.clone()).collect();
    // Due order over both kinds: b@1, a@2, a@3 (then a is at its room of 2).
    assert_eq!(
        ids,
        vec![made[1].id.clone(), made[2].id.clone(), made[3].id.clone()]
    );
    for r in &claimed.operations {
        assert_eq!(r.state, State::Running);
        assert_eq!(r.owner.as_deref(), Some("n1"));
        assert_eq!(r.start_time, Some(now));
        assert_eq!(store.get(&r.id).await.expect("get").as_ref(), Some(r));
    }
    assert_eq!(claimed.next_due, Some(base() + Duration::from_secs(200)));
    let again = store
        .claim(&claim("n2", &[("a", 10), ("b", 10)], 10, now))
        .await
        .expect("claim");
    let ids: Vec<_> = again.operations.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        ids,
        vec![made[4].id.clone(), made[0].id.clone()],
        "the rest that is due"
    );
    let later = store
        .claim(&claim(
            "n2",
            &[("a", 10)],
            10,
            base() + Duration::from_secs(300),
        ))
        .await
        .expect("claim");
    assert_eq!(later.operations.len(), 1, "due at last");
    assert_eq!(later.next_due, None);
    let none = store
        .claim(&claim("n2", &[("c", 10)], 10, now))
        .await
        .expect("claim");
    assert!(none.operations.is_empty(), "only the kinds asked for");
}

/// A claim takes the highest priority first (over all kinds asked for), then the oldest due,
/// then the first inserted; work not yet due waits whatever its priority; the priority is
/// kept and read back.
async fn claims_take_higher_priorities_first<S: Store>(store: &S) {
    let now = base() + Duration::from_secs(100);
    let mut made = Vec::new();
    // (kind, due, priority)
    for (kind, due, priority) in [
        ("a", 1, 0),
        ("a", 2, 10),
        ("b", 3, 10),
        ("a", 4, -5),
        ("b", 5, 50),
        ("a", 500, 100),
        ("b", 1, 10),
    ] {
        let mut r = queued(kind);
        r.create_time = base();
        r.next_attempt_time = Some(base() + Duration::from_secs(due));
        r.priority = priority;
        made.push(insert_new(store, r).await);
    }
    assert_eq!(
        store
            .get(&made[4].id)
            .await
            .expect("get")
            .map(|r| r.priority),
        Some(50),
        "the priority is kept"
    );
    let claimed = store
        .claim(&claim("n1", &[("a", 10), ("b", 10)], 4, now))
        .await
        .expect("claim");
    let ids: Vec<_> = claimed.operations.iter().map(|r| r.id.clone()).collect();
    // b@5 (50), then the 10s by due: b@1, a@2, b@3; the not-yet-due 100 waits.
    assert_eq!(
        ids,
        vec![
            made[4].id.clone(),
            made[6].id.clone(),
            made[1].id.clone(),
            made[2].id.clone()
        ],
        "priority, then due, over all kinds"
    );
    let rest = store
        .claim(&claim("n1", &[("a", 10), ("b", 10)], 10, now))
        .await
        .expect("claim");
    let ids: Vec<_> = rest.operations.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        ids,
        vec![made[0].id.clone(), made[3].id.clone()],
        "0 before -5"
    );
    assert_eq!(rest.next_due, Some(base() + Duration::from_secs(500)));
    // Within one kind's room the same order holds.
    let mut low = queued("c");
    low.create_time = base();
    let low = insert_new(store, low).await;
    let mut high = queued("c");
    high.create_time = base() + Duration::from_secs(1);
    high.priority = 1;
    let high = insert_new(store, high).await;
    let one = store
        .claim(&claim("n1", &[("c", 1)], 10, now))
        .await
        .expect("claim");
    assert_eq!(
        one.operations.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&high.id],
        "the later, higher one first"
    );
    let _ = low;
}

/// Under a limit per concurrency key, a claim starts no more of a key than the limit allows,
/// counting what runs (on any node) and what it starts itself; work of a key at its limit is
/// passed over, and the work behind it (other keys, no key) starts; when one of a key ends,
/// the next of that key may start. Kinds without a limit are not held back.
async fn claims_keep_each_keys_limit<S: Store>(store: &S) {
    let now = base() + Duration::from_secs(100);
    let mut made = Vec::new();
    for (kind, key, due) in [
        ("k", Some("a"), 1),
        ("k", Some("a"), 2),
        ("k", Some("a"), 3),
        ("k", Some("b"), 4),
        ("k", None, 5),
        ("free", Some("a"), 6),
        ("free", Some("a"), 7),
    ] {
        let mut r = queued(kind);
        r.create_time = base();
        r.next_attempt_time = Some(base() + Duration::from_secs(due));
        r.concurrency_key = key.map(str::to_owned);
        made.push(insert_new(store, r).await);
    }
    assert_eq!(
        store
            .get(&made[0].id)
            .await
            .expect("get")
            .and_then(|r| r.concurrency_key),
        Some("a".to_owned()),
        "the key is kept"
    );
    let mut keyed = claim("n1", &[("k", 10), ("free", 10)], 10, now);
    keyed.key_limits = vec![("k".to_owned(), 1)];
    let first = store.claim(&keyed).await.expect("claim");
    let ids = |c: &super::Claimed| {
        c.operations
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&first),
        vec![
            made[0].id.clone(),
            made[3].id.clone(),
            made[4].id.clone(),
            made[5].id.clone(),
            made[6].id.clone()
        ],
        "one of key a, then the work behind it; the kind without a limit freely"
    );
    let second = store.claim(&keyed).await.expect("claim");
    assert!(
        second.operations.is_empty(),
        "key a is at its limit while its first runs (from another node too): {:?}",
        ids(&second)
    );
    let running = first.operations[0].clone();
    change(store, &running, succeeded()).await;
    let mut other_node = keyed.clone();
    other_node.node = "n2".into();
    let third = store.claim(&other_node).await.expect("claim");
    assert_eq!(
        ids(&third),
        vec![made[1].id.clone()],
        "the next of key a, once the first ended"
    );
    // A limit of 2 takes two of a key in one claim, no more.
    let mut two = Vec::new();
    for _ in 0..3 {
        let mut r = queued("two");
        r.create_time = base();
        r.concurrency_key = Some("c".into());
        two.push(insert_new(store, r).await);
    }
    let mut limit_two = claim("n1", &[("two", 10)], 10, now);
    limit_two.key_limits = vec![("two".to_owned(), 2)];
    assert_eq!(
        store
            .claim(&limit_two)
            .await
            .expect("claim")
            .operations
            .len(),
        2
    );
}

/// Under a start rate, a claim starts no more than the rate leaves in the period ending at its
/// `now` (counting starts of earlier claims, by any node), says the kind was held back, and
/// that more may start when the oldest start leaves the period; per key, each key has the
/// rate of its own and work without a key is not limited.
async fn claims_keep_each_kinds_start_rate<S: Store>(store: &S) {
    use super::Rate;
    let now = base() + Duration::from_secs(100);
    for _ in 0..5 {
        let mut r = queued("r");
        r.create_time = base();
        insert_new(store, r).await;
    }
    let rated = |node: &str, at: SystemTime| {
        let mut c = claim(node, &[("r", 10)], 10, at);
        c.rates = vec![(
            "r".to_owned(),
            Rate {
                starts: 2,
                period: Duration::from_secs(10),
                per_key: false,
            },
        )];
        c
    };
    let first = store.claim(&rated("n1", now)).await.expect("claim");
    assert_eq!(first.operations.len(), 2, "two per period");
    assert_eq!(first.held, vec!["r".to_owned()], "the rate held the rest");
    // A store whose claims wait for each other dates its starts when the turn came: a
    // moment after `now`.
    let frees = first.next_due.expect("a next due time");
    assert!(
        frees >= now + Duration::from_secs(10) && frees < now + Duration::from_secs(11),
        "more may start when the first starts leave the period: {frees:?}"
    );
    let later = store
        .claim(&rated("n2", now + Duration::from_secs(9)))
        .await
        .expect("claim");
    assert!(
        later.operations.is_empty(),
        "another node within the period"
    );
    assert_eq!(later.held, vec!["r".to_owned()]);
    let next = store.claim(&rated("n2", frees)).await.expect("claim");
    assert_eq!(
        next.operations.len(),
        2,
        "a new period, when the store said"
    );
    let last = store
        .claim(&rated("n1", frees + Duration::from_secs(11)))
        .await
        .expect("claim");
    assert_eq!(last.operations.len(), 1, "the last one");
    assert!(last.held.is_empty(), "nothing held: {:?}", last.held);

    // Per key.
    let mut made = Vec::new();
    for key in [Some("a"), Some("a"), Some("b"), None, None] {
        let mut r = queued("p");
        r.create_time = base();
        r.concurrency_key = key.map(str::to_owned);
        made.push(insert_new(store, r).await);
    }
    let mut per_key = claim("n1", &[("p", 10)], 10, now);
    per_key.rates = vec![(
        "p".to_owned(),
        Rate {
            starts: 1,
            period: Duration::from_secs(10),
            per_key: true,
        },
    )];
    let started = store.claim(&per_key).await.expect("claim");
    let ids: Vec<_> = started.operations.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        ids,
        vec![
            made[0].id.clone(),
            made[2].id.clone(),
            made[3].id.clone(),
            made[4].id.clone()
        ],
        "one of each key, every one without a key"
    );
    assert_eq!(started.held, vec!["p".to_owned()]);

    // A rate with no start left holds the kind's work back even where a key limit would pass
    // over it first: the claim says so, and when the rate frees (else work of another key
    // would wait for an unrelated wake).
    for key in ["a", "a", "b"] {
        let mut r = queued("kr");
        r.create_time = base();
        r.concurrency_key = Some(key.to_owned());
        insert_new(store, r).await;
    }
    let mut both = claim("n1", &[("kr", 10)], 10, now);
    both.key_limits = vec![("kr".to_owned(), 1)];
    both.rates = vec![(
        "kr".to_owned(),
        Rate {
            starts: 1,
            period: Duration::from_secs(10),
            per_key: false,
        },
    )];
    let one = store.claim(&both).await.expect("claim");
    assert_eq!(one.operations.len(), 1);
    let again = store.claim(&both).await.expect("claim");
    assert!(again.operations.is_empty());
    assert_eq!(again.held, vec!["kr".to_owned()], "the rate holds the rest");
    assert!(again.next_due.is_some(), "and says when it frees");

    // Kinds with a rate and kinds without share one order: the highest priority first,
    // whatever its kind.
    let mut low = queued("rated");
    low.create_time = base();
    low.priority = -100;
    insert_new(store, low).await;
    let mut high = queued("plain");
    high.create_time = base();
    high.priority = 100;
    let high = insert_new(store, high).await;
    let mut mixed = claim("n1", &[("rated", 1), ("plain", 1)], 1, now);
    mixed.rates = vec![(
        "rated".to_owned(),
        Rate {
            starts: 10,
            period: Duration::from_secs(10),
            per_key: false,
        },
    )];
    let first = store.claim(&mixed).await.expect("claim");
    assert_eq!(
        first.operations.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&high.id],
        "priority over all kinds"
    );
}

/// While an operation holding a kind's unique key is not done, an insert of that kind with
/// the key returns it; another kind, or the key after the holder ended, inserts.
async fn a_unique_key_holds_while_its_operation_is_unfinished<S: Store>(store: &S) {
    let keyed = |kind: &str| {
        let mut r = queued(kind);
        r.unique_key = Some("customer-7".into());
        r
    };
    let first = insert_new(store, keyed("export")).await;
    assert_eq!(
        store
            .get(&first.id)
            .await
            .expect("get")
            .and_then(|r| r.unique_key),
        Some("customer-7".to_owned()),
        "the key is kept"
    );
    match store.insert(keyed("export")).await.expect("insert") {
        Inserted::Existing(r) => assert_eq!(r.id, first.id, "the holder is returned"),
        Inserted::New(r) => panic!("a held unique key made a second operation {}", r.id),
    }
    let other = insert_new(store, keyed("import")).await;
    assert_ne!(other.id, first.id, "keys are per kind");
    let running = store
        .claim(&claim("n1", &[("export", 1)], 1, SystemTime::now()))
        .await
        .expect("claim");
    assert_eq!(running.operations.len(), 1);
    match store.insert(keyed("export")).await.expect("insert") {
        Inserted::Existing(r) => assert_eq!(r.id, first.id, "running still holds it"),
        Inserted::New(r) => panic!("a running holder's key made {}", r.id),
    }
    let running = running.operations.into_iter().next().expect("one");
    change(store, &running, succeeded()).await;
    let next = insert_new(store, keyed("export")).await;
    assert_ne!(next.id, first.id, "a done holder frees the key");
    match store.insert(keyed("export")).await.expect("insert") {
        Inserted::Existing(r) => assert_eq!(r.id, next.id, "the new holder"),
        Inserted::New(r) => panic!("made {}", r.id),
    }
}

/// Inserts of one unique key at the same moment store one operation; every caller gets it.
async fn one_unique_key_inserted_at_once_makes_one_operation<S: Store>(store: std::sync::Arc<S>) {
    racing_inserts(store, |r| r.unique_key = Some("key-race".into())).await;
}

/// `insert_many` answers each record in order: new ones with increasing `seq`s, and a
/// request id or unique key taken before or earlier in the same call answered with its
/// holder; every new one is stored.
async fn insert_many_stores_all_in_order_with_each_ones_semantics<S: Store>(store: &S) {
    let mut before = queued("a");
    before.request_id = Some("rid-before".into());
    let before = insert_new(store, before).await;
    let mut batch = Vec::new();
    for i in 0..5 {
        let mut r = queued("a");
        r.priority = i;
        batch.push(r);
    }
    batch[1].request_id = Some("rid-before".into());
    batch[2].request_id = Some("rid-in".into());
    batch[3].request_id = Some("rid-in".into());
    batch[0].unique_key = Some("u".into());
    batch[4].unique_key = Some("u".into());
    let sent: Vec<_> = batch.iter().map(|r| r.id.clone()).collect();
    let answers = store.insert_many(batch).await.expect("insert_many");
    assert_eq!(answers.len(), 5);
    let id = |i: &Inserted| match i {
        Inserted::New(r) | Inserted::Existing(r) => r.id.clone(),
    };
    assert!(matches!(answers[0], Inserted::New(_)));
    assert!(matches!(&answers[1], Inserted::Existing(r) if r.id == before.id));
    assert!(matches!(answers[2], Inserted::New(_)));
    assert!(
        matches!(&answers[3], Inserted::Existing(r) if r.id == sent[2]),
        "a request id taken earlier in the call: {:?}",
        id(&answers[3])
    );
    assert!(
        matches!(&answers[4], Inserted::Existing(r) if r.id == sent[0]),
        "a unique key taken earlier in the call: {:?}",
        id(&answers[4])
    );
    let seqs: Vec<i64> = answers
        .iter()
        .filter_map(|a| match a {
            Inserted::New(r) => Some(r.seq),
            Inserted::Existing(_) => None,
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > before.seq,
        "{seqs:?}"
    );
    for new in [&sent[0], &sent[2]] {
        assert!(store.get(new).await.expect("get").is_some(), "{new} stored");
    }
    let page = store
        .list(0, &Filter::parse("").expect("empty filter"), 10)
        .await
        .expect("list");
    assert_eq!(page.len(), 3, "the one before and two new");
    assert!(store
        .insert_many(Vec::new())
        .await
        .expect("empty")
        .is_empty());
    // One record that cannot be stored (its id is taken) and none is.
    let fine = queued("a");
    let fine_id = fine.id.clone();
    let mut clash = queued("a");
    clash.id = before.id.clone();
    assert!(
        store.insert_many(vec![fine, clash]).await.is_err(),
        "a taken id is refused"
    );
    assert_eq!(
        store.get(&fine_id).await.expect("get"),
        None,
        "all or none: the good one is not stored either"
    );
}

/// RUNNING work of a node whose lease ended (or that has none) is an orphan to others; a node
/// with a live lease keeps its work; a node's own work is never its orphan.
async fn orphans_are_the_work_of_expired_leases<S: Store>(store: &S) {
    let now = base() + Duration::from_secs(1000);
    for _ in 0..2 {
        insert_new(store, queued("a")).await;
    }
    store
        .heartbeat("alive", now + Duration::from_secs(30))
        .await
        .expect("heartbeat");
    store
        .heartbeat("dead", now - Duration::from_secs(1))
        .await
        .expect("heartbeat");
    let a = store
        .claim(&claim("alive", &[("a", 1)], 1, now))
        .await
        .expect("claim");
    let d = store
        .claim(&claim("dead", &[("a", 1)], 1, now))
        .await
        .expect("claim");
    let orphans: Vec<_> = store
        .orphans("rescuer", now, 10)
        .await
        .expect("orphans")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(orphans, vec![d.operations[0].id.clone()]);
    assert!(
        store
            .orphans("dead", now, 10)
            .await
            .expect("orphans")
            .is_empty(),
        "a node's own work is not its orphan"
    );
    store
        .heartbeat("alive", now - Duration::from_secs(1))
        .await
        .expect("heartbeat");
    assert_eq!(
        store
            .orphans("rescuer", now, 10)
            .await
            .expect("orphans")
            .len(),
        2,
        "a lease that ended leaves its work to others"
    );
    assert_eq!(a.operations.len(), 1);
}

/// Queued work past its deadline is found; the next deadline is told; running work is its
/// worker's.
async fn deadlines_of_queued_work<S: Store>(store: &S) {
    let now = base() + Duration::from_secs(50);
    let mut ids = Vec::new();
    for secs in [10, 40, 90, 60] {
        let mut r = queued("a");
        r.deadline = Some(base() + Duration::from_secs(secs));
        ids.push(insert_new(store, r).await);
    }
    // The one due at 40 runs: its deadline is its worker's.
    change(store, &ids[1], Change::Start { node: "n".into() }).await;
    let found = store.deadlines(now, 10).await.expect("deadlines");
    let passed: Vec<_> = found.passed.iter().map(|r| r.id.clone()).collect();
    assert_eq!(passed, vec![ids[0].id.clone()]);
    assert_eq!(found.next, Some(base() + Duration::from_secs(60)));
}

/// Two nodes claiming at once from the same store never both get an operation.
async fn two_claimers_never_get_the_same_operation<S: Store>(store: std::sync::Arc<S>) {
    for _ in 0..200 {
        insert_new(&*store, queued("a")).await;
    }
    let now = base() + Duration::from_secs(10_000);
    let mut handles = Vec::new();
    for node in ["x", "y"] {
        let store = std::sync::Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let c = store
                    .claim(&claim(node, &[("a", 7)], 7, now))
                    .await
                    .expect("claim");
                if c.operations.is_empty() {
                    return got;
                }
                got.extend(c.operations.into_iter().map(|r| r.id));
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("claimer"));
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "an operation was claimed twice");
    assert_eq!(count, 200, "every operation was claimed once");
}
