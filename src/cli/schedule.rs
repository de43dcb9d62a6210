//! `oprun schedule`: create, show, list, pause, resume, trigger and delete schedules.

use std::time::Duration;

use super::client::{connect, status_line, ClientArgs};
use super::operations::{kind_input, show_new};
use super::show::{print_json, print_table, time};
use super::CliResult;
use crate::proto::oprun::v1::schedule::OverlapPolicy;
use crate::proto::oprun::v1::schedule_service_client::ScheduleServiceClient;
use crate::proto::oprun::v1::{
    CreateScheduleRequest, DeleteScheduleRequest, GetScheduleRequest, ListSchedulesRequest,
    PauseScheduleRequest, ResumeScheduleRequest, Schedule, ScheduleRun, ScheduleTask,
    TriggerScheduleRequest,
};

/// What a schedule's fire does while its previous run is not done.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub(super) enum Overlap {
    /// Skip the fire (and count it).
    Skip,
    /// Start another run anyway.
    Allow,
    /// Keep one fire waiting for the previous run to end; skip more.
    BufferOne,
    /// Cancel the previous run and start this one.
    CancelPrevious,
}

impl From<Overlap> for OverlapPolicy {
    fn from(o: Overlap) -> Self {
        match o {
            Overlap::Skip => OverlapPolicy::Skip,
            Overlap::Allow => OverlapPolicy::Allow,
            Overlap::BufferOne => OverlapPolicy::BufferOne,
            Overlap::CancelPrevious => OverlapPolicy::CancelPrevious,
        }
    }
}

/// `oprun schedule …`.
#[derive(clap::Subcommand, Debug)]
pub(super) enum ScheduleCommand {
    /// Create a schedule: operations of a kind started on a cron spec (in a time zone) or
    /// every interval, by whichever node of the store is up, once per fire time.
    #[command(after_help = "Examples:\n  \
        oprun schedule create nightly-export --kind export --input '{\"table\":\"orders\"}' \\\n    \
        --cron '0 3 * * *' --time-zone Europe/Paris\n  \
        oprun schedule create heartbeat --kind sleep --every 30s --overlap skip")]
    Create(Box<CreateArgs>),
    /// Show a schedule: its spec, next fire, counts and latest runs.
    Get {
        /// `schedules/{id}` or the bare id.
        name: String,
    },
    /// List the schedules.
    List {
        /// At most this many (0: all of them).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Stop firing until resumed (the fires meanwhile are not run later).
    Pause {
        /// `schedules/{id}` or the bare id.
        name: String,
        /// Why (kept as the schedule's note).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Fire again, from the next fire time after now.
    Resume {
        /// `schedules/{id}` or the bare id.
        name: String,
        /// A note (replacing the pause's).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Start one run now, whatever the calendar, pause or overlap policy say.
    Trigger {
        /// `schedules/{id}` or the bare id.
        name: String,
        /// AIP-155 idempotency key of the run.
        #[arg(long, default_value = "")]
        request_id: String,
        /// Print the new operation's name alone.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Delete a schedule (the operations it started stay).
    Delete {
        /// `schedules/{id}` or the bare id.
        name: String,
    },
}

/// The flags of `oprun schedule create`.
#[derive(clap::Args, Debug)]
pub(super) struct CreateArgs {
    /// The schedule's id: lowercase letters, digits and hyphens (default: one is picked).
    id: Option<String>,
    /// The kind each fire starts.
    #[arg(long)]
    kind: String,
    /// The kind's input as proto3 JSON.
    #[arg(long, default_value = "{}")]
    input: String,
    /// A cron spec: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds
    /// first, or @hourly, @daily, @weekly, @monthly, @yearly.
    #[arg(long, required_unless_present = "every", conflicts_with = "every")]
    cron: Option<String>,
    /// The IANA time zone of --cron, e.g. Europe/Paris (default UTC).
    #[arg(long, default_value = "", requires = "cron")]
    time_zone: String,
    /// Fire every this long, e.g. `30s` or `1h` (at least a second).
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// What a fire does while the previous run is not done.
    #[arg(long, value_enum, default_value = "skip")]
    overlap: Overlap,
    /// Fires missed while no node ran start once if the latest is no older than this, e.g.
    /// `10m` (default 1m).
    #[arg(long, value_parser = humantime::parse_duration)]
    catchup_window: Option<Duration>,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
    /// A note for the people who look after it.
    #[arg(long, default_value = "")]
    note: String,
    /// Each run's deadline from its fire, e.g. `10m`.
    #[arg(long = "deadline-in", value_parser = humantime::parse_duration)]
    deadline_in: Option<Duration>,
    /// The runs' priority, from -100 to 100.
    #[arg(long, short = 'p', default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// The runs' concurrency key.
    #[arg(long, default_value = "")]
    concurrency_key: String,
}

/// `schedules/{id}` for a bare id; a full name as it is.
fn schedule_name(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{}{name}", crate::schedules::NAME_PREFIX)
    }
}

/// A duration on the wire.
fn wire(flag: &str, d: Duration) -> Result<prost_types::Duration, String> {
    prost_types::Duration::try_from(d).map_err(|e| format!("{flag}: {e}"))
}

/// Runs `oprun schedule …`.
pub(super) async fn run(client: &ClientArgs, command: ScheduleCommand) -> CliResult {
    let channel = connect(client).await?;
    let mut api = ScheduleServiceClient::new(channel.clone());
    let shown = match command {
        ScheduleCommand::Create(args) => {
            let args = *args;
            let input = kind_input(&channel, &args.kind, &args.input).await?;
            let schedule = Schedule {
                task: Some(ScheduleTask {
                    kind: args.kind,
                    input: Some(input),
                    timeout: args
                        .deadline_in
                        .map(|d| wire("--deadline-in", d))
                        .transpose()?,
                    priority: args.priority,
                    concurrency_key: args.concurrency_key,
                    retry_policy: None,
                }),
                cron: args.cron.unwrap_or_default(),
                time_zone: args.time_zone,
                interval: args.every.map(|d| wire("--every", d)).transpose()?,
                overlap_policy: OverlapPolicy::from(args.overlap) as i32,
                catchup_window: args
                    .catchup_window
                    .map(|d| wire("--catchup-window", d))
                    .transpose()?,
                paused: args.paused,
                note: args.note,
                ..Schedule::default()
            };
            api.create_schedule(CreateScheduleRequest {
                schedule_id: args.id.unwrap_or_default(),
                schedule: Some(schedule),
            })
            .await
        }
        ScheduleCommand::Get { name } => {
            api.get_schedule(GetScheduleRequest {
                name: schedule_name(&name),
            })
            .await
        }
        ScheduleCommand::List { limit } => return list(client, &mut api, limit).await,
        ScheduleCommand::Pause { name, note } => {
            api.pause_schedule(PauseScheduleRequest {
                name: schedule_name(&name),
                note,
            })
            .await
        }
        ScheduleCommand::Resume { name, note } => {
            api.resume_schedule(ResumeScheduleRequest {
                name: schedule_name(&name),
                note,
            })
            .await
        }
        ScheduleCommand::Trigger {
            name,
            request_id,
            quiet,
        } => {
            let op = api
                .trigger_schedule(TriggerScheduleRequest {
                    name: schedule_name(&name),
                    request_id,
                })
                .await
                .map_err(status_line)?
                .into_inner();
            return show_new(client, &op, quiet);
        }
        ScheduleCommand::Delete { name } => {
            let name = schedule_name(&name);
            api.delete_schedule(DeleteScheduleRequest { name: name.clone() })
                .await
                .map_err(status_line)?;
            if !client.json {
                println!("deleted {name}");
            }
            return Ok(());
        }
    };
    let schedule = shown.map_err(status_line)?.into_inner();
    if client.json {
        return print_json(&schedule);
    }
    print_schedule(&schedule);
    Ok(())
}

/// Lists the schedules, page after page up to `limit` (0: all).
async fn list(
    client: &ClientArgs,
    api: &mut ScheduleServiceClient<super::client::Conn>,
    limit: u32,
) -> CliResult {
    let mut schedules = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api
            .list_schedules(ListSchedulesRequest {
                page_size: 0,
                page_token,
            })
            .await
            .map_err(status_line)?
            .into_inner();
        schedules.extend(page.schedules);
        let full = limit > 0 && schedules.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
        if page.next_page_token.is_empty() || full {
            break;
        }
        page_token = page.next_page_token;
    }
    if limit > 0 {
        schedules.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    if client.json {
        for schedule in &schedules {
            print_json(schedule)?;
        }
        return Ok(());
    }
    let rows: Vec<[String; 6]> = schedules
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                spec(s),
                s.task.as_ref().map(|t| t.kind.clone()).unwrap_or_default(),
                if s.paused {
                    "paused".to_owned()
                } else {
                    time(s.next_run_time.as_ref())
                },
                s.recent_runs.first().map(outcome).unwrap_or_default(),
                format!("{}/{}", s.started_runs, s.skipped_runs),
            ]
        })
        .collect();
    print_table(
        [
            "NAME",
            "SPEC",
            "KIND",
            "NEXT RUN",
            "LAST RUN",
            "RUN/SKIPPED",
        ],
        &rows,
    );
    Ok(())
}

/// A schedule's spec: its cron spec and zone, or `every N`.
fn spec(s: &Schedule) -> String {
    match &s.interval {
        Some(every) => format!(
            "every {}",
            humantime::format_duration(Duration::try_from(*every).unwrap_or_default())
        ),
        None if s.time_zone.is_empty() => s.cron.clone(),
        None => format!("{} ({})", s.cron, s.time_zone),
    }
}

/// How a run stands: its state (`QUEUED`, `RUNNING`, `SUCCEEDED`), or its error code's name
/// (`CANCELLED`, `DEADLINE_EXCEEDED`).
fn outcome(run: &ScheduleRun) -> String {
    if let Some(e) = &run.error {
        return crate::proto::google::rpc::Code::try_from(e.code).map_or_else(
            |_| format!("code {}", e.code),
            |c| c.as_str_name().to_owned(),
        );
    }
    match crate::proto::oprun::v1::operation_metadata::State::try_from(run.state) {
        Ok(state) if run.state != 0 => state.as_str_name().to_owned(),
        _ => "-".to_owned(),
    }
}

/// One schedule, for a person.
fn print_schedule(s: &Schedule) {
    let policy = OverlapPolicy::try_from(s.overlap_policy)
        .unwrap_or(OverlapPolicy::Skip)
        .as_str_name();
    println!("name:            {}", s.name);
    if let Some(task) = &s.task {
        println!("kind:            {}", task.kind);
    }
    println!("spec:            {}", spec(s));
    println!("overlap policy:  {policy}");
    if s.paused {
        println!("paused:          yes");
    } else {
        println!("next run:        {}", time(s.next_run_time.as_ref()));
    }
    if !s.note.is_empty() {
        println!("note:            {}", s.note);
    }
    if s.buffered_run_time.is_some() {
        println!("buffered run:    {}", time(s.buffered_run_time.as_ref()));
    }
    println!("started runs:    {}", s.started_runs);
    println!("skipped fires:   {}", s.skipped_runs);
    for run in &s.recent_runs {
        let what = if run.operation.is_empty() {
            run.error
                .as_ref()
                .map(|e| format!("not started: {}", e.message))
                .unwrap_or_default()
        } else {
            format!("{}  {}", run.operation, outcome(run))
        };
        let triggered = if run.triggered { "  (triggered)" } else { "" };
        println!(
            "run:             {}  {what}{triggered}",
            time(run.fire_time.as_ref())
        );
    }
}
