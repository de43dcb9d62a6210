#!/usr/bin/env bash
# Wire-compatibility test: drives a built `oprun` binary with Google's stock Python clients
# (google-api-core's OperationsClient and operation futures, its REST operations client, the
# grpc health and reflection clients, schemathesis on /openapi.json) plus stubs generated
# from proto/oprun/v1/*.proto.
#
# Usage: tests/interop/run.sh [extra pytest args...]      (from any directory)
#        tests/interop/run.sh --setup-only               (venv + stubs only, no binary needed)
# Environment:
#   OPRUN_BIN    the server binary (default: $REPO/target/debug/oprun; build it with
#                `cargo build --bin oprun`)
#   OPRUN_VENV   the Python virtualenv to create/reuse (default: $REPO/target/interop-venv)
#   PYTHON       the interpreter that creates the venv (default: python3; CPython 3.11 is
#                what requirements.txt is pinned and checked for)
# The exit code is pytest's.
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd -- "$HERE/../.." && pwd -P)"
VENV="${OPRUN_VENV:-$REPO/target/interop-venv}"
[[ "$VENV" == /* ]] || VENV="$PWD/$VENV"
PYTHON="${PYTHON:-python3}"

log() { printf 'interop: %s\n' "$*" >&2; }
die() { printf 'interop: error: %s\n' "$*" >&2; exit 2; }

# Resolve OPRUN_BIN against the caller's cwd before anything changes directory.
OPRUN_BIN="${OPRUN_BIN:-$REPO/target/debug/oprun}"
case "$OPRUN_BIN" in
  /*) ;;
  *) OPRUN_BIN="$PWD/$OPRUN_BIN" ;;
esac
export OPRUN_BIN

SETUP_ONLY=0
if [[ "${1:-}" == "--setup-only" ]]; then
  SETUP_ONLY=1
  shift
fi

# 1. The virtualenv (created once, reused afterwards; a half-made one is made again).
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3.11 (or set PYTHON)"
  if [[ -d "$VENV" && ! -f "$VENV/pyvenv.cfg" && -n "$(ls -A -- "$VENV")" ]]; then
    die "$VENV exists, is not empty and is not a virtualenv; refusing to touch it (set OPRUN_VENV)"
  fi
  log "creating virtualenv at $VENV"
  mkdir -p "$(dirname -- "$VENV")"
  "$PYTHON" -m venv --clear "$VENV" && "$VENV/bin/python" -m pip --version >/dev/null 2>&1 \
    || die "could not create a working virtualenv with '$PYTHON -m venv' at $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"

# 2. The pinned packages, skipped when the stamp matches requirements.txt's hash.
REQ="$HERE/requirements.txt"
STAMP="$VENV/.oprun-interop-requirements.sha256"
want="$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$REQ")"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
  log "installing $REQ into $VENV"
  rm -f "$STAMP"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ"
  printf '%s\n' "$want" >"$STAMP"
fi

# 3. Python stubs for proto/oprun/v1 only; google/* comes from googleapis-common-protos at
#    run time (-I proto only lets protoc resolve the imports). Regenerated every run so they
#    always match the protos; written to a temporary directory and swapped in whole.
GEN="$HERE/gen"
TMPGEN="$(mktemp -d "$HERE/.gen.XXXXXX")"
trap 'rm -rf -- "$TMPGEN"' EXIT
shopt -s nullglob
protos=("$REPO"/proto/oprun/v1/*.proto)
shopt -u nullglob
(( ${#protos[@]} > 0 )) || die "no .proto files under $REPO/proto/oprun/v1"
"$PY" -m grpc_tools.protoc -I "$REPO/proto" \
  --python_out="$TMPGEN" --grpc_python_out="$TMPGEN" "${protos[@]}"
rm -rf -- "$GEN"
mv -- "$TMPGEN" "$GEN"
trap - EXIT

if (( SETUP_ONLY )); then
  log "setup done: venv $VENV, stubs in $GEN"
  exit 0
fi

# 4. The tests. exec: pytest's exit code is the script's.
if [[ ! -f "$OPRUN_BIN" || ! -x "$OPRUN_BIN" ]]; then
  die "server binary not found or not executable: $OPRUN_BIN
  build it first:   (cd $REPO && cargo build --bin oprun)
  or point OPRUN_BIN at an existing oprun binary."
fi
cd -- "$REPO"
exec "$PY" -m pytest -q tests/interop "$@"
