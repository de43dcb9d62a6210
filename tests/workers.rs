//! Workers in their own processes, over the worker protocol (`oprun.v1.WorkerService`),
//! against a real server on loopback ports: a session declares a kind with types of its own,
//! takes assignments, reports, completes; cancels reach it; a worker that stops reporting or
//! goes away loses its attempt by the restart rule; a stale lease token changes nothing; and
//! every bad input gets a precise status.

mod common;

use std::time::Duration;

use common::remote::{echo_answer, echo_input, echo_kind, TestWorker};
use common::served::Served;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    operation, CancelOperationRequest, GetOperationRequest, Operation,
};
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::worker_event::Event;
use oprun::proto::oprun::v1::{ListTaskKindsRequest, OperationMetadata, SubmitTaskRequest};
use prost::Message;
use serde_json::json;
use tonic::Code;

async fn submit(server: &Served, kind: &str, input: prost_types::Any) -> Operation {
    TaskServiceClient::new(server.channel().await)
        .submit_task(SubmitTaskRequest {
            kind: kind.to_owned(),
            input: Some(input),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
}

async fn get(server: &Served, name: &str) -> Operation {
    OperationsClient::new(server.channel().await)
        .get_operation(GetOperationRequest {
            name: name.to_owned(),
        })
        .await
        .expect("get")
        .into_inner()
}

fn meta(op: &Operation) -> OperationMetadata {
    OperationMetadata::decode(op.metadata.as_ref().expect("metadata").value.as_slice())
        .expect("OperationMetadata")
}

/// Reads the operation until `pred` holds (20 s at most).
async fn until(
    server: &Served,
    name: &str,
    what: &str,
    pred: impl Fn(&Operation) -> bool,
) -> Operation {
    for _ in 0..400 {
        let op = get(server, name).await;
        if pred(&op) {
            return op;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never {what}: {:?}", meta(&get(server, name).await));
}

/// A kind declared by a worker session runs there: a submission over REST without `@type`
/// (the kind fixes it) and one over gRPC are assigned to the session's stream with their
/// input and a lease token; a report shows in the metadata; the completion's response, of the
/// kind's own type, is the operation's, rendered as JSON by REST; `node` names the session; a
/// second completion with the token is refused; ListTaskKinds says where the kind runs.
#[tokio::test]
async fn a_declared_kind_runs_in_its_worker_session() {
    let server = Served::start(None).await;
    let mut worker = TestWorker::open(
        server.channel().await,
        "echo worker",
        vec![echo_kind("echo", true, Duration::from_secs(10), 2)],
    )
    .await;
    assert!(
        worker.session.starts_with("workerSessions/echo-worker-"),
        "{}",
        worker.session
    );

    let rest = server
        .call(
            "POST",
            "/v1/tasks:submit",
            Some(&json!({"kind": "echo", "input": {"text": "ab", "repeat": 3}}).to_string()),
        )
        .await;
    assert_eq!(rest.status, 200, "{}", rest.body);
    let by_rest = rest.json()["name"].as_str().expect("name").to_owned();
    let by_grpc = submit(&server, "echo", echo_input("c", 2)).await.name;

    let mut assignments = vec![worker.assignment().await, worker.assignment().await];
    assignments.sort_by_key(|a| a.name != by_rest);
    assert_eq!(assignments[0].name, by_rest);
    assert_eq!(assignments[1].name, by_grpc);
    for a in &assignments {
        assert_eq!(a.kind, "echo");
        assert_eq!(a.attempt, 1);
        assert!(!a.lease_token.is_empty());
    }
    assert!(!worker.report(&assignments[0], 1, 3).await.expect("report"));
    let reported = until(&server, &by_rest, "shows the report", |op| {
        meta(op)
            .progress
            .is_some_and(|p| p.completed == 1 && p.total == 3)
    })
    .await;
    assert_eq!(meta(&reported).status_message, "step 1");
    assert_eq!(
        meta(&reported).node,
        worker.session,
        "node names the session"
    );

    for a in &assignments {
        worker.respond(a, echo_answer(a)).await.expect("complete");
    }
    let done = until(&server, &by_rest, "done", |op| op.done).await;
    let Some(operation::Result::Response(response)) = done.result else {
        panic!("{done:?}");
    };
    assert_eq!(response.type_url, "type.googleapis.com/test.v1.Echoed");
    let json = server
        .call("GET", &format!("/v1/{by_rest}"), None)
        .await
        .json();
    assert_eq!(
        json["response"]["@type"], "type.googleapis.com/test.v1.Echoed",
        "{json}"
    );
    assert_eq!(json["response"]["text"], "ababab", "{json}");
    assert_eq!(json["metadata"]["node"], worker.session.as_str(), "{json}");
    until(&server, &by_grpc, "done", |op| op.done).await;

    let again = worker
        .respond(&assignments[0], echo_answer(&assignments[0]))
        .await;
    let e = again.expect_err("a second completion");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    let kinds = TaskServiceClient::new(server.channel().await)
        .list_task_kinds(ListTaskKindsRequest {
            with_descriptors: true,
        })
        .await
        .expect("kinds")
        .into_inner()
        .kinds;
    let echo = kinds
        .iter()
        .find(|k| k.name == "echo")
        .expect("echo is listed");
    assert!(!echo.in_process);
    assert_eq!(echo.sessions, vec![worker.session.clone()]);
    assert_eq!(echo.input_type, "test.v1.Echo");
    assert!(echo
        .descriptors
        .as_ref()
        .is_some_and(|d| !d.file.is_empty()));
    assert!(kinds.iter().any(|k| k.name == "sleep" && k.in_process));
    server.stop().await;
}

/// A cancel reaches the worker: a cancellation with the assignment's token on its stream,
/// and `cancel_requested` in the answer to its next report; its CANCELLED completion ends the
/// operation CANCELLED (code 1).
#[tokio::test]
async fn a_cancel_reaches_the_worker() {
    let server = Server::start_default().await;
    let server = &server.0;
    let mut worker = TestWorker::open(
        server.channel().await,
        "canceller",
        vec![echo_kind("echo", true, Duration::from_secs(10), 1)],
    )
    .await;
    let name = submit(server, "echo", echo_input("x", 1)).await.name;
    let a = worker.assignment().await;
    OperationsClient::new(server.channel().await)
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await
        .expect("cancel");
    match worker.next_event().await {
        Event::Cancellation(c) => {
            assert_eq!(c.name, name);
            assert_eq!(c.lease_token, a.lease_token);
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert!(
        worker.report(&a, 0, 1).await.expect("report"),
        "cancel_requested"
    );
    worker
        .fail(&a, Code::Cancelled as i32, "stopped")
        .await
        .expect("complete");
    let done = until(server, &name, "done", |op| op.done).await;
    let Some(operation::Result::Error(e)) = done.result else {
        panic!("{done:?}");
    };
    assert_eq!(e.code, 1);
}

/// Holds a served server (a name to read well at call sites).
struct Server(Served);

impl Server {
    async fn start_default() -> Self {
        Self(Served::start(None).await)
    }
}

/// A worker that stops reporting loses its attempts after its kind's heartbeat timeout, and
/// its session ends (no more work goes to it): a retry-safe kind is queued again with
/// attempt + 1 and runs in another session; the first worker's token is then refused and
/// changes nothing. A kind that is not retry-safe ends FAILED (ABORTED) naming the session.
#[tokio::test]
async fn a_silent_worker_loses_its_attempt_by_the_restart_rule() {
    let server = Served::start(None).await;
    let heartbeat = Duration::from_secs(1);
    let mut silent = TestWorker::open(
        server.channel().await,
        "silent",
        vec![
            echo_kind("again", true, heartbeat, 1),
            echo_kind("once", false, heartbeat, 1),
        ],
    )
    .await;
    let again = submit(&server, "again", echo_input("a", 1)).await.name;
    let first = silent.assignment().await;
    assert_eq!(first.name, again);
    let once = submit(&server, "once", echo_input("o", 1)).await.name;
    let second = silent.assignment().await;
    assert_eq!(second.name, once);
    // No report: both attempts are lost after a second.
    let failed = until(&server, &once, "failed", |op| op.done).await;
    let Some(operation::Result::Error(e)) = &failed.result else {
        panic!("{failed:?}");
    };
    assert_eq!(e.code, Code::Aborted as i32, "{e:?}");
    assert!(e.message.contains(&silent.session), "{}", e.message);
    let requeued = until(&server, &again, "queued again", |op| meta(op).attempt == 2).await;
    assert!(!requeued.done);
    // The silent session has ended: its stream is over.
    let ended = tokio::time::timeout(Duration::from_secs(10), silent.events.message()).await;
    assert!(matches!(ended, Ok(Ok(None)) | Ok(Err(_))), "{ended:?}");
    // Another worker takes attempt 2 and finishes it.
    let mut other = TestWorker::open(
        server.channel().await,
        "other",
        vec![echo_kind("again", true, Duration::from_secs(10), 1)],
    )
    .await;
    let retry = other.assignment().await;
    assert_eq!((retry.name.as_str(), retry.attempt), (again.as_str(), 2));
    other
        .respond(&retry, echo_answer(&retry))
        .await
        .expect("complete");
    let done = until(&server, &again, "done", |op| op.done).await;
    // The first worker wakes up: its token is stale, nothing changes.
    let e = silent
        .respond(&first, echo_input("late", 1))
        .await
        .expect_err("a stale token");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = silent
        .report(&first, 1, 1)
        .await
        .expect_err("a stale token");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(get(&server, &again).await, done, "the result never changes");
    server.stop().await;
}

/// A worker whose stream ends (its process died, its connection dropped) loses what it held
/// at once: the retry-safe kind's operation is queued again (attempt 2) without waiting for
/// the heartbeat timeout.
#[tokio::test]
async fn a_dropped_stream_hands_the_work_back_at_once() {
    let server = Served::start(None).await;
    let worker = TestWorker::open(
        server.channel().await,
        "short-lived",
        vec![echo_kind("echo", true, Duration::from_secs(3600), 1)],
    )
    .await;
    let mut worker = worker;
    let name = submit(&server, "echo", echo_input("x", 1)).await.name;
    worker.assignment().await;
    let started = std::time::Instant::now();
    drop(worker);
    until(&server, &name, "queued again", |op| meta(op).attempt == 2).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}
