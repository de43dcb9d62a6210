#!/usr/bin/env bash
# The Python SDK's tests: a fresh venv (target/sdk-venv), the SDK installed into it as a user
# installs it (`pip install ./python`), its generated descriptors checked for freshness, its
# lint and types checked (ruff, mypy --strict), then pytest against a built oprun binary
# ($OPRUN_BIN, default target/debug/oprun).
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd -- "$HERE/.." && pwd -P)"
VENV="${OPRUN_SDK_VENV:-$REPO/target/sdk-venv}"
PYTHON="${PYTHON:-python3}"
OPRUN_BIN="${OPRUN_BIN:-$REPO/target/debug/oprun}"
case "$OPRUN_BIN" in /*) ;; *) OPRUN_BIN="$PWD/$OPRUN_BIN" ;; esac
export OPRUN_BIN

rm -rf -- "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check --no-input -r "$HERE/tests/requirements.txt"
# Not editable: what `pip install './python[client]'` gives a user (the README's snippets
# use the client stubs).
"$PY" -m pip install --quiet --disable-pip-version-check --no-input "$HERE[client]"
"$PY" "$HERE/generate.py" --check
cd -- "$HERE"
"$PY" -m ruff check --no-cache .
"$PY" -m ruff format --check --no-cache .
"$PY" -m mypy --no-incremental --cache-dir=/dev/null
exec "$PY" -m pytest -q tests "$@"
