//! End-to-end figures, printed (not asserted): `cargo bench --bench throughput`.
//!
//! For each store configuration, an in-process server on a loopback port and 64 concurrent
//! gRPC clients on the same two cores:
//! - throughput of no-op `sleep` operations (duration 0) from the first submission until every
//!   one is done (operations/s);
//! - SubmitTask latency p50/p99 under that load;
//! - p99 time from a CancelOperation reply to the operation being seen done/CANCELLED
//!   (through WaitOperation) for running operations.
//!
//! `OPRUN_BENCH_OPS` sets the operations per round (default 20000) and `OPRUN_BENCH_ROUNDS`
//! the rounds per configuration (default 3); each round is printed, then the median of each
//! figure. The machine is a shared 2-core VM, so single rounds vary by ±15%.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, WaitOperationRequest,
};
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{SleepInput, SubmitTaskRequest};
use oprun::store::memory::MemoryStore;
use oprun::store::sqlite::{Durability, SqliteOptions, SqliteStore};
use oprun::store::Store;
use oprun::{Registry, Runner, RunnerConfig};
use tonic::transport::Channel;

const CLIENTS: usize = 64;

fn sleep(ms: u64, steps: u32) -> prost_types::Any {
    pack(&SleepInput {
        duration: Some(
            prost_types::Duration::try_from(Duration::from_millis(ms)).expect("duration"),
        ),
        steps,
        fail_message: String::new(),
        ..Default::default()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Clone, Copy)]
struct Figures {
    ops_per_sec: f64,
    submit_p50: Duration,
    submit_p99: Duration,
    cancel_p50: Duration,
    cancel_p99: Duration,
}

async fn run(label: &str, store: Arc<dyn Store>, total: usize) -> Figures {
    let config = RunnerConfig::default().max_running(256);
    let runner = Runner::start(Registry::with_builtins(), store, config)
        .await
        .expect("runner");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(oprun::server::serve(
        listener,
        runner.clone(),
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(5),
    ));
    let endpoint = format!("http://{addr}");
    // A few HTTP/2 connections shared by the clients, as a real client pool would.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(
            Channel::from_shared(endpoint.clone())
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
    }

    // Throughput and submit latency.
    let per_client = total / CLIENTS;
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..CLIENTS {
        let mut tasks = TaskServiceClient::new(channels[c % channels.len()].clone());
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                tasks
                    .submit_task(SubmitTaskRequest {
                        kind: "sleep".into(),
                        input: Some(sleep(0, 1)),
                        request_id: String::new(),
                        ..Default::default()
                    })
                    .await
                    .expect("submit");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for h in handles {
        latencies.extend(h.await.expect("client"));
    }
    // Every submission is acknowledged; wait (in process, no RPC load) until all are done.
    while runner.unfinished() > 0 {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = started.elapsed();
    let submitted = per_client * CLIENTS;
    latencies.sort();

    // Cancel to done: 200 running sleeps, cancelled by 8 clients at once.
    let mut ops = OperationsClient::new(channels[0].clone());
    let mut names = Vec::new();
    let mut tasks = TaskServiceClient::new(channels[0].clone());
    for _ in 0..200 {
        names.push(
            tasks
                .submit_task(SubmitTaskRequest {
                    kind: "sleep".into(),
                    input: Some(sleep(600_000, 1)),
                    request_id: String::new(),
                    ..Default::default()
                })
                .await
                .expect("submit")
                .into_inner()
                .name,
        );
    }
    for name in &names {
        loop {
            let op = ops
                .get_operation(GetOperationRequest { name: name.clone() })
                .await
                .expect("get")
                .into_inner();
            let meta = oprun::proto::oprun::v1::OperationMetadata::decode_from(&op);
            if meta == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut cancel_handles = Vec::new();
    for chunk in names.chunks(25) {
        let chunk = chunk.to_vec();
        let mut ops =
            OperationsClient::new(channels[cancel_handles.len() % channels.len()].clone());
        cancel_handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for name in chunk {
                ops.cancel_operation(CancelOperationRequest { name: name.clone() })
                    .await
                    .expect("cancel");
                let t = Instant::now();
                let op = ops
                    .wait_operation(WaitOperationRequest {
                        name,
                        timeout: Some(prost_types::Duration {
                            seconds: 10,
                            nanos: 0,
                        }),
                    })
                    .await
                    .expect("wait")
                    .into_inner();
                assert!(op.done, "cancelled operation done");
                out.push(t.elapsed());
            }
            out
        }));
    }
    let mut cancels = Vec::new();
    for h in cancel_handles {
        cancels.extend(h.await.expect("cancel client"));
    }
    cancels.sort();

    let _ = stop_tx.send(());
    server.await.expect("server task").expect("server");
    let f = Figures {
        ops_per_sec: submitted as f64 / elapsed.as_secs_f64(),
        submit_p50: percentile(&latencies, 0.50),
        submit_p99: percentile(&latencies, 0.99),
        cancel_p50: percentile(&cancels, 0.50),
        cancel_p99: percentile(&cancels, 0.99),
    };
    print_figures(
        &format!("  {label} ({submitted} ops, {:.2}s)", elapsed.as_secs_f64()),
        &f,
    );
    f
}

fn print_figures(label: &str, f: &Figures) {
    println!(
        "{label:<40} {:>7.0} ops/s  submit p50 {:>6.2} ms  p99 {:>6.2} ms  cancel→done p50 {:>5.2} ms  p99 {:>5.2} ms",
        f.ops_per_sec,
        f.submit_p50.as_secs_f64() * 1e3,
        f.submit_p99.as_secs_f64() * 1e3,
        f.cancel_p50.as_secs_f64() * 1e3,
        f.cancel_p99.as_secs_f64() * 1e3,
    );
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Runs `rounds` rounds of one configuration and prints the median of each figure.
async fn rounds(
    label: &str,
    rounds: usize,
    total: usize,
    make: impl Fn() -> Arc<dyn Store>,
) -> Figures {
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.push(run(label, make(), total).await);
    }
    let m = Figures {
        ops_per_sec: median(all.iter().map(|f| f.ops_per_sec).collect()),
        submit_p50: median(all.iter().map(|f| f.submit_p50).collect()),
        submit_p99: median(all.iter().map(|f| f.submit_p99).collect()),
        cancel_p50: median(all.iter().map(|f| f.cancel_p50).collect()),
        cancel_p99: median(all.iter().map(|f| f.cancel_p99).collect()),
    };
    print_figures(&format!("{label}: median of {rounds}"), &m);
    m
}

/// Decodes the state number of an operation's metadata (2 = RUNNING).
trait StateOf {
    fn decode_from(op: &oprun::proto::google::longrunning::Operation) -> i32;
}

impl StateOf for oprun::proto::oprun::v1::OperationMetadata {
    fn decode_from(op: &oprun::proto::google::longrunning::Operation) -> i32 {
        use prost::Message;
        op.metadata
            .as_ref()
            .and_then(|m| Self::decode(m.value.as_slice()).ok())
            .map_or(0, |m| m.state)
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let total: usize = std::env::var("OPRUN_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "oprun end-to-end: {CLIENTS} concurrent gRPC clients, no-op sleep operations, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let n_rounds: usize = std::env::var("OPRUN_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
            .max(1);
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = std::sync::atomic::AtomicUsize::new(0);
        let sqlite = |durability: Durability| {
            let n = fresh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let store = SqliteStore::open(
                &dir.path().join(format!("db{n}")),
                SqliteOptions::default().durability(durability),
            )
            .expect("sqlite");
            Arc::new(store) as Arc<dyn Store>
        };
        let full = rounds("sqlite synchronous=FULL", n_rounds, total, || {
            sqlite(Durability::Full)
        })
        .await;
        rounds("sqlite synchronous=NORMAL", n_rounds, total, || {
            sqlite(Durability::Normal)
        })
        .await;
        let memory = rounds("memory", n_rounds, total, || {
            Arc::new(MemoryStore::new()) as Arc<dyn Store>
        })
        .await;
        println!(
            "durable (FULL) throughput is {:.0}% of the in-memory store's",
            100.0 * full.ops_per_sec / memory.ops_per_sec
        );
    });
}
