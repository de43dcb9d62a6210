//! Issue 22: priorities, batch submit, unique keys and retry policies at submit, through real
//! `oprun serve` processes (the embedded store, and PostgreSQL where it says cluster) and real
//! clients.

mod common;

use std::time::{Duration, SystemTime};

use common::binary::BinServer;
use common::http::request;
use common::{error_code, metadata, sleep_input};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{CancelOperationRequest, GetOperationRequest, Operation};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{
    BatchSubmitTasksRequest, RetryPolicy, SleepInput, SubmitTaskRequest,
};
use oprun::store::postgres::testing::TestDatabase;
use tonic::transport::Channel;

fn sleep(ms: u64) -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: "sleep".into(),
        input: Some(sleep_input(ms, 1, "")),
        ..Default::default()
    }
}

async fn submit(channel: &Channel, request: SubmitTaskRequest) -> Operation {
    TaskServiceClient::new(channel.clone())
        .submit_task(request)
        .await
        .expect("submit")
        .into_inner()
}

async fn wait_done(channel: &Channel, name: &str) -> Operation {
    common::wait_done(&mut OperationsClient::new(channel.clone()), name).await
}

async fn wait_running(channel: &Channel, name: &str) {
    for _ in 0..400 {
        let op = OperationsClient::new(channel.clone())
            .get_operation(GetOperationRequest { name: name.into() })
            .await
            .expect("get")
            .into_inner();
        if metadata(&op).state == State::Running as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} not RUNNING within 10 s");
}

async fn count(channel: &Channel, filter: &str) -> usize {
    common::list_all(channel, filter).await.len()
}

/// `oprun serve` nodes on the PostgreSQL database `db`, named `ids`, each with `extra`, and
/// their directories (bound first, so that they outlive the servers).
fn nodes(
    db: &TestDatabase,
    ids: &[&str],
    extra: &[&str],
) -> (Vec<tempfile::TempDir>, Vec<BinServer>) {
    let url = db.url();
    let dirs: Vec<_> = ids.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let servers = dirs
        .iter()
        .zip(ids)
        .map(|(dir, id)| {
            let mut args = vec!["--store", &url, "--node-id", id];
            args.extend_from_slice(extra);
            BinServer::start_with(dir.path(), "127.0.0.1:0", &args, &[])
        })
        .collect();
    (dirs, servers)
}

fn start_time(op: &Operation) -> SystemTime {
    SystemTime::try_from(metadata(op).start_time.expect("started")).expect("a time")
}

/// With the one slot busy, 50 low then 50 high are submitted; when the slot frees, every
/// high one starts before any low one.
async fn high_priorities_start_first(server: &BinServer) {
    let channel = server.channel().await;
    let busy = submit(&channel, sleep(60_000)).await;
    wait_running(&channel, &busy.name).await;
    let mut low = Vec::new();
    let mut high = Vec::new();
    for _ in 0..50 {
        low.push(
            submit(
                &channel,
                SubmitTaskRequest {
                    priority: -1,
                    ..sleep(1)
                },
            )
            .await
            .name,
        );
    }
    for _ in 0..50 {
        high.push(
            submit(
                &channel,
                SubmitTaskRequest {
                    priority: 10,
                    ..sleep(1)
                },
            )
            .await
            .name,
        );
    }
    assert_eq!(
        count(&channel, "priority = 10 AND state = QUEUED").await,
        50,
        "the priority is in the metadata and filterable"
    );
    OperationsClient::new(channel.clone())
        .cancel_operation(CancelOperationRequest { name: busy.name })
        .await
        .expect("cancel");
    let mut last_high = SystemTime::UNIX_EPOCH;
    for name in &high {
        let op = wait_done(&channel, name).await;
        assert_eq!(error_code(&op), None, "{name}");
        assert_eq!(metadata(&op).priority, 10);
        last_high = last_high.max(start_time(&op));
    }
    for name in &low {
        let op = wait_done(&channel, name).await;
        assert!(
            start_time(&op) > last_high,
            "a low one ({name}) started before the last high one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priorities_start_first_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &["--max-running", "1"], &[]);
    high_priorities_start_first(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priorities_start_first_on_postgres() {
    let db = TestDatabase::create("priorities").await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    let server = BinServer::start_with(
        dir.path(),
        "127.0.0.1:0",
        &["--store", &url, "--max-running", "1"],
        &[],
    );
    high_priorities_start_first(&server).await;
}

/// A priority outside -100..100 is refused, saying the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    for priority in [101, -101, i32::MAX] {
        let err = TaskServiceClient::new(channel.clone())
            .submit_task(SubmitTaskRequest {
                priority,
                ..sleep(1)
            })
            .await
            .expect_err("out of range");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("from -100 to 100"),
            "{}",
            err.message()
        );
    }
}

/// 1,000 in one call all exist; one bad request makes the whole call INVALID_ARGUMENT naming
/// its index, and nothing is created; request ids repeated inside a batch behave as singly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_submit_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    let mut tasks = TaskServiceClient::new(channel.clone());
    let thousand: Vec<SubmitTaskRequest> = (0..1000).map(|_| sleep(1)).collect();
    let ops = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest {
            requests: thousand.clone(),
        })
        .await
        .expect("batch")
        .into_inner()
        .operations;
    assert_eq!(ops.len(), 1000);
    let mut names: Vec<&str> = ops.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 1000, "1,000 distinct operations");
    assert_eq!(count(&channel, "").await, 1000, "all stored");

    let mut bad = thousand.clone();
    bad[417].kind = "nope".into();
    let err = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest { requests: bad })
        .await
        .expect_err("one bad request");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("requests[417]: "),
        "{}",
        err.message()
    );
    assert!(err.message().contains("unknown kind"), "{}", err.message());
    let mut too_wide = thousand.clone();
    too_wide[999].retry_policy = Some(RetryPolicy {
        max_attempts: 99,
        ..Default::default()
    });
    let err = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest { requests: too_wide })
        .await
        .expect_err("one bad request");
    assert!(
        err.message().starts_with("requests[999]: "),
        "{}",
        err.message()
    );
    let mut over = thousand.clone();
    over.push(sleep(1));
    let err = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest { requests: over })
        .await
        .expect_err("too many");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 1000"), "{}", err.message());
    assert_eq!(count(&channel, "").await, 1000, "nothing more stored");

    // Request ids: a repeat inside the batch, and one of an earlier call, answer the same
    // operation; the same id for a different request is refused.
    let with_id = |id: &str, ms| SubmitTaskRequest {
        request_id: id.into(),
        ..sleep(ms)
    };
    let first = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest {
            requests: vec![with_id("r-1", 1), with_id("r-2", 1), with_id("r-1", 1)],
        })
        .await
        .expect("batch")
        .into_inner()
        .operations;
    assert_eq!(first[0].name, first[2].name);
    assert_ne!(first[0].name, first[1].name);
    let again = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest {
            requests: vec![with_id("r-2", 1), sleep(1)],
        })
        .await
        .expect("batch")
        .into_inner()
        .operations;
    assert_eq!(
        again[0].name, first[1].name,
        "a request id of an earlier call"
    );
    let err = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest {
            requests: vec![with_id("r-3", 1), with_id("r-3", 2)],
        })
        .await
        .expect_err("one request id, two requests");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("requests[1]: "),
        "{}",
        err.message()
    );
    assert_eq!(count(&channel, "").await, 1003);

    // Over REST, by the same rule.
    let body = serde_json::json!({
        "requests": [
            {"kind": "sleep", "input": {"@type": "type.googleapis.com/oprun.v1.SleepInput", "duration": "0.001s"}, "priority": 5},
            {"kind": "sleep", "input": {"@type": "type.googleapis.com/oprun.v1.SleepInput"}, "uniqueKey": "k"},
        ]
    });
    let reply = request(
        server.addr,
        "POST",
        "/v1/tasks:batchSubmit",
        &[("content-type", "application/json")],
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    let operations = json["operations"].as_array().expect("operations");
    assert_eq!(operations.len(), 2);
    assert_eq!(operations[0]["metadata"]["priority"], 5);
    assert_eq!(operations[1]["metadata"]["uniqueKey"], "k");
}

/// Submissions of one unique key to two nodes at once make one operation while it is not
/// done; every caller gets it; once it is done the key makes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_key_makes_one_operation_across_nodes() {
    let db = TestDatabase::create("unique").await;
    let (_dirs, servers) = nodes(&db, &["node-a", "node-b"], &[]);
    let channels = [servers[0].channel().await, servers[1].channel().await];
    let keyed = || SubmitTaskRequest {
        unique_key: "customer-7".into(),
        ..sleep(1500)
    };
    let submissions: Vec<_> = (0..20)
        .map(|i| {
            let channel = channels[i % 2].clone();
            tokio::spawn(async move { submit(&channel, keyed()).await.name })
        })
        .collect();
    let mut names = Vec::new();
    for s in submissions {
        names.push(s.await.expect("a submission"));
    }
    assert!(
        names.iter().all(|n| *n == names[0]),
        "one operation for the key: {names:?}"
    );
    let done = wait_done(&channels[1], &names[0]).await;
    assert_eq!(metadata(&done).unique_key, "customer-7");
    let next = submit(&channels[0], keyed()).await;
    assert_ne!(next.name, names[0], "a done operation frees its key");
    let stored = count(&channels[0], "").await;
    assert_eq!(stored, 2, "the first and the next");
}

/// A submission narrows the kind's retry policy: fewer attempts end the operation sooner;
/// asking for more attempts, or a faster backoff, than the kind allows is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_narrows_the_retry_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    // The sleep kind retries UNAVAILABLE up to 5 attempts; its first 3 fail.
    let flaky = |policy: Option<RetryPolicy>| SubmitTaskRequest {
        kind: "sleep".into(),
        input: Some(oprun::model::pack(&SleepInput {
            fail_attempts: 3,
            ..Default::default()
        })),
        retry_policy: policy,
        ..Default::default()
    };
    let narrowed = submit(
        &channel,
        flaky(Some(RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        })),
    )
    .await;
    let kinds = wait_done(&channel, &narrowed.name).await;
    assert_eq!(error_code(&kinds), Some(tonic::Code::Unavailable as i32));
    let meta = metadata(&kinds);
    assert_eq!(meta.attempt, 2, "two attempts, as asked");
    assert_eq!(meta.retry_policy.expect("kept").max_attempts, 2);
    let full = wait_done(&channel, &submit(&channel, flaky(None)).await.name).await;
    assert_eq!(error_code(&full), None, "the kind's 5 attempts get through");
    assert_eq!(metadata(&full).attempt, 4);
    for (policy, says) in [
        (
            RetryPolicy {
                max_attempts: 6,
                ..Default::default()
            },
            "allows at most 5",
        ),
        (
            RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
                ..Default::default()
            },
            "retries no sooner than",
        ),
        (
            RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                max_backoff: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "no faster than kind",
        ),
        (
            RetryPolicy {
                max_backoff: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "no faster than kind",
        ),
    ] {
        let err = TaskServiceClient::new(channel.clone())
            .submit_task(flaky(Some(policy)))
            .await
            .expect_err("wider than the kind's");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(says), "{}", err.message());
    }
}

/// 3 keys × 20 operations under `--kind-key-limit sleep=1` on three PostgreSQL nodes: the
/// recorded run intervals of one key never overlap, every operation ends, and different keys
/// run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_one_at_a_time_over_three_nodes() {
    let db = TestDatabase::create("keys").await;
    let (_dirs, servers) = nodes(
        &db,
        &["node-a", "node-b", "node-c"],
        &["--kind-key-limit", "sleep=1"],
    );
    let mut channels = Vec::new();
    for server in &servers {
        channels.push(server.channel().await);
    }
    let mut names = Vec::new();
    for i in 0..60 {
        let op = submit(
            &channels[i % 3],
            SubmitTaskRequest {
                concurrency_key: format!("customer-{}", i % 3),
                ..sleep(40)
            },
        )
        .await;
        names.push(op.name);
    }
    let mut runs: std::collections::HashMap<String, Vec<(SystemTime, SystemTime, String)>> =
        std::collections::HashMap::new();
    for name in &names {
        let op = wait_done(&channels[0], name).await;
        assert_eq!(error_code(&op), None, "{name}");
        let meta = metadata(&op);
        let start = start_time(&op);
        let end = SystemTime::try_from(meta.end_time.expect("ended")).unwrap();
        runs.entry(meta.concurrency_key.clone())
            .or_default()
            .push((start, end, meta.node));
    }
    assert_eq!(runs.len(), 3);
    let mut nodes = std::collections::HashSet::new();
    for (key, intervals) in &mut runs {
        assert_eq!(intervals.len(), 20, "{key}");
        intervals.sort();
        for pair in intervals.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two of {key} ran at once: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
        nodes.extend(intervals.iter().map(|(_, _, node)| node.clone()));
    }
    let all: Vec<&(SystemTime, SystemTime, String)> = runs.values().flatten().collect();
    let overlapping = all.iter().any(|a| {
        all.iter()
            .any(|b| !std::ptr::eq(*a, *b) && a.0 < b.1 && b.0 < a.1)
    });
    assert!(overlapping, "different keys ran at the same time");
    assert!(nodes.len() > 1, "the work spread over the nodes: {nodes:?}");
}

/// 600 operations under `--kind-rate sleep=50/1s` on two PostgreSQL nodes: no more than 50
/// start in any second (± one), all 600 start (none refused) over about 12 s, and one waiting
/// says why (its status) while the nodes count the claims the rate held back (a metric).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_rate_holds_over_two_nodes() {
    let db = TestDatabase::create("rates").await;
    let (_dirs, servers) = nodes(&db, &["node-a", "node-b"], &["--kind-rate", "sleep=50/1s"]);
    let channels = [servers[0].channel().await, servers[1].channel().await];
    let mut names = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let ops = TaskServiceClient::new(channel.clone())
            .batch_submit_tasks(BatchSubmitTasksRequest {
                requests: (0..300).map(|_| sleep(1)).collect(),
            })
            .await
            .unwrap_or_else(|e| panic!("batch on node {i}: {e}"))
            .into_inner()
            .operations;
        names.extend(ops.into_iter().map(|op| op.name));
    }
    // The last one waits for the rate for seconds: its status says so.
    let mut said = String::new();
    for _ in 0..100 {
        let op = OperationsClient::new(channels[0].clone())
            .get_operation(GetOperationRequest {
                name: names[599].clone(),
            })
            .await
            .expect("get")
            .into_inner();
        said = metadata(&op).status_message;
        if said.contains("start rate") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        said.contains("waiting for the start rate of kind sleep (50/1s"),
        "{said:?}"
    );
    let mut starts = Vec::new();
    for name in &names {
        let op = wait_done(&channels[1], name).await;
        assert_eq!(error_code(&op), None, "{name}");
        starts.push(start_time(&op));
    }
    starts.sort();
    for (i, t) in starts.iter().enumerate() {
        let window_end = *t + Duration::from_secs(1);
        let within = starts[i..].iter().take_while(|s| **s < window_end).count();
        assert!(within <= 51, "{within} starts in the second from {t:?}");
    }
    let span = starts[599].duration_since(starts[0]).unwrap();
    assert!(
        span >= Duration::from_millis(10_900) && span < Duration::from_secs(20),
        "600 at 50/s over {span:?}"
    );
    let mut held = 0;
    let mut bodies = String::new();
    for server in &servers {
        let metrics = request(server.addr, "GET", "/metrics", &[], None).await;
        held += metrics
            .body
            .lines()
            .filter(|l| l.starts_with("oprun_rate_limited_claims_total{kind=\"sleep\"}"))
            .count();
        bodies.push_str(&metrics.body);
    }
    assert!(held >= 1, "a node counted held claims:\n{bodies}");
}
