//! Running and waiting counts by kind: what the running limits and the queue bounds are
//! checked against. (The store holds the operations; these are this node's counts of them.)

use std::collections::HashMap;

use super::QUEUE_FULL_RETRY_DELAY;
use crate::error::Error;

/// The counts.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    running: usize,
    kinds: HashMap<String, KindSlots>,
}

#[derive(Debug, Default)]
struct KindSlots {
    /// Running on this node.
    running: usize,
    /// Queued (ready, delayed or backing off). Signed: a claim may count an operation out
    /// before its creation or requeue counted it in (both follow the store's answer); the sum
    /// is right once both are counted.
    waiting: i64,
    /// Submissions admitted but not yet stored.
    reserved: usize,
}

impl KindSlots {
    fn waiting(&self) -> usize {
        usize::try_from(self.waiting.max(0))
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

    /// Queued or running, over all kinds.
    pub(crate) fn unfinished(&self) -> usize {
        self.kinds.values().map(|k| k.waiting() + k.running).sum()
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

    /// How many more of each of `kinds` (with their limits) may start now, and how many over
    /// all of them, under `max_running`.
    pub(crate) fn room(
        &self,
        kinds: impl Iterator<Item = (String, usize)>,
        max_running: usize,
    ) -> (Vec<(String, usize)>, usize) {
        let total = max_running.saturating_sub(self.running);
        let per_kind = kinds
            .map(|(kind, limit)| {
                let running = self.kinds.get(&kind).map_or(0, |k| k.running);
                (kind, limit.saturating_sub(running).min(total))
            })
            .filter(|(_, room)| *room > 0)
            .collect();
        (per_kind, total)
    }

    /// An operation of `kind` started running here.
    pub(crate) fn started(&mut self, kind: &str) {
        self.running += 1;
        let k = self.kind(kind);
        k.running += 1;
        k.waiting -= 1;
    }

    /// An operation of `kind` stopped running here.
    pub(crate) fn stopped(&mut self, kind: &str) {
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
        let (room, total) = s.room([("a".to_owned(), 1), ("b".to_owned(), 5)].into_iter(), 3);
        assert_eq!(total, 2);
        assert_eq!(room, vec![("b".to_owned(), 2)]);
        s.stopped("a");
        assert_eq!((s.running(), s.unfinished()), (0, 0));
    }
}
