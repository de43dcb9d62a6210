//! Streams of durable changes, for WatchService, its server-sent events and dashboards: one
//! operation followed to its end ([`Runner::watch_operation`]), or every change matching a
//! filter ([`Runner::watch_operations`]).
//!
//! Both read the bus, which publishes only what the store took (and, on a shared store, what
//! other nodes did, from the store's feed), and both coalesce: an operation is sent at most
//! once per [`MIN_INTERVAL`], with its latest state, so a slow reader skips intermediate
//! states and never slows the runner.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::bus::Watch;
use super::Runner;
use crate::error::Error;
use crate::filter::Filter;
use crate::model::{OperationId, OperationRecord};
use crate::store::{matched_before, record_matches};

/// The least time between two messages about one operation (at most 20 a second).
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// A stream of operation states; it ends with [`Error::ShuttingDown`] when the runner stops.
pub type Changes = Pin<Box<dyn Stream<Item = Result<OperationRecord, Error>> + Send>>;

struct One {
    watch: Watch,
    first: Option<OperationRecord>,
    last_version: u64,
    done: bool,
    sent_at: Instant,
    stopping: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

struct Many {
    events: tokio::sync::broadcast::Receiver<super::bus::OperationChanged>,
    filter: Filter,
    /// The latest matching state of each operation changed since the last flush.
    pending: HashMap<OperationId, Arc<OperationRecord>>,
    ready: Vec<Arc<OperationRecord>>,
    /// Flushes are [`MIN_INTERVAL`] apart and send each operation once at most.
    next_flush: Instant,
    ended: bool,
    stopping: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl Runner {
    /// The operation's current state at once, then each change (coalesced, see
    /// [`MIN_INTERVAL`]), ending after the state with `done = true`.
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

    /// Every change from now on of the operations that match `filter` (each operation
    /// coalesced, see [`MIN_INTERVAL`]), and the change that takes one out of it (a running
    /// one ending, under `state = RUNNING`) when this node made that change. A reader more than a few thousand changes behind
    /// skips the changes it missed (logged); re-list to catch up.
    pub fn watch_operations(&self, filter: Filter) -> Changes {
        let state = Many {
            events: self.shared.bus.subscribe(),
            filter,
            pending: HashMap::new(),
            ready: Vec::new(),
            next_flush: Instant::now(),
            ended: false,
            stopping: Box::pin(self.stopping()),
        };
        Box::pin(futures::stream::unfold(state, next_of_many))
    }
}

async fn next_of_one(mut s: One) -> Option<(Result<OperationRecord, Error>, One)> {
    if let Some(first) = s.first.take() {
        return Some((Ok(first), s));
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
            return Some((Ok(record), s));
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

async fn next_of_many(mut s: Many) -> Option<(Result<OperationRecord, Error>, Many)> {
    loop {
        if let Some(record) = s.ready.pop() {
            return Some((Ok(OperationRecord::clone(&record)), s));
        }
        if s.ended {
            return None;
        }
        let now = Instant::now();
        if !s.pending.is_empty() && now >= s.next_flush {
            s.ready.extend(s.pending.drain().map(|(_, record)| record));
            // Oldest first out of `pop`.
            s.ready
                .sort_by_key(|r| std::cmp::Reverse((r.update_time, r.version)));
            s.next_flush = now + MIN_INTERVAL;
            continue;
        }
        let flush = s.next_flush;
        let waiting = !s.pending.is_empty();
        tokio::select! {
            event = s.events.recv() => match event {
                Ok(change) => {
                    // A change that takes an operation out of the filter is sent too (once),
                    // so that a reader showing it sees it leave.
                    let left = || {
                        change
                            .before
                            .is_some_and(|before| matched_before(&s.filter, &change.record, before))
                    };
                    if record_matches(&s.filter, &change.record) || left() {
                        let newer = s
                            .pending
                            .get(&change.id)
                            .is_none_or(|r| r.version < change.version);
                        if newer {
                            s.pending.insert(change.id.clone(), Arc::clone(&change.record));
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a WatchOperations reader fell behind; it skips the changes it missed");
                }
                Err(RecvError::Closed) => return None,
            },
            () = tokio::time::sleep_until(flush), if waiting => {}
            () = &mut s.stopping => {
                s.ended = true;
                return Some((Err(Error::ShuttingDown), s));
            }
        }
    }
}
