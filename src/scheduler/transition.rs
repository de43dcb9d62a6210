//! The one place an operation's state changes.
//!
//! [`Runner::transition`] checks that the change is legal from the operation's state (done
//! never reverts, a result never changes: [`OperationRecord::apply`]), writes it with a fence
//! (the version it was read at, or the owner and attempt this node runs), and only once the
//! store took it publishes it on the bus. A creation ([`Runner::create`]) and a claim
//! ([`Runner::claim`], the store's own transition of many queued operations at once) are
//! published the same way. Nothing else
//! changes an operation: a write the store refuses is never shown.

use tracing::{warn, Instrument};

use super::Runner;
use crate::model::{CancelReason, Change, Fence, IllegalTransition, OperationRecord, State};
use crate::store::{Claim, Claimed, Inserted, StoreError, Written};

/// Where a change of an operation was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// By this node, through [`Runner::transition`].
    Here,
    /// By another node sharing the store (read from its feed).
    Elsewhere,
}

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransitionError {
    /// The change is not allowed from the operation's state (as read).
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The fence did not hold: the operation changed since it was read; this is what is
    /// stored now (`None`: it is gone).
    #[error("the operation changed meanwhile")]
    Stale(Option<Box<OperationRecord>>),
    /// The store did not take the write (it may later).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Runner {
    /// Changes `current` by `change`, written under `fence`, then published. Returns the
    /// record as stored.
    ///
    /// # Errors
    /// [`TransitionError::Illegal`] when the change does not apply (nothing is written);
    /// [`TransitionError::Stale`] when the fence did not hold; [`TransitionError::Store`] when
    /// the store did not take it. In every error case nothing is published.
    pub(crate) async fn transition(
        &self,
        current: &OperationRecord,
        change: Change,
        fence: Fence,
    ) -> Result<OperationRecord, TransitionError> {
        self.transition_at(current, change, fence, self.now()).await
    }

    /// [`Runner::transition`], the change made `at` (a worker's end: when it returned).
    ///
    /// # Errors
    /// As [`Runner::transition`].
    pub(crate) async fn transition_at(
        &self,
        current: &OperationRecord,
        change: Change,
        fence: Fence,
        at: std::time::SystemTime,
    ) -> Result<OperationRecord, TransitionError> {
        let next = current.apply(change, at)?;
        let before = current.state;
        // Written and published on a task of its own: a caller that stops waiting (a client
        // that went away, a branch of a select that lost) cannot leave a write the store took
        // unpublished, uncounted and unknown to this node.
        let runner = self.clone();
        self.shared
            .life
            .tracker
            .spawn(
                async move { runner.write_and_publish(before, next, fence).await }
                    .in_current_span(),
            )
            .await
            .unwrap_or_else(|e| Err(TransitionError::Store(joined(&e))))
    }

    /// [`Runner::transition_at`] for a caller that nothing cancels midway (a run's driver, a
    /// task of its own that always runs to its end): written and published in place, without
    /// a task of its own.
    ///
    /// # Errors
    /// As [`Runner::transition`].
    pub(crate) async fn transition_in_place(
        &self,
        current: &OperationRecord,
        change: Change,
        fence: Fence,
        at: std::time::SystemTime,
    ) -> Result<OperationRecord, TransitionError> {
        let next = current.apply(change, at)?;
        self.write_and_publish(current.state, next, fence).await
    }

    async fn write_and_publish(
        &self,
        before: State,
        mut next: OperationRecord,
        fence: Fence,
    ) -> Result<OperationRecord, TransitionError> {
        match self.shared.store.write(&next, &fence).await? {
            Written::Applied {
                version,
                requested_cancellation,
            } => {
                next.version = version;
                next.requested_cancellation = requested_cancellation;
                self.count(before, &next);
                if next.is_done() && !before.is_done() {
                    self.shared.metrics.finished(&next);
                }
                self.follow_locally(&next, Origin::Here);
                self.shared.bus.publish(&next, Some(before));
                Ok(next)
            }
            Written::Stale(stored) => Err(TransitionError::Stale(stored)),
        }
    }

    /// Keeps the queue counts (what the queue bounds are checked against) in step with a
    /// written change from `before`.
    fn count(&self, before: State, written: &OperationRecord) {
        match (before, written.state) {
            (State::Queued, after) if after != State::Queued => {
                self.lock_slots().unqueued(&written.kind);
                self.shared.wakes.queue_room.notify_waiters();
            }
            (before, State::Queued) if before != State::Queued => {
                self.lock_slots().queued(&written.kind);
            }
            _ => {}
        }
    }

    /// Brings this node's view of a written operation up to date (before the change is
    /// published, when this node made it), so that whoever sees the change (a Wait, then a
    /// Delete) finds this node agreeing. One it runs and still holds gets the new record, and
    /// its worker the cancel request it carries. One it ran that this node ended or queued
    /// again leaves the running map and frees its slot; one that another node took over or
    /// ended has its worker stopped (the slot is freed when the worker is gone).
    pub(crate) fn follow_locally(&self, written: &OperationRecord, origin: Origin) {
        let Some(running) = self.shared.running.get(&written.id) else {
            return;
        };
        if running.version() > written.version {
            // What this node holds is newer: a later run of the operation (queued again and
            // claimed again before this change was followed), or its record since.
            return;
        }
        // Still this node's run: RUNNING under the owner it was claimed for (this node, or
        // one of its worker sessions).
        let still_here = written.state == State::Running && written.owner == running.owner();
        if still_here {
            running.set_record(written.clone());
            if written.requested_cancellation {
                running.cancel(CancelReason::Client);
            }
        } else {
            match origin {
                Origin::Here => self.release(&running),
                Origin::Elsewhere => running.cancel(CancelReason::Lost),
            }
        }
    }

    /// Stores a new operation (or finds the one its request id names) and publishes a new one.
    ///
    /// # Errors
    /// [`StoreError`] when the store did not take it.
    pub(crate) async fn create(&self, record: OperationRecord) -> Result<Inserted, StoreError> {
        // On a task of its own, as a transition (a submission whose client went away may
        // still be stored, and is then counted and published).
        let runner = self.clone();
        self.shared
            .life
            .tracker
            .spawn(
                async move {
                    let id = record.id.clone();
                    // Started at once (see `Runner::start_at_once`): its slot is taken.
                    let at_once = (record.state == State::Running).then(|| record.kind.clone());
                    runner.shared.bus.expect(&id);
                    let inserted = runner.shared.store.insert(record).await;
                    match &inserted {
                        Ok(Inserted::New(r)) => runner.stored(r),
                        Ok(Inserted::Existing(_)) | Err(_) => {
                            runner.shared.bus.forget(&id);
                            if let Some(kind) = at_once {
                                runner.slot_not_used(&kind);
                            }
                        }
                    }
                    inserted
                }
                .in_current_span(),
            )
            .await
            .unwrap_or_else(|e| Err(joined(&e)))
    }

    /// Inserts several new operations in one transaction (see
    /// [`crate::store::Store::insert_many`]), publishing those stored, as [`create`](Self::create)
    /// does for one.
    pub(crate) async fn create_many(
        &self,
        records: Vec<OperationRecord>,
    ) -> Result<Vec<Inserted>, StoreError> {
        let runner = self.clone();
        self.shared
            .life
            .tracker
            .spawn(
                async move {
                    let ids: Vec<_> = records.iter().map(|r| r.id.clone()).collect();
                    for id in &ids {
                        runner.shared.bus.expect(id);
                    }
                    let inserted = runner.shared.store.insert_many(records).await;
                    let stored: std::collections::HashSet<&crate::model::OperationId> =
                        match &inserted {
                            Ok(all) => all
                                .iter()
                                .filter_map(|i| match i {
                                    Inserted::New(r) => Some(&r.id),
                                    Inserted::Existing(_) => None,
                                })
                                .collect(),
                            Err(_) => Default::default(),
                        };
                    for id in ids.iter().filter(|id| !stored.contains(id)) {
                        runner.shared.bus.forget(id);
                    }
                    for r in inserted.iter().flatten() {
                        if let Inserted::New(r) = r {
                            runner.stored(r);
                        }
                    }
                    inserted
                }
                .in_current_span(),
            )
            .await
            .unwrap_or_else(|e| Err(joined(&e)))
    }

    /// Claims due work for this node (see [`crate::store::Store::claim`]) and publishes what
    /// it started.
    ///
    /// # Errors
    /// [`StoreError`] when the store did not take the claim; nothing started then.
    pub(crate) async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        self.claim_as(claim, true).await
    }

    /// [`Runner::claim`] for this node (`local`: what it claims takes its running slots) or
    /// for one of its worker sessions (it leaves the queue, and takes no slot here).
    pub(crate) async fn claim_as(&self, claim: &Claim, local: bool) -> Result<Claimed, StoreError> {
        let claimed = self.shared.store.claim(claim).await?;
        for record in &claimed.operations {
            if record.owner.as_deref() != Some(claim.node.as_str()) {
                warn!(op.name = %record.id, "the store answered a claim with an operation of another node");
            }
            if local {
                self.shared.running.claimed(&record.kind);
            } else {
                self.lock_slots().left_queue(&record.kind);
            }
            self.shared.metrics.started(record);
            self.shared
                .bus
                .publish(record, Some(crate::model::State::Queued));
        }
        if !claimed.operations.is_empty() {
            self.shared.wakes.queue_room.notify_waiters();
        }
        for (kind, rate) in &claim.rates {
            if claimed.held.contains(kind) {
                self.shared.metrics.rate_limited(kind);
                self.shared.throttled.insert(kind.clone(), *rate);
            } else {
                self.shared.throttled.remove(kind);
            }
        }
        Ok(claimed)
    }
}

/// What a write task that did not finish means to its caller: the runtime is going away
/// (cancelled), or a bug (a panic), reported as the store being unavailable.
fn joined(e: &tokio::task::JoinError) -> StoreError {
    if e.is_cancelled() {
        StoreError::Closed
    } else {
        StoreError::unavailable(format!("a write task failed: {e}"))
    }
}
