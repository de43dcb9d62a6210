//! The server's instructions per operation, counted by valgrind's callgrind: a figure that
//! does not drift with what else the host runs, for small changes of the hot path.
//! `cargo bench -p oprun-workers --bench instructions` (needs `valgrind`).
//!
//! Each target is a server in its own process under `valgrind --tool=callgrind`, driven over
//! loopback gRPC from this process in closed loop (`INSTR_CLIENTS` clients, default 4, each
//! submitting a no-op `sleep` and waiting for it with WaitOperation). After `INSTR_WARMUP`
//! operations (default 200) the counters are zeroed (`callgrind_control -z`), `INSTR_OPS`
//! operations (default 2,000) are run, and the counters dumped (`callgrind_control -d`): the
//! dump's total, over the operations, is the figure. Printed per target: instructions per
//! operation, and the ratio to the reference.
//!
//! `INSTR_KEEP=DIR` keeps each target's dump as `DIR/<label>.callgrind`, for
//! `callgrind_annotate --inclusive=yes DIR/sqlite.callgrind | head -60`.
//!
//! `INSTR_TARGETS` as `LOADGEN_TARGETS` (`label=program args…;…`, `{oprun}` this build's
//! binary, `{ref}` the reference server). Default:
//! `sqlite={oprun} serve;memory={oprun} serve --store memory;ref={ref} serve`.

#[path = "harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{connect, env_or, noop, targets, wait_for, Server, Target};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::SubmitTaskRequest;
use tonic::transport::Channel;

/// Runs `total` no-op operations over `clients` clients in closed loop.
async fn run(channel: &Channel, clients: usize, total: usize) {
    let left = Arc::new(AtomicUsize::new(total));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let channel = channel.clone();
            let left = left.clone();
            tokio::spawn(async move {
                let mut tasks = TaskServiceClient::new(channel.clone());
                let mut ops = OperationsClient::new(channel);
                while left
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let op = tasks
                        .submit_task(SubmitTaskRequest {
                            kind: "sleep".into(),
                            input: Some(noop()),
                            ..Default::default()
                        })
                        .await
                        .expect("submit")
                        .into_inner();
                    loop {
                        let waited = ops
                            .wait_operation(wait_for(op.name.clone(), 60))
                            .await
                            .expect("wait")
                            .into_inner();
                        if waited.done {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
}

/// `callgrind_control ARG PID`.
fn control(arg: &str, pid: u32) {
    let status = Command::new("callgrind_control")
        .args([arg, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("callgrind_control runs (apt-get install valgrind)");
    assert!(status.success(), "callgrind_control {arg} {pid} failed");
}

/// The instructions of the first dump in `dir` (`cg.out.1`), once it is written.
fn dumped(dir: &Path) -> u64 {
    let file = dir.join("cg.out.1");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let total = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok());
            if let Some(total) = total {
                return total;
            }
        }
        assert!(Instant::now() < deadline, "no dump in {}", dir.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::main]
async fn main() {
    let clients: usize = env_or("INSTR_CLIENTS", 4);
    let warmup: usize = env_or("INSTR_WARMUP", 200);
    let ops: usize = env_or("INSTR_OPS", 2000);
    let mut figures = Vec::new();
    for target in targets(
        "INSTR_TARGETS",
        "sqlite={oprun} serve;memory={oprun} serve --store memory;ref={ref} serve",
    ) {
        let out = tempfile::tempdir().expect("tempdir");
        let mut args = vec![
            "--tool=callgrind".to_owned(),
            format!(
                "--callgrind-out-file={}",
                out.path().join("cg.out").display()
            ),
            target.program.clone(),
        ];
        args.extend(target.args.iter().cloned());
        let wrapped = Target {
            label: target.label.clone(),
            program: "valgrind".into(),
            args,
            nodes: 1,
        };
        let server = Server::start(&wrapped);
        let channel = connect(server.addr).await;
        run(&channel, clients, warmup).await;
        let pid = server.child.id();
        control("-z", pid);
        let started = Instant::now();
        run(&channel, clients, ops).await;
        control("-d", pid);
        let total = dumped(out.path());
        server.stop();
        if let Ok(keep) = std::env::var("INSTR_KEEP") {
            let kept = Path::new(&keep).join(format!("{}.callgrind", target.label));
            std::fs::create_dir_all(&keep).expect("INSTR_KEEP is a directory");
            std::fs::copy(out.path().join("cg.out.1"), &kept).expect("the dump is kept");
        }
        #[allow(clippy::cast_precision_loss)]
        let per_op = total as f64 / ops as f64;
        println!(
            "{:<8} {ops} operations in {:.1} s under callgrind: {total} instructions, {:.0} per \
             operation",
            target.label,
            started.elapsed().as_secs_f64(),
            per_op
        );
        figures.push((target.label, per_op));
    }
    if let Some((_, reference)) = figures.iter().find(|(label, _)| label == "ref") {
        for (label, per_op) in &figures {
            println!("{label:<8} / ref: {:.2}x", per_op / reference);
        }
    }
}
