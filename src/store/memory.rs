//! An in-memory [`Store`]: fast, and nothing survives a restart. For tests and benchmarks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use std::time::SystemTime;

use super::{record_matches, Inserted, Store, StoreError, Swept};
use crate::filter::Filter;
use crate::model::{OperationId, OperationRecord};

/// Operations kept in process memory.
#[derive(Default)]
pub struct MemoryStore {
    // std Mutex, not tokio's: nothing awaits while it is held.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_seq: i64,
    by_seq: BTreeMap<i64, OperationRecord>,
    seq_by_id: HashMap<OperationId, i64>,
    seq_by_request: HashMap<String, i64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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
    async fn insert(&self, mut record: OperationRecord) -> Result<Inserted, StoreError> {
        let mut g = self.lock();
        if let Some(rid) = &record.request_id {
            if let Some(seq) = g.seq_by_request.get(rid) {
                if let Some(existing) = g.by_seq.get(seq) {
                    return Ok(Inserted::Existing(existing.clone()));
                }
            }
        }
        g.next_seq += 1;
        record.seq = g.next_seq;
        let seq = record.seq;
        if let Some(rid) = &record.request_id {
            g.seq_by_request.insert(rid.clone(), seq);
        }
        g.seq_by_id.insert(record.id.clone(), seq);
        g.by_seq.insert(seq, record.clone());
        Ok(Inserted::New(record))
    }

    async fn update(&self, record: &OperationRecord) -> Result<(), StoreError> {
        let mut g = self.lock();
        if let Some(seq) = g.seq_by_id.get(&record.id).copied() {
            let mut r = record.clone();
            r.seq = seq;
            g.by_seq.insert(seq, r);
        }
        Ok(())
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
        if let Some(r) = g.by_seq.remove(&seq) {
            if let Some(rid) = r.request_id {
                g.seq_by_request.remove(&rid);
            }
        }
        g.seq_by_id.remove(id);
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
            if let Some(r) = g.by_seq.remove(&seq) {
                g.seq_by_id.remove(&r.id);
                if let Some(rid) = r.request_id {
                    g.seq_by_request.remove(&rid);
                }
            }
        }
        Ok(Swept {
            deleted: remove,
            finished: finished.len(),
            oldest_finished: finished.first().map(|(end, _)| *end),
        })
    }

    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError> {
        let g = self.lock();
        Ok(g.by_seq
            .values()
            .filter(|r| !r.is_done())
            .cloned()
            .collect())
    }

    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory store keeps the store contract.
    #[tokio::test]
    async fn conforms() {
        crate::store::conformance::run_all(|| async { MemoryStore::new() }).await;
    }
}
