//! `oprun.v1.WorkerService`: workers in their own processes (see the runner's `workers`).

use std::time::Duration;

use futures::StreamExt;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::Error;
use crate::proto::oprun::v1::complete_assignment_request::Result as Completed;
use crate::proto::oprun::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use crate::proto::oprun::v1::{
    CloseSessionRequest, CompleteAssignmentRequest, OpenSessionRequest, PollAssignmentsRequest,
    PollAssignmentsResponse, ReportProgressRequest, ReportProgressResponse,
    StreamAssignmentsRequest, WorkerEvent, WorkerSession,
};
use crate::scheduler::{Completion, Runner};

/// The WorkerService over a [`Runner`].
#[derive(Clone)]
pub struct WorkerApi {
    runner: Runner,
}

impl WorkerApi {
    /// The service, ready to mount on a tonic router.
    pub fn server(runner: Runner) -> WorkerServiceServer<Self> {
        WorkerServiceServer::new(Self { runner })
    }
}

/// A session's events as the generated service sends them.
pub type WorkerEvents =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<WorkerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type StreamAssignmentsStream = WorkerEvents;

    #[instrument(skip_all, name = "rpc.OpenSession")]
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<WorkerSession>, Status> {
        let req = request.into_inner();
        let session = self.runner.open_session(req.worker, req.kinds).await?;
        Ok(Response::new(session))
    }

    #[instrument(skip_all, name = "rpc.StreamAssignments")]
    async fn stream_assignments(
        &self,
        request: Request<StreamAssignmentsRequest>,
    ) -> Result<Response<Self::StreamAssignmentsStream>, Status> {
        let events = self.runner.stream_assignments(&request.get_ref().session)?;
        Ok(Response::new(Box::pin(
            events.map(|e| e.map_err(Status::from)),
        )))
    }

    #[instrument(skip_all, name = "rpc.PollAssignments")]
    async fn poll_assignments(
        &self,
        request: Request<PollAssignmentsRequest>,
    ) -> Result<Response<PollAssignmentsResponse>, Status> {
        let req = request.into_inner();
        let wait = req
            .wait
            .map(|w| {
                Duration::try_from(w).map_err(|_| {
                    Error::invalid_argument("wait", "wait must be a duration of 0 to 60 s")
                })
            })
            .transpose()?;
        let (assignments, cancellations) = self.runner.poll_assignments(&req.session, wait).await?;
        Ok(Response::new(PollAssignmentsResponse {
            assignments,
            cancellations,
        }))
    }

    #[instrument(skip_all, name = "rpc.ReportProgress")]
    async fn report_progress(
        &self,
        request: Request<ReportProgressRequest>,
    ) -> Result<Response<ReportProgressResponse>, Status> {
        let req = request.into_inner();
        let cancel_requested = self.runner.report_progress(
            &req.name,
            &req.lease_token,
            req.progress,
            req.status_message,
            req.details,
        )?;
        Ok(Response::new(ReportProgressResponse { cancel_requested }))
    }

    #[instrument(skip_all, name = "rpc.CompleteAssignment")]
    async fn complete_assignment(
        &self,
        request: Request<CompleteAssignmentRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let completion = match req.result {
            Some(Completed::Response(any)) => Completion::Response(any),
            Some(Completed::Error(status)) => Completion::Error(status),
            None => {
                return Err(Error::invalid_argument(
                    "result",
                    "give the response or the error the assignment ended with",
                )
                .into())
            }
        };
        self.runner
            .complete_assignment(&req.name, &req.lease_token, completion)?;
        Ok(Response::new(()))
    }

    #[instrument(skip_all, name = "rpc.CloseSession")]
    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        self.runner.close_session(&req.name, req.drain).await?;
        Ok(Response::new(()))
    }
}
