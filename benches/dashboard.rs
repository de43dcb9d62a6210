//! What the dashboard's reads cost on a large store, printed (not asserted):
//! `cargo bench --bench dashboard`.
//!
//! Fills a SQLite store with `OPRUN_BENCH_OPS` operations (default 100,000: nine in ten
//! finished, of two kinds, one in a thousand still queued), then times, each
//! `OPRUN_BENCH_ROUNDS` times (default 5, the median printed), the reads one page view makes:
//! - the first page of the operations list, newest first (`list_newest`, 51 rows: a page of
//!   50 and one to tell that more follow), with no filter, a kind, a rare state, and a state
//!   chip plus kind;
//! - a page deep in the list (below the middle `seq`);
//! - the first page oldest first (`list`, as ListOperations pages) with a `create_time`
//!   lower bound in the middle of the history;
//! - the overview's counts and finishes over five minutes and over a day (`summarize`, read
//!   from the tallies the store keeps as operations change).
//!
//! Each line prints the median and the slowest round.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use oprun::filter::Filter;
use oprun::model::{pack, Change, Fence, OperationRecord, Outcome, State};
use oprun::proto::oprun::v1::{SleepInput, SleepOutput};
use oprun::store::sqlite::{Durability, SqliteOptions, SqliteStore};
use oprun::store::{Inserted, Store};
use oprun::Code;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fill(store: &Arc<SqliteStore>, total: usize) {
    let writers = 32;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < total {
                let kind = if i % 10 == 0 { "snapshot" } else { "sleep" };
                let input = pack(&SleepInput::default());
                let r = OperationRecord::new_queued(kind.into(), input, None);
                let Inserted::New(r) = store.insert(r).await.expect("insert") else {
                    unreachable!("no request_id")
                };
                if i % 1000 != 0 {
                    let end = if i % 7 == 0 {
                        Change::Finish {
                            state: State::Failed,
                            outcome: Outcome::error(Code::Unknown, "a failure of ordinary length"),
                        }
                    } else {
                        let output = pack(&SleepOutput { steps_done: 1 });
                        Change::Finish {
                            state: State::Succeeded,
                            outcome: Outcome::Response(output),
                        }
                    };
                    let done = r
                        .apply(end, SystemTime::now())
                        .expect("a queued operation may end");
                    store
                        .write(&done, &Fence::Version(r.version))
                        .await
                        .expect("write");
                }
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

async fn time<F, Fut, T>(rounds: usize, mut f: F) -> ((Duration, Duration), T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut took = Vec::with_capacity(rounds);
    let mut last = None;
    for _ in 0..rounds {
        let started = Instant::now();
        last = Some(f().await);
        took.push(started.elapsed());
    }
    took.sort();
    (
        (took[took.len() / 2], took[took.len() - 1]),
        last.expect("at least one round"),
    )
}

#[tokio::main]
async fn main() {
    let total = env("OPRUN_BENCH_OPS", 100_000);
    let rounds = env("OPRUN_BENCH_ROUNDS", 5).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SqliteStore::open(
            dir.path(),
            SqliteOptions::default().durability(Durability::Normal),
        )
        .expect("store"),
    );
    let started = Instant::now();
    fill(&store, total).await;
    println!(
        "dashboard: {total} operations stored in {:.1} s; median of {rounds} rounds:",
        started.elapsed().as_secs_f64()
    );
    let middle = store
        .list_newest(i64::MAX, &Filter::parse("").expect("filter"), 1)
        .await
        .expect("newest")
        .first()
        .map_or(0, |r| r.seq / 2);
    for (label, filter, before) in [
        ("first page, no filter", "", i64::MAX),
        (
            "first page, kind = \"snapshot\"",
            "kind = \"snapshot\"",
            i64::MAX,
        ),
        (
            "first page, state = QUEUED (1 in 1000)",
            "state = QUEUED",
            i64::MAX,
        ),
        (
            "first page, kind = \"sleep\" AND state = FAILED",
            "kind = \"sleep\" AND state = FAILED",
            i64::MAX,
        ),
        ("a page halfway down, no filter", "", middle),
    ] {
        let filter = Filter::parse(filter).expect("filter");
        let (took, rows) = time(rounds, || store.list_newest(before, &filter, 51)).await;
        let rows = rows.expect("list").len();
        println!("  {label:<50} {}  ({rows} rows)", ms(took));
    }
    let first = store
        .list(0, &Filter::parse("").expect("filter"), 1)
        .await
        .expect("oldest");
    let newest = store
        .list_newest(i64::MAX, &Filter::parse("").expect("filter"), 1)
        .await
        .expect("newest");
    if let (Some(first), Some(last)) = (first.first(), newest.first()) {
        let span = last
            .create_time
            .duration_since(first.create_time)
            .unwrap_or_default();
        let middle = first.create_time + span / 2;
        let at = prost_types::Timestamp::from(middle);
        let filter = Filter::parse(&format!("create_time >= \"{at}\"")).expect("filter");
        let (took, rows) = time(rounds, || store.list(0, &filter, 51)).await;
        let rows = rows.expect("list");
        let label = "oldest first, create_time >= the middle";
        println!("  {label:<50} {}  ({} rows)", ms(took), rows.len());
        // The last page newest first: 20 matches, then nothing older can match.
        let before = rows.get(20).map_or(i64::MAX, |r| r.seq);
        let (took, rows) = time(rounds, || store.list_newest(before, &filter, 51)).await;
        let rows = rows.expect("list").len();
        let label = "newest first, create_time >= the middle, last page";
        println!("  {label:<50} {}  ({rows} rows)", ms(took));
        let filter = Filter::parse(&format!("create_time < \"{at}\"")).expect("filter");
        let (took, rows) = time(rounds, || store.list_newest(i64::MAX, &filter, 51)).await;
        let rows = rows.expect("list").len();
        let label = "newest first, create_time < the middle";
        println!("  {label:<50} {}  ({rows} rows)", ms(took));
    }
    for (label, window, bucket) in [
        ("summarize (counts + finishes over 5 min)", 300, 10),
        ("summarize (counts + finishes over a day)", 86_400, 2_880),
    ] {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(now - now % bucket - window);
        let bucket = Duration::from_secs(bucket);
        let (took, summary) = time(rounds, || store.summarize(since, bucket)).await;
        let summary = summary.expect("summarize");
        let counted: u64 = summary.counts.iter().map(|c| c.2).sum();
        let ended: u64 = summary.finished.iter().map(|c| c.1).sum();
        println!(
            "  {label:<50} {}  ({counted} counted, {ended} ended)",
            ms(took)
        );
    }
    store.close().await.expect("close");
}

/// A median and the slowest round, in milliseconds.
fn ms((median, slowest): (Duration, Duration)) -> String {
    format!(
        "{:>8.2} ms (slowest {:>7.2} ms)",
        median.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3
    )
}
