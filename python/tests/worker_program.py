"""A worker process of the tests: runs the `resize` kind (or another name) with the settings
in its environment, and records each run's start and end in $WORKER_RUNS (one line each:
`start|end <operation> <attempt> <pid> <monotonic time>`)."""

import asyncio
import os
import time

from resize_pb2 import ResizeInput, ResizeOutput

from oprun.worker import Worker

RUNS = os.environ.get("WORKER_RUNS")


def record(what: str, operation: str, attempt: int) -> None:
    if RUNS:
        line = f"{what} {operation} {attempt} {os.getpid()} {time.time():.6f}\n"
        fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


worker = Worker(os.environ["OPRUN_TARGET"], name=os.environ.get("WORKER_NAME", "py-test"))


@worker.kind(
    os.environ.get("WORKER_KIND", "resize"),
    input=ResizeInput,
    output=ResizeOutput,
    retry_safe=os.environ.get("WORKER_RETRY_SAFE", "1") == "1",
    max_attempts=3,
    heartbeat_timeout=float(os.environ.get("WORKER_HEARTBEAT", "10")),
    concurrency=int(os.environ.get("WORKER_CONCURRENCY", "4")),
    max_per_key=int(os.environ.get("WORKER_MAX_PER_KEY", "0")),
)
async def resize(inp: ResizeInput, ctx) -> ResizeOutput:
    record("start", ctx.operation, ctx.attempt)
    try:
        for i in range(inp.count):
            if ctx.cancelled:
                raise asyncio.CancelledError()
            await ctx.progress(i, inp.count, unit="images", status=f"image {i}")
            await asyncio.sleep((inp.step_ms or 10) / 1000)
        return ResizeOutput(done=inp.count, worker=os.getpid())
    finally:
        record("end", ctx.operation, ctx.attempt)


print("worker starting", flush=True)
asyncio.run(worker.run())
print("worker stopped", flush=True)
