//! The operation's state machine: which changes are legal from which state, and what each
//! does to the record.
//!
//! Pure: the engine decides a [`Change`], [`OperationRecord::apply`] checks it and computes the
//! next record, the store writes that with a [`Fence`], and only a write the store took is
//! published. Done never reverts and a result never changes: every change of a done
//! operation is illegal.
//!
//! ```text
//!            Start                  Finish
//!   QUEUED ─────────▶ RUNNING ─────────────▶ SUCCEEDED | FAILED | CANCELLED
//!     ▲  │              │  │ Progress, RequestCancel (stay RUNNING)
//!     │  │ Finish       │  │
//!     │  ╰──────────────┼──┴──▶ (done)
//!     ╰─────────────────╯
//!       Retry, Requeue (attempt + 1)
//! ```

use std::time::SystemTime;

use prost_types::Any;

use super::{OperationRecord, Outcome, State};
use crate::proto::google::rpc::Status;
use crate::proto::oprun::v1::Progress;

/// A change of an operation's state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// A node starts an attempt: QUEUED → RUNNING, owned by `node`.
    Start {
        /// The node that runs it.
        node: String,
    },
    /// The worker's progress: RUNNING stays RUNNING.
    Progress {
        /// Work done so far.
        progress: Progress,
        /// The worker's latest words.
        status_message: String,
        /// The kind's own progress message.
        details: Option<Any>,
    },
    /// A failed attempt runs again at `next_attempt`: RUNNING → QUEUED with `attempt` + 1.
    Retry {
        /// When the next attempt may start.
        next_attempt: SystemTime,
        /// The failed attempt's error.
        last_error: Status,
        /// What happened, for people.
        status_message: String,
    },
    /// An attempt whose node went away (a crash, a lost lease) is queued again at once:
    /// RUNNING → QUEUED with `attempt` + 1.
    Requeue {
        /// What happened, for people.
        status_message: String,
    },
    /// The end: QUEUED or RUNNING → a done state, with its outcome.
    Finish {
        /// SUCCEEDED with a response, FAILED or CANCELLED with an error.
        state: State,
        /// The result.
        outcome: Outcome,
    },
    /// A client asked to cancel: `requested_cancellation` is set (a QUEUED operation is
    /// finished CANCELLED instead; a RUNNING one ends when its worker stops).
    RequestCancel,
}

impl Change {
    /// The change's name, for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Change::Start { .. } => "start",
            Change::Progress { .. } => "progress",
            Change::Retry { .. } => "retry",
            Change::Requeue { .. } => "requeue",
            Change::Finish { .. } => "finish",
            Change::RequestCancel => "cancel request",
        }
    }
}

/// The condition a store checks before it writes a change, so that a stale writer's write is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fence {
    /// The stored operation must still be at this version (no change since it was read).
    Version(u64),
    /// The operation must still be RUNNING attempt `attempt` on `node`: what the node running
    /// it writes. A cancel request written meanwhile by someone else does not stop the write,
    /// and is kept.
    Owner {
        /// The node that holds it.
        node: String,
        /// The attempt it runs.
        attempt: u32,
    },
}

impl Fence {
    /// Whether the store may write over `stored` under this fence.
    pub(crate) fn admits(&self, stored: &OperationRecord) -> bool {
        match self {
            Self::Version(v) => stored.version == *v,
            Self::Owner { node, attempt } => {
                stored.state == State::Running
                    && stored.owner.as_deref() == Some(node.as_str())
                    && stored.attempt == *attempt
            }
        }
    }

    /// What the store writes over `stored` (which this fence [admits](Self::admits)) when
    /// asked to write `next`: `next` as it is under a version's fence (it was made from that
    /// version); under an owner's, one version past the stored one, keeping a cancel request
    /// written meanwhile. The SQL backends say the same in SQL: see `store::fence`.
    pub(crate) fn written(
        &self,
        stored: &OperationRecord,
        mut next: OperationRecord,
    ) -> OperationRecord {
        next.seq = stored.seq;
        if let Self::Owner { .. } = self {
            next.version = stored.version + 1;
            next.requested_cancellation |= stored.requested_cancellation;
        }
        next
    }
}

/// A change that is not allowed from the operation's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IllegalTransition {
    /// The operation is done: done never reverts and a result never changes.
    #[error("the operation is done (done never reverts, a result never changes)")]
    Done,
    /// The change does not apply to the operation's state.
    #[error("a {change} is not allowed while the operation is {}", .state.as_str())]
    FromState {
        /// The change's name.
        change: &'static str,
        /// The operation's state.
        state: State,
    },
    /// A finish whose state and outcome disagree (SUCCEEDED needs a response; FAILED and
    /// CANCELLED need an error).
    #[error("a finish as {} does not match its outcome", .state.as_str())]
    Mismatched {
        /// The state asked for.
        state: State,
    },
}

impl OperationRecord {
    /// The record after `change`, made at `at`, with its version one higher; or why the
    /// change is not allowed from this state.
    ///
    /// # Errors
    /// [`IllegalTransition`] for any change of a done operation, a change from a state it
    /// does not apply to, or a finish whose state and outcome disagree.
    pub fn apply(&self, change: Change, at: SystemTime) -> Result<Self, IllegalTransition> {
        let at = super::time::to_micros(at);
        if self.is_done() {
            return Err(IllegalTransition::Done);
        }
        let from = |allowed: &[State]| {
            if allowed.contains(&self.state) {
                Ok(())
            } else {
                Err(IllegalTransition::FromState {
                    change: change.name(),
                    state: self.state,
                })
            }
        };
        let mut next = self.clone();
        next.version = self.version.saturating_add(1);
        next.update_time = at;
        match &change {
            Change::Start { node } => {
                from(&[State::Queued])?;
                next.state = State::Running;
                next.owner = Some(node.clone());
                next.start_time = Some(at);
                next.next_attempt_time = None;
            }
            Change::Progress {
                progress,
                status_message,
                details,
            } => {
                from(&[State::Running])?;
                next.progress = progress.clone();
                next.status_message = status_message.clone();
                next.details = details.clone();
            }
            Change::Retry {
                next_attempt,
                last_error,
                status_message,
            } => {
                from(&[State::Running])?;
                next.state = State::Queued;
                next.attempt = self.attempt.saturating_add(1);
                next.start_time = None;
                next.next_attempt_time = Some(*next_attempt);
                next.last_error = Some(last_error.clone());
                next.status_message = status_message.clone();
            }
            Change::Requeue { status_message } => {
                from(&[State::Running])?;
                next.state = State::Queued;
                next.attempt = self.attempt.saturating_add(1);
                next.start_time = None;
                next.next_attempt_time = None;
                next.status_message = status_message.clone();
            }
            Change::Finish { state, outcome } => {
                from(&[State::Queued, State::Running])?;
                let matches = match outcome {
                    Outcome::Response(_) => *state == State::Succeeded,
                    Outcome::Error(_) => matches!(state, State::Failed | State::Cancelled),
                };
                if !matches {
                    return Err(IllegalTransition::Mismatched { state: *state });
                }
                next.state = *state;
                next.outcome = Some(outcome.clone());
                next.end_time = Some(at);
                next.next_attempt_time = None;
                // Only a client's cancel ends an operation CANCELLED: it was asked for.
                next.requested_cancellation |= *state == State::Cancelled;
            }
            Change::RequestCancel => {
                from(&[State::Queued, State::Running])?;
                next.requested_cancellation = true;
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::google::rpc::Code;

    fn queued() -> OperationRecord {
        OperationRecord::new_queued("sleep".into(), Any::default(), None)
    }

    fn error(code: Code) -> Outcome {
        Outcome::Error(Status {
            code: code as i32,
            message: "m".into(),
            details: Vec::new(),
        })
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// The legal path: start, progress, retry, start again, finish; each step one version up.
    #[test]
    fn the_life_of_an_operation() {
        let q = queued();
        let r = q.apply(Change::Start { node: "n1".into() }, at(1)).unwrap();
        assert_eq!(
            (r.state, r.version, r.owner.as_deref()),
            (State::Running, 2, Some("n1"))
        );
        assert_eq!(r.start_time, Some(at(1)));
        let p = r
            .apply(
                Change::Progress {
                    progress: Progress {
                        completed: 1,
                        total: 2,
                        unit: "steps".into(),
                    },
                    status_message: "half".into(),
                    details: None,
                },
                at(2),
            )
            .unwrap();
        assert_eq!((p.progress.completed, p.version), (1, 3));
        let again = p
            .apply(
                Change::Retry {
                    next_attempt: at(10),
                    last_error: Status::default(),
                    status_message: "again".into(),
                },
                at(3),
            )
            .unwrap();
        assert_eq!((again.state, again.attempt), (State::Queued, 2));
        assert_eq!(again.next_attempt_time, Some(at(10)));
        assert_eq!(again.start_time, None);
        let done = again
            .apply(Change::Start { node: "n2".into() }, at(10))
            .unwrap()
            .apply(
                Change::Finish {
                    state: State::Succeeded,
                    outcome: Outcome::Response(Any::default()),
                },
                at(11),
            )
            .unwrap();
        assert!(done.is_done());
        assert_eq!((done.end_time, done.version), (Some(at(11)), 6));
    }

    /// Done never reverts and a result never changes: every change of a done operation is
    /// refused.
    #[test]
    fn nothing_changes_a_done_operation() {
        let done = queued()
            .apply(
                Change::Finish {
                    state: State::Cancelled,
                    outcome: error(Code::Cancelled),
                },
                at(1),
            )
            .unwrap();
        for change in [
            Change::Start { node: "n".into() },
            Change::RequestCancel,
            Change::Requeue {
                status_message: String::new(),
            },
            Change::Finish {
                state: State::Succeeded,
                outcome: Outcome::Response(Any::default()),
            },
        ] {
            assert_eq!(done.apply(change, at(2)), Err(IllegalTransition::Done));
        }
    }

    /// Changes that do not apply to a state are refused, as are mismatched finishes.
    #[test]
    fn illegal_moves_are_refused() {
        let q = queued();
        assert!(matches!(
            q.apply(
                Change::Retry {
                    next_attempt: at(1),
                    last_error: Status::default(),
                    status_message: String::new()
                },
                at(1)
            ),
            Err(IllegalTransition::FromState { .. })
        ));
        let running = q.apply(Change::Start { node: "n".into() }, at(1)).unwrap();
        assert!(matches!(
            running.apply(Change::Start { node: "m".into() }, at(2)),
            Err(IllegalTransition::FromState { .. })
        ));
        assert_eq!(
            running.apply(
                Change::Finish {
                    state: State::Succeeded,
                    outcome: error(Code::Internal)
                },
                at(2)
            ),
            Err(IllegalTransition::Mismatched {
                state: State::Succeeded
            })
        );
        let asked = running.apply(Change::RequestCancel, at(3)).unwrap();
        assert!(asked.requested_cancellation);
        assert_eq!(asked.state, State::Running);
    }
}
