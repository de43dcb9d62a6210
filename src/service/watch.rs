//! `oprun.v1.WatchService`: streams of operation changes (see
//! [`Runner::watch_operation`] and [`Runner::watch_operations`]).

use futures::StreamExt;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::Error;
use crate::model::OperationId;
use crate::proto::google::longrunning::Operation;
use crate::proto::oprun::v1::watch_service_server::{WatchService, WatchServiceServer};
use crate::proto::oprun::v1::{WatchOperationRequest, WatchOperationsRequest};
use crate::scheduler::{Changes, Runner};

/// The WatchService over a [`Runner`].
#[derive(Clone)]
pub struct WatchApi {
    runner: Runner,
}

impl WatchApi {
    /// The service, ready to mount on a tonic router.
    pub fn server(runner: Runner) -> WatchServiceServer<Self> {
        WatchServiceServer::new(Self { runner })
    }
}

/// A stream of operations as the generated service sends it.
pub type OperationStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Operation, Status>> + Send>>;

fn wire(changes: Changes) -> OperationStream {
    Box::pin(changes.map(|c| c.map(|r| r.to_operation()).map_err(Status::from)))
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchOperationStream = OperationStream;
    type WatchOperationsStream = OperationStream;

    #[instrument(skip_all, name = "rpc.WatchOperation")]
    async fn watch_operation(
        &self,
        request: Request<WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let id = OperationId::parse_name(&request.get_ref().name).map_err(Error::from)?;
        let changes = self.runner.watch_operation(&id).await?;
        Ok(Response::new(wire(changes)))
    }

    #[instrument(skip_all, name = "rpc.WatchOperations")]
    async fn watch_operations(
        &self,
        request: Request<WatchOperationsRequest>,
    ) -> Result<Response<Self::WatchOperationsStream>, Status> {
        let filter = super::parse_filter(&request.get_ref().filter)?;
        Ok(Response::new(wire(self.runner.watch_operations(filter))))
    }
}
