//! Where durable changes are published: an event for every change, for whoever follows them
//! all (the WatchOperations streams through `super::fanout`, tests), and per-operation
//! watchers for Wait and WatchOperation.
//!
//! Only the transition point (`super::transition`) publishes, and only after the store took
//! the change, so nothing here ever shows a state a crash could take back. On a store several
//! nodes share, the changes other nodes made come from the store's feed (`super::follow`);
//! the bus remembers which versions it published itself until the feed has shown them, so
//! that each change is published once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;

use dashmap::{DashMap, DashSet};
use tokio::sync::{broadcast, watch};

use crate::model::{OperationId, OperationRecord, State};

/// How many events a slow subscriber may fall behind before it misses some (it is told, by
/// `RecvError::Lagged`, and can re-read what it follows).
const EVENTS_BUFFER: usize = 4096;

/// An operation changed, durably. Published as an `Arc`: every subscriber shares the one
/// event, its record, and its wire forms, each made at most once however many streams send it.
///
/// The events of one operation come in the order of their versions but for a rare race (two
/// changes whose writes returned at the same moment): a subscriber that keeps the latest
/// state compares versions.
#[derive(Debug, Clone)]
pub struct OperationChanged {
    /// The operation.
    pub id: OperationId,
    /// Its version after the change.
    pub version: u64,
    /// Its state after the change.
    pub state: State,
    /// Whether it is done.
    pub done: bool,
    /// The operation after the change.
    pub record: Arc<OperationRecord>,
    /// Its state before the change, when this node made it (`None`: a creation, or a change
    /// another node made, read from the store's feed).
    pub before: Option<State>,
    /// The operation's wire forms, made by the first stream that needs one.
    pub(crate) wire: WireForms,
}

impl OperationChanged {
    /// The event of `record`'s latest change (made by this node when `before` is known).
    pub(crate) fn new(record: Arc<OperationRecord>, before: Option<State>) -> Self {
        Self {
            id: record.id.clone(),
            version: record.version,
            state: record.state,
            done: record.is_done(),
            record,
            before,
            wire: WireForms::default(),
        }
    }
}

/// The forms an operation's state takes on the wire, each made once: the encoded
/// `google.longrunning.Operation`, and its proto3 JSON.
#[derive(Debug, Clone, Default)]
pub(crate) struct WireForms {
    pub(crate) proto: OnceLock<Bytes>,
    pub(crate) json: OnceLock<Bytes>,
}

/// The events and the watchers.
pub(crate) struct Bus {
    // broadcast: every subscriber gets every event; a slow one lags rather than slows the
    // runner.
    events: broadcast::Sender<Arc<OperationChanged>>,
    // watch per operation: a Wait needs only the latest state of one operation, and an
    // operation nobody waits for costs nothing.
    watchers: DashMap<OperationId, watch::Sender<Option<OperationRecord>>>,
    /// On a shared store: the latest version of each operation this node published and the
    /// feed has not shown yet. (`None` on an exclusive store, which has no feed.)
    // std Mutex: held only to look up or change one entry.
    local: Option<Mutex<HashMap<OperationId, u64>>>,
    /// On an exclusive store, the operations not done yet: every change passes through this
    /// process, so the set is exact, and a Wait for one of them need not read the store
    /// first (its end comes through its watcher). An id enters before its operation is
    /// stored (so no end can be published before it enters) and leaves when the end is
    /// published. (`None` on a shared store, where other nodes end operations.)
    unfinished: Option<DashSet<OperationId>>,
}

impl Bus {
    /// A bus for a runner over an exclusive store (`followed: false`) or one whose changes
    /// by other nodes it follows.
    pub(crate) fn new(followed: bool) -> Self {
        Self {
            events: broadcast::channel(EVENTS_BUFFER).0,
            watchers: DashMap::new(),
            local: followed.then(|| Mutex::new(HashMap::new())),
            unfinished: (!followed).then(DashSet::new),
        }
    }

    /// Notes an operation about to be stored (or found unfinished in the store at start).
    pub(crate) fn expect(&self, id: &OperationId) {
        if let Some(unfinished) = &self.unfinished {
            unfinished.insert(id.clone());
        }
    }

    /// Forgets an operation [`Bus::expect`]ed that was not stored after all.
    pub(crate) fn forget(&self, id: &OperationId) {
        if let Some(unfinished) = &self.unfinished {
            unfinished.remove(id);
        }
    }

    /// Whether the operation is known to exist and not to be done (`false` when unknown).
    pub(crate) fn is_unfinished(&self, id: &OperationId) -> bool {
        self.unfinished.as_ref().is_some_and(|u| u.contains(id))
    }

    /// Publishes a change this node made, once the store took it.
    pub(crate) fn publish(&self, record: &OperationRecord, before: Option<State>) {
        if let Some(local) = &self.local {
            let mut local = local.lock().unwrap_or_else(PoisonError::into_inner);
            let version = local.entry(record.id.clone()).or_default();
            *version = (*version).max(record.version);
        }
        self.send(record, before);
    }

    /// Publishes a change read from the store's feed, unless this node published it (or a
    /// later one) itself. Whether it was published.
    pub(crate) fn publish_followed(&self, record: &OperationRecord) -> bool {
        if let Some(local) = &self.local {
            let mut local = local.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(mine) = local.get(&record.id).copied() {
                if mine >= record.version {
                    if mine == record.version {
                        // The feed has caught up with this node's own change.
                        local.remove(&record.id);
                    }
                    return false;
                }
                local.remove(&record.id);
            }
        }
        self.send(record, None);
        true
    }

    fn send(&self, record: &OperationRecord, before: Option<State>) {
        // No subscriber is not an error; with none, the record is not even copied.
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(OperationChanged::new(
                Arc::new(record.clone()),
                before,
            )));
        }
        // Forgotten before its watcher is looked for: a Wait watches first, then asks whether
        // the operation is unfinished. Asked before this, it has a watcher that the lookup
        // below finds; asked after, it reads the store, which holds the end already. (The
        // other order let a Wait make its watcher between the lookup and the forgetting, find
        // the operation unfinished, and sleep until its timeout.)
        if record.is_done() {
            self.forget(&record.id);
        }
        if let Some(watcher) = self.watchers.get(&record.id) {
            // Two changes of one operation may be published in the other order than they
            // were written (each after its own write returned): a watcher keeps the newer.
            watcher.send_if_modified(|latest| {
                let newer = latest.as_ref().is_none_or(|l| l.version < record.version);
                if newer {
                    *latest = Some(record.clone());
                }
                newer
            });
        }
    }

    /// How many subscribe to every event.
    #[cfg(test)]
    pub(crate) fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Every event from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<OperationChanged>> {
        self.events.subscribe()
    }

    /// The changes of one operation from now on (subscribe before reading its state, so that
    /// no change falls between the two).
    pub(crate) fn watch(self: &Arc<Self>, id: &OperationId) -> Watch {
        let receiver = self
            .watchers
            .entry(id.clone())
            .or_insert_with(|| watch::Sender::new(None))
            .subscribe();
        Watch {
            bus: Arc::clone(self),
            id: id.clone(),
            receiver,
        }
    }
}

/// A watcher of one operation; its sender goes away with its last watcher.
pub(crate) struct Watch {
    bus: Arc<Bus>,
    id: OperationId,
    pub(crate) receiver: watch::Receiver<Option<OperationRecord>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The receiver is still alive here: one left means it was the last.
        self.bus
            .watchers
            .remove_if(&self.id, |_, sender| sender.receiver_count() <= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watcher sees the changes of its operation only; the map forgets an operation when
    /// its last watcher goes.
    #[tokio::test]
    async fn watchers_see_their_operation() {
        let bus = Arc::new(Bus::new(false));
        let a = OperationRecord::new_queued("k".into(), Default::default(), None);
        let b = OperationRecord::new_queued("k".into(), Default::default(), None);
        let mut events = bus.subscribe();
        let mut wa = bus.watch(&a.id);
        let second = bus.watch(&a.id);
        bus.publish(&b, None);
        assert!(!wa.receiver.has_changed().unwrap());
        bus.publish(&a, None);
        assert!(wa.receiver.has_changed().unwrap());
        assert_eq!(
            wa.receiver
                .borrow_and_update()
                .as_ref()
                .map(|r| r.id.clone()),
            Some(a.id.clone())
        );
        assert_eq!(events.recv().await.unwrap().id, b.id);
        assert_eq!(events.recv().await.unwrap().id, a.id);
        drop(second);
        assert!(bus.watchers.contains_key(&a.id));
        drop(wa);
        assert!(!bus.watchers.contains_key(&a.id));
    }

    /// A change published after a newer one of the same operation (their writes returned in
    /// one order, their publications came in the other) does not take a watcher back.
    #[tokio::test]
    async fn a_watcher_never_goes_back_to_an_older_version() {
        let bus = Arc::new(Bus::new(false));
        let mut a = OperationRecord::new_queued("k".into(), Default::default(), None);
        let mut watch = bus.watch(&a.id);
        a.version = 3;
        a.state = State::Cancelled;
        bus.publish(&a, None);
        let mut older = a.clone();
        older.version = 2;
        older.state = State::Running;
        bus.publish(&older, None);
        let seen = watch.receiver.borrow_and_update().clone().unwrap();
        assert_eq!((seen.version, seen.state), (3, State::Cancelled));
    }

    /// On an exclusive store the bus knows which operations are unfinished: from before they
    /// are stored until their end is published; a shared store's bus knows none.
    #[test]
    fn the_unfinished_are_known_until_their_end_is_published() {
        let bus = Bus::new(false);
        let mut a = OperationRecord::new_queued("k".into(), Default::default(), None);
        assert!(!bus.is_unfinished(&a.id));
        bus.expect(&a.id);
        assert!(bus.is_unfinished(&a.id));
        bus.publish(&a, None);
        assert!(bus.is_unfinished(&a.id), "queued is unfinished");
        a.version = 2;
        a.fail(State::Cancelled, crate::Code::Cancelled, "cancelled");
        bus.publish(&a, None);
        assert!(!bus.is_unfinished(&a.id), "its end was published");
        let shared = Bus::new(true);
        shared.expect(&a.id);
        assert!(!shared.is_unfinished(&a.id));
    }

    /// Following a feed, the bus publishes each change once: one this node published is not
    /// published again when the feed shows it (nor an older one the feed read before it), and
    /// one made elsewhere is.
    #[tokio::test]
    async fn a_followed_change_is_published_once() {
        let bus = Arc::new(Bus::new(true));
        let mut events = bus.subscribe();
        let mut a = OperationRecord::new_queued("k".into(), Default::default(), None);
        bus.publish(&a, None);
        assert_eq!(events.recv().await.unwrap().version, 1);
        assert!(!bus.publish_followed(&a), "this node's own change");
        a.version = 2;
        assert!(bus.publish_followed(&a), "another node's change");
        assert_eq!(events.recv().await.unwrap().version, 2);
        a.version = 3;
        bus.publish(&a, None);
        assert_eq!(events.recv().await.unwrap().version, 3);
        a.version = 2;
        assert!(!bus.publish_followed(&a), "older than what was published");
        a.version = 3;
        assert!(
            !bus.publish_followed(&a),
            "this node's own change, once the feed caught up"
        );
        assert!(
            bus.local.as_ref().unwrap().lock().unwrap().is_empty(),
            "nothing kept"
        );
        assert!(events.try_recv().is_err(), "nothing published twice");
    }
}
