//! A claim on PostgreSQL: one statement when no limit holds over the cluster (each node
//! within its own room, rows locked with SKIP LOCKED); otherwise one transaction under the
//! cluster's claim lock that counts what runs, then claims within the limits, passing the
//! work of gated kinds through their gates (`gated`).

use super::gated;
use super::queries::{claim_on, CLAIM_LOCK};
use super::{micros, pg_error, PostgresStore};
use crate::store::{from_micros, Choice, Claim, Claimed, Share, StoreError};

impl PostgresStore {
    /// Starts the due operations of `claim`'s kinds on its node (see
    /// [`Store::claim`](crate::store::Store::claim)).
    pub(super) async fn claim_due(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        let asked = std::time::Instant::now();
        let mut client = self.client().await?;
        let gated = claim
            .kinds
            .iter()
            .any(|(kind, room)| *room > 0 && claim.gated(kind));
        if claim.limits.is_none() && !gated {
            // No limit over the cluster: each node claims within its own room, and the claim
            // is one statement (its rows locked with SKIP LOCKED), pipelined with the
            // next-due read: one round trip.
            let room: Vec<(&str, usize)> =
                claim.kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
            return claim_on(&client, claim, &room, claim.total, Vec::new()).await;
        }
        // READ COMMITTED whatever the database's default: the count below must see what
        // claims committed while this one waited for the lock.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(pg_error)?;
        // Claims under a limit take turns over the cluster, so that what runs (read next,
        // after the lock: each statement reads what was committed before it started) is what
        // the last claim left, and two nodes cannot both take the last room under a limit.
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1)")
            .await
            .map_err(pg_error)?;
        let counted = tx
            .prepare_cached(concat!(
                "SELECT kind, count(*) FROM operations WHERE state = ",
                running_sql!(),
                " GROUP BY kind"
            ))
            .await
            .map_err(pg_error)?;
        let (_, counts) =
            tokio::try_join!(tx.query(&lock, &[&CLAIM_LOCK]), tx.query(&counted, &[]))
                .map_err(pg_error)?;
        // What it starts starts once it holds the lock, not when the claim was asked: a claim
        // that waited for another node's must not date its starts before what that one ended
        // (the run of a key would seem to overlap the one before it).
        let late = |claim: &Claim| Claim {
            now: crate::model::time::to_micros(claim.now + asked.elapsed()),
            ..claim.clone()
        };
        let asked_claim = claim;
        let claim = &late(asked_claim);
        let mut running = std::collections::HashMap::new();
        for row in &counts {
            let kind: String = row.try_get(0).map_err(pg_error)?;
            let n: i64 = row.try_get(1).map_err(pg_error)?;
            running.insert(kind, usize::try_from(n).unwrap_or(usize::MAX));
        }
        let (room, total) = if claim.limits.is_none() {
            (claim.kinds.clone(), claim.total)
        } else {
            claim.limits.narrow(&claim.kinds, claim.total, &running)
        };
        if !gated {
            let room: Vec<(&str, usize)> = room.iter().map(|(k, n)| (k.as_str(), *n)).collect();
            let claimed = claim_on(&tx, claim, &room, total, Vec::new()).await?;
            tx.commit().await.map_err(pg_error)?;
            return Ok(claimed);
        }
        // Some kind has a limit per concurrency key or a start rate: every kind's due work is
        // read in the claim's order, passing over what its gates refuse; the first `total`
        // over all kinds (highest priority first, whatever the kind) start.
        let mut gates = Vec::with_capacity(room.len());
        for (kind, _) in &room {
            gates.push(gated::gates(&tx, claim, kind, micros(claim.now)).await?);
        }
        // What starts is dated after the reads that let it start: an end committed while
        // this claim held the lock (and so seen by its counts) is never after its start, and
        // the starts a rate counts are dated alike.
        let claim = &late(asked_claim);
        let now = micros(claim.now);
        let mut choice = Choice::default();
        for ((kind, n), gates) in room.iter().zip(gates) {
            let mut share = Share::new(gates, (*n).min(total), now);
            gated::pick(&tx, kind, &mut share, &mut choice, now).await?;
            choice.close(kind, &share);
        }
        let chosen = choice.first(total);
        let started = gated::start(&tx, claim, &chosen.start).await?;
        // No more to start: the statement reads when the next queued operation is due.
        let mut claimed = claim_on(&tx, claim, &[], 0, started).await?;
        tx.commit().await.map_err(pg_error)?;
        claimed.held = chosen.held;
        claimed.next_due = claimed
            .next_due
            .into_iter()
            .chain(chosen.next_due.map(from_micros))
            .min();
        Ok(claimed)
    }
}
