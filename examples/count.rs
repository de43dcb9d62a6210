// examples/count.rs: a task kind of your own, served by the oprun command line
// (`cargo run --example count -- serve`, then `oprun submit count --input '{"steps":5}'`).
use oprun::proto::oprun::v1::{SleepInput, SleepOutput};
use oprun::{Kind, Task, TaskContext, TaskError, TaskOptions};

/// Counts to `steps`, one step every 100 ms, and stops when cancelled.
struct Count;

impl Kind for Count {
    const KIND: &'static str = "count"; // never rename once released
    type Input = SleepInput; // any prost message with a type name
    type Output = SleepOutput;
}

impl Task for Count {
    fn options(&self) -> TaskOptions {
        TaskOptions::default().retry_safe(true).max_concurrency(4)
    }

    async fn run(&self, input: SleepInput, ctx: TaskContext) -> Result<SleepOutput, TaskError> {
        for i in 1..=input.steps {
            tokio::select! {
                () = ctx.cancelled() => return Err(TaskError::cancelled()),
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
            ctx.progress(i.into(), input.steps.into(), "steps"); // in memory, never blocks
            ctx.status(format!("step {i}"));
        }
        Ok(SleepOutput {
            steps_done: input.steps,
        })
    }
}

fn main() -> std::process::ExitCode {
    oprun::cli::main(|kinds, _serve_args| {
        kinds.register(Count)?; // an error if the name is taken
        Ok(())
    })
}
