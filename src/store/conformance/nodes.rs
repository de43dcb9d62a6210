//! Leases, orphans, node records, registrations and the change feed.

use super::*;

/// Declared kinds and sessions are kept by name, apart from each other, replaced by a later
/// registration of the same name, and forgotten when unregistered.
pub async fn registrations_are_kept_replaced_and_forgotten<S: Store>(store: &S) {
    use crate::store::Registered;
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
pub async fn the_feed_shows_each_latest_change_once_in_order<S: Store>(store: &S) {
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
pub async fn a_cancel_request_reaches_the_owner_through_the_feed<S: Store>(store: &S) {
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

/// A node whose lease ended long ago and that runs nothing is no longer listed.
pub async fn long_gone_idle_nodes_are_forgotten<S: Store>(store: &S) {
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

/// RUNNING work of a node whose lease ended (or that has none) is an orphan to others; a node
/// with a live lease keeps its work; a node's own work is never its orphan.
pub async fn orphans_are_the_work_of_expired_leases<S: Store>(store: &S) {
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
