//! SubmitTask: validation, request ids (AIP-155), the queue bounds, then the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prost_types::Any;
use tracing::info;

use super::{Runner, Submission, MAX_REQUEST_ID_LEN};
use crate::error::Error;
use crate::model::{time, OperationRecord};
use crate::store::Inserted;
use crate::text::quote;

/// How often a submission waiting for room in a full queue looks again without a wake.
const QUEUE_ROOM_POLL: Duration = Duration::from_millis(50);

impl Runner {
    /// Submits a task: validates it, makes it durable, queues it. With a `request_id` already
    /// used for the same request, returns the earlier operation instead.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an unknown kind, an input of the wrong type, too large, or refused
    /// by the kind; PERMISSION_DENIED when the caller's role may not start the kind; ALREADY_EXISTS when the `request_id` was used for a different request;
    /// RESOURCE_EXHAUSTED when the queue bound is reached and no room came within
    /// `queue_full_wait`; UNAVAILABLE when shutting down or
    /// the store fails.
    pub async fn submit(&self, request: Submission) -> Result<OperationRecord, Error> {
        let Submission {
            kind,
            input,
            request_id,
            timeout,
            not_before,
            traceparent,
            role,
        } = request;
        if !self.shared.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let Some(task) = self.shared.kinds.find(&*self.shared.store, &kind).await else {
            let message = if kind.is_empty() {
                format!("kind is empty; known kinds: {}", self.shared.kinds.names())
            } else {
                format!(
                    "unknown kind {}; known kinds: {}",
                    quote(&kind),
                    self.shared.kinds.names()
                )
            };
            return Err(Error::invalid_argument_because(
                "kind",
                "UNKNOWN_KIND",
                message,
            ));
        };
        let needed = task.options().start_role;
        if let Some(role) = role.filter(|role| !role.allows(needed)) {
            return Err(Error::PermissionDenied {
                message: format!(
                    "role {role} may not start operations of kind {kind:?}; it needs {}",
                    needed.and_above()
                ),
                reason: "ROLE_TOO_LOW",
                role,
                needed,
            });
        }
        let Some(input) = input else {
            let expected = task.describe().input_type;
            return Err(Error::invalid_argument(
                "input",
                format!("input is missing; kind {kind:?} takes a {expected}"),
            ));
        };
        let limit = self.shared.config.max_input_bytes;
        if input.value.len() > limit {
            return Err(Error::invalid_argument_because(
                "input",
                "INPUT_TOO_LARGE",
                format!(
                    "input is {} bytes; the limit is {limit} bytes (oprun serve --max-input-bytes)",
                    input.value.len()
                ),
            ));
        }
        let request_id = check_request_id(&request_id)?;
        let now = self.now();
        let timeout = timeout.or(task.options().default_timeout);
        let deadline = match timeout {
            None => None,
            Some(t) if t.is_zero() => {
                return Err(Error::invalid_argument(
                    "timeout",
                    "timeout must be positive; leave it unset for no timeout",
                ))
            }
            Some(t) => Some(time::add(now, t).ok_or_else(|| {
                Error::invalid_argument(
                    "timeout",
                    "timeout ends after 9999-12-31T23:59:59Z, the latest time an operation can \
                     show; leave it unset for no timeout",
                )
            })?),
        };
        // AIP-155: a repeated request_id returns the original operation whatever the queue or
        // the world looks like now (a full queue, a snapshot destination that now exists), so
        // it is looked up before the input is judged or a place in the queue is taken.
        if let Some(rid) = &request_id {
            if let Some(existing) = self.shared.store.find_request(rid).await? {
                return self.repeat(existing, &kind, Some(&input)).await;
            }
        }
        task.check_input(&input)?;
        self.reserve_or_wait(&kind, task.options().max_queued)
            .await?;
        // Kept only to compare with an operation inserted meanwhile with the same request_id.
        let sent = request_id.as_ref().map(|_| input.clone());
        let mut record = OperationRecord::new_queued(kind.clone(), input, request_id);
        record.create_time = now;
        record.update_time = now;
        record.deadline = deadline.map(time::to_micros);
        record.next_attempt_time = not_before.filter(|t| *t > now).map(time::to_micros);
        record.traceparent = traceparent
            .as_deref()
            .and_then(crate::model::traceparent)
            .unwrap_or_default();
        let inserted = self.create(record).await;
        match inserted {
            Ok(Inserted::New(r)) => {
                self.lock_slots().unreserve(&kind);
                info!(op.name = %r.id, op.kind = %r.kind, "submitted");
                if super::batch::CONTROL_KINDS.contains(&r.kind.as_str()) {
                    self.shared.control_pending.store(true, Ordering::Release);
                }
                if !self.shared.kinds.is_in_process(&r.kind) {
                    self.shared.remote_pending.store(true, Ordering::Release);
                }
                self.shared.dispatch_wake.notify_one();
                if r.deadline.is_some() {
                    self.shared.deadline_wake.notify_one();
                }
                Ok(r)
            }
            Ok(Inserted::Existing(existing)) => {
                self.lock_slots().unreserve(&kind);
                self.repeat(existing, &kind, sent.as_ref()).await
            }
            Err(e) => {
                self.lock_slots().unreserve(&kind);
                Err(e.into())
            }
        }
    }

    /// Reserves a place in the queue for one more `kind` (see [`Slots::reserve`]); while the
    /// queue (or the kind's) is full, waits for room up to `queue_full_wait`: woken as
    /// operations leave the queue, and every [`QUEUE_ROOM_POLL`] in case no wake comes
    /// (another node's work leaving a shared store's queue is seen by a recount). Checking
    /// and taking the room are one step under the counts' lock: of the submissions woken
    /// together, those that find no room wait again.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED (the bound reached) when no room came in time;
    /// [`Error::ShuttingDown`] when shutdown begins meanwhile.
    ///
    /// [`Slots::reserve`]: super::slots::Slots::reserve
    async fn reserve_or_wait(&self, kind: &str, kind_bound: Option<usize>) -> Result<(), Error> {
        let global_bound = self.shared.config.max_queued;
        let wait = self.shared.config.queue_full_wait;
        let started = tokio::time::Instant::now();
        loop {
            let room = self.shared.queue_room.notified();
            let full = match self.lock_slots().reserve(kind, kind_bound, global_bound) {
                Ok(()) => return Ok(()),
                Err(full) => full,
            };
            if !self.shared.accepting.load(Ordering::Acquire) {
                return Err(Error::ShuttingDown);
            }
            let Some(left) = wait.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
                return Err(full);
            };
            let _ = tokio::time::timeout(left.min(QUEUE_ROOM_POLL), room).await;
        }
    }

    /// The answer to a submission whose `request_id` an operation already carries: that
    /// operation (its latest state) when the request is the same, else ALREADY_EXISTS.
    async fn repeat(
        &self,
        existing: OperationRecord,
        kind: &str,
        input: Option<&Any>,
    ) -> Result<OperationRecord, Error> {
        if existing.kind != kind || input != Some(&existing.input) {
            return Err(Error::AlreadyExists {
                message: format!(
                    "request_id was already used for {} (kind {:?}) with a different kind or \
                     input; use a new request_id for a different request",
                    existing.id, existing.kind
                ),
            });
        }
        self.get(&existing.id).await
    }
}

fn check_request_id(request_id: &str) -> Result<Option<String>, Error> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > MAX_REQUEST_ID_LEN
        || !request_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(Error::invalid_argument(
            "request_id",
            format!(
                "request_id must be at most {MAX_REQUEST_ID_LEN} characters of letters, digits \
                 and -_.: (a UUID is recommended)"
            ),
        ));
    }
    Ok(Some(request_id.to_owned()))
}
