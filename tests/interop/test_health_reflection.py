"""oprun's grpc.health.v1 and gRPC server reflection against the stock Python clients.

Health: grpcio-health-checking's generated HealthStub (Check, Watch).
Reflection v1alpha: grpcio-reflection's ProtoReflectionDescriptorDatabase feeding a protobuf
DescriptorPool, the way reflection-driven tools (grpcurl-like clients) resolve services.
Reflection v1: grpcio-reflection 1.85.1 ships a v1alpha client only. grpc/reflection/v1's
messages are v1alpha's under another package name, field for field, so the v1alpha message
classes encode v1 requests byte for byte; the v1 test calls
/grpc.reflection.v1.ServerReflection/ServerReflectionInfo with them directly.
"""

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from oprun.v1 import tasks_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
RPC_TIMEOUT_S = 10.0

# Services that must be served, with RPCs each must have.
EXPECTED_SERVICES = {
    "google.longrunning.Operations": {
        "ListOperations", "GetOperation", "DeleteOperation", "CancelOperation", "WaitOperation",
    },
    "oprun.v1.TaskService": {"SubmitTask", "ListTaskKinds"},
    "oprun.v1.WatchService": {"WatchOperation", "WatchOperations"},
    "grpc.health.v1.Health": {"Check", "Watch"},
}
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


# -- health ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def health(channel):
    return health_pb2_grpc.HealthStub(channel)


@pytest.mark.parametrize(
    "service", ["", "google.longrunning.Operations", "oprun.v1.TaskService", "oprun.v1.WatchService"]
)
def test_health_check_serving(health, service):
    """Check answers SERVING for the whole server ("") and for each oprun service by name."""
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
    assert reply.status == SERVING, f"Check({service!r}) = {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"


def test_health_check_unknown_service_is_not_found(health):
    """Check of a service the server does not know fails with NOT_FOUND (grpc.health.v1)."""
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value


def test_health_watch_starts_with_serving(health):
    """Watch("") sends the current status, SERVING, at once."""
    stream = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
    try:
        first = next(stream)
    finally:
        stream.cancel()
    assert first.status == SERVING


# -- reflection v1alpha (the stock client) ---------------------------------------------------


@pytest.fixture(scope="module")
def reflected(channel):
    """(services listed, DescriptorPool backed by reflection v1alpha)."""
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    return services, descriptor_pool.DescriptorPool(db)


def assert_resolves(pool, services):
    """Every expected service resolves from `pool` with its RPCs, and every RPC's input and
    output message type resolves by name."""
    for name, rpcs in EXPECTED_SERVICES.items():
        if name not in services:
            continue  # reported by the caller's listing check
        service = pool.FindServiceByName(name)
        assert service.full_name == name
        methods = {m.name: m for m in service.methods}
        assert rpcs <= set(methods), f"{name} lacks {sorted(rpcs - set(methods))}"
        for method in methods.values():
            for message in (method.input_type, method.output_type):
                found = pool.FindMessageTypeByName(message.full_name)
                assert found.full_name == message.full_name


def test_reflection_v1alpha_lists_the_services(reflected):
    services, _ = reflected
    assert len(services) == len(set(services)), f"a service listed twice: {services}"
    missing = set(EXPECTED_SERVICES) - set(services)
    assert not missing, f"ListServices (v1alpha) lacks {sorted(missing)}; got {services}"


def test_reflection_v1alpha_resolves_every_service_and_message(reflected):
    """A DescriptorPool over ProtoReflectionDescriptorDatabase resolves every listed service
    (the imports they need come along), every RPC's messages, and oprun's task messages."""
    services, pool = reflected
    assert_resolves(pool, services)
    for service_name in services:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            pool.FindMessageTypeByName(method.input_type.full_name)
            pool.FindMessageTypeByName(method.output_type.full_name)
    for message in ("oprun.v1.SleepInput", "oprun.v1.SleepOutput", "oprun.v1.OperationMetadata"):
        assert pool.FindMessageTypeByName(message).full_name == message


def test_reflection_serves_the_compiled_tasks_proto(reflected):
    """The oprun/v1/tasks.proto served by reflection is the one the stubs were generated from
    (compared as FileDescriptorProtos, json_name aside: protoc fills it in descriptor sets)."""
    _, pool = reflected
    served = descriptor_pb2.FileDescriptorProto()
    pool.FindFileByName("oprun/v1/tasks.proto").CopyToProto(served)
    local = descriptor_pb2.FileDescriptorProto()
    tasks_pb2.DESCRIPTOR.CopyToProto(local)
    assert without_json_names(served) == without_json_names(local)


def test_reflection_v1alpha_unknown_symbol(reflected):
    """An unknown symbol is not found. The reflection protocol answers it in-stream with an
    ErrorResponse (error_code NOT_FOUND), which the stock database turns into KeyError;
    tonic-reflection (0.14) instead ends the stream with status NOT_FOUND, which reaches the
    caller as grpc.RpcError. Either is accepted here as long as it says NOT_FOUND."""
    _, pool = reflected
    with pytest.raises((KeyError, grpc.RpcError)) as caught:
        pool.FindMessageTypeByName("no.such.Message")
    if isinstance(caught.value, grpc.RpcError):
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value


def without_json_names(file_proto):
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file_proto)
    stack = list(copy.message_type)
    while stack:
        message = stack.pop()
        for field in [*message.field, *message.extension]:
            field.ClearField("json_name")
        stack.extend(message.nested_type)
    for field in copy.extension:
        field.ClearField("json_name")
    return copy


# -- reflection v1 (raw ServerReflectionInfo) ------------------------------------------------


def reflect_v1(channel, requests):
    """Sends `requests` on one /grpc.reflection.v1.ServerReflection/ServerReflectionInfo
    stream and returns the responses (one per request, in order)."""
    call = channel.stream_stream(
        V1_METHOD,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter(requests), timeout=RPC_TIMEOUT_S))
    assert len(responses) == len(requests), f"{len(requests)} requests, {len(responses)} responses"
    for request, response in zip(requests, responses):
        assert response.original_request == request, response
    return responses


def test_reflection_v1_lists_and_resolves(channel, reflected):
    """Reflection v1 answers ListServices like v1alpha; FileContainingSymbol for each expected
    service and FileByFilename for their imports give the FileDescriptorProtos from which a
    fresh DescriptorPool resolves each service, its RPCs and their messages."""
    v1alpha_services, _ = reflected
    Request = reflection_pb2.ServerReflectionRequest
    listed = reflect_v1(channel, [Request(list_services="")])[0]
    assert listed.WhichOneof("message_response") == "list_services_response", listed
    services = [s.name for s in listed.list_services_response.service]
    missing = set(EXPECTED_SERVICES) - set(services)
    assert not missing, f"ListServices (v1) lacks {sorted(missing)}; got {services}"
    # Each version lists the same application services (tonic-reflection lists only its own
    # version's reflection service, so grpc.reflection.* may differ).
    def apps(names):
        return sorted(n for n in names if not n.startswith("grpc.reflection."))

    assert apps(services) == apps(v1alpha_services), "v1 and v1alpha list different services"
    assert "grpc.reflection.v1.ServerReflection" in services, services

    files = {}  # name -> (FileDescriptorProto, its serialized bytes)

    def take(replies):
        for reply in replies:
            assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
            for raw in reply.file_descriptor_response.file_descriptor_proto:
                file_proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files[file_proto.name] = (file_proto, raw)

    take(reflect_v1(channel, [Request(file_containing_symbol=name) for name in EXPECTED_SERVICES]))
    # Then the imports it did not send along, by file name, as a reflection client does.
    while True:
        missing = sorted({d for f, _ in files.values() for d in f.dependency} - set(files))
        if not missing:
            break
        take(reflect_v1(channel, [Request(file_by_filename=name) for name in missing]))
    pool = descriptor_pool.DescriptorPool()
    add_in_dependency_order(pool, files)
    assert_resolves(pool, services)


def test_reflection_v1_unknown_symbol(channel):
    """An unknown symbol on reflection v1 is NOT_FOUND: an in-stream ErrorResponse (the
    protocol's way) or, from tonic-reflection (0.14), the stream's status."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Service")
    try:
        (reply,) = reflect_v1(channel, [request])
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    else:
        assert reply.WhichOneof("message_response") == "error_response", reply
        assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], reply


def add_in_dependency_order(pool, files):
    """Adds the files (name -> (FileDescriptorProto, bytes)) to `pool`, each after its
    imports; fails on an import reflection did not send."""
    added = set()

    def add(name, chain=()):
        if name in added:
            return
        assert name in files, f"reflection did not send {name}, imported by {' <- '.join(chain)}"
        file_proto, raw = files[name]
        for dep in file_proto.dependency:
            add(dep, (name, *chain))
        pool.AddSerializedFile(raw)
        added.add(name)

    for name in files:
        add(name)
