//! What counting costs the hot path, printed (not asserted): `cargo bench --bench metrics`.
//!
//! Times, over `OPRUN_BENCH_OPS` operations (default 2,000,000), what the runner adds per
//! operation for Prometheus: `Metrics::submitted` at creation, `started` at the claim and
//! `finished` at the end (three calls, each a label lookup and atomic adds, histograms
//! included), plus what the gRPC layer adds per call (`call_started` + `call_handled`), on
//! one thread and on two at once (the machine's cores), over 8 kinds. Each figure is the
//! median of 5 rounds. Compare with the server's CPU per operation in docs/BENCHMARKS.md
//! (about 200 µs with SQLite): the ratio is the share of CPU that counting takes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use oprun::metrics::{CallSeries, CommitStats, GrpcLabels, Metrics};
use oprun::model::{OperationRecord, Outcome, State};
use oprun::Code;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn records() -> Vec<OperationRecord> {
    (0..8)
        .map(|k| {
            let mut r = OperationRecord::new_queued(format!("kind{k}"), Default::default(), None);
            r.state = State::Running;
            r.start_time = r.create_time.checked_add(Duration::from_millis(3));
            r.state = State::Failed;
            r.outcome = Some(Outcome::error(Code::Unknown, "x"));
            r.start_time = r.create_time.checked_add(Duration::from_millis(3));
            r.end_time = Some(SystemTime::now());
            r
        })
        .collect()
}

/// Nanoseconds per operation for the three operation calls, on `threads` threads.
fn operations(metrics: &Arc<Metrics>, ops: usize, threads: usize) -> f64 {
    let records = Arc::new(records());
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (metrics, records) = (Arc::clone(metrics), Arc::clone(&records));
            s.spawn(move || {
                for i in 0..ops / threads {
                    let r = &records[(i + t) % records.len()];
                    metrics.submitted(&r.kind);
                    metrics.started(r);
                    metrics.finished(r);
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / ops as f64
}

/// Nanoseconds per gRPC call counted, on `threads` threads.
fn calls(metrics: &Arc<Metrics>, ops: usize, threads: usize) -> f64 {
    let labels = GrpcLabels {
        grpc_type: "unary",
        grpc_service: "oprun.v1.TaskService",
        grpc_method: "SubmitTask",
    };
    // One method's series, as the gRPC layer keeps it.
    let series = CallSeries::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let metrics = Arc::clone(metrics);
            let series = &series;
            s.spawn(move || {
                for _ in 0..ops / threads {
                    metrics.call_started(series, &labels);
                    metrics.call_handled(series, labels, "OK", Duration::from_micros(150));
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / ops as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let ops = env("OPRUN_BENCH_OPS", 2_000_000);
    let metrics = Arc::new(Metrics::new(Some(CommitStats::default())));
    println!("metrics cost, {ops} operations, median of 5 rounds");
    for threads in [1, 2] {
        let op = median((0..5).map(|_| operations(&metrics, ops, threads)).collect());
        let call = median((0..5).map(|_| calls(&metrics, ops, threads)).collect());
        println!(
            "{threads} thread(s): {op:.0} ns per operation (submitted+started+finished), \
             {call:.0} ns per gRPC call; an operation submitted, waited for and read over \
             gRPC (3 calls): {:.0} ns",
            op + 3.0 * call
        );
    }
    let text = metrics.encode(&[("kind0".into(), 1, 2)]);
    println!("a scrape: {} bytes", text.len());
}
