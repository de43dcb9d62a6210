//! The store conformance suite: every backend runs [`run_all`] in its tests.
//!
//! Each check panics with a message saying which promise of [`Store`] was broken.

use std::future::Future;
use std::time::{Duration, SystemTime};

use prost_types::Any;

use super::{Inserted, Store, Swept};
use crate::filter::Filter;
use crate::model::{OperationRecord, State};
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
    update_replaces_state(&make().await).await;
    delete_only_done(&make().await).await;
    list_pages_in_order_with_filter(&make().await).await;
    unfinished_lists_queued_and_running(&make().await).await;
    scheduling_fields_round_trip(&make().await).await;
    sweep_removes_expired_then_oldest(&make().await).await;
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

async fn update_replaces_state<S: Store>(store: &S) {
    let mut r = insert_new(store, queued("a")).await;
    r.state = State::Running;
    r.progress.completed = 3;
    r.progress.total = 10;
    r.status_message = "working".into();
    store.update(&r).await.expect("update");
    assert_eq!(store.get(&r.id).await.expect("get"), Some(r.clone()));
    r.fail(State::Failed, Code::Unknown, "boom");
    store.update(&r).await.expect("update");
    let got = store.get(&r.id).await.expect("get").expect("exists");
    assert_eq!(got.error_code(), Some(Code::Unknown as i32));
    assert!(got.is_done());
}

async fn delete_only_done<S: Store>(store: &S) {
    let mut r = insert_new(store, queued("a")).await;
    assert_eq!(store.delete_done(&r.id).await.expect("delete"), Some(false));
    assert!(
        store.get(&r.id).await.expect("get").is_some(),
        "unfinished ones are kept"
    );
    r.fail(State::Cancelled, Code::Cancelled, "cancelled");
    store.update(&r).await.expect("update");
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

async fn unfinished_lists_queued_and_running<S: Store>(store: &S) {
    let q = insert_new(store, queued("a")).await;
    let mut run = insert_new(store, queued("a")).await;
    run.state = State::Running;
    store.update(&run).await.expect("update");
    let mut done = insert_new(store, queued("a")).await;
    done.fail(State::Failed, Code::Aborted, "x");
    store.update(&done).await.expect("update");
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
        let mut r = insert_new(store, queued("a")).await;
        r.fail(State::Failed, Code::Unknown, "x");
        r.end_time = Some(base + Duration::from_secs(i));
        store.update(&r).await.expect("update");
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
            finished: 3,
            oldest_finished: Some(base + Duration::from_secs(2)),
        },
        "operations that ended before the cutoff are removed"
    );
    let swept = store.sweep(base, Some(1)).await.expect("sweep");
    assert_eq!(swept.deleted, 2, "the oldest beyond the cap are removed");
    assert_eq!(swept.finished, 1);
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
    assert_eq!(swept.finished, 0);
    assert_eq!(swept.oldest_finished, None);
}
