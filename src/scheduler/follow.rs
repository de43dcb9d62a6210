//! Following the store's change feed, on a store several nodes share: what other nodes did
//! reaches this node as if it had happened here. A change is published on the bus (a Wait
//! here for an operation another node ran returns when it ends); an operation this node runs
//! learns of a cancel request (its worker is cancelled) or that it is no longer this node's
//! (its worker is stopped); work queued elsewhere wakes the dispatcher, and a deadline the
//! deadline sweeper.
//!
//! An exclusive store has no feed and needs none: every change passes through this process.

use tracing::{info, warn};

use super::transition::Origin;
use super::{Runner, STORE_RETRY_MAX, STORE_RETRY_MIN};
use crate::model::State;

/// Changes read from the feed per look.
const PAGE: usize = 1024;

impl Runner {
    /// Follows the feed from position `after` (taken before recovery, so nothing between is
    /// missed) until shutdown: a page at a time while pages come full, then every
    /// `follow_interval`. A store that refuses is asked again with backoff.
    pub(crate) async fn follow_loop(self, mut after: i64) {
        let mut retry = STORE_RETRY_MIN;
        let mut refused = false;
        loop {
            let pause = match self.shared.store.changes(Some(after), PAGE).await {
                Ok(changes) => {
                    if refused {
                        refused = false;
                        info!("the store's change feed answers again");
                    }
                    retry = STORE_RETRY_MIN;
                    let full = changes.operations.len() == PAGE;
                    for record in &changes.operations {
                        self.followed(record);
                    }
                    after = changes.next;
                    if full {
                        continue;
                    }
                    self.shared.config.follow_interval
                }
                Err(e) => {
                    if !refused {
                        refused = true;
                        warn!(error = %e, "the store's change feed did not answer; retrying with backoff");
                    }
                    let pause = retry;
                    retry = retry.saturating_mul(2).min(STORE_RETRY_MAX);
                    pause
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shared.root.cancelled() => return,
            }
        }
    }

    /// Takes in one change read from the feed.
    fn followed(&self, record: &crate::model::OperationRecord) {
        if !self.shared.bus.publish_followed(record) {
            // This node made it, and has followed it up already.
            return;
        }
        self.follow_locally(record, Origin::Elsewhere);
        if record.state == State::Queued {
            self.shared.dispatch_wake.notify_one();
            if record.deadline.is_some() {
                self.shared.deadline_wake.notify_one();
            }
        }
    }
}
