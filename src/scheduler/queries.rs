//! Get, List, Wait, Cancel and Delete: what clients ask of operations. Reads show only what
//! is durable; Cancel and Delete change operations through the transition point.

use std::time::Duration;

use tracing::info;

use super::transition::TransitionError;
use prost::Message;

use super::Runner;
use crate::error::Error;
use crate::filter::Filter;
use crate::model::{CancelReason, Change, Fence, OperationId, OperationRecord, Outcome, State};
use crate::proto::google::rpc::{Code, Status};
use crate::proto::oprun::v1::WorkerSession;

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// The operations, in the order listed (creation order, or newest first).
    pub operations: Vec<OperationRecord>,
    /// The `seq` to continue from (after it; below it, newest first), if more may follow.
    pub next_after: Option<i64>,
}

impl Page {
    /// A page of at most `limit` from a read of up to `limit + 1` (one more tells that more
    /// follow).
    pub(crate) fn of(mut operations: Vec<OperationRecord>, limit: usize) -> Self {
        let more = operations.len() > limit;
        operations.truncate(limit);
        let next_after = if more {
            operations.last().map(|r| r.seq)
        } else {
            None
        };
        Self {
            operations,
            next_after,
        }
    }
}

/// A node on the store, or a worker session, as [`Runner::nodes`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    /// Its lease and what runs under it.
    pub lease: crate::store::NodeLease,
    /// Whether it holds its lease now.
    pub live: bool,
    /// What it is, when it is a worker session.
    pub session: Option<WorkerSession>,
    /// Whether it is this node on an exclusive store: it holds the store itself, renewing no
    /// lease.
    pub holds_store: bool,
}

impl Runner {
    /// The nodes on this runner's store, with their leases and what runs under each, and
    /// whether each lease holds now (by this runner's clock). On an exclusive store this
    /// node holds the store itself and renews no lease: it is live while it runs, and only it
    /// and its own worker sessions are listed (nodes of earlier processes hold nothing).
    ///
    /// # Errors
    /// UNAVAILABLE when the store fails.
    pub async fn nodes(&self) -> Result<Vec<NodeState>, Error> {
        let now = self.now();
        let exclusive = self.shared.store.is_exclusive();
        let leases = self.shared.store.nodes().await?;
        let mut sessions: std::collections::HashMap<String, WorkerSession> =
            std::collections::HashMap::new();
        for (name, bytes) in self
            .shared
            .store
            .registered(crate::store::Registered::Session)
            .await?
        {
            if !leases.iter().any(|n| n.id == name) {
                // Its lease row is gone (its node forgot it long after it ended): so does it.
                if let Err(e) = self
                    .shared
                    .store
                    .unregister(crate::store::Registered::Session, &name)
                    .await
                {
                    tracing::debug!(error = %e, session = %name, "a stale worker session record could not be removed");
                }
                continue;
            }
            if let Ok(session) = WorkerSession::decode(bytes.as_slice()) {
                sessions.insert(name, session);
            }
        }
        // This node's own sessions, as they are now.
        for session in self.worker_sessions() {
            sessions.insert(session.name.clone(), session);
        }
        Ok(leases
            .into_iter()
            .filter_map(|lease| {
                let mine = self.shared.sessions.get(&lease.id).is_some();
                let holds_store = exclusive && lease.id == self.shared.config.node;
                let live = if exclusive {
                    holds_store || mine
                } else {
                    lease.lease_until >= now
                };
                // A dead node of an exclusive store is forgotten: it holds nothing.
                (live || !exclusive).then(|| NodeState {
                    session: sessions.remove(&lease.id),
                    live,
                    holds_store,
                    lease,
                })
            })
            .collect())
    }

    /// The latest durable state of an operation.
    ///
    /// # Errors
    /// NOT_FOUND when there is no such operation; UNAVAILABLE when the store fails.
    pub async fn get(&self, id: &OperationId) -> Result<OperationRecord, Error> {
        // Always the store: this node's copy of an operation it runs may lag behind it (an end
        // committed whose answer is still on its way).
        self.shared
            .store
            .get(id)
            .await?
            .map(|r| self.explain(r))
            .ok_or_else(|| Error::NotFound { name: id.name() })
    }

    /// `r` with, when it waits QUEUED and due only because its kind's start rate held it back
    /// at this node's last claim, a status saying so (unless its worker wrote one).
    pub(crate) fn explain(&self, mut r: OperationRecord) -> OperationRecord {
        if r.state == crate::model::State::Queued && r.status_message.is_empty() {
            if let Some(rate) = self.shared.throttled.get(&r.kind) {
                let due = r.next_attempt_time.is_none_or(|t| t <= self.now());
                if due {
                    r.status_message = format!(
                        "waiting for the start rate of kind {} ({}, over every node)",
                        r.kind, *rate
                    );
                }
            }
        }
        r
    }

    /// [`Runner::explain`] of each.
    pub(crate) fn explain_all(&self, records: Vec<OperationRecord>) -> Vec<OperationRecord> {
        if self.shared.throttled.is_empty() {
            return records;
        }
        records.into_iter().map(|r| self.explain(r)).collect()
    }

    /// Waits until the operation is done or `timeout` (capped at the configured maximum)
    /// passes, then returns its latest state.
    ///
    /// # Errors
    /// NOT_FOUND when there is no such operation; UNAVAILABLE when the store fails.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn wait(
        &self,
        id: &OperationId,
        timeout: Duration,
    ) -> Result<OperationRecord, Error> {
        let timeout = timeout.min(self.shared.config.max_wait);
        // Watch first, then read: a change between the two is not missed. An operation the
        // bus knows to be unfinished (on an exclusive store) needs no read: its end will come
        // through the watcher.
        let mut watch = self.shared.bus.watch(id);
        if timeout.is_zero() || !self.shared.bus.is_unfinished(id) {
            let current = self.get(id).await?;
            if current.is_done() || timeout.is_zero() {
                return Ok(current);
            }
        }
        let changed = tokio::select! {
            seen = tokio::time::timeout(
                timeout,
                watch.receiver.wait_for(|r| r.as_ref().is_some_and(OperationRecord::is_done)),
            ) => seen.ok().and_then(Result::ok).and_then(|r| r.clone()),
            // At shutdown, answer now with the latest state rather than hold the server open.
            () = self.shared.life.root.cancelled() => None,
        };
        match changed {
            Some(done) => Ok(done),
            None => self.get(id).await,
        }
    }

    /// Requests cancellation. A queued operation ends CANCELLED at once; a running one has
    /// `requested_cancellation` recorded and its worker's token cancelled, and ends when the
    /// worker stops (or is aborted after the grace period). A finished operation is left as
    /// it is.
    ///
    /// # Errors
    /// NOT_FOUND when there is no such operation; UNAVAILABLE when the store fails (nothing
    /// was cancelled then).
    pub async fn cancel(&self, id: &OperationId) -> Result<(), Error> {
        let current = self.get(id).await?;
        self.cancel_from(current).await
    }

    /// [`Runner::cancel`] from a state of the operation already read (a stale one is read
    /// again by the fenced write).
    pub(crate) async fn cancel_from(&self, mut current: OperationRecord) -> Result<(), Error> {
        let id = current.id.clone();
        loop {
            let (change, queued) = match current.state {
                s if s.is_done() => return Ok(()),
                State::Queued => (
                    Change::Finish {
                        state: State::Cancelled,
                        outcome: Outcome::Error(Status {
                            code: Code::Cancelled as i32,
                            message: "cancelled by client request before it started".into(),
                            details: Vec::new(),
                        }),
                    },
                    true,
                ),
                _ if current.requested_cancellation => {
                    self.cancel_worker(&id);
                    return Ok(());
                }
                _ => (Change::RequestCancel, false),
            };
            match self
                .transition(&current, change, Fence::Version(current.version))
                .await
            {
                Ok(written) => {
                    info!(op.name = %id, queued, "cancel requested");
                    if queued {
                        self.ended(&written);
                    } else {
                        // Its worker learnt of it as the request was written; one claimed on
                        // this node meanwhile learns of it here.
                        self.cancel_worker(&id);
                    }
                    return Ok(());
                }
                // Claimed, finished or cancelled meanwhile: look again.
                Err(TransitionError::Stale(Some(stored))) => current = *stored,
                Err(TransitionError::Stale(None)) => {
                    return Err(Error::NotFound { name: id.name() })
                }
                Err(TransitionError::Illegal(_)) => return Ok(()),
                Err(TransitionError::Store(e)) => return Err(e.into()),
            }
        }
    }

    /// Ends a queued operation that carries a cancel request CANCELLED (a retry written while
    /// the cancel came). If it changed meanwhile, whoever changed it sees the request.
    pub(crate) async fn cancel_queued(&self, record: &OperationRecord) {
        let change = Change::Finish {
            state: State::Cancelled,
            outcome: Outcome::Error(Status {
                code: Code::Cancelled as i32,
                message: "cancelled by client request".into(),
                details: Vec::new(),
            }),
        };
        if let Ok(written) = self
            .transition(record, change, Fence::Version(record.version))
            .await
        {
            self.ended(&written);
        }
    }

    /// Cancels the worker of `id` with the reason "client", if it runs on this node.
    fn cancel_worker(&self, id: &OperationId) {
        if let Some(running) = self.shared.running.get(id) {
            running.cancel(CancelReason::Client);
        }
    }

    /// Deletes a finished operation.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when it is not done; NOT_FOUND when there is no such operation;
    /// UNAVAILABLE when the store fails.
    pub async fn delete(&self, id: &OperationId) -> Result<(), Error> {
        // Read first: an operation not done is refused without asking the store to write
        // (which it may not be able to do just then).
        if !self.get(id).await?.is_done() {
            return Err(not_done(id));
        }
        self.delete_done(id).await
    }

    /// Deletes `id` if the store holds it done (what [`Runner::delete`] does once it has
    /// read it done).
    ///
    /// # Errors
    /// As [`Runner::delete`].
    pub(crate) async fn delete_done(&self, id: &OperationId) -> Result<(), Error> {
        match self.shared.store.delete_done(id).await? {
            Some(true) => {
                info!(op.name = %id, "deleted");
                Ok(())
            }
            Some(false) => Err(not_done(id)),
            None => Err(Error::NotFound { name: id.name() }),
        }
    }

    /// Lists up to `limit` operations after `after` (a `seq`) that match `filter`.
    ///
    /// # Errors
    /// UNAVAILABLE when the store fails.
    pub async fn list(&self, filter: &Filter, after: i64, limit: usize) -> Result<Page, Error> {
        let operations = self
            .shared
            .store
            .list(after, filter, limit.saturating_add(1))
            .await?;
        Ok(Page::of(self.explain_all(operations), limit))
    }
}

/// Why an operation that is not done cannot be deleted.
fn not_done(id: &OperationId) -> Error {
    Error::FailedPrecondition {
        message: format!("{id} is not done; cancel it first and delete it once it is done"),
        reason: "OPERATION_NOT_DONE",
    }
}
