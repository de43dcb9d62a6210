//! Start-up at scale, printed (not asserted): `cargo bench --bench store_open`.
//!
//! Fills a SQLite store with `OPRUN_BENCH_OPS` finished operations (default 1,000,000, about
//! 1 KB each on disk with their indexes), closes it, then times, each `OPRUN_BENCH_ROUNDS`
//! times (default 3, the median printed):
//! - `SqliteStore::open` with the integrity check (`quick_check`) `oprun serve` runs,
//! - the same open without it (the check's cost is the difference),
//! - `Runner::start` on the opened store (recovery reads the unfinished operations),
//! - `oprun store check`'s thorough check (`integrity_check` and every row decoded).
//!
//! The store is built once in a temporary directory; the page cache is warm after the first
//! round (a cold start reads the file from disk once more).

use std::sync::Arc;
use std::time::{Duration, Instant};

use oprun::model::{pack, Change, Fence, OperationRecord, Outcome, State};
use oprun::proto::oprun::v1::SleepInput;
use oprun::store::sqlite::{check, Durability, SqliteOptions, SqliteStore};
use oprun::store::{Inserted, Store};
use oprun::{Code, Registry, Runner, RunnerConfig};

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn fill(dir: &std::path::Path, total: usize) {
    let store = Arc::new(
        SqliteStore::open(dir, SqliteOptions::default().durability(Durability::Normal))
            .expect("store"),
    );
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        let n = total / writers + usize::from(w < total % writers);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                let input = pack(&SleepInput {
                    steps: 1,
                    ..SleepInput::default()
                });
                let r = OperationRecord::new_queued("sleep".into(), input, None);
                let Inserted::New(r) = store.insert(r).await.expect("insert") else {
                    unreachable!("no request_id")
                };
                let mut ran = r.clone();
                ran.status_message = "step 1 of 1".into();
                let done = ran
                    .apply(
                        Change::Finish {
                            state: State::Failed,
                            outcome: Outcome::error(
                                Code::Unknown,
                                "a failure message of ordinary length",
                            ),
                        },
                        std::time::SystemTime::now(),
                    )
                    .expect("a queued operation may fail");
                store
                    .write(&done, &Fence::Version(r.version))
                    .await
                    .expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    store.close().await.expect("close");
}

fn main() {
    let total = env("OPRUN_BENCH_OPS", 1_000_000);
    let rounds = env("OPRUN_BENCH_ROUNDS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let started = Instant::now();
        fill(dir.path(), total).await;
        let bytes = std::fs::metadata(dir.path().join("oprun.sqlite3")).map_or(0, |m| m.len());
        println!(
            "store_open: {total} operations, {:.0} MB database, filled in {:.1}s",
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        let (mut checked, mut unchecked, mut recovered, mut thorough) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let store = SqliteStore::open(dir.path(), SqliteOptions::default()).expect("open");
            checked.push(t.elapsed());
            store.close().await.expect("close");

            let t = Instant::now();
            let store =
                SqliteStore::open(dir.path(), SqliteOptions::default().integrity_check(false))
                    .expect("open");
            unchecked.push(t.elapsed());
            let t = Instant::now();
            let runner = Runner::start(
                Registry::with_builtins(),
                Arc::new(store),
                RunnerConfig::default(),
            )
            .await
            .expect("runner");
            recovered.push(t.elapsed());
            runner
                .shutdown(Duration::from_secs(5))
                .await
                .expect("shutdown");

            let t = Instant::now();
            let report = check::run(dir.path()).expect("check");
            assert!(report.is_sound(), "{:?}", report.problems);
            thorough.push(t.elapsed());
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (c, u) = (median(checked), median(unchecked));
        println!(
            "open with quick_check {:>8.0} ms   without {:>6.0} ms   (the check: {:.0} ms)",
            ms(c),
            ms(u),
            ms(c.saturating_sub(u))
        );
        println!(
            "Runner::start (recovery) {:>5.0} ms   start-up as `oprun serve` runs it: {:.0} ms",
            ms(median(recovered.clone())),
            ms(c + median(recovered))
        );
        println!(
            "`oprun store check` (thorough) {:>6.0} ms",
            ms(median(thorough))
        );
    });
}
