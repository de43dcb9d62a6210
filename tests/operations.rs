//! The Operations, TaskService and SnapshotService RPCs over a real socket with a real tonic
//! client: every happy path and the errors a client can provoke.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{error_code, metadata, response, sleep_input, TestServer};
use oprun::model::pack;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    Operation, WaitOperationRequest,
};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::{ListTaskKindsRequest, SleepOutput, SubmitTaskRequest};
use oprun::RunnerConfig;
use tonic::Code;
use tonic_types::StatusExt;

fn get(name: &str) -> GetOperationRequest {
    GetOperationRequest { name: name.into() }
}

fn list(filter: &str, page_size: i32, page_token: &str) -> ListOperationsRequest {
    ListOperationsRequest {
        name: "operations".into(),
        filter: filter.into(),
        page_size,
        page_token: page_token.into(),
        return_partial_success: false,
    }
}

fn wait(name: &str, timeout: Option<Duration>) -> WaitOperationRequest {
    WaitOperationRequest {
        name: name.into(),
        timeout: timeout.map(|t| prost_types::Duration::try_from(t).unwrap()),
    }
}

/// Asserts a status code, an ErrorInfo in the oprun.dev domain, and a message mentioning
/// `needle`.
fn assert_status(status: &tonic::Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
    let info = status
        .get_details_error_info()
        .expect("every error carries a google.rpc.ErrorInfo");
    assert_eq!(info.domain, "oprun.dev");
    assert!(
        !info.reason.is_empty()
            && info
                .reason
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
    );
}

/// Polls GetOperation every 20 ms (up to 20 s) until `pred` holds.
async fn poll_until(
    server: &TestServer,
    name: &str,
    pred: impl Fn(&Operation) -> bool,
) -> Operation {
    let mut ops = server.operations().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let op = ops.get_operation(get(name)).await.unwrap().into_inner();
        if pred(&op) {
            return op;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached for {name}: {op:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sleep runs to completion: Get shows the response and SUCCEEDED metadata, Wait returns it.
#[tokio::test]
async fn submit_get_wait_happy_path() {
    let server = TestServer::start().await;
    let op = server.submit_sleep(50, 5).await;
    assert!(op.name.starts_with("operations/"));
    assert!(!op.done, "a 50 ms sleep is not done at submission");
    let m = metadata(&op);
    assert_eq!(m.kind, "sleep");
    assert_eq!(m.attempt, 1);
    assert!(m.create_time.is_some());

    let done = server.wait_done(&op.name).await;
    let out: SleepOutput = response(&done);
    assert_eq!(out.steps_done, 5);
    let m = metadata(&done);
    assert_eq!(m.state(), State::Succeeded);
    assert_eq!(
        m.progress.as_ref().map(|p| (p.completed, p.total)),
        Some((5, 5))
    );
    assert!(m.end_time.is_some() && m.start_time.is_some());
    match &done.result {
        Some(oprun::proto::google::longrunning::operation::Result::Response(any)) => {
            assert_eq!(any.type_url, "type.googleapis.com/oprun.v1.SleepOutput");
        }
        other => panic!("expected a response, got {other:?}"),
    }
    let again = server.get_op(&op.name).await;
    assert_eq!(again, done, "a finished operation reads back unchanged");
    server.stop().await;
}

/// Get, Cancel, Delete and Wait refuse empty and malformed names with INVALID_ARGUMENT and
/// unknown ones with NOT_FOUND.
#[tokio::test]
async fn bad_names_are_refused_precisely() {
    let server = TestServer::start().await;
    let mut ops = server.operations().await;
    for bad in [
        "",
        "bogus",
        "operations/",
        "tasks/abc",
        "operations/a b",
        "operations/a/b",
    ] {
        let e = ops.get_operation(get(bad)).await.unwrap_err();
        assert_status(&e, Code::InvalidArgument, "name");
        let e = ops
            .cancel_operation(CancelOperationRequest { name: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "cancel {bad:?}");
        let e = ops
            .delete_operation(DeleteOperationRequest { name: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "delete {bad:?}");
        let e = ops.wait_operation(wait(bad, None)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "wait {bad:?}");
    }
    let missing = "operations/0123456789abcdef0123456789abcdef";
    assert_status(
        &ops.get_operation(get(missing)).await.unwrap_err(),
        Code::NotFound,
        missing,
    );
    let e = ops
        .cancel_operation(CancelOperationRequest {
            name: missing.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ops
        .delete_operation(DeleteOperationRequest {
            name: missing.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ops.wait_operation(wait(missing, None)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    server.stop().await;
}

/// SubmitTask refuses an unknown kind (listing the registered ones), a wrong input type
/// (naming the expected one), a missing input, input the kind rejects, and a bad request_id.
#[tokio::test]
async fn submit_refuses_bad_requests() {
    let server = TestServer::start().await;
    let mut tasks = server.tasks().await;
    let submit =
        |kind: &str, input: Option<prost_types::Any>, request_id: &str| SubmitTaskRequest {
            kind: kind.into(),
            input,
            request_id: request_id.into(),
            ..Default::default()
        };
    let e = tasks
        .submit_task(submit("nope", Some(sleep_input(1, 1, "")), ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "unknown kind \"nope\"");
    assert!(
        e.message().contains("sleep") && e.message().contains("snapshot"),
        "{}",
        e.message()
    );
    let e = tasks
        .submit_task(submit("", Some(sleep_input(1, 1, "")), ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "kind is empty");

    let wrong = pack(&SleepOutput { steps_done: 1 });
    let e = tasks
        .submit_task(submit("sleep", Some(wrong), ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "oprun.v1.SleepInput");

    let e = tasks
        .submit_task(submit("sleep", None, ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "input is missing");

    let garbage = prost_types::Any {
        type_url: "type.googleapis.com/oprun.v1.SleepInput".into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let e = tasks
        .submit_task(submit("sleep", Some(garbage), ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "not a valid oprun.v1.SleepInput");

    let negative = pack(&oprun::proto::oprun::v1::SleepInput {
        duration: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        steps: 1,
        fail_message: String::new(),
        ..Default::default()
    });
    let e = tasks
        .submit_task(submit("sleep", Some(negative), ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "duration must not be negative");

    let e = tasks
        .submit_task(submit(
            "sleep",
            Some(sleep_input(1, 1, "")),
            &"x".repeat(200),
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "request_id");

    let listed = server
        .operations()
        .await
        .list_operations(list("", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.operations.is_empty(),
        "refused submissions create nothing"
    );
    server.stop().await;
}

/// ListTaskKinds describes every registered kind with its message types.
#[tokio::test]
async fn list_task_kinds_describes_kinds() {
    let server = TestServer::start().await;
    let kinds = server
        .tasks()
        .await
        .list_task_kinds(ListTaskKindsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .kinds;
    let sleep = kinds
        .iter()
        .find(|k| k.name == "sleep")
        .expect("sleep is built in");
    assert_eq!(sleep.input_type, "oprun.v1.SleepInput");
    assert_eq!(sleep.response_type, "oprun.v1.SleepOutput");
    assert!(sleep.retry_safe);
    let snap = kinds
        .iter()
        .find(|k| k.name == "snapshot")
        .expect("snapshot registered");
    assert_eq!(snap.details_type, "oprun.v1.SnapshotProgress");
    assert_eq!(snap.response_type, "oprun.v1.Snapshot");
    server.stop().await;
}

/// A failing worker ends FAILED with its message; a panicking worker ends FAILED with
/// INTERNAL, and the server keeps serving.
#[tokio::test]
async fn failing_and_panicking_workers() {
    let server = TestServer::start().await;
    let failed = server
        .submit("sleep", sleep_input(0, 1, "disk on fire"))
        .await;
    let failed = server.wait_done(&failed.name).await;
    assert_eq!(error_code(&failed), Some(2));
    assert_eq!(metadata(&failed).state(), State::Failed);
    match &failed.result {
        Some(oprun::proto::google::longrunning::operation::Result::Error(s)) => {
            assert_eq!(s.message, "disk on fire");
        }
        other => panic!("expected an error, got {other:?}"),
    }

    let panicked = server.submit("panic", sleep_input(0, 1, "kaboom")).await;
    let panicked = server.wait_done(&panicked.name).await;
    assert_eq!(error_code(&panicked), Some(13), "a panic ends INTERNAL");
    assert_eq!(metadata(&panicked).state(), State::Failed);
    let after = server.submit_sleep(0, 1).await;
    let after = server.wait_done(&after.name).await;
    assert_eq!(
        error_code(&after),
        None,
        "the runner survives a panicking worker"
    );
    server.stop().await;
}

/// Progress reported by a worker is visible through Get while it runs.
#[tokio::test]
async fn progress_is_visible_mid_run() {
    let server = TestServer::start().await;
    let op = server.submit_sleep(3000, 30).await;
    let mid = poll_until(&server, &op.name, |op| {
        let m = metadata(op);
        let p = m.progress.clone().unwrap_or_default();
        m.state() == State::Running && p.completed > 0 && p.completed < p.total
    })
    .await;
    let m = metadata(&mid);
    assert_eq!(m.progress.as_ref().unwrap().unit, "steps");
    assert!(
        m.status_message.starts_with("step "),
        "{:?}",
        m.status_message
    );
    assert!(!mid.done);
    server.cancel(&op.name).await;
    server.wait_done(&op.name).await;
    server.stop().await;
}

/// Cancelling a running operation ends it CANCELLED (error code 1), not deleted, with
/// requested_cancellation set, promptly (sleep stops within one step).
#[tokio::test]
async fn cancel_running_operation() {
    let server = TestServer::start().await;
    let op = server.submit_sleep(60_000, 600).await;
    poll_until(&server, &op.name, |op| {
        metadata(op).state() == State::Running
    })
    .await;
    let started = Instant::now();
    server.cancel(&op.name).await;
    let done = server.wait_done(&op.name).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sleep stops within a step"
    );
    assert_eq!(error_code(&done), Some(1));
    let m = metadata(&done);
    assert_eq!(m.state(), State::Cancelled);
    assert!(m.requested_cancellation);
    let again = server.get_op(&op.name).await;
    assert_eq!(again, done, "a cancelled operation is kept, not deleted");
    server.stop().await;
}

/// Cancelling a queued operation ends it at once, without it ever running; the operation
/// behind it still runs.
#[tokio::test]
async fn cancel_queued_operation() {
    let server = TestServer::start_with(RunnerConfig::default().max_running(1)).await;
    let blocker = server.submit_sleep(60_000, 600).await;
    poll_until(&server, &blocker.name, |op| {
        metadata(op).state() == State::Running
    })
    .await;
    let queued = server.submit_sleep(10, 1).await;
    let next = server.submit_sleep(10, 1).await;
    let mut ops = server.operations().await;
    let got = ops
        .get_operation(get(&queued.name))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata(&got).state(), State::Queued);
    ops.cancel_operation(CancelOperationRequest {
        name: queued.name.clone(),
    })
    .await
    .unwrap();
    // Ended before Cancel answered: no Wait needed.
    let cancelled = ops
        .get_operation(get(&queued.name))
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.done);
    assert_eq!(error_code(&cancelled), Some(1));
    let m = metadata(&cancelled);
    assert_eq!(m.state(), State::Cancelled);
    assert!(
        m.start_time.is_none(),
        "a cancelled queued operation never started"
    );

    ops.cancel_operation(CancelOperationRequest {
        name: blocker.name.clone(),
    })
    .await
    .unwrap();
    let next = server.wait_done(&next.name).await;
    assert_eq!(
        error_code(&next),
        None,
        "the operation behind it still runs"
    );
    server.stop().await;
}

/// Cancel after done is accepted and never changes the result.
#[tokio::test]
async fn cancel_after_done_keeps_result() {
    let server = TestServer::start().await;
    let op = server.submit_sleep(0, 2).await;
    let done = server.wait_done(&op.name).await;
    let mut ops = server.operations().await;
    ops.cancel_operation(CancelOperationRequest {
        name: op.name.clone(),
    })
    .await
    .unwrap();
    let after = ops.get_operation(get(&op.name)).await.unwrap().into_inner();
    assert_eq!(after, done, "cancel after done changes nothing");
    server.stop().await;
}

/// Delete refuses unfinished operations with FAILED_PRECONDITION, deletes finished ones, and
/// a deleted operation is NOT_FOUND.
#[tokio::test]
async fn delete_rules() {
    let server = TestServer::start().await;
    let mut ops = server.operations().await;
    let running = server.submit_sleep(60_000, 600).await;
    let e = ops
        .delete_operation(DeleteOperationRequest {
            name: running.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, "cancel it first");

    let op = server.submit_sleep(0, 1).await;
    server.wait_done(&op.name).await;
    ops.delete_operation(DeleteOperationRequest {
        name: op.name.clone(),
    })
    .await
    .unwrap();
    let e = ops.get_operation(get(&op.name)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ops
        .delete_operation(DeleteOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    ops.cancel_operation(CancelOperationRequest {
        name: running.name.clone(),
    })
    .await
    .unwrap();
    server.stop().await;
}

/// Wait with a timeout returns the not-done operation after about the timeout; with no
/// timeout it returns as soon as the operation is done; it answers before the caller's own
/// deadline.
#[tokio::test]
async fn wait_with_and_without_timeout() {
    let server = TestServer::start().await;
    let mut ops = server.operations().await;
    let long = server.submit_sleep(60_000, 600).await;
    let started = Instant::now();
    let op = ops
        .wait_operation(wait(&long.name, Some(Duration::from_millis(300))))
        .await
        .unwrap()
        .into_inner();
    let waited = started.elapsed();
    assert!(!op.done);
    assert!(
        waited >= Duration::from_millis(290),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");

    // The caller's deadline (grpc-timeout 400 ms) is shorter than the server's cap: Wait
    // still answers OK with the latest state.
    let mut req = tonic::Request::new(wait(&long.name, None));
    req.set_timeout(Duration::from_millis(400));
    let op = ops
        .wait_operation(req)
        .await
        .expect("Wait answers before the deadline")
        .into_inner();
    assert!(!op.done);

    let short = server.submit_sleep(200, 2).await;
    let started = Instant::now();
    let op = ops
        .wait_operation(wait(&short.name, None))
        .await
        .unwrap()
        .into_inner();
    assert!(op.done, "Wait without timeout returns when done");
    assert!(started.elapsed() < Duration::from_secs(10));

    let e = ops
        .wait_operation(WaitOperationRequest {
            name: short.name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "timeout");
    ops.cancel_operation(CancelOperationRequest {
        name: long.name.clone(),
    })
    .await
    .unwrap();
    server.stop().await;
}

/// request_id makes SubmitTask idempotent; reusing it for a different kind or input is
/// ALREADY_EXISTS.
#[tokio::test]
async fn request_id_idempotency() {
    let server = TestServer::start().await;
    let mut tasks = server.tasks().await;
    let req = SubmitTaskRequest {
        kind: "sleep".into(),
        input: Some(sleep_input(0, 1, "")),
        request_id: "3f1c7a52-5d8e-4c1b-9a57-1b2f3c4d5e6f".into(),
        ..Default::default()
    };
    let first = tasks.submit_task(req.clone()).await.unwrap().into_inner();
    let second = tasks.submit_task(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.name, second.name);
    server.wait_done(&first.name).await;
    let third = tasks.submit_task(req.clone()).await.unwrap().into_inner();
    assert_eq!(third.name, first.name);
    assert!(
        third.done,
        "the repeat returns the operation's latest state"
    );
    let mut other = req.clone();
    other.kind = "gauge".into();
    let e = tasks.submit_task(other).await.unwrap_err();
    assert_status(&e, Code::AlreadyExists, "request_id");
    let mut other_input = req.clone();
    other_input.input = Some(sleep_input(5, 1, ""));
    let e = tasks.submit_task(other_input).await.unwrap_err();
    assert_status(&e, Code::AlreadyExists, "different kind or input");
    let all = server
        .operations()
        .await
        .list_operations(list("", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.operations.len(), 1, "one request_id, one operation");
    server.stop().await;
}

/// Paging over a few hundred operations with a filter: every match exactly once, in creation
/// order, with tokens bound to the filter; page sizes are defaulted and clamped; garbage,
/// negative sizes, foreign tokens and bad filters are INVALID_ARGUMENT.
#[tokio::test]
async fn list_pages_with_filter() {
    let server = TestServer::start().await;
    let mut want_failed = Vec::new();
    let mut all = Vec::new();
    for i in 0..240 {
        let fail = if i % 3 == 0 { "planned" } else { "" };
        let op = server.submit("sleep", sleep_input(0, 1, fail)).await;
        if i % 3 == 0 {
            want_failed.push(op.name.clone());
        }
        all.push(op.name);
    }
    for name in &all {
        server.wait_done(name).await;
    }
    let mut ops = server.operations().await;
    let filter = "kind = \"sleep\" AND done = true AND (error.code = 2 OR state = CANCELLED)";
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = ops
            .list_operations(list(filter, 7, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.operations.len() <= 7);
        got.extend(page.operations.iter().map(|o| o.name.clone()));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(got, want_failed, "every match once, in creation order");
    assert!(pages >= 12);
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no repeats");

    let first = ops
        .list_operations(list("", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.operations.len(),
        50,
        "page_size 0 means the default of 50"
    );
    let mut empty_parent = list("", 5000, "");
    empty_parent.name = String::new();
    let big = ops
        .list_operations(empty_parent)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        big.operations.len(),
        240,
        "an empty parent means the collection"
    );
    assert!(big.next_page_token.is_empty());

    let e = ops.list_operations(list("", -1, "")).await.unwrap_err();
    assert_status(&e, Code::InvalidArgument, "page_size");
    let e = ops
        .list_operations(list("done = maybe", 0, ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "maybe");
    let e = ops
        .list_operations(list("colour = \"red\"", 0, ""))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "unknown field");
    let e = ops
        .list_operations(list("", 0, "not-a-token"))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "page_token");
    let e = ops
        .list_operations(list("done = true", 0, &first.next_page_token))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, "different filter");
    let mut other = list("", 0, "");
    other.name = "projects/x/operations".into();
    let e = ops.list_operations(other).await.unwrap_err();
    assert_status(&e, Code::InvalidArgument, "collection");
    server.stop().await;
}

/// Never more run at once than the per-kind limit (gauge declares 3) or the global limit; and
/// the limits are reached, so the check is not vacuous.
#[tokio::test]
async fn concurrency_limits_hold() {
    let server = TestServer::start().await;
    let mut names = Vec::new();
    for _ in 0..12 {
        names.push(server.submit("gauge", sleep_input(100, 1, "")).await.name);
    }
    for n in &names {
        server.wait_done(n).await;
    }
    assert_eq!(server.gauge.runs.load(Ordering::SeqCst), 12);
    assert_eq!(
        server.gauge.max.load(Ordering::SeqCst),
        3,
        "per-kind limit 3, reached"
    );
    server.stop().await;

    let server = TestServer::start_with(RunnerConfig::default().max_running(2)).await;
    let mut names = Vec::new();
    for _ in 0..8 {
        names.push(server.submit("gauge", sleep_input(100, 1, "")).await.name);
    }
    for n in &names {
        server.wait_done(n).await;
    }
    assert_eq!(
        server.gauge.max.load(Ordering::SeqCst),
        2,
        "global limit 2, reached"
    );
    server.stop().await;
}

/// Within a kind, operations start in submission order.
#[tokio::test]
async fn fifo_within_a_kind() {
    let server = TestServer::start_with(RunnerConfig::default().max_running(1)).await;
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(server.submit_sleep(20, 1).await.name);
    }
    let mut starts = Vec::new();
    for n in &names {
        let op = server.wait_done(n).await;
        let t = metadata(&op).start_time.expect("started");
        starts.push((t.seconds, t.nanos));
    }
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted, "started in submission order");
    server.stop().await;
}
