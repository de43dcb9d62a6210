//! `oprun.v1.AdminService`: the newest operations first, counts, batches, running one again,
//! and who the caller is.

use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::auth::Role;
use crate::error::Error;
use crate::model::OperationId;
use crate::page_token;
use crate::proto::google::longrunning::{ListOperationsResponse, Operation};
use crate::proto::oprun::v1::admin_service_server::{AdminService, AdminServiceServer};
use crate::proto::oprun::v1::caller::Role as WireRole;
use crate::proto::oprun::v1::operation_summary::{Bucket, Count};
use crate::proto::oprun::v1::{
    BatchSelection, Caller, CancelOperationsRequest, DeleteOperationsRequest, GetCallerRequest,
    GetOperationInputRequest, OperationSummary, QueryOperationsRequest, RerunOperationRequest,
    SummarizeOperationsRequest,
};
use crate::scheduler::batch::{check_selection, CANCEL_KIND, DELETE_KIND};
use crate::scheduler::{Runner, Submission};
use crate::text::quote;

/// The window `SummarizeOperations` counts finishes over when none is asked for.
const DEFAULT_WINDOW: u32 = 300;
/// The longest window `SummarizeOperations` counts finishes over.
const MAX_WINDOW: u32 = 86_400;
/// How many buckets a window is cut into (at most).
const BUCKETS: u32 = 30;
/// The longest window whose buckets may be any whole number of seconds; a longer one's are
/// whole minutes.
const LONG_WINDOW: u32 = 1_800;

/// The AdminService over a [`Runner`].
#[derive(Clone)]
pub struct AdminApi {
    runner: Runner,
}

impl AdminApi {
    /// The service, ready to mount on a tonic router.
    pub fn server(runner: Runner) -> AdminServiceServer<Self> {
        AdminServiceServer::new(Self { runner })
    }

    /// Starts a batch of `kind` over what the request selects (`filter` or `names`).
    async fn batch(
        &self,
        kind: &str,
        (filter, names): (String, Vec<String>),
        request_id: String,
        (traceparent, role): (Option<String>, Option<Role>),
    ) -> Result<Response<Operation>, Status> {
        let selection = BatchSelection { filter, names };
        // Checked here too so that the error names the request's own fields.
        check_selection(&selection).map_err(|message| {
            let field = if selection.names.is_empty() {
                "filter"
            } else {
                "names"
            };
            Error::invalid_argument_because(field, "INVALID_SELECTION", message)
        })?;
        let record = self
            .runner
            .submit(Submission {
                kind: kind.to_owned(),
                input: Some(crate::model::pack(&selection)),
                request_id,
                timeout: None,
                not_before: None,
                traceparent,
                role,
                ..Submission::default()
            })
            .await?;
        Ok(Response::new(record.to_operation()))
    }
}

/// The order `QueryOperations` lists in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    NewestFirst,
    OldestFirst,
}

impl Order {
    fn parse(order_by: &str) -> Result<Self, Error> {
        let words: Vec<&str> = order_by.split_whitespace().collect();
        match words.as_slice() {
            [] | ["create_time", "desc"] => Ok(Self::NewestFirst),
            ["create_time"] | ["create_time", "asc"] => Ok(Self::OldestFirst),
            _ => Err(Error::invalid_argument(
                "order_by",
                format!(
                    "order_by {} is not supported; use \"create_time desc\" (newest first, the \
                     default) or \"create_time\"",
                    quote(order_by)
                ),
            )),
        }
    }

    /// What a page token is bound to besides the filter: a token of one order is refused
    /// by the other.
    fn binding(self, filter: &str) -> String {
        match self {
            Self::NewestFirst => format!("desc\n{}", filter.trim()),
            Self::OldestFirst => filter.to_owned(),
        }
    }
}

fn wire_role(role: Role) -> WireRole {
    match role {
        Role::Reader => WireRole::Reader,
        Role::Submitter => WireRole::Submitter,
        Role::Admin => WireRole::Admin,
        Role::Worker => WireRole::Worker,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[instrument(skip_all, name = "rpc.QueryOperations")]
    async fn query_operations(
        &self,
        request: Request<QueryOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let req = request.into_inner();
        let page_size = super::page_size(req.page_size)?;
        let filter = super::parse_filter(&req.filter)?;
        let order = Order::parse(&req.order_by)?;
        let binding = order.binding(&req.filter);
        let cursor = page_token::decode(&req.page_token, &binding)?;
        let page = match order {
            Order::OldestFirst => self.runner.list(&filter, cursor, page_size).await?,
            Order::NewestFirst => {
                let before = if cursor == 0 { i64::MAX } else { cursor };
                self.runner.list_newest(&filter, before, page_size).await?
            }
        };
        Ok(Response::new(ListOperationsResponse {
            operations: page.operations.iter().map(|r| r.to_operation()).collect(),
            next_page_token: page
                .next_after
                .map(|seq| page_token::encode(seq, &binding))
                .unwrap_or_default(),
            unreachable: Vec::new(),
        }))
    }

    #[instrument(skip_all, name = "rpc.SummarizeOperations")]
    async fn summarize_operations(
        &self,
        request: Request<SummarizeOperationsRequest>,
    ) -> Result<Response<OperationSummary>, Status> {
        let asked = request.get_ref().window_seconds;
        let window = match u32::try_from(asked) {
            Ok(0) => DEFAULT_WINDOW,
            Ok(n) if n <= MAX_WINDOW => n,
            _ => {
                return Err(Error::invalid_argument(
                    "window_seconds",
                    format!(
                        "window_seconds must be from 1 to {MAX_WINDOW} (got {asked}); 0 means \
                         {DEFAULT_WINDOW}"
                    ),
                )
                .into())
            }
        };
        // Whole buckets of at least a second, aligned to the clock so that two reads a
        // moment apart agree on their edges; whole minutes past half an hour, so that the
        // store reads its tally of ends by minute (at most 1,440 rows) rather than by second.
        let bucket_secs = match window.div_ceil(BUCKETS).max(1) {
            secs if window > LONG_WINDOW => secs.div_ceil(60) * 60,
            secs => secs,
        };
        let buckets = window.div_ceil(bucket_secs);
        let bucket = Duration::from_secs(u64::from(bucket_secs));
        let now = self.runner.config().clock.now();
        let since = {
            let unix = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aligned = unix - unix % u64::from(bucket_secs);
            let start = aligned.saturating_sub(u64::from(bucket_secs) * u64::from(buckets - 1));
            SystemTime::UNIX_EPOCH + Duration::from_secs(start)
        };
        let summary = self.runner.summarize(since, bucket).await?;
        let mut finished: Vec<Bucket> = (0..u64::from(buckets))
            .map(|i| Bucket {
                start_time: Some(Timestamp::from(
                    since + Duration::from_secs(i * u64::from(bucket_secs)),
                )),
                count: 0,
            })
            .collect();
        for (i, n) in summary.finished {
            if let Some(b) = usize::try_from(i).ok().and_then(|i| finished.get_mut(i)) {
                b.count = i64::try_from(n).unwrap_or(i64::MAX);
            }
        }
        Ok(Response::new(OperationSummary {
            counts: summary
                .counts
                .into_iter()
                .map(|(kind, state, n)| Count {
                    kind,
                    state: state.to_proto() as i32,
                    count: i64::try_from(n).unwrap_or(i64::MAX),
                })
                .collect(),
            finished,
            bucket_seconds: i32::try_from(bucket_secs).unwrap_or(i32::MAX),
            read_time: Some(Timestamp::from(now)),
        }))
    }

    #[instrument(skip_all, name = "rpc.CancelOperations", fields(trace_id, parent_id))]
    async fn cancel_operations(
        &self,
        request: Request<CancelOperationsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let traceparent = super::traceparent(&request);
        let role = super::caller_role(&request);
        let req = request.into_inner();
        self.batch(
            CANCEL_KIND,
            (req.filter, req.names),
            req.request_id,
            (traceparent, role),
        )
        .await
    }

    #[instrument(skip_all, name = "rpc.DeleteOperations", fields(trace_id, parent_id))]
    async fn delete_operations(
        &self,
        request: Request<DeleteOperationsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let traceparent = super::traceparent(&request);
        let role = super::caller_role(&request);
        let req = request.into_inner();
        self.batch(
            DELETE_KIND,
            (req.filter, req.names),
            req.request_id,
            (traceparent, role),
        )
        .await
    }

    #[instrument(skip_all, name = "rpc.RerunOperation", fields(trace_id, parent_id))]
    async fn rerun_operation(
        &self,
        request: Request<RerunOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let traceparent = super::traceparent(&request);
        let role = super::caller_role(&request);
        let req = request.into_inner();
        let id = OperationId::parse_name(&req.name).map_err(Error::from)?;
        let record = self
            .runner
            .rerun(&id, req.request_id, traceparent, role)
            .await?;
        Ok(Response::new(record.to_operation()))
    }

    #[instrument(skip_all, name = "rpc.GetOperationInput")]
    async fn get_operation_input(
        &self,
        request: Request<GetOperationInputRequest>,
    ) -> Result<Response<prost_types::Any>, Status> {
        let id = OperationId::parse_name(&request.get_ref().name).map_err(Error::from)?;
        Ok(Response::new(self.runner.get(&id).await?.input))
    }

    #[instrument(skip_all, name = "rpc.GetCaller")]
    async fn get_caller(
        &self,
        request: Request<GetCallerRequest>,
    ) -> Result<Response<Caller>, Status> {
        let caller = request.extensions().get::<crate::auth::Caller>();
        Ok(Response::new(match caller {
            Some(caller) => Caller {
                role: wire_role(caller.role) as i32,
                label: caller.label.to_string(),
                authenticated: true,
            },
            None => Caller {
                role: WireRole::Admin as i32,
                label: String::new(),
                authenticated: false,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Name;

    #[test]
    fn orders_parse_and_bind_tokens_apart() {
        assert!(Order::parse("").is_ok_and(|o| o == Order::NewestFirst));
        assert!(Order::parse("create_time  desc").is_ok_and(|o| o == Order::NewestFirst));
        assert!(Order::parse("create_time").is_ok_and(|o| o == Order::OldestFirst));
        assert!(Order::parse("create_time asc").is_ok_and(|o| o == Order::OldestFirst));
        assert!(Order::parse("name").is_err());
        assert!(Order::parse("create_time sideways").is_err());
        assert_ne!(
            Order::NewestFirst.binding("done = true"),
            Order::OldestFirst.binding("done = true")
        );
        // The selection's message type is what the batch kinds take.
        assert_eq!(BatchSelection::full_name(), "oprun.v1.BatchSelection");
    }
}
