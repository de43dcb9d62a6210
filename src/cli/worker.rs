//! `oprun worker exec --kind NAME -- COMMAND ARGS…`: any executable as a kind, run by a worker
//! of its own over the worker protocol.
//!
//! The kind's input and output are `google.protobuf.Struct` (JSON objects). For each
//! assignment the command runs in a process group of its own, with:
//! - the input, as one JSON object, on its stdin;
//! - `OPRUN_OUTPUT` naming a file for the response (a JSON object; none: an empty one),
//!   `OPRUN_OPERATION` the operation's name, `OPRUN_ATTEMPT` its attempt;
//! - each stdout line that is a JSON object with `progress` (`{"completed": 3, "total": 10,
//!   "unit": "files"}`) and/or `status` (a string) reported as the operation's progress; other
//!   lines logged;
//! - exit 0: the operation succeeds with the output file's object; another exit fails it with
//!   the last lines of stderr as the message;
//! - a cancel: SIGTERM to the process group, then SIGKILL after `--grace`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use prost_types::Any;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing::info;

use super::client::ClientArgs;
use super::CliResult;
use crate::proto::google::rpc::Code;
use crate::proto::oprun::v1::{Progress, TaskKind};
use crate::task::{ErasedTask, Registry, RetryPolicy, TaskContext, TaskError, TaskOptions};

/// The most of stderr a failure's message quotes.
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_BYTES: usize = 4000;

/// The settings of `oprun worker exec`.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct ExecArgs {
    /// The kind's name (1 to 63 characters of a-z, 0-9, '.', '_', '-').
    #[arg(long)]
    kind: String,
    /// How many run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Whether an attempt lost with this worker may run again (attempt + 1).
    #[arg(long)]
    retry_safe: bool,
    /// Attempts in all for failures the command marks retryable (exit code 75, EX_TEMPFAIL).
    #[arg(long, default_value_t = 1)]
    max_attempts: u32,
    /// How long a command may run before it is stopped (the kind's default timeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// How long a cancelled command has after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Append the log to this file instead of writing it to stderr.
    #[arg(long, env = "OPRUN_LOG_FILE")]
    pub(super) log_file: Option<std::path::PathBuf>,
    /// The name of this worker, for people (default: the host and process id).
    #[arg(long)]
    name: Option<String>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// The kind a command makes.
struct Exec {
    args: ExecArgs,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl ErasedTask for Exec {
    fn describe(&self) -> TaskKind {
        TaskKind {
            name: self.args.kind.clone(),
            input_type: "google.protobuf.Struct".to_owned(),
            response_type: "google.protobuf.Struct".to_owned(),
            ..TaskKind::default()
        }
    }

    fn options(&self) -> TaskOptions {
        TaskOptions {
            retry_safe: self.args.retry_safe,
            retry: RetryPolicy::exponential(self.args.max_attempts.max(1)),
            default_timeout: self.args.timeout,
            ..TaskOptions::default()
        }
    }

    fn check_input(&self, _input: &Any) -> Result<(), crate::error::Error> {
        Ok(())
    }

    fn run(&self, input: Any, ctx: TaskContext) -> BoxFuture<Result<Any, TaskError>> {
        let args = self.args.clone();
        Box::pin(async move { run_command(&args, input, ctx).await })
    }
}

/// Runs `oprun worker exec` until SIGINT or SIGTERM.
pub(super) async fn exec(args: ExecArgs, client: &ClientArgs) -> CliResult {
    let client = super::client::client(client).await?;
    let mut registry = Registry::new();
    let kind = args.kind.clone();
    let concurrency = args.concurrency.max(1);
    let name = args.name.clone();
    registry
        .register_erased(&kind, Arc::new(Exec { args }))
        .map_err(|e| e.to_string())?;
    let mut worker = crate::worker::Worker::new(client, registry).concurrency(&kind, concurrency);
    if let Some(name) = name {
        worker = worker.name(name);
    }
    let shutdown = super::serve::shutdown_signal()
        .map_err(|e| format!("cannot install the signal handlers: {e}"))?;
    println!("oprun worker running kind {kind}");
    worker.run(shutdown).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The Struct descriptor, from oprun's own types.
fn struct_type() -> Result<prost_reflect::MessageDescriptor, TaskError> {
    crate::proto::descriptor_pool()
        .get_message_by_name("google.protobuf.Struct")
        .ok_or_else(|| TaskError::internal("google.protobuf.Struct is not among oprun's types"))
}

/// A `Struct` as its JSON object.
fn to_json(input: &Any) -> Result<String, TaskError> {
    let message = DynamicMessage::decode(struct_type()?, input.value.as_slice())
        .map_err(|e| TaskError::invalid_argument(format!("the input is not a Struct: {e}")))?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut ser, &SerializeOptions::new())
        .map_err(|e| TaskError::internal(format!("cannot write the input as JSON: {e}")))?;
    String::from_utf8(out).map_err(|e| TaskError::internal(e.to_string()))
}

/// A JSON object as a `Struct`.
fn from_json(text: &str) -> Result<Any, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("it is not JSON: {e}"))?;
    if !value.is_object() {
        return Err("it is JSON, but not an object".to_owned());
    }
    let message = DynamicMessage::deserialize(struct_type().map_err(|e| e.message)?, value)
        .map_err(|e| e.to_string())?;
    Ok(Any {
        type_url: "type.googleapis.com/google.protobuf.Struct".to_owned(),
        value: message.encode_to_vec(),
    })
}

/// Runs the command for one assignment.
async fn run_command(args: &ExecArgs, input: Any, ctx: TaskContext) -> Result<Any, TaskError> {
    let json = to_json(&input)?;
    let dir = tempfile_dir()?;
    let output_path = dir.join("output.json");
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| TaskError::internal("no command"))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .env("OPRUN_OUTPUT", &output_path)
        .env("OPRUN_OPERATION", ctx.id().name())
        .env("OPRUN_ATTEMPT", ctx.attempt().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command.spawn().map_err(|e| {
        TaskError::new(
            Code::FailedPrecondition,
            format!("cannot start {program:?}: {e}"),
        )
    })?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine.
        let _ = stdin.write_all(json.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let reporting = {
        let ctx = ctx.clone();
        async move {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                report_line(&ctx, &line);
            }
        }
    };
    let tail = async move {
        let mut kept: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let Some(stderr) = stderr else { return kept };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            info!(target: "oprun::worker::exec", "{line}");
            kept.push_back(line);
            if kept.len() > STDERR_TAIL_LINES {
                kept.pop_front();
            }
        }
        kept
    };
    let waited = async {
        tokio::select! {
            status = child.wait() => status,
            () = ctx.cancelled() => {
                signal_group(pid, libc::SIGTERM);
                match tokio::time::timeout(args.grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        signal_group(pid, libc::SIGKILL);
                        child.wait().await
                    }
                }
            }
        }
    };
    let ((), tail, status) = tokio::join!(reporting, tail, waited);
    let status =
        status.map_err(|e| TaskError::internal(format!("cannot wait for the command: {e}")))?;
    if ctx.is_cancelled() && !status.success() {
        return Err(TaskError::cancelled());
    }
    if !status.success() {
        let mut message: String = tail.into_iter().collect::<Vec<_>>().join("\n");
        if message.len() > STDERR_TAIL_BYTES {
            let mut cut = message.len() - STDERR_TAIL_BYTES;
            while !message.is_char_boundary(cut) {
                cut += 1;
            }
            message = format!("…{}", &message[cut..]);
        }
        let code = status.code();
        let what = match code {
            Some(code) => format!("the command exited with status {code}"),
            None => "the command was killed by a signal".to_owned(),
        };
        let message = if message.is_empty() {
            what
        } else {
            format!("{what}: {message}")
        };
        // EX_TEMPFAIL: the command asks for another attempt.
        return Err(if code == Some(75) {
            TaskError::unavailable(message)
        } else {
            TaskError::new(Code::Unknown, message)
        });
    }
    let output = match tokio::fs::read_to_string(&output_path).await {
        Ok(text) if !text.trim().is_empty() => from_json(&text).map_err(|why| {
            TaskError::internal(format!(
                "the output file ($OPRUN_OUTPUT) is not a JSON object: {why}"
            ))
        })?,
        _ => from_json("{}").map_err(TaskError::internal)?,
    };
    let _ = tokio::fs::remove_dir_all(&dir).await;
    Ok(output)
}

/// A fresh directory for one run's output file.
fn tempfile_dir() -> Result<std::path::PathBuf, TaskError> {
    let suffix: u64 = rand::random();
    let dir = std::env::temp_dir().join(format!("oprun-exec-{suffix:016x}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| TaskError::internal(format!("cannot make {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Sends `signal` to the command's process group (the command and its children).
fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: killpg takes a process group id and a signal number; no memory is shared.
        unsafe {
            libc::killpg(pid, signal);
        }
    }
}

/// A stdout line: progress or status when it is a JSON object saying so, else logged.
fn report_line(ctx: &TaskContext, line: &str) {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str(line) else {
        info!(target: "oprun::worker::exec", "{line}");
        return;
    };
    let progress = object.get("progress").and_then(|p| {
        let count = |key: &str| p.get(key).and_then(serde_json::Value::as_i64);
        Some(Progress {
            completed: count("completed")?.max(0),
            total: count("total").unwrap_or(0).max(0),
            unit: p
                .get("unit")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect(),
        })
    });
    let status = object
        .get("status")
        .and_then(serde_json::Value::as_str)
        .map(|s| s.chars().take(1000).collect::<String>());
    if progress.is_none() && status.is_none() {
        info!(target: "oprun::worker::exec", "{line}");
        return;
    }
    ctx.report(progress, status, None);
}
