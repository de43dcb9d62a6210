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
//! 3. **Schedule fire jitter**: `SCHED_SCHEDULES` (default 1, then 100) schedules firing every
//!    second (no-op `sleep`, overlap ALLOW) for `SCHED_FIRE_SECONDS` (default 20) on a fresh
//!    server; each run's lateness is its operation's create time (written by the server) minus
//!    its fire time. Printed: p50/p99/max, and fires missing or doubled (expected: none). The
//!    reference, in the same run: this process's own tokio timers, one per schedule, asked to
//!    wake at the same whole seconds (the floor a timer-driven loop can reach here).
//!
//! `SCHED_PARTS` (default `batch,priority,fires`) picks the parts to run.

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant, SystemTime};

use harness::{connect, env_or, noop, percentile_ms, wait_for, Server, Target};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{CancelOperationRequest, GetOperationRequest, Operation};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::schedule::OverlapPolicy;
use oprun::proto::oprun::v1::schedule_service_client::ScheduleServiceClient;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{
    BatchSubmitTasksRequest, CreateScheduleRequest, OperationMetadata, PauseScheduleRequest,
    Schedule, ScheduleTask, SubmitTaskRequest,
};
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

/// Every operation the server holds (a fresh server: the schedules' runs).
async fn all_operations(channel: &Channel) -> Vec<Operation> {
    let mut ops = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = OperationsClient::new(channel.clone())
            .list_operations(oprun::proto::google::longrunning::ListOperationsRequest {
                name: "operations".into(),
                filter: "schedule:*".into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        ops.extend(page.operations);
        if page.next_page_token.is_empty() {
            return ops;
        }
        page_token = page.next_page_token;
    }
}

/// `count` every-second schedules for `seconds`: each run's lateness (create time minus fire
/// time), and how many fire times ran other than once.
async fn fire_jitter(channel: &Channel, count: usize, seconds: u64) -> (Vec<Duration>, usize) {
    let mut api = ScheduleServiceClient::new(channel.clone());
    let mut names = Vec::new();
    for i in 0..count {
        let schedule = Schedule {
            task: Some(ScheduleTask {
                kind: "sleep".into(),
                input: Some(noop()),
                ..Default::default()
            }),
            interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            overlap_policy: OverlapPolicy::Allow as i32,
            ..Default::default()
        };
        let created = api
            .create_schedule(CreateScheduleRequest {
                schedule_id: format!("bench-{i}"),
                schedule: Some(schedule),
            })
            .await
            .expect("create")
            .into_inner();
        names.push(created.name);
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for name in &names {
        api.pause_schedule(PauseScheduleRequest {
            name: name.clone(),
            note: String::new(),
        })
        .await
        .expect("pause");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = Vec::new();
    let mut fires = std::collections::HashMap::<(String, SystemTime), usize>::new();
    for op in all_operations(channel).await {
        let m = meta(&op);
        let fire = time(m.fire_time);
        late.push(time(m.create_time).duration_since(fire).unwrap_or_default());
        *fires.entry((m.schedule, fire)).or_default() += 1;
    }
    let doubled = fires.values().filter(|n| **n > 1).count();
    // Each schedule's fires from its first to its last are every second: the gaps are missing.
    let mut by_schedule = std::collections::HashMap::<String, Vec<SystemTime>>::new();
    for (schedule, fire) in fires.keys() {
        by_schedule.entry(schedule.clone()).or_default().push(*fire);
    }
    let mut missing = 0;
    for times in by_schedule.values_mut() {
        times.sort();
        let span = times[times.len() - 1]
            .duration_since(times[0])
            .unwrap_or_default()
            .as_secs();
        missing += usize::try_from(span + 1).unwrap_or(0) - times.len();
    }
    late.sort();
    (late, doubled + missing)
}

/// The reference: `count` tokio timers in this process, each asked to wake at every whole
/// second for `seconds`; how late each wake was.
async fn timer_jitter(count: usize, seconds: u64) -> Vec<Duration> {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            tokio::spawn(async move {
                let mut late = Vec::new();
                for _ in 0..seconds {
                    let now = SystemTime::now();
                    let into = now
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .subsec_nanos();
                    let wait = Duration::from_secs(1) - Duration::from_nanos(u64::from(into));
                    let due = now + wait;
                    tokio::time::sleep(wait).await;
                    late.push(SystemTime::now().duration_since(due).unwrap_or_default());
                }
                late
            })
        })
        .collect();
    let mut late = Vec::new();
    for task in tasks {
        late.extend(task.await.expect("timer task"));
    }
    late.sort();
    late
}

#[tokio::main]
async fn main() {
    let rounds: usize = env_or("SCHED_ROUNDS", 5);
    let samples: usize = env_or("SCHED_SAMPLES", 50);
    let queued: usize = env_or("SCHED_QUEUED", 1_000_000);
    let parts: String = env_or("SCHED_PARTS", "batch,priority,fires".to_owned());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let target = Target {
        label: "oprun".into(),
        program: env!("CARGO_BIN_EXE_oprun").into(),
        args: ["serve", "--max-running", "1", "--max-queued", "2000000"]
            .map(str::to_owned)
            .to_vec(),
        nodes: 1,
    };

    if part("batch") {
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
    }
    if part("priority") {
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
    if part("fires") {
        let seconds: u64 = env_or("SCHED_FIRE_SECONDS", 20);
        let counts: Vec<usize> = std::env::var("SCHED_SCHEDULES").map_or_else(
            |_| vec![1, 100],
            |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        );
        let serve = Target {
            label: "oprun".into(),
            program: env!("CARGO_BIN_EXE_oprun").into(),
            args: vec!["serve".to_owned()],
            nodes: 1,
        };
        for count in counts {
            println!("\n## schedule fire jitter ({count} every-second schedules, {seconds} s)");
            let server = Server::start(&serve);
            let channel = connect(server.addr).await;
            let (late, wrong) = fire_jitter(&channel, count, seconds).await;
            server.stop();
            let timers = timer_jitter(count, seconds).await;
            println!(
                "oprun: {} runs, fire time to operation created p50 {:.2} ms, p99 {:.2} ms, max {:.2} \
                 ms; fire times not run exactly once: {wrong}",
                late.len(),
                percentile_ms(&late, 0.5),
                percentile_ms(&late, 0.99),
                late.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
            );
            println!(
                "reference (tokio timers in this process): p50 {:.2} ms, p99 {:.2} ms",
                percentile_ms(&timers, 0.5),
                percentile_ms(&timers, 0.99)
            );
        }
    }
}
