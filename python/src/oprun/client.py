"""Submit tasks to an oprun server from asyncio code: one at a time (:meth:`Client.submit`)
or up to 1,000 in one call that creates all or none (:meth:`Client.submit_many`,
BatchSubmitTasks). Needs the ``client`` extra (``pip install 'oprun[client]'``): the answers
are ``google.longrunning.Operation`` messages, to follow with any Operations client.

.. code-block:: python

    async with Client("127.0.0.1:50051") as client:
        ops = await client.submit_many(
            Submission("resize", ResizeInput(count=n), priority=10) for n in (1, 2, 3)
        )
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from google.longrunning import operations_pb2
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from . import _connect
from .v1 import metadata_pb2, tasks_pb2, tasks_pb2_grpc


@dataclasses.dataclass
class Submission:
    """One task to submit: its kind, its input message, and what the server may be asked
    besides (each as ``SubmitTaskRequest`` documents it)."""

    kind: str
    input: Message
    #: AIP-155 idempotency key: a repeat returns the same operation.
    request_id: str = ""
    #: Higher runs first, from -100 to 100.
    priority: int = 0
    #: While an operation of the kind with this key is not done, it is the answer.
    unique_key: str = ""
    #: At most this many attempts (0: the kind's; never more than the kind allows).
    max_attempts: int = 0
    #: Operations of the kind with the same key share its limit per key (``max_per_key``).
    concurrency_key: str = ""
    #: The operation ends DEADLINE_EXCEEDED if not done this long after submission.
    timeout: datetime.timedelta | None = None
    #: The operation stays queued until then (an aware datetime).
    not_before: datetime.datetime | None = None

    def request(self) -> Any:
        """The ``SubmitTaskRequest`` it is."""
        packed = any_pb2.Any()
        packed.Pack(self.input)
        request = tasks_pb2.SubmitTaskRequest(
            kind=self.kind,
            input=packed,
            request_id=self.request_id,
            priority=self.priority,
            unique_key=self.unique_key,
            concurrency_key=self.concurrency_key,
        )
        if self.max_attempts:
            request.retry_policy.CopyFrom(metadata_pb2.RetryPolicy(max_attempts=self.max_attempts))
        if self.timeout is not None:
            timeout = duration_pb2.Duration()
            timeout.FromTimedelta(self.timeout)
            request.timeout.CopyFrom(timeout)
        if self.not_before is not None:
            not_before = timestamp_pb2.Timestamp()
            not_before.FromDatetime(self.not_before)
            request.not_before.CopyFrom(not_before)
        return request


class Client:
    """A connection to an oprun server's TaskService (``target`` as for
    :class:`oprun.Worker`: ``host:port``, ``http://…`` or ``https://…``)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
    ) -> None:
        self._channel = _connect.channel(target, root_certificates)
        self._metadata = _connect.call_metadata(token)
        self._tasks = tasks_pb2_grpc.TaskServiceStub(self._channel)

    async def submit(self, submission: Submission, *, timeout: float = 30) -> operations_pb2.Operation:
        """Submits one task; the operation it became (or the one its request id or unique key
        names). Raises ``grpc.aio.AioRpcError`` with the server's code and message."""
        operation: operations_pb2.Operation = await self._tasks.SubmitTask(
            submission.request(), metadata=self._metadata, timeout=timeout
        )
        return operation

    async def submit_many(
        self, submissions: Iterable[Submission], *, timeout: float = 60
    ) -> list[operations_pb2.Operation]:
        """Submits up to 1,000 tasks in one call: all are created or none. One operation per
        submission, in order. An error that one submission caused names it
        (``requests[i]: …``), and then none was created."""
        request = tasks_pb2.BatchSubmitTasksRequest(requests=[s.request() for s in submissions])
        response = await self._tasks.BatchSubmitTasks(request, metadata=self._metadata, timeout=timeout)
        return list(response.operations)

    async def close(self) -> None:
        """Closes the connection."""
        await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
