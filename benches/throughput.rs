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
//! `OPRUN_BENCH_OPS` sets the operations per configuration (default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, WaitOperationRequest,
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
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Figures {
    ops_per_sec: f64,
    submit_p50: Duration,
    submit_p99: Duration,
    cancel_p50: Duration,
    cancel_p99: Duration,
}

async fn run(label: &str, store: Arc<dyn Store>, total: usize) -> Figures {
    let config = RunnerConfig {
        max_running: 256,
        ..RunnerConfig::default()
    };
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
        runner,
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
    let mut ops = OperationsClient::new(channels[0].clone());
    loop {
        let pending = ops
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                filter: "done = false".into(),
                page_size: 1,
                page_token: String::new(),
                return_partial_success: false,
            })
            .await
            .expect("list")
            .into_inner();
        if pending.operations.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let submitted = per_client * CLIENTS;
    latencies.sort();

    // Cancel to done: 200 running sleeps, cancelled 8 at a time.
    let mut names = Vec::new();
    let mut tasks = TaskServiceClient::new(channels[0].clone());
    for _ in 0..200 {
        names.push(
            tasks
                .submit_task(SubmitTaskRequest {
                    kind: "sleep".into(),
                    input: Some(sleep(600_000, 1)),
                    request_id: String::new(),
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
    println!(
        "{label:<22} {submitted:>6} ops in {:>6.2}s  {:>8.0} ops/s  submit p50 {:>7.2} ms  p99 {:>7.2} ms  cancel→done p50 {:>6.2} ms  p99 {:>6.2} ms",
        elapsed.as_secs_f64(),
        f.ops_per_sec,
        f.submit_p50.as_secs_f64() * 1e3,
        f.submit_p99.as_secs_f64() * 1e3,
        f.cancel_p50.as_secs_f64() * 1e3,
        f.cancel_p99.as_secs_f64() * 1e3,
    );
    f
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
        let dir = tempfile::tempdir().expect("tempdir");
        let full =
            SqliteStore::open(&dir.path().join("full"), SqliteOptions::default()).expect("sqlite");
        run("sqlite synchronous=FULL", Arc::new(full), total).await;
        let normal = SqliteStore::open(
            &dir.path().join("normal"),
            SqliteOptions {
                durability: Durability::Normal,
                ..SqliteOptions::default()
            },
        )
        .expect("sqlite");
        run("sqlite synchronous=NORMAL", Arc::new(normal), total).await;
        run("memory", Arc::new(MemoryStore::new()), total).await;
    });
}
