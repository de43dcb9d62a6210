//! Leases and the work of nodes that went away.
//!
//! This node holds what it runs under a lease it renews every third of `lease`. Any node takes
//! over the RUNNING work of a node whose lease ended, by the restart rule: a retry-safe kind is
//! queued again with `attempt` + 1; another kind ends ABORTED (it may have done part of its
//! work: it is never run twice); a kind no node here registers ends FAILED_PRECONDITION (on an
//! exclusive store, where nothing else could run it). At start on an exclusive store (the
//! embedded ones), every lease of the last process has ended: what it was running is taken
//! over at once.

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::transition::TransitionError;
use super::Runner;
use crate::error::Error;
use crate::model::{CancelReason, Change, Fence, OperationRecord, Outcome, State};
use crate::proto::google::rpc::{Code, Status};
use crate::store::StoreError;

/// Orphans taken over per look at the store.
const BATCH: usize = 256;

/// The longest between two looks for the work of nodes that went away.
const RESCUE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn error(code: Code, message: String) -> Outcome {
    Outcome::Error(Status {
        code: code as i32,
        message,
        details: Vec::new(),
    })
}

impl Runner {
    /// At start: takes this node's lease, takes over the work of nodes whose lease ended,
    /// counts the queued work, and (on an exclusive store) ends unfinished work of kinds no
    /// longer registered.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be read or written.
    pub(crate) async fn recover(&self) -> Result<(), Error> {
        self.renew_lease().await?;
        let exclusive = self.shared.store.is_exclusive();
        let (mut queued, mut unregistered) = (0usize, 0usize);
        // RUNNING under this node's own name: left by an earlier process with the same
        // `--node-id` (killed, or stopped), which nothing runs now. Its lease is this one now,
        // so no look for expired leases would ever find that work.
        let mut left = Vec::new();
        for r in self.shared.store.unfinished().await? {
            self.shared.bus.expect(&r.id);
            if r.state == State::Running
                && r.owner.as_deref() == Some(self.shared.config.node.as_str())
            {
                left.push(r.clone());
            }
            if r.state == State::Queued {
                // Counted whatever its kind: ending one of an unregistered kind below counts
                // it out.
                self.lock_slots().queued(&r.kind);
            }
            if self.shared.kinds.task(&r.kind).is_some() {
                if r.state == State::Queued {
                    queued += 1;
                }
            } else if exclusive {
                let change = Change::Finish {
                    state: State::Failed,
                    outcome: error(
                        Code::FailedPrecondition,
                        format!(
                            "kind {:?} is not registered on this server; registered kinds: {}",
                            r.kind,
                            self.shared.kinds.names()
                        ),
                    ),
                };
                match self.transition(&r, change, Fence::Version(r.version)).await {
                    Ok(written) => {
                        self.ended(&written);
                        unregistered += 1;
                    }
                    Err(TransitionError::Store(e)) => return Err(e.into()),
                    Err(_) => {}
                }
            }
        }
        // After the count: what it takes over is counted as it is queued again.
        let mut rescued = self.rescue().await?;
        for r in left {
            rescued += usize::from(self.take_over(&r).await?);
        }
        if queued + rescued + unregistered > 0 {
            info!(
                queued,
                rescued, unregistered, "recovered operations from the store"
            );
        }
        Ok(())
    }

    /// Renews this node's lease.
    async fn renew_lease(&self) -> Result<(), StoreError> {
        let until = self.now() + self.shared.config.lease;
        self.shared
            .store
            .heartbeat(&self.shared.config.node, until)
            .await
    }

    /// Takes over the RUNNING work of nodes whose lease ended; how many it took over.
    async fn rescue(&self) -> Result<usize, StoreError> {
        let node = self.shared.config.node.clone();
        let mut rescued = 0;
        loop {
            let orphans = self.shared.store.orphans(&node, self.now(), BATCH).await?;
            let full = orphans.len() == BATCH;
            let mut changed = 0;
            for r in orphans {
                if self.take_over(&r).await? {
                    rescued += 1;
                    changed += 1;
                }
            }
            if !full || changed == 0 {
                return Ok(rescued);
            }
        }
    }

    /// Applies the restart rule to `r`, RUNNING under a node that went away (fenced by the
    /// version read); whether it changed the operation.
    async fn take_over(&self, r: &OperationRecord) -> Result<bool, StoreError> {
        let Some(change) = self.restart_rule(r) else {
            return Ok(false);
        };
        match self.transition(r, change, Fence::Version(r.version)).await {
            Ok(written) => {
                self.ended(&written);
                Ok(true)
            }
            Err(TransitionError::Store(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// What becomes of a RUNNING operation whose node went away; `None` to leave it (a kind
    /// this node does not run, on a shared store: a node that runs it decides).
    fn restart_rule(&self, r: &OperationRecord) -> Option<Change> {
        let owner = r.owner.as_deref().unwrap_or("an unknown node");
        let exclusive = self.shared.store.is_exclusive();
        let gone = if exclusive {
            "the server restarted while this operation was running".to_owned()
        } else {
            format!("node {owner}, which was running this operation, went away (its lease ended)")
        };
        let Some(task) = self.shared.kinds.task(&r.kind) else {
            return exclusive.then(|| Change::Finish {
                state: State::Failed,
                outcome: error(
                    Code::FailedPrecondition,
                    format!(
                        "{gone}, and kind {:?} is not registered here; registered kinds: {}",
                        r.kind,
                        self.shared.kinds.names()
                    ),
                ),
            });
        };
        Some(if task.options().retry_safe {
            Change::Requeue {
                status_message: format!("queued again: {gone}"),
            }
        } else {
            Change::Finish {
                state: State::Failed,
                outcome: error(
                    Code::Aborted,
                    format!(
                        "{gone}; kind {:?} is not safe to retry, so it was not run again",
                        r.kind
                    ),
                ),
            }
        })
    }

    /// Renews this node's lease every third of it, and looks for the work of nodes whose
    /// lease ended at least every [`RESCUE_EVERY`] (a node that stops gracefully gives its
    /// lease up, so its work moves within that), taking it over.
    ///
    /// A node whose lease ends before it could renew it (the store unreachable, the process
    /// paused) has lost what it runs: others may take it over at any moment. It stops its
    /// workers (reason "lease lost"; they write nothing, and a write they tried would be
    /// refused by its fence once the work was taken over) and claims nothing until it holds a
    /// lease again; then it queues again, by the restart rule, whatever of its own was left
    /// RUNNING and not taken over meanwhile.
    pub(crate) async fn lease_loop(self) {
        let lease = self.shared.config.lease;
        let renew_every = lease / 3;
        let tick = renew_every.min(RESCUE_EVERY);
        // Taken at start (in `recover`), just before this loop.
        let mut renewed = tokio::time::Instant::now();
        loop {
            let waited = tokio::select! {
                biased;
                () = self.shared.life.root.cancelled() => return,
                waited = self.before_lease_end(renewed, tokio::time::sleep(tick)) => waited,
            };
            if waited.is_none() {
                continue;
            }
            let lost = self.shared.lease.lost.load(Ordering::Acquire);
            if lost || renewed.elapsed() >= renew_every {
                // The lease written runs from (at least) now. A renewal that hangs (a silent
                // network) is given up after a third of the lease.
                let asked = tokio::time::Instant::now();
                let renewal = tokio::time::timeout(renew_every, self.renew_lease());
                match self.before_lease_end(renewed, renewal).await {
                    None => continue,
                    Some(Ok(Ok(()))) => {
                        renewed = asked;
                        if lost {
                            self.lease_regained(renewed).await;
                        }
                    }
                    Some(Ok(Err(e))) => warn!(error = %e, "could not renew this node's lease"),
                    Some(Err(_)) => warn!("renewing this node's lease timed out"),
                }
            }
            // Bounded too: a large backlog is taken over a part at a time, between renewals.
            let rescue = tokio::time::timeout(renew_every, self.rescue());
            if let Some(Ok(Err(e))) = self.before_lease_end(renewed, rescue).await {
                warn!(error = %e, "could not take over the work of nodes that went away");
            }
        }
    }

    /// When this node's lease, last renewed at `renewed`, ends as this node counts: a tenth
    /// of the lease before the others can count it ended (they count from when the renewal
    /// reached the store, later still), so that its workers are told to stop before any other
    /// node may start their work again. `None` when it never ends (an instant past the
    /// clock's range).
    fn lease_end(&self, renewed: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let lease = self.shared.config.lease;
        renewed.checked_add(lease.saturating_sub(lease / 10))
    }

    /// Runs `work`, unless this node's lease (renewed at `renewed`) ends first: then its
    /// workers are stopped ([`Self::lease_ended`]) and `None` returned. The lease's end is
    /// watched by a timer of its own, so that neither a renewal nor a rescue that hangs
    /// delays stopping the workers past it; it comes first when both are due (a node paused
    /// past its lease has lost it, even if a renewal would then succeed at once).
    async fn before_lease_end<F: std::future::Future>(
        &self,
        renewed: tokio::time::Instant,
        work: F,
    ) -> Option<F::Output> {
        let held = !self.shared.lease.lost.load(Ordering::Acquire);
        match self.lease_end(renewed) {
            Some(end) if held => tokio::select! {
                biased;
                () = tokio::time::sleep_until(end) => {
                    self.lease_ended();
                    None
                }
                out = work => Some(out),
            },
            _ => Some(work.await),
        }
    }

    /// This node's lease ended: stops every worker, writing nothing for them.
    fn lease_ended(&self) {
        self.shared.lease.lost.store(true, Ordering::Release);
        let stopped = self.shared.running.len();
        warn!(
            node = %self.shared.config.node,
            stopped,
            "this node's lease ended before it could renew it: its workers are stopped \
             (lease lost) and it claims nothing until it holds a lease again"
        );
        self.shared.running.each(|r| r.cancel(CancelReason::Lost));
    }

    /// This node holds a lease again: queues again (by the restart rule) what it had left
    /// RUNNING when it lost the last one, unless another node took it over meanwhile, then
    /// claims again. Every worker it still runs was told to stop when the lease ended (and
    /// what it claimed since never started), so its RUNNING work is left work; an operation
    /// whose worker has not stopped yet is taken back at a later look (the node claims
    /// nothing until then).
    async fn lease_regained(&self, renewed: tokio::time::Instant) {
        // No claim is on its way meanwhile (its work would look left behind).
        let _gate = self.shared.lease.claiming.lock().await;
        let node = self.shared.config.node.as_str();
        let left = match self.shared.store.unfinished().await {
            Ok(all) => all,
            Err(e) => {
                warn!(error = %e, "could not read the work this node left when its lease ended");
                return;
            }
        };
        let mut requeued = 0;
        let mut stopping = 0;
        for r in left {
            if r.state != State::Running || r.owner.as_deref() != Some(node) {
                continue;
            }
            if self.shared.running.contains(&r.id) {
                // Its worker (told to stop when the lease ended) has not stopped yet: taken
                // back at a later look, so that it never runs beside its next attempt.
                stopping += 1;
                continue;
            }
            match self.take_over(&r).await {
                Ok(changed) => requeued += usize::from(changed),
                Err(e) => {
                    warn!(error = %e, "could not take back the work this node left");
                    return;
                }
            }
        }
        if stopping > 0 {
            info!(
                requeued,
                stopping, "waiting for stopped workers before claiming again"
            );
            return;
        }
        if self
            .lease_end(renewed)
            .is_some_and(|end| tokio::time::Instant::now() >= end)
        {
            // Taking the work back took the whole lease: it is not held any more.
            warn!(
                requeued,
                "the lease ended again while this node took back its work"
            );
            return;
        }
        self.shared.lease.lost.store(false, Ordering::Release);
        self.shared.pending.control.store(true, Ordering::Release);
        self.shared.wakes.dispatch.notify_one();
        info!(requeued, "this node holds a lease again");
    }
}
