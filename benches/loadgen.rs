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
//!   them as fast as it can).
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

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::WaitOperationRequest;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{SleepInput, SubmitTaskRequest};
use tonic::transport::Channel;

#[derive(Clone)]
struct Target {
    label: String,
    program: String,
    args: Vec<String>,
    /// Processes started with the same command (several nodes on one shared store).
    nodes: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Closed,
    Submit,
}

struct Settings {
    mode: Mode,
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

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workers/ has a parent")
        .to_path_buf()
}

fn targets() -> Vec<Target> {
    let oprun = env!("CARGO_BIN_EXE_oprun").to_owned();
    let reference = repo_root().join("target/refserver/release/refserver");
    let spec = std::env::var("LOADGEN_TARGETS").unwrap_or_else(|_| {
        let mut s = "sqlite={oprun} serve;memory={oprun} serve --store memory".to_owned();
        if reference.exists() {
            s.push_str(";ref={ref} serve");
        } else {
            eprintln!(
                "loadgen: no reference server at {} (build it as ../shared/refserver/README.md says)",
                reference.display()
            );
        }
        s
    });
    spec.split(';')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (label, command) = t
                .split_once('=')
                .unwrap_or_else(|| panic!("LOADGEN_TARGETS entry {t:?} is not label=command"));
            let (label, nodes) = match label.split_once('*') {
                Some((label, n)) => (
                    label,
                    n.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{t:?}: label*N needs a number of nodes")),
                ),
                None => (label, 1),
            };
            let command = command
                .replace("{oprun}", &oprun)
                .replace("{ref}", &reference.display().to_string());
            let mut words = command.split_whitespace().map(str::to_owned);
            Target {
                label: label.trim().to_owned(),
                program: words.next().expect("a program"),
                args: words.collect(),
                nodes: usize::max(nodes, 1),
            }
        })
        .collect()
}

/// A target server running in its own process.
struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(target: &Target) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(&target.program)
            .args(&target.args)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env(
                "OPRUN_LOG",
                std::env::var("LOADGEN_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", target.program));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let keep = std::env::var_os("LOADGEN_SERVER_LOG").map(|_| {
            repo_root()
                .join("target")
                .join(format!("loadgen-{}.log", target.label))
        });
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            let mut log = keep.as_ref().and_then(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .ok()
            });
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some((_, addr)) = line.split_once("listening on ") {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                    if let Some(log) = log.as_mut() {
                        use std::io::Write;
                        let _ = writeln!(log, "{line}");
                    }
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{} printed no listening line", target.label))
            .parse()
            .expect("listening address");
        Self { child, addr, dir }
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is field 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / clock_ticks()
    }

    /// Peak resident set, in MB.
    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.dir);
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The largest `*-wal` file in `dir` (recursively, one level deep), sampled until `stop`.
fn sample_wal(dir: PathBuf, stop: Arc<AtomicBool>, max: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let mut size = 0u64;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with("-wal") {
                size = size.max(entry.metadata().map_or(0, |m| m.len()));
            }
        }
        max.fetch_max(size, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn noop() -> prost_types::Any {
    pack(&SleepInput {
        duration: Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        steps: 1,
        ..Default::default()
    })
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
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
                .wait_operation(WaitOperationRequest {
                    name: op.name.clone(),
                    timeout: Some(prost_types::Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                })
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
        let endpoint = format!("http://{}", servers[c % servers.len()].addr);
        channels.push(
            Channel::from_shared(endpoint)
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
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
        Mode::Closed => dones.len(),
        Mode::Submit => submits.len(),
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

fn print(label: &str, f: &Figures) {
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
            _ => Mode::Closed,
        },
        clients,
        connections: env_or("LOADGEN_CONNECTIONS", (clients / 8).max(1)).max(1),
        seconds: env_or("LOADGEN_SECONDS", 10.0f64),
        rounds: env_or("LOADGEN_ROUNDS", 3usize).max(1),
    };
    let targets = targets();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "loadgen: {} mode, {} clients over {} connections, {}s measured per round (after 1s warm-up), {} rounds, targets interleaved",
        if settings.mode == Mode::Closed { "closed-loop" } else { "submit-only" },
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
    let base = medians(&all[0]);
    for (t, figures) in targets.iter().zip(&all) {
        let m = medians(figures);
        print(&t.label, &m);
        if !std::ptr::eq(t, &targets[0]) && m.ops_per_sec > 0.0 {
            println!(
                "  {} / {}: ops/s {:.2}, submit p99 {:.2}, cpu/op {:.2}",
                targets[0].label,
                t.label,
                base.ops_per_sec / m.ops_per_sec,
                base.submit_p99 / m.submit_p99.max(1e-9),
                base.cpu_us_per_op / m.cpu_us_per_op.max(1e-9),
            );
        }
    }
}
