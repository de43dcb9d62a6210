//! The queue bounds over a shared store: every node counts the store's queued operations
//! every [`RunnerConfig::queue_recount`](super::RunnerConfig), so that `--max-queued` (and a
//! kind's bound) hold over all the nodes, what other nodes queued and ran included. Between
//! two counts a node adds what it queued and took itself; what other nodes admitted since the
//! last count is unseen, so the cluster may pass a bound by what the other nodes admit in one
//! interval. An exclusive store needs none of this: every change passes through its one node.

use tracing::{info, warn};

use super::{Runner, STORE_RETRY_MAX};
use crate::store::StoreError;

impl Runner {
    /// Counts the store's queued operations once and takes the count.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub(crate) async fn recount(&self) -> Result<(), StoreError> {
        let before = self.lock_slots().own_counts();
        let counted = self.shared.store.queued().await?;
        self.lock_slots().recount(&before, &counted);
        // Other nodes' work may have left the queue.
        self.shared.wakes.queue_room.notify_waiters();
        Ok(())
    }

    /// Recounts every `queue_recount` until shutdown (a store that refuses is asked again as
    /// often, with a warning the first time).
    pub(crate) async fn recount_loop(self) {
        let every = self.shared.config.queue_recount;
        let mut refused = false;
        loop {
            let pause = match self.recount().await {
                Ok(()) => {
                    if refused {
                        refused = false;
                        info!("the store can be counted again");
                    }
                    every
                }
                Err(e) => {
                    if !refused {
                        refused = true;
                        warn!(error = %e, "cannot count the queued operations; the queue bounds use the last count");
                    }
                    every.min(STORE_RETRY_MAX)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shared.life.root.cancelled() => return,
            }
        }
    }
}
