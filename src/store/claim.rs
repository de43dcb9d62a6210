//! What a node asks of [`Store::claim`](super::Store::claim) and what it answers, and the
//! rules every backend claims by: the running limits over all nodes, each kind's gates (a
//! limit per concurrency key, a start rate), and the claim's order over all kinds.

use std::time::SystemTime;

use crate::model::OperationRecord;

/// What a node asks of [`Store::claim`](super::Store::claim).
#[derive(Debug, Clone)]
pub struct Claim {
    /// The node that will run what it claims.
    pub node: String,
    /// The kinds the node runs, each with how many more of it the node may start now.
    pub kinds: Vec<(String, usize)>,
    /// How many more the node may start now, over all kinds.
    pub total: usize,
    /// Operations due at or before this time may start, and start at it (a store whose
    /// claims wait for each other's turn, under a limit over the cluster, dates them when the
    /// turn came: what another node ended meanwhile never seems to overlap them).
    pub now: SystemTime,
    /// The running limits that hold over every node of a shared store: how many of each kind
    /// may run at once, and how many in all. A shared store counts what runs on every node
    /// and claims no more than these allow (claims serialised so that two nodes cannot both
    /// take the last room). An exclusive store ignores them: its one node's room says it.
    pub limits: RunningLimits,
    /// The kinds whose operations with one concurrency key may run at most this many at once
    /// (on every store: counted over all that runs, and what the claim starts). Queued work
    /// of a key at its limit is passed over, not waited for: the work behind it starts.
    pub key_limits: Vec<(String, usize)>,
    /// The kinds whose starts are limited per period, over every node: the store keeps when
    /// each start of such a kind was, and a claim starts no more than the rate leaves in the
    /// period ending at `now` (per concurrency key, for a rate per key). Work over the rate
    /// waits: [`Claimed::held`] names the kind, and [`Claimed::next_due`] says when the rate
    /// lets more start.
    pub rates: Vec<(String, Rate)>,
}

/// How many operations of a kind may start per period (see [`Claim::rates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed in any period.
    pub starts: usize,
    /// The period, e.g. a second.
    pub period: std::time::Duration,
    /// Whether the rate holds for each concurrency key apart (operations without a key are
    /// then not limited).
    pub per_key: bool,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}s{}",
            self.starts,
            self.period.as_secs_f64(),
            if self.per_key { " per key" } else { "" }
        )
    }
}

/// Where a claim under a [`Rate`] stands for one kind: the starts the rate still allows (in
/// all, or per key) and when the oldest start in the period leaves it.
#[derive(Debug)]
pub(crate) struct RateGate {
    /// Starts left in the period (for a rate over the whole kind).
    left: usize,
    /// Starts left per key (for a rate per key).
    keys: Option<KeyGate>,
    /// When the oldest start counted leaves the period (microseconds), if one is counted.
    frees_at: Option<i64>,
    period: i64,
    /// Whether the rate held back work this claim.
    pub(crate) held: bool,
}

impl RateGate {
    /// A gate for `rate` given the starts in the period now ending: per key (`(key, n)`, for a
    /// rate per key) or in all (`total`), and the oldest of them (microseconds).
    pub(crate) fn new(
        rate: Rate,
        total: usize,
        per_key: impl IntoIterator<Item = (String, usize)>,
        oldest: Option<i64>,
    ) -> Self {
        let period = i64::try_from(rate.period.as_micros()).unwrap_or(i64::MAX);
        Self {
            left: if rate.per_key {
                usize::MAX
            } else {
                rate.starts.saturating_sub(total)
            },
            keys: rate.per_key.then(|| KeyGate::new(rate.starts, per_key)),
            frees_at: oldest.map(|at| at.saturating_add(period)),
            period,
            held: false,
        }
    }

    /// Whether one more start (of `key`) is within the rate; if not, the rate holds work.
    pub(crate) fn allows(&mut self, key: Option<&str>) -> bool {
        let allowed = match &self.keys {
            Some(keys) => keys.allows(key),
            None => self.left > 0,
        };
        self.held |= !allowed;
        allowed
    }

    /// Counts a start (of `key`) made at `now` (microseconds).
    pub(crate) fn take(&mut self, key: Option<&str>, now: i64) {
        match &mut self.keys {
            Some(keys) => keys.take(key),
            None => self.left = self.left.saturating_sub(1),
        }
        self.frees_at.get_or_insert(now.saturating_add(self.period));
    }

    /// When more may start, if the rate held work back (microseconds).
    pub(crate) fn next(&self) -> Option<i64> {
        self.held.then_some(self.frees_at).flatten()
    }

    /// The start of the period ending at `now` (microseconds): starts at or before it no
    /// longer count.
    pub(crate) fn since(rate: Rate, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(rate.period.as_micros()).unwrap_or(i64::MAX))
    }
}

impl Claim {
    /// The limit per concurrency key of `kind`, if it has one.
    pub(crate) fn key_limit(&self, kind: &str) -> Option<usize> {
        self.key_limits
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, n)| *n)
    }

    /// The start rate of `kind`, if it has one.
    pub(crate) fn rate(&self, kind: &str) -> Option<Rate> {
        self.rates.iter().find(|(k, _)| k == kind).map(|(_, r)| *r)
    }

    /// Whether a claim of `kind` must pass over some of its work (a limit per key or a
    /// rate): its rows are read one by one rather than taken in order.
    #[cfg(feature = "postgres")]
    pub(crate) fn gated(&self, kind: &str) -> bool {
        self.key_limit(kind).is_some() || self.rate(kind).is_some()
    }
}

/// The check of a claim against a kind's limit per concurrency key: what runs of each key,
/// and what the claim took so far.
#[derive(Debug, Default)]
pub(crate) struct KeyGate {
    limit: usize,
    busy: std::collections::HashMap<String, usize>,
}

impl KeyGate {
    /// A gate for a kind with `limit` per key, given how many of each key run now.
    pub(crate) fn new(limit: usize, running: impl IntoIterator<Item = (String, usize)>) -> Self {
        Self {
            limit,
            busy: running.into_iter().collect(),
        }
    }

    /// Whether an operation with `key` may start (without counting it).
    pub(crate) fn allows(&self, key: Option<&str>) -> bool {
        key.is_none_or(|key| self.busy.get(key).copied().unwrap_or(0) < self.limit)
    }

    /// Counts an operation with `key` as started.
    pub(crate) fn take(&mut self, key: Option<&str>) {
        if let Some(key) = key {
            *self.busy.entry(key.to_owned()).or_default() += 1;
        }
    }
}

/// The gates a claim passes each due operation of a kind through: its limit per concurrency
/// key and its start rate, either or both.
#[derive(Debug, Default)]
pub(crate) struct Gates {
    pub(crate) keys: Option<KeyGate>,
    pub(crate) rate: Option<RateGate>,
}

impl Gates {
    /// Whether an operation with `key` may start now; if so, it is counted (as running, and
    /// as a start in the rate's period).
    pub(crate) fn admit(&mut self, key: Option<&str>, now: i64) -> bool {
        // A rate with no start left holds this work back, whatever its key (so the claim
        // reports it held, and when the rate frees).
        if self.exhausted() {
            if let Some(g) = &mut self.rate {
                g.allows(key);
            }
            return false;
        }
        // A key at its running limit is passed over before the rate is asked: that work does
        // not wait for the rate.
        if !self.keys.as_ref().is_none_or(|g| g.allows(key)) {
            return false;
        }
        if !self.rate.as_mut().is_none_or(|g| g.allows(key)) {
            return false;
        }
        if let Some(g) = &mut self.keys {
            g.take(key);
        }
        if let Some(g) = &mut self.rate {
            g.take(key, now);
        }
        true
    }

    /// Whether the rate leaves no start at all for work without a key or of any key (for a
    /// rate over the whole kind): nothing more of the kind can start in this claim.
    pub(crate) fn exhausted(&self) -> bool {
        self.rate
            .as_ref()
            .is_some_and(|g| g.keys.is_none() && g.left == 0)
    }
}

/// Running limits over a whole cluster (see [`Claim::limits`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningLimits {
    /// The most operations of a kind running at once; a kind not listed has no limit of its
    /// own.
    pub kinds: Vec<(String, usize)>,
    /// The most operations running at once, over all kinds (`None`: no limit).
    pub total: Option<usize>,
}

impl RunningLimits {
    /// No limit beyond each node's own room.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether there is no limit beyond each node's own room.
    pub fn is_none(&self) -> bool {
        self.kinds.is_empty() && self.total.is_none()
    }

    /// Narrows a node's `room` (per kind, and in all) to what the limits leave, given what
    /// runs over the cluster now (`running`: per kind).
    pub fn narrow(
        &self,
        room: &[(String, usize)],
        total: usize,
        running: &std::collections::HashMap<String, usize>,
    ) -> (Vec<(String, usize)>, usize) {
        let all: usize = running.values().sum();
        let total = match self.total {
            Some(limit) => total.min(limit.saturating_sub(all)),
            None => total,
        };
        let kinds = room
            .iter()
            .map(|(kind, n)| {
                let limit = self
                    .kinds
                    .iter()
                    .find(|(k, _)| k == kind)
                    .map_or(usize::MAX, |(_, l)| *l);
                let busy = running.get(kind).copied().unwrap_or(0);
                (kind.clone(), (*n).min(limit.saturating_sub(busy)))
            })
            .collect();
        (kinds, total)
    }
}

/// What [`Store::claim`](super::Store::claim) started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claimed {
    /// The kinds whose start rate held due work back in this claim (see [`Claim::rates`]).
    pub held: Vec<String>,
    /// The operations now RUNNING on the node (version one higher, `owner` the node,
    /// `start_time` the claim's `now`), oldest due first.
    pub operations: Vec<OperationRecord>,
    /// When the next queued operation of the claimed kinds becomes due, if one waits for its
    /// time (a delayed start or a retry's backoff).
    pub next_due: Option<SystemTime>,
}

/// A due operation's place in a claim's order over all kinds: highest priority first, then
/// oldest due (microseconds), then first inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    /// The priority, negated: lower sorts first.
    less_urgent: i64,
    due: i64,
    seq: i64,
}

impl Rank {
    pub(crate) fn new(priority: i32, due: i64, seq: i64) -> Self {
        Self {
            less_urgent: -i64::from(priority),
            due,
            seq,
        }
    }
}

/// What one due operation offered to a kind's [`Share`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// It starts (counted against the kind's gates).
    Taken,
    /// Its key is at its limit, or the rate holds it: the work behind it may start.
    Passed,
    /// The kind's rate leaves no start at all: nothing more of the kind starts.
    Closed,
}

/// A kind's share of a claim: its due work offered in the claim's order, taken through its
/// gates (a limit per concurrency key, a start rate) up to its room. What every backend does
/// with each due row of a kind.
#[derive(Debug)]
pub(crate) struct Share {
    gates: Gates,
    room: usize,
    taken: usize,
    now: i64,
}

impl Share {
    /// A share of `room` operations through `gates`, at `now` (microseconds).
    pub(crate) fn new(gates: Gates, room: usize, now: i64) -> Self {
        Self {
            gates,
            room,
            taken: 0,
            now,
        }
    }

    /// Whether the kind's room is taken: no more rows need be read.
    pub(crate) fn is_full(&self) -> bool {
        self.taken >= self.room
    }

    /// Offers the kind's next due operation, of concurrency `key`.
    pub(crate) fn offer(&mut self, key: Option<&str>) -> Offer {
        if self.is_full() {
            return Offer::Closed;
        }
        if self.gates.admit(key, self.now) {
            self.taken += 1;
            Offer::Taken
        } else if self.gates.exhausted() {
            Offer::Closed
        } else {
            Offer::Passed
        }
    }
}

/// A claim's choice over all kinds: what each kind's [`Share`] took, each with its
/// [`Rank`]; the first of them, up to the claim's total, start.
#[derive(Debug)]
pub(crate) struct Choice<T> {
    picked: Vec<(Rank, T)>,
    next_due: Option<i64>,
    held: Vec<String>,
}

impl<T> Default for Choice<T> {
    fn default() -> Self {
        Self {
            picked: Vec::new(),
            next_due: None,
            held: Vec::new(),
        }
    }
}

/// What a [`Choice`] chose: the operations to start in the claim's order (each with its
/// rank), when the next due one of the claim's kinds becomes due or a rate lets more start
/// (microseconds), and the kinds a rate held back.
pub(crate) struct Chosen<T> {
    pub(crate) start: Vec<(Rank, T)>,
    pub(crate) next_due: Option<i64>,
    pub(crate) held: Vec<String>,
}

impl<T> Choice<T> {
    /// Something a kind's share took.
    pub(crate) fn pick(&mut self, rank: Rank, item: T) {
        self.picked.push((rank, item));
    }

    /// A queued operation of the claim's kinds becomes due at `at` (microseconds).
    pub(crate) fn due_at(&mut self, at: i64) {
        self.next_due = Some(self.next_due.map_or(at, |n| n.min(at)));
    }

    /// Ends `kind`'s share: a rate that held its work back names the kind, and says when more
    /// may start.
    pub(crate) fn close(&mut self, kind: &str, share: &Share) {
        if let Some(at) = share.gates.rate.as_ref().and_then(RateGate::next) {
            self.held.push(kind.to_owned());
            self.due_at(at);
        }
    }

    /// The first `total` picked over all kinds, in the claim's order.
    pub(crate) fn first(mut self, total: usize) -> Chosen<T> {
        self.picked.sort_unstable_by_key(|(rank, _)| *rank);
        self.picked.truncate(total);
        Chosen {
            start: self.picked,
            next_due: self.next_due,
            held: self.held,
        }
    }
}
