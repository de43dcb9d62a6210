//! `oprun.v1.TaskService`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::Error;
use crate::model::time;
use crate::model::OperationRecord;
use crate::proto::google::longrunning::Operation;
use crate::proto::oprun::v1::task_service_server::{TaskService, TaskServiceServer};
use crate::proto::oprun::v1::{
    BatchSubmitTasksRequest, BatchSubmitTasksResponse, ListNodesRequest, ListNodesResponse,
    ListTaskKindsRequest, ListTaskKindsResponse, Node, SubmitTaskRequest,
};
use crate::scheduler::{Runner, Submission};

/// The TaskService over a [`Runner`].
#[derive(Clone)]
pub struct TaskApi {
    runner: Runner,
}

impl TaskApi {
    /// The service, ready to mount on a tonic router.
    pub fn server(runner: Runner) -> TaskServiceServer<Self> {
        TaskServiceServer::new(Self { runner })
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    #[instrument(skip_all, name = "rpc.SubmitTask", fields(trace_id, parent_id))]
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<Operation>, Status> {
        let traceparent = super::traceparent(&request);
        let role = super::caller_role(&request);
        let submission = submission(request.into_inner(), traceparent, role)?;
        let record = self.runner.submit(submission).await?;
        Ok(Response::new(record.to_operation()))
    }

    #[instrument(
        skip_all,
        name = "rpc.BatchSubmitTasks",
        fields(trace_id, parent_id, count)
    )]
    async fn batch_submit_tasks(
        &self,
        request: Request<BatchSubmitTasksRequest>,
    ) -> Result<Response<BatchSubmitTasksResponse>, Status> {
        let traceparent = super::traceparent(&request);
        let role = super::caller_role(&request);
        let requests = request.into_inner().requests;
        tracing::Span::current().record("count", requests.len());
        let submissions = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| submission(r, traceparent.clone(), role).map_err(|e| e.in_batch(i)))
            .collect::<Result<Vec<_>, Error>>()?;
        let records = self.runner.submit_many(submissions).await?;
        Ok(Response::new(BatchSubmitTasksResponse {
            operations: records.iter().map(OperationRecord::to_operation).collect(),
        }))
    }

    #[instrument(skip_all, name = "rpc.ListTaskKinds")]
    async fn list_task_kinds(
        &self,
        request: Request<ListTaskKindsRequest>,
    ) -> Result<Response<ListTaskKindsResponse>, Status> {
        Ok(Response::new(ListTaskKindsResponse {
            kinds: self.runner.kinds(request.get_ref().with_descriptors),
        }))
    }

    #[instrument(skip_all, name = "rpc.ListNodes")]
    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self
            .runner
            .nodes()
            .await?
            .into_iter()
            .map(|n| Node {
                live: n.live,
                lease_expire_time: (!n.holds_store)
                    .then(|| prost_types::Timestamp::from(n.lease.lease_until)),
                holds_store: n.holds_store,
                running: i64::try_from(n.lease.running).unwrap_or(i64::MAX),
                id: n.lease.id,
                session: n.session,
            })
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }
}

/// A submission from its request: the times checked (the rest is checked by the runner).
fn submission(
    req: SubmitTaskRequest,
    traceparent: Option<String>,
    role: Option<crate::auth::Role>,
) -> Result<Submission, Error> {
    let timeout = req
        .timeout
        .map(|t| {
            time::duration(&t).map_err(|e| {
                Error::invalid_argument(
                    "timeout",
                    format!(
                        "timeout is not a valid positive duration: {e}; send e.g. \"300s\", \
                         or leave it unset for no timeout"
                    ),
                )
            })
        })
        .transpose()?;
    let not_before = req
        .not_before
        .map(|t| {
            time::timestamp(&t).map_err(|e| {
                Error::invalid_argument(
                    "not_before",
                    format!(
                        "not_before is not a valid timestamp: {e}; send an RFC 3339 time \
                         such as \"2026-11-22T08:00:00Z\""
                    ),
                )
            })
        })
        .transpose()?;
    Ok(Submission {
        kind: req.kind,
        input: req.input,
        request_id: req.request_id,
        timeout,
        not_before,
        traceparent,
        role,
        priority: req.priority,
        unique_key: req.unique_key,
        retry_policy: req.retry_policy,
        concurrency_key: req.concurrency_key,
        schedule: String::new(),
        fire_time: None,
    })
}
