//! A listing's page as both SQL backends walk it: which `seq`s it goes between, in which
//! order, and the statement that reads it. Each backend finds where the matches of a filter's
//! `create_time` bounds can be (its `created_window`) and binds the statement's parameters;
//! what the page is, is said here once.

use crate::filter::Filter;
use crate::store::micros;

/// Which end of the history a listing walks from: [`Store::list`](super::Store::list) or
/// [`Store::list_newest`](super::Store::list_newest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    /// Oldest first, after this `seq`.
    Oldest { after: i64 },
    /// Newest first, before this `seq`.
    Newest { before: i64 },
}

/// One page of a listing: the rows strictly between two `seq`s that match the filter, in
/// `seq` order or its reverse, at most a limit of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Walk {
    /// Every row of the page has a `seq` above this.
    pub(crate) above: i64,
    /// Every row of the page has a `seq` below this.
    pub(crate) below: i64,
    newest_first: bool,
}

impl Walk {
    /// The walk from `from`, kept within `(floor, ceiling)`: where the filter's matches can
    /// be (none at or below `floor`, none at or above `ceiling`).
    pub(crate) fn within(from: Listing, (floor, ceiling): (i64, i64)) -> Self {
        match from {
            Listing::Oldest { after } => Self {
                above: after.max(floor),
                below: ceiling,
                newest_first: false,
            },
            Listing::Newest { before } => Self {
                above: floor,
                below: before.min(ceiling),
                newest_first: true,
            },
        }
    }

    /// The page's statement: `columns` of the rows between [`above`](Self::above) and
    /// [`below`](Self::below) that match the filter's SQL `clause`, in the walk's order, at
    /// most a limit. `above`, `below` and `limit` are the backend's placeholders for those
    /// three parameters; in the text they come in that order, the clause's between the
    /// second and the third.
    pub(crate) fn sql(
        &self,
        columns: &str,
        clause: &str,
        [above, below, limit]: [&str; 3],
    ) -> String {
        let order = if self.newest_first { "DESC" } else { "ASC" };
        format!(
            "SELECT {columns} FROM operations WHERE seq > {above} AND seq < {below} \
             AND ({clause}) ORDER BY seq {order} LIMIT {limit}"
        )
    }
}

/// The `create_time` bounds of `filter` in microseconds, as both SQL backends narrow a
/// list's walk by them: every match is created at or after the first and before the second
/// (see [`Filter::created_after`] and [`Filter::created_before`]).
pub(crate) fn created_bounds(filter: &Filter) -> (Option<i64>, Option<i64>) {
    (
        filter.created_after().map(micros),
        filter.created_before().map(micros),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_stays_within_the_window_of_its_matches() {
        let window = (100, 200);
        let oldest = |after| Walk::within(Listing::Oldest { after }, window);
        let newest = |before| Walk::within(Listing::Newest { before }, window);
        assert_eq!((oldest(0).above, oldest(0).below), (100, 200));
        assert_eq!((oldest(150).above, oldest(150).below), (150, 200));
        assert_eq!((newest(i64::MAX).above, newest(i64::MAX).below), (100, 200));
        assert_eq!((newest(150).above, newest(150).below), (100, 150));
    }

    #[test]
    fn the_statement_orders_by_the_walks_direction() {
        let whole = (0, i64::MAX);
        let sql = |from| Walk::within(from, whole).sql("seq", "kind = ?", ["?", "?", "?"]);
        assert_eq!(
            sql(Listing::Oldest { after: 0 }),
            "SELECT seq FROM operations WHERE seq > ? AND seq < ? AND (kind = ?) \
             ORDER BY seq ASC LIMIT ?"
        );
        assert!(sql(Listing::Newest { before: 9 }).ends_with("ORDER BY seq DESC LIMIT ?"));
    }
}
