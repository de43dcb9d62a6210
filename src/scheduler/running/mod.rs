//! The running set, with one owner: [`RunningSet`] holds the operations this node runs
//! ([`Running`]: the last durable record, the worker's draft, its cancellation token and why
//! it was cancelled) and this node's counts by kind ([`slots::Slots`]: running, ending,
//! waiting), and is the only code that changes the running counts (`slots`' methods for
//! them are visible here alone). Both the driver of a run (`super::run`) and the transition
//! point (`super::transition`) use this module; it uses neither.

pub(crate) mod slots;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::model::{CancelReason, Fence, OperationId, OperationRecord};
use crate::task::Draft;
use slots::Slots;

/// The operations this node runs and its counts by kind. Invariant: a claimed operation is
/// counted running from its claim ([`claimed`](Self::claimed)); once its run is in `runs`,
/// it stays counted running while it holds its slot (`Running::give_up_slot` has not
/// answered true), then `ending` until it leaves `runs` if its worker returned; every way
/// out of `runs` ([`release`](Self::release), or a later run of the same operation taking
/// its place in [`enter`](Self::enter)) gives its slot or its room back exactly once.
#[derive(Default)]
pub(crate) struct RunningSet {
    runs: DashMap<OperationId, Arc<Running>>,
    // std Mutex, not tokio's: nothing awaits while it is held, and every critical section
    // leaves the counts consistent before anything can panic.
    slots: Mutex<Slots>,
}

impl RunningSet {
    /// The counts, to read them or to count the queue (reservations, queued, recounts).
    pub(crate) fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The run of `id` on this node, if it runs here.
    pub(crate) fn get(&self, id: &OperationId) -> Option<Arc<Running>> {
        self.runs.get(id).map(|e| Arc::clone(e.value()))
    }

    /// Whether `id` runs on this node.
    pub(crate) fn contains(&self, id: &OperationId) -> bool {
        self.runs.contains_key(id)
    }

    /// How many runs the set holds (ending ones included).
    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }

    /// Calls `f` with every run.
    pub(crate) fn each(&self, mut f: impl FnMut(&Running)) {
        for entry in &self.runs {
            f(entry.value());
        }
    }

    /// A claim took an operation of `kind` to run here: counted running, before its run
    /// enters the set.
    pub(crate) fn claimed(&self, kind: &str) {
        self.slots().started(kind);
    }

    /// Takes a running slot for a submission of `kind` to start at once, when a claim now
    /// would start it (see [`Slots::take_at_once`]): counted running, as a claim counts it.
    /// Whether it took one; a taken slot not used goes back with
    /// [`not_launched`](Self::not_launched).
    pub(crate) fn take_at_once(&self, kind: &str, kind_limit: usize, max_running: usize) -> bool {
        self.slots().take_at_once(kind, kind_limit, max_running)
    }

    /// A claimed operation of `kind` that will not run here after all (its kind is not known
    /// here): its slot back.
    pub(crate) fn not_launched(&self, kind: &str) {
        self.slots().stopped(kind);
    }

    /// The run enters the set. An earlier run of the same operation (whose end, a retry due
    /// at once, was written but not yet followed here) leaves it, giving back what it held;
    /// that one is answered.
    pub(crate) fn enter(&self, run: &Arc<Running>) -> Option<Arc<Running>> {
        let earlier = self.runs.insert(run.id.clone(), Arc::clone(run))?;
        self.give_back(&earlier);
        Some(earlier)
    }

    /// The run's worker returned: its slot goes to the next operation while its end is
    /// written (it counts as ending). Whether it held the slot until now (true once).
    pub(crate) fn worker_returned(&self, run: &Running) -> bool {
        let gave_up = run.give_up_slot();
        if gave_up {
            self.slots().returned(run.kind());
        }
        gave_up
    }

    /// The run leaves the set (not a later run of the same operation that took its place),
    /// giving back its slot, or the room its end took while it was written. Whether it left
    /// now (true once, however often asked).
    pub(crate) fn release(&self, run: &Arc<Running>) -> bool {
        let removed = self
            .runs
            .remove_if(&run.id, |_, held| Arc::ptr_eq(held, run))
            .is_some();
        if removed {
            self.give_back(run);
        }
        removed
    }

    /// What a run that left `runs` held: its slot, or the room its end took.
    fn give_back(&self, run: &Running) {
        if run.is_remote() {
            // It held no slot here (its worker's session had the room).
        } else if run.give_up_slot() {
            self.slots().stopped(run.kind());
        } else {
            self.slots().ended();
        }
    }
}

/// An operation this node runs.
pub(crate) struct Running {
    pub(crate) id: OperationId,
    pub(super) kind: String,
    /// The operation as last written (durable); its owner and attempt fence this node's
    /// writes.
    // std Mutex: held only to read or replace the record (shared: a reader takes a
    // reference, not a copy).
    pub(super) record: Mutex<Arc<OperationRecord>>,
    /// What the worker reports, not yet written.
    pub(super) draft: Arc<Draft>,
    pub(super) token: CancellationToken,
    pub(super) reason: OnceLock<CancelReason>,
    /// Consecutive writes of this operation the store refused (for logging once, and the
    /// backoff).
    pub(super) write_failures: AtomicU32,
    /// Whether it still holds a running slot: its worker has not returned yet. (One whose
    /// worker returned waits for its end to be written without one: see
    /// [`Runner::worker_returned`].)
    pub(super) holds_slot: AtomicBool,
    /// The worker session that runs it, when its worker is in another process.
    pub(super) remote: Option<Arc<super::workers::Session>>,
}

impl Running {
    /// The operation as last written.
    pub(crate) fn record(&self) -> Arc<OperationRecord> {
        Arc::clone(
            &self
                .record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The version of the record as last written (without copying the record).
    pub(crate) fn version(&self) -> u64 {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .version
    }

    /// Replaces the record with a newer durable one (an older one, written concurrently and
    /// answered later, is ignored).
    pub(crate) fn set_record(&self, record: OperationRecord) {
        let mut current = self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if record.version > current.version {
            *current = Arc::new(record);
        }
    }

    /// Cancels the worker's token, remembering why (the first reason wins).
    pub(crate) fn cancel(&self, reason: CancelReason) {
        self.mark(reason);
        self.token.cancel();
    }

    /// Gives up its running slot: whether it held one until now (true once).
    pub(crate) fn give_up_slot(&self) -> bool {
        self.holds_slot.swap(false, Ordering::AcqRel)
    }

    /// Who owns it as last written: this node, or the worker session that runs it.
    pub(crate) fn owner(&self) -> Option<String> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .owner
            .clone()
    }

    /// The operation's kind.
    pub(crate) fn kind(&self) -> &str {
        &self.kind
    }

    /// Whether its worker is a worker session's (it holds no running slot of this node).
    pub(crate) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Remembers why the token is (about to be) cancelled.
    pub(crate) fn mark(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
    }

    /// The fence of its writes: its owner and attempt as last written.
    pub(super) fn fence(&self) -> Fence {
        let r = self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Fence::Owner {
            node: r.owner.clone().unwrap_or_default(),
            attempt: r.attempt,
        }
    }
}

impl Runner {
    /// Forgets a run of an operation this node ran (not a later run of the same operation
    /// that took its place), freeing its slot, or the room its written end took (once,
    /// however often asked).
    pub(crate) fn release(&self, running: &Arc<Running>) {
        if self.shared.running.release(running) {
            self.left(running);
        }
    }

    /// A run left the running set: a batch kind's room is free (or it was requeued to try
    /// again), and the dispatcher looks for work.
    pub(crate) fn left(&self, running: &Running) {
        if super::batch::CONTROL_KINDS.contains(&running.kind()) {
            self.shared.pending.control.store(true, Ordering::Release);
        }
        self.shared.wakes.dispatch.notify_one();
    }
}
