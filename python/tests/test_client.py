"""The SDK's client (`oprun.client`) against the real server: one submission and a batch
(all created, in order, with each one's priority, unique key and attempts), and a batch with
one bad submission (refused, naming it; none created); a Python worker's kind declared with
`max_per_key=1` runs one operation of a concurrency key at a time."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time

import grpc
import pytest
from conftest import Server, WorkerProcess
from google.longrunning import operations_pb2
from resize_pb2 import ResizeInput

from oprun.client import Client, Submission
from oprun.v1 import metadata_pb2, tasks_pb2, tasks_pb2_grpc


def meta(op: operations_pb2.Operation) -> metadata_pb2.OperationMetadata:
    m = metadata_pb2.OperationMetadata()
    op.metadata.Unpack(m)
    return m


def sleep(**fields: object) -> Submission:
    return Submission("sleep", tasks_pb2.SleepInput(), **fields)  # type: ignore[arg-type]


def count(server: Server) -> int:
    with server.channel() as channel:
        from google.api_core import operations_v1

        return len(list(operations_v1.OperationsClient(channel).list_operations("operations", "")))


def test_submit_and_submit_many(server: Server) -> None:
    async def main() -> None:
        async with Client(server.grpc) as client:
            one = await client.submit(sleep(priority=7, timeout=datetime.timedelta(minutes=5)))
            assert meta(one).priority == 7
            assert meta(one).HasField("deadline")
            ops = await client.submit_many(
                [sleep(priority=i, unique_key=f"k{i}", max_attempts=1) for i in range(5)]
                + [sleep(unique_key="k0")]
            )
            assert [meta(op).priority for op in ops[:5]] == [0, 1, 2, 3, 4]
            assert [meta(op).unique_key for op in ops[:5]] == [f"k{i}" for i in range(5)]
            assert all(meta(op).retry_policy.max_attempts == 1 for op in ops[:5])
            assert ops[5].name == ops[0].name, "a unique key taken earlier in the batch"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.submit_many([sleep(), sleep(priority=1000)])
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (refused.value.details() or "").startswith("requests[1]: ")

    asyncio.run(main())
    assert count(server) == 6, "the refused batch created nothing"


def test_a_worker_kind_runs_one_operation_of_a_key_at_a_time(server: Server, tmp_path) -> None:
    runs = tmp_path / "runs"
    worker = WorkerProcess(server.grpc, concurrency=4, max_per_key=1, runs=str(runs))
    try:
        with server.channel() as channel:
            stub = tasks_pb2_grpc.TaskServiceStub(channel)
            for _ in range(300):
                kinds = stub.ListTaskKinds(tasks_pb2.ListTaskKindsRequest(), timeout=10).kinds
                if any(k.name == "resize" and k.sessions for k in kinds):
                    break
                time.sleep(0.05)
            declared = next(k for k in kinds if k.name == "resize")
            assert declared.max_per_key == 1

        async def submit() -> list[operations_pb2.Operation]:
            async with Client(server.grpc) as client:
                return await client.submit_many(
                    Submission("resize", ResizeInput(count=3, step_ms=20), concurrency_key=key)
                    for key in ["a", "a", "a", "b", "b", "b"]
                )

        ops = asyncio.run(submit())
        key_of = {op.name: meta(op).concurrency_key for op in ops}
        with server.channel() as channel:
            from google.api_core import operations_v1

            client = operations_v1.OperationsClient(channel)
            for op in ops:
                for _ in range(600):
                    if client.get_operation(op.name).done:
                        break
                    time.sleep(0.02)
                assert client.get_operation(op.name).done, op.name
        spans: dict[str, dict[str, list[float]]] = {}
        for line in runs.read_text().splitlines():
            _what, name, _attempt, _pid, at = line.split()
            spans.setdefault(key_of[name], {}).setdefault(name, []).append(float(at))
        for key, by_op in spans.items():
            intervals = sorted((times[0], times[1]) for times in by_op.values())
            assert len(intervals) == 3, (key, by_op)
            for (_, end), (start, _) in itertools.pairwise(intervals):
                assert end <= start, f"two of key {key} ran at once: {intervals}"
        a = sorted(tuple(t) for t in spans["a"].values())
        b = sorted(tuple(t) for t in spans["b"].values())
        overlapped_keys = any(x[0] < y[1] and y[0] < x[1] for x in a for y in b)
        assert overlapped_keys, "keys a and b ran side by side"
    finally:
        worker.stop()


def test_a_schedule_from_the_generated_stubs(server: Server) -> None:
    """The stubs of `oprun.v1.ScheduleService` create an every-second schedule; its runs name
    it, and a bad cron spec is refused naming the field at fault."""
    from google.protobuf import duration_pb2

    from oprun.v1 import schedules_pb2, schedules_pb2_grpc

    with server.channel() as channel:
        stub = schedules_pb2_grpc.ScheduleServiceStub(channel)
        task = schedules_pb2.ScheduleTask(kind="sleep")
        task.input.Pack(tasks_pb2.SleepInput())
        created = stub.CreateSchedule(
            schedules_pb2.CreateScheduleRequest(
                schedule_id="py-tick",
                schedule=schedules_pb2.Schedule(task=task, interval=duration_pb2.Duration(seconds=1)),
            )
        )
        assert created.name == "schedules/py-tick"
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateSchedule(
                schedules_pb2.CreateScheduleRequest(
                    schedule=schedules_pb2.Schedule(task=task, cron="61 * * * *")
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert 'minute field "61"' in (refused.value.details() or "")
        for _ in range(200):
            shown = stub.GetSchedule(schedules_pb2.GetScheduleRequest(name=created.name))
            if shown.recent_runs:
                break
            time.sleep(0.05)
        run = shown.recent_runs[0]
        from google.api_core import operations_v1

        op = operations_v1.OperationsClient(channel).get_operation(run.operation)
        assert meta(op).schedule == "schedules/py-tick"
        assert meta(op).fire_time == run.fire_time
