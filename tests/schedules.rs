//! Issue 22, schedules: real `oprun serve` processes (the embedded store, and PostgreSQL for
//! the cluster) and real clients, over gRPC and REST.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use common::binary::BinServer;
use common::http::request;
use common::{metadata, sleep_input};
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::Operation;
use oprun::proto::oprun::v1::schedule::OverlapPolicy;
use oprun::proto::oprun::v1::schedule_service_client::ScheduleServiceClient;
use oprun::proto::oprun::v1::{
    CreateScheduleRequest, GetScheduleRequest, PauseScheduleRequest, ResumeScheduleRequest,
    Schedule, ScheduleTask, TriggerScheduleRequest, UpdateScheduleRequest,
};
use oprun::store::postgres::testing::TestDatabase;
use tonic::transport::Channel;

/// A schedule every `every` of `sleep` for `ms`, with `policy`.
fn every(seconds: i64, ms: u64, policy: OverlapPolicy) -> Schedule {
    Schedule {
        task: Some(ScheduleTask {
            kind: "sleep".into(),
            input: Some(sleep_input(ms, 1, "")),
            ..Default::default()
        }),
        interval: Some(prost_types::Duration { seconds, nanos: 0 }),
        overlap_policy: policy as i32,
        ..Default::default()
    }
}

async fn create(channel: &Channel, id: &str, schedule: Schedule) -> Schedule {
    ScheduleServiceClient::new(channel.clone())
        .create_schedule(CreateScheduleRequest {
            schedule_id: id.into(),
            schedule: Some(schedule),
        })
        .await
        .expect("create")
        .into_inner()
}

async fn get(channel: &Channel, name: &str) -> Schedule {
    ScheduleServiceClient::new(channel.clone())
        .get_schedule(GetScheduleRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner()
}

async fn pause(channel: &Channel, name: &str) -> Schedule {
    ScheduleServiceClient::new(channel.clone())
        .pause_schedule(PauseScheduleRequest {
            name: name.into(),
            note: "stop for the count".into(),
        })
        .await
        .expect("pause")
        .into_inner()
}

/// Every operation the schedule started, oldest first.
async fn runs(channel: &Channel, schedule: &str) -> Vec<Operation> {
    common::list_all(channel, &format!("schedule = \"{schedule}\"")).await
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(t.expect("a time")).expect("a valid time")
}

/// The fire time of each run, checked to name the schedule.
fn fire_times(schedule: &str, ops: &[Operation]) -> Vec<SystemTime> {
    ops.iter()
        .map(|op| {
            let meta = metadata(op);
            assert_eq!(meta.schedule, schedule, "{} names its schedule", op.name);
            time(meta.fire_time)
        })
        .collect()
}

/// Waits until the schedule started `n` operations (30 s at most).
async fn wait_runs(channel: &Channel, schedule: &str, n: usize) -> Vec<Operation> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ops = runs(channel, schedule).await;
        if ops.len() >= n {
            return ops;
        }
        assert!(
            Instant::now() < deadline,
            "{schedule} started {} of {n} runs in 30 s",
            ops.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An every-second schedule on two PostgreSQL nodes for 20 s, one of them killed with -9 at
/// 7 s and restarted at 12 s: exactly one operation per fire time, none missing, none
/// doubled, every one a second after the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fire_runs_once_on_two_postgres_nodes_through_a_kill() {
    let db = TestDatabase::create("schedules_two_nodes").await;
    let url = db.url();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize| {
        let id = format!("node-{i}");
        BinServer::start_with(
            dirs[i].path(),
            "127.0.0.1:0",
            &["--store", &url, "--node-id", &id],
            &[],
        )
    };
    let mut a = start(0);
    let b = start(1);
    let channel = b.channel().await;
    let created = create(&channel, "tick", every(1, 10, OverlapPolicy::Allow)).await;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    a.child.kill().expect("kill -9");
    a.child.wait().expect("reaped");
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(a);
    let _a = start(0);
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(began.elapsed())).await;
    pause(&channel, &created.name).await;
    // A fire decided before the pause starts within a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ops = runs(&channel, &created.name).await;
    let mut fires = fire_times(&created.name, &ops);
    fires.sort();
    assert!(fires.len() >= 18, "{} runs in 20 s", fires.len());
    for pair in fires.windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]).unwrap(),
            Duration::from_secs(1),
            "consecutive fires are one second apart: none missing, none doubled ({fires:?})"
        );
    }
    let created_at = time(created.create_time);
    assert_eq!(
        fires[0]
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
        0,
        "an interval's fires fall on whole seconds"
    );
    assert!(
        fires[0] > created_at && fires[0] <= created_at + Duration::from_secs(1),
        "the first fire is the first whole second after creation"
    );
    let shown = get(&channel, &created.name).await;
    assert_eq!(shown.started_runs, i64::try_from(fires.len()).unwrap());
    assert_eq!(
        shown.skipped_runs, 0,
        "no fire was missed while a node was up"
    );
    assert!(shown.paused);
    assert_eq!(shown.recent_runs.len(), 10);
    assert_eq!(
        shown.recent_runs[0].fire_time,
        fires.last().copied().map(Into::into)
    );
}

/// Pausing stops the fires within a second; resuming starts them again from the next fire
/// time (the ones meanwhile never run); the schedule shows each state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_firing_within_a_second_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    let s = create(&channel, "beat", every(1, 10, OverlapPolicy::Allow)).await;
    wait_runs(&channel, &s.name, 2).await;
    let paused = pause(&channel, &s.name).await;
    let paused_at = SystemTime::now();
    assert!(paused.paused);
    assert_eq!(paused.next_run_time, None, "no next run while paused");
    assert_eq!(paused.note, "stop for the count");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = runs(&channel, &s.name).await;
    let late: Vec<_> = fire_times(&s.name, &during)
        .into_iter()
        .filter(|fire| *fire > paused_at + Duration::from_secs(1))
        .collect();
    assert!(
        late.is_empty(),
        "fires more than a second after the pause: {late:?}"
    );
    let resumed = ScheduleServiceClient::new(channel.clone())
        .resume_schedule(ResumeScheduleRequest {
            name: s.name.clone(),
            note: String::new(),
        })
        .await
        .expect("resume")
        .into_inner();
    let resumed_at = SystemTime::now();
    assert!(!resumed.paused);
    assert_eq!(
        resumed.note, "",
        "resuming without a note clears the pause's"
    );
    assert!(time(resumed.next_run_time) > resumed_at - Duration::from_millis(100));
    let after = wait_runs(&channel, &s.name, during.len() + 2).await;
    let fires = fire_times(&s.name, &after);
    assert!(
        fires[during.len()..]
            .iter()
            .all(|fire| *fire > resumed_at - Duration::from_millis(100)),
        "after resuming, only fires after it run: {fires:?}"
    );
    assert_eq!(
        get(&channel, &s.name).await.skipped_runs,
        0,
        "a pause skips nothing"
    );
}

/// SKIP never starts a run while the previous one runs: a run of 2.5 s every second leaves
/// the runs' [start, end] intervals disjoint, and the fires in between are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_never_overlaps_a_slow_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    let s = create(&channel, "slow", every(1, 2500, OverlapPolicy::Skip)).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    pause(&channel, &s.name).await;
    let ops = wait_runs(&channel, &s.name, 2).await;
    let mut spans = Vec::new();
    for op in &ops {
        let done = common::wait_done(&mut OperationsClient::new(channel.clone()), &op.name).await;
        let meta = metadata(&done);
        spans.push((time(meta.start_time), time(meta.end_time)));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "runs overlap: {pair:?}");
    }
    let shown = get(&channel, &s.name).await;
    assert!(ops.len() <= 4, "{} runs of 2.5 s in 9 s", ops.len());
    assert!(shown.skipped_runs >= 4, "skipped {}", shown.skipped_runs);
    let metrics = request(server.addr, "GET", "/metrics", &[], None)
        .await
        .body;
    let counted = |line: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {line} in:\n{metrics}"))
    };
    assert_eq!(
        counted("oprun_schedule_fires_total{result=\"skipped\"}"),
        f64::from(u32::try_from(shown.skipped_runs).unwrap()),
        "every skipped fire is counted"
    );
    assert_eq!(
        counted("oprun_schedule_fires_total{result=\"started\"}"),
        f64::from(u32::try_from(shown.started_runs).unwrap())
    );
    assert!(metrics.contains("oprun_schedule_fire_delay_seconds_count"));
}

/// CANCEL_PREVIOUS cancels the run still going when the next fire comes: each run but the
/// last ends CANCELLED (code 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_previous_cancels_the_run_still_going() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    let s = create(
        &channel,
        "replace",
        every(1, 60_000, OverlapPolicy::CancelPrevious),
    )
    .await;
    let ops = wait_runs(&channel, &s.name, 3).await;
    pause(&channel, &s.name).await;
    let first = common::wait_done(&mut OperationsClient::new(channel.clone()), &ops[0].name).await;
    assert_eq!(
        common::error_code(&first),
        Some(1),
        "the previous run was cancelled"
    );
}

/// Every node down for 10 s: once one is back, the fires missed within the catch-up window
/// run once (the latest of them), the others are skipped and counted, and the schedule goes
/// on at its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_after_an_outage_of_every_node_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    // ALLOW: a run the kill interrupted is run again at the restart, and under SKIP it would
    // (rightly) make the catch-up fire skip.
    let s = create(&channel, "catchup", every(1, 10, OverlapPolicy::Allow)).await;
    let before = wait_runs(&channel, &s.name, 2).await.len();
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reaped");
    let down = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(server);
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let up = SystemTime::now();
    let channel = server.channel().await;
    let ops = wait_runs(&channel, &s.name, before + 3).await;
    let fires = fire_times(&s.name, &ops);
    let missed: Vec<_> = fires
        .iter()
        .filter(|fire| **fire > down && **fire < up)
        .collect();
    assert_eq!(missed.len(), 1, "one run for the outage: {fires:?}");
    let shown = get(&channel, &s.name).await;
    assert!(
        (8..=12).contains(&shown.skipped_runs),
        "about ten fires skipped, {} counted",
        shown.skipped_runs
    );
    let mut by_fire = BTreeMap::new();
    for fire in &fires {
        *by_fire.entry(*fire).or_insert(0) += 1;
    }
    assert!(
        by_fire.values().all(|n| *n == 1),
        "no fire ran twice: {by_fire:?}"
    );
}

/// Bad schedules are refused with INVALID_ARGUMENT naming the field (the cron field at
/// fault in the message), over gRPC and REST; names and ids get NOT_FOUND and
/// ALREADY_EXISTS; TriggerSchedule runs one now, paused or not, by its request id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_by_field_and_trigger_runs_now() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    let mut api = ScheduleServiceClient::new(channel.clone());
    let cron = |spec: &str, zone: &str| Schedule {
        cron: spec.into(),
        time_zone: zone.into(),
        interval: None,
        ..every(1, 10, OverlapPolicy::Skip)
    };
    let unknown_kind = Schedule {
        task: Some(ScheduleTask {
            kind: "nope".into(),
            input: Some(sleep_input(1, 1, "")),
            ..Default::default()
        }),
        ..every(60, 1, OverlapPolicy::Skip)
    };
    for (id, schedule, field, words) in [
        (
            "a",
            cron("0 25 * * *", ""),
            "schedule.cron",
            "hour field \"25\"",
        ),
        ("a", cron("* * *", ""), "schedule.cron", "needs 5"),
        (
            "a",
            cron("0 3 * * *", "Mars/Base"),
            "schedule.time_zone",
            "Mars/Base",
        ),
        (
            "a",
            every(0, 1, OverlapPolicy::Skip),
            "schedule.interval",
            "at least 1 s",
        ),
        (
            "a",
            every(300_000_000_000, 1, OverlapPolicy::Skip),
            "schedule.interval",
            "at most 366 days",
        ),
        ("a", unknown_kind, "schedule.task.kind", "unknown kind"),
        (
            "Bad_Id",
            every(1, 1, OverlapPolicy::Skip),
            "schedule_id",
            "lowercase",
        ),
    ] {
        let status = api
            .create_schedule(CreateScheduleRequest {
                schedule_id: id.into(),
                schedule: Some(schedule),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(words),
            "{field}: {}",
            status.message()
        );
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violation = &details
            .bad_request()
            .expect("a BadRequest")
            .field_violations[0];
        assert_eq!(violation.field, field);
    }
    let reply = request(
        server.addr,
        "POST",
        "/v1/schedules?scheduleId=night",
        &[("content-type", "application/json")],
        Some(r#"{"task":{"kind":"sleep","input":{"@type":"type.googleapis.com/oprun.v1.SleepInput"}},"cron":"0 3 * * * *"}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["name"], "schedules/night");
    let reply = request(
        server.addr,
        "POST",
        "/v1/schedules?scheduleId=nightly",
        &[("content-type", "application/json")],
        Some(r#"{"task":{"kind":"sleep","input":{"@type":"type.googleapis.com/oprun.v1.SleepInput"}},"cron":"0 3 31 2 *"}"#),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("day-of-month"), "{}", reply.body);
    let again = api
        .create_schedule(CreateScheduleRequest {
            schedule_id: "night".into(),
            schedule: Some(every(1, 1, OverlapPolicy::Skip)),
        })
        .await
        .expect_err("taken");
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    let missing = api
        .get_schedule(GetScheduleRequest {
            name: "schedules/none".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let malformed = api
        .get_schedule(GetScheduleRequest {
            name: "operations/x".into(),
        })
        .await
        .expect_err("malformed");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    // Paused, it still runs when triggered; a repeated request id answers the same run.
    let reply = request(
        server.addr,
        "POST",
        "/v1/schedules/night:pause",
        &[("content-type", "application/json")],
        Some("{}"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let trigger = || TriggerScheduleRequest {
        name: "schedules/night".into(),
        request_id: "3c2c1d0e-0000-4000-8000-000000000001".into(),
    };
    let op = api
        .trigger_schedule(trigger())
        .await
        .expect("trigger")
        .into_inner();
    let same = api
        .trigger_schedule(trigger())
        .await
        .expect("trigger")
        .into_inner();
    assert_eq!(op.name, same.name);
    assert_eq!(metadata(&op).schedule, "schedules/night");
    let shown = get(&channel, "schedules/night").await;
    assert_eq!(shown.recent_runs.len(), 1);
    assert!(shown.recent_runs[0].triggered);
    assert_eq!(shown.recent_runs[0].operation, op.name);
    let reply = request(server.addr, "GET", "/v1/schedules", &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["schedules"][0]["name"], "schedules/night");
    let reply = request(server.addr, "DELETE", "/v1/schedules/night", &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let gone = api
        .get_schedule(GetScheduleRequest {
            name: "schedules/night".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

/// UpdateSchedule changes the fields its mask names (a new spec fires from now), refuses a
/// mask naming what cannot change and a task SubmitTask would refuse, over gRPC and REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_the_fields_its_mask_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    let mut api = ScheduleServiceClient::new(channel.clone());
    let hourly = create(&channel, "hourly", every(3600, 10, OverlapPolicy::Skip)).await;
    let update = |schedule: Schedule, paths: &[&str]| UpdateScheduleRequest {
        schedule: Some(schedule),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    let asked = Schedule {
        name: hourly.name.clone(),
        cron: "*/2 * * * * *".into(),
        note: "not this".into(),
        ..Default::default()
    };
    let updated = api
        .update_schedule(update(asked.clone(), &["cron", "interval"]))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.cron, "*/2 * * * * *");
    assert_eq!(updated.interval, None);
    assert_eq!(updated.note, "", "a field the mask does not name is kept");
    assert_eq!(updated.task, hourly.task, "the task is kept");
    let next = time(updated.next_run_time);
    assert!(
        next <= SystemTime::now() + Duration::from_secs(2),
        "fires from now: {next:?}"
    );
    wait_runs(&channel, &hourly.name, 1).await;
    for (paths, schedule, field) in [
        (vec!["name"], asked.clone(), "update_mask"),
        (
            vec!["task"],
            Schedule {
                name: hourly.name.clone(),
                task: Some(ScheduleTask {
                    kind: "nope".into(),
                    input: Some(sleep_input(1, 1, "")),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "schedule.task.kind",
        ),
        (
            vec!["cron"],
            Schedule {
                cron: String::new(),
                ..asked.clone()
            },
            "schedule.cron",
        ),
    ] {
        let status = api
            .update_schedule(update(schedule, &paths))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{paths:?}: {status:?}"
        );
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violation = &details
            .bad_request()
            .expect("a BadRequest")
            .field_violations[0];
        assert_eq!(violation.field, field, "{}", status.message());
    }
    let reply = request(
        server.addr,
        "PATCH",
        "/v1/schedules/hourly?updateMask=note,overlapPolicy",
        &[("content-type", "application/json")],
        Some(r#"{"note":"owned by the data team","overlapPolicy":"BUFFER_ONE"}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let shown = get(&channel, &hourly.name).await;
    assert_eq!(shown.note, "owned by the data team");
    assert_eq!(shown.overlap_policy, OverlapPolicy::BufferOne as i32);
    assert_eq!(shown.cron, "*/2 * * * * *");
}

/// Roles bound what a schedule may start: a submitter may not create, resume, change or
/// trigger a schedule of a kind only admins may start (the batch delete), though it may pause
/// one; a reader only reads; no client may take a fire's request id (`schedule/…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_bound_what_a_schedule_may_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let line = |token: &str, role: &str| {
        oprun::auth::tokens_file_line(token, role.parse().expect("role"), Some(role)).expect("line")
    };
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n{}\n",
            line("admin-token-0123456789", "admin"),
            line("submitter-token-0123456789", "submitter"),
            line("reader-token-0123456789", "reader")
        ),
    )
    .unwrap();
    let server = BinServer::start_with(
        dir.path(),
        "127.0.0.1:0",
        &["--tokens-file", file.to_str().unwrap()],
        &[],
    );
    let call =
        |token: &'static str, method: &'static str, path: &'static str, body: &'static str| {
            let addr = server.addr;
            async move {
                let auth = format!("Bearer {token}-token-0123456789");
                request(
                    addr,
                    method,
                    path,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    Some(body),
                )
                .await
            }
        };
    let purge = r#"{"task":{"kind":"oprun.delete_operations","input":{"@type":"type.googleapis.com/oprun.v1.BatchSelection","filter":"kind = \"none\""}},"interval":"3600s","paused":true}"#;
    let created = call("submitter", "POST", "/v1/schedules?scheduleId=purge", purge).await;
    assert_eq!(created.status, 403, "{}", created.body);
    let created = call("admin", "POST", "/v1/schedules?scheduleId=purge", purge).await;
    assert_eq!(created.status, 200, "{}", created.body);
    for (method, path, body) in [
        ("POST", "/v1/schedules/purge:resume", "{}"),
        (
            "PATCH",
            "/v1/schedules/purge?updateMask=interval",
            r#"{"interval":"1s"}"#,
        ),
        ("POST", "/v1/schedules/purge:trigger", "{}"),
    ] {
        let refused = call("submitter", method, path, body).await;
        assert_eq!(refused.status, 403, "{method} {path}: {}", refused.body);
    }
    let paused = call(
        "submitter",
        "POST",
        "/v1/schedules/purge:pause",
        r#"{"note":"hold"}"#,
    )
    .await;
    assert_eq!(
        paused.status, 200,
        "pausing only stops fires: {}",
        paused.body
    );
    let read = call("reader", "GET", "/v1/schedules/purge", "").await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["note"], "hold");
    assert_eq!(
        read.json()["startedRuns"],
        serde_json::Value::Null,
        "nothing ran"
    );
    let refused = call("reader", "POST", "/v1/schedules/purge:pause", "{}").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let squatted = call(
        "submitter",
        "POST",
        "/v1/tasks:submit",
        r#"{"kind":"sleep","input":{"@type":"type.googleapis.com/oprun.v1.SleepInput"},"requestId":"schedule/purge/1800000000000000"}"#,
    )
    .await;
    assert_eq!(squatted.status, 400, "{}", squatted.body);
    assert!(squatted.body.contains("request_id"), "{}", squatted.body);
}

/// The crash points of a fire, made by hand in the store: a fire decided by a node that died
/// before starting it starts once when a node comes up; one that was started but not
/// recorded is recorded, and not started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_left_pending_by_a_dead_node_starts_once() {
    use oprun::model::{OperationRecord, State};
    use oprun::proto::oprun::v1::SleepInput;
    use oprun::schedules::stored::{stamp, Stored};
    use oprun::store::sqlite::{SqliteOptions, SqliteStore};
    use oprun::store::Store;

    for started_before in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
            SqliteStore::open(&dir.path().join("data"), SqliteOptions::default()).unwrap(),
        );
        let fire = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    - 2,
            );
        let input = oprun::model::pack(&SleepInput::default());
        let stored = Stored {
            schedule: Some(Schedule {
                name: "schedules/left".into(),
                task: Some(ScheduleTask {
                    kind: "sleep".into(),
                    input: Some(input.clone()),
                    ..Default::default()
                }),
                interval: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                next_run_time: Some(stamp(fire + Duration::from_secs(3600))),
                ..Default::default()
            }),
            pending: Some(stamp(fire)),
        };
        assert!(store
            .put_schedule(&stored.row("left", 7, SystemTime::now()), None)
            .await
            .unwrap());
        let mut earlier = None;
        if started_before {
            let fire_id = format!(
                "schedule/left/{}",
                fire.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_micros()
            );
            let mut record = OperationRecord::new_queued("sleep".into(), input, Some(fire_id));
            record.schedule = Some("schedules/left".into());
            record.fire_time = Some(fire);
            let inserted = store.insert(record).await.unwrap();
            let oprun::store::Inserted::New(r) = inserted else {
                panic!("a fresh store");
            };
            assert_eq!(r.state, State::Queued);
            earlier = Some(r.id.name());
        }
        let server = common::TestServer::start_on(dir, store, oprun::RunnerConfig::default()).await;
        let channel = server.channel().await;
        let ops = wait_runs(&channel, "schedules/left", 1).await;
        let mut shown = get(&channel, "schedules/left").await;
        for _ in 0..100 {
            if !shown.recent_runs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            shown = get(&channel, "schedules/left").await;
        }
        assert_eq!(
            ops.len(),
            1,
            "started_before {started_before}: one operation"
        );
        assert_eq!(fire_times("schedules/left", &ops), [fire]);
        if let Some(earlier) = earlier {
            assert_eq!(
                ops[0].name, earlier,
                "the operation started before is the run"
            );
        }
        assert_eq!(shown.recent_runs.len(), 1);
        assert_eq!(shown.recent_runs[0].operation, ops[0].name);
        assert_eq!(shown.started_runs, 1);
        assert_eq!(
            shown.next_run_time,
            Some(stamp(fire + Duration::from_secs(3600))),
            "the calendar goes on as it was"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            runs(&channel, "schedules/left").await.len(),
            1,
            "and nothing more"
        );
    }
}

/// A stored schedule this build refuses (its time zone gone from the tz database, made here by
/// hand in the store) is left without a next fire instead of failing every pass of the fire
/// loop, and can still be read and paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_this_build_refuses_is_left_alone_and_can_be_paused() {
    use oprun::schedules::stored::{stamp, Stored};
    use oprun::store::sqlite::{SqliteOptions, SqliteStore};
    use oprun::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
        SqliteStore::open(&dir.path().join("data"), SqliteOptions::default()).unwrap(),
    );
    let now = SystemTime::now();
    let stored = Stored {
        schedule: Some(Schedule {
            name: "schedules/old".into(),
            task: every(1, 1, OverlapPolicy::Skip).task,
            cron: "* * * * * *".into(),
            time_zone: "Atlantis/Capital".into(),
            next_run_time: Some(stamp(now - Duration::from_secs(1))),
            ..Default::default()
        }),
        pending: None,
    };
    assert!(store
        .put_schedule(&stored.row("old", 1, now), None)
        .await
        .unwrap());
    let server = common::TestServer::start_on(dir, store, oprun::RunnerConfig::default()).await;
    let channel = server.channel().await;
    let mut shown = get(&channel, "schedules/old").await;
    for _ in 0..100 {
        if shown.next_run_time.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        shown = get(&channel, "schedules/old").await;
    }
    assert_eq!(shown.next_run_time, None, "left without a next fire");
    assert!(runs(&channel, "schedules/old").await.is_empty());
    let paused = pause(&channel, "schedules/old").await;
    assert!(paused.paused);
    let resumed = ScheduleServiceClient::new(channel.clone())
        .resume_schedule(ResumeScheduleRequest {
            name: "schedules/old".into(),
            note: String::new(),
        })
        .await
        .expect_err("its spec is refused when it would fire again");
    assert_eq!(resumed.code(), tonic::Code::InvalidArgument);
    assert!(
        resumed.message().contains("Atlantis/Capital"),
        "{}",
        resumed.message()
    );
}

/// BUFFER_ONE keeps one fire while a run goes on and starts it when the run ends: runs of
/// 2.5 s every second never overlap, each after the first is a fire kept while the one before
/// ran (under SKIP it would be a fire after its end), and the fires beyond the one kept are
/// skipped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_one_starts_the_kept_fire_when_the_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start_with(dir.path(), "127.0.0.1:0", &[], &[]);
    let channel = server.channel().await;
    let s = create(&channel, "kept", every(1, 2500, OverlapPolicy::BufferOne)).await;
    let ops = wait_runs(&channel, &s.name, 3).await;
    pause(&channel, &s.name).await;
    // (fire time, start, end) of each run, in order.
    let mut runs_seen = Vec::new();
    for op in ops.iter().take(3) {
        let done = common::wait_done(&mut OperationsClient::new(channel.clone()), &op.name).await;
        let meta = metadata(&done);
        runs_seen.push((
            time(meta.fire_time),
            time(meta.start_time),
            time(meta.end_time),
        ));
    }
    runs_seen.sort();
    for pair in runs_seen.windows(2) {
        let ((_, _, previous_end), (fire, start, _)) = (pair[0], pair[1]);
        assert!(previous_end <= start, "runs overlap: {pair:?}");
        assert!(
            fire < previous_end,
            "the run after is a fire kept while the one before ran: {pair:?}"
        );
    }
    let shown = get(&channel, &s.name).await;
    assert!(shown.skipped_runs >= 2, "skipped {}", shown.skipped_runs);
}
