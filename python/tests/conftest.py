"""Fixtures of the SDK's tests: a real `oprun serve` (the binary in $OPRUN_BIN) on free
loopback ports, the test kinds' own proto (`resize_pb2`, generated here as a user generates
theirs), and worker processes running `worker_program.py`. The client side uses the stubs the
SDK ships (`oprun.v1`, google.* from googleapis-common-protos, as a stock Google client has
them)."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = os.environ.get("OPRUN_BIN", str(REPO / "target" / "debug" / "oprun"))

_GENERATED = pathlib.Path(tempfile.mkdtemp(prefix="oprun-sdk-tests-"))


def _generate() -> None:
    from grpc_tools import protoc

    status = protoc.main(
        [
            "protoc",
            f"-I{HERE / 'protos'}",
            f"--python_out={_GENERATED}",
            str(HERE / "protos" / "resize.proto"),
        ]
    )
    assert status == 0, "protoc failed on resize.proto"


_generate()
sys.path.insert(0, str(_GENERATED))
#: Where the generated modules are (for worker processes' PYTHONPATH).
GENERATED = _GENERATED


class Server:
    """`oprun serve` as a child process (gRPC and HTTP on its one port)."""

    def __init__(self, extra: list[str] | None = None, data_dir: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="oprun-sdk-server-")
        self.log_path = os.path.join(self.dir, "server.log")
        args = [
            BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir or os.path.join(self.dir, "data"),
        ] + (extra or [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPRUN_")}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.grpc = ""
        self.http = ""
        deadline = time.time() + 30
        assert self.proc.stdout is not None
        while not (self.grpc and self.http):
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("oprun serve exited:\n" + open(self.log_path).read())
            m = re.match(r"oprun listening on (\S+)", line)
            if m:
                self.grpc = m.group(1)
            m = re.match(r"oprun http listening on (\S+)", line)
            if m:
                self.http = "http://" + m.group(1)
            if time.time() > deadline:
                raise RuntimeError("oprun serve did not start")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.stop()


class WorkerProcess:
    """`worker_program.py` as a child process, configured by environment variables."""

    def __init__(self, server_addr: str, **settings: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="oprun-sdk-worker-")
        self.log_path = os.path.join(self.dir, "worker.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(GENERATED), str(HERE)])
        env["OPRUN_TARGET"] = server_addr
        env.update({f"WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "worker_program.py")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def text(self) -> str:
        return open(self.log_path, errors="replace").read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
