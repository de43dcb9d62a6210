//! The store conformance suite: every backend declares it as named tests, one per check, with
//! [`store_conformance_tests!`](crate::store_conformance_tests); the checks live in a module
//! per area of the [`Store`] contract, and each panics with a message saying which promise
//! was broken.

use std::time::{Duration, SystemTime};

use prost_types::Any;

use super::{Claim, Inserted, Store, Swept, Written};
use crate::filter::Filter;
use crate::model::{Change, Fence, OperationRecord, Outcome, State};
use crate::proto::google::rpc::Code;

mod claims;
mod inserts;
mod lists;
mod nodes;
mod schedules;
mod summary;
mod writes;

pub use claims::*;
pub use inserts::*;
pub use lists::*;
pub use nodes::*;
pub use schedules::*;
pub use summary::*;
pub use writes::*;

/// Declares the conformance suite as one test per check for a backend, in a module of its
/// own (`$name`), so that a failure names the check and the backend and the checks run in
/// parallel. `$make` evaluates (in the async test, so it may `.await`) to a closure whose
/// future makes a fresh store; each check makes the stores it needs. With `feed`, the checks
/// of a store several nodes share (its change feed, limits over all nodes) are declared too.
///
/// ```ignore
/// oprun::store_conformance_tests!(mod memory, #[tokio::test], make: || async { MemoryStore::new() });
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    (mod $name:ident, #[$attr:meta], make: $make:expr $(,)?) => {
        $crate::store_conformance_tests!(@module $name, [$attr], $make, feed: []);
    };
    (mod $name:ident, #[$attr:meta], make: $make:expr, feed $(,)?) => {
        $crate::store_conformance_tests!(@module $name, [$attr], $make, feed: [
            the_feed_shows_each_latest_change_once_in_order,
            a_cancel_request_reaches_the_owner_through_the_feed;
            claims_keep_the_running_limits_over_all_nodes
        ]);
    };
    (@module $name:ident, [$attr:meta], $make:expr, feed: [$($feed:tt)*]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::store_conformance_tests!(@tests [$attr], $make;
                insert_assigns_increasing_seq,
            request_id_returns_existing,
            a_unique_key_holds_while_its_operation_is_unfinished,
            insert_many_stores_all_in_order_with_each_ones_semantics,
            write_replaces_state,
            delete_only_done,
            unfinished_lists_queued_and_running,
            scheduling_fields_round_trip,
            sweep_removes_expired_then_oldest,
            a_stale_version_is_refused,
            a_stale_owner_is_refused_and_a_cancel_request_kept,
            deadlines_of_queued_work,
            list_pages_in_order_with_filter,
            list_newest_pages_backwards_with_filter,
            create_time_bounds_find_every_match,
            summarize_counts_kinds_states_and_ends,
            the_summary_is_a_full_count,
            queued_counts_follow_claims_and_ends,
            claims_take_due_work_in_order_within_limits,
            claims_take_higher_priorities_first,
            a_claim_starts_as_the_state_machine_does,
            claims_keep_each_keys_limit,
            claims_keep_each_kinds_start_rate,
            registrations_are_kept_replaced_and_forgotten,
            long_gone_idle_nodes_are_forgotten,
            orphans_are_the_work_of_expired_leases,
            schedules_are_kept_fenced_listed_and_deleted,
            operations_of_a_schedule_are_found_by_its_name;
                one_request_id_inserted_at_once_makes_one_operation,
            one_unique_key_inserted_at_once_makes_one_operation,
            two_claimers_never_get_the_same_operation,
            one_schedule_change_wins_among_concurrent_writers
            );
            $crate::store_conformance_tests!(@tests [$attr], $make; $($feed)*);
        }
    };
    (@tests [$attr:meta], $make:expr; $($one:ident),* ; $($shared:ident),*) => {
        $(
            #[$attr]
            async fn $one() {
                let make = $make;
                $crate::store::conformance::$one(&make().await).await;
            }
        )*
        $(
            #[$attr]
            async fn $shared() {
                let make = $make;
                $crate::store::conformance::$shared(::std::sync::Arc::new(make().await)).await;
            }
        )*
    };
    (@tests [$attr:meta], $make:expr;) => {};
}

/// A base instant far from the epoch, for tests that set times.
fn base() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Writes a change of `r` fenced by its version, expecting the store to take it.
async fn change<S: Store>(store: &S, r: &OperationRecord, change: Change) -> OperationRecord {
    let next = r.apply(change, base()).expect("a legal change");
    match store
        .write(&next, &Fence::Version(r.version))
        .await
        .expect("write")
    {
        Written::Applied { version, .. } => {
            assert_eq!(version, next.version, "the version a write stores");
            next
        }
        Written::Stale(now) => panic!("a write at the stored version was refused: {now:?}"),
    }
}

fn succeeded() -> Change {
    Change::Finish {
        state: State::Succeeded,
        outcome: Outcome::Response(Any::default()),
    }
}

fn failed() -> Change {
    Change::Finish {
        state: State::Failed,
        outcome: Outcome::Error(crate::proto::google::rpc::Status {
            code: Code::Unknown as i32,
            message: "x".into(),
            details: Vec::new(),
        }),
    }
}

fn cancelled() -> Change {
    Change::Finish {
        state: State::Cancelled,
        outcome: Outcome::Error(crate::proto::google::rpc::Status {
            code: Code::Cancelled as i32,
            message: "cancelled".into(),
            details: Vec::new(),
        }),
    }
}

/// Every operation `filter` matches, oldest first, read in pages of `size`.
async fn all_oldest_first<S: Store>(
    store: &S,
    filter: &Filter,
    size: usize,
) -> Vec<OperationRecord> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list(after, filter, size).await.expect("list");
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    all
}

/// Every operation `filter` matches, newest first, read in pages of `size`.
async fn all_newest_first<S: Store>(
    store: &S,
    filter: &Filter,
    size: usize,
) -> Vec<OperationRecord> {
    let mut all = Vec::new();
    let mut before = i64::MAX;
    loop {
        let page = store
            .list_newest(before, filter, size)
            .await
            .expect("list_newest");
        let Some(last) = page.last() else { break };
        before = last.seq;
        all.extend(page);
    }
    all
}

fn claim(node: &str, kinds: &[(&str, usize)], total: usize, now: SystemTime) -> Claim {
    Claim {
        node: node.to_owned(),
        kinds: kinds.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
        total,
        now,
        limits: super::RunningLimits::none(),
        key_limits: Vec::new(),
        rates: Vec::new(),
    }
}

fn queued(kind: &str) -> OperationRecord {
    OperationRecord::new_queued(
        kind.to_owned(),
        Any {
            type_url: "type.googleapis.com/oprun.v1.SleepInput".into(),
            value: vec![8, 1],
        },
        None,
    )
}

async fn insert_new<S: Store>(store: &S, r: OperationRecord) -> OperationRecord {
    match store.insert(r).await.expect("insert") {
        Inserted::New(r) => r,
        Inserted::Existing(r) => panic!("fresh insert returned existing {}", r.id),
    }
}
