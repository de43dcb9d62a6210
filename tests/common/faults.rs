//! A store for fault injection: it passes every call to a real store, counts writes, and can
//! be told to refuse writes (as a full disk does) or reads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use oprun::filter::Filter;
use oprun::model::{Fence, OperationId, OperationRecord};
use oprun::store::{
    Changes, Claim, Claimed, Deadlines, Inserted, Store, StoreError, Swept, Written,
};
use tokio::sync::Notify;

/// Picks the writes to hold.
type Picker = Box<dyn Fn(&OperationRecord) -> bool + Send + Sync>;

/// A write picked to hold: the picker, and the two signals of a held one (reached, release).
type Held = (Picker, Arc<Notify>, Arc<Notify>);

/// Which writes to hold, if any.
#[derive(Default)]
struct Hold(Mutex<Option<Held>>);

impl Hold {
    /// From now on, holds the writes `when` picks. Returns (reached, release).
    fn set(
        &self,
        when: impl Fn(&OperationRecord) -> bool + Send + Sync + 'static,
    ) -> (Arc<Notify>, Arc<Notify>) {
        let (reached, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *self.0.lock().unwrap() =
            Some((Box::new(when), Arc::clone(&reached), Arc::clone(&release)));
        (reached, release)
    }

    /// The signals for a write of `r`, when it is one to hold.
    fn picks(&self, r: &OperationRecord) -> Option<(Arc<Notify>, Arc<Notify>)> {
        let hold = self.0.lock().unwrap();
        hold.as_ref()
            .filter(|(when, _, _)| when(r))
            .map(|(_, reached, release)| (Arc::clone(reached), Arc::clone(release)))
    }
}

/// A store over `inner` whose writes or reads can be refused at will, or held.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    /// Refuse inserts, updates, deletes and sweeps with UNAVAILABLE, as a full disk does.
    pub refuse_writes: AtomicBool,
    /// Refuse claims (the QUEUED → RUNNING writes) with UNAVAILABLE, taking submissions.
    pub refuse_claims: AtomicBool,
    /// Refuse reads with UNAVAILABLE.
    pub refuse_reads: AtomicBool,
    /// Lease renewals and rescues never answer (a silent network) while set.
    pub hang_leases: AtomicBool,
    /// Rescues (the search for work of expired leases) never answer while set.
    pub hang_rescues: AtomicBool,
    /// Reports the store shared (not exclusive), as one that several nodes use: no claim
    /// is left out for what this node counts, and no submission is stored started.
    pub shared: AtomicBool,
    /// Writes of a change asked for (taken or refused).
    pub updates: AtomicUsize,
    /// Writes refused.
    pub refused: AtomicUsize,
    hold: Hold,
    hold_replies: Hold,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            refuse_writes: AtomicBool::new(false),
            refuse_claims: AtomicBool::new(false),
            refuse_reads: AtomicBool::new(false),
            hang_leases: AtomicBool::new(false),
            hang_rescues: AtomicBool::new(false),
            shared: AtomicBool::new(false),
            updates: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            hold: Hold::default(),
            hold_replies: Hold::default(),
        })
    }

    /// From now on, a write (or an insert) of a record `when` picks waits: `reached` is
    /// notified, then the write waits for `release`. Returns (reached, release).
    pub fn hold_writes(
        &self,
        when: impl Fn(&OperationRecord) -> bool + Send + Sync + 'static,
    ) -> (Arc<Notify>, Arc<Notify>) {
        self.hold.set(when)
    }

    /// From now on, a write of a record `when` picks is made at once (on a task of its own,
    /// whatever becomes of the caller), then its answer waits: `reached` is notified once the
    /// store took it, and the caller gets the answer after `release`. Returns (reached,
    /// release).
    pub fn hold_replies(
        &self,
        when: impl Fn(&OperationRecord) -> bool + Send + Sync + 'static,
    ) -> (Arc<Notify>, Arc<Notify>) {
        self.hold_replies.set(when)
    }

    async fn hang_if_leases_hang(&self) {
        if self.hang_leases.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn refuse_write(&self) -> Result<(), StoreError> {
        self.refuse_if(
            &self.refuse_writes,
            "the store is full (simulated: no space left on its disk)",
        )
    }

    /// Refuses with UNAVAILABLE (counted in `refused`) while `switch` is on.
    fn refuse_if(&self, switch: &AtomicBool, why: &str) -> Result<(), StoreError> {
        if switch.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::unavailable(why));
        }
        Ok(())
    }

    fn read(&self) -> Result<(), StoreError> {
        if self.refuse_reads.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("disk I/O error (simulated)"));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn insert(&self, r: OperationRecord) -> Result<Inserted, StoreError> {
        self.refuse_write()?;
        if let Some((reached, release)) = self.hold.picks(&r) {
            reached.notify_one();
            release.notified().await;
        }
        self.inner.insert(r).await
    }
    async fn insert_many(&self, r: Vec<OperationRecord>) -> Result<Vec<Inserted>, StoreError> {
        self.refuse_write()?;
        self.inner.insert_many(r).await
    }
    async fn write(&self, r: &OperationRecord, fence: &Fence) -> Result<Written, StoreError> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.refuse_write()?;
        if let Some((reached, release)) = self.hold.picks(r) {
            reached.notify_one();
            release.notified().await;
        }
        if let Some((reached, release)) = self.hold_replies.picks(r) {
            let (inner, r, fence) = (Arc::clone(&self.inner), r.clone(), fence.clone());
            let written = tokio::spawn(async move { inner.write(&r, &fence).await })
                .await
                .expect("the write task ends");
            reached.notify_one();
            release.notified().await;
            return written;
        }
        self.inner.write(r, fence).await
    }
    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        self.refuse_if(
            &self.refuse_claims,
            "the store refused the claim (simulated)",
        )?;
        self.refuse_write()?;
        self.inner.claim(claim).await
    }
    async fn heartbeat(&self, node: &str, until: SystemTime) -> Result<(), StoreError> {
        self.hang_if_leases_hang().await;
        self.refuse_write()?;
        self.inner.heartbeat(node, until).await
    }
    async fn orphans(
        &self,
        node: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        self.hang_if_leases_hang().await;
        if self.hang_rescues.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.read()?;
        self.inner.orphans(node, now, limit).await
    }
    async fn deadlines(&self, now: SystemTime, limit: usize) -> Result<Deadlines, StoreError> {
        self.read()?;
        self.inner.deadlines(now, limit).await
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
        self.refuse_write()?;
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
    async fn list_newest(
        &self,
        before: i64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, StoreError> {
        self.read()?;
        self.inner.list_newest(before, filter, limit).await
    }
    async fn summarize(
        &self,
        since: SystemTime,
        bucket: std::time::Duration,
    ) -> Result<oprun::store::Summary, StoreError> {
        self.read()?;
        self.inner.summarize(since, bucket).await
    }
    async fn sweep(&self, before: SystemTime, keep: Option<usize>) -> Result<Swept, StoreError> {
        self.refuse_write()?;
        self.inner.sweep(before, keep).await
    }
    async fn queued(&self) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        self.read()?;
        self.inner.queued().await
    }
    async fn unfinished(&self) -> Result<Vec<OperationRecord>, StoreError> {
        self.read()?;
        self.inner.unfinished().await
    }
    async fn put_schedule(
        &self,
        row: &oprun::store::ScheduleRow,
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.refuse_write()?;
        self.inner.put_schedule(row, expected).await
    }
    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        self.refuse_write()?;
        self.inner.delete_schedule(id).await
    }
    async fn schedule(&self, id: &str) -> Result<Option<oprun::store::ScheduleRow>, StoreError> {
        self.read()?;
        self.inner.schedule(id).await
    }
    async fn schedules(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<oprun::store::ScheduleRow>, StoreError> {
        self.read()?;
        self.inner.schedules(after, limit).await
    }
    async fn due_schedules(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<oprun::store::DueSchedules, StoreError> {
        self.read()?;
        self.inner.due_schedules(now, limit).await
    }
    async fn nodes(&self) -> Result<Vec<oprun::store::NodeLease>, StoreError> {
        self.read()?;
        self.inner.nodes().await
    }
    async fn register(
        &self,
        what: oprun::store::Registered,
        name: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.refuse_write()?;
        self.inner.register(what, name, value).await
    }
    async fn unregister(
        &self,
        what: oprun::store::Registered,
        name: &str,
    ) -> Result<(), StoreError> {
        self.refuse_write()?;
        self.inner.unregister(what, name).await
    }
    async fn registered(
        &self,
        what: oprun::store::Registered,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read()?;
        self.inner.registered(what).await
    }
    fn is_exclusive(&self) -> bool {
        self.inner.is_exclusive() && !self.shared.load(Ordering::SeqCst)
    }
    async fn changes(&self, after: Option<i64>, limit: usize) -> Result<Changes, StoreError> {
        self.read()?;
        self.inner.changes(after, limit).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}
