//! What operators and the dashboard ask beyond the standard queries: the newest operations
//! first, counts, and running a finished operation again.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tracing::info;

use super::queries::Page;
use super::{Runner, Submission};
use crate::error::Error;
use crate::filter::Filter;
use crate::model::{OperationId, OperationRecord};
use crate::store::Summary;

/// How long a summary is served again to whoever asks the same.
pub const SUMMARY_MAX_AGE: Duration = Duration::from_secs(2);

/// The last summary read, and what it was asked for.
pub(super) struct KeptSummary {
    since: SystemTime,
    bucket: Duration,
    at: Instant,
    summary: Summary,
}

impl Runner {
    /// Lists up to `limit` operations older than `before` (a `seq`; `i64::MAX` for the
    /// newest) that match `filter`, newest first. `next_after` is then the `seq` to continue
    /// below.
    ///
    /// # Errors
    /// UNAVAILABLE when the store fails.
    pub async fn list_newest(
        &self,
        filter: &Filter,
        before: i64,
        limit: usize,
    ) -> Result<Page, Error> {
        let operations = self
            .shared
            .store
            .list_newest(before, filter, limit.saturating_add(1))
            .await?;
        Ok(Page::of(self.explain_all(operations), limit))
    }

    /// How many operations there are by kind and state, and how many finished in each
    /// `bucket` since `since`. Counting reads every operation's row (133 ms at 100,000 on
    /// SQLite, `cargo bench --bench dashboard`), so an answer is kept for
    /// [`SUMMARY_MAX_AGE`] and shared by every caller asking the same (each open dashboard
    /// asks about once a second).
    ///
    /// # Errors
    /// UNAVAILABLE when the store fails.
    pub async fn summarize(&self, since: SystemTime, bucket: Duration) -> Result<Summary, Error> {
        let fresh = |kept: &KeptSummary| {
            kept.since == since && kept.bucket == bucket && kept.at.elapsed() < SUMMARY_MAX_AGE
        };
        if let Some(kept) = self.kept_summary().as_ref().filter(|k| fresh(k)) {
            return Ok(kept.summary.clone());
        }
        let summary = self.shared.store.summarize(since, bucket).await?;
        *self.kept_summary() = Some(KeptSummary {
            since,
            bucket,
            at: Instant::now(),
            summary: summary.clone(),
        });
        Ok(summary)
    }

    fn kept_summary(&self) -> std::sync::MutexGuard<'_, Option<KeptSummary>> {
        self.shared
            .summary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Submits a new operation with the kind, input and timeout of the finished operation
    /// `id`, which is left as it is.
    ///
    /// # Errors
    /// NOT_FOUND when there is no such operation; FAILED_PRECONDITION when it is not done or
    /// its kind is no longer registered; what [`Runner::submit`] answers otherwise (so
    /// PERMISSION_DENIED when `role`, the caller's, may not start the kind).
    pub async fn rerun(
        &self,
        id: &OperationId,
        request_id: String,
        traceparent: Option<String>,
        role: Option<crate::auth::Role>,
    ) -> Result<OperationRecord, Error> {
        let old = self.get(id).await?;
        if !old.is_done() {
            return Err(Error::FailedPrecondition {
                message: format!("{id} is not done; run again once it is done"),
                reason: "OPERATION_NOT_DONE",
            });
        }
        if self
            .shared
            .kinds
            .find(&*self.shared.store, &old.kind)
            .await
            .is_none()
        {
            return Err(Error::FailedPrecondition {
                message: format!(
                    "{id} is of kind {:?}, which this server does not know (known kinds: {})",
                    old.kind,
                    self.shared.kinds.names()
                ),
                reason: "UNKNOWN_KIND",
            });
        }
        // The same timeout: the time its deadline left it at submission.
        let timeout = old
            .deadline
            .and_then(|deadline| deadline.duration_since(old.create_time).ok());
        let new = self
            .submit(Submission {
                kind: old.kind.clone(),
                input: Some(old.input.clone()),
                request_id,
                timeout,
                not_before: None,
                traceparent,
                role,
                priority: old.priority,
                unique_key: old.unique_key.clone().unwrap_or_default(),
                retry_policy: old.retry_policy,
                concurrency_key: old.concurrency_key.clone().unwrap_or_default(),
                schedule: String::new(),
                fire_time: None,
            })
            .await?;
        info!(op.name = %new.id, op.kind = %new.kind, from = %id, "run again");
        Ok(new)
    }
}
