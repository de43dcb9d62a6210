//! The real `oprun` binary killed with SIGKILL at random moments, over and over, while clients
//! submit, resubmit, read and cancel: nothing it acknowledged is lost, everything ends, a
//! finished result never changes, and nothing runs more often than its retry policy allows
//! (plus the re-runs a crash causes for a retry-safe kind).
//!
//! The choices (what to submit, when to kill) come from a xorshift generator whose seed is
//! printed; `OPRUN_CRASH_SEED=<seed>` replays the same choices (timing still varies).

mod common;

use common::binary::{oprun, spawn_serve, tail};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    operation, CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
    WaitOperationRequest,
};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{OperationMetadata, SleepInput, SleepOutput, SubmitTaskRequest};
use prost::Message;
use tonic::transport::Channel;

/// Kill-and-restart rounds (each ends with a SIGKILL).
const ROUNDS: usize = 24;
/// Concurrent clients in each round.
const CLIENTS: usize = 3;
/// Each round lives this long (in ms, chosen at random in the range) before its SIGKILL.
const ROUND_MS: (u64, u64) = (100, 600);
/// Pause between two actions of one client, in ms (chosen at random in the range).
const PAUSE_MS: (u64, u64) = (10, 40);
/// Attempts the `sleep` kind's retry policy allows.
const SLEEP_MAX_ATTEMPTS: u32 = 5;
/// Deadline of every RPC, so a call caught by a kill cannot hang.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final server may take to finish everything that is left.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// `oprun serve` running as a child process. Dropping it kills the process (and, when the
/// test is failing, prints the tail of its log).
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `oprun serve --max-running 8` on a free loopback port over `data_dir` and waits
    /// for its listening line.
    fn start(data_dir: &Path, log_name: &str) -> Self {
        let log = data_dir
            .parent()
            .expect("data dir has a parent")
            .join(log_name);
        let mut cmd = oprun();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--max-running", "8"])
            .arg("--data-dir")
            .arg(data_dir);
        let (child, addr) = spawn_serve(cmd, &log);
        Self { child, addr, log }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .timeout(RPC_TIMEOUT)
            .connect()
            .await
            .expect("connect")
    }

    /// SIGKILL: no graceful shutdown of any kind.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "{status:?}");
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

/// xorshift64*: small, seedable, good enough to choose test actions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds start far apart and 0 is fine.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `percent`%.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What a submission asked for, and so how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Succeeds.
    Succeed,
    /// The first `n` attempts fail with UNAVAILABLE; then it succeeds.
    FailAttempts(u32),
    /// Fails for good with code UNKNOWN and a message.
    FailMessage,
    /// A 300 ms sleep with a 50 ms timeout: ends DEADLINE_EXCEEDED.
    Timeout,
}

/// One submission the test may send (again, when it carries a request_id).
#[derive(Debug, Clone)]
struct Spec {
    plan: Plan,
    ms: u64,
    steps: u32,
    fail_message: String,
    request_id: String,
}

impl Spec {
    fn random(rng: &mut Rng, serial: u64) -> Self {
        let (plan, ms) = match rng.next() % 10 {
            0 | 1 => (
                Plan::FailAttempts(rng.range(1, 2) as u32),
                rng.range(0, 300),
            ),
            2 => (Plan::FailMessage, rng.range(0, 300)),
            3 => (Plan::Timeout, 300),
            _ => (Plan::Succeed, rng.range(0, 300)),
        };
        let fail_message = if plan == Plan::FailMessage {
            format!("planned failure {serial}")
        } else {
            String::new()
        };
        let request_id = if rng.chance(30) {
            format!("crash-loop-{serial}")
        } else {
            String::new()
        };
        Self {
            plan,
            ms,
            steps: rng.range(1, 5) as u32,
            fail_message,
            request_id,
        }
    }

    fn request(&self) -> SubmitTaskRequest {
        let input = SleepInput {
            duration: Some(prost_types::Duration {
                seconds: 0,
                nanos: i32::try_from(self.ms * 1_000_000).expect("under a second"),
            }),
            steps: self.steps,
            fail_message: self.fail_message.clone(),
            fail_attempts: match self.plan {
                Plan::FailAttempts(n) => n,
                _ => 0,
            },
        };
        SubmitTaskRequest {
            kind: "sleep".into(),
            input: Some(prost_types::Any {
                type_url: "type.googleapis.com/oprun.v1.SleepInput".into(),
                value: input.encode_to_vec(),
            }),
            request_id: self.request_id.clone(),
            timeout: (self.plan == Plan::Timeout).then_some(prost_types::Duration {
                seconds: 0,
                nanos: 50_000_000,
            }),
            ..Default::default()
        }
    }
}

/// What the test knows about one acknowledged operation.
#[derive(Debug)]
struct Known {
    spec: Spec,
    /// The round of the first attempt to submit it (a request_id may be acknowledged later).
    round: usize,
    /// Whether a CancelOperation was sent (whether or not it was answered).
    cancel_sent: bool,
    /// The encoded `result` the first time it was seen done.
    result: Option<Vec<u8>>,
}

/// Everything the clients learned, over all rounds.
#[derive(Default)]
struct Ledger {
    ops: HashMap<String, Known>,
    /// Acknowledged names in the order acknowledged (for picking one at random).
    names: Vec<String>,
    /// Submissions with a request_id: the spec, the round first tried, and the name once
    /// acknowledged.
    by_request_id: Vec<(Spec, usize, Option<String>)>,
    /// Problems seen while the server was up (reported at the end, all at once).
    violations: Vec<String>,
    resubmits_matched: usize,
    serial: u64,
}

impl Ledger {
    /// Records an acknowledgement of `spec` (first tried in `round`) as `name`.
    fn acknowledged(&mut self, spec: &Spec, round: usize, name: &str) {
        if !spec.request_id.is_empty() {
            let entry = self
                .by_request_id
                .iter_mut()
                .find(|(s, _, _)| s.request_id == spec.request_id)
                .expect("request ids are recorded before they are sent");
            match &entry.2 {
                Some(first) if first != name => self.violations.push(format!(
                    "request_id {} answered {name} after {first}",
                    spec.request_id
                )),
                Some(_) => self.resubmits_matched += 1,
                None => entry.2 = Some(name.to_owned()),
            }
        }
        if !self.ops.contains_key(name) {
            self.ops.insert(
                name.to_owned(),
                Known {
                    spec: spec.clone(),
                    round,
                    cancel_sent: false,
                    result: None,
                },
            );
            self.names.push(name.to_owned());
        }
    }

    /// Checks an observed state of an acknowledged operation against what was seen before: a
    /// done operation stays done with the same result.
    fn observed(&mut self, op: &Operation, when: &str) {
        let Some(known) = self.ops.get_mut(&op.name) else {
            return;
        };
        match (&known.result, op.done) {
            (Some(_), false) => self.violations.push(format!(
                "{} was done and is not done any more ({when})",
                op.name
            )),
            (Some(first), true) if *first != encoded_result(op) => self.violations.push(format!(
                "{}: result changed ({when}):\nfirst: {:?}\nnow: {:?}",
                op.name,
                Operation::decode(first.as_slice())
                    .map(|o| o.result)
                    .unwrap_or_default(),
                op.result
            )),
            (None, true) => known.result = Some(encoded_result(op)),
            _ => {}
        }
    }
}

/// The `result` oneof of an operation, encoded on its own.
fn encoded_result(op: &Operation) -> Vec<u8> {
    Operation {
        result: op.result.clone(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn metadata(op: &Operation) -> OperationMetadata {
    let any = op.metadata.as_ref().expect("every operation has metadata");
    OperationMetadata::decode(any.value.as_slice()).expect("decode OperationMetadata")
}

fn random_name(ledger: &Mutex<Ledger>, rng: &mut Rng) -> Option<String> {
    let l = ledger.lock().expect("ledger");
    if l.names.is_empty() {
        return None;
    }
    Some(l.names[(rng.next() % l.names.len() as u64) as usize].clone())
}

/// One client of one round: submits new work, resubmits earlier request_ids, cancels and
/// reads, until the server is being killed. An error counts as a violation only when the
/// server was not being killed (`killing` not yet set when the error arrived).
async fn client(
    channel: Channel,
    ledger: Arc<Mutex<Ledger>>,
    round: usize,
    mut rng: Rng,
    killing: Arc<AtomicBool>,
) {
    let mut tasks = TaskServiceClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel);
    // Bounded: a round lives at most ROUND_MS.1 ms and each action pauses at least
    // PAUSE_MS.0 ms.
    for _ in 0..1_000 {
        if killing.load(Ordering::SeqCst) {
            return;
        }
        let roll = rng.next() % 100;
        let (what, result) = match (roll, random_name(&ledger, &mut rng)) {
            // A new submission (always the first thing to do).
            (0..45, _) | (_, None) => {
                let spec = {
                    let mut l = ledger.lock().expect("ledger");
                    l.serial += 1;
                    let spec = Spec::random(&mut rng, l.serial);
                    if !spec.request_id.is_empty() {
                        l.by_request_id.push((spec.clone(), round, None));
                    }
                    spec
                };
                let answer = tasks.submit_task(spec.request()).await;
                if let Ok(op) = &answer {
                    let mut l = ledger.lock().expect("ledger");
                    l.acknowledged(&spec, round, &op.get_ref().name);
                    l.observed(op.get_ref(), "SubmitTask");
                }
                ("SubmitTask", answer.map(drop))
            }
            // The same request again, with its request_id: the same operation comes back.
            (45..60, Some(_)) => {
                let earlier = {
                    let l = ledger.lock().expect("ledger");
                    let n = l.by_request_id.len() as u64;
                    (n > 0).then(|| l.by_request_id[(rng.next() % n) as usize].clone())
                };
                match earlier {
                    Some((spec, first_round, _)) => {
                        let answer = tasks.submit_task(spec.request()).await;
                        if let Ok(op) = &answer {
                            let mut l = ledger.lock().expect("ledger");
                            l.acknowledged(&spec, first_round, &op.get_ref().name);
                            l.observed(op.get_ref(), "SubmitTask again");
                        }
                        ("SubmitTask again", answer.map(drop))
                    }
                    None => ("nothing to repeat yet", Ok(())),
                }
            }
            (60..75, Some(name)) => {
                if let Some(k) = ledger.lock().expect("ledger").ops.get_mut(&name) {
                    k.cancel_sent = true;
                }
                let answer = ops
                    .cancel_operation(CancelOperationRequest { name: name.clone() })
                    .await;
                ("CancelOperation", answer.map(drop))
            }
            (_, Some(name)) => {
                let answer = ops
                    .get_operation(GetOperationRequest { name: name.clone() })
                    .await;
                if let Ok(op) = &answer {
                    ledger
                        .lock()
                        .expect("ledger")
                        .observed(op.get_ref(), "GetOperation");
                }
                ("GetOperation", answer.map(drop))
            }
        };
        if let Err(status) = result {
            if killing.load(Ordering::SeqCst) {
                // The kill window: transport errors are expected; only acknowledged
                // submissions count.
                return;
            }
            ledger.lock().expect("ledger").violations.push(format!(
                "round {round}: {what} failed while the server was up: {:?}: {}",
                status.code(),
                status.message()
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(PAUSE_MS.0, PAUSE_MS.1))).await;
    }
}

/// Waits (WaitOperation, 5 s at a time) until `name` is done or `deadline` passes.
async fn wait_done(
    ops: &mut OperationsClient<Channel>,
    name: &str,
    deadline: Instant,
) -> Result<Operation, String> {
    loop {
        let op = ops
            .wait_operation(WaitOperationRequest {
                name: name.into(),
                timeout: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
            })
            .await
            .map_err(|s| format!("{name}: WaitOperation: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        if op.done || Instant::now() >= deadline {
            return Ok(op);
        }
    }
}

/// What is wrong with the final state of an acknowledged operation, if anything; counts it
/// in `tally` by how it ended.
fn check_final(
    op: &Operation,
    known: &Known,
    kills_spanned: u32,
    tally: &mut Tally,
) -> Option<String> {
    let name = &op.name;
    if !op.done {
        return Some(format!("{name} is not done ({:?})", known.spec));
    }
    let m = metadata(op);
    let state = State::try_from(m.state).unwrap_or(State::Unspecified);
    tally.max_attempt = tally.max_attempt.max(m.attempt);
    // Attempts beyond the ones the plan needs are re-runs after a crash. (A cancelled
    // operation that was to fail some attempts may have had those retries: not counted.)
    let planned = match known.spec.plan {
        Plan::FailAttempts(n) if op_succeeded(op) => Some(n + 1),
        Plan::FailAttempts(_) => None,
        _ => Some(1),
    };
    tally.reruns += planned.map_or(0, |p| m.attempt.saturating_sub(p));
    let allowed = SLEEP_MAX_ATTEMPTS + kills_spanned;
    if m.attempt < 1 || m.attempt > allowed {
        return Some(format!(
            "{name} ran {} attempts; at most {allowed} are allowed ({SLEEP_MAX_ATTEMPTS} by the \
             retry policy + {kills_spanned} crash re-runs): {:?}",
            m.attempt, known.spec
        ));
    }
    match &op.result {
        None => Some(format!("{name} is done with neither error nor response")),
        Some(operation::Result::Response(any)) => {
            tally.succeeded += 1;
            let out = SleepOutput::decode(any.value.as_slice()).ok()?;
            if state != State::Succeeded {
                return Some(format!("{name} has a response but state {state:?}"));
            }
            match known.spec.plan {
                Plan::FailMessage | Plan::Timeout => Some(format!(
                    "{name} succeeded though it was planned to fail: {:?}",
                    known.spec
                )),
                Plan::FailAttempts(n) if m.attempt < n + 1 => Some(format!(
                    "{name} succeeded on attempt {} though its first {n} attempts fail",
                    m.attempt
                )),
                _ if out.steps_done != known.spec.steps => Some(format!(
                    "{name}: steps_done {} for {} steps",
                    out.steps_done, known.spec.steps
                )),
                _ => None,
            }
        }
        Some(operation::Result::Error(status)) if status.code == 1 => {
            tally.cancelled += 1;
            if !known.cancel_sent {
                Some(format!("{name} ended CANCELLED but no client cancelled it"))
            } else if !m.requested_cancellation {
                Some(format!(
                    "{name} ended CANCELLED without requested_cancellation"
                ))
            } else if state != State::Cancelled {
                Some(format!("{name} ended with code 1 but state {state:?}"))
            } else {
                None
            }
        }
        Some(operation::Result::Error(status)) => {
            if state != State::Failed {
                return Some(format!(
                    "{name} ended with code {} but state {state:?}",
                    status.code
                ));
            }
            match known.spec.plan {
                Plan::FailMessage => {
                    tally.failed += 1;
                    (status.code != 2 || !status.message.starts_with(&known.spec.fail_message))
                        .then(|| {
                            format!(
                                "{name} should fail with code 2 (UNKNOWN) and {:?}, got {}: {:?}",
                                known.spec.fail_message, status.code, status.message
                            )
                        })
                }
                Plan::Timeout => {
                    tally.deadline += 1;
                    (status.code != 4).then(|| {
                        format!(
                            "{name} should end DEADLINE_EXCEEDED (4), got {}: {:?}",
                            status.code, status.message
                        )
                    })
                }
                Plan::Succeed | Plan::FailAttempts(_) => Some(format!(
                    "{name} failed though it was planned to succeed: {}: {:?} ({:?}, attempt {})",
                    status.code, status.message, known.spec, m.attempt
                )),
            }
        }
    }
}

fn op_succeeded(op: &Operation) -> bool {
    matches!(op.result, Some(operation::Result::Response(_)))
}

/// How the acknowledged operations ended.
#[derive(Default)]
struct Tally {
    /// Attempts beyond those the plan called for, over all operations.
    reruns: u32,
    succeeded: usize,
    failed: usize,
    cancelled: usize,
    deadline: usize,
    max_attempt: u32,
}

/// Under a steady stream of submissions (sleeps of 0–300 ms in 1–5 steps; some failing their
/// first 1–2 attempts and retried, some failing for good with a message, some with a 50 ms
/// timeout on a 300 ms sleep, some carrying a request_id that is sent again) and cancels, the
/// binary is SIGKILLed at a random moment 100–600 ms into each of 24 rounds and restarted on
/// the same data directory. A final server then shows that:
/// - every operation SubmitTask acknowledged exists and ends done, with exactly one of error
///   and response, as planned: a response (after at least `fail_attempts` + 1 attempts when
///   some were to fail), UNKNOWN with the planned message, DEADLINE_EXCEEDED for the timeout,
///   or CANCELLED (only if a client cancelled it, with `requested_cancellation` set);
/// - a result once seen never changes, and a done operation never becomes not done, across
///   any number of restarts;
/// - a repeated request_id always returns the same operation;
/// - `attempt` stays within the retry policy (5 for sleep) plus one for each crash the
///   operation could have spanned (the restarts since its submission), because a retry-safe
///   kind interrupted by a crash is run again as the next attempt;
/// - nothing is left unfinished, not even a submission caught by a kill before it was
///   acknowledged.
///
/// Transport errors while a server is being killed are expected; only acknowledged
/// submissions count. Any other error while a server is up fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_sigkill_loop() {
    let seed = std::env::var("OPRUN_CRASH_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as u64
        });
    println!("crash_loop seed {seed} (replay with OPRUN_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();

    for round in 0..ROUNDS {
        let mut server = Server::start(&data, &format!("round-{round}.log"));
        let killing = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            clients.push(tokio::spawn(client(
                server.channel().await,
                Arc::clone(&ledger),
                round,
                Rng::new(seed ^ ((round * CLIENTS + c + 1) as u64).wrapping_mul(0x9e37)),
                Arc::clone(&killing),
            )));
        }
        tokio::time::sleep(Duration::from_millis(rng.range(ROUND_MS.0, ROUND_MS.1))).await;
        killing.store(true, Ordering::SeqCst);
        server.kill9();
        for c in clients {
            tokio::time::timeout(RPC_TIMEOUT * 2, c)
                .await
                .expect("a client stops within its RPC timeout of the kill")
                .expect("client task");
        }
        let l = ledger.lock().expect("ledger");
        assert!(
            l.violations.is_empty(),
            "seed {seed}, round {round}:\n{}",
            l.violations.join("\n")
        );
    }

    let server = Server::start(&data, "final.log");
    let mut ops = OperationsClient::new(server.channel().await);
    let names: Vec<String> = ledger.lock().expect("ledger").names.clone();
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut tally = Tally::default();
    let mut problems = Vec::new();
    for name in &names {
        let op = match wait_done(&mut ops, name, deadline).await {
            Ok(op) => op,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let mut l = ledger.lock().expect("ledger");
        l.observed(&op, "final WaitOperation");
        let known = &l.ops[name];
        // Servers were started in rounds known.round..ROUNDS and then the final one: each
        // restart after the submission followed a kill the operation may have spanned.
        let kills_spanned = u32::try_from(ROUNDS - known.round).expect("few rounds");
        if let Some(problem) = check_final(&op, known, kills_spanned, &mut tally) {
            problems.push(problem);
        }
    }
    // Submissions caught by a kill before they were acknowledged may exist too: they must
    // end as well.
    let unfinished = || ListOperationsRequest {
        name: "operations".into(),
        filter: "done = false".into(),
        page_size: 1_000,
        ..Default::default()
    };
    let left = ops
        .list_operations(unfinished())
        .await
        .expect("list unfinished")
        .into_inner();
    for op in &left.operations {
        if let Err(e) = wait_done(&mut ops, &op.name, deadline).await {
            problems.push(e);
        }
    }
    let left = ops
        .list_operations(unfinished())
        .await
        .expect("list unfinished")
        .into_inner();
    for op in &left.operations {
        problems.push(format!("{} is still not done at the end", op.name));
    }
    let l = ledger.lock().expect("ledger");
    problems.extend(l.violations.iter().cloned());

    println!(
        "crash_loop: seed {seed}: {ROUNDS} rounds ({ROUNDS} SIGKILLs) in {:.1}s; {} \
         acknowledged ({} request_id repeats returned the same operation); {} succeeded, {} \
         failed, {} cancelled, {} deadline exceeded; max attempt {}, {} attempts beyond plan \
         (crash re-runs)",
        started.elapsed().as_secs_f64(),
        names.len(),
        l.resubmits_matched,
        tally.succeeded,
        tally.failed,
        tally.cancelled,
        tally.deadline,
        tally.max_attempt,
        tally.reruns
    );
    assert!(
        problems.is_empty(),
        "seed {seed} (replay with OPRUN_CRASH_SEED={seed}): {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        names.len() >= ROUNDS,
        "too few acknowledged submissions ({}) to mean anything",
        names.len()
    );
}
