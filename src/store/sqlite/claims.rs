//! Claims in the writer's transaction: each kind's due work in order (or, for a kind under
//! a limit per key or a start rate, row by row through its gates), merged across kinds by
//! priority, due time and `seq`, and started QUEUED → RUNNING.

use rusqlite::{params, Connection, OptionalExtension};

use super::schema::{row_to_record, RawRow, COLUMNS};
use super::sql_error;
use crate::store::row::{rate_gate, QUEUED, RUNNING};
use crate::store::tally::Tally;
use crate::store::{
    micros, Choice, Claim, Gates, KeyGate, Offer, Rank, RateGate, Share, StoreError,
};

/// The rows a claim started, the next due time of a queued operation of its kinds (or when
/// a rate lets more start), and the kinds a rate held back.
pub(super) type ClaimedRows = (Vec<RawRow>, Option<i64>, Vec<String>);

/// A kind's due work, oldest due first (served by `operations_queue`).
pub(super) const CLAIM_DUE: &str = concat!(
    "SELECT priority, due, seq, concurrency_key FROM operations \
     INDEXED BY operations_ready WHERE state = ",
    queued_sql!(),
    " AND due <= ?1 AND kind = {kind} \
     ORDER BY priority DESC, due, seq"
);

/// When a kind's next queued operation becomes due.
pub(super) const CLAIM_NEXT_DUE: &str = concat!(
    "SELECT MIN(due) FROM operations WHERE state = ",
    queued_sql!(),
    " AND due > ?1 AND kind = {kind}"
);

/// The claim's two statements for one kind (`CLAIM_DUE`, `CLAIM_NEXT_DUE`), and whether the
/// kind is to be bound (as `?2`).
///
/// SQLite prepares a statement again each time a value is bound to a parameter its planner
/// looked at, and it looks at one compared for equality where rows are ordered (ORDER BY, MIN)
/// and at a LIMIT's: bound, the kind made every claim prepare its statements again, which cost
/// the writer more than the claim itself. So the kind is written into the statement, quoted
/// (one statement per kind, each prepared once), and there is no LIMIT: rows come lazily, in
/// the index's order, and the claim takes as many as it has room for. A kind with a NUL,
/// which no SQL literal holds, is bound instead.
pub(super) struct KindSql {
    pub(super) due: String,
    pub(super) next_due: String,
    pub(super) bound: bool,
}

impl KindSql {
    pub(super) fn new(kind: &str) -> Self {
        let (literal, bound) = if kind.contains('\0') {
            ("?2".to_owned(), true)
        } else {
            (format!("'{}'", kind.replace('\'', "''")), false)
        };
        Self {
            due: CLAIM_DUE.replace("{kind}", &literal),
            next_due: CLAIM_NEXT_DUE.replace("{kind}", &literal),
            bound,
        }
    }

    /// The statements of `kind`, written once per kind on this thread (the writer's): a claim
    /// looks at every kind with room, and writing them anew cost it more than their reads.
    pub(super) fn of(kind: &str) -> std::rc::Rc<Self> {
        /// Kinds come from this node's registry and the kinds workers declare: a few; the
        /// cache is emptied should it ever hold more than this.
        const MOST: usize = 1024;
        thread_local! {
            static KINDS: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<KindSql>>> =
                std::cell::RefCell::default();
        }
        KINDS.with_borrow_mut(|kinds| {
            if let Some(sql) = kinds.get(kind) {
                return std::rc::Rc::clone(sql);
            }
            if kinds.len() >= MOST {
                kinds.clear();
            }
            let sql = std::rc::Rc::new(Self::new(kind));
            kinds.insert(kind.to_owned(), std::rc::Rc::clone(&sql));
            sql
        })
    }
}

/// Starts the due operations of the claim's kinds on its node, in the claim's order, within
/// each kind's limit per key and start rate (see `Store::claim`); answers the rows, the next
/// due time of a queued operation of those kinds (or when a rate lets more start), and the
/// kinds a rate held back.
pub(super) fn claim(
    tx: &Connection,
    claim: &Claim,
    tally: &mut Tally,
) -> Result<ClaimedRows, StoreError> {
    let now = micros(claim.now);
    // Each picked with its kind and key (a start rate counts them).
    let mut choice: Choice<(i64, &str, Option<String>)> = Choice::default();
    for (kind, room) in &claim.kinds {
        if *room == 0 {
            continue;
        }
        let mut share = Share::new(gates(tx, claim, kind, now)?, *room, now);
        let sql = KindSql::of(kind);
        let bound = sql.bound;
        let mut due_now = tx.prepare_cached(&sql.due).map_err(sql_error)?;
        let row = |row: &rusqlite::Row<'_>| {
            let seq = row.get::<_, i64>(2)?;
            let rank = Rank::new(row.get(0)?, row.get(1)?, seq);
            Ok((rank, seq, row.get::<_, Option<String>>(3)?))
        };
        let rows = if bound {
            due_now.query_map(params![now, kind], row)
        } else {
            due_now.query_map(params![now], row)
        }
        .map_err(sql_error)?;
        for row in rows {
            if share.is_full() {
                break;
            }
            let (rank, seq, key) = row.map_err(sql_error)?;
            match share.offer(key.as_deref()) {
                Offer::Taken => choice.pick(rank, (seq, kind.as_str(), key)),
                Offer::Passed => {}
                Offer::Closed => break,
            }
        }
        choice.close(kind, &share);

        let mut next = tx.prepare_cached(&sql.next_due).map_err(sql_error)?;
        let later: Option<i64> = if bound {
            next.query_row(params![now, kind], |row| row.get(0))
        } else {
            next.query_row(params![now], |row| row.get(0))
        }
        .map_err(sql_error)?;
        if let Some(later) = later {
            choice.due_at(later);
        }
    }
    let chosen = choice.first(claim.total);
    let mut start = tx
        .prepare_cached(&format!(
            "UPDATE operations SET {} WHERE seq = ?1 AND state = {QUEUED} RETURNING {COLUMNS}",
            start_sql!("?2", "?3")
        ))
        .map_err(sql_error)?;
    let mut started = Vec::with_capacity(chosen.start.len());
    for (_, (seq, kind, key)) in chosen.start {
        if let Some(row) = start
            .query_row(params![seq, claim.node, now], row_to_record)
            .optional()
            .map_err(sql_error)?
        {
            // Counted as soon as it moved, whatever fails after.
            tally.add(kind, QUEUED, None, -1);
            tally.add(kind, RUNNING, None, 1);
            if claim.rate(kind).is_some() {
                tx.prepare_cached("INSERT INTO starts (kind, key, at) VALUES (?1, ?2, ?3)")
                    .and_then(|mut s| s.execute(params![kind, key, now]))
                    .map_err(sql_error)?;
            }
            started.push(row);
        }
    }
    Ok((started, chosen.next_due, chosen.held))
}

/// The gates of `kind` for `claim` at `now`: its limit per key (with what runs of each key)
/// and its start rate (with the starts in the period; older ones are forgotten here).
pub(super) fn gates(
    tx: &Connection,
    claim: &Claim,
    kind: &str,
    now: i64,
) -> Result<Gates, StoreError> {
    let keys = match claim.key_limit(kind) {
        Some(limit) => Some(KeyGate::new(limit, running_keys(tx, kind)?)),
        None => None,
    };
    let rate = match claim.rate(kind) {
        None => None,
        Some(rate) => {
            let since = RateGate::since(rate, now);
            tx.prepare_cached("DELETE FROM starts WHERE kind = ?1 AND at <= ?2")
                .and_then(|mut s| s.execute(params![kind, since]))
                .map_err(sql_error)?;
            let mut counts = tx
                .prepare_cached(
                    "SELECT key, count(*), min(at) FROM starts WHERE kind = ?1 GROUP BY key",
                )
                .map_err(sql_error)?;
            let rows = counts
                .query_map(params![kind], |row| {
                    Ok((
                        row.get::<_, Option<String>>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                .map_err(sql_error)?;
            Some(rate_gate(rate, rows))
        }
    };
    Ok(Gates { keys, rate })
}

/// How many operations of `kind` run now with each concurrency key.
pub(super) fn running_keys(
    tx: &Connection,
    kind: &str,
) -> Result<Vec<(String, usize)>, StoreError> {
    // The condition of `operations_running_keys`, literally, so that it serves the count.
    let mut running = tx
        .prepare_cached(concat!(
            "SELECT concurrency_key, count(*) FROM operations WHERE kind = ?1 AND state = ",
            running_sql!(),
            " \
             AND concurrency_key IS NOT NULL GROUP BY concurrency_key"
        ))
        .map_err(sql_error)?;
    let rows = running
        .query_map(params![kind], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(sql_error)?;
    Ok(rows
        .into_iter()
        .map(|(key, n)| (key, usize::try_from(n).unwrap_or(usize::MAX)))
        .collect())
}
