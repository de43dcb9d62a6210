"""The SDK's client (`oprun.client`) against the real server: one submission and a batch
(all created, in order, with each one's priority, unique key and attempts), and a batch with
one bad submission (refused, naming it; none created)."""

from __future__ import annotations

import asyncio
import datetime

import grpc
import pytest
from conftest import Server
from google.longrunning import operations_pb2

from oprun.client import Client, Submission
from oprun.v1 import metadata_pb2, tasks_pb2


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
