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

    // The OpenAPI document gives the declared kind's request, its input of the kind's type.
    let doc = server.call("GET", "/openapi.json", None).await.json();
    let schema = &doc["components"]["schemas"]["oprun.kinds.echo.SubmitTaskRequest"];
    assert_eq!(
        schema["properties"]["input"]["properties"]["@type"]["enum"],
        json!(["type.googleapis.com/test.v1.Echo"]),
        "{schema}"
    );
    assert!(
        schema["properties"]["input"]["properties"]["repeat"].is_object(),
        "{schema}"
    );

    // Reflection knows the declared kind's types (v1 and v1alpha).
    let file = reflected_file(&server, "test.v1.Echo").await;
    assert!(
        file.message_type
            .iter()
            .any(|m| m.name.as_deref() == Some("Echo")),
        "{file:?}"
    );
    server.stop().await;
}

/// The file that gRPC reflection (v1, and v1alpha alike) gives for `symbol`.
async fn reflected_file(server: &Served, symbol: &str) -> prost_types::FileDescriptorProto {
    use tonic_reflection::pb::{v1, v1alpha};
    let ask = |host: &str| v1::ServerReflectionRequest {
        host: host.to_owned(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(symbol.to_owned()),
        ),
    };
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let reply = client
        .server_reflection_info(tokio_stream::iter([ask("")]))
        .await
        .expect("reflection v1")
        .into_inner()
        .message()
        .await
        .expect("a reply")
        .expect("a reply");
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        reply.message_response
    else {
        panic!("{symbol}: {reply:?}");
    };
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let alpha_reply = alpha
        .server_reflection_info(tokio_stream::iter([v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    symbol.to_owned(),
                ),
            ),
        }]))
        .await
        .expect("reflection v1alpha")
        .into_inner()
        .message()
        .await
        .expect("a reply")
        .expect("a reply");
    assert!(
        matches!(
            alpha_reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{alpha_reply:?}"
    );
    prost::Message::decode(files.file_descriptor_proto[0].as_slice()).expect("a file")
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

/// Every bad input to the protocol gets a precise status and changes nothing: malformed or
/// conflicting declarations, an incompatible redeclaration (naming the field), an input of the
/// wrong type, a completion of the wrong type (the assignment is still held: a right one then
/// completes it), an oversized report, details of the wrong type, a forged or malformed lease
/// token, an unknown session.
#[tokio::test]
async fn bad_input_gets_precise_statuses() {
    use oprun::proto::oprun::v1::worker_service_client::WorkerServiceClient;
    use oprun::proto::oprun::v1::{
        OpenSessionRequest, PollAssignmentsRequest, ReportProgressRequest,
    };
    let server = Served::start(None).await;
    let mut client = WorkerServiceClient::new(server.channel().await);
    let open = |kinds: Vec<oprun::proto::oprun::v1::KindDeclaration>| {
        let mut client = client.clone();
        async move {
            client
                .open_session(OpenSessionRequest {
                    worker: "bad".into(),
                    kinds,
                })
                .await
        }
    };
    let echo = || echo_kind("echo", true, Duration::from_secs(10), 1);
    let mut missing_type = echo();
    missing_type.input_type = "test.v1.Nope".into();
    let mut no_descriptors = echo();
    no_descriptors.descriptors = None;
    let mut broken = echo();
    if let Some(set) = broken.descriptors.as_mut() {
        set.file[0].message_type[0].field[0].r#type =
            Some(prost_types::field_descriptor_proto::Type::Message as i32);
        set.file[0].message_type[0].field[0].type_name = Some(".test.v1.Undefined".into());
    }
    let mut zero_heartbeat = echo();
    zero_heartbeat.heartbeat_timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 0,
    });
    let mut greedy = echo();
    greedy.concurrency = 5000;
    let named = |name: &str| {
        let mut k = echo();
        k.name = name.into();
        k
    };
    for (what, kinds) in [
        ("no kinds", vec![]),
        ("an in-process kind's name", vec![named("sleep")]),
        ("a malformed name", vec![named("Bad Name")]),
        ("oprun's names", vec![named("oprun.mine")]),
        ("a type its descriptors lack", vec![missing_type]),
        ("no descriptors", vec![no_descriptors]),
        ("descriptors using an undefined type", vec![broken]),
        ("a zero heartbeat", vec![zero_heartbeat]),
        ("too much concurrency", vec![greedy]),
        ("a kind twice", vec![echo(), echo()]),
    ] {
        let e = open(kinds).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().len() < 1024, "{what}");
    }

    let mut worker = TestWorker::open(server.channel().await, "good", vec![echo()]).await;
    let mut changed = echo();
    changed.descriptors = Some(common::remote::echo_descriptors_with(
        prost_types::field_descriptor_proto::Type::String,
    ));
    let e = open(vec![changed]).await.expect_err("incompatible");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("\"repeat\"") && e.message().contains("int32"),
        "{}",
        e.message()
    );

    let mut tasks = TaskServiceClient::new(server.channel().await);
    for input in [
        common::sleep_input(0, 1, ""),
        prost_types::Any {
            type_url: "type.googleapis.com/test.v1.Echo".into(),
            value: vec![0xff, 0xff, 0xff],
        },
    ] {
        let e = tasks
            .submit_task(SubmitTaskRequest {
                kind: "echo".into(),
                input: Some(input),
                ..Default::default()
            })
            .await
            .expect_err("a wrong input");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }

    let name = submit(&server, "echo", echo_input("z", 1)).await.name;
    let a = worker.assignment().await;
    let e = worker
        .respond(&a, echo_input("not the output type", 1))
        .await
        .expect_err("the wrong response type");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let huge = worker
        .client
        .report_progress(ReportProgressRequest {
            name: a.name.clone(),
            lease_token: a.lease_token.clone(),
            status_message: "s".repeat(5000),
            ..Default::default()
        })
        .await
        .expect_err("an oversized report");
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
    let wrong_details = worker
        .client
        .report_progress(ReportProgressRequest {
            name: a.name.clone(),
            lease_token: a.lease_token.clone(),
            details: Some(echo_input("d", 1)),
            ..Default::default()
        })
        .await
        .expect_err("details the kind does not declare");
    assert_eq!(
        wrong_details.code(),
        Code::InvalidArgument,
        "{wrong_details:?}"
    );
    let mut forged = a.clone();
    forged.lease_token = format!("{}0", a.lease_token);
    let e = worker
        .report(&forged, 1, 1)
        .await
        .expect_err("a forged token");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    forged.lease_token = "garbage".into();
    let e = worker
        .report(&forged, 1, 1)
        .await
        .expect_err("a malformed token");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = client
        .poll_assignments(PollAssignmentsRequest {
            session: "workerSessions/nobody-00000000".into(),
            wait: None,
        })
        .await
        .expect_err("an unknown session");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // The assignment was held all along: the right completion ends it.
    worker.respond(&a, echo_answer(&a)).await.expect("complete");
    let done = until(&server, &name, "done", |op| op.done).await;
    assert!(
        matches!(done.result, Some(operation::Result::Response(_))),
        "{done:?}"
    );
    server.stop().await;
}

/// A worker with only an HTTP client: it opens its session over REST (its descriptors as
/// JSON), long-polls, reports and completes over REST; and ListNodes lists the session with
/// its kinds and what it runs.
#[tokio::test]
async fn a_worker_with_only_http_polls_reports_and_completes() {
    let server = Served::start(None).await;
    let codec = oprun::json::JsonCodec::new().expect("codec");
    let descriptors: serde_json::Value = serde_json::from_str(
        &codec
            .to_json(
                "google.protobuf.FileDescriptorSet",
                &common::remote::echo_descriptors().encode_to_vec(),
            )
            .expect("JSON descriptors"),
    )
    .expect("JSON");
    let opened = server
        .call(
            "POST",
            "/v1/workerSessions",
            Some(
                &json!({
                    "worker": "curl",
                    "kinds": [{
                        "name": "echo",
                        "inputType": "test.v1.Echo",
                        "outputType": "test.v1.Echoed",
                        "descriptors": descriptors,
                        "retrySafe": true,
                        "heartbeatTimeout": "10s",
                        "concurrency": 1
                    }]
                })
                .to_string(),
            ),
        )
        .await;
    assert_eq!(opened.status, 200, "{}", opened.body);
    let session = opened.json()["name"].as_str().expect("name").to_owned();
    let name = server
        .call(
            "POST",
            "/v1/tasks:submit",
            Some(&json!({"kind": "echo", "input": {"text": "h", "repeat": 2}}).to_string()),
        )
        .await
        .json()["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let polled = server
        .call(
            "POST",
            &format!("/v1/{session}:poll"),
            Some(r#"{"wait": "10s"}"#),
        )
        .await;
    assert_eq!(polled.status, 200, "{}", polled.body);
    let assignment = polled.json()["assignments"][0].clone();
    assert_eq!(assignment["name"], name.as_str(), "{assignment}");
    assert_eq!(assignment["input"]["text"], "h", "{assignment}");
    let token = assignment["leaseToken"]
        .as_str()
        .expect("a token")
        .to_owned();
    let reported = server
        .call(
            "POST",
            &format!("/v1/{name}:report"),
            Some(
                &json!({"leaseToken": token, "progress": {"completed": "1", "total": "2", "unit": "steps"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(reported.status, 200, "{}", reported.body);
    assert_eq!(reported.json()["cancelRequested"], serde_json::Value::Null);

    let nodes = server.call("GET", "/v1/nodes", None).await.json();
    let listed = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == session.as_str())
        .unwrap_or_else(|| panic!("the session is listed: {nodes}"))
        .clone();
    assert_eq!(listed["live"], true, "{listed}");
    assert_eq!(listed["running"], "1", "{listed}");
    assert_eq!(listed["session"]["worker"], "curl", "{listed}");
    assert_eq!(listed["session"]["kinds"][0]["name"], "echo", "{listed}");

    let completed = server
        .call(
            "POST",
            &format!("/v1/{name}:complete"),
            Some(
                &json!({"leaseToken": token, "response": {"@type": "type.googleapis.com/test.v1.Echoed", "text": "hh"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(completed.status, 200, "{}", completed.body);
    let done = until(&server, &name, "done", |op| op.done).await;
    assert!(
        matches!(done.result, Some(operation::Result::Response(_))),
        "{done:?}"
    );
    let closed = server
        .call("POST", &format!("/v1/{session}:close"), Some("{}"))
        .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    server.stop().await;
}

/// A channel to a binary server.
async fn channel_to(server: &common::binary::BinServer) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(server.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// Declared kinds are durable: after a restart (the worker gone) the kind is still known, a
/// submission of it is checked against its type and queues while no worker is connected, and
/// runs once one connects; a redeclaration with an incompatible type is refused after the
/// restart too.
#[tokio::test]
async fn declared_kinds_survive_a_restart_and_work_waits_for_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let start = || common::binary::BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let first = start();
    {
        let worker = TestWorker::open(
            channel_to(&first).await,
            "first",
            vec![echo_kind("echo", true, Duration::from_secs(10), 1)],
        )
        .await;
        drop(worker);
    }
    // (Off the runtime's thread: the client's connection must close for the drain to end.)
    let stopped = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first.terminate()
    })
    .await
    .expect("terminate");
    assert!(stopped.success(), "{stopped:?}");

    let second = start();
    let channel = channel_to(&second).await;
    let mut tasks = TaskServiceClient::new(channel.clone());
    let kinds = tasks
        .list_task_kinds(ListTaskKindsRequest::default())
        .await
        .expect("kinds")
        .into_inner()
        .kinds;
    let echo = kinds
        .iter()
        .find(|k| k.name == "echo")
        .expect("still known");
    assert!(!echo.in_process && echo.sessions.is_empty(), "{echo:?}");
    let wrong = tasks
        .submit_task(SubmitTaskRequest {
            kind: "echo".into(),
            input: Some(common::sleep_input(0, 1, "")),
            ..Default::default()
        })
        .await
        .expect_err("checked against its declared type");
    assert_eq!(wrong.code(), Code::InvalidArgument, "{wrong:?}");
    let name = tasks
        .submit_task(SubmitTaskRequest {
            kind: "echo".into(),
            input: Some(echo_input("q", 2)),
            ..Default::default()
        })
        .await
        .expect("queued while no worker is connected")
        .into_inner()
        .name;
    let mut ops = OperationsClient::new(channel.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = ops
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        meta(&waiting).state,
        1,
        "QUEUED while no worker is connected"
    );

    let mut changed = echo_kind("echo", true, Duration::from_secs(10), 1);
    changed.descriptors = Some(common::remote::echo_descriptors_with(
        prost_types::field_descriptor_proto::Type::String,
    ));
    let e =
        oprun::proto::oprun::v1::worker_service_client::WorkerServiceClient::new(channel.clone())
            .open_session(oprun::proto::oprun::v1::OpenSessionRequest {
                worker: "changed".into(),
                kinds: vec![changed],
            })
            .await
            .expect_err("incompatible");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    let mut worker = TestWorker::open(
        channel.clone(),
        "second",
        vec![echo_kind("echo", true, Duration::from_secs(10), 1)],
    )
    .await;
    let a = worker.assignment().await;
    assert_eq!(a.name, name);
    worker.respond(&a, echo_answer(&a)).await.expect("complete");
    let done = ops
        .wait_operation(oprun::proto::google::longrunning::WaitOperationRequest {
            name: name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
        })
        .await
        .expect("wait")
        .into_inner();
    assert!(
        matches!(done.result, Some(operation::Result::Response(_))),
        "{done:?}"
    );
}

/// Two nodes on one PostgreSQL database: a worker connected to node A takes work submitted
/// on node B, and a cancel sent to node B reaches it (through the store's feed and A's
/// stream); the kind it declared on A is known on B.
#[tokio::test]
async fn a_worker_on_one_node_hears_a_cancel_sent_to_another() {
    let db = oprun::store::postgres::testing::TestDatabase::create("workers_cancel").await;
    let url = db.url();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = common::binary::BinServer::start_with(
        dirs[0].path(),
        "127.0.0.1:0",
        &["--store", &url, "--node-id", "node-a"],
        &[],
    );
    let b = common::binary::BinServer::start_with(
        dirs[1].path(),
        "127.0.0.1:0",
        &["--store", &url, "--node-id", "node-b"],
        &[],
    );
    let mut worker = TestWorker::open(
        channel_to(&a).await,
        "on-a",
        vec![echo_kind("echo", true, Duration::from_secs(30), 1)],
    )
    .await;
    let on_b = channel_to(&b).await;
    let name = TaskServiceClient::new(on_b.clone())
        .submit_task(SubmitTaskRequest {
            kind: "echo".into(),
            input: Some(echo_input("b", 1)),
            ..Default::default()
        })
        .await
        .expect("B knows the kind A's worker declared")
        .into_inner()
        .name;
    let assignment = worker.assignment().await;
    assert_eq!(assignment.name, name);
    let sent = std::time::Instant::now();
    OperationsClient::new(on_b.clone())
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await
        .expect("cancel on B");
    match worker.next_event().await {
        Event::Cancellation(c) => assert_eq!(c.name, name),
        other => panic!("expected the cancellation, got {other:?}"),
    }
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    worker
        .fail(&assignment, Code::Cancelled as i32, "stopped")
        .await
        .expect("complete");
    let done = OperationsClient::new(on_b)
        .wait_operation(oprun::proto::google::longrunning::WaitOperationRequest {
            name: name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
        })
        .await
        .expect("wait")
        .into_inner();
    let Some(operation::Result::Error(e)) = done.result else {
        panic!("{done:?}");
    };
    assert_eq!(e.code, 1);
}

/// A `worker` token may run work and nothing else; other roles may not open sessions.
#[tokio::test]
async fn the_worker_role_runs_work_and_nothing_else() {
    let line = |token: &str, role: &str| {
        oprun::auth::tokens_file_line(token, role.parse().expect("role"), Some(role)).expect("line")
    };
    let worker_token = "worker-token-0123456789";
    let submitter_token = "submitter-token-0123456789";
    let tokens = oprun::auth::Tokens::parse(&format!(
        "{}\n{}\n",
        line(worker_token, "worker"),
        line(submitter_token, "submitter")
    ))
    .expect("tokens");
    let server = Served::start(Some(std::sync::Arc::new(tokens))).await;
    let opened = server
        .call_as(
            worker_token,
            "POST",
            "/v1/workerSessions",
            Some(&json!({"worker": "w", "kinds": [{"name": "any", "inputType": "google.protobuf.Struct", "outputType": "google.protobuf.Struct"}]}).to_string()),
        )
        .await;
    assert_eq!(opened.status, 200, "{}", opened.body);
    for (method, path, body) in [
        ("GET", "/v1/operations", None),
        ("DELETE", "/v1/operations/x", None),
        (
            "POST",
            "/v1/tasks:submit",
            Some(
                r#"{"kind":"any","input":{"@type":"type.googleapis.com/google.protobuf.Struct","value":{}}}"#,
            ),
        ),
        ("GET", "/v1/taskKinds", None),
    ] {
        let denied = server.call_as(worker_token, method, path, body).await;
        assert_eq!(denied.status, 403, "{method} {path}: {}", denied.body);
    }
    let denied = server
        .call_as(
            submitter_token,
            "POST",
            "/v1/workerSessions",
            Some(&json!({"worker": "w", "kinds": []}).to_string()),
        )
        .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(denied.body.contains("worker"), "{}", denied.body);
    server.stop().await;
}

/// Counts to `steps`, a step per 20 ms, reporting each; stops when cancelled.
struct Count;

impl oprun::Kind for Count {
    const KIND: &'static str = "count";
    type Input = oprun::proto::oprun::v1::SleepInput;
    type Output = oprun::proto::oprun::v1::SleepOutput;
}

impl oprun::Task for Count {
    fn options(&self) -> oprun::TaskOptions {
        oprun::TaskOptions::default().retry_safe(true)
    }

    async fn run(
        &self,
        input: Self::Input,
        ctx: oprun::TaskContext,
    ) -> Result<Self::Output, oprun::TaskError> {
        for step in 0..input.steps {
            tokio::select! {
                () = ctx.cancelled() => return Err(oprun::TaskError::cancelled()),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            ctx.progress(i64::from(step) + 1, i64::from(input.steps), "steps");
        }
        Ok(oprun::proto::oprun::v1::SleepOutput {
            steps_done: input.steps,
        })
    }
}

/// The same Rust `Task` a server runs in process runs in a worker of its own through
/// `oprun::worker`: it declares the kind with oprun's types, runs four at once, reports
/// progress (seen through GetOperation), returns the task's typed response, and stops when a
/// cancel reaches it (CANCELLED). At shutdown it finishes what runs, then closes its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rust_task_runs_in_a_worker_of_its_own() {
    let server = Served::start(None).await;
    let client = oprun::client::Client::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect");
    let mut kinds = oprun::Registry::new();
    kinds.register(Count).expect("a kind of its own name");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        oprun::worker::Worker::new(client.clone(), kinds)
            .name("rust")
            .concurrency("count", 4)
            .heartbeat_timeout("count", Duration::from_secs(5))
            .run(async {
                let _ = stopped.await;
            }),
    );
    let input = |steps: u32| {
        oprun::model::pack(&oprun::proto::oprun::v1::SleepInput {
            steps,
            ..Default::default()
        })
    };
    // Submitted once the worker declared the kind.
    let mut tasks = TaskServiceClient::new(server.channel().await);
    let submit_count = |steps: u32| {
        let mut tasks = tasks.clone();
        async move {
            for _ in 0..100 {
                match tasks
                    .submit_task(SubmitTaskRequest {
                        kind: "count".into(),
                        input: Some(input(steps)),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(op) => return op.into_inner().name,
                    Err(e) if e.code() == Code::InvalidArgument => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("submit: {e:?}"),
                }
            }
            panic!("the kind was never declared");
        }
    };
    let long = submit_count(100_000).await;
    let mut names = Vec::new();
    for _ in 0..12 {
        names.push(submit_count(5).await);
    }
    for name in &names {
        let done = until(&server, name, "done", |op| op.done).await;
        let Some(operation::Result::Response(any)) = &done.result else {
            panic!("{done:?}");
        };
        let out =
            oprun::proto::oprun::v1::SleepOutput::decode(any.value.as_slice()).expect("output");
        assert_eq!(out.steps_done, 5);
        assert!(
            meta(&done).node.starts_with("workerSessions/rust-"),
            "{:?}",
            meta(&done).node
        );
    }
    until(&server, &long, "reports progress", |op| {
        meta(op).progress.is_some_and(|p| p.completed > 0)
    })
    .await;
    OperationsClient::new(server.channel().await)
        .cancel_operation(CancelOperationRequest { name: long.clone() })
        .await
        .expect("cancel");
    let cancelled = until(&server, &long, "done", |op| op.done).await;
    let Some(operation::Result::Error(e)) = cancelled.result else {
        panic!("{cancelled:?}");
    };
    assert_eq!(e.code, 1, "{e:?}");
    // A graceful stop: a running operation finishes first.
    let last = submit_count(10).await;
    until(&server, &last, "running", |op| meta(op).state == 2).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .expect("the worker stops")
        .expect("join")
        .expect("run");
    let done = until(&server, &last, "done", |op| op.done).await;
    assert!(
        matches!(done.result, Some(operation::Result::Response(_))),
        "finished before the worker left: {done:?}"
    );
    let _ = &mut tasks;
    server.stop().await;
}

/// `oprun worker exec` makes a shell script a kind: its input arrives as JSON on stdin, its
/// JSON stdout lines are the operation's progress and status, its `$OPRUN_OUTPUT` file the
/// response; a failure's stderr is the error's message; a cancel reaches its process group
/// (a child of the script dies too).
#[tokio::test]
async fn a_script_runs_as_a_kind() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
input=$(cat)
case "$input" in
  *fail*) echo "it went wrong" >&2; echo "for good" >&2; exit 3 ;;
  *hang*) sleep 600 & echo $! > "$PIDS/child"; echo '{"status":"hanging"}'; wait; exit 0 ;;
esac
echo "a line that is not JSON"
echo '{"progress":{"completed":1,"total":2,"unit":"files"},"status":"half way"}'
sleep 1.5
echo '{"progress":{"completed":2,"total":2,"unit":"files"}}'
printf '{"got": %s, "attempt": "%s"}' "$input" "$OPRUN_ATTEMPT" > "$OPRUN_OUTPUT"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pids = dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let server = common::binary::BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let http = server.http.expect("HTTP");
    let mut worker = common::binary::oprun()
        .args([
            "worker",
            "exec",
            "--kind",
            "job",
            "--concurrency",
            "2",
            "--grace",
            "2s",
            "--addr",
        ])
        .arg(server.url())
        .arg("--")
        .arg(&script)
        .env("PIDS", &pids)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("oprun worker exec");
    let call = |method: &'static str, path: String, body: Option<String>| async move {
        common::http::request(http, method, &path, &[], body.as_deref()).await
    };
    // Ready once the kind is declared.
    for _ in 0..200 {
        let kinds = call("GET", "/v1/taskKinds".into(), None).await.json();
        if kinds["kinds"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["name"] == "job"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let submit = |input: serde_json::Value| {
        let body = json!({"kind": "job", "input": input}).to_string();
        async move {
            let reply = call("POST", "/v1/tasks:submit".into(), Some(body)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.json()["name"].as_str().expect("name").to_owned()
        }
    };
    let get = |name: String| async move { call("GET", format!("/v1/{name}"), None).await.json() };
    let wait_for = |name: String, pred: fn(&serde_json::Value) -> bool| async move {
        for _ in 0..400 {
            let op = get(name.clone()).await;
            if pred(&op) {
                return op;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{name}: {}", get(name.clone()).await);
    };

    let ok = submit(json!({"text": "hi", "n": 2})).await;
    let half = wait_for(ok.clone(), |op| {
        op["metadata"]["statusMessage"] == "half way" && op["metadata"]["state"] == "RUNNING"
    })
    .await;
    assert_eq!(half["metadata"]["progress"]["completed"], "1", "{half}");
    assert_eq!(half["metadata"]["progress"]["unit"], "files", "{half}");
    let done = wait_for(ok, |op| op["done"] == true).await;
    assert_eq!(
        done["response"]["@type"], "type.googleapis.com/google.protobuf.Struct",
        "{done}"
    );
    assert_eq!(done["response"]["value"]["got"]["text"], "hi", "{done}");
    assert_eq!(done["response"]["value"]["attempt"], "1", "{done}");

    let failed = submit(json!({"text": "fail"})).await;
    let failed = wait_for(failed, |op| op["done"] == true).await;
    let message = failed["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("status 3")
            && message.contains("it went wrong")
            && message.contains("for good"),
        "{failed}"
    );

    let hanging = submit(json!({"text": "hang"})).await;
    wait_for(hanging.clone(), |op| {
        op["metadata"]["statusMessage"] == "hanging"
    })
    .await;
    let child: i32 = std::fs::read_to_string(pids.join("child"))
        .expect("the child's pid")
        .trim()
        .parse()
        .expect("a pid");
    let cancel = call("POST", format!("/v1/{hanging}:cancel"), Some("{}".into())).await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    let cancelled = wait_for(hanging, |op| op["done"] == true).await;
    assert_eq!(cancelled["error"]["code"], 1, "{cancelled}");
    // The script's child got the signal too.
    let gone = (0..100).any(|_| {
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(child, 0) } == 0;
        if alive {
            std::thread::sleep(Duration::from_millis(20));
        }
        !alive
    });
    assert!(gone, "the script's child {child} outlived the cancel");
    let _ = worker.kill();
    let _ = worker.wait();
}
