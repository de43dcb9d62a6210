//! What batch submission and priorities give, printed (not asserted):
//! `cargo bench -p oprun-workers --bench scheduling`.
//!
//! Starts this build's release `oprun serve` (the embedded store, `--max-running 1`) in its own
//! process, and from this process over loopback gRPC:
//! 1. **Batch against one at a time**, `SCHED_ROUNDS` rounds, interleaved: 1,000 no-op `sleep`
//!    submissions as 1,000 SubmitTask calls one after another (one client), then as one
//!    BatchSubmitTasks call. Printed: each round's rates and their ratio, and the medians.
//! 2. **A high priority behind a queue**: with the one slot held by a long operation, a
//!    high-priority no-op is submitted and the long one cancelled; the high one's wait is the
//!    time from the long one's end to its own start (both written by the server). Measured
//!    `SCHED_SAMPLES` times with nothing else queued, then again with `SCHED_QUEUED` (default
//!    1,000,000) low-priority no-ops queued (submitted in batches of 1,000). Printed: p50/p99
//!    of each, and their ratio.

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant, SystemTime};

use harness::{connect, env_or, noop, percentile_ms, wait_for, Server, Target};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{CancelOperationRequest, GetOperationRequest, Operation};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{BatchSubmitTasksRequest, OperationMetadata, SubmitTaskRequest};
use prost::Message;
use tonic::transport::Channel;

fn noop_request(priority: i32) -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: "sleep".into(),
        input: Some(noop()),
        priority,
        ..Default::default()
    }
}

fn meta(op: &Operation) -> OperationMetadata {
    OperationMetadata::decode(op.metadata.as_ref().expect("metadata").value.as_slice())
        .expect("metadata decodes")
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(t.expect("a time")).expect("a valid time")
}

async fn get(channel: &Channel, name: &str) -> Operation {
    OperationsClient::new(channel.clone())
        .get_operation(GetOperationRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner()
}

async fn wait(channel: &Channel, name: &str) -> Operation {
    loop {
        let op = OperationsClient::new(channel.clone())
            .wait_operation(wait_for(name.to_owned(), 10))
            .await
            .expect("wait")
            .into_inner();
        if op.done {
            return op;
        }
    }
}

/// Submissions per second: 1,000 one call at a time, then 1,000 in one batch.
async fn rates(channel: &Channel) -> (f64, f64) {
    let mut tasks = TaskServiceClient::new(channel.clone());
    let started = Instant::now();
    for _ in 0..1000 {
        tasks.submit_task(noop_request(0)).await.expect("submit");
    }
    let single = 1000.0 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let ops = tasks
        .batch_submit_tasks(BatchSubmitTasksRequest {
            requests: (0..1000).map(|_| noop_request(0)).collect(),
        })
        .await
        .expect("batch")
        .into_inner()
        .operations;
    assert_eq!(ops.len(), 1000);
    let batch = 1000.0 / started.elapsed().as_secs_f64();
    (single, batch)
}

/// How long a high-priority operation waits for the slot a cancelled long one frees, from
/// the long one's end to its own start, `samples` times.
async fn high_priority_waits(channel: &Channel, samples: usize) -> Vec<Duration> {
    let mut tasks = TaskServiceClient::new(channel.clone());
    let mut waits = Vec::with_capacity(samples);
    for _ in 0..samples {
        let long = tasks
            .submit_task(SubmitTaskRequest {
                input: Some(oprun::model::pack(&oprun::proto::oprun::v1::SleepInput {
                    duration: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                })),
                ..noop_request(100)
            })
            .await
            .expect("submit")
            .into_inner()
            .name;
        while meta(&get(channel, &long).await).state != State::Running as i32 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let high = tasks
            .submit_task(noop_request(50))
            .await
            .expect("submit")
            .into_inner()
            .name;
        OperationsClient::new(channel.clone())
            .cancel_operation(CancelOperationRequest { name: long.clone() })
            .await
            .expect("cancel");
        let freed = time(meta(&wait(channel, &long).await).end_time);
        let started = time(meta(&wait(channel, &high).await).start_time);
        waits.push(started.duration_since(freed).unwrap_or_default());
    }
    waits.sort_unstable();
    waits
}

#[tokio::main]
async fn main() {
    let rounds: usize = env_or("SCHED_ROUNDS", 5);
    let samples: usize = env_or("SCHED_SAMPLES", 50);
    let queued: usize = env_or("SCHED_QUEUED", 1_000_000);
    let target = Target {
        label: "oprun".into(),
        program: env!("CARGO_BIN_EXE_oprun").into(),
        args: ["serve", "--max-running", "1", "--max-queued", "2000000"]
            .map(str::to_owned)
            .to_vec(),
        nodes: 1,
    };

    println!("## batch against one at a time (1,000 no-op sleeps, one client)");
    let server = Server::start(&target);
    let channel = connect(server.addr).await;
    let mut ratios = Vec::new();
    let (mut singles, mut batches) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (single, batch) = rates(&channel).await;
        println!(
            "round {round}: one at a time {single:.0}/s, batch {batch:.0}/s, ratio {:.1}x",
            batch / single
        );
        ratios.push(batch / single);
        singles.push(single);
        batches.push(batch);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median: one at a time {:.0}/s, batch {:.0}/s, ratio {:.1}x",
        median(&mut singles),
        median(&mut batches),
        median(&mut ratios)
    );
    server.stop();

    println!("\n## a high priority behind a queue (--max-running 1; {samples} samples)");
    let server = Server::start(&target);
    let channel = connect(server.addr).await;
    let empty = high_priority_waits(&channel, samples).await;
    // Hold the slot while the queue fills, so that the low ones stay queued.
    let mut tasks = TaskServiceClient::new(channel.clone());
    let filled = Instant::now();
    for _ in 0..queued.div_ceil(1000) {
        tasks
            .batch_submit_tasks(BatchSubmitTasksRequest {
                requests: (0..1000).map(|_| noop_request(-10)).collect(),
            })
            .await
            .expect("batch");
    }
    println!(
        "queued {queued} low-priority no-ops in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let behind = high_priority_waits(&channel, samples).await;
    for (label, waits) in [("nothing queued", &empty), ("behind the queue", &behind)] {
        println!(
            "{label}: end of the slot's holder to the high one's start p50 {:.2} ms, p99 {:.2} ms",
            percentile_ms(waits, 0.5),
            percentile_ms(waits, 0.99)
        );
    }
    println!(
        "ratio (behind / nothing queued): p50 {:.2}x, p99 {:.2}x",
        percentile_ms(&behind, 0.5) / percentile_ms(&empty, 0.5).max(1e-3),
        percentile_ms(&behind, 0.99) / percentile_ms(&empty, 0.99).max(1e-3)
    );
    server.stop();
}
