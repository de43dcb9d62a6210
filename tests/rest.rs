//! The HTTP surface: the REST/JSON gateway (routed from the protos' HTTP rules, answering what
//! gRPC answers, Google's JSON errors), its OpenAPI document, `/healthz` and `/readyz`, and
//! `grpc.health.v1` following the store. In-process servers (`serve_with` with an HTTP
//! listener) on ephemeral loopback ports, real clients.

mod common;

use common::http::Reply;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use oprun::auth::Tokens;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::GetOperationRequest;
use serde_json::{json, Value};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const READER: &str = "reader-token-0123456789";
const SUBMITTER: &str = "submitter-token-0123456789";

fn tokens() -> Arc<Tokens> {
    let line = |token: &str, role: &str| {
        oprun::auth::tokens_file_line(token, role.parse().expect("role"), None).expect("line")
    };
    let text = format!(
        "{}\n{}\n",
        line(READER, "reader"),
        line(SUBMITTER, "submitter")
    );
    Arc::new(Tokens::parse(&text).expect("tokens"))
}

type RestServer = common::served::Served;

/// A SubmitTaskRequest for the sleep kind, in proto3 JSON.
fn sleep_body(duration: &str, steps: u32) -> String {
    json!({
        "kind": "sleep",
        "input": {"@type": "type.googleapis.com/oprun.v1.SleepInput", "duration": duration, "steps": steps}
    })
    .to_string()
}

/// A Google JSON error with the code, HTTP status and gRPC status name expected.
fn assert_error(reply: &Reply, http: u16, status: &str) -> Value {
    assert_eq!(reply.status, http, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"]["code"], http, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    body
}

/// Submit, get, list (filtered, paged), cancel, delete: each over REST answers what gRPC
/// answers, in proto3 JSON.
#[tokio::test]
async fn rest_drives_the_whole_lifecycle() {
    let server = RestServer::start(None).await;
    let first = server
        .call("POST", "/v1/tasks:submit", Some(&sleep_body("30s", 2)))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    let name = first["name"].as_str().expect("a name").to_owned();
    assert!(name.starts_with("operations/"), "{first}");
    assert_eq!(first["done"], Value::Null, "not done: {first}");
    assert_eq!(
        first["metadata"]["@type"],
        "type.googleapis.com/oprun.v1.OperationMetadata"
    );
    let second = server
        .call("POST", "/v1/tasks:submit", Some(&sleep_body("30s", 2)))
        .await
        .json();

    // GET answers what GetOperation answers.
    let got = server.call("GET", &format!("/v1/{name}"), None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let mut grpc = OperationsClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect");
    let via_grpc = grpc
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .expect("get")
        .into_inner();
    let codec = oprun::json::JsonCodec::new().expect("codec");
    let grpc_json: Value =
        serde_json::from_str(&codec.message_to_json(&via_grpc).expect("json")).expect("json");
    let rest_json = got.json();
    assert_eq!(rest_json["name"], grpc_json["name"]);
    assert_eq!(
        rest_json["metadata"]["createTime"],
        grpc_json["metadata"]["createTime"]
    );

    // List: filtered, one per page, every page followed.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let path =
            format!("/v1/operations?filter=kind%20%3D%20%22sleep%22&pageSize=1&pageToken={token}");
        let page = server.call("GET", &path, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        for op in page["operations"].as_array().expect("operations") {
            names.push(op["name"].as_str().expect("name").to_owned());
        }
        match page["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_owned(),
            _ => break,
        }
        assert!(names.len() <= 2, "pages repeat: {names:?}");
    }
    names.sort();
    let mut want = vec![
        name.clone(),
        second["name"].as_str().expect("name").to_owned(),
    ];
    want.sort();
    assert_eq!(names, want);
    let none = server
        .call("GET", "/v1/operations?filter=kind%20%3D%20%22x%22", None)
        .await;
    assert_eq!(none.status, 200);
    assert_eq!(none.json(), json!({}));

    // Cancel, then the operation ends CANCELLED (code 1) and is not deleted.
    let cancelled = server
        .call("POST", &format!("/v1/{name}:cancel"), Some("{}"))
        .await;
    assert_eq!((cancelled.status, cancelled.json()), (200, json!({})));
    common::wait_done(&mut grpc, &name).await;
    let after = server
        .call("GET", &format!("/v1/{name}"), None)
        .await
        .json();
    assert_eq!(after["done"], true, "{after}");
    assert_eq!(after["error"]["code"], 1, "{after}");

    // Delete, then it is gone: 404 with the same ErrorInfo gRPC gives.
    let deleted = server.call("DELETE", &format!("/v1/{name}"), None).await;
    assert_eq!((deleted.status, deleted.json()), (200, json!({})));
    let gone = assert_error(
        &server.call("GET", &format!("/v1/{name}"), None).await,
        404,
        "NOT_FOUND",
    );
    assert_eq!(
        gone["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    assert_eq!(gone["error"]["details"][0]["reason"], "OPERATION_NOT_FOUND");

    // Kinds (a GET with no parameters).
    let kinds = server.call("GET", "/v1/taskKinds", None).await;
    assert_eq!(kinds.status, 200, "{}", kinds.body);
    assert!(kinds.body.contains("\"sleep\""), "{}", kinds.body);
    server.stop().await;
}

/// Bad input over REST gets the precise code (never a 5xx) and a message naming the problem.
#[tokio::test]
async fn bad_requests_get_precise_json_errors() {
    let server = RestServer::start(None).await;
    let running = server
        .call("POST", "/v1/tasks:submit", Some(&sleep_body("30s", 2)))
        .await
        .json();
    let running = running["name"].as_str().expect("name").to_owned();
    let big = format!(
        "{{\"kind\":\"sleep\",\"requestId\":\"{}\"}}",
        "x".repeat(100 << 10)
    );
    // (method, path, body, HTTP status, status name, a word the message must hold)
    type Case<'a> = (&'a str, String, Option<String>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/v1/operations/a%20b".into(),
            None,
            400,
            "INVALID_ARGUMENT",
            "name",
        ),
        (
            "GET",
            "/v1/operations?pageSize=-1".into(),
            None,
            400,
            "INVALID_ARGUMENT",
            "page_size",
        ),
        (
            "GET",
            "/v1/operations?pageSize=ten".into(),
            None,
            400,
            "INVALID_ARGUMENT",
            "pageSize",
        ),
        (
            "GET",
            "/v1/operations?filter=kind%20%3D".into(),
            None,
            400,
            "INVALID_ARGUMENT",
            "filter",
        ),
        (
            "GET",
            "/v1/operations?pageToken=zzz".into(),
            None,
            400,
            "INVALID_ARGUMENT",
            "token",
        ),
        (
            "GET",
            "/v1/operations?bogus=1".into(),
            None,
            400,
            "INVALID_ARGUMENT",
            "bogus",
        ),
        (
            "GET",
            "/v1/operations?pageSize=%zz".into(),
            None,
            400,
            "INVALID_ARGUMENT",
            "escape",
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some("{".into()),
            400,
            "INVALID_ARGUMENT",
            "JSON",
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some("[1]".into()),
            400,
            "INVALID_ARGUMENT",
            "object",
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some(r#"{"kind":"nope"}"#.into()),
            400,
            "INVALID_ARGUMENT",
            "sleep",
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some(r#"{"kind":"sleep","extra":1}"#.into()),
            400,
            "INVALID_ARGUMENT",
            "extra",
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some(r#"{"kind":"sleep","input":{"@type":"type.googleapis.com/no.Such"}}"#.into()),
            400,
            "INVALID_ARGUMENT",
            "no.Such",
        ),
        (
            "POST",
            "/v1/tasks:submit?kind=sleep".into(),
            Some("{}".into()),
            400,
            "INVALID_ARGUMENT",
            "body",
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some(big),
            400,
            "INVALID_ARGUMENT",
            "larger",
        ),
        (
            "DELETE",
            format!("/v1/{running}"),
            None,
            400,
            "FAILED_PRECONDITION",
            "cancel",
        ),
        (
            "POST",
            "/v1/operations/nope:cancel".into(),
            None,
            404,
            "NOT_FOUND",
            "nope",
        ),
        (
            "GET",
            "/nothing".into(),
            None,
            404,
            "NOT_FOUND",
            "/openapi.json",
        ),
        (
            "PUT",
            "/v1/operations".into(),
            None,
            405,
            "UNIMPLEMENTED",
            "GET",
        ),
        (
            "TRACE",
            "/v1/taskKinds".into(),
            None,
            405,
            "UNIMPLEMENTED",
            "TRACE",
        ),
        ("POST", "/healthz".into(), None, 405, "UNIMPLEMENTED", "GET"),
    ];
    for (method, path, body, http, status, needle) in cases {
        let reply = server.call(method, &path, body.as_deref()).await;
        let error = assert_error(&reply, http, status);
        if http == 405 {
            assert!(
                reply.header("allow").is_some(),
                "{method} {path}: no Allow header"
            );
        }
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{method} {path}: {message:?} does not mention {needle:?}"
        );
    }
    server.stop().await;
}

/// The same tokens and roles as gRPC; health, readiness and the OpenAPI document are open.
#[tokio::test]
async fn rest_uses_the_same_tokens_and_roles() {
    let server = RestServer::start(Some(tokens())).await;
    let missing = server.call("GET", "/v1/operations", None).await;
    assert_error(&missing, 401, "UNAUTHENTICATED");
    let wrong = server
        .call_as("not-a-token", "GET", "/v1/operations", None)
        .await;
    assert_error(&wrong, 401, "UNAUTHENTICATED");
    let listed = server.call_as(READER, "GET", "/v1/operations", None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let refused = server
        .call_as(
            READER,
            "POST",
            "/v1/tasks:submit",
            Some(&sleep_body("30s", 2)),
        )
        .await;
    let refused = assert_error(&refused, 403, "PERMISSION_DENIED");
    assert_eq!(refused["error"]["details"][0]["reason"], "ROLE_TOO_LOW");
    let submitted = server
        .call_as(
            SUBMITTER,
            "POST",
            "/v1/tasks:submit",
            Some(&sleep_body("30s", 2)),
        )
        .await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    let name = submitted.json()["name"].as_str().expect("name").to_owned();
    let cancelled = server
        .call_as(SUBMITTER, "POST", &format!("/v1/{name}:cancel"), None)
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        let reply = server.call("GET", open, None).await;
        assert_eq!(reply.status, 200, "{open}: {}", reply.body);
    }
    // gRPC health needs no token either (load balancers probe without one).
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a token")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.stop().await;
}

/// The OpenAPI document lists every route with schemas that resolve.
#[tokio::test]
async fn openapi_describes_every_route() {
    let server = RestServer::start(None).await;
    let doc = server.call("GET", "/openapi.json", None).await.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/operations", "get"),
        ("/v1/operations/{operation}", "get"),
        ("/v1/operations/{operation}", "delete"),
        ("/v1/operations/{operation}:cancel", "post"),
        ("/v1/tasks:submit", "post"),
        ("/v1/taskKinds", "get"),
        ("/v1/snapshots", "post"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} missing: {paths:#?}"
        );
    }
    let list_params: Vec<&str> = paths["/v1/operations"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in ["filter", "pageSize", "pageToken"] {
        assert!(list_params.contains(&p), "{p} not in {list_params:?}");
    }
    // Every $ref names a schema the document holds.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().expect("a name");
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
    assert!(schemas.contains_key("google.longrunning.Operation"));
    // Each kind gets a request of its own: its name fixed, its input of its type.
    let sleep = &schemas["oprun.kinds.sleep.SubmitTaskRequest"];
    assert_eq!(
        sleep["properties"]["kind"]["enum"],
        json!(["sleep"]),
        "{sleep}"
    );
    assert_eq!(
        sleep["properties"]["input"]["properties"]["@type"]["enum"],
        json!(["type.googleapis.com/oprun.v1.SleepInput"]),
        "{sleep}"
    );
    assert!(sleep["properties"]["input"]["properties"]["duration"].is_object());
    let offered = &paths["/v1/tasks:submit"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["anyOf"];
    assert!(
        offered.as_array().is_some_and(|a| a.contains(
            &json!({"$ref": "#/components/schemas/oprun.kinds.sleep.SubmitTaskRequest"})
        )),
        "{offered}"
    );
    server.stop().await;
}

/// The next status a health watch reports, within 20 s.
async fn next(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a health change within 20 s")
        .expect("watch")
        .expect("the watch goes on")
        .status
}

/// Health follows the store: NOT_SERVING (gRPC) and 503 (`/readyz`) while it fails, SERVING
/// and 200 again when it answers; `/healthz` (liveness) stays 200 throughout.
#[tokio::test]
async fn health_follows_the_store() {
    let server = RestServer::start(None).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "google.longrunning.Operations".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    server.store.refuse_reads.store(true, Ordering::SeqCst);
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);
    let ready = server.call("GET", "/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("NOT_SERVING"), "{}", ready.body);
    assert_eq!(server.call("GET", "/healthz", None).await.status, 200);
    server.store.refuse_reads.store(false, Ordering::SeqCst);
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    assert_eq!(server.call("GET", "/readyz", None).await.status, 200);
    // An open watch would hold graceful shutdown for its grace period.
    drop(watch);
    drop(health);
    server.stop().await;
}

/// Submits a sleep of `duration` in `steps` over gRPC; its name.
async fn submit_sleep(server: &RestServer, duration: &str, steps: u32) -> String {
    let reply = server
        .call(
            "POST",
            "/v1/tasks:submit",
            Some(&sleep_body(duration, steps)),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["name"].as_str().expect("name").to_owned()
}

fn completed(op: &oprun::proto::google::longrunning::Operation) -> i64 {
    use prost::Message;
    let meta = op.metadata.as_ref().expect("metadata");
    oprun::proto::oprun::v1::OperationMetadata::decode(meta.value.as_slice())
        .expect("metadata")
        .progress
        .map_or(0, |p| p.completed)
}

/// WatchOperation sends the current state at once, then the changes, and ends after the one
/// with `done = true`; a reader that does not keep up gets the latest state, not every step.
#[tokio::test]
async fn watch_operation_streams_to_the_end() {
    use oprun::proto::oprun::v1::watch_service_client::WatchServiceClient;
    use oprun::proto::oprun::v1::WatchOperationRequest;
    let server = RestServer::start(None).await;
    let mut watch = WatchServiceClient::new(server.channel().await);
    // 100 steps of 10 ms: five times faster than the stream may send.
    let name = submit_sleep(&server, "1s", 100).await;
    let mut stream = watch
        .watch_operation(WatchOperationRequest { name: name.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(op) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("stream")
    {
        assert_eq!(op.name, name);
        seen.push(op);
    }
    let last = seen.last().expect("messages");
    assert!(last.done, "the stream ends after the end");
    assert!(seen[..seen.len() - 1].iter().all(|op| !op.done));
    let progress: Vec<i64> = seen.iter().map(completed).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(seen.len() >= 3, "saw progress: {progress:?}");
    // At most one message per 50 ms over the second it ran, plus the first and the end.
    assert!(
        seen.len() <= 25,
        "not coalesced: {} messages {progress:?}",
        seen.len()
    );

    // A done operation: its state, then the end of the stream.
    let again: Vec<_> = watch
        .watch_operation(WatchOperationRequest { name: name.clone() })
        .await
        .expect("watch")
        .into_inner()
        .collect_all()
        .await;
    assert_eq!(again.len(), 1);
    let missing = watch
        .watch_operation(WatchOperationRequest {
            name: "operations/nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let malformed = watch
        .watch_operation(WatchOperationRequest { name: "x".into() })
        .await
        .expect_err("malformed");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

/// Collects a stream of operations to its end.
trait CollectAll {
    async fn collect_all(self) -> Vec<oprun::proto::google::longrunning::Operation>;
}

impl CollectAll for tonic::Streaming<oprun::proto::google::longrunning::Operation> {
    async fn collect_all(mut self) -> Vec<oprun::proto::google::longrunning::Operation> {
        let mut all = Vec::new();
        while let Some(op) = tokio::time::timeout(Duration::from_secs(10), self.message())
            .await
            .expect("a message within 10 s")
            .expect("stream")
        {
            all.push(op);
        }
        all
    }
}

/// The same stream over REST as server-sent events: one `data:` line of proto3 JSON per
/// change, the last one done; an unknown operation is a JSON 404 before any event.
#[tokio::test]
async fn watch_over_server_sent_events() {
    use common::http::{events, next_event};
    let server = RestServer::start(None).await;
    let name = submit_sleep(&server, "0.3s", 3).await;
    let (status, mut reader) = events(server.http, &format!("/v1/{name}:watch"), &[]).await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    while let Some((event, data)) =
        tokio::time::timeout(Duration::from_secs(10), next_event(&mut reader))
            .await
            .expect("an event within 10 s")
    {
        assert_eq!(event, "message", "{data}");
        let op: Value = serde_json::from_str(&data).expect("JSON data");
        assert_eq!(op["name"], name.as_str());
        seen.push(op);
    }
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(seen.last().expect("events")["done"], true);
    assert_eq!(seen.last().expect("events")["response"]["stepsDone"], 3);
    let missing = server.call("GET", "/v1/operations/nope:watch", None).await;
    assert_error(&missing, 404, "NOT_FOUND");
    server.stop().await;
}

/// WatchOperations streams every change of the operations its filter matches, and ends with
/// UNAVAILABLE (not silently) when the server shuts down, without holding the shutdown.
#[tokio::test]
async fn watch_operations_follows_a_filter() {
    use oprun::proto::oprun::v1::watch_service_client::WatchServiceClient;
    use oprun::proto::oprun::v1::WatchOperationsRequest;
    let server = RestServer::start(None).await;
    let mut watch = WatchServiceClient::new(server.channel().await);
    let bad = watch
        .watch_operations(WatchOperationsRequest {
            filter: "kind =".into(),
        })
        .await
        .expect_err("a bad filter");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut stream = watch
        .watch_operations(WatchOperationsRequest {
            filter: "state = SUCCEEDED".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let a = submit_sleep(&server, "0.010s", 1).await;
    let b = submit_sleep(&server, "0.010s", 1).await;
    let long = submit_sleep(&server, "3600s", 1).await;
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let op = next_change(&mut stream).await;
        assert!(op.done, "only SUCCEEDED operations match: {op:?}");
        ended.push(op.name);
    }
    ended.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ended, want);
    assert!(!ended.contains(&long));
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an open watch held shutdown for {:?}",
        started.elapsed()
    );
    let end = stream.message().await.expect_err("ended by the shutdown");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
}

/// The next message of a stream of operations, within 10 s.
async fn next_change(
    stream: &mut tonic::Streaming<oprun::proto::google::longrunning::Operation>,
) -> oprun::proto::google::longrunning::Operation {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a change within 10 s")
        .expect("stream")
        .expect("open")
}

/// Under `state = RUNNING`, WatchOperations also sends the change that takes an operation
/// out of the filter (its end), so that a reader showing it as running sees it end.
#[tokio::test]
async fn watch_operations_sends_the_change_that_leaves_the_filter() {
    use oprun::proto::oprun::v1::watch_service_client::WatchServiceClient;
    use oprun::proto::oprun::v1::WatchOperationsRequest;
    let server = RestServer::start(None).await;
    let mut watch = WatchServiceClient::new(server.channel().await);
    let mut stream = watch
        .watch_operations(WatchOperationsRequest {
            filter: "state = RUNNING".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let long = submit_sleep(&server, "3600s", 1).await;
    let running = next_change(&mut stream).await;
    assert_eq!(running.name, long);
    assert!(!running.done);
    let mut grpc = OperationsClient::new(server.channel().await);
    grpc.cancel_operation(oprun::proto::google::longrunning::CancelOperationRequest {
        name: long.clone(),
    })
    .await
    .expect("cancel");
    let ended = loop {
        let op = next_change(&mut stream).await;
        assert_eq!(op.name, long, "only the running one: {op:?}");
        if op.done {
            break op;
        }
    };
    match &ended.result {
        Some(oprun::proto::google::longrunning::operation::Result::Error(e)) => {
            assert_eq!(e.code, 1, "CANCELLED: {e:?}");
        }
        other => panic!("not an error: {other:?}"),
    }
    server.stop().await;
}

/// `/metrics` serves the Prometheus text format with the operation, store and gRPC metrics,
/// and the counts follow what happened.
#[tokio::test]
async fn metrics_count_what_happened() {
    let server = RestServer::start(None).await;
    let ok = submit_sleep(&server, "0.010s", 1).await;
    let cancelled = submit_sleep(&server, "3600s", 1).await;
    let mut grpc = OperationsClient::new(server.channel().await);
    let _ = grpc
        .get_operation(GetOperationRequest {
            name: "operations/nope".into(),
        })
        .await
        .expect_err("not found");
    grpc.cancel_operation(oprun::proto::google::longrunning::CancelOperationRequest {
        name: cancelled.clone(),
    })
    .await
    .expect("cancel");
    for name in [&ok, &cancelled] {
        common::wait_done(&mut grpc, name).await;
    }
    // Paths no service has are counted under one label set: a client cannot grow the
    // registry (and the server's memory) by calling made-up methods.
    for n in 0..3 {
        let mut raw = tonic::client::Grpc::new(server.channel().await);
        raw.ready().await.expect("ready");
        let path = format!("/no.Such/Method{n}").parse().expect("a path");
        let status = raw
            .unary::<(), (), _>(
                tonic::Request::new(()),
                path,
                oprun::proto::codec::StrictCodec::<(), ()>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    let scraped = server.call("GET", "/metrics", None).await;
    assert_eq!(scraped.status, 200);
    assert!(
        !scraped.body.contains("Method0") && !scraped.body.contains("no.Such"),
        "a made-up method became a label"
    );
    let samples = parse_metrics(&scraped.body);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    };
    assert_eq!(
        value("oprun_operations_submitted_total", &[("kind", "sleep")]),
        2.0
    );
    assert_eq!(
        value(
            "oprun_operations_finished_total",
            &[("kind", "sleep"), ("state", "SUCCEEDED")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "oprun_operations_finished_total",
            &[("kind", "sleep"), ("state", "CANCELLED")]
        ),
        1.0
    );
    assert_eq!(value("oprun_operations_running", &[("kind", "sleep")]), 0.0);
    assert_eq!(value("oprun_operations_queued", &[("kind", "sleep")]), 0.0);
    assert_eq!(
        value("oprun_operation_queue_seconds_count", &[("kind", "sleep")]),
        2.0
    );
    assert_eq!(
        value(
            "oprun_operation_run_seconds_count",
            &[("kind", "sleep"), ("state", "SUCCEEDED")]
        ),
        1.0
    );
    let not_found = [
        ("grpc_service", "google.longrunning.Operations"),
        ("grpc_method", "GetOperation"),
        ("grpc_code", "NOT_FOUND"),
        ("grpc_type", "unary"),
    ];
    assert_eq!(value("grpc_server_handled_total", &not_found), 1.0);
    assert_eq!(
        value(
            "grpc_server_handled_total",
            &[("grpc_method", "unknown"), ("grpc_code", "UNIMPLEMENTED")]
        ),
        3.0
    );
    assert_eq!(
        value(
            "grpc_server_started_total",
            &[("grpc_method", "WaitOperation")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "grpc_server_handled_total",
            &[("grpc_method", "CancelOperation"), ("grpc_code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "grpc_server_handling_seconds_count",
            &[("grpc_method", "CancelOperation")]
        ),
        1.0
    );
    assert!(
        scraped.body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    server.stop().await;
}

/// Samples of the Prometheus text format: (name, labels, value); comments skipped.
fn parse_metrics(text: &str) -> Vec<(String, std::collections::HashMap<String, String>, f64)> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Default::default()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        samples.push((name, labels, value));
    }
    samples
}

/// A call's W3C `traceparent` (gRPC metadata, or the HTTP header through the gateway) is kept
/// in the operation's metadata and carried by the operation's log span, so the work joins the
/// caller's trace; an invalid one is ignored.
#[tokio::test]
async fn traceparent_reaches_the_operation() {
    use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
    use oprun::proto::oprun::v1::SubmitTaskRequest;
    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::binary::BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let http = server.http.expect("an HTTP listener");
    let body = sleep_body("0.01s", 0);
    let over_rest = common::http::request(
        http,
        "POST",
        "/v1/tasks:submit",
        &[("traceparent", TRACE)],
        Some(&body),
    )
    .await;
    assert_eq!(over_rest.status, 200, "{}", over_rest.body);
    assert_eq!(over_rest.json()["metadata"]["traceparent"], TRACE);

    let channel = tonic::transport::Channel::from_shared(server.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let submit = |traceparent: &'static str| {
        let mut tasks = TaskServiceClient::new(channel.clone());
        async move {
            let mut request = tonic::Request::new(SubmitTaskRequest {
                kind: "sleep".into(),
                input: Some(common::sleep_input(10, 1, "")),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("traceparent", traceparent.parse().expect("ascii"));
            tasks
                .submit_task(request)
                .await
                .expect("submit")
                .into_inner()
        }
    };
    let traced = submit(TRACE).await;
    assert_eq!(common::metadata(&traced).traceparent, TRACE);
    let untraced = submit("00-not-a-trace-01").await;
    assert_eq!(common::metadata(&untraced).traceparent, "");
    let mut ops = OperationsClient::new(channel);
    common::wait_done(&mut ops, &traced.name).await;
    let log = server.log_text();
    let id = traced.name.trim_start_matches("operations/");
    assert!(
        log.lines().any(|l| l.contains(id)
            && l.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736")
            && l.contains("parent_id=00f067aa0ba902b7")
            && l.contains("started")),
        "no `started` line in the operation's span with the trace ids:\n{log}"
    );
}

/// Health turns NOT_SERVING the moment shutdown begins (before the listeners close), for an
/// embedder's server too: `server::routes` on a tonic server of the test's own.
#[tokio::test]
async fn health_is_not_serving_once_shutdown_begins() {
    let runner = common::memory_runner().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(oprun::server::routes(&runner).expect("routes"))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    runner.begin_shutdown();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);
    served.abort();
    runner
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}

/// On PostgreSQL, across two real nodes: a sleep submitted over REST to one is followed to
/// its end over server-sent events on the other (the change feed), both are ready, and the
/// store's commits are counted in /metrics.
#[tokio::test]
async fn rest_and_events_across_nodes_on_postgres() {
    use common::http::{events, next_event};
    use oprun::store::postgres::testing::TestDatabase;
    let db = TestDatabase::create("rest_nodes").await;
    let url = db.url();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let start = |dir: &std::path::Path, node: &str| {
        common::binary::BinServer::start_with(
            dir,
            "127.0.0.1:0",
            &["--store", &url, "--node-id", node],
            &[],
        )
    };
    let a = start(dir_a.path(), "node-a");
    let b = start(dir_b.path(), "node-b");
    let (http_a, http_b) = (a.http.expect("HTTP on a"), b.http.expect("HTTP on b"));
    for http in [http_a, http_b] {
        let ready = common::http::request(http, "GET", "/readyz", &[], None).await;
        assert_eq!(ready.status, 200, "{}", ready.body);
    }
    let body = sleep_body("0.5s", 2);
    let submitted =
        common::http::request(http_a, "POST", "/v1/tasks:submit", &[], Some(&body)).await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    let name = submitted.json()["name"].as_str().expect("name").to_owned();
    let (status, mut reader) = events(http_b, &format!("/v1/{name}:watch"), &[]).await;
    assert_eq!(status, 200);
    let mut last = Value::Null;
    while let Some((_, data)) =
        tokio::time::timeout(Duration::from_secs(15), next_event(&mut reader))
            .await
            .expect("an event within 15 s")
    {
        last = serde_json::from_str(&data).expect("JSON");
    }
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["response"]["stepsDone"], 2, "{last}");
    let metrics = common::http::request(http_a, "GET", "/metrics", &[], None).await;
    let commits = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("oprun_store_commit_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("oprun_store_commit_seconds_count");
    assert!(commits >= 1.0, "{commits}");
    drop((a, b));
}

/// REST replies share the unread-response budget with gRPC: one that does not fit is refused
/// with 429 RESOURCE_EXHAUSTED and Retry-After, a small one still passes. And the HTTP
/// listener holds at most --max-connections connections: past it, a new one waits until one
/// closes.
#[tokio::test]
async fn the_http_listener_is_bounded() {
    let server = RestServer::start_with(
        None,
        oprun::server::ServeLimits::default()
            .max_unread_response_bytes(4096)
            .max_connections(2),
    )
    .await;
    for _ in 0..20 {
        let reply = server
            .call("POST", "/v1/tasks:submit", Some(&sleep_body("3600s", 2)))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let big = server
        .call("GET", "/v1/operations?pageSize=100", None)
        .await;
    let error = assert_error(&big, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(big.header("retry-after"), Some("1"));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("smaller pages"),
        "{error}"
    );
    let small = server.call("GET", "/v1/operations?pageSize=1", None).await;
    assert_eq!(small.status, 200, "{}", small.body);

    // Two idle connections take both places; a third is answered once one of them closes.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let first = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    let second = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    let mut third = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    third
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut answer)).await;
    assert!(early.is_err(), "answered past the cap: {answer:?}");
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer))
        .await
        .expect("answered once a place was free")
        .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"),
        "{answer:?}"
    );
    drop(second);
    server.stop().await;
}

/// What the REST gateway echoes of a request is bounded like gRPC's messages: 64 characters
/// of it, then "…(N bytes)", every message under 1 KiB, whether the gateway wrote it or a
/// library it uses (serde's unknown field), for a huge field name, `@type`, query parameter
/// name or value, unroutable path and 405. Before, 7 of these came back whole.
#[tokio::test]
async fn rest_errors_quote_a_short_prefix() {
    let server = RestServer::start(None).await;
    let huge = "y".repeat(60_000);
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some(format!(r#"{{"kind":"sleep","{huge}":1}}"#)),
            400,
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some(format!(
                r#"{{"kind":"sleep","input":{{"@type":"{huge}"}}}}"#
            )),
            400,
        ),
        (
            "POST",
            "/v1/tasks:submit".into(),
            Some(format!(
                r#"{{"kind":"sleep","input":{{"@type":"type.googleapis.com/oprun.v1.SleepInput","{huge}":1}}}}"#
            )),
            400,
        ),
        ("GET", format!("/v1/operations?{huge}=1"), None, 400),
        ("GET", format!("/v1/operations?pageSize={huge}"), None, 400),
        ("GET", format!("/v1/{huge}"), None, 404),
        ("PUT", format!("/v1/operations/{huge}"), None, 405),
        ("GET", format!("/v1/operations/{huge}"), None, 400),
    ];
    for (method, path, body, http) in cases {
        let reply = server.call(method, &path, body.as_deref()).await;
        let path = &path[..path.len().min(40)];
        assert_eq!(
            reply.status,
            http,
            "{method} {path}: {}",
            &reply.body[..reply.body.len().min(300)]
        );
        let message = reply.json()["error"]["message"]
            .as_str()
            .expect("a message")
            .to_owned();
        assert!(
            message.len() < 1024,
            "{method} {path}: a {}-byte message",
            message.len()
        );
        assert!(
            !message.contains(&"y".repeat(65)),
            "{method} {path}: more than 64 characters echoed: {message}"
        );
    }
    server.stop().await;
}

/// HTTP edges of the gateway, each with Google's JSON error: HEAD on a GET route is answered
/// as GET without a body (it was 405); a path that is not UTF-8 once decoded is 400 (it was
/// 404 NO_ROUTE); a JSON object with a key given twice is INVALID_ARGUMENT and starts nothing
/// (the last value used to win); a body that is not said to be JSON is 415 and starts nothing
/// (any type was read as JSON, which let a web page post a "simple" cross-site request); a
/// cancel batch naming one operation 1,000 times counts it once, as the delete batch does;
/// requests hyper refuses (414, 431, bytes HTTP does not allow, HTTP/0.9) have a JSON body.
#[tokio::test]
async fn rest_edges_answer_precisely() {
    let server = RestServer::start(None).await;
    let head = server.call("HEAD", "/v1/operations", None).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty(), "{head:?}");
    let undecodable = server.call("GET", "/v1/operations/%ff", None).await;
    assert_error(&undecodable, 400, "INVALID_ARGUMENT");
    let twice = server
        .call(
            "POST",
            "/v1/operations:batchCancel",
            Some(r#"{"filter":"done = true","filter":"done = false"}"#),
        )
        .await;
    let body = assert_error(&twice, 400, "INVALID_ARGUMENT");
    assert!(body.to_string().contains("twice"), "{body}");
    let nested = server
        .call(
            "POST",
            "/v1/tasks:submit",
            Some(r#"{"kind":"sleep","input":{"@type":"type.googleapis.com/oprun.v1.SleepInput","steps":1,"steps":2}}"#),
        )
        .await;
    assert_error(&nested, 400, "INVALID_ARGUMENT");
    let submit = sleep_body("0s", 1);
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = format!(
            "POST /v1/tasks:submit HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
            submit.len()
        );
        if let Some(t) = content_type {
            request.push_str(&format!("content-type: {t}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&submit);
        let reply = common::http::raw(server.http, request.as_bytes()).await;
        let body = assert_error(&reply, 415, "INVALID_ARGUMENT");
        assert!(body.to_string().contains("application/json"), "{body}");
    }
    let listed = server.call("GET", "/v1/operations", None).await.json();
    assert!(
        listed["operations"].as_array().is_none_or(|a| a.is_empty()),
        "nothing was submitted: {listed}"
    );
    let charset = format!(
        "POST /v1/tasks:submit HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n{submit}",
        submit.len()
    );
    let ok = common::http::raw(server.http, charset.as_bytes()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let name = ok.json()["name"].as_str().expect("name").to_owned();
    let names: Vec<&str> = std::iter::repeat_n(name.as_str(), 1000).collect();
    let batch = server
        .call(
            "POST",
            "/v1/operations:batchCancel",
            Some(&json!({ "names": names }).to_string()),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    let batch = batch.json()["name"].as_str().expect("name").to_owned();
    let done = loop {
        let got = server
            .call("GET", &format!("/v1/{batch}"), None)
            .await
            .json();
        if got["done"] == true {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["response"]["matched"], "1", "{done}");

    // Requests hyper cannot parse get Google's JSON error too (they had empty bodies).
    let many_headers: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (what, request, http) in [
        (
            "a 70 KB URI",
            format!(
                "GET /v1/operations?f={} HTTP/1.1\r\nhost: localhost\r\n\r\n",
                "a".repeat(70_000)
            ),
            414,
        ),
        (
            "120 headers",
            format!("GET /v1/operations HTTP/1.1\r\nhost: localhost\r\n{many_headers}\r\n"),
            431,
        ),
        (
            "a control byte in the query",
            "GET /v1/operations?a=\u{1} HTTP/1.1\r\nhost: localhost\r\n\r\n".to_owned(),
            400,
        ),
        (
            "an HTTP/0.9 request line",
            "GET /healthz\r\n\r\n".to_owned(),
            400,
        ),
        (
            "a control byte in a header",
            "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-a: b\u{1}c\r\n\r\n".to_owned(),
            400,
        ),
    ] {
        let reply = common::http::raw(server.http, request.as_bytes()).await;
        assert_eq!(reply.status, http, "{what}: {reply:?}");
        let body = reply.json();
        assert_eq!(body["error"]["code"], http, "{what}: {body}");
        assert_eq!(
            body["error"]["status"], "INVALID_ARGUMENT",
            "{what}: {body}"
        );
    }
    server.stop().await;
}

/// A web page on another origin cannot act on the server (its `Origin` is refused, whatever
/// the method), and a page that re-pointed its own name at the loopback address cannot read
/// it (a loopback listener answers only to localhost, IP addresses and listed names): each a
/// 403 with Google's JSON error, changing nothing. The server's own origin (the dashboard)
/// and clients that send no `Origin` (curl, SDKs) are served. Before, any origin and any Host
/// were served: a page on another port deleted every finished operation.
#[tokio::test]
async fn other_origins_and_host_names_are_refused() {
    let server = RestServer::start(None).await;
    let made = server
        .call("POST", "/v1/tasks:submit", Some(&sleep_body("0s", 1)))
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let name = made.json()["name"].as_str().expect("name").to_owned();
    let own = format!("http://{}", server.http);
    let host = server.http.to_string();
    for (path, method, body) in [
        (
            "/v1/operations:batchDelete",
            "POST",
            Some(r#"{"filter":"done = true"}"#),
        ),
        (
            "/v1/tasks:submit",
            "POST",
            Some(sleep_body("0s", 1).leak() as &str),
        ),
        ("/v1/operations", "GET", None),
    ] {
        for origin in ["http://127.0.0.1:1", "null", "http://evil.example"] {
            let reply = common::http::request(
                server.http,
                method,
                path,
                &[("origin", origin), ("host", &host)],
                body,
            )
            .await;
            let error = assert_error(&reply, 403, "PERMISSION_DENIED");
            assert!(
                error.to_string().contains("ORIGIN_NOT_ALLOWED"),
                "{origin} {path}: {error}"
            );
        }
    }
    for bad_host in ["evil.example", "evil.example:8080"] {
        for path in ["/v1/operations", "/", "/metrics"] {
            let reply =
                common::http::request(server.http, "GET", path, &[("host", bad_host)], None).await;
            let error = assert_error(&reply, 403, "PERMISSION_DENIED");
            assert!(
                error.to_string().contains("HOST_NOT_ALLOWED"),
                "{bad_host} {path}: {error}"
            );
        }
    }
    // Nothing was deleted or submitted.
    let listed = server.call("GET", "/v1/operations", None).await.json();
    let names: Vec<&str> = listed["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(names, vec![name.as_str()], "{listed}");
    // The server's own origin, and its loopback names, are served.
    for (origin, host) in [
        (own.as_str(), host.as_str()),
        ("http://localhost:1", "localhost:1"),
    ] {
        let reply = common::http::request(
            server.http,
            "GET",
            "/v1/operations",
            &[("origin", origin), ("host", host)],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{origin}: {}", reply.body);
    }
    server.stop().await;
}

/// Issue 21, item 6: a bad Duration or Timestamp in a REST body names its field (inside the
/// input too, with or without its `@type`) and says what proto3 JSON accepts (serde's "failed
/// to parse duration" said neither); and an operation's input reads back as its kind's message.
#[tokio::test]
async fn bad_times_name_their_field_and_inputs_read_back() {
    let server = RestServer::start(None).await;
    let duration_hint = r#"e.g. "90s", "1.5s" or "3600s""#;
    let time_hint = r#"e.g. "2026-11-22T08:00:00Z""#;
    for (body, field, hint) in [
        (
            json!({"kind": "sleep", "input": {
                "@type": "type.googleapis.com/oprun.v1.SleepInput", "duration": "1h"}}),
            r#"field "input.duration": "1h" is not a Duration"#,
            duration_hint,
        ),
        (
            json!({"kind": "sleep", "input": {"duration": "1h"}}),
            r#"field "input.duration": "1h" is not a Duration"#,
            duration_hint,
        ),
        (
            json!({"kind": "sleep", "timeout": 5, "input": {}}),
            r#"field "timeout": 5 is not a Duration"#,
            duration_hint,
        ),
        (
            json!({"kind": "sleep", "notBefore": "tomorrow", "input": {}}),
            r#"field "notBefore": "tomorrow" is not a Timestamp"#,
            time_hint,
        ),
    ] {
        let reply = server
            .call("POST", "/v1/tasks:submit", Some(&body.to_string()))
            .await;
        let error = assert_error(&reply, 400, "INVALID_ARGUMENT");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
        assert!(message.contains(hint), "{body}: {message}");
    }

    let submitted = server
        .call("POST", "/v1/tasks:submit", Some(&sleep_body("0.02s", 2)))
        .await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    let name = submitted.json()["name"].as_str().unwrap().to_owned();
    let input = server.call("GET", &format!("/v1/{name}:input"), None).await;
    assert_eq!(input.status, 200, "{}", input.body);
    assert_eq!(
        input.json(),
        json!({"@type": "type.googleapis.com/oprun.v1.SleepInput", "duration": "0.020s", "steps": 2})
    );
    let missing = server
        .call(
            "GET",
            "/v1/operations/0190c5a00000700080000000000000ff:input",
            None,
        )
        .await;
    assert_error(&missing, 404, "NOT_FOUND");
    server.stop().await;
}
