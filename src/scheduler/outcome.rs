//! How a run ended → what happens to the operation next: the outcome policy, a pure function
//! of what it is given (no clock, no randomness of its own), unit-tested on its own.

use std::time::{Duration, SystemTime};

use prost_types::Any;

use crate::model::{time, CancelReason, Outcome, State};
use crate::proto::google::rpc::{Code, Status};
use crate::task::{Retry, RetryPolicy, TaskError};

/// How a worker ended.
#[derive(Debug, Clone)]
pub(crate) enum WorkerEnd {
    /// It returned a response.
    Succeeded(Any),
    /// It returned an error.
    Failed(TaskError),
    /// It panicked.
    Panicked(String),
    /// It ignored its cancellation for the grace period and was aborted.
    Abandoned(Duration),
    /// It never started (cancelled before).
    NotStarted,
    /// Its worker, in another process, was lost (its session ended, or it stopped
    /// reporting): the restart rule applies, as for a node that went away. Says what
    /// happened.
    Lost(String),
}

/// Everything the policy looks at.
#[derive(Debug, Clone)]
pub(crate) struct Situation<'a> {
    /// How the worker ended.
    pub end: &'a WorkerEnd,
    /// Why its token was cancelled, if it was.
    pub reason: Option<CancelReason>,
    /// The kind's retry policy.
    pub policy: &'a RetryPolicy,
    /// Whether the kind may run again after an attempt was lost with its worker.
    pub retry_safe: bool,
    /// The attempt that ended, from 1.
    pub attempt: u32,
    /// When the operation was created (for the deadline's message).
    pub created: SystemTime,
    /// The operation's deadline.
    pub deadline: Option<SystemTime>,
    /// Now.
    pub now: SystemTime,
    /// A number in `[0, 1)` for the backoff's jitter.
    pub jitter: f64,
}

/// What happens next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// The operation ends so.
    Finish {
        /// The done state.
        state: State,
        /// Its result.
        outcome: Outcome,
    },
    /// The operation is queued again at once (attempt + 1): the restart rule, after a worker
    /// was lost.
    Requeue {
        /// What happened, for people.
        status_message: String,
    },
    /// The operation is queued again, for its next attempt at `next_attempt`.
    Retry {
        /// When the next attempt may start.
        next_attempt: SystemTime,
        /// How long from now that is.
        delay: Duration,
        /// The failed attempt's error.
        last_error: Status,
        /// What happened, for people.
        status_message: String,
    },
    /// Nothing is written: the runner is shutting down (the next start, or another node,
    /// resumes or aborts it by the restart rule), or this node no longer holds it.
    Leave,
}

fn status(code: Code, message: impl Into<String>) -> Status {
    Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// The message of an operation that passed its deadline.
pub(crate) fn deadline_message(created: SystemTime, deadline: Option<SystemTime>) -> String {
    match deadline.and_then(|d| d.duration_since(created).ok()) {
        Some(timeout) => format!(
            "the operation's deadline passed ({:.1}s after submission)",
            timeout.as_secs_f64()
        ),
        None => "the operation's deadline passed".to_owned(),
    }
}

/// Decides how a run ends: a response wins (even after a cancel); then a shutdown or a lost
/// lease (nothing written), a client's cancel (CANCELLED), the deadline (DEADLINE_EXCEEDED);
/// a retryable failure with attempts left and time before the deadline is retried after its
/// backoff; any other failure fails with its code; a panic is INTERNAL.
pub(crate) fn conclude(s: &Situation<'_>) -> Decision {
    let abandoned = match s.end {
        WorkerEnd::Abandoned(grace) => format!(
            "; the worker did not stop within the {}s grace period and was aborted",
            grace.as_secs_f64()
        ),
        _ => String::new(),
    };
    let fail = |state: State, code: Code, message: String| Decision::Finish {
        state,
        outcome: Outcome::Error(status(code, message)),
    };
    match (s.end, s.reason) {
        (WorkerEnd::Succeeded(response), _) => Decision::Finish {
            state: State::Succeeded,
            outcome: Outcome::Response(response.clone()),
        },
        (_, Some(CancelReason::Shutdown | CancelReason::Lost)) => Decision::Leave,
        (_, Some(CancelReason::Client)) => fail(
            State::Cancelled,
            Code::Cancelled,
            format!("cancelled by client request{abandoned}"),
        ),
        (_, Some(CancelReason::Deadline)) => fail(
            State::Failed,
            Code::DeadlineExceeded,
            format!("{}{abandoned}", deadline_message(s.created, s.deadline)),
        ),
        (WorkerEnd::Failed(e), None) => match retry(s, e) {
            Some(decision) => decision,
            None => {
                let message = if s.attempt > 1 {
                    format!("{} (attempt {})", e.message, s.attempt)
                } else {
                    e.message.clone()
                };
                fail(State::Failed, e.code, message)
            }
        },
        (WorkerEnd::Lost(why), None) if s.retry_safe => Decision::Requeue {
            status_message: format!("queued again: {why}"),
        },
        (WorkerEnd::Lost(why), None) => fail(
            State::Failed,
            Code::Aborted,
            format!("{why}; the kind is not safe to retry, so it was not run again"),
        ),
        (WorkerEnd::Panicked(message), None) => fail(
            State::Failed,
            Code::Internal,
            format!("the worker panicked: {message}"),
        ),
        (end, None) => fail(
            State::Failed,
            Code::Internal,
            format!("the worker ended unexpectedly: {end:?}"),
        ),
    }
}

/// The retry of a failed attempt, if it gets one: the failure is retryable, the policy has
/// attempts left, and the next attempt (at a time a Timestamp can show) starts before the
/// deadline.
fn retry(s: &Situation<'_>, e: &TaskError) -> Option<Decision> {
    if !e.is_retryable() || s.attempt >= s.policy.max_attempts {
        return None;
    }
    let delay = match e.retry {
        Retry::After(d) => d,
        Retry::ByCode | Retry::Never => s.policy.delay(s.attempt, s.jitter),
    };
    let next_attempt = time::add(s.now, delay)?;
    if s.deadline.is_some_and(|d| next_attempt >= d) {
        return None;
    }
    let next = s.attempt.saturating_add(1);
    Some(Decision::Retry {
        next_attempt,
        delay,
        last_error: status(e.code, e.message.clone()),
        status_message: format!(
            "attempt {} failed ({:?}: {}); attempt {next} in {:.1}s",
            s.attempt,
            e.code,
            e.message,
            delay.as_secs_f64()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    fn decide(end: WorkerEnd, reason: Option<CancelReason>, attempt: u32) -> Decision {
        decide_with(end, reason, attempt, None)
    }

    fn decide_with(
        end: WorkerEnd,
        reason: Option<CancelReason>,
        attempt: u32,
        deadline: Option<SystemTime>,
    ) -> Decision {
        conclude(&Situation {
            end: &end,
            reason,
            policy: &policy(),
            retry_safe: false,
            attempt,
            created: at(0),
            deadline,
            now: at(10),
            jitter: 0.0,
        })
    }

    fn code(d: &Decision) -> Option<i32> {
        match d {
            Decision::Finish {
                outcome: Outcome::Error(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }

    /// A response wins over any cancel reason.
    #[test]
    fn a_response_wins() {
        for reason in [
            None,
            Some(CancelReason::Client),
            Some(CancelReason::Deadline),
        ] {
            assert!(matches!(
                decide(WorkerEnd::Succeeded(Any::default()), reason, 1),
                Decision::Finish {
                    state: State::Succeeded,
                    ..
                }
            ));
        }
    }

    /// Only a client's cancel is CANCELLED; the deadline is DEADLINE_EXCEEDED; a shutdown or a
    /// lost lease writes nothing; an aborted worker is named in the message.
    #[test]
    fn cancel_reasons() {
        let failed = WorkerEnd::Failed(TaskError::cancelled());
        let client = decide(failed.clone(), Some(CancelReason::Client), 1);
        assert_eq!(code(&client), Some(Code::Cancelled as i32));
        let deadline = decide_with(
            WorkerEnd::Abandoned(Duration::from_secs(5)),
            Some(CancelReason::Deadline),
            1,
            Some(at(4)),
        );
        assert_eq!(code(&deadline), Some(Code::DeadlineExceeded as i32));
        let Decision::Finish {
            outcome: Outcome::Error(s),
            ..
        } = deadline
        else {
            panic!("a finish");
        };
        assert!(s.message.contains("4.0s after submission"), "{}", s.message);
        assert!(s.message.contains("aborted"), "{}", s.message);
        assert_eq!(
            decide(failed.clone(), Some(CancelReason::Shutdown), 1),
            Decision::Leave
        );
        assert_eq!(decide(failed, Some(CancelReason::Lost), 1), Decision::Leave);
    }

    /// Retryable failures back off exponentially while attempts last; then the last error is
    /// the result, with its attempt.
    #[test]
    fn retries_follow_the_policy() {
        let down = WorkerEnd::Failed(TaskError::unavailable("down"));
        match decide(down.clone(), None, 2) {
            Decision::Retry {
                next_attempt,
                delay,
                ..
            } => {
                assert_eq!(delay, Duration::from_secs(2));
                assert_eq!(next_attempt, at(12));
            }
            other => panic!("a retry, got {other:?}"),
        }
        let last = decide(down, None, 3);
        assert_eq!(code(&last), Some(Code::Unavailable as i32));
        let permanent = WorkerEnd::Failed(TaskError::unavailable("x").permanent());
        assert!(matches!(
            decide(permanent, None, 1),
            Decision::Finish { .. }
        ));
        let invalid = WorkerEnd::Failed(TaskError::invalid_argument("bad"));
        assert_eq!(
            code(&decide(invalid, None, 1)),
            Some(Code::InvalidArgument as i32)
        );
    }

    /// No retry whose next attempt would start at or after the deadline, or past what a
    /// Timestamp can show.
    #[test]
    fn no_retry_past_the_deadline_or_the_calendar() {
        let down = WorkerEnd::Failed(TaskError::unavailable("down"));
        assert!(matches!(
            decide_with(down.clone(), None, 1, Some(at(11))),
            Decision::Finish { .. }
        ));
        let forever = WorkerEnd::Failed(
            TaskError::unavailable("later").retry_after(Duration::from_secs(u64::MAX / 4)),
        );
        assert!(matches!(decide(forever, None, 1), Decision::Finish { .. }));
    }

    /// A panic is INTERNAL with its message.
    #[test]
    fn panics_are_internal() {
        let d = decide(WorkerEnd::Panicked("boom".into()), None, 1);
        assert_eq!(code(&d), Some(Code::Internal as i32));
    }

    /// A lost worker: the restart rule (queued again for a retry-safe kind, ABORTED naming
    /// what happened for another); a client's cancel or the deadline still decide first.
    #[test]
    fn a_lost_worker_follows_the_restart_rule() {
        let lost = || WorkerEnd::Lost("worker session workerSessions/a went away".into());
        let with = |retry_safe: bool, reason: Option<CancelReason>| {
            conclude(&Situation {
                end: &lost(),
                reason,
                policy: &policy(),
                retry_safe,
                attempt: 3,
                created: at(0),
                deadline: None,
                now: at(10),
                jitter: 0.0,
            })
        };
        match with(true, None) {
            Decision::Requeue { status_message } => {
                assert!(
                    status_message.contains("workerSessions/a"),
                    "{status_message}"
                );
            }
            other => panic!("expected a requeue, got {other:?}"),
        }
        let aborted = with(false, None);
        assert_eq!(code(&aborted), Some(Code::Aborted as i32));
        assert_eq!(
            code(&with(true, Some(CancelReason::Client))),
            Some(Code::Cancelled as i32)
        );
        assert_eq!(with(true, Some(CancelReason::Shutdown)), Decision::Leave);
    }
}
