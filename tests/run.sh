#!/usr/bin/env bash
# The whole test suite, as the README gives it: Rust unit, integration and doc tests, the
# wire-compatibility test that drives the real binary with Google's stock Python clients, and
# the dashboard in Debian's Chromium (tests/browser; needs the chromium package).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --bin oprun
cargo test --workspace
tests/interop/run.sh
tests/browser/run.sh
