//! Lists, oldest or newest first, through filters and `create_time` bounds.

use super::*;

/// Lists page oldest first through a filter, each page after the last one's `seq`.
pub async fn list_pages_in_order_with_filter<S: Store>(store: &S) {
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

/// Newest-first lists page backwards through a filter.
pub async fn list_newest_pages_backwards_with_filter<S: Store>(store: &S) {
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

/// 100 operations created at 0, 10, 20, … 990 s after `base()`, but the 51st at 5 s (a
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

/// A filter's `create_time` bounds list every match, both ways, under a skewed clock
/// ([`skewed_creations`], then [`create_time_bounds_list_every_match`]).
pub async fn create_time_bounds_find_every_match<S: Store>(store: &S) {
    let stored = skewed_creations(store).await;
    create_time_bounds_list_every_match(store, &stored).await;
}
