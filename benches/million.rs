//! One million operations, printed (not asserted): `cargo bench -p oprun-workers --bench million`.
//!
//! Starts one target server in its own process (this build's release `oprun serve` on the
//! embedded store by default) with a fresh data directory, then, from this process over
//! loopback gRPC:
//! 1. **Flood**: `MILLION_CLIENTS` clients submit `MILLION_OPS` no-op `sleep` operations back to
//!    back, as fast as the server acknowledges them. Every 1000th is submitted with
//!    `not_before` an hour away, so it stays QUEUED. While the flood runs, a sampler reads the
//!    server's RSS and the queue depth (operations QUEUED and due, from the store itself:
//!    read-only SQLite, or `psql` for PostgreSQL) every 250 ms. Printed: submissions per second,
//!    SubmitTask p50/p99, refusals (RESOURCE_EXHAUSTED), the queue's peak depth, and how long
//!    after the last acknowledgement the queue drained.
//! 2. **Cancel** half of the delayed operations (they end with `error.code = 1`).
//! 3. **List**, with 1M operations retained: pages of 100 — the first page of each filter
//!    (`""`, `done = false`, `error.code = 1`, `kind = "sleep"`, `kind = "x"`,
//!    `create_time > T` with T at half and at 99% of the flood) asked `MILLION_LIST_SAMPLES`
//!    times, then each filter's pages followed with their tokens (every page of the
//!    unfiltered list: all 10,000, deep pages included). Printed: p50/p99/max per filter.
//! 4. **Restart**: SIGTERM, then a new process on the same data; the time from its spawn to
//!    the first GetOperation answered (median of `MILLION_RESTARTS`), and its RSS.
//! 5. **Bytes** stored per operation: the data directory's size over the operations in it.
//!
//! Environment (all optional):
//! - `MILLION_TARGET`: `label=program args…` as in `loadgen`'s `LOADGEN_TARGETS` (one target;
//!   `--listen 127.0.0.1:0 --data-dir DIR` are appended). Default `sqlite={oprun} serve`.
//!   For PostgreSQL, create an empty database first and name it in `--store`.
//! - `MILLION_OPS` (default 1,000,000), `MILLION_CLIENTS` (default 64), `MILLION_CONNECTIONS`
//!   (default clients / 8), `MILLION_LIST_SAMPLES` (default 200), `MILLION_RESTARTS` (default
//!   3: the restart's median is printed).
//! - `MILLION_KEEP`: keep the data directory (its path is printed) to restart or inspect.

#[path = "harness.rs"]
mod harness;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use harness::{connect, env_or, noop, percentile_ms, Server, Target};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest,
};
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::SubmitTaskRequest;
use tonic::transport::Channel;

/// Every this-many submissions, one is delayed by an hour (it stays QUEUED).
const DELAY_EVERY: u64 = 1000;
const PAGE: i32 = 100;

/// Where the queue depth is read from.
#[derive(Clone)]
enum Probe {
    Sqlite(std::path::PathBuf),
    Postgres(String),
    None,
}

impl Probe {
    fn of(target: &Target, server: &Server) -> Self {
        let store = target
            .args
            .iter()
            .position(|a| a == "--store")
            .and_then(|i| target.args.get(i + 1));
        match store.map(String::as_str) {
            Some(url) if url.starts_with("postgres") => Self::Postgres(url.to_owned()),
            Some("memory") => Self::None,
            _ if target.program.contains("refserver") => Self::None,
            _ => Self::Sqlite(server.dir.path().join("data").join("oprun.sqlite3")),
        }
    }

    /// Operations matching `condition` (SQL over `operations`), if the store can be read.
    fn count(&self, condition: &str) -> Option<u64> {
        let sql = format!("SELECT COUNT(*) FROM operations WHERE {condition}");
        match self {
            Self::Sqlite(path) => {
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .ok()?;
                conn.busy_timeout(Duration::from_secs(5)).ok()?;
                let n: i64 = conn.query_row(&sql, [], |r| r.get(0)).ok()?;
                u64::try_from(n).ok()
            }
            Self::Postgres(url) => {
                let out = Command::new("psql")
                    .args(["-Atc", &sql, url])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            }
            Self::None => None,
        }
    }

    /// QUEUED and due now (the delayed ones excluded).
    fn queue_depth(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        self.count(&format!("state = 1 AND (due IS NULL OR due <= {now})"))
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn target() -> Target {
    let default = "sqlite={oprun} serve";
    let mut all = harness::targets("MILLION_TARGET", default);
    assert_eq!(all.len(), 1, "MILLION_TARGET names one target");
    all.remove(0)
}

#[derive(Default)]
struct Flooded {
    submits: Vec<Duration>,
    refused: u64,
    delayed: Vec<String>,
}

/// One client's share of the flood: takes numbers from `next` until `total`.
async fn flood_client(
    channel: Channel,
    next: Arc<AtomicU64>,
    total: u64,
    marks: Arc<Mutex<Vec<(u64, SystemTime)>>>,
) -> Flooded {
    let mut tasks = TaskServiceClient::new(channel);
    let mut out = Flooded::default();
    let input = noop();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            return out;
        }
        if n == total / 2 || n == total * 99 / 100 {
            marks.lock().expect("marks").push((n, SystemTime::now()));
        }
        let delayed = n % DELAY_EVERY == DELAY_EVERY - 1;
        let not_before = delayed.then(|| {
            let t = SystemTime::now() + Duration::from_secs(3600);
            prost_types::Timestamp::from(t)
        });
        loop {
            let t = Instant::now();
            let reply = tasks
                .submit_task(SubmitTaskRequest {
                    kind: "sleep".into(),
                    input: Some(input.clone()),
                    not_before,
                    ..Default::default()
                })
                .await;
            match reply {
                Ok(op) => {
                    out.submits.push(t.elapsed());
                    if delayed {
                        out.delayed.push(op.into_inner().name);
                    }
                    break;
                }
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    out.refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("SubmitTask failed: {s}"),
            }
        }
    }
}

struct Sampled {
    peak_rss_mb: f64,
    peak_queue: u64,
}

/// Samples RSS and queue depth every 250 ms until `stop`.
fn sample(server_pid: u32, probe: Probe, stop: Arc<AtomicBool>) -> Sampled {
    let mut out = Sampled {
        peak_rss_mb: 0.0,
        peak_queue: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        out.peak_rss_mb = out
            .peak_rss_mb
            .max(harness::status_mb(server_pid, "VmRSS:"));
        if let Some(q) = probe.queue_depth() {
            out.peak_queue = out.peak_queue.max(q);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    out
}

/// Latencies of ListOperations pages: the first page `samples` times, then up to `pages`
/// pages followed with their tokens. Returns the latencies and the operations seen.
async fn list_pages(
    ops: &mut OperationsClient<Channel>,
    filter: &str,
    samples: usize,
    pages: usize,
) -> (Vec<Duration>, u64) {
    let mut times = Vec::new();
    let request = |token: String| ListOperationsRequest {
        name: String::new(),
        filter: filter.to_owned(),
        page_size: PAGE,
        page_token: token,
        return_partial_success: false,
    };
    for _ in 0..samples {
        let t = Instant::now();
        ops.list_operations(request(String::new()))
            .await
            .unwrap_or_else(|s| panic!("ListOperations {filter:?}: {s}"));
        times.push(t.elapsed());
    }
    let mut token = String::new();
    let mut seen = 0u64;
    for _ in 0..pages {
        let t = Instant::now();
        let page = ops
            .list_operations(request(token))
            .await
            .unwrap_or_else(|s| panic!("ListOperations {filter:?}: {s}"))
            .into_inner();
        times.push(t.elapsed());
        seen += page.operations.len() as u64;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    (times, seen)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() {
    let total = env_or("MILLION_OPS", 1_000_000u64).max(DELAY_EVERY);
    let clients = env_or("MILLION_CLIENTS", 64usize).max(1);
    let connections = env_or("MILLION_CONNECTIONS", (clients / 8).max(1)).max(1);
    let samples = env_or("MILLION_LIST_SAMPLES", 200usize).max(1);
    let restarts = env_or("MILLION_RESTARTS", 3usize).max(1);
    let target = target();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let server = Server::start(&target);
    let probe = Probe::of(&target, &server);
    println!(
        "million: {} ({} {}), {total} operations from {clients} clients on {connections} connections",
        target.label,
        target.program,
        target.args.join(" ")
    );

    // 1. The flood.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pid, probe, stop) = (server.child.id(), probe.clone(), Arc::clone(&stop));
        std::thread::spawn(move || sample(pid, probe, stop))
    };
    let marks = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let flooded: Vec<Flooded> = rt.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..connections {
            channels.push(connect(server.addr).await);
        }
        let next = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                tokio::spawn(flood_client(
                    channels[c % connections].clone(),
                    Arc::clone(&next),
                    total,
                    Arc::clone(&marks),
                ))
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("flood client"));
        }
        out
    });
    let flood_s = started.elapsed().as_secs_f64();
    let mut submits: Vec<Duration> = flooded.iter().flat_map(|f| f.submits.clone()).collect();
    submits.sort();
    let refused: u64 = flooded.iter().map(|f| f.refused).sum();
    let delayed: Vec<String> = flooded.iter().flat_map(|f| f.delayed.clone()).collect();
    println!(
        "flood: {total} acknowledged in {flood_s:.1} s = {:.0} submits/s; SubmitTask p50 {:.2} p99 {:.2} ms; refused {refused}",
        total as f64 / flood_s,
        percentile_ms(&submits, 0.50),
        percentile_ms(&submits, 0.99),
    );
    // Drained: nothing queued and due, nothing running.
    let drain_started = Instant::now();
    let drained = loop {
        match (probe.queue_depth(), probe.count("state = 2")) {
            (Some(0), Some(0)) => break Some(drain_started.elapsed()),
            (None, _) | (_, None) => break None,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.join().expect("sampler");
    match drained {
        Some(d) => println!(
            "queue: peak depth {} (QUEUED and due, sampled every 250 ms); drained {:.2} s after the last acknowledgement; {} delayed stay QUEUED",
            sampled.peak_queue,
            d.as_secs_f64(),
            delayed.len()
        ),
        None => println!("queue: this store cannot be read from outside; depth not measured"),
    }
    println!(
        "rss: peak {:.0} MB during the flood (sampled), VmHWM {:.0} MB",
        sampled.peak_rss_mb,
        server.peak_rss_mb()
    );

    // 2. Cancel half of the delayed operations.
    let cancelled = delayed.len() / 2;
    rt.block_on(async {
        let mut ops = OperationsClient::new(connect(server.addr).await);
        for name in &delayed[..cancelled] {
            ops.cancel_operation(CancelOperationRequest { name: name.clone() })
                .await
                .unwrap_or_else(|s| panic!("CancelOperation {name}: {s}"));
        }
    });
    println!(
        "cancelled {cancelled} delayed operations; {} stay QUEUED",
        delayed.len() - cancelled
    );

    // 3. List.
    let marks = marks.lock().expect("marks").clone();
    let mut filters = vec![
        ("".to_owned(), usize::MAX),
        ("done = false".to_owned(), 100),
        ("error.code = 1".to_owned(), 100),
        ("kind = \"sleep\"".to_owned(), 100),
        ("kind = \"x\"".to_owned(), 100),
    ];
    for (n, t) in &marks {
        filters.push((
            format!("create_time > \"{}\" /* after {n} */", rfc3339(*t)),
            100,
        ));
    }
    println!("list: pages of {PAGE}; the first page {samples} times, then pages followed with their tokens");
    rt.block_on(async {
        let mut ops = OperationsClient::new(connect(server.addr).await);
        for (filter, pages) in &filters {
            let sent = filter.split(" /*").next().unwrap_or(filter);
            let label = if filter.is_empty() { "(no filter)" } else { filter };
            let (mut times, seen) = list_pages(&mut ops, sent, samples, *pages).await;
            times.sort();
            println!(
                "  {label:<62} p50 {:>7.2} p99 {:>7.2} max {:>7.2} ms  ({} pages, {seen} operations followed)",
                percentile_ms(&times, 0.50),
                percentile_ms(&times, 0.99),
                percentile_ms(&times, 1.0),
                times.len(),
            );
        }
    });

    // 4. Restart, `restarts` times: the median.
    let peak_before = server.peak_rss_mb();
    let mut dir = server.stop_keeping_data();
    let stored = dir_bytes(&dir.path().join("data"));
    let get = delayed
        .last()
        .cloned()
        .unwrap_or_else(|| "operations/none".into());
    let mut times = Vec::new();
    let mut rss = (0.0, 0.0);
    for _ in 0..restarts {
        let t = Instant::now();
        let server = Server::start_in(&target, dir);
        rt.block_on(async {
            let mut ops = OperationsClient::new(connect(server.addr).await);
            ops.get_operation(GetOperationRequest { name: get.clone() })
                .await
                .unwrap_or_else(|s| panic!("GetOperation {get} after the restart: {s}"));
        });
        times.push(t.elapsed());
        rss = (server.rss_mb(), server.peak_rss_mb());
        dir = server.stop_keeping_data();
    }
    times.sort();
    println!(
        "restart: {:.3} s from spawn to the first GetOperation answered (median of {restarts}; {:.3} to {:.3}); RSS then {:.0} MB",
        times[times.len() / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        rss.0
    );
    println!(
        "rss: VmHWM {peak_before:.0} MB in the first process, {:.0} MB in the last restarted one",
        rss.1
    );
    // 5. Bytes per operation (the data directory after a clean shutdown).
    if stored > 0 {
        println!(
            "stored: {:.1} MB in the data directory = {:.0} bytes per operation",
            stored as f64 / (1024.0 * 1024.0),
            stored as f64 / total as f64
        );
    }
    if std::env::var_os("MILLION_KEEP").is_some() {
        println!("kept: {}", dir.keep().display());
    }
}
