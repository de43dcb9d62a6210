"""oprun's worker protocol (``oprun.v1.WorkerService``): its message classes, built from the
embedded descriptor set in a pool of the SDK's own, and the calls, made over a grpc.aio
channel without generated stubs."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ._descriptors import DESCRIPTOR_SET

_POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET).file:
    _POOL.Add(_file)


def message(full_name: str) -> Any:
    """The class of a message of the protocol (or a type it uses), by its full name."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


KindDeclaration = message("oprun.v1.KindDeclaration")
OpenSessionRequest = message("oprun.v1.OpenSessionRequest")
WorkerSession = message("oprun.v1.WorkerSession")
StreamAssignmentsRequest = message("oprun.v1.StreamAssignmentsRequest")
WorkerEvent = message("oprun.v1.WorkerEvent")
Assignment = message("oprun.v1.Assignment")
PollAssignmentsRequest = message("oprun.v1.PollAssignmentsRequest")
PollAssignmentsResponse = message("oprun.v1.PollAssignmentsResponse")
ReportProgressRequest = message("oprun.v1.ReportProgressRequest")
ReportProgressResponse = message("oprun.v1.ReportProgressResponse")
CompleteAssignmentRequest = message("oprun.v1.CompleteAssignmentRequest")
CloseSessionRequest = message("oprun.v1.CloseSessionRequest")
Empty = message("google.protobuf.Empty")
FileDescriptorSet = message("google.protobuf.FileDescriptorSet")
AnyMessage = message("google.protobuf.Any")
Duration = message("google.protobuf.Duration")

_SERVICE = "/oprun.v1.WorkerService/"


class WorkerStub:
    """The WorkerService's calls on a channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        def unary(method: str, request: Any, response: Any) -> Any:
            return channel.unary_unary(
                _SERVICE + method,
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        self.OpenSession = unary("OpenSession", OpenSessionRequest, WorkerSession)
        self.PollAssignments = unary("PollAssignments", PollAssignmentsRequest, PollAssignmentsResponse)
        self.ReportProgress = unary("ReportProgress", ReportProgressRequest, ReportProgressResponse)
        self.CompleteAssignment = unary("CompleteAssignment", CompleteAssignmentRequest, Empty)
        self.CloseSession = unary("CloseSession", CloseSessionRequest, Empty)
        self.StreamAssignments = channel.unary_stream(
            _SERVICE + "StreamAssignments",
            request_serializer=StreamAssignmentsRequest.SerializeToString,
            response_deserializer=WorkerEvent.FromString,
        )
