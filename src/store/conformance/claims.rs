//! Claims: due work in order, priorities, running limits, keys, rates, and claimers racing.

use super::*;

/// On a shared store, a claim counts what runs on every node: a kind's limit and the total
/// hold over all claimers, concurrent ones included.
pub async fn claims_keep_the_running_limits_over_all_nodes<S: Store>(store: std::sync::Arc<S>) {
    for kind in ["a", "a", "a", "a", "b", "b", "b", "b"] {
        insert_new(&*store, queued(kind)).await;
    }
    let limits = crate::store::RunningLimits {
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
pub async fn queued_counts_follow_claims_and_ends<S: Store>(store: &S) {
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

/// A claim starts the oldest due work first, within each kind's room and the total; work whose
/// time has not come stays queued, and its time is told.
pub async fn claims_take_due_work_in_order_within_limits<S: Store>(store: &S) {
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
pub async fn claims_take_higher_priorities_first<S: Store>(store: &S) {
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

/// A claim starts each operation as the state machine's `Change::Start` does (QUEUED →
/// RUNNING on the claiming node, one version on, a retry's next attempt time cleared), at
/// the claim's time or a little after (a claim that waited for another's lock dates its
/// starts when it holds it); alike whether the kind's work passes through gates or not.
pub async fn a_claim_starts_as_the_state_machine_does<S: Store>(store: &S) {
    let now = base() + Duration::from_secs(100);
    let at_base = |mut r: OperationRecord| {
        r.create_time = base();
        r.update_time = base();
        r
    };
    let plain = insert_new(store, at_base(queued("a"))).await;
    let retried = insert_new(store, at_base(queued("r"))).await;
    let retried = change(
        store,
        &retried,
        Change::Start {
            node: "gone".into(),
        },
    )
    .await;
    let retried = change(
        store,
        &retried,
        Change::Retry {
            next_attempt: base() + Duration::from_secs(5),
            last_error: crate::proto::google::rpc::Status {
                code: Code::Unavailable as i32,
                message: "later".into(),
                details: Vec::new(),
            },
            status_message: "once more".into(),
        },
    )
    .await;
    let mut keyed = at_base(queued("k"));
    keyed.concurrency_key = Some("x".into());
    let keyed = insert_new(store, keyed).await;
    for (kind, queued, gated) in [
        ("a", &plain, false),
        ("r", &retried, false),
        ("k", &keyed, true),
    ] {
        let mut ask = claim("n1", &[(kind, 1)], 1, now);
        if gated {
            ask.key_limits = vec![(kind.to_owned(), 1)];
        }
        let claimed = store.claim(&ask).await.expect("claim").operations;
        assert_eq!(claimed.len(), 1, "{kind}: {claimed:?}");
        let started = &claimed[0];
        let at = started.start_time.expect("a start time");
        assert!(at >= now, "{kind}: started {at:?}, before the claim");
        let expected = queued
            .apply(Change::Start { node: "n1".into() }, at)
            .expect("a start");
        assert_eq!(started, &expected, "{kind}");
        assert_eq!(
            store.get(&started.id).await.expect("get").as_ref(),
            Some(started),
            "{kind}: stored as answered"
        );
    }
}

/// Under a limit per concurrency key, a claim starts no more of a key than the limit allows,
/// counting what runs (on any node) and what it starts itself; work of a key at its limit is
/// passed over, and the work behind it (other keys, no key) starts; when one of a key ends,
/// the next of that key may start. Kinds without a limit are not held back.
pub async fn claims_keep_each_keys_limit<S: Store>(store: &S) {
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
    let ids = |c: &crate::store::Claimed| {
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
pub async fn claims_keep_each_kinds_start_rate<S: Store>(store: &S) {
    use crate::store::Rate;
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

/// Two nodes claiming at once from the same store never both get an operation.
pub async fn two_claimers_never_get_the_same_operation<S: Store>(store: std::sync::Arc<S>) {
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
