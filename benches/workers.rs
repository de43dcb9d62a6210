//! No-op operations end to end through remote workers against the same work in process,
//! printed (not asserted): `cargo bench -p oprun-workers --bench workers`.
//!
//! One `oprun serve` (this build's release binary, its defaults: SQLite, `--sync full`) in its
//! own process; the load (closed-loop clients, each SubmitTask then WaitOperation) from this
//! process; three ways to run a no-op, interleaved round by round on that one server:
//! - `in-process`: the built-in `sleep` kind with a zero duration;
//! - `rust`: `noop-rust`, the same kind of no-op as an `oprun::Task` in a `oprun::worker`
//!   process of its own (this bench binary, started again as a worker);
//! - `python`: `noop-py` in a Python SDK worker process (`benches/workers_noop.py`, run by
//!   `$WORKERS_PYTHON`, default `target/sdk-venv/bin/python`, the venv `python/run-tests.sh`
//!   makes; skipped with a note when it is missing).
//!
//! Prints per way: operations per second, queued → handler latency p50/p99 under that load (for a remote
//! worker: the time the handler got the assignment, which the no-op returns, less the
//! operation's create time; in process: the run's start time less the create time), the
//! server's CPU per operation, the worker process's CPU per operation, and throughput as a
//! ratio to in-process in the same round; then, over `WORKERS_CANCELS` operations per way, the
//! time from sending CancelOperation to the handler seeing it (remote workers log it) and to
//! the operation ending CANCELLED. Unloaded latency too: one client, one no-op at a time,
//! `WORKERS_SEQUENTIAL` per way per round (default 200), queued → handler p50/p99.
//!
//! `WORKERS_ROUNDS` (default 3), `WORKERS_SECONDS` per way per round (default 8),
//! `WORKERS_CLIENTS` (default 32), `WORKERS_CONCURRENCY` per worker (default 64),
//! `WORKERS_CANCELS` (default 30).

#[path = "harness.rs"]
mod harness;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{connect, cpu_seconds_of, env_or, noop, percentile_ms, repo_root, Server, Target};
use oprun::client::Client;
use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{operation, CancelOperationRequest, Operation};
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{
    ListTaskKindsRequest, OperationMetadata, SleepInput, SubmitTaskRequest,
};
use oprun::{Kind, Registry, Task, TaskContext, TaskError, TaskOptions};
use prost::Message;
use prost_types::Timestamp;

const RUST_KIND: &str = "noop-rust";
const PYTHON_KIND: &str = "noop-py";

/// The Rust worker's no-op: answers with the time it got the assignment; given a duration,
/// waits for it or a cancel (logging when it saw the cancel).
struct Noop {
    cancel_log: Option<PathBuf>,
}

impl Kind for Noop {
    const KIND: &'static str = RUST_KIND;
    type Input = SleepInput;
    type Output = Timestamp;
}

impl Task for Noop {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry_safe(true)
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<Timestamp, TaskError> {
        let got = Timestamp::from(SystemTime::now());
        let wait = input
            .duration
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::select! {
                () = ctx.cancelled() => {
                    log_cancel(self.cancel_log.as_deref(), &ctx.id().name());
                    return Err(TaskError::cancelled());
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        Ok(got)
    }
}

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

fn log_cancel(log: Option<&Path>, name: &str) {
    use std::io::Write;
    let Some(log) = log else { return };
    let line = format!("{name} {}\n", unix_nanos(SystemTime::now()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// This binary started again as the Rust worker (`BENCH_ROLE=rust-worker`).
async fn rust_worker() {
    let addr = std::env::var("BENCH_ADDR").expect("BENCH_ADDR");
    let cancel_log = std::env::var_os("BENCH_CANCEL_LOG").map(PathBuf::from);
    let client = Client::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let mut registry = Registry::new();
    registry
        .register(Noop { cancel_log })
        .expect("a kind of its own name");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        term.recv().await;
    };
    oprun::worker::Worker::new(client, registry)
        .name("bench-rust")
        .concurrency(RUST_KIND, env_or("WORKERS_CONCURRENCY", 64))
        .run(shutdown)
        .await
        .expect("the worker ran");
}

/// A way to run the no-op.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Way {
    InProcess,
    Rust,
    Python,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::InProcess => "in-process",
            Way::Rust => "rust worker",
            Way::Python => "python worker",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Way::InProcess => "sleep",
            Way::Rust => RUST_KIND,
            Way::Python => PYTHON_KIND,
        }
    }

    /// The no-op's input, waiting `seconds` (0: none).
    fn input(self, seconds: i64) -> prost_types::Any {
        match self {
            Way::InProcess if seconds == 0 => noop(),
            Way::InProcess | Way::Rust => pack(&SleepInput {
                duration: Some(prost_types::Duration { seconds, nanos: 0 }),
                steps: 1,
                ..Default::default()
            }),
            Way::Python => {
                let mut fields = std::collections::BTreeMap::new();
                fields.insert(
                    "seconds".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(seconds as f64)),
                    },
                );
                prost_types::Any {
                    type_url: "type.googleapis.com/google.protobuf.Struct".into(),
                    value: prost_types::Struct { fields }.encode_to_vec(),
                }
            }
        }
    }
}

/// What one way did in one round.
#[derive(Default)]
struct Round {
    ops_per_s: f64,
    server_cpu_ms_per_op: f64,
    worker_cpu_ms_per_op: Option<f64>,
    to_handler: Vec<Duration>,
}

fn meta(op: &Operation) -> OperationMetadata {
    op.metadata
        .as_ref()
        .and_then(|m| OperationMetadata::decode(m.value.as_slice()).ok())
        .unwrap_or_default()
}

fn since(from: Option<&Timestamp>, to: Option<&Timestamp>) -> Option<Duration> {
    let t = |ts: &Timestamp| i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let d = t(to?) - t(from?);
    u64::try_from(d).ok().map(Duration::from_nanos)
}

/// Queued → the handler has it, for a finished no-op.
fn to_handler(way: Way, op: &Operation) -> Option<Duration> {
    let m = meta(op);
    match way {
        Way::InProcess => since(m.create_time.as_ref(), m.start_time.as_ref()),
        Way::Rust | Way::Python => {
            let Some(operation::Result::Response(any)) = &op.result else {
                return None;
            };
            let got = Timestamp::decode(any.value.as_slice()).ok()?;
            since(m.create_time.as_ref(), Some(&got))
        }
    }
}

/// `clients` closed-loop clients run `way`'s no-op for `seconds`.
async fn round(
    addr: SocketAddr,
    way: Way,
    seconds: f64,
    clients: usize,
    server: &Server,
    worker: Option<u32>,
) -> Round {
    let channel = connect(addr).await;
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let cpu0 = server.cpu_seconds();
    let worker0 = worker.map(cpu_seconds_of);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let channel = channel.clone();
        let latencies = Arc::clone(&latencies);
        tasks.push(tokio::spawn(async move {
            let mut submit = TaskServiceClient::new(channel.clone());
            let mut ops = OperationsClient::new(channel);
            let mut done = 0u64;
            while Instant::now() < stop {
                let Ok(op) = submit
                    .submit_task(SubmitTaskRequest {
                        kind: way.kind().into(),
                        input: Some(way.input(0)),
                        ..Default::default()
                    })
                    .await
                else {
                    continue;
                };
                let name = op.into_inner().name;
                if let Ok(op) = ops.wait_operation(harness::wait_for(name, 30)).await {
                    let op = op.into_inner();
                    if op.done {
                        done += 1;
                        if let Some(d) = to_handler(way, &op) {
                            latencies.lock().expect("latencies").push(d);
                        }
                    }
                }
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = done.max(1) as f64;
    let to_handler = std::mem::take(&mut *latencies.lock().expect("latencies"));
    Round {
        ops_per_s: done as f64 / elapsed,
        server_cpu_ms_per_op: (server.cpu_seconds() - cpu0) * 1e3 / ops,
        worker_cpu_ms_per_op: worker
            .zip(worker0)
            .map(|(pid, c0)| (cpu_seconds_of(pid) - c0) * 1e3 / ops),
        to_handler,
    }
}

/// One client, one no-op at a time, `n` times: queued → the handler has it, unloaded.
async fn sequential(addr: SocketAddr, way: Way, n: usize) -> Vec<Duration> {
    let channel = connect(addr).await;
    let mut submit = TaskServiceClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = submit
            .submit_task(SubmitTaskRequest {
                kind: way.kind().into(),
                input: Some(way.input(0)),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
            .name;
        let op = ops
            .wait_operation(harness::wait_for(name, 30))
            .await
            .expect("wait")
            .into_inner();
        if let Some(d) = to_handler(way, &op) {
            out.push(d);
        }
    }
    out
}

/// Cancels `n` running no-ops of `way`, one at a time: (sent → handler saw it, sent → ended).
async fn cancels(
    addr: SocketAddr,
    way: Way,
    n: usize,
    cancel_log: &Path,
) -> (Vec<Duration>, Vec<Duration>) {
    let channel = connect(addr).await;
    let mut submit = TaskServiceClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel);
    let mut sent_at: HashMap<String, i128> = HashMap::new();
    let mut ended = Vec::new();
    for _ in 0..n {
        let name = submit
            .submit_task(SubmitTaskRequest {
                kind: way.kind().into(),
                input: Some(way.input(60)),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
            .name;
        // Running, and a moment more so that the handler is waiting.
        loop {
            let op = ops
                .get_operation(oprun::proto::google::longrunning::GetOperationRequest {
                    name: name.clone(),
                })
                .await
                .expect("get")
                .into_inner();
            if meta(&op).start_time.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = Instant::now();
        sent_at.insert(name.clone(), unix_nanos(SystemTime::now()));
        ops.cancel_operation(CancelOperationRequest { name: name.clone() })
            .await
            .expect("cancel");
        let op = ops
            .wait_operation(harness::wait_for(name, 30))
            .await
            .expect("wait")
            .into_inner();
        assert!(op.done, "a cancelled no-op ends");
        ended.push(sent.elapsed());
    }
    let seen = std::fs::read_to_string(cancel_log).unwrap_or_default();
    let mut to_handler = Vec::new();
    for line in seen.lines() {
        let Some((name, at)) = line.split_once(' ') else {
            continue;
        };
        if let (Some(sent), Ok(at)) = (sent_at.get(name), at.trim().parse::<i128>()) {
            to_handler.push(Duration::from_nanos(u64::try_from(at - sent).unwrap_or(0)));
        }
    }
    (to_handler, ended)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Waits until each of `kinds` has a worker session.
async fn declared(addr: SocketAddr, kinds: &[&str]) {
    let mut tasks = TaskServiceClient::new(connect(addr).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = tasks
            .list_task_kinds(ListTaskKindsRequest::default())
            .await
            .expect("kinds")
            .into_inner()
            .kinds;
        if kinds.iter().all(|k| {
            listed
                .iter()
                .any(|l| &l.name == k && !l.sessions.is_empty())
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "workers never declared {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Worker {
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn spawn(mut command: Command) -> Worker {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("a worker process");
    Worker { child }
}

async fn bench() {
    let rounds: usize = env_or("WORKERS_ROUNDS", 3);
    let seconds: f64 = env_or("WORKERS_SECONDS", 8.0);
    let clients: usize = env_or("WORKERS_CLIENTS", 32);
    let n_cancels: usize = env_or("WORKERS_CANCELS", 30);
    let n_sequential: usize = env_or("WORKERS_SEQUENTIAL", 200);
    let target = Target {
        label: "workers".into(),
        program: env!("CARGO_BIN_EXE_oprun").into(),
        args: vec!["serve".into()],
        nodes: 1,
    };
    let server = Server::start(&target);
    let addr = server.addr;
    let logs = tempfile::tempdir().expect("tempdir");
    let rust_log = logs.path().join("rust-cancels");
    let python_log = logs.path().join("python-cancels");

    let mut rust = Command::new(std::env::current_exe().expect("this binary"));
    rust.env("BENCH_ROLE", "rust-worker")
        .env("BENCH_ADDR", addr.to_string())
        .env("BENCH_CANCEL_LOG", &rust_log)
        .env("OPRUN_LOG", "warn");
    let rust = spawn(rust);
    let python_bin = std::env::var_os("WORKERS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/sdk-venv/bin/python"));
    let python = if python_bin.exists() {
        let mut py = Command::new(&python_bin);
        py.arg(repo_root().join("benches/workers_noop.py"))
            .env("OPRUN_TARGET", addr.to_string())
            .env("BENCH_CANCEL_LOG", &python_log)
            .env(
                "BENCH_CONCURRENCY",
                env_or::<u32>("WORKERS_CONCURRENCY", 64).to_string(),
            );
        Some(spawn(py))
    } else {
        println!(
            "(no {}: the python worker is skipped; `python/run-tests.sh` makes that venv)",
            python_bin.display()
        );
        None
    };
    let mut ways = vec![Way::InProcess, Way::Rust];
    let mut kinds = vec![RUST_KIND];
    if python.is_some() {
        ways.push(Way::Python);
        kinds.push(PYTHON_KIND);
    }
    declared(addr, &kinds).await;
    let pid = |way: Way| match way {
        Way::InProcess => None,
        Way::Rust => Some(rust.child.id()),
        Way::Python => python.as_ref().map(|p| p.child.id()),
    };
    println!(
        "{rounds} rounds of {seconds} s per way, {clients} closed-loop clients (SubmitTask + \
         WaitOperation), one server ({}), ways interleaved",
        target.program
    );
    for &way in &ways {
        round(addr, way, 1.0, clients, &server, pid(way)).await; // warm-up
    }
    let mut all: HashMap<Way, Vec<Round>> = HashMap::new();
    let mut ratios: HashMap<Way, Vec<f64>> = HashMap::new();
    for r in 0..rounds {
        let mut order = ways.clone();
        order.rotate_left(r % ways.len());
        let mut this: HashMap<Way, f64> = HashMap::new();
        for &way in &order {
            let got = round(addr, way, seconds, clients, &server, pid(way)).await;
            println!(
                "  round {r} {:>14}: {:>7.0} ops/s, server {:.3} ms CPU/op",
                way.label(),
                got.ops_per_s,
                got.server_cpu_ms_per_op
            );
            this.insert(way, got.ops_per_s);
            all.entry(way).or_default().push(got);
        }
        let base = this.get(&Way::InProcess).copied().unwrap_or(0.0);
        for (&way, &ops) in &this {
            if base > 0.0 {
                ratios.entry(way).or_default().push(ops / base);
            }
        }
    }
    println!();
    println!(
        "{:>14} {:>8} {:>7} {:>9} {:>9} {:>12} {:>12}",
        "way", "ops/s", "ratio", "p50 ms", "p99 ms", "server ms/op", "worker ms/op"
    );
    for &way in &ways {
        let rounds = all.remove(&way).unwrap_or_default();
        let ops = median(rounds.iter().map(|r| r.ops_per_s).collect());
        let cpu = median(rounds.iter().map(|r| r.server_cpu_ms_per_op).collect());
        let worker_cpu: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.worker_cpu_ms_per_op)
            .collect();
        let mut lat: Vec<Duration> = rounds.into_iter().flat_map(|r| r.to_handler).collect();
        lat.sort();
        println!(
            "{:>14} {:>8.0} {:>6.2}x {:>9.2} {:>9.2} {:>12.3} {:>12}",
            way.label(),
            ops,
            median(ratios.remove(&way).unwrap_or_default()),
            percentile_ms(&lat, 0.5),
            percentile_ms(&lat, 0.99),
            cpu,
            if worker_cpu.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.3}", median(worker_cpu))
            }
        );
    }
    println!("(p50/p99: queued -> the handler has it; ratio: ops/s over in-process's in the same round, median)");
    println!();
    println!(
        "unloaded: one client, one no-op at a time, {n_sequential} per way per round, interleaved:"
    );
    let mut unloaded: HashMap<Way, Vec<Duration>> = HashMap::new();
    for r in 0..rounds {
        let mut order = ways.clone();
        order.rotate_left(r % ways.len());
        for &way in &order {
            let got = sequential(addr, way, n_sequential).await;
            unloaded.entry(way).or_default().extend(got);
        }
    }
    for &way in &ways {
        let mut lat = unloaded.remove(&way).unwrap_or_default();
        lat.sort();
        println!(
            "{:>14}: queued -> handler p50 {:.2} ms, p99 {:.2} ms ({} operations)",
            way.label(),
            percentile_ms(&lat, 0.5),
            percentile_ms(&lat, 0.99),
            lat.len()
        );
    }
    println!();
    println!("cancels, {n_cancels} per way, one at a time:");
    for &way in &ways {
        let log = match way {
            Way::Python => &python_log,
            _ => &rust_log,
        };
        let (mut seen, mut ended) = cancels(addr, way, n_cancels, log).await;
        seen.sort();
        ended.sort();
        let handler = if way == Way::InProcess {
            "    (in process: not logged)".to_owned()
        } else {
            format!(
                "sent -> handler p50 {:.2} ms, p99 {:.2} ms ({} seen)",
                percentile_ms(&seen, 0.5),
                percentile_ms(&seen, 0.99),
                seen.len()
            )
        };
        println!(
            "{:>14}: {handler}; sent -> CANCELLED p50 {:.2} ms, p99 {:.2} ms",
            way.label(),
            percentile_ms(&ended, 0.5),
            percentile_ms(&ended, 0.99)
        );
    }
    drop(python);
    drop(rust);
    server.stop();
}

#[tokio::main]
async fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("rust-worker") {
        rust_worker().await;
        return;
    }
    bench().await;
}
