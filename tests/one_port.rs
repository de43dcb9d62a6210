//! Issue 21, item 1: everything on the one `--listen` address. gRPC, REST/JSON, the event
//! streams, the dashboard, `/metrics`, the probes and `/openapi.json` share a port, so two
//! default servers start side by side on one host, and a request on the wrong protocol gets
//! an answer a person can act on.

mod common;

use bytes::Bytes;
use common::binary::BinServer;
use common::http::{raw, request};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::GetOperationRequest;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::SubmitTaskRequest;
use tonic::transport::Channel;

/// Everything a user reaches on a server, checked on its one port.
async fn serves_everything(server: &BinServer) {
    let addr = server.addr;
    assert_eq!(
        server.http,
        Some(addr),
        "the HTTP surface is on the --listen address"
    );
    // gRPC: a submission, read back over REST on the same port.
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let op = TaskServiceClient::new(channel.clone())
        .submit_task(SubmitTaskRequest {
            kind: "sleep".into(),
            input: Some(common::sleep_input(10, 1, "")),
            ..Default::default()
        })
        .await
        .expect("gRPC SubmitTask")
        .into_inner();
    let got = request(addr, "GET", &format!("/v1/{}", op.name), &[], None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["name"], op.name.as_str());
    // REST: a submission, read back over gRPC.
    let submitted = request(
        addr,
        "POST",
        "/v1/tasks:submit",
        &[("content-type", "application/json")],
        Some(r#"{"kind":"sleep","input":{"@type":"type.googleapis.com/oprun.v1.SleepInput","duration":"0.01s"}}"#),
    )
    .await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    let name = submitted.json()["name"].as_str().unwrap().to_owned();
    OperationsClient::new(channel)
        .get_operation(GetOperationRequest { name })
        .await
        .expect("gRPC GetOperation of a REST submission");
    // The rest of the HTTP surface.
    for (path, expect) in [
        ("/healthz", ""),
        ("/readyz", ""),
        ("/metrics", "oprun_"),
        ("/openapi.json", "\"openapi\""),
        ("/", "<!doctype html>"),
    ] {
        let reply = request(addr, "GET", path, &[], None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(
            reply.body.to_lowercase().contains(&expect.to_lowercase()),
            "{path}: {expect:?} not in {:.200}",
            reply.body
        );
    }
    // The event stream of an operation, to its end.
    let events = request(addr, "GET", &format!("/v1/{}:watch", op.name), &[], None).await;
    assert_eq!(events.status, 200, "{}", events.body);
    assert!(events.body.contains("\"done\":true"), "{}", events.body);
}

#[tokio::test]
async fn two_default_servers_serve_everything_side_by_side() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // No --http-listen: what a user who starts a second node for a trial types.
    let a = BinServer::start_with(a_dir.path(), "127.0.0.1:0", &[], &[]);
    let b = BinServer::start_with(b_dir.path(), "127.0.0.1:0", &[], &[]);
    assert_ne!(a.addr, b.addr);
    serves_everything(&a).await;
    serves_everything(&b).await;
}

/// gRPC over HTTP/1.1 (a proxy that downgrades, or curl) is told what it needs, as JSON.
#[tokio::test]
async fn grpc_over_http1_is_told_it_needs_http2() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let reply = raw(
        server.addr,
        b"POST /google.longrunning.Operations/GetOperation HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/grpc\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("gRPC needs HTTP/2"), "{message}");
    assert!(message.contains("/openapi.json"), "{message}");
}

/// REST over h2c with prior knowledge (`curl --http2-prior-knowledge`) is served as REST,
/// on the port gRPC clients use.
#[tokio::test]
async fn rest_over_h2c_is_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/v1/taskKinds", server.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("\"sleep\""), "{text}");
}

/// `--http-listen` still adds a second listener, which serves gRPC as well.
#[tokio::test]
async fn a_second_listener_serves_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(
        dir.path(),
        "127.0.0.1:0",
        &["--http-listen", "127.0.0.1:0"],
        &[],
    );
    let http = server.http.expect("a second listener");
    assert_ne!(http, server.addr);
    let reply = request(http, "GET", "/v1/taskKinds", &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let channel = Channel::from_shared(format!("http://{http}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TaskServiceClient::new(channel)
        .list_task_kinds(oprun::proto::oprun::v1::ListTaskKindsRequest::default())
        .await
        .expect("gRPC on the second listener");
}
