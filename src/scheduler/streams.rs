//! Streams of durable changes, for WatchService, its server-sent events and dashboards: one
//! operation followed to its end ([`Runner::watch_operation`]), or every change matching a
//! filter ([`Runner::watch_operations`], through `super::fanout`).
//!
//! Both read what the bus publishes, which is only what the store took (and, on a shared
//! store, what other nodes did, from the store's feed), and both coalesce: an operation is
//! sent at most once per [`MIN_INTERVAL`], with its latest state, so a slow reader skips
//! intermediate states and never slows the runner. Both yield [`Batch`]es (of one change, for
//! one operation), whose wire forms are made once however many streams send them.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::bus::{OperationChanged, Watch};
use super::fanout::{Batch, MIN_INTERVAL};
use super::Runner;
use crate::error::Error;
use crate::filter::Filter;
use crate::model::{OperationId, OperationRecord};

/// A stream of batches of changes; it ends with [`Error::ShuttingDown`] when the runner stops.
pub type Changes = Pin<Box<dyn Stream<Item = Result<Arc<Batch>, Error>> + Send>>;

type Stopping = Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>;

struct One {
    watch: Watch,
    first: Option<OperationRecord>,
    last_version: u64,
    done: bool,
    sent_at: Instant,
    stopping: Stopping,
}

struct Many {
    batches: tokio::sync::broadcast::Receiver<Arc<Batch>>,
    ended: bool,
    stopping: Stopping,
}

/// `record` as a batch of its own.
fn alone(record: OperationRecord) -> Arc<Batch> {
    Arc::new(Batch::new(vec![Arc::new(OperationChanged::new(
        Arc::new(record),
        None,
    ))]))
}

impl Runner {
    /// The operation's current state at once, then each change (coalesced, see
    /// [`MIN_INTERVAL`]), ending after the state with `done = true`: each a batch of one.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown operation, UNAVAILABLE when the store cannot be read.
    pub async fn watch_operation(&self, id: &OperationId) -> Result<Changes, Error> {
        // Watch first, then read: no change falls between the two.
        let watch = self.shared.bus.watch(id);
        let current = self.get(id).await?;
        let state = One {
            watch,
            last_version: current.version,
            done: current.is_done(),
            first: Some(current),
            sent_at: Instant::now(),
            stopping: Box::pin(self.stopping()),
        };
        Ok(Box::pin(futures::stream::unfold(state, next_of_one)))
    }

    /// Every change from now on of the operations that match `filter` (whose text is
    /// `text`), and the change that takes one out of it (a running one ending, under
    /// `state = RUNNING`): at most one batch per [`MIN_INTERVAL`], each operation in it once,
    /// with its latest state. Readers of the same filter text share their batches. A reader
    /// that stops reading for a few seconds skips the batches it missed (logged); re-list to
    /// catch up.
    pub fn watch_operations(&self, filter: Filter, text: &str) -> Changes {
        let batches = self.shared.fanout.join(&self.shared.bus, filter, text);
        let state = Many {
            batches,
            ended: false,
            stopping: Box::pin(self.stopping()),
        };
        Box::pin(futures::stream::unfold(state, next_of_many))
    }
}

async fn next_of_one(mut s: One) -> Option<(Result<Arc<Batch>, Error>, One)> {
    if let Some(first) = s.first.take() {
        return Some((Ok(alone(first)), s));
    }
    if s.done {
        return None;
    }
    // Coalesce: whatever changes during the interval is sent once, as its latest state.
    tokio::select! {
        () = tokio::time::sleep_until(s.sent_at + MIN_INTERVAL) => {}
        () = &mut s.stopping => return Some((Err(Error::ShuttingDown), s.ended())),
    }
    loop {
        let latest = s
            .watch
            .receiver
            .borrow_and_update()
            .clone()
            .filter(|r| r.version > s.last_version);
        if let Some(record) = latest {
            s.last_version = record.version;
            s.done = record.is_done();
            s.sent_at = Instant::now();
            return Some((Ok(alone(record)), s));
        }
        tokio::select! {
            changed = s.watch.receiver.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            () = &mut s.stopping => return Some((Err(Error::ShuttingDown), s.ended())),
        }
    }
}

impl One {
    /// This stream after its last item.
    fn ended(mut self) -> Self {
        self.done = true;
        self
    }
}

async fn next_of_many(mut s: Many) -> Option<(Result<Arc<Batch>, Error>, Many)> {
    if s.ended {
        return None;
    }
    loop {
        tokio::select! {
            batch = s.batches.recv() => match batch {
                Ok(batch) => return Some((Ok(batch), s)),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a WatchOperations reader fell behind; it skips the batches it missed");
                }
                Err(RecvError::Closed) => return None,
            },
            () = &mut s.stopping => {
                s.ended = true;
                return Some((Err(Error::ShuttingDown), s));
            }
        }
    }
}
