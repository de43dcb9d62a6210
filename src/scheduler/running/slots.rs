//! Running and waiting counts by kind: what the running limits and the queue bounds are
//! checked against. (The store holds the operations; these are this node's counts of them.)

use std::collections::HashMap;

use crate::error::Error;
use crate::scheduler::QUEUE_FULL_RETRY_DELAY;

/// The counts.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    running: usize,
    /// Operations whose worker returned and whose end is not written yet (they hold no slot:
    /// up to `max_running` of them take no room).
    ending: usize,
    kinds: HashMap<String, KindSlots>,
}

#[derive(Debug, Default)]
struct KindSlots {
    /// Running on this node.
    running: usize,
    /// Queued (ready, delayed or backing off), as this node counted its own changes: since
    /// the last [`Slots::recount`] on a shared store, or ever on an exclusive one. Signed: a
    /// claim may count an operation out before its creation or requeue counted it in (both
    /// follow the store's answer), and a node claims work other nodes queued; the sum is
    /// right once both are counted.
    waiting: i64,
    /// Queued, as the store counted at the last [`Slots::recount`] (a shared store's, where
    /// other nodes queue and take work too; always 0 on an exclusive store).
    counted: i64,
    /// Submissions admitted but not yet stored.
    reserved: usize,
}

impl KindSlots {
    /// Whether some are queued in the store, as counted (reservations not among them: a
    /// reserved submission is counted queued, and the dispatcher woken, once it is stored).
    fn queued(&self) -> bool {
        self.counted.saturating_add(self.waiting) > 0
    }

    fn waiting(&self) -> usize {
        usize::try_from(self.counted.saturating_add(self.waiting).max(0))
            .unwrap_or(usize::MAX)
            .saturating_add(self.reserved)
    }
}

impl Slots {
    fn kind(&mut self, kind: &str) -> &mut KindSlots {
        self.kinds.entry(kind.to_owned()).or_default()
    }

    /// Operations waiting or admitted, over all kinds.
    fn waiting(&self) -> usize {
        self.kinds.values().map(KindSlots::waiting).sum()
    }

    /// Queued, running, or ending (the worker returned, the end is being written), over all
    /// kinds.
    pub(crate) fn unfinished(&self) -> usize {
        self.kinds
            .values()
            .map(|k| k.waiting() + k.running)
            .sum::<usize>()
            + self.ending
    }

    /// Each kind with its operations waiting and running (for the metrics' gauges).
    pub(crate) fn by_kind(&self) -> Vec<(String, usize, usize)> {
        self.kinds
            .iter()
            .map(|(kind, k)| (kind.clone(), k.waiting(), k.running))
            .collect()
    }

    /// This node's own counts of queued operations by kind, to pass to
    /// [`Slots::recount`] once the store has been counted.
    pub(crate) fn own_counts(&self) -> HashMap<String, i64> {
        self.kinds
            .iter()
            .map(|(kind, k)| (kind.clone(), k.waiting))
            .collect()
    }

    /// Takes the store's count of queued operations by kind (read after `before`, this
    /// node's counts then): from now on a kind's queue is that count plus what this node
    /// changed since `before`.
    pub(crate) fn recount(
        &mut self,
        before: &HashMap<String, i64>,
        counted: &HashMap<String, usize>,
    ) {
        for (kind, k) in &mut self.kinds {
            k.waiting -= before.get(kind).copied().unwrap_or(0);
            k.counted = 0;
        }
        for (kind, n) in counted {
            self.kind(kind).counted = i64::try_from(*n).unwrap_or(i64::MAX);
        }
    }

    /// Whether some operation of any kind is queued, as counted (see [`Slots::room`]'s
    /// `counted_only`).
    pub(crate) fn any_queued(&self) -> bool {
        self.kinds.values().any(KindSlots::queued)
    }

    /// Running, over all kinds.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Admits one more waiting operation of `kind` (held until [`Slots::unreserve`]), or
    /// refuses with RESOURCE_EXHAUSTED naming the bound reached.
    pub(crate) fn reserve(
        &mut self,
        kind: &str,
        kind_bound: Option<usize>,
        global_bound: usize,
    ) -> Result<(), Error> {
        if self.waiting() >= global_bound {
            return Err(Error::ResourceExhausted {
                message: format!(
                    "the queue is full: {global_bound} operations are waiting (oprun serve \
                     --max-queued); retry later"
                ),
                retry_after: QUEUE_FULL_RETRY_DELAY,
            });
        }
        let k = self.kind(kind);
        if let Some(bound) = kind_bound {
            if k.waiting() >= bound {
                return Err(Error::ResourceExhausted {
                    message: format!(
                        "the queue of kind {kind:?} is full: {bound} operations are waiting; \
                         retry later"
                    ),
                    retry_after: QUEUE_FULL_RETRY_DELAY,
                });
            }
        }
        k.reserved += 1;
        Ok(())
    }

    /// A reservation ends (the submission was stored, refused, or repeated a request).
    pub(crate) fn unreserve(&mut self, kind: &str) {
        let k = self.kind(kind);
        k.reserved = k.reserved.saturating_sub(1);
    }

    /// An operation of `kind` was queued (created, found at start, retried or rescued).
    pub(crate) fn queued(&mut self, kind: &str) {
        self.kind(kind).waiting += 1;
    }

    /// A queued operation ended without running (cancelled, expired).
    pub(crate) fn unqueued(&mut self, kind: &str) {
        self.kind(kind).waiting -= 1;
    }

    /// How many more may start now under `max_running`. Ends waiting to be written beyond
    /// `max_running` take room, so that a store slow to take them slows new work instead of
    /// piling ends up.
    fn free(&self, max_running: usize) -> usize {
        let busy = self.running + self.ending.saturating_sub(max_running);
        max_running.saturating_sub(busy)
    }

    /// How many more of each of `kinds` (with their limits) may start now, and how many over
    /// all of them, under `max_running`. With `counted_only`, a kind this node counts no
    /// operation of as queued is left out: on an exclusive store, where every change passes
    /// through this node, nothing of it is queued (so a claim does not look for it).
    pub(crate) fn room(
        &self,
        kinds: impl Iterator<Item = (String, usize)>,
        max_running: usize,
        counted_only: bool,
    ) -> (Vec<(String, usize)>, usize) {
        let total = self.free(max_running);
        let per_kind = kinds
            .filter_map(|(kind, limit)| {
                let counts = self.kinds.get(&kind);
                if counted_only && counts.is_none_or(|k| !k.queued()) {
                    return None;
                }
                let running = counts.map_or(0, |k| k.running);
                let room = limit.saturating_sub(running).min(total);
                (room > 0).then_some((kind, room))
            })
            .collect();
        (per_kind, total)
    }

    /// Takes a running slot for a submission of `kind` (reserved, not yet stored) to start at
    /// once, if a claim now would start it: the kind has room (under `kind_limit`) for all
    /// of its waiting work, and the node (under `max_running`) for all work waiting of every
    /// kind, so starting it before the others takes no one's place. Whether it took one.
    pub(super) fn take_at_once(
        &mut self,
        kind: &str,
        kind_limit: usize,
        max_running: usize,
    ) -> bool {
        let total = self.free(max_running);
        let all_waiting = self.waiting().max(1);
        let (running, waiting) = self
            .kinds
            .get(kind)
            .map_or((0, 1), |k| (k.running, k.waiting().max(1)));
        let room = kind_limit.saturating_sub(running).min(total);
        if room < waiting || total < all_waiting {
            return false;
        }
        self.running += 1;
        self.kind(kind).running += 1;
        true
    }

    /// An operation of `kind` started running here.
    pub(super) fn started(&mut self, kind: &str) {
        self.running += 1;
        let k = self.kind(kind);
        k.running += 1;
        k.waiting -= 1;
    }

    /// An operation of `kind` left the queue to run elsewhere (a worker session's).
    pub(crate) fn left_queue(&mut self, kind: &str) {
        self.kind(kind).waiting -= 1;
    }

    /// The worker of an operation of `kind` returned; its end is being written.
    pub(super) fn returned(&mut self, kind: &str) {
        self.stopped(kind);
        self.ending += 1;
    }

    /// The end of an operation whose worker had returned was written (or given up).
    pub(super) fn ended(&mut self) {
        self.ending = self.ending.saturating_sub(1);
    }

    /// An operation of `kind` stopped running here.
    pub(super) fn stopped(&mut self, kind: &str) {
        self.running = self.running.saturating_sub(1);
        let k = self.kind(kind);
        k.running = k.running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The global and per-kind bounds count reservations; room respects both limits.
    #[test]
    fn bounds_and_room() {
        let mut s = Slots::default();
        s.reserve("a", Some(1), 10).unwrap();
        assert!(s.reserve("a", Some(1), 10).is_err(), "kind bound");
        s.queued("a");
        s.unreserve("a");
        assert!(
            s.reserve("a", Some(1), 10).is_err(),
            "kind bound, once queued"
        );
        s.reserve("b", None, 2).unwrap();
        assert!(s.reserve("c", None, 2).is_err(), "global bound");
        s.unreserve("b");
        s.started("a");
        let (room, total) = s.room(
            [("a".to_owned(), 1), ("b".to_owned(), 5)].into_iter(),
            3,
            false,
        );
        assert_eq!(total, 2);
        assert_eq!(room, vec![("b".to_owned(), 2)]);
        s.stopped("a");
        assert_eq!((s.running(), s.unfinished()), (0, 0));
    }

    /// A recount takes the store's count (what other nodes queued and took included) and
    /// keeps what this node changed while the store was read.
    #[test]
    fn a_recount_takes_the_stores_count_and_keeps_later_changes() {
        let mut s = Slots::default();
        s.queued("a");
        s.queued("a");
        let before = s.own_counts();
        // Queued here while the store was read (which saw the first two and three of
        // other nodes).
        s.queued("a");
        s.recount(&before, &HashMap::from([("a".to_owned(), 5)]));
        assert_eq!(s.waiting(), 6);
        // Work another node queued, started here.
        s.started("a");
        assert_eq!(s.waiting(), 5);
        // Everything ran or ended: the store has nothing queued.
        let before = s.own_counts();
        s.recount(&before, &HashMap::new());
        assert_eq!(s.waiting(), 0);
        s.reserve("a", None, 1).expect("room again");
    }

    /// A worker that returned frees its slot at once; ends waiting to be written take room
    /// only beyond `max_running` of them.
    #[test]
    fn returned_workers_free_their_slot_and_waiting_ends_are_bounded() {
        let mut s = Slots::default();
        let kinds = || [("a".to_owned(), 10)].into_iter();
        for _ in 0..4 {
            s.queued("a");
            s.started("a");
        }
        assert_eq!(s.room(kinds(), 4, false).1, 0);
        s.returned("a");
        s.returned("a");
        assert_eq!(
            s.room(kinds(), 4, false).1,
            2,
            "two slots freed while their ends are written"
        );
        for _ in 0..2 {
            s.returned("a");
        }
        // Four ends wait (max_running of them: no room taken); two more would take two.
        for _ in 0..2 {
            s.queued("a");
            s.started("a");
            s.returned("a");
        }
        assert_eq!(s.room(kinds(), 4, false).1, 2);
        s.ended();
        s.ended();
        assert_eq!(s.room(kinds(), 4, false).1, 4);
    }

    /// Counted only: a kind with nothing queued has no room asked for, one with work queued
    /// has; a reservation (a submission not yet stored) is not queued work yet.
    #[test]
    fn counted_only_leaves_out_kinds_with_nothing_queued() {
        let mut s = Slots::default();
        let kinds = || [("a".to_owned(), 10), ("b".to_owned(), 10)].into_iter();
        assert_eq!(s.room(kinds(), 4, true), (Vec::new(), 4));
        assert_eq!(s.room(kinds(), 4, false).0.len(), 2);
        s.reserve("a", None, 10).unwrap();
        assert_eq!(s.room(kinds(), 4, true).0, Vec::new());
        s.queued("a");
        s.unreserve("a");
        assert_eq!(s.room(kinds(), 4, true).0, vec![("a".to_owned(), 4)]);
        s.started("a");
        assert_eq!(s.room(kinds(), 4, true).0, Vec::new());
        // Claimed before its creation was counted, then counted: nothing queued.
        s.started("b");
        assert_eq!(s.room(kinds(), 4, true).0, Vec::new());
        s.queued("b");
        assert_eq!(s.room(kinds(), 4, true).0, Vec::new());
        s.queued("b");
        assert_eq!(s.room(kinds(), 4, true).0, vec![("b".to_owned(), 2)]);
    }

    /// A submission starts at once only when a claim would start it and everything else
    /// waiting: with room for all of its kind's waiting work and the node's.
    #[test]
    fn a_submission_starts_at_once_only_with_room_for_all_waiting() {
        let mut s = Slots::default();
        s.reserve("a", None, 10).unwrap();
        assert!(s.take_at_once("a", 2, 4), "nothing else waits");
        assert_eq!(
            (
                s.running(),
                s.room([("a".to_owned(), 2)].into_iter(), 4, false).1
            ),
            (1, 3)
        );
        s.unreserve("a");
        // Another of the kind queued: a claim would start both (room 1 for 2 waiting? no).
        s.queued("a");
        s.reserve("a", None, 10).unwrap();
        assert!(!s.take_at_once("a", 2, 4), "its kind's room is 1, two wait");
        assert!(s.take_at_once("a", 3, 4), "room for both");
        s.unreserve("a");
        // Work of another kind waits beyond the node's room.
        let mut s = Slots::default();
        for _ in 0..3 {
            s.queued("b");
        }
        s.reserve("a", None, 10).unwrap();
        assert!(!s.take_at_once("a", 10, 3), "four wait for three slots");
        assert!(s.take_at_once("a", 10, 4));
        assert_eq!(s.running(), 1);
    }
}
