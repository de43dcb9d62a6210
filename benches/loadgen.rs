//! Out-of-process load, printed (not asserted): `cargo bench -p oprun-workers --bench loadgen`.
//!
//! Each target is a server in its own process (this build's release `oprun`, another oprun
//! binary to compare with, the in-memory reference server of `../shared/refserver`), started
//! on a loopback port with a fresh data directory and driven over gRPC from this process.
//! Targets run interleaved, one round each in turn (A B C A B C …), so a noisy host weighs on
//! them alike; each round prints its figures, then the medians per target and their ratios to
//! the first target.
//!
//! Environment (all optional):
//! - `LOADGEN_TARGETS`: `;`-separated `label=program args…`; `{oprun}` is this build's binary,
//!   `{ref}` the reference server (built with the command in `../shared/refserver/README.md`).
//!   `label*N=…` starts N processes with the same command (nodes on one PostgreSQL store)
//!   and spreads the clients' connections over them; CPU is summed over them, RSS is the
//!   largest.
//!   `--listen 127.0.0.1:0 --data-dir DIR` are appended. Default:
//!   `sqlite={oprun} serve;memory={oprun} serve --store memory;ref={ref} serve` (ref when built).
//! - `LOADGEN_MODE`: `closed` (default: each client submits a no-op `sleep`, waits for it with
//!   WaitOperation, repeats) or `submit` (each client submits back to back; the server runs
//!   them as fast as it can) or `cancel` (`LOADGEN_CANCEL_OPS` long sleeps, default 200, are
//!   submitted and left to start; then, one at a time, a WaitOperation is opened on one,
//!   CancelOperation sent, and the time from its reply to the Wait's answer with `done`
//!   measured; give oprun `--max-running 256` so that all of them run rather than queue).
//! - `LOADGEN_SERVER_LOG`: the servers' `OPRUN_LOG` (default `warn`); their stderr is then
//!   kept in `target/loadgen-<label>.log`.
//! - `LOADGEN_CLIENTS` (default 16), `LOADGEN_SECONDS` measured per round (default 10),
//!   `LOADGEN_ROUNDS` (default 3), `LOADGEN_CONNECTIONS` HTTP/2 connections (default
//!   clients / 8, at least 1).
//!
//! Figures: operations per second (completed in `closed` mode, acknowledged in `submit`
//! mode), SubmitTask p50/p99, submit→done p50/p99 (`closed`), the server's CPU time per
//! operation (from `/proc/PID/stat`; the nodes' sum), its peak RSS, and the largest `*-wal` file seen in its
//! data directory (sampled every 20 ms).

#[path = "harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{connect, env_or, noop, percentile_ms, sample_wal, wait_for, Server, Target};
use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::CancelOperationRequest;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{SleepInput, SubmitTaskRequest};
use tonic::transport::Channel;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Closed,
    Submit,
    Cancel,
}

struct Settings {
    mode: Mode,
    cancel_ops: usize,
    clients: usize,
    connections: usize,
    seconds: f64,
    rounds: usize,
}

#[derive(Clone, Copy, Default)]
struct Figures {
    ops_per_sec: f64,
    submit_p50: f64,
    submit_p99: f64,
    done_p50: f64,
    done_p99: f64,
    cpu_us_per_op: f64,
    rss_mb: f64,
    wal_mb: f64,
    refused: u64,
}

#[derive(Default)]
struct ClientResult {
    submits: Vec<Duration>,
    dones: Vec<Duration>,
    refused: u64,
}

async fn client(channel: Channel, mode: Mode, warmup_end: Instant, end: Instant) -> ClientResult {
    let mut tasks = TaskServiceClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel);
    let mut out = ClientResult::default();
    while Instant::now() < end {
        let t = Instant::now();
        let submitted = tasks
            .submit_task(SubmitTaskRequest {
                kind: "sleep".into(),
                input: Some(noop()),
                ..Default::default()
            })
            .await;
        let submit_time = t.elapsed();
        let op = match submitted {
            Ok(op) => op.into_inner(),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                out.refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(s) => panic!("SubmitTask failed: {s}"),
        };
        let measured = t >= warmup_end;
        if measured {
            out.submits.push(submit_time);
        }
        if mode == Mode::Submit {
            continue;
        }
        let mut done = op.done;
        while !done {
            done = ops
                .wait_operation(wait_for(op.name.clone(), 10))
                .await
                .expect("WaitOperation")
                .into_inner()
                .done;
        }
        if measured {
            out.dones.push(t.elapsed());
        }
    }
    out
}

async fn round(target: &Target, s: &Settings) -> Figures {
    // One after the other: each applies (or finds) the store's schema at start.
    let servers: Vec<Server> = (0..target.nodes).map(|_| Server::start(target)).collect();
    let server = &servers[0];
    let mut channels = Vec::new();
    // Clients spread over the nodes: at least one connection to each.
    for c in 0..s.connections.max(servers.len()) {
        channels.push(connect(servers[c % servers.len()].addr).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let wal = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (dir, stop, wal) = (
            server.dir.path().join("data"),
            Arc::clone(&stop),
            Arc::clone(&wal),
        );
        std::thread::spawn(move || sample_wal(dir, stop, wal))
    };
    if s.mode == Mode::Cancel {
        let figures = cancel_round(&channels[0], &servers, s.cancel_ops).await;
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        for server in servers {
            server.stop();
        }
        return figures;
    }
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let warmup_end = start + warmup;
    let end = warmup_end + Duration::from_secs_f64(s.seconds);
    let mut handles = Vec::new();
    for c in 0..s.clients {
        handles.push(tokio::spawn(client(
            channels[c % channels.len()].clone(),
            s.mode,
            warmup_end,
            end,
        )));
    }
    tokio::time::sleep_until(warmup_end.into()).await;
    let cpu_of_all = || servers.iter().map(Server::cpu_seconds).sum::<f64>();
    let cpu_start = cpu_of_all();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.expect("client task"));
    }
    let measured = Instant::now().duration_since(warmup_end).as_secs_f64();
    let cpu = cpu_of_all() - cpu_start;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let rss_mb = servers.iter().map(Server::peak_rss_mb).fold(0.0, f64::max);
    for server in servers {
        server.stop();
    }

    let mut submits: Vec<Duration> = results.iter().flat_map(|r| r.submits.clone()).collect();
    let mut dones: Vec<Duration> = results.iter().flat_map(|r| r.dones.clone()).collect();
    submits.sort();
    dones.sort();
    let ops = match s.mode {
        Mode::Submit => submits.len(),
        Mode::Closed | Mode::Cancel => dones.len(),
    };
    Figures {
        ops_per_sec: ops as f64 / measured,
        submit_p50: percentile_ms(&submits, 0.50),
        submit_p99: percentile_ms(&submits, 0.99),
        done_p50: percentile_ms(&dones, 0.50),
        done_p99: percentile_ms(&dones, 0.99),
        cpu_us_per_op: if ops == 0 {
            0.0
        } else {
            cpu * 1e6 / ops as f64
        },
        rss_mb,
        wal_mb: wal.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
        refused: results.iter().map(|r| r.refused).sum(),
    }
}

/// `cancel` mode: `n` long sleeps submitted and started, then cancelled one at a time, each
/// with a WaitOperation already open on it. Figures: CancelOperation's latency in the
/// `submit` columns, its reply → the Wait's answer (done) in the `done` columns.
async fn cancel_round(channel: &Channel, servers: &[Server], n: usize) -> Figures {
    let mut tasks = TaskServiceClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel.clone());
    let long = pack(&SleepInput {
        duration: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        steps: 600,
        ..Default::default()
    });
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let op = tasks
            .submit_task(SubmitTaskRequest {
                kind: "sleep".into(),
                input: Some(long.clone()),
                ..Default::default()
            })
            .await
            .expect("SubmitTask")
            .into_inner();
        names.push(op.name);
    }
    // Let them start (and the first progress writes settle).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_of_all = || servers.iter().map(Server::cpu_seconds).sum::<f64>();
    let cpu_start = cpu_of_all();
    let mut cancels = Vec::with_capacity(n);
    let mut dones = Vec::with_capacity(n);
    for name in names {
        let mut waiter = ops.clone();
        let wait_name = name.clone();
        let wait = tokio::spawn(async move {
            let op = waiter
                .wait_operation(wait_for(wait_name, 30))
                .await
                .expect("WaitOperation")
                .into_inner();
            (Instant::now(), op.done)
        });
        // The Wait reaches the server first.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t = Instant::now();
        ops.cancel_operation(CancelOperationRequest { name })
            .await
            .expect("CancelOperation");
        let replied = Instant::now();
        let (answered, done) = wait.await.expect("wait task");
        assert!(
            done,
            "WaitOperation answered before the cancelled operation was done"
        );
        cancels.push(replied - t);
        dones.push(answered.saturating_duration_since(replied));
    }
    let cpu = cpu_of_all() - cpu_start;
    cancels.sort();
    dones.sort();
    Figures {
        ops_per_sec: 0.0,
        submit_p50: percentile_ms(&cancels, 0.50),
        submit_p99: percentile_ms(&cancels, 0.99),
        done_p50: percentile_ms(&dones, 0.50),
        done_p99: percentile_ms(&dones, 0.99),
        cpu_us_per_op: cpu * 1e6 / n.max(1) as f64,
        rss_mb: servers.iter().map(Server::peak_rss_mb).fold(0.0, f64::max),
        wal_mb: 0.0,
        refused: 0,
    }
}

fn print(label: &str, f: &Figures) {
    if f.ops_per_sec == 0.0 && f.submit_p50 > 0.0 {
        println!(
            "{label:<22} CancelOperation p50 {:>6.2} p99 {:>6.2} ms  reply→done p50 {:>6.2} p99 {:>6.2} ms  cpu {:>5.0} µs/cancel  rss {:>5.0} MB",
            f.submit_p50, f.submit_p99, f.done_p50, f.done_p99, f.cpu_us_per_op, f.rss_mb,
        );
        return;
    }
    println!(
        "{label:<22} {:>8.0} ops/s  submit p50 {:>6.2} p99 {:>6.2} ms  done p50 {:>6.2} p99 {:>6.2} ms  cpu {:>5.0} µs/op  rss {:>5.0} MB  wal {:>6.1} MB  refused {}",
        f.ops_per_sec,
        f.submit_p50,
        f.submit_p99,
        f.done_p50,
        f.done_p99,
        f.cpu_us_per_op,
        f.rss_mb,
        f.wal_mb,
        f.refused,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn medians(all: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(all.iter().map(f).collect());
    Figures {
        ops_per_sec: m(|f| f.ops_per_sec),
        submit_p50: m(|f| f.submit_p50),
        submit_p99: m(|f| f.submit_p99),
        done_p50: m(|f| f.done_p50),
        done_p99: m(|f| f.done_p99),
        cpu_us_per_op: m(|f| f.cpu_us_per_op),
        rss_mb: m(|f| f.rss_mb),
        wal_mb: all.iter().map(|f| f.wal_mb).fold(0.0, f64::max),
        refused: all.iter().map(|f| f.refused).sum(),
    }
}

fn main() {
    let clients = env_or("LOADGEN_CLIENTS", 16usize).max(1);
    let settings = Settings {
        mode: match std::env::var("LOADGEN_MODE").as_deref() {
            Ok("submit") => Mode::Submit,
            Ok("cancel") => Mode::Cancel,
            _ => Mode::Closed,
        },
        cancel_ops: env_or("LOADGEN_CANCEL_OPS", 200usize).max(1),
        clients,
        connections: env_or("LOADGEN_CONNECTIONS", (clients / 8).max(1)).max(1),
        seconds: env_or("LOADGEN_SECONDS", 10.0f64),
        rounds: env_or("LOADGEN_ROUNDS", 3usize).max(1),
    };
    let mut default = "sqlite={oprun} serve;memory={oprun} serve --store memory".to_owned();
    if harness::reference().exists() {
        default.push_str(";ref={ref} serve");
    } else {
        eprintln!(
            "loadgen: no reference server at {} (build it as ../shared/refserver/README.md says)",
            harness::reference().display()
        );
    }
    let targets = harness::targets("LOADGEN_TARGETS", &default);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "loadgen: {} mode, {} clients over {} connections, {}s measured per round (after 1s warm-up), {} rounds, targets interleaved",
        match settings.mode {
            Mode::Closed => "closed-loop",
            Mode::Submit => "submit-only",
            Mode::Cancel => "cancel",
        },
        settings.clients,
        settings.connections,
        settings.seconds,
        settings.rounds
    );
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    rt.block_on(async {
        for r in 0..settings.rounds {
            for (i, t) in targets.iter().enumerate() {
                let f = round(t, &settings).await;
                print(&format!("round {} {}", r + 1, t.label), &f);
                all[i].push(f);
            }
        }
    });
    println!(
        "medians of {} rounds (wal: the largest seen):",
        settings.rounds
    );
    for (t, figures) in targets.iter().zip(&all) {
        print(&t.label, &medians(figures));
    }
    // Each round's ratio of the first target to another (run minutes apart, they share the
    // host's noise), then the median of those ratios.
    let pair_ratio = |i: usize, f: fn(&Figures) -> f64| {
        median(
            all[0]
                .iter()
                .zip(&all[i])
                .map(|(a, b)| f(a) / f(b).max(1e-9))
                .collect(),
        )
    };
    for (i, t) in targets.iter().enumerate().skip(1) {
        println!(
            "  {} / {} (median of the rounds' ratios): ops/s {:.2}, submit p99 {:.2}, done p99 {:.2}, cpu/op {:.2}",
            targets[0].label,
            t.label,
            pair_ratio(i, |f| f.ops_per_sec),
            pair_ratio(i, |f| f.submit_p99),
            pair_ratio(i, |f| f.done_p99),
            pair_ratio(i, |f| f.cpu_us_per_op),
        );
    }
}
