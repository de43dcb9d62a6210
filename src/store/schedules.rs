//! How a store keeps schedules: each one an encoded body under its id, with the time a node
//! should next look at it (`wake`) and a version that fences every change, so that of two
//! nodes acting on one fire only the first to write it wins (see `crate::scheduler`'s
//! `schedules`).

/// A schedule as a store keeps it. The store reads only `id`, `wake` and `version`; the body
/// is the schedules module's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    /// The schedule's id (its name without `schedules/`).
    pub id: String,
    /// Its encoded state.
    pub body: Vec<u8>,
    /// When a node should next act on it, in microseconds since the Unix epoch (a fire is
    /// due, a fire is decided but not started, a buffered fire waits); `None`: never (a
    /// paused schedule with nothing pending).
    pub wake: Option<i64>,
    /// How many times it was written, from 1 at its creation.
    pub version: i64,
}

/// Schedules whose wake time has come, and when the next one after them comes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DueSchedules {
    /// Those whose `wake` is at or before the time asked, earliest first.
    pub due: Vec<ScheduleRow>,
    /// The earliest `wake` after the time asked, if any.
    pub next_wake: Option<i64>,
}
