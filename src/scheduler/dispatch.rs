//! The dispatcher: claims due work from the store within this node's running limits and
//! starts it. One task; it sleeps until it is woken (a submission, a slot freed, a retry
//! queued) or the next queued operation becomes due, so delayed starts and backoffs need no
//! timer of their own. On a shared store, where other nodes queue work and free it, a slow
//! safety poll backs up the wake-ups the feed brings; on an exclusive store every change
//! passes through this process and an idle node sleeps without a timer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use super::batch::CONTROL_KINDS;
use super::{clock, Runner};
use crate::store::{Claim, RunningLimits};

/// The longest the dispatcher sleeps without looking at a shared store.
const SAFETY_POLL: Duration = Duration::from_secs(5);

/// The first and longest pauses after a claim the store refused.
const CLAIM_RETRY_MIN: Duration = Duration::from_millis(50);
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(5);

impl Runner {
    /// The kinds this node runs, with their running limits (a kind without one of its own
    /// has the node's).
    fn kind_limits(&self) -> impl Iterator<Item = (String, usize)> + '_ {
        self.shared.kinds.in_process().kinds().map(|(name, _)| {
            let limit = self
                .own_limit(name)
                .unwrap_or(self.shared.config.max_running);
            (name.to_owned(), limit)
        })
    }

    /// The kinds with a running limit of their own (`--kind-limit`, or what the kind
    /// declares), which hold over all nodes of a shared store.
    fn cluster_kind_limits(&self) -> Vec<(String, usize)> {
        self.shared
            .kinds
            .in_process()
            .kinds()
            .filter_map(|(name, _)| Some((name.to_owned(), self.own_limit(name)?)))
            .collect()
    }

    /// The limits per concurrency key of `kinds` that have one (`--kind-key-limit`, or what
    /// the kind declares): they hold over all nodes, and on every store.
    pub(crate) fn key_limits(&self, kinds: &[(String, usize)]) -> Vec<(String, usize)> {
        kinds
            .iter()
            .filter_map(|(kind, _)| Some((kind.clone(), self.key_limit(kind)?)))
            .collect()
    }

    /// The limit per concurrency key of `kind`, if it has one (`--kind-key-limit`, or what
    /// the kind declares).
    pub(super) fn key_limit(&self, kind: &str) -> Option<usize> {
        let declared = || self.shared.kinds.task(kind)?.options().max_per_key;
        self.shared
            .config
            .kind_key_limits
            .get(kind)
            .copied()
            .or_else(declared)
            .map(|n| n.max(1))
    }

    /// The start rates of `kinds` that have one (`--kind-rate`).
    pub(crate) fn rates(&self, kinds: &[(String, usize)]) -> Vec<(String, crate::store::Rate)> {
        self.shared
            .config
            .kind_rates
            .iter()
            .filter(|(kind, _)| kinds.iter().any(|(k, _)| k == kind))
            .cloned()
            .collect()
    }

    pub(super) fn own_limit(&self, kind: &str) -> Option<usize> {
        let declared = || self.shared.kinds.task(kind)?.options().max_concurrency;
        self.shared
            .config
            .kind_limits
            .get(kind)
            .copied()
            .or_else(declared)
            .map(|n| n.max(1))
    }

    /// Claims the batches due (see [`super::batch`]) within their own room, whatever room the
    /// other kinds have, and starts them. Asks to be called again while some may wait; returns
    /// when the next one becomes due, if one waits for its time.
    async fn claim_control(&self) -> Option<std::time::SystemTime> {
        let (kinds, _) = self.lock_slots().room(
            CONTROL_KINDS
                .iter()
                .map(|k| ((*k).to_owned(), self.own_limit(k).unwrap_or(1))),
            usize::MAX,
            false,
        );
        let total: usize = kinds.iter().map(|(_, room)| room).sum();
        if total == 0 {
            // Full: the next batch to end frees room and asks again.
            self.shared.pending.control.store(true, Ordering::Release);
            return None;
        }
        let claim = Claim {
            node: self.shared.config.node.clone(),
            kinds,
            total,
            now: self.now(),
            limits: RunningLimits::none(),
            key_limits: Vec::new(),
            rates: Vec::new(),
        };
        match self.claim(&claim).await {
            Ok(claimed) => {
                // Full, or one waits for its time: look again at the next wake.
                if claimed.operations.len() == total || claimed.next_due.is_some() {
                    self.shared.pending.control.store(true, Ordering::Release);
                }
                for record in claimed.operations {
                    self.launch(record);
                }
                claimed.next_due
            }
            Err(e) => {
                // The main claim that follows meets the same store and backs off.
                warn!(error = %e, "the store refused a claim of batches");
                self.shared.pending.control.store(true, Ordering::Release);
                None
            }
        }
    }

    pub(crate) async fn dispatch_loop(self) {
        let mut retry = CLAIM_RETRY_MIN;
        let mut refused = false;
        let mut last_control_look = tokio::time::Instant::now();
        // Fixed once the runner has started; an exclusive store ignores them (its one node's
        // room says everything).
        let limits = if self.shared.store.is_exclusive() {
            RunningLimits::none()
        } else {
            RunningLimits {
                kinds: self.cluster_kind_limits(),
                total: self.shared.config.cluster_max_running,
            }
        };
        // On an exclusive store, a kind this node counts nothing queued of has nothing queued
        // (every change passes through this node): the claim does not look for it.
        let counted_only = self.shared.store.is_exclusive();
        loop {
            // The room is read under the gate: a submission started at once takes its slot
            // under it too, so a claim never starts more than the room it saw.
            let mut gate = Some(self.shared.lease.claiming.lock().await);
            let (kinds, total) = {
                let slots = self.lock_slots();
                if counted_only && !slots.any_queued() {
                    // Nothing queued here (a wake for a run that ended): no kind to look at.
                    (Vec::new(), 0)
                } else {
                    slots.room(
                        self.kind_limits(),
                        self.shared.config.max_running,
                        counted_only,
                    )
                }
            };
            let mut next_due = None;
            // Without a lease, what this node claimed would look abandoned to the others.
            let leased = !self.shared.lease.lost.load(Ordering::Acquire);
            if leased && self.shared.pending.control.swap(false, Ordering::AcqRel) {
                next_due = self.claim_control().await;
            }
            if leased && self.shared.pending.remote.swap(false, Ordering::AcqRel) {
                // A session's claim finding work due later looks again then.
                if let Some(due) = self.claim_for_sessions().await {
                    next_due = next_due.into_iter().chain(Some(due)).min();
                    self.shared.pending.remote.store(true, Ordering::Release);
                }
            }
            if leased && total > 0 && !kinds.is_empty() {
                let claim = Claim {
                    node: self.shared.config.node.clone(),
                    key_limits: self.key_limits(&kinds),
                    rates: self.rates(&kinds),
                    kinds,
                    total,
                    now: self.now(),
                    limits: limits.clone(),
                };
                match self.claim(&claim).await {
                    Ok(claimed) => {
                        if refused {
                            refused = false;
                            warn!("the store takes claims again");
                        }
                        retry = CLAIM_RETRY_MIN;
                        let started = claimed.operations.len();
                        // A lease that ended while the claim was on its way makes each of
                        // these Lost before its worker starts (see `launch`).
                        for record in claimed.operations {
                            self.launch(record);
                        }
                        drop(gate.take());
                        if started == total {
                            // There may be more due work than room: look again at once (a
                            // slot freed meanwhile wakes this loop).
                            tokio::task::yield_now().await;
                            continue;
                        }
                        next_due = next_due.into_iter().chain(claimed.next_due).min();
                    }
                    Err(e) => {
                        drop(gate.take());
                        if !refused {
                            refused = true;
                            warn!(error = %e, "the store refused a claim; retrying with backoff");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(retry) => {}
                            () = self.shared.life.root.cancelled() => return,
                        }
                        retry = (retry * 2).min(CLAIM_RETRY_MAX);
                        continue;
                    }
                }
            }
            drop(gate);
            let poll = (!self.shared.store.is_exclusive()).then_some(SAFETY_POLL);
            if poll.is_some() && last_control_look.elapsed() >= SAFETY_POLL {
                // A batch another node queued and left (its node went away) is found by a
                // look every safety poll, not on every wake.
                last_control_look = tokio::time::Instant::now();
                self.shared.pending.control.store(true, Ordering::Release);
                // Likewise work of declared kinds another node queued, and kinds another
                // node declared.
                self.shared.pending.remote.store(true, Ordering::Release);
                if let Err(e) = self.shared.kinds.load(&*self.shared.store).await {
                    warn!(error = %e, "the declared kinds could not be read");
                }
            }
            let sleep = next_due
                .map(|due| clock::until(self.now(), due))
                .into_iter()
                .chain(poll)
                .min();
            let timer = async {
                match sleep {
                    Some(sleep) => tokio::time::sleep(sleep).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shared.wakes.dispatch.notified() => {}
                () = timer => {}
                () = self.shared.life.root.cancelled() => return,
            }
        }
    }
}
