"""oprun against Google's stock Python long-running-operations client.

Every test drives the real `oprun serve` binary through google-api-core (OperationsClient,
operation.from_gapic futures, page iterators) or the stock googleapis-common-protos stubs,
and asserts what a user of those libraries observes. Only SubmitTask uses oprun's own
generated stub, because starting work is oprun-specific.
"""

import functools
import time

import grpc
import pytest
from google.api_core import exceptions, operation, page_iterator
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2
from oprun.v1 import metadata_pb2, tasks_pb2

State = metadata_pb2.OperationMetadata.State
SLEEP_FILTER = 'kind = "sleep" AND done = true'
METADATA_URL = "type.googleapis.com/oprun.v1.OperationMetadata"
SLEEP_OUTPUT_URL = "type.googleapis.com/oprun.v1.SleepOutput"


# -- helpers ---------------------------------------------------------------------------------


def metadata_of(op):
    """Unpacks Operation.metadata as oprun.v1.OperationMetadata, failing if it is not one."""
    md = metadata_pb2.OperationMetadata()
    assert op.HasField("metadata"), f"operation {op.name} has no metadata"
    assert op.metadata.Unpack(md), f"metadata of {op.name} is {op.metadata.type_url}, not OperationMetadata"
    return md


def future_of(op, ops_client):
    """The api-core future a generated GAPIC client would hand out for a SubmitTask call."""
    return operation.from_gapic(
        op, ops_client, tasks_pb2.SleepOutput, metadata_type=metadata_pb2.OperationMetadata
    )


def poll(fetch, accept, what, timeout=20.0, interval=0.05):
    """Calls fetch() every `interval` s until accept(value) is true; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fetch()
        if accept(last):
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last seen:\n{last}")
        time.sleep(interval)


def cancel_and_wait(op_name, ops_client):
    """Cleanup for long sleeps: cancel, then wait until the operation is done."""
    ops_client.cancel_operation(op_name)
    poll(lambda: ops_client.get_operation(op_name), lambda o: o.done, f"{op_name} to finish after cancel")


def list_names(iterator):
    return [op.name for op in iterator]


# -- tests -----------------------------------------------------------------------------------


def test_future_from_gapic_resolves_to_sleep_output(submit_sleep, ops_client):
    """A stock `operation.from_gapic` future over a SubmitTask operation resolves: result() is
    the kind's SleepOutput, metadata is a SUCCEEDED OperationMetadata with full progress, and
    the operation is named operations/{id}."""
    op = submit_sleep(0.3, 3)
    assert op.name.startswith("operations/"), op.name
    future = future_of(op, ops_client)

    result = future.result(timeout=30)

    assert isinstance(result, tasks_pb2.SleepOutput)
    assert result.steps_done == 3
    assert future.done() is True
    assert future.exception() is None
    assert future.cancelled() is False
    assert future.operation.name == op.name
    assert future.operation.name.startswith("operations/")
    md = future.metadata
    assert isinstance(md, metadata_pb2.OperationMetadata)
    assert md.kind == "sleep"
    assert md.state == State.SUCCEEDED
    assert (md.progress.completed, md.progress.total) == (3, 3)
    assert md.attempt >= 1
    assert md.HasField("create_time")


def test_metadata_shows_progress_while_running(submit_sleep, ops_client):
    """While a task runs, GetOperation's metadata shows state RUNNING and a partial progress
    (0 < completed < total) that never goes backwards, and the operation is not done."""
    op = submit_sleep(3.0, 30)
    future = future_of(op, ops_client)
    seen = []

    def fetch():
        got = ops_client.get_operation(op.name)
        md = metadata_of(got)
        seen.append(md.progress.completed)
        if got.done:
            pytest.fail(f"{op.name} finished before a mid-run RUNNING state was seen: {md}")
        return got

    def mid_run(got):
        md = metadata_of(got)
        return md.state == State.RUNNING and 0 < md.progress.completed < md.progress.total

    running = poll(fetch, mid_run, f"{op.name} to report RUNNING with partial progress")
    md = metadata_of(running)
    assert md.kind == "sleep"
    assert md.progress.total == 30
    assert not running.done
    assert not running.HasField("response") and not running.HasField("error")
    assert seen == sorted(seen), f"progress went backwards: {seen}"

    # Clean up through the future, as a user would.
    assert future.cancel()
    with pytest.raises(exceptions.Cancelled):
        future.result(timeout=30)


def test_cancel_through_the_future(submit_sleep, ops_client):
    """future.cancel() on a running operation calls CancelOperation and returns True; the
    future then fails with Cancelled and reports cancelled(); the operation is kept (not
    deleted), done, error.code = CANCELLED, and its metadata says CANCELLED and
    requested_cancellation."""
    op = submit_sleep(60.0, 600)
    future = future_of(op, ops_client)

    assert future.cancel() is True  # the operation was not done, so the RPC was made

    with pytest.raises(exceptions.Cancelled) as caught:
        future.result(timeout=30)
    assert caught.value.grpc_status_code == grpc.StatusCode.CANCELLED
    assert future.cancelled() is True
    assert future.done() is True
    assert future.cancel() is False  # api-core: already done, no RPC

    got = ops_client.get_operation(op.name)  # still there: cancel does not delete
    assert got.done
    assert got.HasField("error") and not got.HasField("response")
    assert got.error.code == code_pb2.CANCELLED
    md = metadata_of(got)
    assert md.state == State.CANCELLED
    assert md.requested_cancellation is True
    assert md.progress.completed < 600


def test_failed_task_raises_its_message(submit_sleep, ops_client):
    """A task that fails (fail_message="boom") makes future.result() raise a GoogleAPICallError
    whose message is the task's, not a cancellation; exception() returns it; the metadata
    says FAILED."""
    op = submit_sleep(0.1, 1, fail_message="boom")
    future = future_of(op, ops_client)

    with pytest.raises(exceptions.GoogleAPICallError) as caught:
        future.result(timeout=30)

    err = caught.value
    assert "boom" in err.message
    assert not isinstance(err, exceptions.Cancelled)
    assert err.grpc_status_code not in (None, grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)
    assert future.exception() is not None
    assert future.exception() is err
    assert future.cancelled() is False
    assert future.operation.error.code not in (code_pb2.OK, code_pb2.CANCELLED)
    assert future.metadata.state == State.FAILED


def test_list_operations_pages_without_repeats(submit_sleep, ops_client):
    """ListOperations with a filter returns every matching operation exactly once through
    api-core's page iterator: with page_size 7, 25 operations take several pages (no item
    repeated, none over the size, none lost); the stock list_operations works with both
    "operations" and "" as the collection name, and the filter is honoured."""
    submitted = [submit_sleep(0.0, 1) for _ in range(25)]
    futures = [future_of(op, ops_client) for op in submitted]
    for f in futures:
        assert f.result(timeout=30).steps_done == 1
    want = {op.name for op in submitted}
    assert len(want) == 25, "SubmitTask returned a repeated operation name"

    # The stock client's own call (its signature has no page_size: the server default applies).
    for collection in ("operations", ""):
        listed_ops = list(ops_client.list_operations(collection, SLEEP_FILTER))
        names = [op.name for op in listed_ops]
        assert len(names) == len(set(names)), f"list_operations({collection!r}) repeated items"
        assert want <= set(names), f"list_operations({collection!r}) lost {sorted(want - set(names))}"
        for op in listed_ops:
            assert op.done, f"filter done = true returned unfinished {op.name}"
            assert metadata_of(op).kind == "sleep"

    # The same api-core GRPCIterator that OperationsClient.list_operations builds, with
    # page_size set in the request (a field the stock sync client cannot set).
    iterator = page_iterator.GRPCIterator(
        client=None,
        method=functools.partial(ops_client.operations_stub.ListOperations, timeout=10),
        request=operations_pb2.ListOperationsRequest(name="operations", filter=SLEEP_FILTER, page_size=7),
        items_field="operations",
    )
    pages = [[op.name for op in page] for page in iterator.pages]
    assert len(pages) >= 4, f"25+ items with page_size 7 came in {len(pages)} page(s)"
    assert all(len(p) <= 7 for p in pages), [len(p) for p in pages]
    names = [n for p in pages for n in p]
    assert len(names) == len(set(names)), "an operation appeared on two pages"
    assert want <= set(names), f"paging lost {sorted(want - set(names))}"


def test_delete_and_not_found(submit_sleep, ops_client):
    """DeleteOperation on a done operation removes it: GetOperation then raises NotFound and
    it is no longer listed. An unknown id is NotFound; a name that is not operations/{id} is
    InvalidArgument."""
    op = submit_sleep(0.0, 1)
    future_of(op, ops_client).result(timeout=30)

    assert ops_client.delete_operation(op.name) is None
    with pytest.raises(exceptions.NotFound):
        ops_client.get_operation(op.name)
    assert op.name not in list_names(ops_client.list_operations("operations", SLEEP_FILTER))

    with pytest.raises(exceptions.NotFound):
        ops_client.get_operation("operations/does-not-exist")
    with pytest.raises(exceptions.InvalidArgument):
        ops_client.get_operation("bogus")


def test_delete_unfinished_operation_is_refused(submit_sleep, ops_client):
    """oprun refuses to delete an unfinished operation with FAILED_PRECONDITION (cancel
    first), and the operation is left as it was."""
    op = submit_sleep(60.0, 600)
    try:
        with pytest.raises(exceptions.FailedPrecondition):
            ops_client.delete_operation(op.name)
        assert not ops_client.get_operation(op.name).done
    finally:
        cancel_and_wait(op.name, ops_client)


def test_any_type_urls(submit_sleep, ops_client):
    """Every Any uses type.googleapis.com/<full name>: metadata is
    type.googleapis.com/oprun.v1.OperationMetadata from submit to done, and the sleep
    response is type.googleapis.com/oprun.v1.SleepOutput."""
    op = submit_sleep(0.1, 1)
    assert op.metadata.type_url == METADATA_URL

    future = future_of(op, ops_client)
    future.result(timeout=30)
    done = ops_client.get_operation(op.name)
    assert done.metadata.type_url == METADATA_URL
    assert done.response.type_url == SLEEP_OUTPUT_URL
    assert future.operation.response.type_url == SLEEP_OUTPUT_URL


def test_errors_carry_error_info(ops_client):
    """Errors are well formed for api-core: the rich status (grpc-status-details-bin), if any,
    agrees with the call's code and message (else grpcio-status raises ValueError instead of
    the typed exception), carries a google.rpc.ErrorInfo with an upper-case reason and a
    domain, and the message names what was wrong."""
    with pytest.raises(exceptions.NotFound) as caught:
        ops_client.get_operation("operations/does-not-exist")
    err = caught.value
    assert "does-not-exist" in err.message
    assert err.reason, f"NotFound carries no ErrorInfo: {err!r}"
    assert err.reason == err.reason.upper()
    assert err.domain

    with pytest.raises(exceptions.InvalidArgument) as caught:
        ops_client.get_operation("bogus")
    err = caught.value
    assert err.message
    assert err.reason and err.reason == err.reason.upper()
    assert err.domain


def test_wait_operation_answers_before_the_callers_deadline(submit_sleep, channel, ops_client):
    """WaitOperation through the stock googleapis-common-protos stub: with a request timeout
    longer than the call's deadline it answers OK with the not-yet-done operation before the
    deadline; on an operation that finishes it returns the done operation with its response."""
    stub = operations_pb2_grpc.OperationsStub(channel)
    long_op = submit_sleep(60.0, 600)
    try:
        started = time.monotonic()
        got = stub.WaitOperation(
            operations_pb2.WaitOperationRequest(name=long_op.name, timeout=duration_pb2.Duration(seconds=30)),
            timeout=2.0,
        )
        assert time.monotonic() - started < 2.0
        assert got.name == long_op.name
        assert not got.done
    finally:
        cancel_and_wait(long_op.name, ops_client)

    short_op = submit_sleep(0.3, 3)
    got = stub.WaitOperation(
        operations_pb2.WaitOperationRequest(name=short_op.name, timeout=duration_pb2.Duration(seconds=20)),
        timeout=30.0,
    )
    assert got.done
    out = tasks_pb2.SleepOutput()
    assert got.response.Unpack(out)
    assert out.steps_done == 3
