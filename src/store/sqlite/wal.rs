//! The write-ahead log kept within its bound: the checkpointer thread (PASSIVE, alongside
//! commits) and the writer's `WalBound`.
//!
//! Each commit appends pages to `oprun.sqlite3-wal`; a checkpoint copies them into the
//! database, and the log starts again from its beginning only when a checkpoint has copied all
//! of it and no reader still reads from it. A checkpointer on another thread, racing commits
//! that never stop, never reaches the end: under sustained load the log grew without bound
//! (10 GB). So:
//! - a checkpointer thread runs PASSIVE checkpoints (which block nobody) each time the log has
//!   grown by [`PASSIVE_STEP`], keeping what is left to copy small;
//! - once the log passes half its bound, the writer itself runs a RESTART checkpoint between
//!   two commits, when no background checkpoint is copying (it would wait for that one):
//!   nothing is appended meanwhile, so it copies the small rest, waits for the readers still
//!   in the log (reads are short), and the next commit writes the log from its beginning;
//!   `journal_size_limit` trims a file that grew past the bound back to it;
//! - when a reader holds on and the checkpoint cannot finish, the writer tries again after the
//!   next commit; at the bound itself it holds commits back (up to a second) until the
//!   checkpoint succeeds. Only a read that lasts longer (`oprun store check` beside a running
//!   server) lets the log pass its bound, until that read ends.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How much the log grows between two requests for a background (PASSIVE) checkpoint.
pub(super) const PASSIVE_STEP: u64 = 4 << 20;

/// How long the writer keeps commits back, at the log's bound, for a checkpoint to succeed
/// before it lets them go on (and says so).
pub(super) const HARD_WAIT: Duration = Duration::from_secs(1);

/// After a restart failed (a read held the log), how long commits go on before the next try.
pub(super) const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// How long the writer's connection waits for readers still in the log during a restart
/// (its busy handler's patience; nothing else makes the only writer wait).
pub(super) const WRITER_PATIENCE: Duration = Duration::from_millis(250);

/// Copies the log into the database when the writer asks, concurrently with commits
/// (PASSIVE: it never blocks the writer or readers), saying in `running` when it is at it.
/// Blocks on its channel when idle.
pub(super) fn checkpointer(conn: Connection, rx: mpsc::Receiver<()>, running: Arc<AtomicBool>) {
    while rx.recv().is_ok() {
        running.store(true, Ordering::Release);
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::warn!(error = %e, "WAL checkpoint failed; it will be retried");
        }
        running.store(false, Ordering::Release);
    }
}

/// Keeps the log within its bound (see the module docs).
pub(super) struct WalBound {
    /// Pages in the log after the last commit, as SQLite's WAL hook reports them.
    frames: Arc<AtomicI64>,
    page_size: u64,
    /// The log's bound, in bytes.
    limit: u64,
    /// `frames` when the last background checkpoint was requested.
    requested_at: i64,
    checkpoint: mpsc::SyncSender<()>,
    /// Whether the background checkpoint is copying now.
    copying: Arc<AtomicBool>,
    /// Whether the log is known to be past its bound (logged once per episode).
    over: bool,
    /// No restart before this, after one failed.
    backoff_until: Option<Instant>,
}

impl WalBound {
    /// Watches `conn`'s log (through its WAL hook) and bounds it at `limit` bytes.
    pub(super) fn new(
        conn: &mut Connection,
        limit: u64,
        checkpoint: mpsc::SyncSender<()>,
        copying: Arc<AtomicBool>,
    ) -> rusqlite::Result<Self> {
        let frames = Arc::new(AtomicI64::new(0));
        let hook = Arc::clone(&frames);
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            hook.store(i64::from(pages), Ordering::Relaxed);
            Ok(())
        }))?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        conn.execute_batch(&format!("PRAGMA journal_size_limit = {limit};"))?;
        Ok(Self {
            frames,
            page_size: u64::try_from(page_size).unwrap_or(4096).max(512),
            limit,
            requested_at: 0,
            checkpoint,
            copying,
            over: false,
            backoff_until: None,
        })
    }

    pub(super) fn log_bytes(&self) -> u64 {
        u64::try_from(self.frames.load(Ordering::Relaxed))
            .unwrap_or(0)
            .saturating_mul(self.page_size)
    }

    /// Runs after each commit: asks for a background checkpoint as the log grows, and
    /// restarts the log past half its bound.
    pub(super) fn after_commit(&mut self, conn: &Connection) {
        let frames = self.frames.load(Ordering::Relaxed);
        if frames < self.requested_at {
            // The log started again from its beginning.
            self.requested_at = 0;
        }
        let grown = u64::try_from(frames - self.requested_at).unwrap_or(0) * self.page_size;
        if grown >= PASSIVE_STEP {
            // A full channel means a checkpoint is already pending: nothing to add.
            let _ = self.checkpoint.try_send(());
            self.requested_at = frames;
        }
        let bytes = self.log_bytes();
        let hard = bytes >= self.limit;
        // Below the bound, restart only while no background checkpoint is copying: the
        // restart would wait for it, holding commits back; the next commit tries again.
        if hard || (bytes >= self.limit / 2 && !self.copying.load(Ordering::Acquire)) {
            self.restart(conn, hard);
        }
    }

    /// Copies the whole log into the database so that the next commit starts it again from
    /// its beginning. Below the bound, one try; at the bound (`hard`), commits wait while it
    /// keeps trying for up to [`HARD_WAIT`]. When a read still holds the log (one that lasts
    /// longer than the writer's patience, such as `oprun store check` beside the server),
    /// commits go on and the next try is [`RESTART_BACKOFF`] later; past the bound the log
    /// grows until that read ends (logged once per episode).
    pub(super) fn restart(&mut self, conn: &Connection, hard: bool) {
        if self.backoff_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let started = Instant::now();
        loop {
            if !self.copying.load(Ordering::Acquire) {
                // (busy, pages in the log, pages copied): busy is 1 when a reader outlasted
                // the busy handler's patience, or another checkpoint held the checkpoint lock.
                let attempt = Instant::now();
                let result =
                    conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
                tracing::debug!(
                    elapsed_us = u64::try_from(attempt.elapsed().as_micros()).unwrap_or(u64::MAX),
                    wal_bytes = self.log_bytes(),
                    ?result,
                    "WAL restart checkpoint"
                );
                match result {
                    Ok(0) => {
                        self.frames.store(0, Ordering::Relaxed);
                        self.requested_at = 0;
                        self.backoff_until = None;
                        if self.over {
                            tracing::info!("the write-ahead log is back within its bound");
                            self.over = false;
                        }
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL checkpoint failed; it will be retried");
                    }
                }
            }
            if !hard || started.elapsed() >= HARD_WAIT {
                break;
            }
            // A background checkpoint is copying, or held the lock a moment ago.
            std::thread::sleep(Duration::from_millis(1));
        }
        // A read holds the log: let commits go on for a while before the next try.
        self.backoff_until = Some(Instant::now() + RESTART_BACKOFF);
        if hard && !self.over {
            self.over = true;
            tracing::warn!(
                wal_bytes = self.log_bytes(),
                limit = self.limit,
                "the write-ahead log is at its bound and a long read keeps it from being \
                 reset; it grows past the bound until that read ends"
            );
        }
    }
}
