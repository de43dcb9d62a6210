//! What a runner is started with: [`RunnerConfig`], its defaults and setters, and the node
//! name it takes by default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::clock::{Clock, SystemClock};

/// How the runner schedules work: `RunnerConfig::default()` and its setters, e.g.
/// `RunnerConfig::default().max_running(8).cancel_grace(Duration::from_secs(5))`.
#[derive(Clone)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// Most operations running at once on this node, over all kinds.
    pub max_running: usize,
    /// Per-kind limits that override what a kind declares.
    pub kind_limits: HashMap<String, usize>,
    /// Per-kind limits per concurrency key that override what a kind declares (see
    /// [`TaskOptions::max_per_key`](crate::task::TaskOptions::max_per_key)).
    pub kind_key_limits: HashMap<String, usize>,
    /// Start rates of kinds, over every node (`--kind-rate KIND=N/PERIOD[/key]`): one per
    /// kind, over all its work or per concurrency key.
    pub kind_rates: Vec<(String, crate::store::Rate)>,
    /// Most operations waiting at once (queued, delayed or backing off), over all kinds;
    /// past it SubmitTask waits up to `queue_full_wait` for room, then answers
    /// RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// How long SubmitTask waits for room in a full queue (global or its kind's) before it
    /// answers RESOURCE_EXHAUSTED: a client submitting faster than the work runs is slowed to
    /// the pace of the work instead of refused. Zero refuses at once.
    pub queue_full_wait: Duration,
    /// Largest accepted input message, in bytes.
    pub max_input_bytes: usize,
    /// How long a worker may ignore a cancel before it is aborted.
    pub cancel_grace: Duration,
    /// Least time between two progress writes of one operation.
    pub progress_interval: Duration,
    /// The longest a WaitOperation call waits.
    pub max_wait: Duration,
    /// How long finished operations are kept before the sweeper removes them.
    pub retention: Duration,
    /// At most this many finished operations are kept (the oldest go first).
    pub max_retained: Option<usize>,
    /// This node's name in the store (owner of what it runs); by default the host's name and
    /// a short random suffix.
    pub node: String,
    /// On a store several nodes share: the most operations running at once over all of them
    /// (`None`: each node's `max_running` is the only bound). Per-kind limits always hold
    /// over all nodes of a shared store.
    pub cluster_max_running: Option<usize>,
    /// How long this node's hold on what it runs lasts without a renewal (renewed every third
    /// of it). Another node takes the work over once it ends.
    pub lease: Duration,
    /// How often a node that shares its store with other nodes reads the store's change feed
    /// (what the others did: an end a Wait here waits for, a cancel request for work running
    /// here). Unused on an exclusive store.
    pub follow_interval: Duration,
    /// How often a node that shares its store counts the queued operations of all nodes,
    /// which `max_queued` (and each kind's bound) are checked against. Unused on an
    /// exclusive store.
    pub queue_recount: Duration,
    /// The clock that times and timestamps read.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("max_running", &self.max_running)
            .field("kind_limits", &self.kind_limits)
            .field("kind_key_limits", &self.kind_key_limits)
            .field("kind_rates", &self.kind_rates)
            .field("max_queued", &self.max_queued)
            .field("queue_full_wait", &self.queue_full_wait)
            .field("max_input_bytes", &self.max_input_bytes)
            .field("cancel_grace", &self.cancel_grace)
            .field("progress_interval", &self.progress_interval)
            .field("max_wait", &self.max_wait)
            .field("retention", &self.retention)
            .field("max_retained", &self.max_retained)
            .field("cluster_max_running", &self.cluster_max_running)
            .field("node", &self.node)
            .field("lease", &self.lease)
            .field("follow_interval", &self.follow_interval)
            .field("queue_recount", &self.queue_recount)
            .finish_non_exhaustive()
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_running: 64,
            kind_limits: HashMap::new(),
            kind_key_limits: HashMap::new(),
            kind_rates: Vec::new(),
            max_queued: 100_000,
            queue_full_wait: Duration::from_secs(5),
            max_input_bytes: 1 << 20,
            cancel_grace: Duration::from_secs(30),
            progress_interval: Duration::from_millis(250),
            max_wait: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 24 * 3600),
            max_retained: None,
            node: default_node(),
            cluster_max_running: None,
            lease: Duration::from_secs(30),
            follow_interval: Duration::from_millis(100),
            queue_recount: Duration::from_millis(500),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The host's name and a short random suffix (so that two processes on one host differ).
pub fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "oprun".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{:06x}", suffix & 0x00ff_ffff)
}

setters!(RunnerConfig {
    max_running: usize,
    kind_limits: HashMap<String, usize>,
    kind_key_limits: HashMap<String, usize>,
    kind_rates: Vec<(String, crate::store::Rate)>,
    max_queued: usize,
    queue_full_wait: Duration,
    max_input_bytes: usize,
    cancel_grace: Duration,
    progress_interval: Duration,
    max_wait: Duration,
    retention: Duration,
    node: String,
    lease: Duration,
    follow_interval: Duration,
    queue_recount: Duration,
    clock: Arc<dyn Clock>,
} optional {
    max_retained: usize,
    cluster_max_running: usize,
});
