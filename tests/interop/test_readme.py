"""A huge request field comes back as INVALID_ARGUMENT to a default client. (The README's
Python blocks run in python/tests, in a venv with the SDK installed as users install it.)"""

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc


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
