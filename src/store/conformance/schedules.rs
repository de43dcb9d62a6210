//! Schedules: kept, fenced, listed, found by name, and deleted.

use super::*;

/// A schedule row as a check writes it.
fn schedule_row(id: &str, wake: Option<i64>, version: i64) -> crate::store::ScheduleRow {
    crate::store::ScheduleRow {
        id: id.to_owned(),
        body: format!("body of {id} at {version}").into_bytes(),
        wake,
        version,
    }
}

/// Schedules are created once per id, changed only at the version expected, listed by id a
/// page at a time, found by wake time, and deleted.
pub async fn schedules_are_kept_fenced_listed_and_deleted<S: Store>(store: &S) {
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
    let ids =
        |rows: Vec<crate::store::ScheduleRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
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
pub async fn operations_of_a_schedule_are_found_by_its_name<S: Store>(store: &S) {
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
pub async fn one_schedule_change_wins_among_concurrent_writers<S: Store>(store: std::sync::Arc<S>) {
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
