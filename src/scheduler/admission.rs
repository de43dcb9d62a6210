//! SubmitTask and BatchSubmitTasks: validation, request ids (AIP-155), unique keys, the
//! queue bounds, then the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prost_types::Any;
use tracing::info;

use std::collections::HashMap;

use super::{Runner, Submission, MAX_BATCH_SUBMIT, MAX_REQUEST_ID_LEN, MAX_UNIQUE_KEY_LEN};
use crate::error::Error;
use crate::model::{time, OperationRecord, State, MAX_PRIORITY, MIN_PRIORITY};
use crate::proto::oprun::v1::RetryPolicy as RetryPolicyProto;
use crate::store::Inserted;
use crate::text::quote;

/// How often a submission waiting for room in a full queue looks again without a wake.
const QUEUE_ROOM_POLL: Duration = Duration::from_millis(50);

/// A submission checked and made into a record, before it is stored.
enum Admitted {
    /// Its `request_id` was used for this same request: that operation, as it is now.
    Repeat(OperationRecord),
    /// A new operation to store, with its kind's own queue bound.
    New {
        record: OperationRecord,
        max_queued: Option<usize>,
    },
}

impl Runner {
    /// Submits a task: validates it, makes it durable, queues it. With a `request_id` already
    /// used for the same request, returns the earlier operation instead; with a `unique_key`
    /// that an unfinished operation of the kind holds, returns that operation.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an unknown kind, an input of the wrong type, too large, or refused
    /// by the kind, a priority out of range, a unique key too long or a retry policy wider
    /// than the kind's; PERMISSION_DENIED when the caller's role may not start the kind;
    /// ALREADY_EXISTS when the `request_id` was used for a different request;
    /// RESOURCE_EXHAUSTED when the queue bound is reached and no room came within
    /// `queue_full_wait`; UNAVAILABLE when shutting down or the store fails.
    pub async fn submit(&self, request: Submission) -> Result<OperationRecord, Error> {
        let (record, max_queued) = match self.admit(request).await? {
            Admitted::Repeat(existing) => return Ok(existing),
            Admitted::New { record, max_queued } => (record, max_queued),
        };
        let asked = Asked::of(&record);
        self.reserve_or_wait(&asked.kind, max_queued).await?;
        let reserved = Reserved {
            runner: self,
            kinds: vec![asked.kind.clone()],
        };
        let inserted = self.create(self.start_at_once(record)).await;
        drop(reserved);
        match inserted? {
            Inserted::New(r) => Ok(r),
            Inserted::Existing(existing) => self.found(existing, &asked).await,
        }
    }

    /// Checks a submission as [`submit`](Self::submit) does, storing nothing (a schedule's
    /// task, before the schedule is written). Its `request_id` is not looked up.
    ///
    /// # Errors
    /// As [`submit`](Self::submit)'s checks.
    pub(super) async fn check_submission(&self, mut request: Submission) -> Result<(), Error> {
        request.request_id = String::new();
        self.admit(request).await.map(|_| ())
    }

    /// Submits up to [`MAX_BATCH_SUBMIT`] tasks in one transaction: every one is checked as
    /// [`submit`](Self::submit) checks it, then all are stored or none. Answers one operation
    /// per submission, in order (a repeated `request_id` or an active `unique_key` answers the
    /// operation that holds it, also when an earlier submission of the batch took it).
    ///
    /// # Errors
    /// As [`submit`](Self::submit), for the first submission at fault, named by its index
    /// (`requests[i]`); INVALID_ARGUMENT for more than [`MAX_BATCH_SUBMIT`] submissions, or
    /// one `request_id` given twice for different requests. Nothing is stored then. One case
    /// is judged only after the transaction: a `request_id` that another client's different
    /// request took at the same moment answers ALREADY_EXISTS for its index while the others
    /// were stored (a retry of the same batch then answers them by their request ids).
    pub async fn submit_many(
        &self,
        requests: Vec<Submission>,
    ) -> Result<Vec<OperationRecord>, Error> {
        if requests.len() > MAX_BATCH_SUBMIT {
            return Err(Error::invalid_argument(
                "requests",
                format!(
                    "{} requests in one batch; at most {MAX_BATCH_SUBMIT}: split it",
                    requests.len()
                ),
            ));
        }
        let mut answers: Vec<Option<OperationRecord>> = Vec::with_capacity(requests.len());
        let mut new: Vec<(usize, OperationRecord, Option<usize>)> = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            match self.admit(request).await.map_err(|e| e.in_batch(index))? {
                Admitted::Repeat(existing) => answers.push(Some(existing)),
                Admitted::New { record, max_queued } => {
                    answers.push(None);
                    new.push((index, record, max_queued));
                }
            }
        }
        same_requests(&new)?;
        let mut reserved = Reserved {
            runner: self,
            kinds: Vec::with_capacity(new.len()),
        };
        for (index, record, max_queued) in &new {
            // A full queue gives back what the batch reserved (when `reserved` drops).
            self.reserve_or_wait(&record.kind, *max_queued)
                .await
                .map_err(|e| e.in_batch(*index))?;
            reserved.kinds.push(record.kind.clone());
        }
        let asked: Vec<(usize, Asked)> = new.iter().map(|(i, r, _)| (*i, Asked::of(r))).collect();
        let inserted = self
            .create_many(new.into_iter().map(|(_, r, _)| r).collect())
            .await;
        drop(reserved);
        for ((index, asked), inserted) in asked.iter().zip(inserted?) {
            let answer = match inserted {
                Inserted::New(r) => r,
                Inserted::Existing(existing) => self
                    .found(existing, asked)
                    .await
                    .map_err(|e| e.in_batch(*index))?,
            };
            answers[*index] = Some(answer);
        }
        answers
            .into_iter()
            .enumerate()
            .map(|(index, answer)| {
                answer.ok_or_else(|| {
                    Error::Store(crate::store::StoreError::unavailable(format!(
                        "requests[{index}] got no answer from the store; retry the batch"
                    )))
                })
            })
            .collect()
    }

    /// Checks a submission and makes its record (or finds the operation its `request_id`
    /// already names).
    async fn admit(&self, request: Submission) -> Result<Admitted, Error> {
        let Submission {
            kind,
            input,
            request_id,
            timeout,
            not_before,
            traceparent,
            role,
            priority,
            unique_key,
            retry_policy,
            concurrency_key,
            schedule,
            fire_time,
        } = request;
        if !self.shared.life.accepting.load(Ordering::Acquire) {
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
        // A fire's request id (`schedule/…`) is made by the fire loop in a form no client's
        // passes the check, so that no client can take a fire's place.
        let request_id = if schedule.is_empty() || !is_fire_request_id(&request_id) {
            check_request_id(&request_id)?
        } else {
            Some(request_id)
        };
        check_priority(priority)?;
        let unique_key = check_key("unique_key", unique_key)?;
        let concurrency_key = check_key("concurrency_key", concurrency_key)?;
        let retry_policy = retry_policy
            .map(|asked| narrow_retry(&kind, &task.options().retry, &asked))
            .transpose()?;
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
                return self
                    .repeat(existing, &kind, Some(&input))
                    .await
                    .map(Admitted::Repeat);
            }
        }
        task.check_input(&input)?;
        let mut record = OperationRecord::new_queued(kind, input, request_id);
        record.create_time = now;
        record.update_time = now;
        record.deadline = deadline.map(time::to_micros);
        record.next_attempt_time = not_before.filter(|t| *t > now).map(time::to_micros);
        record.traceparent = traceparent
            .as_deref()
            .and_then(crate::model::traceparent)
            .unwrap_or_default();
        record.priority = priority;
        record.unique_key = unique_key;
        record.retry_policy = retry_policy;
        record.concurrency_key = concurrency_key;
        record.schedule = (!schedule.is_empty()).then_some(schedule);
        record.fire_time = fire_time;
        Ok(Admitted::New {
            record,
            max_queued: task.options().max_queued,
        })
    }

    /// What follows the insert of a new operation, whether or not its submitter still waits:
    /// its counts, its publication, the log line, the wake-ups of what may act on it, and
    /// its launch if it was stored started (see [`Runner::start_at_once`]).
    pub(super) fn stored(&self, r: &OperationRecord) {
        let at_once = r.state == State::Running;
        self.shared.metrics.submitted(&r.kind);
        if at_once {
            // Its slot was taken before the insert (`Runner::start_at_once`).
            self.shared.metrics.started(r);
        } else {
            self.lock_slots().queued(&r.kind);
        }
        self.shared.bus.publish(r, None);
        info!(op.name = %r.id, op.kind = %r.kind, "submitted");
        if super::batch::CONTROL_KINDS.contains(&r.kind.as_str()) {
            self.shared.pending.control.store(true, Ordering::Release);
        }
        if !self.shared.kinds.is_in_process(&r.kind) {
            self.shared.pending.remote.store(true, Ordering::Release);
        }
        if !at_once {
            self.shared.wakes.dispatch.notify_one();
        }
        if r.deadline.is_some() {
            self.shared.wakes.deadline.notify_one();
        }
        if at_once {
            self.launch(r.clone());
        }
    }

    /// The answer to a submission whose insert found an operation holding what it asked:
    /// its `request_id` (the earlier operation when the request is the same, else
    /// ALREADY_EXISTS) or its kind's unique key (that operation, as it is now).
    async fn found(
        &self,
        existing: OperationRecord,
        asked: &Asked,
    ) -> Result<OperationRecord, Error> {
        match &asked.request_id {
            Some(rid) if existing.request_id.as_ref() == Some(rid) => {
                self.repeat(existing, &asked.kind, asked.input.as_ref())
                    .await
            }
            _ => self.get(&existing.id).await,
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
    /// [`Slots::reserve`]: super::running::slots::Slots::reserve
    async fn reserve_or_wait(&self, kind: &str, kind_bound: Option<usize>) -> Result<(), Error> {
        let global_bound = self.shared.config.max_queued;
        let wait = self.shared.config.queue_full_wait;
        let started = tokio::time::Instant::now();
        loop {
            let room = self.shared.wakes.queue_room.notified();
            let full = match self.lock_slots().reserve(kind, kind_bound, global_bound) {
                Ok(()) => return Ok(()),
                Err(full) => full,
            };
            if !self.shared.life.accepting.load(Ordering::Acquire) {
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

/// Places in the queue taken for submissions until they are stored or refused (see
/// [`Slots::reserve`](super::running::slots::Slots::reserve)): given back when dropped, also
/// when the submitting call goes away midway (its insert goes on, on a task of its own, and
/// counts what it stored).
struct Reserved<'a> {
    runner: &'a Runner,
    kinds: Vec<String>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        {
            let mut slots = self.runner.lock_slots();
            for kind in &self.kinds {
                slots.unreserve(kind);
            }
        }
        // Room for a submission waiting on a full queue (one stored started, or refused,
        // never passes through a claim, which wakes them otherwise).
        self.runner.shared.wakes.queue_room.notify_waiters();
    }
}

/// What a submission asked, kept to judge an operation its insert found instead.
struct Asked {
    kind: String,
    request_id: Option<String>,
    /// Kept only with a `request_id` (to compare with an operation inserted meanwhile with
    /// the same one).
    input: Option<Any>,
}

impl Asked {
    fn of(r: &OperationRecord) -> Self {
        Self {
            kind: r.kind.clone(),
            request_id: r.request_id.clone(),
            input: r.request_id.as_ref().map(|_| r.input.clone()),
        }
    }
}

/// Refuses a batch that gives one `request_id` to two different requests (the store would
/// answer the second with the first's operation).
fn same_requests(new: &[(usize, OperationRecord, Option<usize>)]) -> Result<(), Error> {
    let mut first: HashMap<&str, &OperationRecord> = HashMap::new();
    for (index, r, _) in new {
        let Some(rid) = r.request_id.as_deref() else {
            continue;
        };
        match first.get(rid) {
            Some(earlier) if earlier.kind != r.kind || earlier.input != r.input => {
                return Err(Error::invalid_argument(
                    "request_id",
                    format!(
                        "request_id {} is also given to an earlier request of this batch with \
                         a different kind or input; use a new request_id for a different \
                         request",
                        quote(rid)
                    ),
                )
                .in_batch(*index));
            }
            Some(_) => {}
            None => {
                first.insert(rid, r);
            }
        }
    }
    Ok(())
}

fn check_priority(priority: i32) -> Result<(), Error> {
    if (MIN_PRIORITY..=MAX_PRIORITY).contains(&priority) {
        return Ok(());
    }
    Err(Error::invalid_argument(
        "priority",
        format!(
            "priority is {priority}; it must be from {MIN_PRIORITY} to {MAX_PRIORITY} \
             (higher runs first; 0 by default)"
        ),
    ))
}

/// A unique or concurrency key (`field`): at most [`MAX_UNIQUE_KEY_LEN`] bytes; empty is none.
fn check_key(field: &'static str, key: String) -> Result<Option<String>, Error> {
    if key.len() > MAX_UNIQUE_KEY_LEN {
        return Err(Error::invalid_argument(
            field,
            format!(
                "{field} is {} bytes; at most {MAX_UNIQUE_KEY_LEN}",
                key.len()
            ),
        ));
    }
    Ok((!key.is_empty()).then_some(key))
}

/// The longest backoff a submission may ask for.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// The retry policy a submission asks for, checked against its kind's (`policy`): no more
/// attempts, no faster backoff (both bounds at least the kind's); unset fields filled with the
/// kind's, so that the result says all that applies.
fn narrow_retry(
    kind: &str,
    policy: &crate::task::RetryPolicy,
    asked: &RetryPolicyProto,
) -> Result<RetryPolicyProto, Error> {
    let max_attempts = match asked.max_attempts {
        0 => policy.max_attempts,
        n if n > policy.max_attempts => {
            return Err(Error::invalid_argument(
                "retry_policy.max_attempts",
                format!(
                    "retry_policy.max_attempts is {n}; kind {kind:?} allows at most {}",
                    policy.max_attempts
                ),
            ))
        }
        n => n,
    };
    let duration = |field: &'static str, d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map(|d| {
                time::duration(d).map_err(|e| {
                    Error::invalid_argument(
                        field,
                        format!("{field} is not a valid positive duration: {e}; send e.g. \"30s\""),
                    )
                })
            })
            .transpose()
    };
    // No faster than the kind: every delay (initial × multiplier^n, capped at the max) is at
    // least the kind's when both bounds are at least the kind's. The day's cap is on what
    // the caller gives, not on the kind's own bounds.
    let initial = match duration("retry_policy.initial_backoff", &asked.initial_backoff)? {
        None => policy.initial_delay,
        Some(d) if d < policy.initial_delay || d > MAX_BACKOFF => {
            return Err(Error::invalid_argument(
                "retry_policy.initial_backoff",
                format!(
                    "retry_policy.initial_backoff is {}s; kind {kind:?} retries no sooner than \
                     {}s, and the longest backoff is a day",
                    d.as_secs_f64(),
                    policy.initial_delay.as_secs_f64()
                ),
            ))
        }
        Some(d) => d,
    };
    let least_max = policy.max_delay.max(initial);
    let max = match duration("retry_policy.max_backoff", &asked.max_backoff)? {
        None => least_max,
        Some(d) if d < least_max || d > MAX_BACKOFF.max(least_max) => {
            return Err(Error::invalid_argument(
                "retry_policy.max_backoff",
                format!(
                    "retry_policy.max_backoff is {}s; it must be from {}s (the kind's, and at \
                     least initial_backoff: no faster than kind {kind:?} retries) to a day",
                    d.as_secs_f64(),
                    least_max.as_secs_f64()
                ),
            ))
        }
        Some(d) => d,
    };
    let proto = |d: Duration| prost_types::Duration::try_from(d).ok();
    Ok(RetryPolicyProto {
        max_attempts,
        initial_backoff: proto(initial),
        max_backoff: proto(max),
    })
}

/// The request id of a schedule's fire: `schedule/{id}/{fire time in µs}` (a `/` is in no
/// client's request id).
pub(super) fn fire_request_id(schedule_id: &str, fire: std::time::SystemTime) -> String {
    format!("schedule/{schedule_id}/{}", crate::store::micros(fire))
}

/// Whether a request id is a fire's (see [`fire_request_id`]).
fn is_fire_request_id(request_id: &str) -> bool {
    request_id.starts_with("schedule/") && request_id.len() <= MAX_REQUEST_ID_LEN
}

/// A client's request id, checked.
pub(super) fn check_request_id(request_id: &str) -> Result<Option<String>, Error> {
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
