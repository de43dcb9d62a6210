//! The store conformance suite: every backend runs [`run_all`] in its tests.
//!
//! Each check panics with a message saying which promise of [`Store`] was broken.

use std::future::Future;

use prost_types::Any;

use super::{Inserted, Store};
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
