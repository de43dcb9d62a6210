"""oprun's REST/JSON gateway against Google's stock REST operations client and plain HTTP.

google-api-core's `AbstractOperationsClient` over its stock `OperationsRestTransport` (HTTP/1.1,
proto3 JSON, google-auth's AuthorizedSession with anonymous credentials) drives Get, List,
Cancel and Delete unchanged. Two things are given to that transport explicitly, both because
of the library, not of oprun:

- `http_options`: the transport's built-in URL templates are the Cloud-style
  `/v1/{name=**}/operations` (List) and `/v1/{name=**/operations/*}` (Get, Delete, Cancel),
  which cannot address a top-level `operations/{id}`. The rules given are read from the
  google.api.http options of the stock google/longrunning/operations.proto (the ones oprun
  serves); `test_stock_default_templates_cannot_address_top_level_names` pins this down.
- `host="http://..."`: `url_scheme="http"` is accepted but not passed on to the base transport
  in google-api-core 2.44.0, so a bare host would be spoken to over https.

Raw `requests` calls check what the stock client does not look at: the Google JSON error
shape, SubmitTask over REST, the probes, /openapi.json and /metrics.
"""

import time

import google.auth.credentials
import pytest
import requests
from google.api import annotations_pb2
from google.api_core import exceptions
from google.api_core.operations_v1 import AbstractOperationsClient
from google.api_core.operations_v1.transports.rest import OperationsRestTransport
from google.longrunning import operations_pb2
from google.protobuf import json_format
from google.rpc import code_pb2
from google.rpc import error_details_pb2
from oprun.v1 import metadata_pb2, tasks_pb2
from oprun.v1 import snapshot_pb2

State = metadata_pb2.OperationMetadata.State
SLEEP_INPUT_URL = "type.googleapis.com/oprun.v1.SleepInput"
METADATA_URL = "type.googleapis.com/oprun.v1.OperationMetadata"
HTTP_TIMEOUT_S = 10.0
# Imported for their side effect: json_format resolves an Any's "@type" in the default pool,
# so every type that can appear in an Operation's metadata, response or error details must be
# registered there (as in any real client of these APIs).
JSON_ANY_TYPES = (error_details_pb2, metadata_pb2, snapshot_pb2, tasks_pb2)


# -- helpers and fixtures --------------------------------------------------------------------


def stock_http_options():
    """The google.api.http rules of the stock google/longrunning/operations.proto (from
    googleapis-common-protos), in the shape OperationsRestTransport's http_options= takes."""
    options = {}
    service = operations_pb2.DESCRIPTOR.services_by_name["Operations"]
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb in (None, "custom"):
            continue  # WaitOperation has no HTTP rule
        binding = {"method": verb, "uri": getattr(rule, verb)}
        if rule.body:
            binding["body"] = rule.body
        options[method.full_name] = [binding]
    return options


def rest_transport(http_base, **kwargs):
    return OperationsRestTransport(
        # The scheme is in the host: url_scheme alone is dropped by google-api-core 2.44.0.
        host=f"http://{http_base}",
        credentials=google.auth.credentials.AnonymousCredentials(),
        url_scheme="http",
        **kwargs,
    )


@pytest.fixture(scope="module")
def rest_client(http_base):
    """google-api-core's stock REST operations client, with the stock proto's HTTP rules."""
    return AbstractOperationsClient(transport=rest_transport(http_base, http_options=stock_http_options()))


@pytest.fixture(scope="module")
def http():
    """A plain requests session (no proxies or .netrc from the environment)."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def sleep_body(duration, steps, **extra):
    """A SubmitTaskRequest for the sleep kind, in proto3 JSON."""
    return {
        "kind": "sleep",
        "input": {"@type": SLEEP_INPUT_URL, "duration": duration, "steps": steps},
        **extra,
    }


def submit_rest(http, http_url, duration, steps, **extra):
    """POST /v1/tasks:submit; returns (raw JSON, parsed google.longrunning.Operation)."""
    reply = http.post(f"{http_url}/v1/tasks:submit", json=sleep_body(duration, steps, **extra), timeout=HTTP_TIMEOUT_S)
    assert reply.status_code == 200, f"POST /v1/tasks:submit: {reply.status_code} {reply.text}"
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    raw = reply.json()
    op = operations_pb2.Operation()
    json_format.ParseDict(raw, op, ignore_unknown_fields=False)  # strict proto3 JSON
    return raw, op


def metadata_of(op):
    md = metadata_pb2.OperationMetadata()
    assert op.HasField("metadata"), f"operation {op.name} has no metadata"
    assert op.metadata.Unpack(md), f"metadata of {op.name} is {op.metadata.type_url}"
    return md


def wait_done(rest_client, name, timeout=30.0):
    """Polls the stock REST client's get_operation until the operation is done."""
    deadline = time.monotonic() + timeout
    while True:
        op = rest_client.get_operation(name, timeout=HTTP_TIMEOUT_S)
        if op.done:
            return op
        if time.monotonic() >= deadline:
            pytest.fail(f"{name} not done after {timeout:.0f} s; last seen:\n{op}")
        time.sleep(0.05)


def cancel_and_wait(rest_client, name):
    rest_client.cancel_operation(name, timeout=HTTP_TIMEOUT_S)
    wait_done(rest_client, name)


def error_payload(err):
    """The Google JSON error body behind an api-core exception raised by the REST transport."""
    assert err.response is not None, f"{err!r} carries no HTTP response"
    body = err.response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def assert_google_error(reply, http_status, status):
    """`reply` is Google's JSON error: {"error": {"code", "message", "status", "details"?}}."""
    assert reply.status_code == http_status, f"{reply.status_code} {reply.text}"
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "status"} <= set(error), error
    assert set(error) <= {"code", "message", "status", "details"}, error
    assert error["code"] == http_status, error
    assert error["status"] == status, error
    assert isinstance(error["message"], str) and error["message"], error
    for detail in error.get("details", []):
        assert isinstance(detail, dict) and detail.get("@type", "").startswith("type.googleapis.com/"), error
    return error


# -- the stock REST client -------------------------------------------------------------------


def test_stock_default_templates_cannot_address_top_level_names(http_base):
    """Why `http_options` is given: with its built-in templates the stock transport refuses
    `operations/{id}` before sending anything (it wants `<parent>/operations/<id>`), and its
    List goes to `/v1/{name}/operations`, which for name "operations" is
    `/v1/operations/operations`, a GetOperation of id "operations" on oprun (404)."""
    client = AbstractOperationsClient(transport=rest_transport(http_base))
    for call in (client.get_operation, client.delete_operation, client.cancel_operation):
        with pytest.raises(ValueError):
            call("operations/abc", timeout=HTTP_TIMEOUT_S)
    with pytest.raises(exceptions.NotFound) as caught:
        list(client.list_operations("operations", "", timeout=HTTP_TIMEOUT_S))
    assert "/v1/operations/operations" in str(caught.value)
    assert stock_http_options() == {
        "google.longrunning.Operations.ListOperations": [{"method": "get", "uri": "/v1/{name=operations}"}],
        "google.longrunning.Operations.GetOperation": [{"method": "get", "uri": "/v1/{name=operations/**}"}],
        "google.longrunning.Operations.DeleteOperation": [{"method": "delete", "uri": "/v1/{name=operations/**}"}],
        "google.longrunning.Operations.CancelOperation": [
            {"method": "post", "uri": "/v1/{name=operations/**}:cancel", "body": "*"}
        ],
    }


def test_submit_over_rest_then_get_with_the_stock_client(http, http_url, rest_client, ops_client):
    """POST /v1/tasks:submit answers a proto3-JSON Operation (lowerCamelCase, Any with @type);
    the stock REST client's get_operation follows it to done with a SleepOutput response, and
    sees the same operation gRPC's GetOperation does."""
    raw, op = submit_rest(http, http_url, "0.2s", 2)
    assert op.name.startswith("operations/"), raw
    assert raw["metadata"]["@type"] == METADATA_URL, raw
    assert "createTime" in raw["metadata"], f"metadata is not lowerCamelCase proto3 JSON: {raw}"
    assert metadata_of(op).kind == "sleep"

    done = wait_done(rest_client, op.name)
    assert done.name == op.name
    assert not done.HasField("error"), done
    out = tasks_pb2.SleepOutput()
    assert done.response.Unpack(out), done.response.type_url
    assert out.steps_done == 2
    md = metadata_of(done)
    assert md.state == State.SUCCEEDED
    assert (md.progress.completed, md.progress.total) == (2, 2)

    over_grpc = ops_client.get_operation(op.name)
    assert over_grpc.done and over_grpc.name == done.name
    assert metadata_of(over_grpc) == md
    grpc_out = tasks_pb2.SleepOutput()
    assert over_grpc.response.Unpack(grpc_out) and grpc_out == out


def test_rest_json_matches_grpc(http, http_url, submit_sleep, ops_client):
    """GET /v1/operations/{id} is exactly the gRPC GetOperation's message in proto3 JSON:
    parsed strictly (unknown fields refused) it equals what gRPC returns."""
    op = submit_sleep(0.0, 1)
    deadline = time.monotonic() + 30
    while not (grpc_done := ops_client.get_operation(op.name)).done:
        assert time.monotonic() < deadline, f"{op.name} not done within 30 s"
        time.sleep(0.05)
    reply = http.get(f"{http_url}/v1/{op.name}", timeout=HTTP_TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    raw = reply.json()
    assert raw["name"] == op.name and raw["done"] is True, raw
    assert raw["response"]["@type"] == "type.googleapis.com/oprun.v1.SleepOutput", raw
    rest_op = operations_pb2.Operation()
    json_format.ParseDict(raw, rest_op, ignore_unknown_fields=False)
    assert rest_op.name == grpc_done.name and rest_op.done == grpc_done.done
    assert metadata_of(rest_op) == metadata_of(grpc_done)
    rest_out, grpc_out = tasks_pb2.SleepOutput(), tasks_pb2.SleepOutput()
    assert rest_op.response.Unpack(rest_out) and grpc_done.response.Unpack(grpc_out)
    assert rest_out == grpc_out


def test_submit_request_id_is_idempotent_over_rest(http, http_url, rest_client):
    """AIP-155 over REST: the same requestId twice returns the same operation."""
    _, first = submit_rest(http, http_url, "0s", 1, requestId="interop-rest-idempotency-1")
    _, again = submit_rest(http, http_url, "0s", 1, requestId="interop-rest-idempotency-1")
    assert again.name == first.name
    wait_done(rest_client, first.name)


def test_list_filters_and_pages_with_the_stock_client(http, http_url, rest_client):
    """The stock client's list_operations(name="operations", filter_, page_size) pages through
    every matching operation exactly once (pageSize/pageToken as query parameters), each page
    no larger than asked, and the filter is honoured."""
    submitted = [submit_rest(http, http_url, "0s", 1)[1].name for _ in range(7)]
    for name in submitted:
        wait_done(rest_client, name)

    pager = rest_client.list_operations(
        name="operations", filter_='kind = "sleep"', page_size=3, timeout=HTTP_TIMEOUT_S
    )
    pages = [list(page.operations) for page in pager.pages]
    sizes = [len(p) for p in pages]
    assert len(pages) >= 3, f"7+ operations with page_size 3 came in pages of {sizes}"
    assert all(n <= 3 for n in sizes), sizes
    listed = [op for page in pages for op in page]
    names = [op.name for op in listed]
    assert len(names) == len(set(names)), "an operation appeared twice"
    assert set(submitted) <= set(names), f"paging lost {sorted(set(submitted) - set(names))}"
    for op in listed:
        assert metadata_of(op).kind == "sleep", op

    # A filter that matches nothing: an empty list, not an error.
    nothing = rest_client.list_operations(name="operations", filter_='kind = "no-such-kind"', timeout=HTTP_TIMEOUT_S)
    assert list(nothing) == []


def test_cancel_with_the_stock_client(http, http_url, rest_client):
    """cancel_operation (POST .../{id}:cancel, no body) on a running sleep returns None; the
    operation then ends done with error.code 1 (CANCELLED) and is kept."""
    _, op = submit_rest(http, http_url, "60s", 600)
    try:
        assert rest_client.cancel_operation(op.name, timeout=HTTP_TIMEOUT_S) is None
        done = wait_done(rest_client, op.name)
        assert done.HasField("error") and not done.HasField("response"), done
        assert done.error.code == code_pb2.CANCELLED == 1
        md = metadata_of(done)
        assert md.state == State.CANCELLED
        assert md.requested_cancellation is True
    finally:
        if not rest_client.get_operation(op.name, timeout=HTTP_TIMEOUT_S).done:
            cancel_and_wait(rest_client, op.name)


def test_cancel_accepts_an_empty_json_object(http, http_url, rest_client):
    """POST /v1/operations/{id}:cancel with body {} (what other clients send) answers {}."""
    _, op = submit_rest(http, http_url, "60s", 600)
    reply = http.post(f"{http_url}/v1/{op.name}:cancel", json={}, timeout=HTTP_TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}
    assert wait_done(rest_client, op.name).error.code == code_pb2.CANCELLED


def test_delete_with_the_stock_client(http, http_url, rest_client):
    """delete_operation of a done operation returns None; get_operation then raises NotFound
    (HTTP 404, status NOT_FOUND) and the operation is no longer listed."""
    _, op = submit_rest(http, http_url, "0s", 1)
    wait_done(rest_client, op.name)

    assert rest_client.delete_operation(op.name, timeout=HTTP_TIMEOUT_S) is None
    with pytest.raises(exceptions.NotFound) as caught:
        rest_client.get_operation(op.name, timeout=HTTP_TIMEOUT_S)
    assert caught.value.code == 404
    assert error_payload(caught.value)["status"] == "NOT_FOUND"
    listed = rest_client.list_operations(name="operations", filter_='kind = "sleep"', timeout=HTTP_TIMEOUT_S)
    assert op.name not in [o.name for o in listed]


def test_unknown_id_is_not_found_with_error_info(rest_client):
    """An unknown id is NotFound; the message names it, and api-core finds the
    google.rpc.ErrorInfo in the JSON error's details (reason upper-case, a domain)."""
    with pytest.raises(exceptions.NotFound) as caught:
        rest_client.get_operation("operations/does-not-exist", timeout=HTTP_TIMEOUT_S)
    err = caught.value
    assert "does-not-exist" in err.message
    assert err.reason, f"no ErrorInfo in the details: {error_payload(err)}"
    assert err.reason == err.reason.upper()
    assert err.domain


@pytest.mark.parametrize("name", ["operations/bad.id", "operations/a/b"])
def test_malformed_name_is_bad_request(rest_client, name):
    """A name that fits the URL template but is not operations/{id} is HTTP 400 with status
    INVALID_ARGUMENT. (api-core's REST transport picks the exception class from the HTTP
    status, so it is exceptions.BadRequest; the gRPC status is in the JSON body.)"""
    with pytest.raises(exceptions.BadRequest) as caught:
        rest_client.get_operation(name, timeout=HTTP_TIMEOUT_S)
    err = caught.value
    assert err.code == 400
    assert error_payload(err)["status"] == "INVALID_ARGUMENT"
    assert "name" in err.message


def test_delete_of_an_unfinished_operation_is_refused(http, http_url, rest_client):
    """Deleting a running operation is HTTP 400 with status FAILED_PRECONDITION, and the
    operation is left running."""
    _, op = submit_rest(http, http_url, "60s", 600)
    try:
        with pytest.raises(exceptions.BadRequest) as caught:
            rest_client.delete_operation(op.name, timeout=HTTP_TIMEOUT_S)
        assert caught.value.code == 400
        assert error_payload(caught.value)["status"] == "FAILED_PRECONDITION"
        assert not rest_client.get_operation(op.name, timeout=HTTP_TIMEOUT_S).done
    finally:
        cancel_and_wait(rest_client, op.name)


# -- raw HTTP --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body, http_status, status",
    [
        ("GET", "/v1/operations/does-not-exist", None, 404, "NOT_FOUND"),
        ("POST", "/v1/operations/does-not-exist:cancel", None, 404, "NOT_FOUND"),
        ("DELETE", "/v1/operations/does-not-exist", None, 404, "NOT_FOUND"),
        ("GET", "/v1/operations/a%20b", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/operations?pageSize=-1", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/operations?pageToken=zzz", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/operations?filter=kind%20%3D", None, 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/tasks:submit", b"{", 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/tasks:submit", b'{"kind":"no-such-kind"}', 400, "INVALID_ARGUMENT"),
    ],
)
def test_errors_are_google_json_errors(http, http_url, method, path, body, http_status, status):
    """Every error is Google's JSON error: {"error": {"code": <HTTP status>, "message",
    "status": <gRPC code name>, "details": [Any...]}}, as application/json, with the standard
    gRPC-to-HTTP status."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    reply = http.request(method, f"{http_url}{path}", data=body, headers=headers, timeout=HTTP_TIMEOUT_S)
    assert_google_error(reply, http_status, status)


def test_watch_operation_streams_server_sent_events(http, http_url):
    """GET /v1/operations/{id}:watch (WatchService.WatchOperation, server streaming) answers
    text/event-stream: one `data:` line of proto3 JSON Operation per change, ending after the
    one with done = true."""
    _, op = submit_rest(http, http_url, "0.3s", 3)
    seen = []
    with http.get(f"{http_url}/v1/{op.name}:watch", stream=True, timeout=HTTP_TIMEOUT_S) as reply:
        assert reply.status_code == 200, reply.text
        assert reply.headers.get("content-type", "").startswith("text/event-stream"), reply.headers
        for line in reply.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue  # blank separators, comments (keep-alives), other fields
            event = operations_pb2.Operation()
            json_format.Parse(line[len("data:"):].strip(), event, ignore_unknown_fields=False)
            seen.append(event)
        # Leaving the loop means the server ended the stream (else the read times out).
    assert seen, "no event before the stream ended"
    assert all(e.name == op.name for e in seen)
    assert seen[-1].done, "the stream ended before done = true"
    assert [e.done for e in seen].count(True) == 1, "events after the done one"
    out = tasks_pb2.SleepOutput()
    assert seen[-1].response.Unpack(out) and out.steps_done == 3


def test_task_kinds_over_rest(http, http_url):
    """GET /v1/taskKinds (TaskService.ListTaskKinds's rule in proto/oprun/v1/tasks.proto) lists
    the sleep kind with its message types, as a strict ListTaskKindsResponse."""
    reply = http.get(f"{http_url}/v1/taskKinds", timeout=HTTP_TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    kinds = tasks_pb2.ListTaskKindsResponse()
    json_format.ParseDict(reply.json(), kinds, ignore_unknown_fields=False)
    by_name = {k.name: k for k in kinds.kinds}
    assert "sleep" in by_name, reply.text
    assert by_name["sleep"].input_type == "oprun.v1.SleepInput"
    assert by_name["sleep"].response_type == "oprun.v1.SleepOutput"


def test_probes(http, http_url):
    """/healthz and /readyz answer 200 while the server is up and its store answers."""
    for path in ("/healthz", "/readyz"):
        reply = http.get(f"{http_url}{path}", timeout=HTTP_TIMEOUT_S)
        assert reply.status_code == 200, f"{path}: {reply.status_code} {reply.text}"


def test_openapi_document(http, http_url):
    """/openapi.json is an OpenAPI 3.0 JSON document that has the REST routes."""
    reply = http.get(f"{http_url}/openapi.json", timeout=HTTP_TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    doc = reply.json()
    assert isinstance(doc.get("openapi"), str) and doc["openapi"].startswith("3."), doc.get("openapi")
    assert doc.get("info", {}).get("title"), doc.get("info")
    paths = doc.get("paths", {})
    assert "get" in paths.get("/v1/operations", {}), sorted(paths)
    assert "post" in paths.get("/v1/tasks:submit", {}), sorted(paths)
    assert "get" in paths.get("/v1/taskKinds", {}), sorted(paths)
    single = [p for p in paths if p.startswith("/v1/operations/{") and ":" not in p.rsplit("}", 1)[-1]]
    assert single and {"get", "delete"} <= set(paths[single[0]]), sorted(paths)
    assert any(p.startswith("/v1/operations/{") and p.endswith(":cancel") and "post" in paths[p] for p in paths), sorted(paths)


def test_metrics(http, http_url, submit_sleep, ops_client):
    """/metrics parses with Prometheus' own client library's OpenMetrics parser, and holds the
    operation, store and gRPC server metrics with the labels the README documents."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    op = submit_sleep(0.01, 1)
    deadline = time.monotonic() + 10
    while not ops_client.get_operation(op.name).done:
        assert time.monotonic() < deadline, f"{op.name} not done within 10 s"
        time.sleep(0.05)
    reply = http.get(f"{http_url}/metrics", timeout=HTTP_TIMEOUT_S)
    assert reply.status_code == 200, f"{reply.status_code} {reply.text[:500]}"
    content_type = reply.headers.get("content-type", "")
    assert content_type.startswith("application/openmetrics-text"), content_type
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    for name, kind in [
        ("oprun_operations_submitted", "counter"),
        ("oprun_operations_finished", "counter"),
        ("oprun_operations_running", "gauge"),
        ("oprun_operations_queued", "gauge"),
        ("oprun_operation_queue_seconds", "histogram"),
        ("oprun_operation_run_seconds", "histogram"),
        ("oprun_store_commit_seconds", "histogram"),
        ("oprun_store_batch_size", "histogram"),
        ("grpc_server_started", "counter"),
        ("grpc_server_handled", "counter"),
        ("grpc_server_handling_seconds", "histogram"),
    ]:
        assert name in families, f"{name} missing from {sorted(families)}"
        assert families[name].type == kind, (name, families[name].type)
    submitted = [s for s in families["oprun_operations_submitted"].samples if s.labels.get("kind") == "sleep"]
    assert submitted and submitted[0].value >= 1, submitted
    finished = [
        s for s in families["oprun_operations_finished"].samples
        if s.labels == {"kind": "sleep", "state": "SUCCEEDED"} and s.name.endswith("_total")
    ]
    assert finished and finished[0].value >= 1, families["oprun_operations_finished"].samples
    handled = {
        (s.labels["grpc_service"], s.labels["grpc_method"], s.labels["grpc_code"])
        for s in families["grpc_server_handled"].samples
    }
    assert ("google.longrunning.Operations", "WaitOperation", "OK") in handled, handled
