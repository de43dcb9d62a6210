"""Fixtures for the oprun wire-compatibility tests.

One real `oprun serve` process is started per test session (on 127.0.0.1, gRPC and HTTP
ports the server picks, a fresh data dir); the tests talk to it only through Google's stock
Python client code (gRPC and REST), the stock health/reflection clients, plain HTTP, and
the stubs that run.sh generates from proto/oprun/v1 into ./gen.
"""

import collections
import ctypes
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import grpc
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
GEN = HERE / "gen"

if not (GEN / "oprun" / "v1" / "tasks_pb2.py").is_file():
    raise pytest.UsageError(
        f"generated stubs are missing in {GEN}; run tests/interop/run.sh "
        "(or tests/interop/run.sh --setup-only) to create them"
    )
sys.path.insert(0, str(GEN))

from google.api_core import operations_v1  # noqa: E402
from google.protobuf import any_pb2, duration_pb2  # noqa: E402
from oprun.v1 import tasks_pb2, tasks_pb2_grpc  # noqa: E402

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
READY_LINE = re.compile(r"^oprun listening on 127\.0\.0\.1:(?P<port>[0-9]{1,5})$")
# The second stdout line, printed when the HTTP surface is on (conftest always turns it on).
HTTP_READY_LINE = re.compile(r"^oprun http listening on 127\.0\.0\.1:(?P<port>[0-9]{1,5})$")

# Every HTTP request of the tests goes to 127.0.0.1: never through a proxy from the
# environment (requests, google-auth's AuthorizedSession and schemathesis all honour it).
os.environ["NO_PROXY"] = ",".join(
    x for x in ("127.0.0.1", "localhost", os.environ.get("NO_PROXY", "")) if x
)
os.environ["no_proxy"] = os.environ["NO_PROXY"]


def oprun_bin():
    """The server binary: $OPRUN_BIN, default target/debug/oprun."""
    return pathlib.Path(os.environ.get("OPRUN_BIN") or REPO / "target" / "debug" / "oprun")


def _die_with_parent():
    """Child-side (Linux): get SIGTERM if pytest dies, so no server outlives the run."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class OprunServer:
    """A running `oprun serve` child process and a channel to it."""

    def __init__(self, binary, data_dir, stderr_path):
        self.binary = pathlib.Path(binary)
        self.data_dir = pathlib.Path(data_dir)
        self.stderr_path = pathlib.Path(stderr_path)
        self.proc = None
        self.port = None
        self.http_port = None
        self.channel = None
        self.exit_code_while_running = None  # set if the server died during the tests
        self._stopping = False
        self._stdout_lines = queue.Queue()

    # -- start ---------------------------------------------------------------------------
    def start(self):
        argv = [
            str(self.binary), "serve",
            # One port for gRPC and HTTP; the second stdout line repeats it.
            "--listen", "127.0.0.1:0",
            "--data-dir", str(self.data_dir),
        ]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(self.data_dir.parent),
            # Own process group, so a wrapper script and its children are stopped together.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        threading.Thread(target=self._read_stdout, name="oprun-stdout", daemon=True).start()

        deadline = time.monotonic() + READY_TIMEOUT_S
        self.port = self._read_port(argv, deadline, READY_LINE, "first", "oprun listening on 127.0.0.1:PORT")
        self.http_port = self._read_port(
            argv, deadline, HTTP_READY_LINE, "second", "oprun http listening on 127.0.0.1:PORT"
        )

        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            ready = False
        else:
            ready = True
        if not ready:
            self._fail_start(f"the server said it listens on port {self.port}, but no connection within 10 s")
        threading.Thread(target=self._watch, name="oprun-watch", daemon=True).start()

    def _read_port(self, argv, deadline, pattern, which, want):
        """The port named by the next stdout line, which must match `pattern`."""
        try:
            line = self._stdout_lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = TimeoutError
        if line is TimeoutError:
            self._fail_start(
                f"`{' '.join(argv)}` printed no {which} ready line ('{want}') on stdout "
                f"within {READY_TIMEOUT_S:.0f} s"
            )
        if line is None:
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = "still running"
            self._fail_start(
                f"`{' '.join(argv)}` closed stdout before printing its {which} ready line "
                f"('{want}'; exit code: {code})"
            )
        match = pattern.match(line.rstrip("\r\n"))
        if not match:
            self._fail_start(f"`{' '.join(argv)}`: expected {which} stdout line '{want}', got {line!r}")
        port = int(match.group("port"))
        if not 0 < port < 65536:
            self._fail_start(f"ready line names an impossible port: {line!r}")
        return port

    def _read_stdout(self):
        for raw in self.proc.stdout:  # keeps draining, so the pipe never fills up
            self._stdout_lines.put(raw.decode("utf-8", "replace"))
        self._stdout_lines.put(None)

    def _watch(self):
        code = self.proc.wait()
        if not self._stopping:
            # Fail fast: api-core retries UNAVAILABLE for up to 600 s; a closed channel
            # makes every further call fail at once instead.
            self.exit_code_while_running = code
            self.channel.close()

    def _fail_start(self, why):
        self.stop()
        pytest.fail(
            f"oprun server did not start: {why}\n"
            f"--- last lines of its stderr ({self.stderr_path}) ---\n{self.stderr_tail()}",
            pytrace=False,
        )

    # -- stop ----------------------------------------------------------------------------
    def stop(self):
        """SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit code."""
        self._stopping = True
        code = None
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    warnings.warn(
                        f"oprun did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM; killed it"
                    )
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait()
            code = self.proc.returncode
            self._signal_group(signal.SIGKILL)  # leftovers of a wrapper, if any
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
        return code

    def _signal_group(self, sig):
        """Signals the server's own process group (started with start_new_session)."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stderr_tail(self, lines=40):
        try:
            with open(self.stderr_path, "rb") as f:
                tail = collections.deque(f, maxlen=lines)
        except OSError as e:
            return f"(cannot read {self.stderr_path}: {e})"
        text = b"".join(tail).decode("utf-8", "replace")
        return text if text.strip() else "(empty)"


_SERVER = None


@pytest.fixture(scope="session")
def oprun_server(tmp_path_factory):
    """The running server (session-wide)."""
    global _SERVER
    binary = oprun_bin()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"oprun server binary not found or not executable: {binary}\n"
            f"Build it with `cargo build --bin oprun` (in {REPO}) or set OPRUN_BIN to an oprun binary.",
            pytrace=False,
        )
    base = tmp_path_factory.mktemp("oprun")
    data_dir = base / "data"
    data_dir.mkdir()
    server = OprunServer(binary, data_dir, base / "oprun-stderr.log")
    _SERVER = server
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def channel(oprun_server):
    return oprun_server.channel


@pytest.fixture(scope="session")
def http_base(oprun_server):
    """The HTTP surface's address, "127.0.0.1:PORT" (REST, /openapi.json, probes, metrics)."""
    return f"127.0.0.1:{oprun_server.http_port}"


@pytest.fixture(scope="session")
def http_url(http_base):
    """The HTTP surface's base URL, "http://127.0.0.1:PORT" (no trailing slash)."""
    return f"http://{http_base}"


@pytest.fixture(scope="session")
def ops_client(channel):
    """google-api-core's stock gRPC OperationsClient (its constructor takes only a channel)."""
    return operations_v1.OperationsClient(channel)


@pytest.fixture(scope="session")
def tasks_stub(channel):
    return tasks_pb2_grpc.TaskServiceStub(channel)


@pytest.fixture(scope="session")
def submit_sleep(tasks_stub):
    """submit_sleep(seconds, steps, fail_message="") -> google.longrunning.Operation."""

    def submit(seconds, steps, fail_message=""):
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(int(round(seconds * 1e9)))
        sleep_input = tasks_pb2.SleepInput(duration=duration, steps=steps, fail_message=fail_message)
        packed = any_pb2.Any()
        packed.Pack(sleep_input)  # type.googleapis.com/oprun.v1.SleepInput
        return tasks_stub.SubmitTask(tasks_pb2.SubmitTaskRequest(kind="sleep", input=packed), timeout=10)

    return submit


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure that involved the server, attach the tail of its stderr."""
    report = yield
    # Setup failures already carry the tail in their message.
    if report.when == "call" and report.failed and _SERVER is not None and _SERVER.proc is not None and "oprun_server" in item.fixturenames:
        text = _SERVER.stderr_tail()
        if _SERVER.exit_code_while_running is not None:
            text = f"THE SERVER EXITED DURING THE TESTS with code {_SERVER.exit_code_while_running}\n" + text
        report.sections.append(("oprun server stderr (tail)", text))
    return report
