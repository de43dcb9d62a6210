//! WatchOperations for many readers at a cost that does not grow with each change times each
//! reader: readers of the same filter share a **group**; one task reads every change once,
//! checks each group's filter once, keeps the latest state of each matching operation per
//! group, and every [`MIN_INTERVAL`] hands the group one [`Batch`] that all its readers share.
//! A batch's wire forms are made once, by the first reader that sends it, and every reader
//! hands on the same bytes: what a reader costs per batch is taking it from its group's channel
//! and writing it to its socket.
//!
//! The task runs while some group has readers, and only then subscribes to the bus (with no
//! reader, a change is not even copied). A reader that falls more than [`GROUP_BUFFER`]
//! batches behind (it stopped reading) skips the batches it missed, so it holds at most that
//! many, which it shares with its group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use super::bus::{Bus, OperationChanged};
use crate::filter::Filter;
use crate::model::OperationId;
use crate::store::{matched_before, record_matches};

/// The least time between two batches of one group (at most 20 a second).
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Batches a reader may fall behind before it skips what it missed (about 3 s of changes).
pub(crate) const GROUP_BUFFER: usize = 64;

/// The latest matching state of the operations that changed in one interval, for every reader
/// of one filter, oldest change first.
#[derive(Debug)]
pub struct Batch {
    changes: Vec<Arc<OperationChanged>>,
    /// How many changes the task could not read (it fell behind the bus) before this batch.
    skipped: u64,
    /// The batch's wire forms, made by the first reader that sends it.
    grpc: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

impl Batch {
    /// A batch of `changes` (already in order).
    pub(crate) fn new(changes: Vec<Arc<OperationChanged>>) -> Self {
        Self {
            changes,
            skipped: 0,
            grpc: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    /// The changes, oldest first.
    pub fn changes(&self) -> &[Arc<OperationChanged>] {
        &self.changes
    }

    /// How many changes were missed before this batch (the stream fell behind the bus).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The batch as gRPC frames, made by `make` the first time it is asked for.
    pub(crate) fn grpc_form(&self, make: impl FnOnce(&[Arc<OperationChanged>]) -> Bytes) -> Bytes {
        self.grpc.get_or_init(|| make(&self.changes)).clone()
    }

    /// The batch as server-sent events, made by `make` the first time it is asked for.
    pub(crate) fn sse_form(&self, make: impl FnOnce(&[Arc<OperationChanged>]) -> Bytes) -> Bytes {
        self.sse.get_or_init(|| make(&self.changes)).clone()
    }
}

/// One filter's readers.
struct Group {
    filter: Filter,
    sender: broadcast::Sender<Arc<Batch>>,
}

/// The groups by filter text, and whether the task runs.
#[derive(Default)]
struct Registry {
    groups: HashMap<String, Arc<Group>>,
    running: bool,
}

/// Every WatchOperations reader of a runner.
#[derive(Default)]
pub(crate) struct Fanout {
    // std Mutex: held to look a group up, add one, or see that none is left; never across an
    // await.
    registry: Mutex<Registry>,
    /// Woken when a group is added, so the task reads it from the registry.
    joined: Notify,
}

impl Fanout {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A reader of the changes matching `filter` (whose text is `text`) from now on; starts
    /// the task if none runs.
    pub(crate) fn join(
        self: &Arc<Self>,
        bus: &Bus,
        filter: Filter,
        text: &str,
    ) -> broadcast::Receiver<Arc<Batch>> {
        let key = text.trim().to_owned();
        let mut registry = self.registry();
        let receiver = match registry.groups.get(&key) {
            Some(group) => group.sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(GROUP_BUFFER);
                registry
                    .groups
                    .insert(key, Arc::new(Group { filter, sender }));
                receiver
            }
        };
        if !registry.running {
            registry.running = true;
            // Subscribed before the lock is let go: no change after this join is missed.
            let events = bus.subscribe();
            tokio::spawn(Arc::clone(self).run(events));
        }
        drop(registry);
        self.joined.notify_one();
        receiver
    }

    /// The task: reads every change, sorts it into its groups, flushes each group every
    /// [`MIN_INTERVAL`]; ends when no group has a reader left.
    async fn run(self: Arc<Self>, mut events: broadcast::Receiver<Arc<OperationChanged>>) {
        let mut groups: Vec<(Arc<Group>, Pending)> = Vec::new();
        let mut skipped = 0u64;
        loop {
            if !self.refresh(&mut groups) {
                return;
            }
            let next_flush = groups
                .iter()
                .filter(|(_, p)| !p.changes.is_empty())
                .map(|(_, p)| p.next_flush)
                .min();
            tokio::select! {
                event = events.recv() => match event {
                    Ok(change) => {
                        sort(&mut groups, &change);
                        // Everything already waiting, in one pass.
                        loop {
                            match events.try_recv() {
                                Ok(change) => sort(&mut groups, &change),
                                Err(broadcast::error::TryRecvError::Lagged(n)) => skipped += n,
                                Err(_) => break,
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "WatchOperations fell behind the changes; its readers skip the ones it missed");
                        skipped += n;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = sleep_until(next_flush) => {}
                () = self.joined.notified() => {}
            }
            let now = Instant::now();
            for (group, pending) in &mut groups {
                if pending.changes.is_empty() || now < pending.next_flush {
                    continue;
                }
                let mut changes: Vec<Arc<OperationChanged>> =
                    pending.changes.drain().map(|(_, c)| c).collect();
                changes.sort_by_key(|c| (c.record.update_time, c.version));
                let mut batch = Batch::new(changes);
                batch.skipped = std::mem::take(&mut skipped);
                // No reader left is not an error: the group goes at the next refresh.
                let _ = group.sender.send(Arc::new(batch));
                pending.next_flush = now + MIN_INTERVAL;
            }
        }
    }

    /// Brings `groups` in step with the registry: drops the groups whose readers all left,
    /// adds new ones. `false` when none is left (the task ends; a later join starts another).
    fn refresh(&self, groups: &mut Vec<(Arc<Group>, Pending)>) -> bool {
        let mut registry = self.registry();
        registry
            .groups
            .retain(|_, group| group.sender.receiver_count() > 0);
        if registry.groups.is_empty() {
            registry.running = false;
            return false;
        }
        groups.retain(|(group, _)| {
            registry
                .groups
                .values()
                .any(|known| Arc::ptr_eq(known, group))
        });
        for group in registry.groups.values() {
            if !groups.iter().any(|(known, _)| Arc::ptr_eq(known, group)) {
                groups.push((Arc::clone(group), Pending::default()));
            }
        }
        true
    }
}

/// A group's latest matching state of each operation changed since its last batch.
struct Pending {
    changes: HashMap<OperationId, Arc<OperationChanged>>,
    next_flush: Instant,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            changes: HashMap::new(),
            next_flush: Instant::now(),
        }
    }
}

/// Puts `change` into the groups whose filter it matches, or whose filter it leaves (a
/// running operation ending, under `state = RUNNING`: its readers see it go).
fn sort(groups: &mut [(Arc<Group>, Pending)], change: &Arc<OperationChanged>) {
    for (group, pending) in groups.iter_mut() {
        let left = || {
            change
                .before
                .is_some_and(|before| matched_before(&group.filter, &change.record, before))
        };
        if !(record_matches(&group.filter, &change.record) || left()) {
            continue;
        }
        let newer = pending
            .changes
            .get(&change.id)
            .is_none_or(|kept| kept.version < change.version);
        if newer {
            pending
                .changes
                .insert(change.id.clone(), Arc::clone(change));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OperationRecord, State};

    fn queued(kind: &str) -> OperationRecord {
        OperationRecord::new_queued(kind.into(), Default::default(), None)
    }

    /// Readers of one filter share each batch (the same `Arc`, so its wire forms are made
    /// once); a batch holds each matching operation once, at its latest state; another filter
    /// is its own group; the task and its bus subscription end with the last reader.
    #[tokio::test(start_paused = true)]
    async fn readers_of_one_filter_share_their_batches() {
        let bus = Bus::new(false);
        let fanout = Arc::new(Fanout::default());
        let sleeps = || Filter::parse(r#"kind = "sleep""#).expect("filter");
        let mut a = fanout.join(&bus, sleeps(), r#"kind = "sleep""#);
        let mut b = fanout.join(&bus, sleeps(), r#" kind = "sleep" "#);
        let mut other = fanout.join(&bus, Filter::parse("").expect("filter"), "");
        // Let the task start and read the registry.
        tokio::task::yield_now().await;
        let mut op = queued("sleep");
        bus.publish(&op, None);
        op.version = 2;
        op.state = State::Running;
        bus.publish(&op, Some(State::Queued));
        bus.publish(&queued("snapshot"), None);
        let first_a = a.recv().await.expect("a batch");
        let first_b = b.recv().await.expect("a batch");
        assert!(
            Arc::ptr_eq(&first_a, &first_b),
            "one batch for both readers"
        );
        let versions: Vec<u64> = first_a.changes().iter().map(|c| c.version).collect();
        assert!(
            versions == vec![2] || versions == vec![1],
            "one entry for the operation: {versions:?}"
        );
        // Whatever the first batch did not hold comes in the next, at the latest version.
        let latest = if versions == vec![2] {
            first_a
        } else {
            a.recv().await.expect("a second batch")
        };
        assert_eq!(latest.changes().last().map(|c| c.version), Some(2));
        let all = other.recv().await.expect("a batch");
        assert!(all.changes().iter().any(|c| c.record.kind == "snapshot"));
        assert!(!latest.changes().iter().any(|c| c.record.kind == "snapshot"));
        // The gRPC form is made once per batch.
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = |_: &[Arc<OperationChanged>]| {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Bytes::from_static(b"x")
        };
        latest.grpc_form(make);
        latest.grpc_form(make);
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop((a, b, other, latest, all));
        // A change wakes the task, which finds no reader left and ends.
        bus.publish(&queued("sleep"), None);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!fanout.registry().running, "the task ended");
        assert_eq!(bus.subscribers(), 0, "nothing subscribed to the bus");
    }

    /// A reader that stops reading holds at most GROUP_BUFFER batches and skips the ones it
    /// missed; its group's other readers are not slowed.
    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_skips_what_it_missed() {
        let bus = Bus::new(false);
        let fanout = Arc::new(Fanout::default());
        let mut stuck = fanout.join(&bus, Filter::parse("").expect("filter"), "");
        let mut reading = fanout.join(&bus, Filter::parse("").expect("filter"), "");
        tokio::task::yield_now().await;
        let rounds = GROUP_BUFFER + 10;
        for _ in 0..rounds {
            bus.publish(&queued("sleep"), None);
            let batch = reading.recv().await.expect("a batch");
            assert_eq!(batch.changes().len(), 1);
            tokio::time::advance(MIN_INTERVAL).await;
        }
        match stuck.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => {
                assert_eq!(n, u64::try_from(rounds - GROUP_BUFFER).expect("fits"));
            }
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
