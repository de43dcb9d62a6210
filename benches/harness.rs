//! What the out-of-process benches share: target servers started as their own processes on
//! loopback ports, their CPU time and memory read from `/proc`, and small helpers. Each bench
//! includes this file as a module and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use oprun::model::pack;
use oprun::proto::google::longrunning::WaitOperationRequest;
use oprun::proto::oprun::v1::SleepInput;

#[derive(Clone)]
pub struct Target {
    pub label: String,
    pub program: String,
    pub args: Vec<String>,
    /// Processes started with the same command (several nodes on one shared store).
    pub nodes: usize,
}

pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workers/ has a parent")
        .to_path_buf()
}

/// The reference server's binary (built with the command in `../shared/refserver/README.md`).
pub fn reference() -> PathBuf {
    repo_root().join("target/refserver/release/refserver")
}

/// The targets the `;`-separated `label=program args…` list in `var` names (see the benches'
/// doc comments), or `default` when `var` is not set.
pub fn targets(var: &str, default: &str) -> Vec<Target> {
    let oprun = env!("CARGO_BIN_EXE_oprun").to_owned();
    let reference = reference();
    let spec = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    spec.split(';')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (label, command) = t
                .split_once('=')
                .unwrap_or_else(|| panic!("{var} entry {t:?} is not label=command"));
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
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTP listener's address, when started with one ([`Server::start_with_http`]).
    pub http: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start(target: &Target) -> Self {
        Self::start_in(target, tempfile::tempdir().expect("tempdir"))
    }

    /// Starts `target` on `dir/data` (which may hold an earlier run's data).
    pub fn start_in(target: &Target, dir: tempfile::TempDir) -> Self {
        Self::launch(target, dir, false)
    }

    /// Starts `target` with its HTTP listener on a free loopback port too.
    pub fn start_with_http(target: &Target) -> Self {
        Self::launch(target, tempfile::tempdir().expect("tempdir"), true)
    }

    fn launch(target: &Target, dir: tempfile::TempDir, http: bool) -> Self {
        let mut child = Command::new(&target.program)
            .args(&target.args)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            // Never the default HTTP port, which another run may hold.
            .env(
                "OPRUN_HTTP_LISTEN",
                if http { "127.0.0.1:0" } else { "off" },
            )
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
                    if let Some((what, addr)) = line.split_once("listening on ") {
                        let _ = tx.send((what.contains("http"), addr.trim().to_owned()));
                    }
                    if let Some(log) = log.as_mut() {
                        use std::io::Write;
                        let _ = writeln!(log, "{line}");
                    }
                }
            });
        }
        let mut addr = None;
        let mut http_addr = None;
        while addr.is_none() || (http && http_addr.is_none()) {
            let (is_http, line) = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("{} printed no listening line", target.label));
            let parsed: SocketAddr = line.parse().expect("listening address");
            if is_http {
                http_addr = Some(parsed);
            } else {
                addr = Some(parsed);
            }
        }
        Self {
            child,
            addr: addr.expect("the gRPC address"),
            http: http_addr,
            dir,
        }
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.child.id())
    }

    /// Peak resident set, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        status_mb(self.child.id(), "VmHWM:")
    }

    /// Resident set now, in MB.
    pub fn rss_mb(&self) -> f64 {
        status_mb(self.child.id(), "VmRSS:")
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 15 s) and gives back its directory.
    pub fn stop_keeping_data(mut self) -> tempfile::TempDir {
        self.terminate();
        self.dir
    }

    pub fn stop(mut self) {
        self.terminate();
        drop(self.dir);
    }

    fn terminate(&mut self) {
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
    }
}

/// A `/proc/PID/status` field in kB (`VmRSS:`, `VmHWM:`), in MB; 0 when unreadable.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds process `pid` has used so far (0 once it is gone).
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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

pub fn clock_ticks() -> f64 {
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
pub fn sample_wal(dir: PathBuf, stop: Arc<AtomicBool>, max: Arc<AtomicU64>) {
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

/// A gRPC channel to the server at `addr` (plain HTTP/2 over loopback).
pub async fn connect(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A WaitOperation for `name` that waits at most `seconds`.
pub fn wait_for(name: String, seconds: i64) -> WaitOperationRequest {
    WaitOperationRequest {
        name,
        timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

pub fn noop() -> prost_types::Any {
    pack(&SleepInput {
        duration: Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        steps: 1,
        ..Default::default()
    })
}

pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}
