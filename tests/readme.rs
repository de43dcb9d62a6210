//! Every code snippet in README.md is compiled or executed: each fenced block carries a
//! `<!-- readme: … -->` marker saying how, and this test holds each to it.
//!
//! - `newcomer`: the newcomer's block must stay exactly those two commands (CI runs
//!   the second, `bash tests/run.sh`; the first is the binary every other test here runs).
//! - `run`: the tour, run as a bash script against a fresh directory with the built `oprun`
//!   on `PATH` (its server on a free port, through `OPRUN_LISTEN`/`OPRUN_ADDR`).
//! - `http`: the REST tour, run the same way, `127.0.0.1:8080` replaced by a free port.
//! - `rust`: identical to the `examples/` file its first line names; `cargo test` builds the
//!   examples; the embedding example is run here until it serves, then stopped with SIGINT,
//!   and the client example is run against the real server.
//! - `exec`: the script-as-a-kind tour, run as a bash script like `run`.
//! - `python`: run by `tests/interop/test_readme.py` against a real server.
//! - `python-worker`: the Python SDK's program, run by `python/tests` with the SDK installed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::ListTaskKindsRequest;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workers/ has a parent")
        .to_path_buf()
}

/// A fenced block of the README: its marker, language and text.
#[derive(Debug)]
struct Block {
    marker: String,
    lang: String,
    text: String,
    line: usize,
}

/// Every fenced block, with the `<!-- readme: … -->` marker on the line before it (empty if
/// none); fails on an indented code block, which could hold an unchecked snippet.
fn blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut previous_blank = true;
    while i < lines.len() {
        let line = lines[i];
        if let Some(lang) = line.strip_prefix("```") {
            let marker = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| l.strip_prefix("<!-- readme: "))
                .map(|m| m.trim_end_matches("-->").trim().to_owned())
                .unwrap_or_default();
            let start = i;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                text.push_str(lines[i]);
                text.push('\n');
                i += 1;
            }
            out.push(Block {
                marker,
                lang: lang.trim().to_owned(),
                text,
                line: start + 1,
            });
            previous_blank = false;
        } else {
            assert!(
                !(previous_blank && line.starts_with("    ") && !line.trim().is_empty()),
                "README.md line {}: an indented code block; make it a fenced block with a \
                 `<!-- readme: … -->` marker",
                i + 1
            );
            previous_blank = line.trim().is_empty();
        }
        i += 1;
    }
    out
}

/// Each block says how it is checked, and the two commands stay what the README promises.
#[test]
fn every_block_is_checked() {
    let blocks = blocks();
    let mut kinds = Vec::new();
    for b in &blocks {
        let kind = b.marker.split_whitespace().next().unwrap_or_default();
        assert!(
            [
                "newcomer",
                "run",
                "http",
                "exec",
                "scheduling",
                "schedules",
                "rust",
                "python",
                "python-worker"
            ]
            .contains(&kind),
            "README.md line {}: a ```{} block without a `<!-- readme: … -->` marker saying \
             how it is checked",
            b.line,
            b.lang
        );
        kinds.push(kind);
        if kind == "newcomer" {
            let commands: Vec<&str> = b
                .text
                .lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim())
                .collect();
            assert_eq!(
                commands,
                [
                    "cargo run --release --bin oprun -- serve",
                    "bash tests/run.sh"
                ]
            );
        }
    }
    assert_eq!(
        blocks[0].marker.split_whitespace().next(),
        Some("newcomer"),
        "the README starts with the two commands"
    );
    for kind in ["run", "http", "exec", "rust", "python", "python-worker"] {
        assert!(kinds.contains(&kind), "no {kind} block");
    }
}

/// The Rust blocks are the example files, which `cargo test` compiles.
#[test]
fn rust_blocks_are_the_examples() {
    for b in blocks().iter().filter(|b| b.lang == "rust") {
        let first = b.text.lines().next().unwrap_or_default();
        let file = first
            .strip_prefix("// ")
            .and_then(|rest| rest.split(':').next())
            .filter(|f| f.starts_with("examples/"))
            .unwrap_or_else(|| {
                panic!(
                    "README.md line {}: the block must start with `// examples/NAME.rs: …`",
                    b.line
                )
            });
        let example = std::fs::read_to_string(repo().join(file)).unwrap();
        assert_eq!(
            b.text, example,
            "README.md line {} differs from {file}",
            b.line
        );
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the README block whose marker starts with `marker` as a bash script in a fresh
/// directory, with the built `oprun` on `PATH` and its server on a free port (which
/// `127.0.0.1:50051` in the text stands for); fails unless it succeeds, prints each of
/// `expected`, and keeps the server's log out of its output. Returns the directory.
fn run_block(marker: &str, expected: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = run_block_on(marker, free_port(), dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {marker} block failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for expected in expected {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    // Issue 21, item 2: the server's log is in its file, not between the block's lines.
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains(" INFO "),
            "server log lines in the block's {what}:\n{text}"
        );
    }
    let log = std::fs::read_to_string(dir.path().join("oprun.log")).unwrap_or_default();
    assert!(log.contains(" INFO "), "no log in oprun.log: {log:?}");
    dir
}

/// Runs the README block `marker` in `dir` with its server on `port` and returns how it
/// ended.
fn run_block_on(marker: &str, port: u16, dir: &Path) -> std::process::Output {
    let block = blocks()
        .into_iter()
        .find(|b| b.marker.starts_with(marker))
        .unwrap_or_else(|| panic!("no {marker} block"));
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_oprun"), bin.join("oprun")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let text = block
        .text
        .replace("127.0.0.1:50051", &format!("127.0.0.1:{port}"));
    // A block that fails midway leaves its server running, holding the output's pipes: the
    // trap stops it, so that the failure is reported instead of waited on for ever.
    let text = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{text}");
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &text])
        .current_dir(dir)
        .env("PATH", path)
        .env("OPRUN_LISTEN", format!("127.0.0.1:{port}"))
        .env("OPRUN_ADDR", format!("127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .env_remove("OPRUN_HTTP_LISTEN")
        .env_remove("OPRUN_LOG_FILE")
        .env_remove("OPRUN_DATA_DIR")
        .env_remove("OPRUN_STORE");
    cmd.output().unwrap()
}

/// Issue 21, item 2: when the server cannot start (its port is another program's), the tours
/// give up at once with the server's own message instead of waiting forever.
#[test]
fn the_tours_give_up_when_the_server_cannot_start() {
    for marker in ["run", "http"] {
        // Another program owns the port: it accepts and hangs up.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = other.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in other.incoming() {
                drop(conn);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(run_block_on(marker, port, &path));
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the {marker} block still waits after 30 s"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the {marker} block succeeded");
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "the server's message is not in the {marker} block's stderr:\n{stderr}"
        );
    }
}

/// The tour runs as written, every command succeeding.
#[test]
fn the_tour_runs() {
    run_block(
        "run",
        &[
            "sleep",
            "SUCCEEDED",
            "exit code 3: it ended with an error",
            "CANCELLED",
            "index.html",
        ],
    );
}

/// Issue 22: the schedules tour runs as written: an every-second schedule runs, a bad cron
/// spec is refused naming the hour field, pause keeps its note, trigger runs one now that
/// names its schedule, REST shows the next run, delete deletes.
#[test]
fn the_schedules_tour_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_block_on("schedules", free_port(), dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the schedules block failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for expected in [
        "name:            schedules/heartbeat",
        "refused: exit code 1",
        "30 2 * * * (America/New_York)",
        "every 1s",
        "schedule:    schedules/nightly",
        "fire time:",
        "\"nextRunTime\":\"",
        "paused:          yes",
        "note:            quiet during the migration",
        "deleted schedules/heartbeat",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(stderr.contains("hour field \"25\""), "{stderr}");
    let listed = stdout
        .lines()
        .filter(|l| l.starts_with("operations/") && l.contains("sleep"))
        .count();
    assert!(listed >= 2, "the heartbeat ran: {stdout}");
}

/// Issue 22: the scheduling tour runs as written: the high-priority operation started before
/// the low one submitted ahead of it, a unique key answers one operation, a narrowed retry policy
/// ends at attempt 2, a batch over REST answers two operations.
#[test]
fn the_scheduling_tour_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_block_on("scheduling", free_port(), dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the scheduling block failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "PRI",
        "one operation for the key: operations/",
        "attempt:     2",
        "Unavailable (14)",
        "exit code 3: it failed at attempt 2",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("\"name\":\"operations/").count(),
        2,
        "{stdout}"
    );
    let started: Vec<std::time::SystemTime> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"startTime\":"))
        .map(|t| humantime::parse_rfc3339(t.trim().trim_matches('"')).expect("an RFC 3339 time"))
        .collect();
    assert_eq!(started.len(), 2, "{stdout}");
    assert!(
        started[0] < started[1],
        "the high-priority one started first: {stdout}"
    );
}

/// The script-as-a-kind tour runs as written: a shell script, run by `oprun worker exec`,
/// takes a submission and answers with its JSON object.
#[test]
fn the_exec_tour_runs() {
    run_block("exec", &["SUCCEEDED", "small-cat.png", "cat.png"]);
}

/// The REST tour runs as written: kinds, submit, the event stream to the end, a filtered
/// list, a JSON 404, a metric, the OpenAPI document.
#[test]
fn the_http_tour_runs() {
    let dir = run_block(
        "http",
        &[
            "\"sleep\"",
            "data: {",
            "\"done\":true",
            "\"stepsDone\":4",
            "\"status\":\"NOT_FOUND\"",
            "oprun_operations_finished_total{",
        ],
    );
    let openapi = std::fs::read_to_string(dir.path().join("openapi.json")).unwrap();
    assert!(openapi.starts_with("{\"components\""), "{openapi:.100}");
}

/// The client example runs against the real server: progress, then the typed result.
#[tokio::test]
async fn the_client_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::binary::BinServer::start(dir.path(), "127.0.0.1:0", &[], &[]);
    let out = Command::new(example("client"))
        .env("OPRUN_ADDR", server.addr.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for expected in ["submitted operations/", "4/4", "4 steps done"] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from {stdout}"
        );
    }
}

/// An example built next to the test binaries (target/<profile>/examples).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join(name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("target/<profile>/examples/{name}: run `cargo test`, which builds the examples")
        })
}

/// The embedding example serves oprun's gRPC services (health included) on its tonic server
/// and the REST gateway nested in its own axum app next to its own route, and stops cleanly
/// on SIGINT.
#[tokio::test]
async fn the_embedding_example_serves_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(example("embed"))
        .env("OPRUN_LISTEN", "127.0.0.1:0")
        .env("OPRUN_HTTP_LISTEN", "127.0.0.1:0")
        .env("OPRUN_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = |prefix: &str| {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .to_owned()
    };
    let addr = line("listening on ");
    let http: std::net::SocketAddr = line("http on ").parse().unwrap();
    let own = common::http::request(http, "GET", "/hello", &[], None).await;
    assert_eq!(
        (own.status, own.body.as_str()),
        (200, "hello from your app\n")
    );
    let rest = common::http::request(http, "GET", "/oprun/v1/taskKinds", &[], None).await;
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert!(rest.body.contains("\"sleep\""), "{}", rest.body);
    let kinds = TaskServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .list_task_kinds(ListTaskKindsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .kinds;
    assert!(kinds.iter().any(|k| k.name == "sleep"));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "google.longrunning.Operations".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the example ignored SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
