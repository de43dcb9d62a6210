"""The README's Python snippet runs unchanged against a real server (only the address is
replaced), and a huge request field comes back as INVALID_ARGUMENT to a default client."""

import re

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc

from conftest import REPO


def readme_python_blocks():
    """The README's python blocks marked `readme: python` (the Python SDK's worker program,
    marked `python-worker`, runs in python/tests with the SDK installed)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"<!-- readme: python \(.*?-->\n```python\n(.*?)```", text, flags=re.S)


def test_readme_python_snippet_runs(oprun_server):
    """Every ```python block of README.md, executed as written against the test server (the
    default addresses, gRPC 127.0.0.1:50051 and HTTP 127.0.0.1:8080, replaced by its own)."""
    blocks = readme_python_blocks()
    assert len(blocks) >= 3, "README.md has the gRPC, REST and reflection python blocks"
    for block in blocks:
        assert "127.0.0.1:50051" in block or "127.0.0.1:8080" in block, (
            "the snippet names a default address"
        )
        code = block.replace("127.0.0.1:50051", f"127.0.0.1:{oprun_server.port}")
        code = code.replace("127.0.0.1:8080", f"127.0.0.1:{oprun_server.http_port}")
        namespace = {"__name__": "readme_snippet"}
        exec(compile(code, "README.md (python block)", "exec"), namespace)


def test_a_huge_name_is_invalid_argument_to_a_default_client(channel):
    """Issue 6, item 6: a 1 MB name used to come back whole in grpc-message, and a default
    Python channel failed with RESOURCE_EXHAUSTED ("received metadata size exceeds hard limit")
    instead of seeing INVALID_ARGUMENT. (The stock Operations stub: google-api-core's
    OperationsClient would also copy the name into a routing header, which HTTP/2 refuses.)"""
    stub = operations_pb2_grpc.OperationsStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetOperation(
            operations_pb2.GetOperationRequest(name="operations/" + "x" * (1 << 20)), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert len(caught.value.details()) < 1024
    assert "bytes)" in caught.value.details()
