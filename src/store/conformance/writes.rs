//! Fenced writes, deletes, the sweep, and what a record keeps.

use super::*;

/// A fenced write replaces the stored record, and a read shows it.
pub async fn write_replaces_state<S: Store>(store: &S) {
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

/// Only a finished operation is deleted.
pub async fn delete_only_done<S: Store>(store: &S) {
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

/// `unfinished` lists what is queued or running, nothing done.
pub async fn unfinished_lists_queued_and_running<S: Store>(store: &S) {
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

/// Priority, keys, schedule and times are read back as written.
pub async fn scheduling_fields_round_trip<S: Store>(store: &S) {
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

/// The sweep removes finished operations past retention, then the oldest past the cap.
pub async fn sweep_removes_expired_then_oldest<S: Store>(store: &S) {
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
pub async fn a_stale_version_is_refused<S: Store>(store: &S) {
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
pub async fn a_stale_owner_is_refused_and_a_cancel_request_kept<S: Store>(store: &S) {
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

/// Queued work past its deadline is found; the next deadline is told; running work is its
/// worker's.
pub async fn deadlines_of_queued_work<S: Store>(store: &S) {
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
