//! Issue 21, item 9: OpenTelemetry export. `oprun serve --otlp-endpoint URL` sends every
//! call's span and every operation's span over OTLP/gRPC; a submission with a `traceparent`
//! yields spans of that trace for the call, the operation's run and its end. The collector
//! here is the test's own `TraceService/Export`, decoding what arrives.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::BinServer;
use common::sleep_input;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::WaitOperationRequest;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::SubmitTaskRequest;
use tonic::transport::Channel;

/// What the collector received: each span with its resource's service name.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| text(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    got.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A string attribute's value.
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_in_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let mut server = BinServer::start(
        dir.path(),
        "127.0.0.1:0",
        &["--otlp-endpoint", &endpoint],
        &[],
    );
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut submit = tonic::Request::new(SubmitTaskRequest {
        kind: "sleep".into(),
        input: Some(sleep_input(20, 2, "")),
        ..Default::default()
    });
    submit.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let op = TaskServiceClient::new(channel.clone())
        .submit_task(submit)
        .await
        .unwrap()
        .into_inner();
    let done = OperationsClient::new(channel)
        .wait_operation(WaitOperationRequest {
            name: op.name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.done, "{done:?}");
    // A graceful stop flushes what is batched.
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    let spans = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let spans = collector.0.lock().unwrap().clone();
            let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
            if names.contains(&"rpc.SubmitTask") && names.contains(&"operation") {
                break spans;
            }
            drop(spans);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the call's and the operation's spans within 10 s");

    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace_id)
        .map(|(_, s)| s)
        .collect();
    // The call's span: a child of the caller's.
    let call = in_trace
        .iter()
        .find(|s| s.name == "rpc.SubmitTask")
        .unwrap_or_else(|| panic!("no rpc.SubmitTask span in the trace: {spans:#?}"));
    assert_eq!(hex(&call.parent_span_id), caller_span);
    // The operation's run, in the same trace, named for the operation, with its end.
    let run = in_trace
        .iter()
        .find(|s| s.name == "operation")
        .unwrap_or_else(|| panic!("no operation span in the trace: {spans:#?}"));
    assert_eq!(
        text(&run.attributes, "op.name").as_deref(),
        Some(op.name.as_str())
    );
    assert_eq!(text(&run.attributes, "op.kind").as_deref(), Some("sleep"));
    let end = run
        .events
        .iter()
        .find(|e| e.name == "finished")
        .unwrap_or_else(|| panic!("no end in the operation's span: {run:#?}"));
    assert_eq!(text(&end.attributes, "state").as_deref(), Some("SUCCEEDED"));
    assert!(
        spans.iter().all(|(service, _)| service == "oprun"),
        "{spans:#?}"
    );
}
