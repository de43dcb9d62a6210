//! `oprun.v1.ScheduleService`.

use base64::Engine;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::Error;
use crate::proto::google::longrunning::Operation;
use crate::proto::oprun::v1::schedule_service_server::{ScheduleService, ScheduleServiceServer};
use crate::proto::oprun::v1::{
    CreateScheduleRequest, DeleteScheduleRequest, GetScheduleRequest, ListSchedulesRequest,
    ListSchedulesResponse, PauseScheduleRequest, ResumeScheduleRequest, Schedule,
    TriggerScheduleRequest, UpdateScheduleRequest,
};
use crate::scheduler::Runner;

/// What a page token of ListSchedules starts with (before the last id of the page it
/// follows), so that a token of another list is refused.
const TOKEN_PREFIX: &str = "schedules:";

/// The largest ListSchedules page.
const MAX_PAGE_SIZE: usize = 100;

/// The ScheduleService over a [`Runner`].
#[derive(Clone)]
pub struct ScheduleApi {
    runner: Runner,
}

impl ScheduleApi {
    /// The service, ready to mount on a tonic router.
    pub fn server(runner: Runner) -> ScheduleServiceServer<Self> {
        ScheduleServiceServer::new(Self { runner })
    }
}

/// The page token that follows a page ending with schedule `id`.
fn page_token(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{id}"))
}

/// The id a page token follows (empty for the first page).
fn after(token: &str) -> Result<String, Error> {
    if token.is_empty() {
        return Ok(String::new());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(TOKEN_PREFIX).map(str::to_owned))
        .ok_or_else(|| {
            Error::invalid_argument(
                "page_token",
                "page_token is not one this server issued; pass the next_page_token of the \
                 previous ListSchedules response, or none for the first page",
            )
        })
}

#[tonic::async_trait]
impl ScheduleService for ScheduleApi {
    #[instrument(skip_all, name = "rpc.CreateSchedule", fields(schedule))]
    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        let role = super::caller_role(&request);
        let request = request.into_inner();
        let schedule = request.schedule.ok_or_else(|| {
            Error::invalid_argument(
                "schedule",
                "schedule is missing: send the schedule to create",
            )
        })?;
        let created = self
            .runner
            .create_schedule(&request.schedule_id, schedule, role)
            .await?;
        tracing::Span::current().record("schedule", created.name.as_str());
        Ok(Response::new(created))
    }

    #[instrument(skip_all, name = "rpc.GetSchedule", fields(schedule = %request.get_ref().name))]
    async fn get_schedule(
        &self,
        request: Request<GetScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        Ok(Response::new(
            self.runner.get_schedule(&request.get_ref().name).await?,
        ))
    }

    #[instrument(skip_all, name = "rpc.ListSchedules")]
    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        let request = request.into_inner();
        // At most 100 a page: each schedule's recent runs are read with it.
        let limit = super::page_size(request.page_size)?.min(MAX_PAGE_SIZE);
        let after = after(&request.page_token)?;
        // One more than the page tells whether another follows.
        let mut schedules = self
            .runner
            .list_schedules(&after, limit.saturating_add(1))
            .await?;
        let next_page_token = if schedules.len() > limit {
            schedules.truncate(limit);
            schedules
                .last()
                .and_then(|s| s.name.strip_prefix(crate::schedules::NAME_PREFIX))
                .map(page_token)
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListSchedulesResponse {
            schedules,
            next_page_token,
        }))
    }

    #[instrument(skip_all, name = "rpc.UpdateSchedule", fields(schedule))]
    async fn update_schedule(
        &self,
        request: Request<UpdateScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        let role = super::caller_role(&request);
        let request = request.into_inner();
        let schedule = request.schedule.ok_or_else(|| {
            Error::invalid_argument(
                "schedule",
                "schedule is missing: send its name and the fields to change",
            )
        })?;
        tracing::Span::current().record("schedule", schedule.name.as_str());
        let mask = request.update_mask.map(|m| m.paths).unwrap_or_default();
        Ok(Response::new(
            self.runner.update_schedule(schedule, &mask, role).await?,
        ))
    }

    #[instrument(skip_all, name = "rpc.DeleteSchedule", fields(schedule = %request.get_ref().name))]
    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Result<Response<()>, Status> {
        self.runner.delete_schedule(&request.get_ref().name).await?;
        Ok(Response::new(()))
    }

    #[instrument(skip_all, name = "rpc.PauseSchedule", fields(schedule = %request.get_ref().name))]
    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.runner
                .pause_schedule(&request.name, &request.note)
                .await?,
        ))
    }

    #[instrument(skip_all, name = "rpc.ResumeSchedule", fields(schedule = %request.get_ref().name))]
    async fn resume_schedule(
        &self,
        request: Request<ResumeScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        Ok(Response::new(
            self.runner
                .resume_schedule(
                    &request.get_ref().name,
                    &request.get_ref().note,
                    super::caller_role(&request),
                )
                .await?,
        ))
    }

    #[instrument(
        skip_all,
        name = "rpc.TriggerSchedule",
        fields(schedule = %request.get_ref().name, trace_id, parent_id)
    )]
    async fn trigger_schedule(
        &self,
        request: Request<TriggerScheduleRequest>,
    ) -> Result<Response<Operation>, Status> {
        let traceparent = super::traceparent(&request);
        let role = super::caller_role(&request);
        let request = request.into_inner();
        let record = self
            .runner
            .trigger_schedule(&request.name, request.request_id, traceparent, role)
            .await?;
        Ok(Response::new(record.to_operation()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(after(&page_token("nightly")).unwrap(), "nightly");
        assert_eq!(after("").unwrap(), "");
        for bad in ["x", "!!", &page_token("x")[1..]] {
            let err = after(bad).unwrap_err();
            assert!(err.to_string().contains("page_token"), "{bad}: {err}");
        }
    }
}
