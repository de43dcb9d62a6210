#!/usr/bin/env bash
# The whole test suite, as the README gives it: Rust unit, integration and doc tests, the
# wire-compatibility test that drives the real binary with Google's stock Python clients, the
# Python worker SDK (python/, installed into a venv of its own), and the dashboard in Debian's
# Chromium (tests/browser; needs the chromium package).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --bin oprun
cargo test --workspace
tests/interop/run.sh
python/run-tests.sh
tests/browser/run.sh
