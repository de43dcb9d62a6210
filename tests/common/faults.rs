//! A store for fault injection: it passes every call to a real store, counts writes, and can
//! be told to refuse writes (as a full disk does) or reads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use oprun::filter::Filter;
use oprun::model::{OperationId, OperationRecord};
use oprun::store::{Inserted, Store, StoreError, Swept};

/// A store over `inner` whose writes or reads can be refused at will.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    /// Refuse inserts, updates, deletes and sweeps with UNAVAILABLE, as a full disk does.
    pub refuse_writes: AtomicBool,
    /// Refuse reads with UNAVAILABLE.
    pub refuse_reads: AtomicBool,
    /// Updates asked for (taken or refused).
    pub updates: AtomicUsize,
    /// Writes refused.
    pub refused: AtomicUsize,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            refuse_writes: AtomicBool::new(false),
            refuse_reads: AtomicBool::new(false),
            updates: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        })
    }

    fn write(&self) -> Result<(), StoreError> {
        if self.refuse_writes.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable(
                "the store is full (simulated: no space left on its disk)".into(),
            ));
        }
        Ok(())
    }

    fn read(&self) -> Result<(), StoreError> {
        if self.refuse_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("disk I/O error (simulated)".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn insert(&self, r: OperationRecord) -> Result<Inserted, StoreError> {
        self.write()?;
        self.inner.insert(r).await
    }
    async fn update(&self, r: &OperationRecord) -> Result<(), StoreError> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.write()?;
        self.inner.update(r).await
    }
    async fn get(&self, id: &OperationId) -> Result<Option<OperationRecord>, StoreError> {
        self.read()?;
        self.inner.get(id).await
    }
    async fn find_request(&self, r: &str) -> Result<Option<OperationRecord>, StoreError> {
        self.read()?;
        self.inner.find_request(r).await
    }
    async fn delete_done(&self, id: &OperationId) -> Result<Option<bool>, StoreError> {
        self.write()?;
        self.inner.delete_done(id).await
    }
    async fn list(
        &self,
        after: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        self.read()?;
        self.inner.list(after, filter, limit).await
    }
    async fn sweep(&self, before: SystemTime, keep: Option<usize>) -> Result<Swept, StoreError> {
        self.write()?;
        self.inner.sweep(before, keep).await
    }
    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError> {
        self.read()?;
        self.inner.unfinished().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}
