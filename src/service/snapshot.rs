//! `oprun.v1.SnapshotService`: a typed front for the `snapshot` kind.

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::model::pack;
use crate::proto::google::longrunning::Operation;
use crate::proto::oprun::v1::snapshot_service_server::{SnapshotService, SnapshotServiceServer};
use crate::proto::oprun::v1::CreateSnapshotRequest;
use crate::scheduler::{Runner, Submission};

/// The kind that CreateSnapshot submits.
pub const SNAPSHOT_KIND: &str = "snapshot";

/// The SnapshotService over a [`Runner`].
#[derive(Clone)]
pub struct SnapshotApi {
    runner: Runner,
}

impl SnapshotApi {
    /// The service, when the runner has the `snapshot` kind registered.
    pub fn server(runner: Runner) -> Option<SnapshotServiceServer<Self>> {
        runner
            .registry()
            .contains(SNAPSHOT_KIND)
            .then(|| SnapshotServiceServer::new(Self { runner }))
    }
}

#[tonic::async_trait]
impl SnapshotService for SnapshotApi {
    #[instrument(skip_all, name = "rpc.CreateSnapshot", fields(trace_id, parent_id))]
    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<Operation>, Status> {
        let traceparent = super::traceparent(&request);
        let role = super::caller_role(&request);
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let record = self
            .runner
            .submit(Submission {
                request_id,
                traceparent,
                role,
                ..Submission::new(SNAPSHOT_KIND, pack(&req))
            })
            .await?;
        Ok(Response::new(record.to_operation()))
    }
}
