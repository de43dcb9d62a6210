//! The bytes of responses that clients have not read yet, over every connection of both
//! listeners: a response is given its size's share before it is sent and gives it back once
//! the client has taken it; one that does not fit is refused (RESOURCE_EXHAUSTED), so no
//! client that stops reading can make the server hold more than the budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::ERROR_DOMAIN;

/// What a refused response's RetryInfo asks the client to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Responses at least this large count as a burst worth giving memory back after.
const LARGE_RESPONSE: usize = 1 << 20;

/// The least time between two attempts to give freed memory back to the OS.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The bytes all unread responses together may hold.
#[derive(Debug, Clone)]
pub(crate) struct ResponseBudget {
    bytes: Arc<Semaphore>,
    limit: usize,
    /// When memory was last given back (ms since `epoch`), see [`ResponseBudget::release`].
    trimmed_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl ResponseBudget {
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
            trimmed_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    /// Takes `n` bytes, if that many are left.
    /// The refusal of a `size`-byte response that does not fit (RESOURCE_EXHAUSTED, retry in
    /// a second), for either listener.
    pub(crate) fn exhausted(&self, size: usize) -> tonic::Status {
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(RETRY_AFTER));
        details.set_error_info(
            "RESPONSE_BUDGET_EXHAUSTED",
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        let limit = if self.limit >= 1 << 20 {
            format!("{} MiB", self.limit >> 20)
        } else {
            format!("{} KiB", self.limit >> 10)
        };
        tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            format!(
                "the server already holds its limit of {limit} of responses that clients have \
                 not read, so this {size}-byte response was not kept; retry later, or ask for \
                 smaller pages (oprun serve --max-unread-response-bytes)"
            ),
            details,
        )
    }

    pub(crate) fn take(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        Arc::clone(&self.bytes).try_acquire_many_owned(n).ok()
    }

    /// Gives back a response's share; after a burst of large responses, once none is held any
    /// more, also gives the memory they freed back to the OS. (glibc keeps freed memory in its
    /// arenas, so the process would stay at the burst's peak; `malloc_trim` returns it. It runs
    /// on a blocking thread, at most once a second.)
    pub(crate) fn release(&self, permit: OwnedSemaphorePermit) {
        let size = permit.num_permits();
        drop(permit);
        if size < LARGE_RESPONSE || self.bytes.available_permits() < self.limit {
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.trimmed_ms.load(Ordering::Acquire);
        let every = u64::try_from(TRIM_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every
            || self
                .trimmed_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(|| {
                // SAFETY: malloc_trim only walks glibc's own heaps; it takes no pointers.
                unsafe { libc::malloc_trim(0) };
            });
        }
    }
}

/// How much of a budgeted body is handed to the connection at a time: hyper asks for the
/// next piece only once it has written the last, so what waits for a slow client stays in
/// the budget, not in hyper's buffers.
pub(crate) const CHUNK: usize = 16 << 10;
