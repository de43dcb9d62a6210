//! Three real `oprun serve` processes on one PostgreSQL database (a fresh one per test,
//! dropped after it), each on its own loopback port, driven by real gRPC clients: they act as
//! one service.

mod common;

use std::time::{Duration, Instant};

use common::binary::{oprun, run_to_exit, BinServer};
use common::{error_code, metadata, sleep_input};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
    WaitOperationRequest,
};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::SubmitTaskRequest;
use oprun::store::postgres::testing::TestDatabase;
use tonic::transport::Channel;

/// The lease the nodes hold their work under: short, so that a rescue comes quickly.
const LEASE: &str = "2s";

struct Node {
    id: String,
    server: BinServer,
    channel: Channel,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(db: &TestDatabase, id: &str) -> Self {
        Self::start_with(db, id, &[]).await
    }

    async fn start_with(db: &TestDatabase, id: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = db.url();
        let mut args = vec!["--store", &url, "--node-id", id, "--lease", LEASE];
        args.extend_from_slice(extra);
        let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &args, &[]);
        let channel = Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            id: id.to_owned(),
            server,
            channel,
            _dir: dir,
        }
    }

    fn ops(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel.clone())
    }

    async fn submit_sleep(&self, ms: u64) -> String {
        TaskServiceClient::new(self.channel.clone())
            .submit_task(SubmitTaskRequest {
                kind: "sleep".into(),
                input: Some(sleep_input(ms, 10, "")),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
            .name
    }

    /// WaitOperation on this node, for at most `seconds`.
    async fn wait(&self, name: &str, seconds: i64) -> Operation {
        self.ops()
            .wait_operation(WaitOperationRequest {
                name: name.to_owned(),
                timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            })
            .await
            .expect("wait")
            .into_inner()
    }

    async fn get(&self, name: &str) -> Operation {
        self.ops()
            .get_operation(GetOperationRequest { name: name.into() })
            .await
            .expect("get")
            .into_inner()
    }
}

async fn cluster(db: &TestDatabase) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::start(db, id).await);
    }
    nodes
}

/// Polls `node` until every operation in `names` is RUNNING; returns each one's node.
async fn running_on(node: &Node, names: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut owners = Vec::new();
        for name in names {
            let meta = metadata(&node.get(name).await);
            if meta.state == State::Running as i32 {
                owners.push(meta.node);
            }
        }
        if owners.len() == names.len() {
            return owners;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} operations RUNNING after 20 s",
            owners.len(),
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// An operation submitted on one node is seen by Get, List and Wait on the others, and a
/// cancel sent to a node that does not run it ends it CANCELLED, quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_and_cancels_every_operation() {
    let db = TestDatabase::create("cluster_cancel").await;
    let nodes = cluster(&db).await;

    // Visibility: submitted on a, read on b and c at once (the insert was committed before
    // the answer), listed with a filter on c, waited for on b.
    let quick = nodes[0].submit_sleep(300).await;
    for node in &nodes[1..] {
        assert_eq!(node.get(&quick).await.name, quick);
    }
    let listed = nodes[2]
        .ops()
        .list_operations(ListOperationsRequest {
            name: "operations".into(),
            filter: r#"kind = "sleep""#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.operations.iter().any(|op| op.name == quick));
    let waited = nodes[1].wait(&quick, 20).await;
    assert!(waited.done, "Wait on another node returns when it ends");
    assert_eq!(error_code(&waited), None);
    assert!(!metadata(&waited).node.is_empty(), "it names its node");

    // Cross-node cancel: 60 long operations, each cancelled on a node that does not run it,
    // waited for there.
    let mut names = Vec::new();
    for i in 0..60 {
        names.push(nodes[i % 3].submit_sleep(120_000).await);
    }
    let owners = running_on(&nodes[0], &names).await;
    // `oprun nodes` on any node lists all three, live, with what each runs.
    let shown =
        run_to_exit(oprun().args(["nodes", "--addr", &nodes[1].server.addr.to_string()])).await;
    assert!(shown.status.success(), "{shown:?}");
    let table = String::from_utf8_lossy(&shown.stdout).into_owned();
    for node in &nodes {
        let runs = owners.iter().filter(|o| **o == node.id).count();
        let row = table
            .lines()
            .find(|l| l.starts_with(&node.id))
            .unwrap_or_else(|| panic!("{} not in {table}", node.id));
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells[1], "live", "{table}");
        assert_eq!(
            cells.get(3).copied(),
            Some(runs.to_string().as_str()),
            "{table}"
        );
        assert_eq!(cells.last().copied(), Some("node"), "{table}");
    }
    let mut latencies = Vec::new();
    for (name, owner) in names.iter().zip(&owners) {
        let other = nodes
            .iter()
            .find(|n| &n.id != owner)
            .expect("a node that does not run it");
        let started = Instant::now();
        other
            .ops()
            .cancel_operation(CancelOperationRequest { name: name.clone() })
            .await
            .expect("cancel");
        let op = other.wait(name, 10).await;
        latencies.push(started.elapsed());
        assert!(op.done, "{name} cancelled on {} did not end", other.id);
        assert_eq!(error_code(&op), Some(1), "{name} ends CANCELLED");
        assert_eq!(&metadata(&op).node, owner, "it ran where it was claimed");
    }
    let spread: std::collections::HashSet<&String> = owners.iter().collect();
    assert!(
        spread.len() >= 2,
        "work is spread over the nodes: {owners:?}"
    );
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    eprintln!("cross-node cancel→done over 60 operations: p50 {p50:?}, p99 {p99:?}");
    assert!(
        p99 < Duration::from_millis(1500),
        "cross-node cancel p99 {p99:?} (p50 {p50:?})"
    );
}

/// kill -9 of the node running several retry-safe operations: once its lease ends the others
/// take them over (QUEUED again with attempt 2, then run to the end on a live node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_work_is_rescued() {
    let db = TestDatabase::create("cluster_rescue").await;
    let mut nodes = cluster(&db).await;
    let mut names = Vec::new();
    for _ in 0..9 {
        names.push(nodes[0].submit_sleep(4_000).await);
    }
    let owners = running_on(&nodes[0], &names).await;
    // The node running the most of them dies.
    let victim = ["node-a", "node-b", "node-c"]
        .into_iter()
        .max_by_key(|id| owners.iter().filter(|o| o.as_str() == *id).count())
        .unwrap()
        .to_owned();
    let lost: Vec<&String> = names
        .iter()
        .zip(&owners)
        .filter(|(_, o)| **o == victim)
        .map(|(n, _)| n)
        .collect();
    let index = nodes.iter().position(|n| n.id == victim).unwrap();
    let mut dead = nodes.remove(index);
    let killed = Instant::now();
    dead.server.child.kill().unwrap();
    dead.server.child.wait().unwrap();

    let survivor = &nodes[0];
    let mut rescued_after = Duration::ZERO;
    for name in &lost {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let meta = metadata(&survivor.get(name).await);
            if meta.attempt >= 2 && meta.node != victim {
                rescued_after = rescued_after.max(killed.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not taken over from {victim} within 30 s: {meta:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "{} operations of {victim} rescued {rescued_after:?} after kill -9 (lease {LEASE})",
        lost.len()
    );
    for name in &names {
        let op = survivor.wait(name, 30).await;
        assert!(op.done, "{name} finished");
        assert_eq!(error_code(&op), None, "{name} succeeded: {op:?}");
        let meta = metadata(&op);
        assert_ne!(meta.node, victim, "{name} finished on a live node");
        if lost.contains(&name) {
            assert_eq!(meta.attempt, 2, "{name} ran again once");
        } else {
            assert_eq!(meta.attempt, 1, "{name} was left alone");
        }
    }
}

/// A node stopped (SIGSTOP) past its lease, while the others take its work over and finish
/// it, changes nothing when it resumes: its workers' writes are refused by their fence, and it
/// says it lost its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_resumes_after_its_lease_changes_nothing() {
    let db = TestDatabase::create("cluster_fencing").await;
    // The first node alone claims the work; then the others join.
    let paused = Node::start(&db, "node-a").await;
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(paused.submit_sleep(3_000).await);
    }
    let owners = running_on(&paused, &names).await;
    assert!(owners.iter().all(|o| o == "node-a"), "{owners:?}");
    let others = [
        Node::start(&db, "node-b").await,
        Node::start(&db, "node-c").await,
    ];
    let pid = paused.server.child.id().to_string();
    let signal = |sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let mut ended = Vec::new();
    for name in &names {
        let op = others[0].wait(name, 30).await;
        assert!(
            op.done,
            "{name} finished elsewhere while node-a was stopped"
        );
        assert_eq!(error_code(&op), None, "{op:?}");
        let meta = metadata(&op);
        assert_eq!(meta.attempt, 2, "{name} ran again once");
        assert_ne!(meta.node, "node-a");
        ended.push(op);
    }
    signal("-CONT");
    // Its workers' sleeps ended while it was stopped: they finish at once and try to write.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !paused.server.log_text().contains("lease ended") {
        assert!(
            Instant::now() < deadline,
            "node-a did not notice it lost its lease: {}",
            paused.server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for before in &ended {
        for node in [&paused, &others[1]] {
            let now = node.get(&before.name).await;
            assert_eq!(&now, before, "{} changed after node-a resumed", before.name);
        }
    }
    // And it serves and works again.
    let after = paused.submit_sleep(100).await;
    let op = paused.wait(&after, 20).await;
    assert!(op.done && error_code(&op).is_none(), "{op:?}");
}

/// A kind's running limit and the cluster's total hold over all nodes: with `sleep` limited to
/// 2 and each node free to run 64, no more than 2 run at once anywhere, and the rest wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_limits_hold_over_all_nodes() {
    let db = TestDatabase::create("cluster_limits").await;
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::start_with(&db, id, &["--kind-limit", "sleep=2"]).await);
    }
    let mut names = Vec::new();
    for i in 0..6 {
        names.push(nodes[i % 3].submit_sleep(600).await);
    }
    // One List is one snapshot of the database: what it shows RUNNING ran at the same time.
    let count = |filter: &'static str| {
        let mut ops = nodes[0].ops();
        async move {
            ops.list_operations(ListOperationsRequest {
                name: "operations".into(),
                filter: filter.into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .operations
            .len()
        }
    };
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("done = true").await < names.len() {
        assert!(Instant::now() < deadline, "not all finished within 30 s");
        let running = count("state = RUNNING").await;
        most = most.max(running);
        assert!(
            running <= 2,
            "{running} sleeps run at once over the cluster"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 2, "the limit is used, not just respected");
}

/// A node restarted under the same `--node-id` after kill -9 takes back what its earlier
/// process was running (by the restart rule: a retry-safe kind runs again, attempt 2): its
/// lease is renewed at once by the new process, so no look for expired leases would find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_name_takes_back_its_work() {
    let db = TestDatabase::create("cluster_restart").await;
    let mut first = Node::start(&db, "node-a").await;
    let name = first.submit_sleep(60_000).await;
    running_on(&first, std::slice::from_ref(&name)).await;
    first.server.child.kill().unwrap();
    first.server.child.wait().unwrap();
    let again = Node::start(&db, "node-a").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let meta = metadata(&again.get(&name).await);
        if meta.attempt == 2 && meta.state == State::Running as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not taken back by the restarted node-a: {meta:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small deterministic generator for the crash loop (seeded, printed, replayable).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

/// What must never change once an operation is done: its end and its result.
fn outcome(op: &Operation) -> (bool, i32, Option<String>) {
    let meta = metadata(op);
    (op.done, meta.state, Some(format!("{:?}", op.result)))
}

/// When each worker ran, from one `oprun serve` process's log ("started" and "worker
/// returned", with the operation's name in its span): (operation, process, start, end) in
/// microseconds since the epoch. A run the log does not end lasts until `until` (when the
/// process was killed, or now for one still up: an operation whose submission was never
/// acknowledged may still run).
fn runs(log: &str, process: &str, until: i64) -> Vec<(String, String, i64, i64)> {
    let mut open: std::collections::HashMap<String, i64> = Default::default();
    let mut runs = Vec::new();
    for line in log.lines() {
        let started = line.contains(" started attempt=");
        if !started && !line.contains(" worker returned") {
            continue;
        }
        let Some(name) = line
            .split("op.name=")
            .nth(1)
            .and_then(|rest| rest.split([' ', '}']).next())
        else {
            continue;
        };
        let at = line
            .split_whitespace()
            .next()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("a log line without a time: {line}"));
        let at = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        if started {
            assert!(
                open.insert(name.to_owned(), at).is_none(),
                "{process} started {name} while it ran it"
            );
        } else if let Some(from) = open.remove(name) {
            runs.push((name.to_owned(), process.to_owned(), from, at));
        }
    }
    for (name, from) in open {
        runs.push((name, process.to_owned(), from, until));
    }
    runs
}

/// Microseconds since the epoch, now.
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A crash loop across the cluster: 20 times a random node is killed (kill -9) at a random
/// moment under submissions (request ids, some repeated) and cancels, then started again
/// under its name. No acknowledged operation is lost (each ends), a repeated request id
/// always answers the same operation, no result changes once seen, and no operation ever
/// ran in two places at once (each process's log says when its workers ran). Replay a run
/// with OPRUN_CRASH_SEED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_across_the_cluster_loses_nothing() {
    let seed = std::env::var("OPRUN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash loop seed: OPRUN_CRASH_SEED={seed}");
    let mut rng = Lcg(seed);
    let db = TestDatabase::create("cluster_crash").await;
    let mut nodes = cluster(&db).await;
    let mut acknowledged: Vec<String> = Vec::new();
    let mut by_request: std::collections::HashMap<String, String> = Default::default();
    let mut seen: std::collections::HashMap<String, (bool, i32, Option<String>)> =
        Default::default();
    let mut all_runs = Vec::new();
    for round in 0..20 {
        for i in 0..6 {
            // One submission in three repeats an earlier request id.
            let request_id = if i % 3 == 2 && round > 0 {
                format!("r{}-{}", rng.next(round), rng.next(6))
            } else {
                format!("r{round}-{i}")
            };
            let node = &nodes[rng.next(3) as usize];
            let submitted = TaskServiceClient::new(node.channel.clone())
                .submit_task(SubmitTaskRequest {
                    kind: "sleep".into(),
                    input: Some(sleep_input(rng.next(400), 2, "")),
                    request_id: request_id.clone(),
                    ..Default::default()
                })
                .await;
            // A node just killed (or not yet ready) refuses; nothing was acknowledged then.
            let Ok(op) = submitted else { continue };
            let name = op.into_inner().name;
            match by_request.get(&request_id) {
                Some(earlier) => assert_eq!(earlier, &name, "request id {request_id}"),
                None => {
                    by_request.insert(request_id, name.clone());
                    acknowledged.push(name);
                }
            }
        }
        if !acknowledged.is_empty() {
            let name = acknowledged[rng.next(acknowledged.len() as u64) as usize].clone();
            let _ = nodes[rng.next(3) as usize]
                .ops()
                .cancel_operation(CancelOperationRequest { name })
                .await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next(300))).await;
        let victim = rng.next(3) as usize;
        let id = nodes[victim].id.clone();
        nodes[victim].server.child.kill().unwrap();
        nodes[victim].server.child.wait().unwrap();
        let killed = now_micros();
        let process = format!("{id} (process {round})");
        all_runs.extend(runs(&nodes[victim].server.log_text(), &process, killed));
        nodes[victim] = Node::start(&db, &id).await;
        // Results seen so far stay as they were.
        for name in &acknowledged {
            let Ok(op) = nodes[0]
                .ops()
                .get_operation(GetOperationRequest { name: name.clone() })
                .await
            else {
                continue;
            };
            let now = outcome(&op.into_inner());
            if let Some(before) = seen.get(name) {
                assert_eq!(&now, before, "{name} changed after it was done");
            } else if now.0 {
                seen.insert(name.clone(), now);
            }
        }
    }
    for name in &acknowledged {
        let op = nodes[1].wait(name, 60).await;
        assert!(op.done, "{name} never ended: {op:?}");
        if let Some(before) = seen.get(name) {
            assert_eq!(&outcome(&op), before, "{name} changed after it was done");
        }
    }
    // Every run of an operation ended before the next began, wherever each ran.
    for node in &nodes {
        all_runs.extend(runs(&node.server.log_text(), &node.id, now_micros()));
    }
    all_runs.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    for pair in all_runs.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        if earlier.0 == later.0 {
            assert!(
                later.2 >= earlier.3,
                "{} ran on {} (from {} to {} µs) and on {} (from {} µs) at once",
                earlier.0,
                earlier.1,
                earlier.2,
                earlier.3,
                later.1,
                later.2
            );
        }
    }
    let reruns = all_runs.len() - {
        let mut names: Vec<&String> = all_runs.iter().map(|r| &r.0).collect();
        names.dedup();
        names.len()
    };
    eprintln!(
        "crash loop: 20 kills, {} acknowledged operations, all ended; {} runs, {reruns} of \
         them a later attempt, never two at once",
        acknowledged.len(),
        all_runs.len()
    );
}

/// Issue 21, item 7: a node on PostgreSQL keeps nothing on local disk: it makes no
/// `./oprun-data` and does not log a data directory, and its log has no PostgreSQL NOTICE
/// ("relation oprun_schema already exists") when the schema is there already.
#[tokio::test]
async fn a_postgres_node_makes_no_data_directory_and_logs_no_notices() {
    let db = TestDatabase::create("cluster_no_data_dir").await;
    let url = db.url();
    // The second start finds the schema made by the first.
    for start in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut cmd = oprun();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", &url])
            .current_dir(dir.path());
        let (mut child, _) = common::binary::spawn_serve(cmd, &log);
        let pid = child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "start {start}: {status}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !dir.path().join("oprun-data").exists(),
            "start {start} made ./oprun-data:\n{text}"
        );
        assert!(!text.contains("data_dir"), "start {start}:\n{text}");
        assert!(!text.contains("NOTICE"), "start {start}:\n{text}");
        assert!(text.contains("listening"), "start {start}:\n{text}");
    }
}
