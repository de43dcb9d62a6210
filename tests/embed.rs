//! Embedding: oprun's pieces on servers of the test's own, next to a toy gRPC service of its
//! own (written by hand, as generated code would be) on one tonic server, and its REST gateway
//! nested in an axum app of its own next to the app's own route.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use oprun::client::Client;
use oprun::kinds::sleep::Sleep;
use oprun::proto::codec::StrictCodec;
use oprun::proto::oprun::v1::SleepInput;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The toy service: `toy.v1.Echo/Ping` answers the `google.protobuf.Duration` it is sent.
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "toy.v1.Echo";
}

struct Ping;

impl tonic::server::UnaryService<prost_types::Duration> for Ping {
    type Response = prost_types::Duration;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<prost_types::Duration>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(request.into_inner())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != "/toy.v1.Echo/Ping" {
                return Ok(tonic::Status::unimplemented("toy.v1.Echo has Ping only").into_http());
            }
            let codec = StrictCodec::<prost_types::Duration, prost_types::Duration>::default();
            Ok(tonic::server::Grpc::new(codec).unary(Ping, request).await)
        })
    }
}

/// One tonic server carries oprun's services, health and reflection and the toy service; one
/// axum app carries its own route and oprun's REST gateway under `/oprun`.
#[tokio::test]
async fn oprun_serves_next_to_services_of_its_own() {
    let runner = common::memory_runner().await;
    let routes = oprun::server::routes(&runner)
        .expect("routes")
        .add_service(Echo);
    let rest = oprun::server::rest_router(
        &runner,
        oprun::server::RestOptions::default().max_body_bytes(1 << 20),
    )
    .expect("the REST router");
    let app = axum::Router::new()
        .route("/mine", axum::routing::get(|| async { "mine" }))
        .nest("/oprun", rest);
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (grpc, http) = (
        grpc_listener.local_addr().expect("addr"),
        http_listener.local_addr().expect("addr"),
    );
    let grpc_served = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                grpc_listener,
            )),
    );
    let http_served = tokio::spawn(async move { axum::serve(http_listener, app).await });

    // The toy service answers on the shared server.
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let echoed = raw
        .unary(
            tonic::Request::new(prost_types::Duration {
                seconds: 7,
                nanos: 0,
            }),
            "/toy.v1.Echo/Ping".parse().expect("a path"),
            StrictCodec::<prost_types::Duration, prost_types::Duration>::default(),
        )
        .await
        .expect("the toy service answers")
        .into_inner();
    assert_eq!(echoed.seconds, 7);

    // So do oprun's services and its health, on the same server.
    let client = Client::connect(grpc.to_string()).await.expect("connect");
    let handle = client
        .submit::<Sleep>(SleepInput {
            duration: prost_types::Duration::try_from(Duration::from_millis(20)).ok(),
            steps: 2,
            ..SleepInput::default()
        })
        .await
        .expect("submit");
    assert_eq!(handle.result().await.expect("result").steps_done, 2);
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "oprun.v1.TaskService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    // Health reports only on what is mounted: no snapshot kind here, no SnapshotService.
    let unmounted = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "oprun.v1.SnapshotService".into(),
        })
        .await
        .expect_err("SnapshotService is not mounted");
    assert_eq!(unmounted.code(), tonic::Code::NotFound, "{unmounted:?}");

    // The app's own route, and oprun's REST gateway nested under /oprun.
    let mine = common::http::request(http, "GET", "/mine", &[], None).await;
    assert_eq!((mine.status, mine.body.as_str()), (200, "mine"));
    let got = common::http::request(
        http,
        "GET",
        &format!("/oprun/v1/{}", handle.name()),
        &[],
        None,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["name"], handle.name());
    assert_eq!(got.json()["done"], true);
    let missing = common::http::request(http, "GET", "/oprun/v1/operations/nope", &[], None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.json()["error"]["status"], "NOT_FOUND");

    grpc_served.abort();
    http_served.abort();
    runner
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}

/// A ping of the toy service through `channel`, with `token` as its bearer token if any.
async fn ping(
    channel: &tonic::transport::Channel,
    token: Option<&str>,
) -> Result<i64, tonic::Status> {
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let mut request = tonic::Request::new(prost_types::Duration {
        seconds: 3,
        nanos: 0,
    });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    raw.unary(
        request,
        "/toy.v1.Echo/Ping".parse().expect("a path"),
        StrictCodec::<prost_types::Duration, prost_types::Duration>::default(),
    )
    .await
    .map(|r| r.into_inner().seconds)
}

/// With oprun's token check on the embedder's tonic server, its own paths need what it says
/// (admin by default, a role it names, or nothing), while oprun's keep their roles; and
/// `Runner::serve_until` serves until the signal, then ends the servers and the runner.
#[tokio::test]
async fn own_paths_need_what_the_embedder_says_and_one_call_shuts_down() {
    use oprun::auth::{tokens_file_line, AuthLayer, OtherPaths, Role, Tokens};
    let lines = [
        tokens_file_line("reader-token", Role::Reader, None).expect("a line"),
        tokens_file_line("admin-token", Role::Admin, None).expect("a line"),
    ];
    let tokens = Arc::new(Tokens::parse(&lines.join("\n")).expect("tokens"));
    for (others, reader_may, anyone_may) in [
        (None, false, false),
        (Some(OtherPaths::Require(Role::Reader)), true, false),
        (Some(OtherPaths::PassThrough), true, true),
    ] {
        let runner = common::memory_runner().await;
        let routes = oprun::server::routes(&runner)
            .expect("routes")
            .add_service(Echo);
        let layer = match others {
            Some(others) => AuthLayer::new(Arc::clone(&tokens)).other_paths(others),
            None => AuthLayer::new(Arc::clone(&tokens)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let grpc = tonic::transport::Server::builder()
            .layer(layer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                runner.stopping(),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn({
            let runner = runner.clone();
            async move {
                let signal = async {
                    let _ = stopped.await;
                };
                runner
                    .serve_until(signal, grpc, Duration::from_secs(1))
                    .await
            }
        });

        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        assert_eq!(ping(&channel, Some("admin-token")).await.expect("admin"), 3);
        let as_reader = ping(&channel, Some("reader-token")).await;
        assert_eq!(as_reader.is_ok(), reader_may, "{others:?}: {as_reader:?}");
        if !reader_may {
            assert_eq!(
                as_reader.expect_err("refused").code(),
                tonic::Code::PermissionDenied
            );
        }
        let anonymous = ping(&channel, None).await;
        assert_eq!(anonymous.is_ok(), anyone_may, "{others:?}: {anonymous:?}");
        if !anyone_may {
            assert_eq!(
                anonymous.expect_err("refused").code(),
                tonic::Code::Unauthenticated
            );
        }
        // oprun's own calls keep their roles whatever the embedder says of its paths.
        let mut ops = oprun::proto::google::longrunning::operations_client::OperationsClient::new(
            channel.clone(),
        );
        let mut delete =
            tonic::Request::new(oprun::proto::google::longrunning::DeleteOperationRequest {
                name: "operations/none".into(),
            });
        delete.metadata_mut().insert(
            "authorization",
            "Bearer reader-token".parse().expect("a header value"),
        );
        let refused = ops
            .delete_operation(delete)
            .await
            .expect_err("readers may not delete");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);

        // One call ends it all: the server stops, the runner refuses work, the store is closed.
        stop.send(()).expect("the server waits for the signal");
        let served = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("serve_until returns")
            .expect("no panic")
            .expect("shutdown");
        served.expect("the server ended cleanly");
        assert!(runner.ready(Duration::from_secs(1)).await.is_err());
        assert!(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .is_err(),
            "the listener is closed"
        );
    }
}
