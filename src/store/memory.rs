//! An in-memory [`Store`]: fast, and nothing survives a restart. For tests and benchmarks,
//! and, [shared](MemoryStore::shared) by several runners in one process, for testing what
//! nodes sharing a store do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use super::{
    record_matches, Changes, Choice, Claim, Claimed, Deadlines, Gates, Inserted, KeyGate,
    NodeLease, Offer, Rank, RateGate, Share, Store, StoreError, Summary, Swept, Written,
};
use crate::filter::Filter;
use crate::model::{Change, Fence, OperationId, OperationRecord, State};

/// Operations kept in process memory.
#[derive(Default)]
pub struct MemoryStore {
    // std Mutex, not tokio's: nothing awaits while it is held.
    inner: Mutex<Inner>,
    /// Shared by several runners (see [`MemoryStore::shared`]).
    shared: bool,
}

#[derive(Default)]
struct Inner {
    next_seq: i64,
    by_seq: BTreeMap<i64, OperationRecord>,
    seq_by_id: HashMap<OperationId, i64>,
    seq_by_request: HashMap<String, i64>,
    /// QUEUED operations by kind, in due order (for when the next one is due).
    queued: HashMap<String, BTreeSet<(SystemTime, i64)>>,
    /// QUEUED operations by kind, in the claim's order (see [`rank`]).
    ranked: HashMap<String, BTreeSet<(i32, SystemTime, i64)>>,
    /// Unfinished operations with a unique key, by kind and key.
    seq_by_unique: HashMap<(String, String), i64>,
    /// Queued operations with a deadline, by deadline.
    deadlines: BTreeSet<(SystemTime, i64)>,
    /// RUNNING operations.
    running: BTreeSet<i64>,
    /// Nodes' leases.
    leases: HashMap<String, SystemTime>,
    /// The change feed: each operation's `seq` at the position of its latest change.
    feed: BTreeMap<i64, i64>,
    /// Each operation's position in the feed, by `seq`.
    position: HashMap<i64, i64>,
    /// The latest feed position.
    head: i64,
    /// Declared kinds and worker sessions, by name.
    registered: HashMap<super::Registered, BTreeMap<String, Vec<u8>>>,
    /// When each operation of a kind with a start rate started (microseconds), with its
    /// key, within the rate's period.
    starts: HashMap<String, Vec<(i64, Option<String>)>>,
    /// Schedules, by id.
    schedules: BTreeMap<String, super::ScheduleRow>,
    /// The summary, kept as records change.
    tally: super::tally::Tally,
}

/// When a queued operation may start.
fn due(r: &OperationRecord) -> SystemTime {
    r.next_attempt_time.unwrap_or(r.create_time)
}

/// Where a queued operation stands in the claim's order: highest priority first, then
/// oldest due, then first inserted.
fn rank(r: &OperationRecord) -> (i32, SystemTime, i64) {
    (r.priority.saturating_neg(), due(r), r.seq)
}

/// The key under which an unfinished operation holds its unique key.
fn unique(r: &OperationRecord) -> Option<(String, String)> {
    Some((r.kind.clone(), r.unique_key.clone()?))
}

impl Inner {
    /// Stores `r` (new or changed), keeping the indexes in step with the record it replaces.
    fn put(&mut self, r: OperationRecord) {
        if let Some(old) = self.by_seq.get(&r.seq) {
            self.tally.count(old, -1);
            let (old_kind, old_due, old_state, old_deadline, old_rank) = (
                old.kind.clone(),
                due(old),
                old.state,
                old.deadline,
                rank(old),
            );
            if old_state == State::Queued {
                if let Some(q) = self.queued.get_mut(&old_kind) {
                    q.remove(&(old_due, r.seq));
                }
                if let Some(q) = self.ranked.get_mut(&old_kind) {
                    q.remove(&old_rank);
                }
            }
            if let Some(d) = old_deadline {
                self.deadlines.remove(&(d, r.seq));
            }
            self.running.remove(&r.seq);
        }
        if r.state == State::Queued {
            self.queued
                .entry(r.kind.clone())
                .or_default()
                .insert((due(&r), r.seq));
            self.ranked
                .entry(r.kind.clone())
                .or_default()
                .insert(rank(&r));
        }
        if let Some(key) = unique(&r) {
            if r.is_done() {
                if self.seq_by_unique.get(&key) == Some(&r.seq) {
                    self.seq_by_unique.remove(&key);
                }
            } else {
                self.seq_by_unique.insert(key, r.seq);
            }
        }
        if r.state == State::Running {
            self.running.insert(r.seq);
        }
        if let (Some(d), State::Queued) = (r.deadline, r.state) {
            self.deadlines.insert((d, r.seq));
        }
        self.head += 1;
        if let Some(old) = self.position.insert(r.seq, self.head) {
            self.feed.remove(&old);
        }
        self.feed.insert(self.head, r.seq);
        self.tally.count(&r, 1);
        self.by_seq.insert(r.seq, r);
    }

    /// The gates of `kind` for `claim` at `now` (see [`Gates`]); starts older than the rate's
    /// period are forgotten.
    fn gates(&mut self, claim: &Claim, kind: &str, now: i64) -> Gates {
        let keys = claim.key_limit(kind).map(|limit| {
            let mut running: HashMap<String, usize> = HashMap::new();
            for r in self.running.iter().filter_map(|seq| self.by_seq.get(seq)) {
                if let (true, Some(key)) = (r.kind == kind, &r.concurrency_key) {
                    *running.entry(key.clone()).or_default() += 1;
                }
            }
            KeyGate::new(limit, running)
        });
        let rate = claim.rate(kind).map(|rate| {
            let since = RateGate::since(rate, now);
            let starts = self.starts.entry(kind.to_owned()).or_default();
            starts.retain(|(at, _)| *at > since);
            let mut per_key: HashMap<String, usize> = HashMap::new();
            for key in starts.iter().filter_map(|(_, key)| key.clone()) {
                *per_key.entry(key).or_default() += 1;
            }
            let oldest = starts.iter().map(|(at, _)| *at).min();
            RateGate::new(rate, starts.len(), per_key, oldest)
        });
        Gates { keys, rate }
    }

    /// Refuses records whose ids are taken (as the SQL stores' unique index on `id` does).
    fn check_ids(&self, records: &[OperationRecord]) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        for r in records {
            if self.seq_by_id.contains_key(&r.id) || !seen.insert(&r.id) {
                return Err(StoreError::unavailable(format!(
                    "an operation with id {} is already stored",
                    r.id
                )));
            }
        }
        Ok(())
    }

    /// Inserts `record` unless its request id, or its kind and unique key while an
    /// operation holding them is not done, are taken: then returns that operation.
    fn insert(&mut self, mut record: OperationRecord) -> Inserted {
        let taken = record
            .request_id
            .as_ref()
            .and_then(|rid| self.seq_by_request.get(rid))
            .or_else(|| unique(&record).and_then(|key| self.seq_by_unique.get(&key)));
        if let Some(existing) = taken.and_then(|seq| self.by_seq.get(seq)) {
            return Inserted::Existing(existing.clone());
        }
        self.next_seq += 1;
        record.seq = self.next_seq;
        let seq = record.seq;
        if let Some(rid) = &record.request_id {
            self.seq_by_request.insert(rid.clone(), seq);
        }
        self.seq_by_id.insert(record.id.clone(), seq);
        self.put(record.clone());
        Inserted::New(record)
    }

    fn remove(&mut self, seq: i64) {
        if let Some(r) = self.by_seq.get(&seq).cloned() {
            let mut gone = r.clone();
            gone.state = State::Succeeded;
            gone.deadline = None;
            self.put(gone);
            if let Some(gone) = self.by_seq.remove(&seq) {
                self.tally.count(&gone, -1);
            }
            if let Some(position) = self.position.remove(&seq) {
                self.feed.remove(&position);
            }
            self.seq_by_id.remove(&r.id);
            if let Some(rid) = r.request_id {
                self.seq_by_request.remove(&rid);
            }
        }
    }
}

impl MemoryStore {
    /// An empty store, owned by one runner.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that several runners in this process share, as nodes share a database:
    /// each claims its own work under its own lease, and follows the change feed to learn
    /// what the others did.
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-update elsewhere; the maps are still consistent
        // because every update is a single insert or remove.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, record: OperationRecord) -> Result<Inserted, StoreError> {
        let mut g = self.lock();
        g.check_ids(std::slice::from_ref(&record))?;
        Ok(g.insert(record))
    }

    async fn insert_many(
        &self,
        records: Vec<OperationRecord>,
    ) -> Result<Vec<Inserted>, StoreError> {
        // Under one lock, and checked before any is stored: all or none, and nothing sees
        // some of them without the rest.
        let mut g = self.lock();
        g.check_ids(&records)?;
        Ok(records.into_iter().map(|r| g.insert(r)).collect())
    }

    async fn write(&self, record: &OperationRecord, fence: &Fence) -> Result<Written, StoreError> {
        let mut g = self.lock();
        let Some(seq) = g.seq_by_id.get(&record.id).copied() else {
            return Ok(Written::Stale(None));
        };
        let Some(stored) = g.by_seq.get(&seq).cloned() else {
            return Ok(Written::Stale(None));
        };
        if !fence.admits(&stored) {
            return Ok(Written::Stale(Some(Box::new(stored))));
        }
        let next = fence.written(&stored, record.clone());
        let written = Written::Applied {
            version: next.version,
            requested_cancellation: next.requested_cancellation,
        };
        g.put(next);
        Ok(written)
    }

    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        let mut g = self.lock();
        let (kinds, total) = if self.shared {
            // Under the lock: no other claim can take the same room meanwhile.
            let mut running: HashMap<String, usize> = HashMap::new();
            for r in g.running.iter().filter_map(|seq| g.by_seq.get(seq)) {
                *running.entry(r.kind.clone()).or_default() += 1;
            }
            claim.limits.narrow(&claim.kinds, claim.total, &running)
        } else {
            (claim.kinds.clone(), claim.total)
        };
        let now = super::micros(claim.now);
        let mut choice = Choice::default();
        for (kind, room) in &kinds {
            let mut share = Share::new(g.gates(claim, kind, now), *room, now);
            let (Some(q), Some(ranked)) = (g.queued.get(kind), g.ranked.get(kind)) else {
                continue;
            };
            for (less_urgent, due, seq) in ranked.iter().filter(|(_, d, _)| *d <= claim.now) {
                if share.is_full() {
                    break;
                }
                let key = g.by_seq.get(seq).and_then(|r| r.concurrency_key.as_deref());
                match share.offer(key) {
                    Offer::Taken => {
                        choice.pick(
                            Rank::new(less_urgent.saturating_neg(), super::micros(*due), *seq),
                            *seq,
                        );
                    }
                    Offer::Passed => {}
                    Offer::Closed => break,
                }
            }
            choice.close(kind, &share);
            if let Some((later, _)) = q.range((claim.now, i64::MAX)..).next() {
                if *later > claim.now {
                    choice.due_at(super::micros(*later));
                }
            }
        }
        let chosen = choice.first(total);
        let mut operations = Vec::with_capacity(chosen.start.len());
        for (_, seq) in chosen.start {
            let Some(queued) = g.by_seq.get(&seq) else {
                continue;
            };
            let Ok(started) = queued.apply(
                Change::Start {
                    node: claim.node.clone(),
                },
                claim.now,
            ) else {
                continue;
            };
            if claim.rate(&started.kind).is_some() {
                g.starts
                    .entry(started.kind.clone())
                    .or_default()
                    .push((now, started.concurrency_key.clone()));
            }
            g.put(started.clone());
            operations.push(started);
        }
        Ok(Claimed {
            operations,
            next_due: chosen.next_due.map(super::from_micros),
            held: chosen.held,
        })
    }

    async fn heartbeat(&self, node: &str, lease_until: SystemTime) -> Result<(), StoreError> {
        let mut g = self.lock();
        let before = super::forget_before(super::micros(lease_until));
        let busy: std::collections::HashSet<String> = g
            .running
            .iter()
            .filter_map(|seq| g.by_seq.get(seq)?.owner.clone())
            .collect();
        g.leases
            .retain(|id, until| super::micros(*until) >= before || busy.contains(id));
        g.leases.insert(node.to_owned(), lease_until);
        Ok(())
    }

    async fn orphans(
        &self,
        node: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let g = self.lock();
        Ok(g.running
            .iter()
            .filter_map(|seq| g.by_seq.get(seq))
            .filter(|r| {
                let owner = r.owner.as_deref().unwrap_or_default();
                owner != node && g.leases.get(owner).is_none_or(|until| *until < now)
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn deadlines(&self, now: SystemTime, limit: usize) -> Result<Deadlines, StoreError> {
        let g = self.lock();
        let passed = g
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .take(limit)
            .filter_map(|(_, seq)| g.by_seq.get(seq).cloned())
            .collect();
        let next = g.deadlines.iter().map(|(d, _)| *d).find(|d| *d > now);
        Ok(Deadlines { passed, next })
    }

    async fn get(&self, id: &OperationId) -> Result<Option<OperationRecord>, StoreError> {
        let g = self.lock();
        Ok(g.seq_by_id.get(id).and_then(|s| g.by_seq.get(s)).cloned())
    }

    async fn find_request(&self, request_id: &str) -> Result<Option<OperationRecord>, StoreError> {
        let g = self.lock();
        Ok(g.seq_by_request
            .get(request_id)
            .and_then(|s| g.by_seq.get(s))
            .cloned())
    }

    async fn delete_done(&self, id: &OperationId) -> Result<Option<bool>, StoreError> {
        let mut g = self.lock();
        let Some(seq) = g.seq_by_id.get(id).copied() else {
            return Ok(None);
        };
        let done = g.by_seq.get(&seq).is_some_and(OperationRecord::is_done);
        if !done {
            return Ok(Some(false));
        }
        g.remove(seq);
        Ok(Some(true))
    }

    async fn list(
        &self,
        after: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let g = self.lock();
        Ok(g.by_seq
            .range(after.saturating_add(1)..)
            .map(|(_, r)| r)
            .filter(|r| record_matches(filter, r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn list_newest(
        &self,
        before: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        let g = self.lock();
        Ok(g.by_seq
            .range(..before)
            .rev()
            .map(|(_, r)| r)
            .filter(|r| record_matches(filter, r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn summarize(
        &self,
        since: SystemTime,
        bucket: std::time::Duration,
    ) -> Result<Summary, StoreError> {
        self.lock().tally.summary(since, bucket)
    }

    async fn sweep(
        &self,
        finished_before: SystemTime,
        keep_at_most: Option<usize>,
    ) -> Result<Swept, StoreError> {
        let mut g = self.lock();
        let mut finished: Vec<(SystemTime, i64)> = g
            .by_seq
            .values()
            .filter(|r| r.is_done())
            .map(|r| (r.end_time.unwrap_or(r.update_time), r.seq))
            .collect();
        finished.sort();
        let expired = finished.partition_point(|(end, _)| *end < finished_before);
        let excess = keep_at_most.map_or(0, |keep| finished.len().saturating_sub(keep));
        let remove = expired.max(excess);
        for (_, seq) in finished.drain(..remove) {
            g.remove(seq);
        }
        g.tally.forget_old_ends();
        Ok(Swept {
            deleted: remove,
            finished: keep_at_most.map(|_| finished.len()),
            oldest_finished: finished.first().map(|(end, _)| *end),
        })
    }

    async fn queued(&self) -> Result<HashMap<String, usize>, StoreError> {
        let g = self.lock();
        Ok(g.queued
            .iter()
            .filter(|(_, due)| !due.is_empty())
            .map(|(kind, due)| (kind.clone(), due.len()))
            .collect())
    }

    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError> {
        let g = self.lock();
        Ok(g.by_seq
            .values()
            .filter(|r| !r.is_done())
            .cloned()
            .collect())
    }

    fn is_exclusive(&self) -> bool {
        !self.shared
    }

    async fn register(
        &self,
        what: super::Registered,
        name: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.lock()
            .registered
            .entry(what)
            .or_default()
            .insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    async fn unregister(&self, what: super::Registered, name: &str) -> Result<(), StoreError> {
        if let Some(kept) = self.lock().registered.get_mut(&what) {
            kept.remove(name);
        }
        Ok(())
    }

    async fn registered(
        &self,
        what: super::Registered,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .registered
            .get(&what)
            .map(|kept| kept.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn put_schedule(
        &self,
        row: &super::ScheduleRow,
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let stored = g.schedules.get(&row.id).map(|s| s.version);
        if stored != expected {
            return Ok(false);
        }
        g.schedules.insert(row.id.clone(), row.clone());
        Ok(true)
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().schedules.remove(id).is_some())
    }

    async fn schedule(&self, id: &str) -> Result<Option<super::ScheduleRow>, StoreError> {
        Ok(self.lock().schedules.get(id).cloned())
    }

    async fn schedules(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<super::ScheduleRow>, StoreError> {
        use std::ops::Bound;
        Ok(self
            .lock()
            .schedules
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(_, row)| row.clone())
            .collect())
    }

    async fn due_schedules(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<super::DueSchedules, StoreError> {
        let g = self.lock();
        let mut due: Vec<&super::ScheduleRow> = g
            .schedules
            .values()
            .filter(|row| row.wake.is_some_and(|wake| wake <= now))
            .collect();
        due.sort_by_key(|row| row.wake);
        let next_wake = g
            .schedules
            .values()
            .filter_map(|row| row.wake)
            .filter(|wake| *wake > now)
            .min();
        Ok(super::DueSchedules {
            due: due.into_iter().take(limit).cloned().collect(),
            next_wake,
        })
    }

    async fn nodes(&self) -> Result<Vec<NodeLease>, StoreError> {
        let g = self.lock();
        let mut nodes: BTreeMap<String, NodeLease> = g
            .leases
            .iter()
            .map(|(id, until)| {
                let lease = NodeLease {
                    id: id.clone(),
                    lease_until: *until,
                    running: 0,
                };
                (id.clone(), lease)
            })
            .collect();
        for r in g.running.iter().filter_map(|seq| g.by_seq.get(seq)) {
            let owner = r.owner.clone().unwrap_or_default();
            nodes
                .entry(owner.clone())
                .or_insert(NodeLease {
                    id: owner,
                    lease_until: SystemTime::UNIX_EPOCH,
                    running: 0,
                })
                .running += 1;
        }
        Ok(nodes.into_values().collect())
    }

    async fn changes(&self, after: Option<i64>, limit: usize) -> Result<Changes, StoreError> {
        let g = self.lock();
        let Some(after) = after else {
            return Ok(Changes {
                operations: Vec::new(),
                next: g.head,
            });
        };
        let mut next = after;
        let mut operations = Vec::new();
        for (position, seq) in g.feed.range(after.saturating_add(1)..).take(limit) {
            next = *position;
            operations.extend(g.by_seq.get(seq).cloned());
        }
        Ok(Changes { operations, next })
    }

    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The in-memory store keeps the store contract: alone, and shared, as a store several
    // nodes share (feed included).
    crate::store_conformance_tests!(mod conforms, #[tokio::test], make: || async { MemoryStore::new() });
    crate::store_conformance_tests!(
        mod conforms_shared,
        #[tokio::test],
        make: || async { MemoryStore::shared() },
        feed
    );
}
