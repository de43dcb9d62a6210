//! Inserts: sequence numbers, request ids, unique keys, batches, and races between them.

use super::*;

/// Each insert gets a `seq` higher than every earlier one, and is read back as inserted.
pub async fn insert_assigns_increasing_seq<S: Store>(store: &S) {
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
pub async fn one_request_id_inserted_at_once_makes_one_operation<S: Store>(
    store: std::sync::Arc<S>,
) {
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

/// An insert with a request id already taken returns the operation it made, and makes none.
pub async fn request_id_returns_existing<S: Store>(store: &S) {
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

/// While an operation holding a kind's unique key is not done, an insert of that kind with
/// the key returns it; another kind, or the key after the holder ended, inserts.
pub async fn a_unique_key_holds_while_its_operation_is_unfinished<S: Store>(store: &S) {
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
pub async fn one_unique_key_inserted_at_once_makes_one_operation<S: Store>(
    store: std::sync::Arc<S>,
) {
    racing_inserts(store, |r| r.unique_key = Some("key-race".into())).await;
}

/// `insert_many` answers each record in order: new ones with increasing `seq`s, and a
/// request id or unique key taken before or earlier in the same call answered with its
/// holder; every new one is stored.
pub async fn insert_many_stores_all_in_order_with_each_ones_semantics<S: Store>(store: &S) {
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
