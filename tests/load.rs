//! The real `oprun` binary under load and at rest: 100,000 operations from 256 concurrent
//! clients with no error but documented backpressure and a bounded memory footprint, and a
//! server with nothing to do that uses no CPU (no polling loops).
//!
//! Everything is measured from outside, through `/proc/<pid>`, as an operator would.

mod common;

use common::binary::{oprun, spawn_serve, tail};

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::ListOperationsRequest;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{SleepInput, SubmitTaskRequest};
use prost::Message;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Operations the load test submits.
const LOAD_OPERATIONS: usize = 100_000;
/// Concurrent clients in the load test.
const LOAD_CLIENTS: usize = 256;
/// HTTP/2 connections the clients share.
const LOAD_CHANNELS: usize = 16;
/// The longest the load test may take to get every submission acknowledged.
const LOAD_SUBMIT_LIMIT: Duration = Duration::from_secs(300);
/// The longest the load test may take, after the last acknowledgement, for all to be done.
const LOAD_DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// A generous ceiling on the server's resident memory under load.
const RSS_LIMIT_KIB: u64 = 1024 * 1024;
/// Most the server's resident memory may grow over the last 80,000 operations: 64 MiB, under
/// 840 bytes an operation, so keeping even a small record of every finished operation in
/// memory would break it.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;
/// How often the server's memory is sampled.
const MEMORY_SAMPLE: Duration = Duration::from_millis(500);
/// How long the idle server is watched.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// How long the server is given to settle before it is watched for idleness.
const SETTLE: Duration = Duration::from_millis(500);
/// Most CPU clock ticks (100 per second here) the idle server may use in [`IDLE_WINDOW`].
const IDLE_TICKS: u64 = 2;
/// Most times the idle server's threads may be woken in [`IDLE_WINDOW`]: a polling loop at
/// even 10 Hz would need 30.
const IDLE_WAKEUPS: u64 = 10;

/// `oprun serve` running as a child process over a fresh data directory. Dropping it kills
/// the process (and, when the test is failing, prints the tail of its log).
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `oprun serve` on a free loopback port with `extra` flags and waits for its
    /// listening line.
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stderr.log");
        let mut cmd = oprun();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra);
        let (child, addr) = spawn_serve(cmd, &log);
        Self {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new HTTP/2 connection to the server.
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A zero-length sleep: the cheapest real operation there is.
fn instant_sleep() -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: "sleep".into(),
        input: Some(prost_types::Any {
            type_url: "type.googleapis.com/oprun.v1.SleepInput".into(),
            value: SleepInput {
                duration: Some(prost_types::Duration::default()),
                steps: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        }),
        ..Default::default()
    }
}

/// Resident and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM`).
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system, in clock ticks) from a `/proc/.../stat` file: fields 14 and 15.
fn cpu_ticks(stat_path: &Path) -> Option<u64> {
    let stat = fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Times a thread was switched out (voluntarily or not) so far, from its `status` file.
fn context_switches(status_path: &Path) -> Option<u64> {
    let status = fs::read_to_string(status_path).ok()?;
    let mut total = 0;
    for name in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
        total += status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .parse::<u64>()
            .ok()?;
    }
    Some(total)
}

/// Per-thread CPU ticks and context switches of a process, by thread id and name.
fn threads(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let id = format!("{}({})", entry.file_name().to_string_lossy(), name.trim());
        if let (Some(ticks), Some(switches)) = (
            cpu_ticks(&dir.join("stat")),
            context_switches(&dir.join("status")),
        ) {
            out.push((id, ticks, switches));
        }
    }
    out.sort();
    out
}

/// Submits until the shared budget is used up, honouring RESOURCE_EXHAUSTED (documented
/// backpressure) by waiting the server's RetryInfo delay. Returns how many submissions it had
/// acknowledged and how many times it was pushed back; any other error is returned.
async fn client(
    mut tasks: TaskServiceClient<Channel>,
    claimed: Arc<AtomicUsize>,
    acknowledged: Arc<AtomicUsize>,
    deadline: Instant,
) -> Result<(usize, usize), String> {
    let (mut mine, mut pushed_back) = (0, 0);
    while claimed.fetch_add(1, Ordering::Relaxed) < LOAD_OPERATIONS {
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "not all acknowledged within {LOAD_SUBMIT_LIMIT:?} ({} so far)",
                    acknowledged.load(Ordering::Relaxed)
                ));
            }
            match tasks.submit_task(instant_sleep()).await {
                Ok(op) => {
                    let name = &op.get_ref().name;
                    if !name.starts_with("operations/") {
                        return Err(format!("acknowledged with a bad name {name:?}"));
                    }
                    mine += 1;
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    pushed_back += 1;
                    let delay = s
                        .get_details_retry_info()
                        .and_then(|r| r.retry_delay)
                        .unwrap_or(Duration::from_millis(50));
                    tokio::time::sleep(delay).await;
                }
                Err(s) => return Err(format!("SubmitTask: {:?}: {}", s.code(), s.message())),
            }
        }
    }
    Ok((mine, pushed_back))
}

/// Whether any operation matches `filter` (one page of size 1).
async fn any_match(ops: &mut OperationsClient<Channel>, filter: &str) -> bool {
    let page = ops
        .list_operations(ListOperationsRequest {
            name: "operations".into(),
            filter: filter.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("list {filter:?}: {:?}: {}", s.code(), s.message()))
        .into_inner();
    !page.operations.is_empty()
}

/// Counts the operations matching `filter`, paging through at the largest page size.
async fn count(ops: &mut OperationsClient<Channel>, filter: &str) -> usize {
    let (mut total, mut token) = (0, String::new());
    // Bounded: 100,000 operations are 100 pages of 1,000.
    for _ in 0..1_000 {
        let page = ops
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                filter: filter.into(),
                page_size: 1_000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("list {filter:?}: {:?}: {}", s.code(), s.message()))
            .into_inner();
        total += page.operations.len();
        if page.next_page_token.is_empty() {
            return total;
        }
        token = page.next_page_token;
    }
    panic!("listing {filter:?} did not end within 1,000 pages");
}

/// 100,000 zero-length sleeps from 256 concurrent clients over 16 HTTP/2 connections to a
/// server with `--max-running 256`: every submission is acknowledged with no error except
/// RESOURCE_EXHAUSTED (documented backpressure, retried after its RetryInfo delay); all
/// 100,000 then end SUCCEEDED and none is left unfinished; the server's resident memory,
/// sampled every 500 ms, peaks under 1 GiB, grows by at most 64 MiB over the last 80,000
/// operations (so it does not grow with the number of operations) and does not keep growing
/// once the work is done.
/// Prints throughput, peak and final RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_operations_from_256_clients() {
    let server = Server::start(&["--max-running", "256"]);
    let pid = server.pid();
    let (baseline_rss, _) = memory_kib(pid).expect("read /proc/<pid>/status");
    let server_stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let client_stat = PathBuf::from("/proc/self/stat");
    let server_cpu0 = cpu_ticks(&server_stat).expect("read /proc/<pid>/stat");
    let client_cpu0 = cpu_ticks(&client_stat).expect("read /proc/self/stat");

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let (stop_sampling, mut stopped) = oneshot::channel::<()>();
    let progress = Arc::clone(&acknowledged);
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(MEMORY_SAMPLE);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some((rss, _)) = memory_kib(pid) {
                        samples.push((progress.load(Ordering::Relaxed), rss));
                    }
                }
                _ = &mut stopped => return samples,
            }
        }
    });

    let mut channels = Vec::with_capacity(LOAD_CHANNELS);
    for _ in 0..LOAD_CHANNELS {
        channels.push(server.channel().await);
    }
    let claimed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + LOAD_SUBMIT_LIMIT;
    let clients: Vec<_> = (0..LOAD_CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                TaskServiceClient::new(channels[i % LOAD_CHANNELS].clone()),
                Arc::clone(&claimed),
                Arc::clone(&acknowledged),
                deadline,
            ))
        })
        .collect();
    let (mut total, mut pushed_back) = (0, 0);
    for c in clients {
        match c.await.expect("client task") {
            Ok((mine, back)) => {
                total += mine;
                pushed_back += back;
            }
            Err(e) => panic!("a client failed: {e}"),
        }
    }
    let submit_time = started.elapsed();
    assert_eq!(total, LOAD_OPERATIONS);

    let mut ops = OperationsClient::new(channels[0].clone());
    let drain_deadline = Instant::now() + LOAD_DRAIN_LIMIT;
    while any_match(&mut ops, "done = false").await {
        assert!(
            Instant::now() < drain_deadline,
            "operations still unfinished {LOAD_DRAIN_LIMIT:?} after the last submission"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_done = started.elapsed();
    let server_cpu = cpu_ticks(&server_stat).expect("read /proc/<pid>/stat") - server_cpu0;
    let client_cpu = cpu_ticks(&client_stat).expect("read /proc/self/stat") - client_cpu0;
    assert!(
        !any_match(&mut ops, "state != SUCCEEDED").await,
        "some operation did not succeed"
    );
    let succeeded = count(&mut ops, "state = SUCCEEDED").await;
    assert_eq!(succeeded, LOAD_OPERATIONS, "operations listed as SUCCEEDED");

    // Let the server settle, then take the last samples.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_sampling.send(());
    let samples = sampler.await.expect("sampler");
    let (final_rss, peak_rss) = memory_kib(pid).expect("read /proc/<pid>/status");
    let sampled_peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    // RSS once a fifth of the work was acknowledged: caches and pools are warm by then, so
    // what grows after it grows with the number of operations.
    let warm_rss = samples
        .iter()
        .find(|(acked, _)| *acked >= LOAD_OPERATIONS / 5)
        .map_or(baseline_rss, |s| s.1);
    println!(
        "load: {LOAD_OPERATIONS} operations from {LOAD_CLIENTS} clients: acknowledged in \
         {:.1}s ({:.0}/s), all done in {:.1}s ({:.0}/s); {pushed_back} RESOURCE_EXHAUSTED \
         retries; CPU: server {:.1}s, clients {:.1}s; RSS baseline {} MiB, at 20% {} MiB, \
         peak (VmHWM) {} MiB, highest sample {} MiB, final {} MiB ({} samples)",
        submit_time.as_secs_f64(),
        LOAD_OPERATIONS as f64 / submit_time.as_secs_f64(),
        all_done.as_secs_f64(),
        LOAD_OPERATIONS as f64 / all_done.as_secs_f64(),
        server_cpu as f64 / 100.0,
        client_cpu as f64 / 100.0,
        baseline_rss / 1024,
        warm_rss / 1024,
        peak_rss / 1024,
        sampled_peak / 1024,
        final_rss / 1024,
        samples.len()
    );
    assert!(
        peak_rss < RSS_LIMIT_KIB,
        "peak RSS {} MiB is over the {} MiB bound",
        peak_rss / 1024,
        RSS_LIMIT_KIB / 1024
    );
    assert!(
        sampled_peak.saturating_sub(warm_rss) <= RSS_GROWTH_LIMIT_KIB,
        "RSS grew by {} MiB over the last 80,000 operations (from {} MiB): memory grows with \
         the number of operations (bound {} MiB)",
        sampled_peak.saturating_sub(warm_rss) / 1024,
        warm_rss / 1024,
        RSS_GROWTH_LIMIT_KIB / 1024
    );
    assert!(
        final_rss <= peak_rss,
        "RSS still growing after the work is done: final {final_rss} KiB > peak {peak_rss} KiB"
    );
}

/// A server with nothing to do uses no CPU: half a second after start-up, and again after a
/// burst of 50 short operations has finished and the client has gone, its CPU time (utime +
/// stime from `/proc/<pid>/stat`) grows by at most 2 clock ticks (20 ms) in 3 s, no single
/// thread uses more, and its threads are woken at most 10 times in all in those 3 s, so
/// nothing polls. Prints the measured figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_uses_no_cpu() {
    let server = Server::start(&[]);
    let pid = server.pid();
    // Start-up work (recovery, the first retention sweep) ends within moments of the
    // listening line; the server is idle from then on.
    tokio::time::sleep(SETTLE).await;
    assert_idle(pid, "after start-up").await;

    {
        let channel = server.channel().await;
        let mut tasks = TaskServiceClient::new(channel.clone());
        let mut ops = OperationsClient::new(channel);
        let mut names = Vec::new();
        for _ in 0..50 {
            let mut request = instant_sleep();
            if let Some(input) = &mut request.input {
                input.value = SleepInput {
                    duration: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 20_000_000,
                    }),
                    steps: 2,
                    ..Default::default()
                }
                .encode_to_vec();
            }
            names.push(
                tasks
                    .submit_task(request)
                    .await
                    .expect("submit")
                    .into_inner()
                    .name,
            );
        }
        for name in names {
            common::wait_done(&mut ops, &name).await;
        }
    }
    // The client's connection closes when its last handle is dropped; give the server a
    // moment to notice before measuring.
    tokio::time::sleep(SETTLE).await;
    assert_idle(pid, "after 50 operations finished").await;
}

/// Watches `pid` for [`IDLE_WINDOW`] and asserts it used no CPU and was hardly woken.
async fn assert_idle(pid: u32, when: &str) {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let before_total = cpu_ticks(&stat).expect("read /proc/<pid>/stat");
    let before = threads(pid);
    tokio::time::sleep(IDLE_WINDOW).await;
    let after_total = cpu_ticks(&stat).expect("read /proc/<pid>/stat");
    let after = threads(pid);

    let cpu = after_total - before_total;
    let mut busiest = (String::new(), 0);
    let mut wakeups = 0;
    let mut per_thread = Vec::new();
    for (id, ticks, switches) in &after {
        let (t0, s0) = before
            .iter()
            .find(|(b, _, _)| b == id)
            .map_or((0, 0), |(_, t, s)| (*t, *s));
        let (dt, ds) = (ticks - t0, switches - s0);
        wakeups += ds;
        if dt >= busiest.1 {
            busiest = (id.clone(), dt);
        }
        if dt > 0 || ds > 0 {
            per_thread.push(format!("{id}: {dt} ticks, {ds} switches"));
        }
    }
    println!(
        "idle {when}: {cpu} CPU ticks in {IDLE_WINDOW:?} over {} threads, busiest {} ({} \
         ticks), {wakeups} context switches [{}]",
        after.len(),
        busiest.0,
        busiest.1,
        per_thread.join("; ")
    );
    assert!(
        cpu <= IDLE_TICKS,
        "idle server {when} used {cpu} ticks of CPU in {IDLE_WINDOW:?} (at most {IDLE_TICKS})"
    );
    assert!(
        busiest.1 <= IDLE_TICKS,
        "thread {} of the idle server {when} used {} ticks in {IDLE_WINDOW:?}",
        busiest.0,
        busiest.1
    );
    assert!(
        wakeups <= IDLE_WAKEUPS,
        "the idle server's threads {when} were woken {wakeups} times in {IDLE_WINDOW:?} (at \
         most {IDLE_WAKEUPS}): something polls [{}]",
        per_thread.join("; ")
    );
}
