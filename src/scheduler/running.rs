//! The running set's members and its bookkeeping: [`Running`], an operation this node runs
//! (its last durable record, the worker's draft, its cancellation token and why it was
//! cancelled), and how a run leaves the set ([`Runner::release`], [`Runner::forget_run`]).
//! Both the driver of a run (`super::run`) and the transition point (`super::transition`)
//! use this module; it uses neither.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::model::{CancelReason, Fence, OperationId, OperationRecord};
use crate::task::Draft;

/// An operation this node runs.
pub(crate) struct Running {
    pub(crate) id: OperationId,
    pub(super) kind: String,
    /// The operation as last written (durable); its owner and attempt fence this node's
    /// writes.
    // std Mutex: held only to read or replace the record.
    pub(super) record: Mutex<OperationRecord>,
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
    pub(crate) fn record(&self) -> OperationRecord {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
            *current = record;
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
    pub(crate) fn release(&self, running: &std::sync::Arc<Running>) {
        let removed = self
            .shared
            .running
            .remove_if(&running.id, |_, held| std::sync::Arc::ptr_eq(held, running));
        if removed.is_some() {
            self.forget_run(running);
        }
    }

    /// Gives back what a run that left the running map held: its slot, or the room its end
    /// took while it was written.
    pub(crate) fn forget_run(&self, running: &Running) {
        if running.is_remote() {
            // It held no slot here (its worker's session had the room).
        } else if running.give_up_slot() {
            self.lock_slots().stopped(running.kind());
        } else {
            self.lock_slots().ended();
        }
        if super::batch::CONTROL_KINDS.contains(&running.kind()) {
            // Its room is free (or it was requeued to try again).
            self.shared
                .pending
                .control
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.shared.wakes.dispatch.notify_one();
    }
}
