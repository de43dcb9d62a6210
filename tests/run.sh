#!/usr/bin/env bash
# The whole test suite, as the README gives it: Rust unit, integration and doc tests, the
# wire-compatibility test that drives the real binary with Google's stock Python clients, the
# Python worker SDK (python/, installed into a venv of its own), and the dashboard in Debian's
# Chromium (tests/browser; needs the chromium package).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --bin oprun
# A failing test's own words are repeated last, where a log's tail shows them.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! cargo test --workspace 2>&1 | tee "$log"; then
  echo
  echo "==> why the failing tests failed"
  grep -E -A14 -- '^---- .* (stdout|stderr) ----$' "$log" | head -n 200 || true
  exit 1
fi
tests/interop/run.sh
python/run-tests.sh
tests/browser/run.sh
