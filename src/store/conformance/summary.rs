//! The summary (counts by kind and state, ends by bucket) against full counts.

use super::*;

/// The summary counts operations by kind and state, and ends by bucket.
pub async fn summarize_counts_kinds_states_and_ends<S: Store>(store: &S) {
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

/// What [`Store::summarize`] answers, counted from every operation (the definition the
/// tallies keep incrementally).
pub async fn counted<S: Store>(
    store: &S,
    since: SystemTime,
    bucket: Duration,
) -> crate::store::Summary {
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
    crate::store::Summary {
        counts: counts
            .into_iter()
            .map(|((kind, _), (state, n))| (kind, state, n))
            .collect(),
        finished: finished.into_iter().collect(),
    }
}

/// `n` operations of `kind` through `store`: each inserted and started, two in three then
/// ended (at one of 90 seconds after `base()`), one in six of those deleted.
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

/// Summaries from `base()` on by second and by minute, as `store` answers them.
pub async fn summaries<S: Store>(store: &S) -> Vec<crate::store::Summary> {
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
pub async fn counted_summaries<S: Store>(store: &S) -> Vec<crate::store::Summary> {
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
pub async fn the_summary_is_a_full_count<S: Store>(store: &S) {
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
    let sorted = |mut s: crate::store::Summary| {
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
