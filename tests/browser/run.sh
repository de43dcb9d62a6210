#!/usr/bin/env bash
# Browser tests of the web dashboard: installs playwright-core from package-lock.json, then
# runs dashboard.test.mjs with node's test runner against the oprun binary in $OPRUN_BIN
# (default target/debug/oprun, relative to the repository root) and Debian's Chromium
# ($CHROMIUM, default /usr/bin/chromium). Screenshots land in target/browser-screenshots/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

OPRUN_BIN="${OPRUN_BIN:-target/debug/oprun}"
case "$OPRUN_BIN" in
  /*) ;;
  *) OPRUN_BIN="$root/$OPRUN_BIN" ;;
esac
export OPRUN_BIN

if [ ! -x "$OPRUN_BIN" ]; then
  echo "run.sh: no oprun binary at $OPRUN_BIN (build it first, e.g. cargo build --bin oprun)" >&2
  exit 1
fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "run.sh: no Chromium at ${CHROMIUM:-/usr/bin/chromium} (apt-get install chromium)" >&2
  exit 1
fi

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
cd "$root"
exec node --test --test-concurrency=1 tests/browser/
