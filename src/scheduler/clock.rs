//! The clock the runner reads: wall time for what it records and compares (create, start and
//! end times, due times, deadlines, retention), and tokio's timers to wait.
//!
//! Injected through [`crate::RunnerConfig::clock`], so that tests with tokio's paused time get
//! a wall clock that moves with it ([`PausedClock`]).

use std::fmt;
use std::time::{Duration, SystemTime};

/// What time it is.
pub trait Clock: Send + Sync + 'static {
    /// Now, as wall time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time that moves with tokio's clock: the system time when it was made, plus how far
/// tokio's clock has moved since. Under `tokio::time::pause()` it advances exactly as timers
/// do, which makes timing tests deterministic.
#[derive(Clone, Copy)]
pub struct PausedClock {
    wall: SystemTime,
    start: tokio::time::Instant,
}

impl PausedClock {
    /// A clock reading the system time now, then following tokio's clock.
    pub fn new() -> Self {
        Self {
            wall: SystemTime::now(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for PausedClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PausedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PausedClock")
            .field("wall", &self.wall)
            .finish_non_exhaustive()
    }
}

impl Clock for PausedClock {
    fn now(&self) -> SystemTime {
        self.wall + self.start.elapsed()
    }
}

/// How long from `now` until `then`; zero when it has passed.
pub(crate) fn until(now: SystemTime, then: SystemTime) -> Duration {
    then.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paused clock moves with tokio's paused time, and only with it.
    #[tokio::test(start_paused = true)]
    async fn paused_clock_follows_tokio() {
        let clock = PausedClock::new();
        let t0 = clock.now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            clock.now().duration_since(t0).unwrap(),
            Duration::from_secs(3600)
        );
    }
}
