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

/// How often the feed is read while the store signals its changes: a safety net only.
const SAFETY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

impl Runner {
    /// Follows the feed from position `after` (taken before recovery, so nothing between is
    /// missed) until shutdown: a page at a time while pages come full, then when the store
    /// signals a change (with a read every [`SAFETY_POLL`] all the same), or every
    /// `follow_interval` while it cannot signal. A store that refuses is asked again with
    /// backoff.
    pub(crate) async fn follow_loop(self, mut after: i64) {
        let mut retry = STORE_RETRY_MIN;
        let mut refused = false;
        let mut signal = self.shared.store.change_signal();
        // Whether this read followed a signal.
        let mut nudged = false;
        loop {
            let pause = match self.shared.store.changes(Some(after), PAGE).await {
                Ok(changes) => {
                    if refused {
                        refused = false;
                        info!("the store's change feed answers again");
                    }
                    retry = STORE_RETRY_MIN;
                    let full = changes.operations.len() >= PAGE;
                    let empty = changes.operations.is_empty();
                    for record in &changes.operations {
                        self.followed(record);
                    }
                    after = changes.next;
                    if full {
                        continue;
                    }
                    match &signal {
                        // Signalled news the feed does not show yet (a change that committed
                        // while an older transaction still ran) is looked for again soon.
                        // A store that closed its signal raises it no more: poll.
                        Some(signal)
                            if signal.has_changed().is_ok()
                                && *signal.borrow()
                                && !(empty && nudged) =>
                        {
                            SAFETY_POLL
                        }
                        _ => self.shared.config.follow_interval,
                    }
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
            let news = async {
                match &mut signal {
                    // A store that closed its signal polls.
                    Some(signal) if !refused => {
                        if signal.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    _ => std::future::pending().await,
                }
            };
            nudged = false;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = news => nudged = true,
                () = self.shared.life.root.cancelled() => return,
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
            if !self.shared.kinds.is_in_process(&record.kind) {
                // Work for this node's worker sessions, maybe.
                self.shared
                    .pending
                    .remote
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            self.shared.wakes.dispatch.notify_one();
            if record.deadline.is_some() {
                self.shared.wakes.deadline.notify_one();
            }
        }
    }
}
