//! Running the real `oprun` binary from tests.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `Command` for the binary with the caller's `OPRUN_*` and log settings removed, so the
/// flags a test gives are the whole configuration.
pub fn oprun() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oprun"));
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
pub fn spawn_serve(mut cmd: Command, log: &Path) -> (Child, SocketAddr) {
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
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
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
    (child, addr)
}
