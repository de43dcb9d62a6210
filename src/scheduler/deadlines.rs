//! The deadlines of queued work: one task sleeps until the earliest deadline of an unfinished
//! operation (or a submission with a deadline wakes it) and ends the queued ones past it
//! DEADLINE_EXCEEDED. A running operation's deadline is its worker's own (`run`), on the node
//! that runs it; no timer per operation anywhere.

use std::time::Duration;

use tracing::{info, warn};

use super::outcome::deadline_message;
use super::transition::TransitionError;
use super::{clock, Runner};
use crate::model::{Change, Fence, Outcome, State};
use crate::proto::google::rpc::{Code, Status};

/// Deadlines handled per look at the store.
const BATCH: usize = 256;

/// The longest the sweeper sleeps without looking at the store.
const SAFETY_POLL: Duration = Duration::from_secs(60);

impl Runner {
    pub(crate) async fn deadline_loop(self) {
        loop {
            let next = match self.expire_due().await {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "could not sweep deadlines; retrying in a second");
                    Some(self.now() + Duration::from_secs(1))
                }
            };
            let sleep = next
                .map_or(SAFETY_POLL, |n| clock::until(self.now(), n))
                .min(SAFETY_POLL);
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.shared.wakes.deadline.notified() => {}
                () = self.shared.life.root.cancelled() => return,
            }
        }
    }

    /// Ends the queued operations whose deadline has passed; returns the next deadline.
    async fn expire_due(&self) -> Result<Option<std::time::SystemTime>, crate::store::StoreError> {
        loop {
            let now = self.now();
            let deadlines = self.shared.store.deadlines(now, BATCH).await?;
            let full = deadlines.passed.len() == BATCH;
            for record in deadlines.passed {
                let change = Change::Finish {
                    state: State::Failed,
                    outcome: Outcome::Error(Status {
                        code: Code::DeadlineExceeded as i32,
                        message: deadline_message(record.create_time, record.deadline),
                        details: Vec::new(),
                    }),
                };
                match self
                    .transition(&record, change, Fence::Version(record.version))
                    .await
                {
                    Ok(written) => {
                        info!(op.name = %written.id, "deadline passed while queued");
                        self.ended(&written);
                    }
                    // Claimed or cancelled meanwhile: whoever changed it handles it.
                    Err(TransitionError::Stale(_) | TransitionError::Illegal(_)) => {}
                    Err(TransitionError::Store(e)) => return Err(e),
                }
            }
            if !full {
                return Ok(deadlines.next);
            }
        }
    }
}
