//! What readers of server-sent events cost the server, printed (not asserted):
//! `cargo bench -p oprun-workers --bench watchers`.
//!
//! Each target is `oprun serve` in its own process with its HTTP listener on a loopback port;
//! the readers and the load run in this process. Targets run interleaved, one round each in
//! turn, so that a noisy host weighs on them alike.
//!
//! Modes (`WATCHERS_MODE`, default `fanout`):
//! - `fanout`: for each count N in `WATCHERS_COUNTS` (default `0,100,1000`), N readers of
//!   `GET /v1/operations:watch?filter=WATCHERS_FILTER` (default: no filter, every change) read
//!   everything sent; meanwhile 16 clients submit a no-op sleep and wait for it, for
//!   `WATCHERS_SECONDS` (default 10). Prints operations per second, the server's CPU per
//!   operation, and both as ratios to N = 0 in the same round.
//! - `unread`: `WATCHERS_UNREAD` (default 900) readers open the stream over HTTP/1.1 and never
//!   read; 4 operations then end with a 900 KB error message each. Prints the server's RSS
//!   before, its peak over the next 10 s, and 5 s after the readers are gone; then the
//!   submissions per second with 1,000 such readers open.
//! - `cycles`: 14 times, 200 readers open the stream, 3 operations end with a 900 KB error
//!   message, the readers read them and go; prints the idle RSS after each cycle.
//!
//! `WATCHERS_TARGETS`: `;`-separated `label=program args…` (`{oprun}` is this build's binary);
//! default `now={oprun} serve`. `WATCHERS_ROUNDS` (default 3).

#[path = "harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{connect, env_or, noop, wait_for, Server, Target};
use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{SleepInput, SubmitTaskRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Readers of the watch stream: each reads (and drops) what it gets until stopped, counting
/// bytes; `read: false` opens the stream and never reads.
struct Readers {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    async fn open(http: SocketAddr, n: usize, filter: &str, read: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let query: String = filter
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut tasks = Vec::with_capacity(n);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
        for _ in 0..n {
            let stop = Arc::clone(&stop);
            let bytes = Arc::clone(&bytes);
            let ready = ready_tx.clone();
            let request = format!(
                "GET /v1/operations:watch?filter={query} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n"
            );
            tasks.push(tokio::spawn(async move {
                let Ok(mut stream) = TcpStream::connect(http).await else {
                    let _ = ready.send(()).await;
                    return;
                };
                if stream.write_all(request.as_bytes()).await.is_err() {
                    let _ = ready.send(()).await;
                    return;
                }
                if !read {
                    let _ = ready.send(()).await;
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    return;
                }
                let mut buf = vec![0u8; 64 << 10];
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => {
                            if first {
                                first = false;
                                let _ = ready.send(()).await;
                            }
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
                if first {
                    let _ = ready.send(()).await;
                }
            }));
        }
        drop(ready_tx);
        for _ in 0..n {
            let _ = ready_rx.recv().await;
        }
        Self { stop, bytes, tasks }
    }

    async fn close(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Closed-loop no-op operations for `seconds` from 16 clients; completed per second.
async fn closed_loop(addr: SocketAddr, seconds: u64) -> f64 {
    let channel = connect(addr).await;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let channel = channel.clone();
        let done = Arc::clone(&done);
        clients.push(tokio::spawn(async move {
            let mut tasks = TaskServiceClient::new(channel.clone());
            let mut ops = OperationsClient::new(channel);
            while Instant::now() < stop {
                let Ok(op) = tasks
                    .submit_task(SubmitTaskRequest {
                        kind: "sleep".into(),
                        input: Some(noop()),
                        ..Default::default()
                    })
                    .await
                else {
                    continue;
                };
                let name = op.into_inner().name;
                if ops.wait_operation(wait_for(name, 30)).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    for c in clients {
        let _ = c.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Submits `n` sleeps that fail at once with a `size`-byte error message.
async fn big_failures(addr: SocketAddr, n: usize, size: usize) {
    let channel = connect(addr).await;
    let mut tasks = TaskServiceClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel);
    for i in 0..n {
        let input = pack(&SleepInput {
            duration: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            steps: 1,
            fail_message: format!("{i}{}", "x".repeat(size)),
            ..Default::default()
        });
        let op = tasks
            .submit_task(SubmitTaskRequest {
                kind: "sleep".into(),
                input: Some(input),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner();
        let _ = ops.wait_operation(wait_for(op.name, 30)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

async fn fanout(targets: &[Target], rounds: usize) {
    let counts: Vec<usize> = std::env::var("WATCHERS_COUNTS")
        .unwrap_or_else(|_| "0,100,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let filter = std::env::var("WATCHERS_FILTER").unwrap_or_default();
    let seconds: u64 = env_or("WATCHERS_SECONDS", 10);
    println!("fanout: readers {counts:?}, filter {filter:?}, {seconds} s per run");
    // (target, count) → (ops/s, CPU µs per op) per round.
    let mut figures: Vec<Vec<Vec<(f64, f64)>>> =
        vec![vec![Vec::new(); counts.len()]; targets.len()];
    for round in 0..rounds {
        for (t, target) in targets.iter().enumerate() {
            for (c, &n) in counts.iter().enumerate() {
                let server = Server::start_with_http(target);
                let http = server.http.expect("an HTTP listener");
                let readers = Readers::open(http, n, &filter, true).await;
                let cpu0 = server.cpu_seconds();
                let rate = closed_loop(server.addr, seconds).await;
                let cpu = server.cpu_seconds() - cpu0;
                let read = readers.close().await;
                let per_op = cpu / (rate * seconds as f64) * 1e6;
                println!(
                    "round {round} {:>6} readers {n:>5}: {rate:>8.0} ops/s, {per_op:>6.0} µs CPU/op, {:.1} MB read by the readers",
                    target.label,
                    read as f64 / 1e6
                );
                figures[t][c].push((rate, per_op));
                server.stop();
            }
        }
    }
    println!("\nmedians (ratio to 0 readers of the same target, median of the rounds' ratios):");
    for (t, target) in targets.iter().enumerate() {
        for (c, &n) in counts.iter().enumerate() {
            let rates: Vec<f64> = figures[t][c].iter().map(|f| f.0).collect();
            let cpus: Vec<f64> = figures[t][c].iter().map(|f| f.1).collect();
            let ratio: Vec<f64> = figures[t][c]
                .iter()
                .zip(&figures[t][0])
                .map(|(f, base)| f.0 / base.0)
                .collect();
            println!(
                "{:>6} readers {n:>5}: {:>8.0} ops/s ({:.2}x), {:>6.0} µs CPU/op",
                target.label,
                median(rates),
                median(ratio),
                median(cpus)
            );
        }
    }
}

async fn unread(targets: &[Target]) {
    let n: usize = env_or("WATCHERS_UNREAD", 900);
    for target in targets {
        let server = Server::start_with_http(target);
        let http = server.http.expect("an HTTP listener");
        let before = server.rss_mb();
        let readers = Readers::open(http, n, "", false).await;
        big_failures(server.addr, 4, 900_000).await;
        let mut peak: f64 = 0.0;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            peak = peak.max(server.rss_mb());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        readers.close().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = server.rss_mb();
        println!(
            "{:>6}: {n} unread readers, 4 × 900 KB errors: RSS {before:.0} MB before, peak {peak:.0} MB, {after:.0} MB 5 s after the readers left",
            target.label
        );
        let readers = Readers::open(http, 1000, "", false).await;
        let rate = closed_loop(server.addr, 10).await;
        readers.close().await;
        println!("{:>6}: 1,000 unread readers: {rate:.0} ops/s", target.label);
        server.stop();
    }
}

async fn cycles(targets: &[Target]) {
    for target in targets {
        let server = Server::start_with_http(target);
        let http = server.http.expect("an HTTP listener");
        let mut line = format!(
            "{:>6}: idle RSS (MB) {:.0} at start",
            target.label,
            server.rss_mb()
        );
        for _ in 0..14 {
            let readers = Readers::open(http, 200, "", true).await;
            big_failures(server.addr, 3, 900_000).await;
            // Until every reader could have read the three events.
            let until = Instant::now() + Duration::from_secs(10);
            while readers.bytes.load(Ordering::Relaxed) < 200 * 3 * 900_000
                && Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            readers.close().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            line.push_str(&format!(", {:.0}", server.rss_mb()));
        }
        println!("{line}");
        server.stop();
    }
}

#[tokio::main]
async fn main() {
    let targets = harness::targets("WATCHERS_TARGETS", "now={oprun} serve");
    let rounds: usize = env_or("WATCHERS_ROUNDS", 3);
    match std::env::var("WATCHERS_MODE")
        .as_deref()
        .unwrap_or("fanout")
    {
        "unread" => unread(&targets).await,
        "cycles" => cycles(&targets).await,
        _ => fanout(&targets, rounds).await,
    }
}
