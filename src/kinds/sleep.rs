//! The built-in `sleep` kind: for demos, tests and benchmarks.

use std::time::Duration;

use crate::proto::oprun::v1::{SleepInput, SleepOutput};
use crate::task::{Kind, RetryPolicy, Task, TaskContext, TaskError, TaskOptions};

/// Longest sleep accepted.
pub const MAX_SLEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most steps accepted.
pub const MAX_STEPS: u32 = 1_000_000;

/// Sleeps `duration` in `steps` equal steps, reporting progress after each, and stops as soon
/// as it is cancelled. A non-empty `fail_message` makes it fail, after the sleep, with code
/// UNKNOWN and that message; `fail_attempts` makes the first attempts fail with UNAVAILABLE,
/// which is retried (up to 5 attempts, backoff from 100 ms).
pub struct Sleep;

fn duration_of(input: &SleepInput) -> Result<Duration, TaskError> {
    let d = input.duration.unwrap_or_default();
    let d = Duration::try_from(d).map_err(|_| {
        TaskError::invalid_argument("duration must not be negative (e.g. \"2s\", \"0.5s\")")
    })?;
    if d > MAX_SLEEP {
        return Err(TaskError::invalid_argument(format!(
            "duration must be at most {}s",
            MAX_SLEEP.as_secs()
        )));
    }
    Ok(d)
}

impl Kind for Sleep {
    const KIND: &'static str = "sleep";
    type Input = SleepInput;
    type Output = SleepOutput;
}

impl Task for Sleep {
    fn options(&self) -> TaskOptions {
        TaskOptions {
            retry_safe: true,
            retry: RetryPolicy {
                max_attempts: 5,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(5),
                ..RetryPolicy::default()
            },
            ..TaskOptions::default()
        }
    }

    fn validate(&self, input: &SleepInput) -> Result<(), TaskError> {
        duration_of(input)?;
        if input.steps > MAX_STEPS {
            return Err(TaskError::invalid_argument(format!(
                "steps must be at most {MAX_STEPS}"
            )));
        }
        Ok(())
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        let total = duration_of(&input)?;
        let steps = input.steps.max(1);
        let step = total / steps;
        ctx.progress(0, i64::from(steps), "steps");
        for i in 1..=steps {
            if !step.is_zero() {
                tokio::select! {
                    () = ctx.cancelled() => return Err(TaskError::cancelled()),
                    () = tokio::time::sleep(step) => {}
                }
            } else if ctx.is_cancelled() {
                return Err(TaskError::cancelled());
            }
            ctx.progress(i64::from(i), i64::from(steps), "steps");
            ctx.status(format!("step {i} of {steps}"));
        }
        if !input.fail_message.is_empty() {
            return Err(TaskError::unknown(input.fail_message));
        }
        if ctx.attempt() <= input.fail_attempts {
            return Err(TaskError::unavailable(format!(
                "attempt {} of the first {} fails on purpose",
                ctx.attempt(),
                input.fail_attempts
            )));
        }
        Ok(SleepOutput { steps_done: steps })
    }
}
