//! Starting a submission at once. On an exclusive store, a submission that a claim would
//! start right away (its kind runs in this process, with room here for everything waiting,
//! and no limit per key, start rate or delay to judge) is stored RUNNING on this node, as the
//! state machine's Start makes it, instead of QUEUED, and launched once that write is
//! durable: one write and no claim, where a queued one takes two writes and a claim that
//! reads back what this process has just written.

use std::sync::atomic::Ordering;

use super::batch::CONTROL_KINDS;
use super::Runner;
use crate::model::{Change, OperationRecord, State};

impl Runner {
    /// The record to store for a submission (its place in the queue reserved): started on
    /// this node, its running slot taken, when it may start at once; else as it is.
    pub(super) fn start_at_once(&self, record: OperationRecord) -> OperationRecord {
        if !self.may_start_at_once(&record) {
            return record;
        }
        // Not while the dispatcher claims: its claim counts on the room it saw (taken under
        // this gate). Busy, the submission is queued and that claim, or the next, starts it.
        let Ok(_gate) = self.shared.lease.claiming.try_lock() else {
            return record;
        };
        let max_running = self.shared.config.max_running;
        let limit = self.own_limit(&record.kind).unwrap_or(max_running);
        if !self
            .shared
            .running
            .take_at_once(&record.kind, limit, max_running)
        {
            return record;
        }
        let start = Change::Start {
            node: self.shared.config.node.clone(),
        };
        match record.apply(start, self.now()) {
            Ok(started) => started,
            Err(_) => {
                // A new record is QUEUED: not reached.
                self.slot_not_used(&record.kind);
                record
            }
        }
    }

    /// A slot taken for a submission to start at once that did not start (its insert failed,
    /// or found the operation its request id or unique key names): back to the dispatcher,
    /// which may have queued work waiting for it.
    pub(super) fn slot_not_used(&self, kind: &str) {
        self.shared.running.not_launched(kind);
        self.shared.wakes.dispatch.notify_one();
    }

    /// Whether nothing but the room stands between `r` and its start: an exclusive store
    /// (every claim is this node's), a new operation due now of a kind that runs in this
    /// process and is safe to run again (a start that a shutdown cuts short leaves it
    /// RUNNING, and the restart rule runs it again, as it does a claimed one; a kind not safe
    /// to retry would be aborted instead of run), no gate of its own (a limit per key, a
    /// start rate), a node that holds its lease and takes work.
    fn may_start_at_once(&self, r: &OperationRecord) -> bool {
        let shared = &self.shared;
        shared.store.is_exclusive()
            && r.state == State::Queued
            && r.next_attempt_time.is_none()
            && !r.requested_cancellation
            && shared.kinds.is_in_process(&r.kind)
            && !CONTROL_KINDS.contains(&r.kind.as_str())
            && self.key_limit(&r.kind).is_none()
            && !shared
                .config
                .kind_rates
                .iter()
                .any(|(kind, _)| *kind == r.kind)
            && shared
                .kinds
                .task(&r.kind)
                .is_some_and(|task| task.options().retry_safe)
            && shared.life.accepting.load(Ordering::Acquire)
            && !shared.lease.lost.load(Ordering::Acquire)
    }
}
