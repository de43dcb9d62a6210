//! The summary kept as operations change: how many there are of each kind in each state,
//! and how many ended in each second and each minute, so that [`Store::summarize`] reads a
//! few small rows instead of counting every operation (1.3 s at a million, where the
//! overview asks every 2 s).
//!
//! Each backend keeps the same two tallies next to its operations, changed by the change
//! that changes an operation, in its transaction: SQLite's writer counts each batch's
//! changes in a [`Tally`] and adds them before the batch commits, PostgreSQL's statement
//! triggers write deltas that any node folds in (no row every node updates), the memory
//! store keeps a [`Tally`] under its lock. Ends are counted by whole
//! second (`end_time / 1e6`, truncated as SQL's integer division does) and by minute; a
//! summary whose start and bucket are whole minutes reads the minutes. Ends are kept for
//! [`ENDS_KEPT_SECONDS`] before now; the summary's window is at most a day. A count or a
//! bucket at or below zero (an end forgotten, then its operation deleted) is left out.
//!
//! [`Store::summarize`]: super::Store::summarize

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use super::{micros, StoreError, Summary};
use crate::model::OperationRecord;

/// How long (before now) the tallies of ends are kept.
pub(crate) const ENDS_KEPT_SECONDS: i64 = 2 * 86_400;

/// The second before which the tallies of ends are forgotten: [`ENDS_KEPT_SECONDS`] before
/// the wall clock (housekeeping only: a summary reads at most a day back).
pub(crate) fn ends_forgotten_before() -> i64 {
    end_second(micros(SystemTime::now())).saturating_sub(ENDS_KEPT_SECONDS)
}

/// The second an operation that ended at `end_micros` is counted in.
pub(crate) fn end_second(end_micros: i64) -> i64 {
    end_micros / 1_000_000
}

/// Which tally of ends answers a summary from `since` in buckets of `bucket`: 60 (minutes)
/// when both are whole minutes, else 1 (seconds); and both in whole seconds (`since`
/// rounded down, `bucket` at least one second).
pub(crate) fn span_for(since: SystemTime, bucket: Duration) -> (i64, i64, i64) {
    let since = end_second(micros(since));
    let width = i64::try_from(bucket.as_secs().max(1)).unwrap_or(i64::MAX);
    let span = if since % 60 == 0 && width % 60 == 0 {
        60
    } else {
        1
    };
    (span, since, width)
}

/// A summary from the tallies' rows: `(kind, state, n)` and the ends' `(at, n)` of the
/// span from `since` on, bucketed by `width` (all in seconds). Counts and buckets at or below
/// zero are left out.
///
/// # Errors
/// [`StoreError::Corrupt`] for a state or a count that cannot be.
pub(crate) fn summary_from(
    counts: Vec<KindCount>,
    ends: Vec<(i64, i64)>,
    since: i64,
    width: i64,
) -> Result<Summary, StoreError> {
    let mut finished: BTreeMap<i64, i64> = BTreeMap::new();
    for (at, n) in ends {
        if at >= since {
            *finished.entry((at - since) / width.max(1)).or_default() += n;
        }
    }
    Summary::from_rows(
        counts.into_iter().filter(|c| c.2 > 0).collect(),
        finished.into_iter().filter(|b| b.1 > 0).collect(),
    )
}

/// How many of a kind are in a state: `(kind, state, n)`.
pub(crate) type KindCount = (String, i32, i64);

/// How many ended in a span's period: `(span, at, n)`.
#[cfg(feature = "sqlite")]
pub(crate) type EndCount = (i64, i64, i64);

/// Tallies in memory: the memory store's, and the changes a SQLite transaction makes,
/// written to its tables once per commit ([`Tally::drain`]).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// By kind: how many in each state (indexed by the state's wire number).
    counts: HashMap<String, [i64; 6]>,
    /// Ends by `(span, at)`, as the SQL tables keep them.
    ends: BTreeMap<(i64, i64), i64>,
}

impl Tally {
    /// Counts `r` in (`by` = 1) or out (`by` = -1).
    pub(crate) fn count(&mut self, r: &OperationRecord, by: i64) {
        let end = r.end_time.filter(|_| r.is_done()).map(micros);
        self.add(&r.kind, r.state.to_proto() as i32, end, by);
    }

    /// Counts an operation of `kind` in `state` (a wire number) that ended at `end` (µs; for
    /// a finished one) in (`by` = 1) or out (`by` = -1).
    pub(crate) fn add(&mut self, kind: &str, state: i32, end: Option<i64>, by: i64) {
        // QUEUED (1) to CANCELLED (5); no other is stored.
        let Some(state) = usize::try_from(state).ok().filter(|s| (1..=5).contains(s)) else {
            return;
        };
        if let Some(states) = self.counts.get_mut(kind) {
            states[state] += by;
        } else {
            let mut states = [0; 6];
            states[state] = by;
            self.counts.insert(kind.to_owned(), states);
        }
        if let Some(end) = end {
            let second = end_second(end);
            for span in [1, 60] {
                let key = (span, second / span * span);
                let n = self.ends.entry(key).or_default();
                *n += by;
                if *n == 0 {
                    self.ends.remove(&key);
                }
            }
        }
    }

    /// Adds what `other` counted.
    #[cfg(feature = "sqlite")]
    pub(crate) fn absorb(&mut self, other: Tally) {
        for (kind, states) in other.counts {
            let mine = self.counts.entry(kind).or_insert([0; 6]);
            for (m, n) in mine.iter_mut().zip(states) {
                *m += n;
            }
        }
        for (key, n) in other.ends {
            *self.ends.entry(key).or_default() += n;
        }
    }

    /// Whether nothing is counted.
    #[cfg(feature = "sqlite")]
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.counts.values().all(|s| s.iter().all(|n| *n == 0))
    }

    /// Takes what is counted: by kind, how many in each state (indexed by its wire number),
    /// and `(span, at, n)`; none all at zero.
    #[cfg(feature = "sqlite")]
    pub(crate) fn drain(&mut self) -> (Vec<(String, [i64; 6])>, Vec<EndCount>) {
        let counts = self
            .counts
            .drain()
            .filter(|(_, states)| states.iter().any(|n| *n != 0))
            .collect();
        let ends = std::mem::take(&mut self.ends)
            .into_iter()
            .map(|((span, at), n)| (span, at, n))
            .collect();
        (counts, ends)
    }

    /// How many finished operations it counts (SUCCEEDED, FAILED, CANCELLED).
    #[cfg(feature = "sqlite")]
    pub(crate) fn finished(&self) -> i64 {
        self.counts.values().map(|s| s[3] + s[4] + s[5]).sum()
    }

    /// Drops the ends before [`ends_forgotten_before`].
    pub(crate) fn forget_old_ends(&mut self) {
        let before = ends_forgotten_before();
        for span in [1, 60] {
            let old: Vec<_> = self
                .ends
                .range((span, i64::MIN)..(span, before))
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                self.ends.remove(&k);
            }
        }
    }

    /// The summary from `since` in buckets of `bucket` (see [`span_for`]).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a state or a count that cannot be (see
    /// [`Summary::from_rows`]).
    pub(crate) fn summary(
        &self,
        since: SystemTime,
        bucket: Duration,
    ) -> Result<Summary, StoreError> {
        let (span, since, width) = span_for(since, bucket);
        let mut counts: Vec<KindCount> = Vec::new();
        for (kind, states) in &self.counts {
            for (state, n) in (0_i32..).zip(states) {
                counts.push((kind.clone(), state, *n));
            }
        }
        counts.sort();
        let ends = self
            .ends
            .range((span, since)..=(span, i64::MAX))
            .map(|((_, at), n)| (*at, *n))
            .collect();
        summary_from(counts, ends, since, width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;

    #[test]
    fn whole_minutes_read_the_minutes_and_anything_else_the_seconds() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(span_for(at(600), Duration::from_secs(120)).0, 60);
        assert_eq!(span_for(at(600), Duration::from_secs(90)).0, 1);
        assert_eq!(span_for(at(610), Duration::from_secs(120)).0, 1);
        assert_eq!(
            span_for(
                at(610) + Duration::from_millis(700),
                Duration::from_millis(10)
            ),
            (1, 610, 1),
            "rounded to whole seconds"
        );
    }

    /// An end far in the future (a node's clock set forward) does not make the tallies forget
    /// the ends of now; ends older than they keep are forgotten; a count out of an end already
    /// forgotten leaves no negative bucket in a summary.
    #[test]
    fn ends_are_forgotten_by_the_clock_not_by_the_latest_end() {
        let now = SystemTime::now();
        let mut tally = Tally::default();
        let ended = |at: SystemTime| Some(micros(at));
        tally.add("x", 3, ended(now), 1);
        tally.add("x", 3, ended(now + Duration::from_secs(10 * 86_400)), 1);
        tally.add("x", 3, ended(now - Duration::from_secs(3 * 86_400)), 1);
        tally.forget_old_ends();
        let since = now - Duration::from_secs(4 * 86_400);
        let summary = tally
            .summary(since, Duration::from_secs(86_400))
            .expect("summary");
        assert_eq!(
            summary.finished,
            vec![(4, 1), (14, 1)],
            "the old one forgotten"
        );
        tally.add("x", 3, ended(now - Duration::from_secs(3 * 86_400)), -1);
        let summary = tally
            .summary(since, Duration::from_secs(86_400))
            .expect("summary");
        assert_eq!(
            summary.finished,
            vec![(4, 1), (14, 1)],
            "no negative bucket"
        );
        assert_eq!(summary.counts, vec![("x".to_owned(), State::Succeeded, 2)]);
    }

    #[test]
    fn ends_fall_in_the_bucket_of_their_second() {
        let summary = summary_from(
            Vec::new(),
            vec![(99, 5), (100, 1), (119, 2), (120, 3)],
            100,
            10,
        )
        .expect("summary");
        assert_eq!(summary.finished, vec![(0, 1), (1, 2), (2, 3)]);
    }
}
