//! A worker session as this node holds it: its kinds and room, what it was assigned, its
//! lease token, and the names of sessions and tokens.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use prost_types::Any;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::model::OperationId;
use crate::proto::google::rpc::Status;
use crate::proto::oprun::v1::{SessionKind, WorkerEvent, WorkerSession};
use crate::task::TaskContext;

/// The sessions on this node, by name.
#[derive(Default)]
pub(crate) struct Sessions {
    pub(crate) map: DashMap<String, Arc<Session>>,
}

impl Sessions {
    /// The session called `name`, if it is open on this node.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Session>> {
        self.map.get(name).map(|s| Arc::clone(s.value()))
    }

    /// Every open session.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.map.iter().map(|s| Arc::clone(s.value())).collect()
    }
}

/// How a worker completed an assignment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Completion {
    /// With the kind's output message.
    Response(Any),
    /// With an error.
    Error(Status),
}

/// An assignment a session holds.
pub(crate) struct Held {
    pub(crate) token: String,
    pub(crate) kind: String,
    pub(crate) ctx: TaskContext,
    /// Where the worker's completion goes (taken by the first one).
    pub(crate) completion: Option<oneshot::Sender<Completion>>,
    /// Woken by each report: the heartbeat timer starts again.
    pub(crate) heard: Arc<Notify>,
}

#[derive(Default)]
pub(crate) struct State {
    /// Assignments held, by operation.
    pub(crate) held: HashMap<OperationId, Held>,
    /// Events not yet delivered.
    pub(crate) outbox: VecDeque<WorkerEvent>,
    /// Whether a stream is attached.
    pub(crate) streaming: bool,
    /// When it was last heard from.
    pub(crate) last_seen: Option<Instant>,
    pub(crate) last_seen_wall: Option<SystemTime>,
}

/// A worker's session.
pub(crate) struct Session {
    /// `workerSessions/{id}`: also the owner of what it runs.
    pub(crate) name: String,
    pub(crate) worker: String,
    /// Each kind it runs, with how many at once.
    pub(crate) kinds: Vec<(String, u32)>,
    /// The session ends after this long without a stream or a call.
    pub(crate) timeout: Duration,
    pub(crate) opened: SystemTime,
    pub(crate) node: String,
    // std Mutex: held to change the state, never across an await.
    pub(crate) state: Mutex<State>,
    /// Woken when an event waits in the outbox, or the session ends (for its stream or poll).
    pub(crate) news: Notify,
    /// Woken when its stream attaches or detaches (for the task that watches its silence).
    pub(crate) attachment: Notify,
    /// Cancelled when the session ends: what it holds is lost.
    pub(crate) ended: CancellationToken,
    /// Why it ended.
    pub(crate) why: Mutex<Option<String>>,
    /// Whether it takes no more work (it ends once what it holds is completed).
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

impl Session {
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that the worker was heard from now.
    pub(crate) fn seen(&self, wall: SystemTime) {
        let mut state = self.state();
        state.last_seen = Some(Instant::now());
        state.last_seen_wall = Some(wall);
    }

    pub(crate) fn push(&self, event: WorkerEvent) {
        self.state().outbox.push_back(event);
        self.news.notify_one();
    }

    /// How many more of each kind it takes now.
    pub(crate) fn room(&self) -> Vec<(String, usize)> {
        if self.draining.load(Ordering::Acquire) {
            return Vec::new();
        }
        let state = self.state();
        self.kinds
            .iter()
            .filter_map(|(kind, slots)| {
                let held = state.held.values().filter(|h| &h.kind == kind).count();
                let room = usize::try_from(*slots)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(held);
                (room > 0).then(|| (kind.clone(), room))
            })
            .collect()
    }

    /// Whether it can take work now: a stream is attached, or it polled within its timeout.
    pub(crate) fn ready(&self) -> bool {
        if self.ended.is_cancelled() {
            return false;
        }
        let state = self.state();
        state.streaming
            || state
                .last_seen
                .is_some_and(|seen| seen.elapsed() < self.timeout)
    }

    pub(crate) fn takes(&self, kind: &str) -> bool {
        self.kinds.iter().any(|(k, _)| k == kind)
    }

    /// The session as the protocol describes it.
    pub(crate) fn describe(&self) -> WorkerSession {
        let state = self.state();
        WorkerSession {
            name: self.name.clone(),
            worker: self.worker.clone(),
            kinds: self
                .kinds
                .iter()
                .map(|(name, concurrency)| SessionKind {
                    name: name.clone(),
                    concurrency: *concurrency,
                })
                .collect(),
            node: self.node.clone(),
            heartbeat_timeout: prost_types::Duration::try_from(self.timeout).ok(),
            open_time: Some(self.opened.into()),
            last_seen_time: state.last_seen_wall.map(Into::into),
            running: i64::try_from(state.held.len()).unwrap_or(i64::MAX),
        }
    }
}

/// What a lease token says: the session, the operation's attempt, and a random part.
pub(crate) fn token_for(session: &str, attempt: u32) -> String {
    let nonce: u128 = rand::random();
    let id = session.strip_prefix("workerSessions/").unwrap_or(session);
    format!("{id}:{attempt}:{nonce:032x}")
}

/// The session a lease token names.
pub(crate) fn session_of_token(token: &str) -> Option<String> {
    let (id, _) = token.split_once(':')?;
    Some(format!("workerSessions/{id}"))
}

/// A refusal of a stale or unknown lease token: FAILED_PRECONDITION, reason `LEASE_STALE`.
pub(crate) fn stale(message: String) -> Error {
    Error::FailedPrecondition {
        message,
        reason: "LEASE_STALE",
    }
}

/// The `id` of a session name from a worker's name: lower-case letters, digits and `-`, then a
/// random part.
pub(crate) fn session_name(worker: &str) -> String {
    let mut slug: String = worker
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug = slug.trim_matches('-').chars().take(40).collect();
    if slug.is_empty() {
        slug = "worker".to_owned();
    }
    let suffix: u32 = rand::random();
    format!("workerSessions/{slug}-{suffix:08x}")
}
