"""A property-based run of schemathesis against the server's own /openapi.json.

Runs the venv's `st` CLI (schemathesis 4.x) on the session's server: every operation of the
document gets generated requests (valid and invalid), and each response must not be a 5xx,
must have a status code, content type and body the document declares. Bounded by
--max-examples per operation (a few hundred requests in all). Only 127.0.0.1 is contacted:
the schema is read from the server and --url pins the base URL to it.

Named so that it runs last: it submits operations of its own (random inputs), which the
cleanup below cancels, and must not take the task slots of other tests.

Environment: OPRUN_SCHEMATHESIS_MAX_EXAMPLES (default 20), OPRUN_SCHEMATHESIS_SEED (default a
fixed seed, so a failure reproduces; set another to explore).
"""

import os
import pathlib
import subprocess
import sys
import time

from google.api_core import exceptions

ST = pathlib.Path(sys.executable).with_name("st")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = os.environ.get("OPRUN_SCHEMATHESIS_MAX_EXAMPLES", "20")
SEED = os.environ.get("OPRUN_SCHEMATHESIS_SEED", "4242")
RUN_TIMEOUT_S = 300
# Given with --config-file, so no schemathesis.toml of the checkout or its parents applies.
# Server-sent-event routes (WatchService) answer 200 and keep streaming (WatchOperations never
# ends by itself); schemathesis reads such a stream until the request timeout, so theirs is
# short, or every valid watch request would cost the full 10 s.
CONFIG = """\
[[operations]]
include-path-regex = ':watch$'
request-timeout = 1.0
"""
OUTPUT_TAIL_LINES = 300


def test_schemathesis_openapi_run(http_url, tmp_path, ops_client):
    """`st run <server>/openapi.json --checks ...` exits 0."""
    assert ST.is_file(), f"schemathesis CLI not found at {ST} (is requirements.txt installed?)"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    argv = [
        str(ST), "--config-file", str(config), "--no-color",
        "run", f"{http_url}/openapi.json",
        "--url", http_url,
        "--checks", CHECKS,
        "--max-examples", MAX_EXAMPLES,
        "--seed", SEED,
        "--workers", "1",
        "--request-timeout", "10",
        "--generation-database", "none",
    ]
    log = tmp_path / "schemathesis.log"
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        output = proc.stdout.decode("utf-8", "replace")
        code = proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode("utf-8", "replace") + f"\n(killed after {RUN_TIMEOUT_S} s)"
        code = "timeout"
    finally:
        cancel_unfinished(ops_client)
    elapsed = time.monotonic() - started
    log.write_text(output)
    tail = "\n".join(output.splitlines()[-OUTPUT_TAIL_LINES:])
    assert code == 0, (
        f"schemathesis exited {code} after {elapsed:.0f} s\n$ {' '.join(argv)}\n"
        f"(full output: {log}; last {OUTPUT_TAIL_LINES} lines:)\n{tail}"
    )


def cancel_unfinished(ops_client):
    """Cancels whatever the run left running (sleeps with random durations, snapshots)."""
    try:
        running = [op.name for op in ops_client.list_operations("operations", "done = false")]
    except exceptions.GoogleAPICallError:
        return  # cleanup must never hide the run's own result
    for name in running:
        try:
            ops_client.cancel_operation(name)
        except exceptions.GoogleAPICallError:
            pass  # it may have finished meanwhile
