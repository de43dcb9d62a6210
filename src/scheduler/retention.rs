//! Retention: a sweeper removes finished operations past `--retention`, and the oldest beyond
//! `--max-retained`. It sleeps until the oldest kept one expires; an operation finishing while
//! nothing is scheduled, or the count passing the cap (by 1%), wakes it early. No polling.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::Runner;
use crate::model::time;

impl Runner {
    /// Counts a finished operation, waking the sweeper when it has nothing scheduled or the
    /// cap is passed.
    pub(crate) fn finished_one(&self) {
        let finished = self.shared.retained.finished.fetch_add(1, Ordering::AcqRel) + 1;
        let over_cap = self
            .shared
            .config
            .max_retained
            .is_some_and(|cap| finished > cap + (cap / 100).max(1));
        if over_cap
            || self
                .shared
                .retained
                .sweeper_idle
                .swap(false, Ordering::AcqRel)
        {
            self.shared.wakes.sweep.notify_one();
        }
    }

    /// Removes finished operations past the retention period, and the oldest beyond the cap.
    /// Sleeps until the oldest kept one expires; an operation finishing while nothing is
    /// scheduled, or the count passing the cap (by 1%), wakes it early. No polling.
    pub(crate) async fn sweep_loop(self) {
        let retention = self.shared.config.retention;
        let cap = self.shared.config.max_retained;
        loop {
            let now = self.now();
            let cutoff = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
            let next = match self.shared.store.sweep(cutoff, cap).await {
                Ok(swept) => {
                    if swept.deleted > 0 {
                        info!(
                            deleted = swept.deleted,
                            kept = ?swept.finished,
                            "removed finished operations past retention"
                        );
                    }
                    if let Some(kept) = swept.finished {
                        self.shared.retained.finished.store(kept, Ordering::Release);
                    }
                    // An expiry past what a clock holds is never.
                    swept
                        .oldest_finished
                        .and_then(|oldest| time::add(oldest, retention))
                        .map(|expiry| {
                            expiry
                                .duration_since(now)
                                .unwrap_or_default()
                                .max(Duration::from_secs(1))
                        })
                }
                Err(e) => {
                    warn!(error = %e, "retention sweep failed; retrying in a minute");
                    Some(Duration::from_secs(60))
                }
            };
            self.shared
                .retained
                .sweeper_idle
                .store(next.is_none(), Ordering::Release);
            tokio::select! {
                () = async {
                    match next {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = self.shared.wakes.sweep.notified() => {}
                () = self.shared.life.root.cancelled() => return,
            }
        }
    }
}
