"""The Python worker of `cargo bench --bench workers`: the no-op kind `noop-py` (input a Struct
with an optional `seconds`, response the time the handler got its assignment), run with the SDK
in python/. A handler that waits and sees a cancel appends `name unix-nanoseconds` to
$BENCH_CANCEL_LOG."""

from __future__ import annotations

import asyncio
import os
import time

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from oprun.worker import Context, Worker

CANCELS = os.environ.get("BENCH_CANCEL_LOG", "")
worker = Worker(os.environ["OPRUN_TARGET"], name="bench-python")


@worker.kind(
    "noop-py",
    input=Struct,
    output=Timestamp,
    retry_safe=True,
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "64")),
)
async def noop(inp: Struct, ctx: Context) -> Timestamp:
    got = Timestamp()
    got.GetCurrentTime()
    seconds = inp.fields["seconds"].number_value if "seconds" in inp.fields else 0.0
    if seconds > 0:
        waiter = asyncio.ensure_future(ctx.wait_cancelled())
        await asyncio.wait({waiter}, timeout=seconds)
        waiter.cancel()
        if ctx.cancelled:
            seen = time.time_ns()
            if CANCELS:
                with open(CANCELS, "a", encoding="utf-8") as log:
                    log.write(f"{ctx.operation} {seen}\n")
            raise asyncio.CancelledError()
    return got


asyncio.run(worker.run())
