//! `google.longrunning.Operations`.

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::quote;
use crate::error::Error;
use crate::model::{time, OperationId, COLLECTION};
use crate::page_token;
use crate::proto::google::longrunning::operations_server::{Operations, OperationsServer};
use crate::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use crate::scheduler::Runner;

/// The Operations service over a [`Runner`].
#[derive(Clone)]
pub struct OperationsApi {
    runner: Runner,
}

impl OperationsApi {
    /// The service, ready to mount on a tonic router.
    pub fn server(runner: Runner) -> OperationsServer<Self> {
        OperationsServer::new(Self { runner })
    }
}

/// Time kept back from the caller's deadline so Wait answers before it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The caller's deadline from the `grpc-timeout` header, if any.
fn call_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Operations for OperationsApi {
    #[instrument(skip_all, name = "rpc.ListOperations")]
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let req = request.into_inner();
        if !(req.name.is_empty() || req.name == COLLECTION) {
            return Err(Error::invalid_argument(
                "name",
                format!(
                    "name {} is not a collection of this server; use \"{COLLECTION}\" or leave it empty",
                    quote(&req.name)
                ),
            )
            .into());
        }
        let page_size = super::page_size(req.page_size)?;
        let filter = super::parse_filter(&req.filter)?;
        let after = page_token::decode(&req.page_token, &req.filter)?;
        let page = self.runner.list(&filter, after, page_size).await?;
        Ok(Response::new(ListOperationsResponse {
            operations: page.operations.iter().map(|r| r.to_operation()).collect(),
            next_page_token: page
                .next_after
                .map(|seq| page_token::encode(seq, &req.filter))
                .unwrap_or_default(),
            // One store holds every operation, so nothing is ever unreachable.
            unreachable: Vec::new(),
        }))
    }

    #[instrument(skip_all, name = "rpc.GetOperation")]
    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let id = OperationId::parse_name(&request.get_ref().name).map_err(Error::from)?;
        let record = self.runner.get(&id).await?;
        Ok(Response::new(record.to_operation()))
    }

    #[instrument(skip_all, name = "rpc.DeleteOperation")]
    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let id = OperationId::parse_name(&request.get_ref().name).map_err(Error::from)?;
        self.runner.delete(&id).await?;
        Ok(Response::new(()))
    }

    #[instrument(skip_all, name = "rpc.CancelOperation")]
    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let id = OperationId::parse_name(&request.get_ref().name).map_err(Error::from)?;
        self.runner.cancel(&id).await?;
        Ok(Response::new(()))
    }

    #[instrument(skip_all, name = "rpc.WaitOperation")]
    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let deadline = call_deadline(&request);
        let req = request.into_inner();
        let id = OperationId::parse_name(&req.name).map_err(Error::from)?;
        let mut timeout = match req.timeout {
            None => self.runner.config().max_wait,
            Some(t) => time::duration(&t).map_err(|e| {
                Error::invalid_argument(
                    "timeout",
                    format!(
                        "timeout is not a valid non-negative duration: {e}; leave it unset to \
                         wait up to the server's limit"
                    ),
                )
            })?,
        };
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_sub(DEADLINE_MARGIN));
        }
        let record = self.runner.wait(&id, timeout).await?;
        Ok(Response::new(record.to_operation()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// grpc-timeout values parse per the gRPC spec and garbage is ignored.
    #[test]
    fn grpc_timeout_parsing() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("x5S"), None);
        assert_eq!(parse_grpc_timeout("5X"), None);
    }
}
