//! A worker of the test's own over the worker protocol (`oprun.v1.WorkerService`), and a kind
//! with types of its own (`test.v1.Echo` → `test.v1.Echoed`), declared with descriptors made
//! here: what a worker in another language does.

use std::time::Duration;

use oprun::proto::oprun::v1::worker_event::Event;
use oprun::proto::oprun::v1::worker_service_client::WorkerServiceClient;
use oprun::proto::oprun::v1::{
    complete_assignment_request, Assignment, CompleteAssignmentRequest, KindDeclaration,
    OpenSessionRequest, Progress, ReportProgressRequest, StreamAssignmentsRequest, WorkerEvent,
};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    Any, DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
};
use tonic::transport::Channel;

/// The echo kind's input.
#[derive(Clone, PartialEq, Message)]
pub struct Echo {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(int32, tag = "2")]
    pub repeat: i32,
}

/// The echo kind's output.
#[derive(Clone, PartialEq, Message)]
pub struct Echoed {
    #[prost(string, tag = "1")]
    pub text: String,
}

fn field(name: &str, number: i32, kind: Type) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        json_name: Some(name.to_owned()),
        ..Default::default()
    }
}

/// `test/v1/echo.proto`: `Echo { string text = 1; int32 repeat = 2; }`,
/// `Echoed { string text = 1; }` (with `repeat` of type `repeat_type`, to declare an
/// incompatible change).
pub fn echo_descriptors_with(repeat_type: Type) -> FileDescriptorSet {
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("test/v1/echo.proto".to_owned()),
            package: Some("test.v1".to_owned()),
            syntax: Some("proto3".to_owned()),
            message_type: vec![
                DescriptorProto {
                    name: Some("Echo".to_owned()),
                    field: vec![
                        field("text", 1, Type::String),
                        field("repeat", 2, repeat_type),
                    ],
                    ..Default::default()
                },
                DescriptorProto {
                    name: Some("Echoed".to_owned()),
                    field: vec![field("text", 1, Type::String)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
    }
}

pub fn echo_descriptors() -> FileDescriptorSet {
    echo_descriptors_with(Type::Int32)
}

/// The declaration of an echo kind named `name`.
pub fn echo_kind(
    name: &str,
    retry_safe: bool,
    heartbeat: Duration,
    concurrency: u32,
) -> KindDeclaration {
    KindDeclaration {
        name: name.to_owned(),
        input_type: "test.v1.Echo".to_owned(),
        output_type: "test.v1.Echoed".to_owned(),
        details_type: String::new(),
        descriptors: Some(echo_descriptors()),
        retry_safe,
        max_attempts: 1,
        default_timeout: None,
        heartbeat_timeout: prost_types::Duration::try_from(heartbeat).ok(),
        concurrency,
        max_per_key: 0,
    }
}

pub fn any_of<M: Message>(type_name: &str, message: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

pub fn echo_input(text: &str, repeat: i32) -> Any {
    any_of(
        "test.v1.Echo",
        &Echo {
            text: text.to_owned(),
            repeat,
        },
    )
}

/// A worker with an open session and its stream of events.
pub struct TestWorker {
    pub client: WorkerServiceClient<Channel>,
    pub session: String,
    pub events: tonic::Streaming<WorkerEvent>,
}

impl TestWorker {
    /// Opens a session declaring `kinds` and attaches its stream.
    pub async fn open(channel: Channel, worker: &str, kinds: Vec<KindDeclaration>) -> Self {
        let mut client = WorkerServiceClient::new(channel);
        let session = client
            .open_session(OpenSessionRequest {
                worker: worker.to_owned(),
                kinds,
            })
            .await
            .expect("open a session")
            .into_inner()
            .name;
        let events = client
            .stream_assignments(StreamAssignmentsRequest {
                session: session.clone(),
            })
            .await
            .expect("attach the stream")
            .into_inner();
        Self {
            client,
            session,
            events,
        }
    }

    /// The next event, within 20 s.
    pub async fn next_event(&mut self) -> Event {
        let event = tokio::time::timeout(Duration::from_secs(20), self.events.message())
            .await
            .expect("an event within 20 s")
            .expect("the stream is healthy")
            .expect("the stream is open");
        event.event.expect("an event")
    }

    /// The next assignment, within 20 s.
    pub async fn assignment(&mut self) -> Assignment {
        match self.next_event().await {
            Event::Assignment(a) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    pub async fn report(
        &mut self,
        a: &Assignment,
        completed: i64,
        total: i64,
    ) -> Result<bool, tonic::Status> {
        self.client
            .report_progress(ReportProgressRequest {
                name: a.name.clone(),
                lease_token: a.lease_token.clone(),
                progress: Some(Progress {
                    completed,
                    total,
                    unit: "steps".to_owned(),
                }),
                status_message: format!("step {completed}"),
                details: None,
            })
            .await
            .map(|r| r.into_inner().cancel_requested)
    }

    pub async fn respond(&mut self, a: &Assignment, response: Any) -> Result<(), tonic::Status> {
        self.client
            .complete_assignment(CompleteAssignmentRequest {
                name: a.name.clone(),
                lease_token: a.lease_token.clone(),
                result: Some(complete_assignment_request::Result::Response(response)),
            })
            .await
            .map(|_| ())
    }

    pub async fn fail(
        &mut self,
        a: &Assignment,
        code: i32,
        message: &str,
    ) -> Result<(), tonic::Status> {
        self.client
            .complete_assignment(CompleteAssignmentRequest {
                name: a.name.clone(),
                lease_token: a.lease_token.clone(),
                result: Some(complete_assignment_request::Result::Error(
                    oprun::proto::google::rpc::Status {
                        code,
                        message: message.to_owned(),
                        details: Vec::new(),
                    },
                )),
            })
            .await
            .map(|_| ())
    }
}

/// The echo's answer to an assignment: its text `repeat` times.
pub fn echo_answer(a: &Assignment) -> Any {
    let input =
        Echo::decode(a.input.as_ref().expect("an input").value.as_slice()).expect("an Echo");
    any_of(
        "test.v1.Echoed",
        &Echoed {
            text: input
                .text
                .repeat(usize::try_from(input.repeat).unwrap_or(1)),
        },
    )
}
