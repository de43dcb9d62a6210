"""Run oprun task kinds in Python: a :class:`Worker` declares kinds (their input and output
message classes, with the descriptors of their files), takes assignments from an oprun
server, reports progress, and completes each with the handler's result.

.. code-block:: python

    worker = Worker("127.0.0.1:50051")

    @worker.kind("resize", input=ResizeInput, output=ResizeOutput, retry_safe=True,
                 max_attempts=3, heartbeat_timeout=10, concurrency=4)
    async def resize(inp: ResizeInput, ctx: Context) -> ResizeOutput:
        for i in range(inp.count):
            if ctx.cancelled:
                raise asyncio.CancelledError()
            await ctx.progress(i, inp.count, unit="images", status=f"image {i}")
        return ResizeOutput(done=inp.count)

    asyncio.run(worker.run())

A handler may be a coroutine function or a plain function (run in a thread pool). Its
exceptions fail the attempt: :class:`Failure` chooses the code, ``asyncio.CancelledError``
ends a cancelled operation CANCELLED, anything else is UNKNOWN with its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import inspect
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, struct_pb2
from google.protobuf.message import Message

from . import _connect
from . import _protocol as proto

log = logging.getLogger("oprun.worker")

#: The least time between two progress reports of one assignment (seconds).
REPORT_EVERY = 0.25
#: How long shutdown lets running handlers finish (seconds).
DEFAULT_GRACE = 30.0
#: The longest a report or a completion call may take (seconds).
_CALL_TIMEOUT = 30.0
#: The pauses between attempts to open a session again: doubling up to the second.
_RECONNECT = (0.1, 5.0)

# google.rpc.Code values.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT = 0, 1, 2, 3
FAILED_PRECONDITION, ABORTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 9, 10, 12, 13, 14


class Failure(Exception):
    """Fails an attempt with a ``google.rpc`` code of the handler's choice. UNAVAILABLE (14),
    ABORTED (10) and RESOURCE_EXHAUSTED (8) are retried under the kind's ``max_attempts``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message


class _Done:
    """An awaitable that is already done: what :meth:`Context.progress` returns, so that it
    works awaited (in a coroutine) or not (in a thread)."""

    def __await__(self):  # type: ignore[no-untyped-def]
        if False:  # pragma: no cover - makes this a generator
            yield


class Context:
    """What a handler knows of its assignment, and how it reports."""

    def __init__(
        self,
        operation: str,
        attempt: int,
        deadline: datetime.datetime | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        #: The operation's name, ``operations/{id}``.
        self.operation = operation
        #: Which attempt this is, from 1.
        self.attempt = attempt
        #: When the operation ends DEADLINE_EXCEEDED (UTC), if it has a deadline.
        self.deadline = deadline
        self._loop = loop
        self._cancelled = asyncio.Event()
        self._changed = asyncio.Event()
        self._lock = threading.Lock()
        self._report: dict[str, Any] = {}
        # What the server was last told (at first nothing).
        self._sent: dict[str, Any] = {}

    @property
    def cancelled(self) -> bool:
        """Whether the operation's cancellation was asked for (or its deadline passed): stop,
        and raise ``asyncio.CancelledError`` (or return what was done)."""
        return self._cancelled.is_set()

    async def wait_cancelled(self) -> None:
        """Returns when cancellation is asked for."""
        await self._cancelled.wait()

    def progress(
        self,
        completed: int,
        total: int = 0,
        *,
        unit: str = "",
        status: str | None = None,
    ) -> Awaitable[None]:
        """Reports ``completed`` of ``total`` ``unit``\\ s (and a status message). Reports are
        sent coalesced, at most every quarter second; await it or not."""
        self._update(progress=(int(completed), int(total), unit), status=status)
        return _Done()

    def status(self, message: str) -> Awaitable[None]:
        """Sets the status message shown with the operation."""
        self._update(status=message)
        return _Done()

    def details(self, message: Message) -> Awaitable[None]:
        """Sets the kind's own progress message (its declared details type)."""
        self._update(details=message)
        return _Done()

    def _update(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                if value is not None:
                    self._report[key] = value
        self._loop.call_soon_threadsafe(self._changed.set)

    def _take(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._report)

    def _cancel(self) -> None:
        self._loop.call_soon_threadsafe(self._cancelled.set)


Handler = Callable[[Any, Context], Any | Awaitable[Any]]


@dataclasses.dataclass
class _Kind:
    name: str
    input: type[Message]
    output: type[Message]
    details: type[Message] | None
    handler: Handler
    retry_safe: bool
    max_attempts: int
    default_timeout: float | None
    heartbeat_timeout: float
    concurrency: int
    max_per_key: int


def _files_of(*classes: type[Message]) -> bytes:
    """The serialized FileDescriptorSet of the files defining ``classes``, dependencies first."""
    files: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(file: Any) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.append(proto)

    for cls in classes:
        visit(cls.DESCRIPTOR.file)
    return descriptor_pb2.FileDescriptorSet(file=files).SerializeToString()


async def _wait_any(timeout: float, *events: asyncio.Event) -> bool:
    """Waits up to ``timeout`` seconds for any of ``events``; whether one is set. (Not
    ``asyncio.wait_for``, which before Python 3.12 can swallow a cancellation that arrives as
    the awaited event is set.)"""
    if any(e.is_set() for e in events):
        return True
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return any(e.is_set() for e in events)


def _duration(seconds: float) -> Any:
    whole = int(seconds)
    return proto.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def _pack(message: Message) -> Any:
    return proto.AnyMessage(
        type_url="type.googleapis.com/" + message.DESCRIPTOR.full_name,
        value=message.SerializeToString(),
    )


class Worker:
    """Runs the kinds it is given in this process, for an oprun server.

    ``target`` is ``host:port`` (plaintext) or ``https://host:port`` (TLS, trusting
    ``root_certificates`` or the system's); ``token`` a bearer token with the ``worker`` role
    (or admin), when the server asks for one.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        *,
        name: str | None = None,
        root_certificates: bytes | None = None,
        grace: float = DEFAULT_GRACE,
        threads: int | None = None,
    ) -> None:
        self.target = target
        self.token = token
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.grace = grace
        self._root_certificates = root_certificates
        self._kinds: dict[str, _Kind] = {}
        self._threads = threads
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[str, Context] = {}
        self._executor: Any = None

    def kind(
        self,
        name: str,
        *,
        input: type[Message],
        output: type[Message],
        details: type[Message] | None = None,
        retry_safe: bool = False,
        max_attempts: int = 1,
        default_timeout: float | None = None,
        heartbeat_timeout: float = 30.0,
        concurrency: int = 1,
        max_per_key: int = 0,
    ) -> Callable[[Handler], Handler]:
        """Declares a kind whose handler the decorated function is. ``input`` and ``output``
        are message classes (``struct_pb2.Struct`` for JSON objects, which a handler may also
        return as a ``dict``); the worker sends the descriptors of their files.
        ``max_per_key`` (0: none) is how many operations of one concurrency key run at once
        over the whole cluster."""

        def register(handler: Handler) -> Handler:
            if name in self._kinds:
                raise ValueError(f"kind {name!r} is declared twice")
            self._kinds[name] = _Kind(
                name=name,
                input=input,
                output=output,
                details=details,
                handler=handler,
                retry_safe=retry_safe,
                max_attempts=max_attempts,
                default_timeout=default_timeout,
                heartbeat_timeout=float(heartbeat_timeout),
                concurrency=max(1, int(concurrency)),
                max_per_key=max(0, int(max_per_key)),
            )
            return handler

        return register

    def declarations(self) -> list[Any]:
        """The kinds as the session declares them."""
        out = []
        for k in self._kinds.values():
            classes = [k.input, k.output] + ([k.details] if k.details else [])
            declaration = proto.KindDeclaration(
                name=k.name,
                input_type=k.input.DESCRIPTOR.full_name,
                output_type=k.output.DESCRIPTOR.full_name,
                details_type=k.details.DESCRIPTOR.full_name if k.details else "",
                descriptors=proto.FileDescriptorSet.FromString(_files_of(*classes)),
                retry_safe=k.retry_safe,
                max_attempts=max(1, k.max_attempts),
                heartbeat_timeout=_duration(k.heartbeat_timeout),
                concurrency=k.concurrency,
                max_per_key=k.max_per_key,
            )
            if k.default_timeout is not None:
                declaration.default_timeout.CopyFrom(_duration(k.default_timeout))
            out.append(declaration)
        return out

    def stop(self) -> None:
        """Asks :meth:`run` to stop (as SIGINT or SIGTERM does); safe from any thread."""
        if self._stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _channel(self) -> grpc.aio.Channel:
        return _connect.channel(self.target, self._root_certificates)

    def _metadata(self) -> list[tuple[str, str]] | None:
        return _connect.call_metadata(self.token)

    async def run(self) -> None:
        """Runs until SIGINT or SIGTERM (or :meth:`stop`): opens a session, runs what it is
        given (opening a new session when one is lost), then lets what runs finish for up to
        the grace and closes its session, handing back what is left."""
        if not self._kinds:
            raise ValueError("no kind declared: decorate a handler with @worker.kind(...)")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._stop.set)
                installed.append(sig)
        executor = None
        if self._threads is not None:
            import concurrent.futures

            executor = concurrent.futures.ThreadPoolExecutor(self._threads)
        self._executor = executor
        declarations = self.declarations()
        pause = _RECONNECT[0]
        try:
            async with self._channel() as channel:
                stub = proto.WorkerStub(channel)
                while not self._stop.is_set():
                    try:
                        session = await stub.OpenSession(
                            proto.OpenSessionRequest(worker=self.name, kinds=declarations),
                            metadata=self._metadata(),
                        )
                    except grpc.aio.AioRpcError as e:
                        if e.code() in (
                            grpc.StatusCode.INVALID_ARGUMENT,
                            grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.UNAUTHENTICATED,
                        ):
                            raise
                        log.warning("cannot open a session (%s); trying again", e.details())
                        await self._pause(pause)
                        pause = min(pause * 2, _RECONNECT[1])
                        continue
                    pause = _RECONNECT[0]
                    log.info("worker session %s opened", session.name)
                    await self._serve(stub, session.name)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    async def _pause(self, seconds: float) -> None:
        assert self._stop is not None
        await _wait_any(seconds, self._stop)

    async def _serve(self, stub: proto.WorkerStub, session: str) -> None:
        """Runs one session's assignments until its stream ends or the worker stops."""
        assert self._stop is not None
        tasks: set[asyncio.Task[None]] = set()
        call = stub.StreamAssignments(
            proto.StreamAssignmentsRequest(session=session), metadata=self._metadata()
        )
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    read.cancel()
                    # Drain before the stream goes: the session outlives it.
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stub.CloseSession(
                            proto.CloseSessionRequest(name=session, drain=True),
                            metadata=self._metadata(),
                        )
                    call.cancel()
                    await self._drain(stub, session, tasks)
                    return
                try:
                    event: Any = read.result()
                except grpc.aio.AioRpcError as e:
                    log.warning("session %s lost (%s); opening another", session, e.details())
                    break
                if event is grpc.aio.EOF:
                    log.warning("session %s ended; opening another", session)
                    break
                which = event.WhichOneof("event")
                if which == "assignment":
                    task = asyncio.create_task(self._run_one(stub, event.assignment))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif which == "cancellation":
                    ctx = self._running.get(event.cancellation.name)
                    if ctx is not None:
                        ctx._cancel()
        finally:
            stop.cancel()
        # The session is gone: what it held is the server's to run again.
        for ctx in list(self._running.values()):
            ctx._cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, stub: proto.WorkerStub, session: str, tasks: set[asyncio.Task[None]]) -> None:
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.grace)
            if pending:
                log.warning(
                    "%d assignments still running after the %ss grace; handing them back",
                    len(pending),
                    self.grace,
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.CloseSession(
                proto.CloseSessionRequest(name=session, drain=False), metadata=self._metadata()
            )
        log.info("worker session %s closed", session)

    async def _run_one(self, stub: proto.WorkerStub, assignment: Any) -> None:
        """Runs one assignment: its handler, a reporter beside it, then the completion."""
        kind = self._kinds.get(assignment.kind)
        loop = asyncio.get_running_loop()
        deadline = (
            assignment.deadline.ToDatetime(tzinfo=datetime.timezone.utc)
            if assignment.HasField("deadline")
            else None
        )
        ctx = Context(assignment.name, assignment.attempt, deadline, loop)
        self._running[assignment.name] = ctx
        heartbeat = (
            assignment.heartbeat_timeout.seconds + assignment.heartbeat_timeout.nanos / 1e9
            if assignment.HasField("heartbeat_timeout")
            else 30.0
        )
        finished = asyncio.Event()
        reporter = asyncio.create_task(self._report(stub, assignment, ctx, heartbeat, finished))
        try:
            request = proto.CompleteAssignmentRequest(
                name=assignment.name, lease_token=assignment.lease_token
            )
            try:
                if kind is None:
                    raise Failure(UNIMPLEMENTED, f"this worker does not run kind {assignment.kind!r}")
                output = await self._call(kind, assignment, ctx)
                request.response.CopyFrom(_pack(output))
            except asyncio.CancelledError:
                if not ctx.cancelled:
                    raise
                request.error.code = CANCELLED
                request.error.message = "cancelled"
            except Failure as e:
                request.error.code = e.code if e.code != OK else UNKNOWN
                request.error.message = e.message
            except Exception as e:
                log.exception("handler of %s failed", assignment.name)
                request.error.code = UNKNOWN
                request.error.message = f"{type(e).__name__}: {e}"
            # The reporter stops by itself (a report it is sending goes first), then the last
            # words the server has not had, and the completion.
            finished.set()
            await reporter
            if ctx._take() != ctx._sent:
                await self._send_report(stub, assignment, ctx)
            await self._complete(stub, request)
        finally:
            finished.set()
            reporter.cancel()
            self._running.pop(assignment.name, None)

    async def _call(self, kind: _Kind, assignment: Any, ctx: Context) -> Message:
        """The handler's output for the assignment's input."""
        any_input = assignment.input
        expected = kind.input.DESCRIPTOR.full_name
        if any_input.type_url.rsplit("/", 1)[-1] != expected:
            raise Failure(INVALID_ARGUMENT, f"input of type {any_input.type_url}, not {expected}")
        inp = kind.input.FromString(any_input.value)
        output: Any
        if inspect.iscoroutinefunction(kind.handler):
            output = await kind.handler(inp, ctx)
        else:
            loop = asyncio.get_running_loop()
            output = await loop.run_in_executor(self._executor, kind.handler, inp, ctx)
        if isinstance(output, dict) and kind.output is struct_pb2.Struct:
            structure = struct_pb2.Struct()
            structure.update(output)
            output = structure
        if not isinstance(output, kind.output):
            raise Failure(
                INTERNAL,
                f"the handler returned {type(output).__name__}, not {kind.output.__name__}",
            )
        return output

    async def _report(
        self,
        stub: proto.WorkerStub,
        assignment: Any,
        ctx: Context,
        heartbeat: float,
        finished: asyncio.Event,
    ) -> None:
        """Until ``finished``: sends the handler's reports coalesced, and a heartbeat at least
        every third of the heartbeat timeout; cancels the handler when the server says so."""
        beat = max(heartbeat / 3, 0.1)
        while not finished.is_set():
            await _wait_any(beat, ctx._changed, finished)
            if ctx._changed.is_set() and not finished.is_set():
                # Let what follows a change come with it.
                await _wait_any(REPORT_EVERY, finished)
            if finished.is_set():
                return
            ctx._changed.clear()
            await self._send_report(stub, assignment, ctx)

    async def _send_report(self, stub: proto.WorkerStub, assignment: Any, ctx: Context) -> None:
        report = ctx._take()
        request = proto.ReportProgressRequest(name=assignment.name, lease_token=assignment.lease_token)
        if "progress" in report:
            completed, total, unit = report["progress"]
            request.progress.completed = completed
            request.progress.total = total
            request.progress.unit = unit
        if "status" in report:
            request.status_message = report["status"]
        if "details" in report:
            request.details.CopyFrom(_pack(report["details"]))
        try:
            answer = await stub.ReportProgress(request, metadata=self._metadata(), timeout=_CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                # The attempt is no longer this worker's.
                ctx._cancel()
            else:
                log.warning("a report of %s failed: %s", assignment.name, e.details())
            return
        ctx._sent = report
        if answer.cancel_requested:
            ctx._cancel()

    async def _complete(self, stub: proto.WorkerStub, request: Any) -> None:
        for attempt in range(5):
            try:
                await stub.CompleteAssignment(request, metadata=self._metadata(), timeout=_CALL_TIMEOUT)
                return
            except grpc.aio.AioRpcError as e:
                transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if e.code() in transient and attempt < 4:
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                log.warning("the completion of %s was refused: %s", request.name, e.details())
                return


__all__ = ["Context", "Failure", "Worker"]
