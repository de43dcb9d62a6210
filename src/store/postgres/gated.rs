//! Claims where a kind must pass over some of its work: a limit per concurrency key
//! ([`Claim::key_limits`]) or a start rate ([`Claim::rates`]). What runs of each key, and the
//! starts in the rate's period, are counted; then each kind's due work is read in the
//! claim's order, a page at a time, passing over what the gates refuse, until its room is
//! filled; the first over all kinds start.
//! Run in the transaction that holds the claim lock, so that two nodes cannot both take the
//! last room of a key or of a rate.

use deadpool_postgres::GenericClient;

use super::{micros, pg_error, raw};
use crate::model::OperationRecord;
use crate::store::row::rate_gate;
use crate::store::{Choice, Claim, Gates, KeyGate, Offer, Rank, RateGate, Share, StoreError};

/// Rows read per page of a kind's due work.
const PAGE: i64 = 256;

/// How many operations of a kind (`$1`) run now with each concurrency key.
const RUNNING_KEYS: &str = concat!(
    "SELECT concurrency_key, count(*) FROM operations \
     WHERE state = ",
    running_sql!(),
    " AND kind = $1 AND concurrency_key IS NOT NULL GROUP BY concurrency_key"
);

/// Forgets a kind's (`$1`) starts at or before `$2`.
const FORGET_STARTS: &str = "DELETE FROM starts WHERE kind = $1 AND at <= $2";

/// A kind's (`$1`) starts in its rate's period, by key: how many, and the oldest.
const COUNT_STARTS: &str = "SELECT key, count(*), min(at) FROM starts WHERE kind = $1 GROUP BY key";

/// Counts starts against their kind's rate: kinds `$1`, keys `$2`, at `$3`.
const RECORD_STARTS: &str =
    "INSERT INTO starts (kind, key, at) SELECT k, c, $3 FROM unnest($1::text[], $2::text[]) \
     AS s(k, c)";

/// A page of a kind's (`$1`) due work (at `$2`) in the claim's order, after the position
/// (`$3` priority, `$4` due, `$5` seq); rows another claimer holds are skipped.
const PAGE_SQL: &str = concat!(
    "SELECT seq, concurrency_key, priority, due FROM operations \
     WHERE state = ",
    queued_sql!(),
    " AND kind = $1 AND due <= $2 \
       AND (priority < $3 OR (priority = $3 AND (due > $4 OR (due = $4 AND seq > $5)))) \
     ORDER BY priority DESC, due, seq LIMIT $6 FOR UPDATE SKIP LOCKED"
);

/// Starts the operations whose `seq`s are `$1` on node `$2` at `$3` (as the claim does).
const START: &str = concat!(
    "UPDATE operations SET ",
    start_sql!("$2", "$3"),
    ", changed_by = ",
    this_transaction!(),
    " WHERE seq = ANY($1) AND state = ",
    queued_sql!(),
    " RETURNING ",
    columns!()
);

/// One operation [`pick`] chose: its `seq`, and its kind and concurrency key.
pub(super) type Pick = (i64, String, Option<String>);

/// The gates of `kind` for `claim` (see [`Gates`]), read from the database at `now`.
pub(super) async fn gates(
    client: &impl GenericClient,
    claim: &Claim,
    kind: &str,
    now: i64,
) -> Result<Gates, StoreError> {
    let keys = match claim.key_limit(kind) {
        None => None,
        Some(limit) => {
            let running = client
                .prepare_cached(RUNNING_KEYS)
                .await
                .map_err(pg_error)?;
            let mut busy = Vec::new();
            for row in client.query(&running, &[&kind]).await.map_err(pg_error)? {
                let key: String = row.try_get(0).map_err(pg_error)?;
                let n: i64 = row.try_get(1).map_err(pg_error)?;
                busy.push((key, usize::try_from(n).unwrap_or(usize::MAX)));
            }
            Some(KeyGate::new(limit, busy))
        }
    };
    let rate = match claim.rate(kind) {
        None => None,
        Some(rate) => {
            let (forget, count) = tokio::try_join!(
                client.prepare_cached(FORGET_STARTS),
                client.prepare_cached(COUNT_STARTS)
            )
            .map_err(pg_error)?;
            client
                .execute(&forget, &[&kind, &RateGate::since(rate, now)])
                .await
                .map_err(pg_error)?;
            let mut rows = Vec::new();
            for row in client.query(&count, &[&kind]).await.map_err(pg_error)? {
                rows.push((
                    row.try_get(0).map_err(pg_error)?,
                    row.try_get(1).map_err(pg_error)?,
                    row.try_get(2).map_err(pg_error)?,
                ));
            }
            Some(rate_gate(rate, rows))
        }
    };
    Ok(Gates { keys, rate })
}

/// Offers `kind`'s due work at `now` (microseconds) to its `share`, in the claim's order, a
/// page at a time; what it takes goes to `choice`.
pub(super) async fn pick(
    client: &impl GenericClient,
    kind: &str,
    share: &mut Share,
    choice: &mut Choice<Pick>,
    now: i64,
) -> Result<(), StoreError> {
    let page = client.prepare_cached(PAGE_SQL).await.map_err(pg_error)?;
    let (mut priority, mut due, mut seq) = (i32::MAX, i64::MIN, i64::MIN);
    'pages: while !share.is_full() {
        let rows = client
            .query(&page, &[&kind, &now, &priority, &due, &seq, &PAGE])
            .await
            .map_err(pg_error)?;
        for row in &rows {
            if share.is_full() {
                break 'pages;
            }
            seq = row.try_get(0).map_err(pg_error)?;
            let key: Option<String> = row.try_get(1).map_err(pg_error)?;
            priority = row.try_get(2).map_err(pg_error)?;
            due = row.try_get(3).map_err(pg_error)?;
            match share.offer(key.as_deref()) {
                Offer::Taken => {
                    choice.pick(Rank::new(priority, due, seq), (seq, kind.to_owned(), key))
                }
                Offer::Passed => {}
                Offer::Closed => break 'pages,
            }
        }
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < PAGE {
            break;
        }
    }
    Ok(())
}

/// Starts the operations picked for `claim`'s node (each with its rank) at the claim's
/// time, counting those of kinds with a rate as starts; answers each with its rank.
pub(super) async fn start(
    client: &impl GenericClient,
    claim: &Claim,
    picked: &[(Rank, Pick)],
) -> Result<Vec<(Rank, OperationRecord)>, StoreError> {
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = picked.iter().map(|(_, (seq, _, _))| *seq).collect();
    let now = micros(claim.now);
    let statement = client.prepare_cached(START).await.map_err(pg_error)?;
    let rows = client
        .query(&statement, &[&seqs, &claim.node, &now])
        .await
        .map_err(pg_error)?;
    let started = rows.iter().map(raw).collect::<Result<Vec<_>, _>>()?;
    let (kinds, keys): (Vec<&str>, Vec<Option<&str>>) = picked
        .iter()
        .filter(|(_, (seq, kind, _))| {
            claim.rate(kind).is_some() && started.iter().any(|r| r.seq == *seq)
        })
        .map(|(_, (_, kind, key))| (kind.as_str(), key.as_deref()))
        .unzip();
    if !kinds.is_empty() {
        let record = client
            .prepare_cached(RECORD_STARTS)
            .await
            .map_err(pg_error)?;
        client
            .execute(&record, &[&kinds, &keys, &now])
            .await
            .map_err(pg_error)?;
    }
    Ok(started
        .into_iter()
        .filter_map(|r| {
            let (rank, _) = picked.iter().find(|(_, (seq, _, _))| *seq == r.seq)?;
            Some((*rank, r))
        })
        .collect())
}
