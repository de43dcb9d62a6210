//! `oprun.v1.TaskService`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::proto::google::longrunning::Operation;
use crate::proto::oprun::v1::task_service_server::{TaskService, TaskServiceServer};
use crate::proto::oprun::v1::{ListTaskKindsRequest, ListTaskKindsResponse, SubmitTaskRequest};
use crate::scheduler::Runner;

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
    #[instrument(skip_all, name = "rpc.SubmitTask")]
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = request.into_inner();
        let record = self
            .runner
            .submit(&req.kind, req.input, &req.request_id)
            .await?;
        Ok(Response::new(record.to_operation()))
    }

    #[instrument(skip_all, name = "rpc.ListTaskKinds")]
    async fn list_task_kinds(
        &self,
        _request: Request<ListTaskKindsRequest>,
    ) -> Result<Response<ListTaskKindsResponse>, Status> {
        Ok(Response::new(ListTaskKindsResponse {
            kinds: self.runner.registry().describe(),
        }))
    }
}
