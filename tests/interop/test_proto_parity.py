"""oprun's hand-written google/* protos against the stock googleapis-common-protos ones.

oprun serves google.longrunning.Operations from its own copy of the public protos
(proto/google/**). Stock clients encode and decode with Google's definitions, so every
message, field number, type, oneof, enum value, RPC and HTTP rule that a client relies on
must be identical. These tests need no server.
"""

import importlib.resources
import pathlib

import pytest
from google.api import annotations_pb2
from google.longrunning import operations_pb2
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
PROTO = REPO / "proto"

# Files whose every message/enum/service must match the stock file exactly.
EXACT = {
    "google/longrunning/operations.proto": operations_pb2,
    "google/rpc/status.proto": status_pb2,
    "google/rpc/code.proto": code_pb2,
}
# Files of which oprun may carry a subset; what it carries must match.
SUBSET = {
    "google/rpc/error_details.proto": error_details_pb2,
}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """FileDescriptorProtos compiled from proto/google/** (descriptor set only, no Python)."""
    out = tmp_path_factory.mktemp("parity") / "ours.pb"
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    files = [f for f in [*EXACT, *SUBSET] if (PROTO / f).is_file()]
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO}", f"-I{well_known}",
        f"--descriptor_set_out={out}", *files,
    ])
    assert rc == 0, f"protoc could not compile {files} from {PROTO}"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def stock(module):
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def _field_sig(msg, f):
    oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    return (
        f.name,
        descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
        descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
        f.type_name.lstrip("."),
        oneof,
        f.proto3_optional,
    )


def messages(fdp):
    """{full message name: {field number: signature}}, nested messages included."""
    out = {}

    def walk(prefix, msgs):
        for m in msgs:
            full = f"{prefix}.{m.name}"
            out[full] = {f.number: _field_sig(m, f) for f in m.field}
            walk(full, m.nested_type)

    walk(fdp.package, fdp.message_type)
    return out


def enums(fdp):
    out = {}

    def walk(prefix, msgs):
        for m in msgs:
            for e in m.enum_type:
                out[f"{prefix}.{m.name}.{e.name}"] = {v.number: v.name for v in e.value}
            walk(f"{prefix}.{m.name}", m.nested_type)

    for e in fdp.enum_type:
        out[f"{fdp.package}.{e.name}"] = {v.number: v.name for v in e.value}
    walk(fdp.package, fdp.message_type)
    return out


def services(fdp):
    out = {}
    for s in fdp.service:
        for m in s.method:
            http = annotations_pb2.http
            rule = m.options.Extensions[http] if m.options.HasExtension(http) else None
            out[f"{fdp.package}.{s.name}/{m.name}"] = (
                m.input_type.lstrip("."),
                m.output_type.lstrip("."),
                m.client_streaming,
                m.server_streaming,
                rule.SerializeToString(deterministic=True) if rule is not None else None,
            )
    return out


def extensions(fdp):
    return {
        (x.extendee.lstrip("."), x.number): (x.name, x.type_name.lstrip("."))
        for x in fdp.extension
    }


@pytest.mark.parametrize("path", sorted(EXACT))
def test_google_protos_match_stock_exactly(ours, path):
    """The named proto/google file has exactly the stock package, messages (field numbers,
    names, types, labels, oneofs), enum values, RPCs (types, streaming, HTTP rules) and
    extensions, so a stock client's bytes mean the same thing to oprun."""
    assert path in ours, f"proto/{path} is missing"
    mine, theirs = ours[path], stock(EXACT[path])
    assert mine.package == theirs.package
    assert messages(mine) == messages(theirs)
    assert enums(mine) == enums(theirs)
    assert services(mine) == services(theirs)
    assert extensions(mine) == extensions(theirs)


@pytest.mark.parametrize("path", sorted(SUBSET))
def test_google_error_details_are_a_stock_subset(ours, path):
    """Every error-detail message oprun defines exists in the stock file with the same full
    name, and every field it has matches the stock field of that number, so clients unpack
    oprun's details into the stock classes."""
    if path not in ours:
        pytest.skip(f"proto/{path} not present")
    mine, theirs = messages(ours[path]), messages(stock(SUBSET[path]))
    for name, fields in mine.items():
        assert name in theirs, f"{name} is not a stock message"
        for number, sig in fields.items():
            assert theirs[name].get(number) == sig, f"{name} field {number}: {sig} vs stock {theirs[name].get(number)}"
