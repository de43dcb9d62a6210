//! `oprun.v1.AdminService` against a real server on a loopback port: batches that cancel or
//! delete what a filter or a list of names selects (as operations of their own, started even
//! when every running slot is taken), running a finished operation again, the newest
//! operations first, counts, who the caller is; and the dashboard's files.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use oprun::auth::Tokens;
use oprun::proto::google::longrunning::Operation;
use oprun::proto::oprun::v1::admin_service_client::AdminServiceClient;
use oprun::proto::oprun::v1::caller::Role;
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::{
    BatchResult, CancelOperationsRequest, DeleteOperationsRequest, GetCallerRequest,
    QueryOperationsRequest, RerunOperationRequest, SummarizeOperationsRequest,
};
use oprun::RunnerConfig;
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

fn state(op: &Operation) -> State {
    let meta = common::metadata(op);
    State::try_from(meta.state).expect("state")
}

fn result(op: &Operation) -> BatchResult {
    match &op.result {
        Some(oprun::proto::google::longrunning::operation::Result::Response(any)) => {
            BatchResult::decode(any.value.as_slice()).expect("a BatchResult")
        }
        other => panic!("{} did not succeed: {other:?}", op.name),
    }
}

async fn admin(server: &TestServer) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(server.channel().await)
}

fn cancel_filter(filter: &str, request_id: &str) -> CancelOperationsRequest {
    CancelOperationsRequest {
        filter: filter.to_owned(),
        names: Vec::new(),
        request_id: request_id.to_owned(),
    }
}

/// Waits until `n` operations match `filter` (through the store, as a client sees them).
async fn until_matching(server: &TestServer, filter: &str, n: usize) {
    let filter = oprun::filter::Filter::parse(filter).expect("filter");
    for _ in 0..200 {
        let page = server.runner.list(&filter, 0, 1000).await.expect("list");
        if page.operations.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {n} operations matching {filter:?}");
}

/// A batch cancel over a filter ends every matching operation older than itself, running
/// and queued, while every running slot is taken (so the batch itself had no slot); what
/// does not match, and what is submitted later, is left alone. Its progress counts them.
#[tokio::test]
async fn batch_cancel_by_filter_runs_with_every_slot_taken() {
    let server = TestServer::start_with(RunnerConfig::default().max_running(2)).await;
    let mut sleeps = Vec::new();
    for _ in 0..5 {
        sleeps.push(server.submit_sleep(600_000, 1).await.name);
    }
    let other = server
        .submit("gauge", common::sleep_input(600_000, 1, ""))
        .await
        .name;
    until_matching(&server, "state = RUNNING", 2).await;

    let mut admin = admin(&server).await;
    let batch = admin
        .cancel_operations(cancel_filter("kind = \"sleep\"", ""))
        .await
        .expect("CancelOperations")
        .into_inner();
    assert_eq!(common::metadata(&batch).kind, "oprun.cancel_operations");
    let later = server.submit_sleep(600_000, 1).await.name;
    let batch = server.wait_done(&batch.name).await;
    let done = result(&batch);
    assert_eq!((done.matched, done.changed, done.skipped), (5, 5, 0));
    let progress = common::metadata(&batch).progress.expect("progress");
    assert_eq!((progress.completed, progress.total), (5, 5));
    assert_eq!(progress.unit, "operations");
    for name in &sleeps {
        let op = server.wait_done(name).await;
        assert_eq!(state(&op), State::Cancelled, "{name}");
    }
    assert!(!server.get_op(&other).await.done, "a gauge does not match");
    assert!(
        !server.get_op(&later).await.done,
        "submitted after the batch"
    );
    server.stop().await;
}

/// A repeated request id returns the batch it started; a different selection under it is
/// ALREADY_EXISTS; a batch can itself be cancelled (here while it waits for its time).
#[tokio::test]
async fn batches_are_idempotent_and_cancellable() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;
    let first = admin
        .cancel_operations(cancel_filter("done = false", "batch-1"))
        .await
        .expect("first")
        .into_inner();
    let again = admin
        .cancel_operations(cancel_filter("done = false", "batch-1"))
        .await
        .expect("again")
        .into_inner();
    assert_eq!(first.name, again.name);
    let other = admin
        .cancel_operations(cancel_filter("done = true", "batch-1"))
        .await
        .expect_err("another selection under the same request id");
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");

    let delayed = server
        .runner
        .submit(
            oprun::scheduler::Submission::new(
                oprun::scheduler::batch::DELETE_KIND,
                oprun::model::pack(&oprun::proto::oprun::v1::BatchSelection {
                    filter: "done = true".into(),
                    names: Vec::new(),
                }),
            )
            .not_before(std::time::SystemTime::now() + Duration::from_secs(3600)),
        )
        .await
        .expect("a delayed batch");
    let name = delayed.id.name();
    server.cancel(&name).await;
    let op = server.wait_done(&name).await;
    assert_eq!(state(&op), State::Cancelled);
    server.stop().await;
}

/// A batch delete deletes the finished operations it selects and counts the others as
/// skipped; by names, an unknown name is skipped too.
#[tokio::test]
async fn batch_delete_takes_only_finished_operations() {
    let server = TestServer::start().await;
    let finished: Vec<String> = {
        let mut names = Vec::new();
        for _ in 0..3 {
            let op = server.submit_sleep(1, 1).await;
            server.wait_done(&op.name).await;
            names.push(op.name);
        }
        names
    };
    let running = server.submit_sleep(600_000, 1).await.name;
    let mut admin = admin(&server).await;
    let batch = admin
        .delete_operations(DeleteOperationsRequest {
            filter: "kind = \"sleep\"".into(),
            names: Vec::new(),
            request_id: String::new(),
        })
        .await
        .expect("DeleteOperations")
        .into_inner();
    let batch = server.wait_done(&batch.name).await;
    let done = result(&batch);
    assert_eq!((done.matched, done.changed, done.skipped), (4, 3, 1));
    let mut ops = server.operations().await;
    for name in &finished {
        let gone = ops
            .get_operation(oprun::proto::google::longrunning::GetOperationRequest {
                name: name.clone(),
            })
            .await
            .expect_err("deleted");
        assert_eq!(gone.code(), Code::NotFound);
    }
    assert!(!server.get_op(&running).await.done);

    let by_names = admin
        .cancel_operations(CancelOperationsRequest {
            filter: String::new(),
            names: vec![running.clone(), finished[0].clone()],
            request_id: String::new(),
        })
        .await
        .expect("by names")
        .into_inner();
    let done = result(&server.wait_done(&by_names.name).await);
    assert_eq!((done.matched, done.changed, done.skipped), (1, 1, 1));
    assert_eq!(state(&server.wait_done(&running).await), State::Cancelled);
    server.stop().await;
}

/// Selections a batch refuses, each with INVALID_ARGUMENT and a message naming the problem.
#[tokio::test]
async fn bad_selections_are_refused_precisely() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;
    let cases = [
        (cancel_filter("", ""), "select the operations"),
        (cancel_filter("   ", ""), "select the operations"),
        (
            cancel_filter("stat = RUNNING", ""),
            "unknown field \"stat\"",
        ),
        (cancel_filter("state = SLEEPY", ""), "SLEEPY"),
        (
            CancelOperationsRequest {
                filter: "done = true".into(),
                names: vec!["operations/0123".into()],
                request_id: String::new(),
            },
            "not both",
        ),
        (
            CancelOperationsRequest {
                filter: String::new(),
                names: vec!["jobs/7".into()],
                request_id: String::new(),
            },
            "jobs/7",
        ),
        (
            CancelOperationsRequest {
                filter: String::new(),
                names: vec!["operations/00000000000000000000000000000001".into(); 1001],
                request_id: String::new(),
            },
            "at most 1000",
        ),
    ];
    for (request, says) in cases {
        let e = admin
            .cancel_operations(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{request:?}: {e:?}");
        assert!(e.message().contains(says), "{request:?}: {}", e.message());
    }
    server.stop().await;
}

/// Run again: a new operation with the same kind, input and timeout; the old one is left as
/// it was. One not done yet is FAILED_PRECONDITION, an unknown one NOT_FOUND.
#[tokio::test]
async fn rerun_starts_the_same_work_again() {
    let server = TestServer::start().await;
    let old = server.submit_sleep(20, 2).await;
    let old = server.wait_done(&old.name).await;
    let mut admin = admin(&server).await;
    let new = admin
        .rerun_operation(RerunOperationRequest {
            name: old.name.clone(),
            request_id: "again-1".into(),
        })
        .await
        .expect("rerun")
        .into_inner();
    assert_ne!(new.name, old.name);
    let repeated = admin
        .rerun_operation(RerunOperationRequest {
            name: old.name.clone(),
            request_id: "again-1".into(),
        })
        .await
        .expect("rerun again")
        .into_inner();
    assert_eq!(repeated.name, new.name, "the request id holds");
    let new = server.wait_done(&new.name).await;
    assert_eq!(common::metadata(&new).kind, "sleep");
    assert_eq!(new.result, old.result, "the same input, the same response");
    let id = |op: &Operation| oprun::model::OperationId::parse_name(&op.name).expect("id");
    let (old_record, new_record) = (
        server.runner.get(&id(&old)).await.expect("old"),
        server.runner.get(&id(&new)).await.expect("new"),
    );
    assert_eq!(old_record.input, new_record.input);
    assert_eq!(
        server.get_op(&old.name).await,
        old,
        "the old one is unchanged"
    );

    let running = server.submit_sleep(600_000, 1).await;
    let e = admin
        .rerun_operation(RerunOperationRequest {
            name: running.name.clone(),
            request_id: String::new(),
        })
        .await
        .expect_err("not done");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = admin
        .rerun_operation(RerunOperationRequest {
            name: "operations/00000000000000000000000000000001".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    server.stop().await;
}

/// QueryOperations pages newest first with the filter; a token is bound to its filter and
/// order; the oldest-first order matches ListOperations.
#[tokio::test]
async fn query_pages_newest_first() {
    let server = TestServer::start().await;
    let mut names = Vec::new();
    for i in 0..7 {
        let op = if i % 2 == 0 {
            server.submit_sleep(600_000, 1).await
        } else {
            server
                .submit("gauge", common::sleep_input(600_000, 1, ""))
                .await
        };
        names.push(op.name);
    }
    let mut admin = admin(&server).await;
    let query = |filter: &str, token: &str, order: &str| QueryOperationsRequest {
        filter: filter.to_owned(),
        page_size: 3,
        page_token: token.to_owned(),
        order_by: order.to_owned(),
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .query_operations(query("", &token, ""))
            .await
            .expect("page")
            .into_inner();
        assert!(page.operations.len() <= 3);
        seen.extend(page.operations.into_iter().map(|op| op.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = names.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let sleeps = admin
        .query_operations(QueryOperationsRequest {
            page_size: 10,
            ..query("kind = \"sleep\"", "", "create_time desc")
        })
        .await
        .expect("filtered")
        .into_inner();
    let expected: Vec<String> = names.iter().step_by(2).rev().cloned().collect();
    let got: Vec<String> = sleeps.operations.into_iter().map(|op| op.name).collect();
    assert_eq!(got, expected);

    let first = admin
        .query_operations(query("", "", ""))
        .await
        .expect("first")
        .into_inner();
    let e = admin
        .query_operations(query("", &first.next_page_token, "create_time"))
        .await
        .expect_err("a newest-first token in the other order");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let oldest = admin
        .query_operations(query("", "", "create_time"))
        .await
        .expect("oldest first")
        .into_inner();
    let got: Vec<String> = oldest.operations.into_iter().map(|op| op.name).collect();
    assert_eq!(got, names[..3]);
    for bad in ["name", "create_time up"] {
        let e = admin
            .query_operations(query("", "", bad))
            .await
            .expect_err("bad order_by");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("create_time desc"), "{}", e.message());
    }
    server.stop().await;
}

/// SummarizeOperations counts by kind and state, and the finishes of its window.
#[tokio::test]
async fn summary_counts_kinds_states_and_finishes() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        let op = server.submit_sleep(1, 1).await;
        server.wait_done(&op.name).await;
    }
    let failed = server.submit_sleep(1, 1).await;
    server.cancel(&failed.name).await;
    server.wait_done(&failed.name).await;
    server
        .submit("gauge", common::sleep_input(600_000, 1, ""))
        .await;
    until_matching(&server, "kind = \"gauge\" AND state = RUNNING", 1).await;
    let mut admin = admin(&server).await;
    let summary = admin
        .summarize_operations(SummarizeOperationsRequest { window_seconds: 60 })
        .await
        .expect("summary")
        .into_inner();
    let count = |kind: &str, state: State| {
        summary
            .counts
            .iter()
            .filter(|c| c.kind == kind && c.state == state as i32)
            .map(|c| c.count)
            .sum::<i64>()
    };
    let ended = count("sleep", State::Succeeded) + count("sleep", State::Cancelled);
    assert_eq!(ended, 4, "{summary:?}");
    assert_eq!(count("gauge", State::Running), 1, "{summary:?}");
    assert_eq!(summary.bucket_seconds, 2);
    assert_eq!(summary.finished.len(), 30);
    let finished: i64 = summary.finished.iter().map(|b| b.count).sum();
    assert_eq!(finished, 4, "{summary:?}");
    let starts: Vec<_> = summary
        .finished
        .iter()
        .map(|b| b.start_time.expect("start").seconds)
        .collect();
    assert!(starts.windows(2).all(|w| w[1] - w[0] == 2), "{starts:?}");
    // Past half an hour, whole minutes (the store's tally by minute).
    for (window, bucket, buckets) in [(2_000, 120, 17), (86_400, 2_880, 30)] {
        let long = admin
            .summarize_operations(SummarizeOperationsRequest {
                window_seconds: window,
            })
            .await
            .expect("summary")
            .into_inner();
        assert_eq!(long.bucket_seconds, bucket, "{window}");
        assert_eq!(long.finished.len(), buckets, "{window}");
        let finished: i64 = long.finished.iter().map(|b| b.count).sum();
        assert_eq!(finished, 4, "{window}: {long:?}");
    }
    for bad in [-1, 86_401] {
        let e = admin
            .summarize_operations(SummarizeOperationsRequest {
                window_seconds: bad,
            })
            .await
            .expect_err("out of range");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    server.stop().await;
}

/// On an exclusive store (the embedded default) the one node renews no lease: it is live as
/// long as it runs, not only for its first lease (the dashboard showed it dead after 30 s).
#[tokio::test(start_paused = true)]
async fn the_node_of_an_exclusive_store_stays_live() {
    let runner = oprun::Runner::start(
        oprun::Registry::with_builtins(),
        Arc::new(oprun::store::memory::MemoryStore::new()),
        RunnerConfig::default().clock(Arc::new(oprun::scheduler::PausedClock::new())),
    )
    .await
    .expect("runner");
    let lease = runner.config().lease;
    tokio::time::advance(lease * 4).await;
    let nodes = runner.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(nodes[0].live, "the running node is live: {nodes:?}");
    runner
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}

/// A summary is served again for up to `SUMMARY_MAX_AGE` to whoever asks the same (every
/// open dashboard asks about once a second; counting reads every row), then read afresh.
#[tokio::test(start_paused = true)]
async fn summaries_are_shared_for_a_moment() {
    let runner = common::memory_runner().await;
    let since = std::time::SystemTime::UNIX_EPOCH;
    let bucket = Duration::from_secs(10);
    let total = |s: &oprun::store::Summary| s.counts.iter().map(|c| c.2).sum::<u64>();
    let first = runner.summarize(since, bucket).await.expect("summary");
    assert_eq!(total(&first), 0);
    runner
        .submit(oprun::scheduler::Submission::new(
            "sleep",
            common::sleep_input(600_000, 1, ""),
        ))
        .await
        .expect("submit");
    let kept = runner.summarize(since, bucket).await.expect("summary");
    assert_eq!(
        total(&kept),
        0,
        "the same question within the moment: the kept answer"
    );
    let other = runner
        .summarize(since, Duration::from_secs(5))
        .await
        .expect("summary");
    assert_eq!(total(&other), 1, "another question is read afresh");
    tokio::time::advance(oprun::scheduler::SUMMARY_MAX_AGE).await;
    let later = runner.summarize(since, bucket).await.expect("summary");
    assert_eq!(total(&later), 1, "read afresh once the moment passed");
}

const READER: &str = "reader-token-0123456789";
const SUBMITTER: &str = "submitter-token-0123456789";

fn tokens() -> Arc<Tokens> {
    let line = |token: &str, role: &str| {
        oprun::auth::tokens_file_line(token, role.parse().expect("role"), Some(role)).expect("line")
    };
    let text = format!(
        "{}\n{}\n",
        line(READER, "reader"),
        line(SUBMITTER, "submitter")
    );
    Arc::new(Tokens::parse(&text).expect("tokens"))
}

/// GetCaller says the role the token carries (ADMIN without tokens); the batches and Run
/// again need the roles of what they do; the REST routes and the dashboard are served.
#[tokio::test]
async fn roles_rest_routes_and_the_dashboard() {
    let open = common::served::Served::start(None).await;
    let caller = open.call("GET", "/v1/caller", None).await;
    assert_eq!(caller.status, 200, "{}", caller.body);
    assert_eq!(caller.json()["role"], "ADMIN");
    let page = open.call("GET", "/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ui/app.js"), "{}", page.body);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    for (path, content_type) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let asset = open.call("GET", path, None).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset
                .header("content-type")
                .is_some_and(|t| t.starts_with(content_type)),
            "{path}: {:?}",
            asset.headers
        );
        assert!(!asset.body.trim().is_empty(), "{path} is empty");
    }
    let summary = open
        .call("GET", "/v1/operations:summarize?windowSeconds=60", None)
        .await;
    assert_eq!(summary.status, 200, "{}", summary.body);
    let bad = open
        .call("POST", "/v1/operations:batchCancel", Some("{}"))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["error"]["status"], "INVALID_ARGUMENT");
    let batch = open
        .call(
            "POST",
            "/v1/operations:batchDelete",
            Some(r#"{"filter":"done = true"}"#),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.json()["metadata"]["kind"], "oprun.delete_operations");
    open.stop().await;

    let guarded = common::served::Served::start(Some(tokens())).await;
    let anonymous = guarded.call("GET", "/v1/caller", None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let page = guarded.call("GET", "/", None).await;
    assert_eq!(page.status, 200, "the page itself asks for the token");
    let reader = guarded.call_as(READER, "GET", "/v1/caller", None).await;
    assert_eq!(reader.json()["role"], "READER");
    assert_eq!(reader.json()["authenticated"], true);
    assert_eq!(reader.json()["label"], "reader");
    let mut client = AdminServiceClient::with_interceptor(
        guarded.channel().await,
        |mut request: tonic::Request<()>| {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {SUBMITTER}").parse().expect("header"),
            );
            Ok(request)
        },
    );
    let me = client
        .get_caller(GetCallerRequest {})
        .await
        .expect("caller")
        .into_inner();
    assert_eq!(me.role, Role::Submitter as i32);
    client
        .cancel_operations(cancel_filter("done = false", ""))
        .await
        .expect("a submitter cancels");
    let e = client
        .delete_operations(DeleteOperationsRequest {
            filter: "done = true".into(),
            names: Vec::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("a submitter does not delete");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let denied = guarded
        .call_as(
            READER,
            "POST",
            "/v1/operations:batchCancel",
            Some(r#"{"filter":"done = false"}"#),
        )
        .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    guarded.stop().await;
}

const ADMIN: &str = "admin-token-0123456789";

/// Waits until the operation `name` is done, read over REST as the admin.
async fn done(server: &common::served::Served, name: String) -> serde_json::Value {
    let path = format!("/v1/{name}");
    for _ in 0..200 {
        let got = server.call_as(ADMIN, "GET", &path, None).await;
        if got.status == 200 && got.json()["done"] == true {
            return got.json();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} never done");
}

/// The name of a sleep submitted over REST as the admin, once it is done.
async fn finished_sleep(server: &common::served::Served) -> String {
    let reply = server
        .call_as(
            ADMIN,
            "POST",
            "/v1/tasks:submit",
            Some(r#"{"kind":"sleep","input":{"@type":"type.googleapis.com/oprun.v1.SleepInput","duration":"0s"}}"#),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let name = reply.json()["name"].as_str().expect("a name").to_owned();
    done(server, name.clone()).await;
    name
}

/// A submission as a given token over gRPC: SubmitTask of `kind` with `selection`, or Run
/// again of `rerun`.
async fn start_as(
    server: &common::served::Served,
    token: &str,
    kind: &str,
    selection: &oprun::proto::oprun::v1::BatchSelection,
    rerun: Option<&str>,
) -> Result<Operation, tonic::Status> {
    let auth: tonic::metadata::MetadataValue<_> =
        format!("Bearer {token}").parse().expect("header");
    let channel = server.channel().await;
    let with_token = move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", auth.clone());
        Ok(request)
    };
    match rerun {
        Some(name) => AdminServiceClient::with_interceptor(channel, with_token)
            .rerun_operation(RerunOperationRequest {
                name: name.to_owned(),
                request_id: String::new(),
            })
            .await
            .map(tonic::Response::into_inner),
        None => oprun::proto::oprun::v1::task_service_client::TaskServiceClient::with_interceptor(
            channel, with_token,
        )
        .submit_task(oprun::proto::oprun::v1::SubmitTaskRequest {
            kind: kind.to_owned(),
            input: Some(oprun::model::pack(selection)),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner),
    }
}

/// The built-in batch kinds need the roles of the RPCs that start them, whichever way they
/// are started: every role × {SubmitTask, Run again} × {cancel, delete batch} × {gRPC, REST}.
/// A reader starts neither, a submitter only the cancel batch, an admin both; a refused
/// start is PERMISSION_DENIED naming the roles that would do, and changes nothing (the
/// finished operation a refused delete names is still there). Before kinds carried a role, a
/// submitter's SubmitTask of `oprun.delete_operations` deleted what it selected.
#[tokio::test]
async fn built_in_batch_kinds_need_their_rpcs_roles_however_started() {
    let line = |token: &str, role: &str| {
        oprun::auth::tokens_file_line(token, role.parse().expect("role"), Some(role)).expect("line")
    };
    let tokens = Tokens::parse(&format!(
        "{}\n{}\n{}\n",
        line(READER, "reader"),
        line(SUBMITTER, "submitter"),
        line(ADMIN, "admin")
    ))
    .expect("tokens");
    let server = common::served::Served::start(Some(Arc::new(tokens))).await;
    // A finished operation for the delete batches to name.
    let victim = finished_sleep(&server).await;
    let selection = oprun::proto::oprun::v1::BatchSelection {
        filter: String::new(),
        names: vec![victim.clone()],
    };
    // Batches started by an admin, for Run again.
    let mut started = std::collections::HashMap::new();
    for kind in ["oprun.cancel_operations", "oprun.delete_operations"] {
        let op = start_as(&server, ADMIN, kind, &selection, None)
            .await
            .expect("an admin starts every kind");
        done(&server, op.name.clone()).await;
        started.insert(kind, op.name);
    }
    // The admin's delete batch deleted the victim: make another for the rest.
    let victim = finished_sleep(&server).await;
    let selection = oprun::proto::oprun::v1::BatchSelection {
        filter: String::new(),
        names: vec![victim.clone()],
    };
    for (token, role) in [
        (READER, "reader"),
        (SUBMITTER, "submitter"),
        (ADMIN, "admin"),
    ] {
        for kind in ["oprun.cancel_operations", "oprun.delete_operations"] {
            let allowed = match role {
                "reader" => false,
                "submitter" => kind == "oprun.cancel_operations",
                _ => true,
            };
            for rerun in [None, Some(started[kind].as_str())] {
                let how = if rerun.is_some() { "rerun" } else { "submit" };
                // gRPC.
                let grpc = start_as(&server, token, kind, &selection, rerun).await;
                // REST.
                let rest = match rerun {
                    Some(name) => {
                        server
                            .call_as(token, "POST", &format!("/v1/{name}:rerun"), Some("{}"))
                            .await
                    }
                    None => {
                        let body = serde_json::json!({
                            "kind": kind,
                            "input": {
                                "@type": "type.googleapis.com/oprun.v1.BatchSelection",
                                "names": [victim],
                            }
                        })
                        .to_string();
                        server
                            .call_as(token, "POST", "/v1/tasks:submit", Some(&body))
                            .await
                    }
                };
                if allowed {
                    let op = grpc.unwrap_or_else(|e| panic!("{role} {how} {kind}: {e:?}"));
                    done(&server, op.name).await;
                    assert_eq!(rest.status, 200, "{role} {how} {kind}: {}", rest.body);
                    done(
                        &server,
                        rest.json()["name"].as_str().expect("name").to_owned(),
                    )
                    .await;
                    continue;
                }
                let e = grpc.expect_err("refused");
                assert_eq!(
                    e.code(),
                    Code::PermissionDenied,
                    "{role} {how} {kind}: {e:?}"
                );
                assert!(
                    e.message().contains("admin") && e.message().contains(role),
                    "{role} {how} {kind}: {}",
                    e.message()
                );
                assert_eq!(rest.status, 403, "{role} {how} {kind}: {}", rest.body);
                assert_eq!(rest.json()["error"]["status"], "PERMISSION_DENIED");
                // Nothing was deleted.
                let still = server
                    .call_as(ADMIN, "GET", &format!("/v1/{victim}"), None)
                    .await;
                assert_eq!(still.status, 200, "{role} {how} {kind}: {}", still.body);
            }
        }
    }
    server.stop().await;
}
