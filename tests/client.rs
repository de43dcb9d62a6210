//! The Rust client (`oprun::client`) against a real server on a loopback port: typed submit,
//! progress from the watch stream, wait, typed results and typed errors, cancel and delete,
//! bearer tokens, and the fallback to polling a server without WaitOperation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oprun::auth::Tokens;
use oprun::client::{metadata, Client, ClientError, SubmitOptions};
use oprun::kinds::sleep::Sleep;
use oprun::proto::oprun::v1::{SleepInput, SleepOutput};
use oprun::Code;

fn sleep(ms: u64, steps: u32, fail: &str) -> SleepInput {
    SleepInput {
        duration: prost_types::Duration::try_from(Duration::from_millis(ms)).ok(),
        steps,
        fail_message: fail.to_owned(),
        ..SleepInput::default()
    }
}

type Server = common::served::Served;

/// Submit a typed task, follow its progress, read its typed result; a failing one and a
/// cancelled one come back as typed errors with their codes.
#[tokio::test]
async fn typed_submit_progress_and_results() {
    let server = Server::start(None).await;
    let client = Client::connect(server.grpc.to_string())
        .await
        .expect("connect");

    let handle = client
        .submit::<Sleep>(sleep(400, 4, ""))
        .await
        .expect("submit");
    assert!(handle.name().starts_with("operations/"));
    let states: Vec<_> = handle
        .progress()
        .map(|op| op.expect("progress"))
        .collect()
        .await;
    let last = states.last().expect("states");
    assert!(last.done);
    let completed: Vec<i64> = states
        .iter()
        .filter_map(|op| metadata(op)?.progress.map(|p| p.completed))
        .collect();
    assert!(completed.windows(2).all(|w| w[0] <= w[1]), "{completed:?}");
    assert_eq!(completed.last(), Some(&4), "{completed:?}");
    let output: SleepOutput = handle.result().await.expect("the typed output");
    assert_eq!(output.steps_done, 4);

    let failing = client
        .submit::<Sleep>(sleep(10, 1, "disk on fire"))
        .await
        .expect("submit");
    match failing.result().await {
        Err(ClientError::Failed { code, message, .. }) => {
            assert_ne!(code, Code::Ok);
            assert!(message.contains("disk on fire"), "{message}");
        }
        other => panic!("expected a failed operation, got {other:?}"),
    }

    let submit_once = || {
        client.submit_with::<Sleep>(
            sleep(3_600_000, 1, ""),
            SubmitOptions::default().request_id("6f1c7a53-2f7e-4f7a-9d84-0f5b2d1c9e10"),
        )
    };
    let long = submit_once().await.expect("submit");
    let again = submit_once().await.expect("the same request again");
    assert_eq!(again.name(), long.name(), "one operation per request id");
    let refused = long.delete().await.expect_err("not done yet");
    assert_eq!(refused.code(), Some(Code::FailedPrecondition));
    long.cancel().await.expect("cancel");
    let err = long.result().await.expect_err("cancelled");
    assert_eq!(err.code(), Some(Code::Cancelled), "{err:?}");
    long.delete().await.expect("delete once done");
    let gone = long.get().await.expect_err("deleted");
    assert_eq!(gone.code(), Some(Code::NotFound));
    match gone {
        ClientError::Rpc { details, .. } => {
            assert_eq!(
                details.error_info().map(|i| i.reason.as_str()),
                Some("OPERATION_NOT_FOUND")
            );
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
    server.stop().await;
}

/// `submit_many` creates every task of the call, in order, with each one's options; one bad
/// input refuses the call, naming its index, and creates none.
#[tokio::test]
async fn submit_many_is_one_call_all_or_none() {
    let server = Server::start(None).await;
    let client = Client::connect(server.grpc.to_string())
        .await
        .expect("connect");
    let handles = client
        .submit_many::<Sleep>(
            (0..20).map(|i| (sleep(1, 1, ""), SubmitOptions::default().priority(i))),
        )
        .await
        .expect("submit_many");
    assert_eq!(handles.len(), 20);
    for (i, handle) in handles.iter().enumerate() {
        let op = handle.get().await.expect("get");
        assert_eq!(
            metadata(&op).expect("metadata").priority,
            i32::try_from(i).unwrap()
        );
        handle.result().await.expect("done");
    }
    let refused = client
        .submit_many::<Sleep>([
            (sleep(1, 1, ""), SubmitOptions::default()),
            (sleep(1, 1, ""), SubmitOptions::default().max_attempts(1000)),
        ])
        .await
        .expect_err("a policy wider than the kind's");
    assert_eq!(refused.code(), Some(Code::InvalidArgument));
    assert!(refused.to_string().contains("requests[1]"), "{refused}");
    let all = client
        .operations()
        .list_operations(oprun::proto::google::longrunning::ListOperationsRequest {
            name: "operations".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .operations;
    assert_eq!(all.len(), 20, "none of the refused call was created");
    server.stop().await;
}

/// Bad input is a typed RPC error with the server's code; a token is sent when given.
#[tokio::test]
async fn errors_and_tokens() {
    let line = oprun::auth::tokens_file_line(
        "client-test-token-0123456789",
        "submitter".parse().expect("role"),
        None,
    )
    .expect("line");
    let tokens = Arc::new(Tokens::parse(&line).expect("tokens"));
    let server = Server::start(Some(tokens)).await;
    let anonymous = Client::connect(server.grpc.to_string())
        .await
        .expect("connect");
    let refused = anonymous
        .submit::<Sleep>(sleep(10, 1, ""))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Some(Code::Unauthenticated));
    let client = Client::builder(format!("http://{}", server.grpc))
        .token("client-test-token-0123456789")
        .connect()
        .await
        .expect("connect");
    let handle = client
        .submit::<Sleep>(sleep(10, 1, ""))
        .await
        .expect("submit with a token");
    assert_eq!(handle.result().await.expect("result").steps_done, 1);
    let bad = client
        .submit::<Sleep>(SleepInput {
            duration: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            steps: 1,
            ..SleepInput::default()
        })
        .await
        .expect_err("a negative duration");
    assert_eq!(bad.code(), Some(Code::InvalidArgument), "{bad:?}");
    let https = Client::builder(format!("https://{}", server.grpc))
        .connect()
        .await
        .expect_err("https without a CA");
    assert!(matches!(https, ClientError::Config { .. }), "{https:?}");
    let nothing = Client::connect("127.0.0.1:1")
        .await
        .expect_err("nothing there");
    assert!(
        matches!(nothing, ClientError::Connect { .. }),
        "{nothing:?}"
    );
    server.stop().await;
}

/// Against a server that does not serve WaitOperation (UNIMPLEMENTED), `wait` polls Get.
#[tokio::test]
async fn wait_falls_back_to_polling() {
    let runner = common::memory_runner().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let routes = oprun::server::routes(&runner).expect("routes");
    let served = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(NoWait))
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = Client::connect(addr.to_string()).await.expect("connect");
    let handle = client
        .submit::<Sleep>(sleep(300, 1, ""))
        .await
        .expect("submit");
    let done = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("done by polling within 10 s")
        .expect("wait");
    assert!(done.done);
    served.abort();
    runner
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}

/// Answers WaitOperation UNIMPLEMENTED, as a server without it does; passes the rest on.
#[derive(Clone)]
struct NoWait<S>(S);

impl<S, B> tower::Service<http::Request<B>> for NoWait<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == "/google.longrunning.Operations/WaitOperation" {
            return Box::pin(futures::future::ready(Ok(tonic::Status::unimplemented(
                "no WaitOperation here",
            )
            .into_http())));
        }
        Box::pin(self.0.call(req))
    }
}

/// `not_before` reaches the server (the operation waits QUEUED until then), and an option the
/// wire cannot carry is refused before anything is sent, never dropped silently.
#[tokio::test]
async fn submit_options_reach_the_server_or_are_refused() {
    let server = Server::start(None).await;
    let client = Client::connect(server.grpc.to_string())
        .await
        .expect("connect");

    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let waiting = client
        .submit_with::<Sleep>(
            sleep(1, 1, ""),
            SubmitOptions::default()
                .not_before(later)
                .request_id("later-1"),
        )
        .await
        .expect("submit");
    let op = waiting.get().await.expect("get");
    let meta = metadata(&op).expect("metadata");
    assert_eq!(
        meta.state,
        oprun::proto::oprun::v1::operation_metadata::State::Queued as i32
    );
    let starts = meta.next_attempt_time.expect("a start time");
    // Stored to the microsecond.
    let later = oprun::model::time::to_micros(later);
    assert_eq!(starts, prost_types::Timestamp::from(later));

    for (options, says) in [
        (SubmitOptions::default().timeout(Duration::MAX), "timeout"),
        (
            SubmitOptions::default().not_before(
                std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000),
            ),
            "not_before",
        ),
    ] {
        let refused = client
            .submit_with::<Sleep>(sleep(1, 1, ""), options)
            .await
            .expect_err("an option the wire cannot carry");
        assert!(
            matches!(&refused, ClientError::Options(m) if m.contains(says)),
            "{refused:?}"
        );
    }
    server.stop().await;
}
