//! Running the real `oprun` binary from tests.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `Command` for the binary with the caller's `OPRUN_*` and log settings removed, so the
/// flags a test gives are the whole configuration. `OPRUN_TEST_BIN` runs another binary
/// instead (an older build, to see a regression test fail on the code before a fix).
pub fn oprun() -> Command {
    let bin =
        std::env::var_os("OPRUN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_oprun").into());
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("OPRUN_") || name == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// The last `lines` lines of a file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a one-shot command (a client subcommand, or a `serve` expected to refuse to start)
/// and returns its output; kills it and fails the test if it runs longer than 10 s.
pub async fn run_to_exit(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oprun");
    let id = child.id();
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(Duration::from_secs(10), waited).await {
        Ok(out) => out.expect("join").expect("output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("oprun did not exit within 10 s");
        }
    }
}

/// How long `oprun serve` may take to print its listening line.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Spawns `cmd`, an `oprun serve …` command, with its stderr in `log`; waits for the one
/// stdout line `oprun listening on ADDR` and returns the child and the address it bound. If
/// no such line comes within [`STARTUP`], kills the child and fails with the log's tail.
pub fn spawn_serve(cmd: Command, log: &Path) -> (Child, SocketAddr) {
    let (child, addr, _) = spawn_serve_http(cmd, log);
    (child, addr)
}

/// [`spawn_serve`], also returning the HTTP address from the second stdout line
/// `oprun http listening on ADDR` (the `--listen` address unless `--http-listen` adds one).
pub fn spawn_serve_http(mut cmd: Command, log: &Path) -> (Child, SocketAddr, Option<SocketAddr>) {
    let stderr = fs::File::create(log).expect("log file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn oprun serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..2 {
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(STARTUP) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no listening line from oprun serve ({e}); its log:\n{}",
                tail(log, 30)
            );
        }
    };
    let addr = line
        .strip_prefix("oprun listening on ")
        .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    // Printed right after the first line, before anything is served.
    let http = rx
        .recv_timeout(Duration::from_secs(2))
        .ok()
        .and_then(|line| {
            line.strip_prefix("oprun http listening on ").map(|a| {
                a.parse()
                    .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
            })
        });
    (child, addr, http)
}

/// `oprun serve` as a child process, its log in a file; dropping it kills the process (and
/// prints the log if the test is failing).
pub struct BinServer {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTP surface's address: the `--listen` one, unless `--http-listen` adds another.
    pub http: Option<SocketAddr>,
    pub log: PathBuf,
}

impl BinServer {
    /// `oprun serve --listen LISTEN --store memory --data-dir DIR/data EXTRA…` with `env`.
    pub fn start(dir: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--store", "memory"];
        all.extend_from_slice(extra);
        Self::start_with(dir, listen, &all, env)
    }

    /// `oprun serve --listen LISTEN --data-dir DIR/data EXTRA…` with `env`.
    pub fn start_with(dir: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.join("server.log");
        let mut cmd = oprun();
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir.join("data"))
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, addr, http) = spawn_serve_http(cmd, &log);
        Self {
            child,
            addr,
            http,
            log,
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.url())
            .expect("a valid URL")
            .connect()
            .await
            .expect("connect")
    }

    /// SIGTERM, then up to 10 s for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "oprun ignored SIGTERM for 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- oprun serve log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
