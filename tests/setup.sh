#!/usr/bin/env bash
# Installs everything the real-peer tests (tests/python) need, under
# <repo>/.cache/ (git-ignored):
#   .cache/venv  Python venv with the pinned tests/requirements.txt
#                (official MCP Python SDK, pytest, OpenTelemetry, gRPC)
#   .cache/npm   npm prefix with the pinned tests/package.json +
#                tests/package-lock.json (@modelcontextprotocol/server-everything)
#
# Idempotent: each part keeps a stamp file holding a hash of its inputs and
# is skipped when the stamp matches, so a second run takes well under a second.
# Needs only python3 (3.10+; CI: 3.11), node 20 and npm. Set PYTHON to choose
# the interpreter. Set MCP_SETUP_FORCE=1 to reinstall everything.
#
# Usage: bash tests/setup.sh
#        .cache/venv/bin/python -m pytest tests/python -q   (after cargo build --workspace,
#        and the otlp-tls binaries in target/tls-debug: tests/run.sh makes both)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="$repo/.cache"
venv="$cache/venv"
npm_prefix="$cache/npm"
python="${PYTHON:-python3}"
force="${MCP_SETUP_FORCE:-0}"

log() { printf 'setup.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

command -v "$python" >/dev/null || die "$python not found (set PYTHON=...)"
command -v node >/dev/null || die "node not found"
command -v npm >/dev/null || die "npm not found"

mkdir -p "$cache"

# ---------------------------------------------------------------- Python venvs
py_version="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
# A distribution's Python makes venvs only with its pythonX.Y-venv package (ensurepip).
if ! "$python" -c 'import ensurepip' 2>/dev/null; then
    command -v apt-get >/dev/null || die "$python cannot make venvs (no ensurepip) and there is no apt-get"
    py_minor="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    log "installing python$py_minor-venv"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "python$py_minor-venv" >/dev/null
fi

# make_venv DIR REQUIREMENTS IMPORT-CHECK: (re)creates DIR from the pinned
# REQUIREMENTS unless its stamp says it is current, then runs IMPORT-CHECK in it.
make_venv() {
    local dir=$1 reqs=$2 check=$3 want stamp
    want="$( { hash_of "$reqs"; echo "$py_version"; } | sha256sum | cut -d' ' -f1)"
    stamp="$dir/.mcp-bridge-stamp"
    if [[ "$force" != 1 && -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "venv up to date ($dir)"
        return
    fi
    log "creating venv $dir from $(basename "$reqs") with $python ($py_version)"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
    "$dir/bin/python" -m pip check
    "$dir/bin/python" -c "$check"
    echo "$want" > "$stamp"
    log "venv ready ($dir)"
}

# The test runner's venv: MCP SDK 1.x (stdio + WebSocket clients), pytest, gRPC and
# the OpenTelemetry packages of the OTLP receiver.
make_venv "$venv" "$here/requirements.txt" '
import mcp.client.stdio, mcp.client.websocket
import pytest, pytest_timeout, grpc
import opentelemetry.sdk.trace
import opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc
import opentelemetry.exporter.otlp.proto.grpc.trace_exporter
import opentelemetry.exporter.otlp.proto.http.trace_exporter
'
# The MCP SDK 2.x for the tracing test's backend (cannot share a venv with 1.x).
make_venv "$cache/venv-mcp2" "$here/requirements-mcp2.txt" \
    'import mcp.server.mcpserver, opentelemetry.exporter.otlp.proto.grpc.trace_exporter'

# ----------------------------------------------- promtool (Debian prometheus)
# The ops test checks the alert rules and the live /metrics output with promtool.
if command -v promtool >/dev/null; then
    log "promtool present"
else
    command -v apt-get >/dev/null || die "promtool missing and no apt-get to install it"
    log "installing Debian's prometheus package for promtool"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends prometheus >/dev/null
    # The package starts nothing without systemd; make sure no daemon lingers anyway.
    pkill -x prometheus 2>/dev/null || true
fi

# ------------------------------------------------------------------ npm peers
npm_stamp_want="$( { hash_of "$here/package.json" "$here/package-lock.json"; node --version; } \
                   | sha256sum | cut -d' ' -f1)"
npm_stamp_file="$npm_prefix/.mcp-bridge-stamp"
everything="$npm_prefix/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if [[ "$force" != 1 && -f "$everything" && -f "$npm_stamp_file" \
      && "$(cat "$npm_stamp_file")" == "$npm_stamp_want" ]]; then
    log "npm packages up to date ($npm_prefix)"
else
    log "installing npm packages into $npm_prefix"
    mkdir -p "$npm_prefix"
    rm -f "$npm_stamp_file"
    cp "$here/package.json" "$here/package-lock.json" "$npm_prefix/"
    (cd "$npm_prefix" && npm ci --no-audit --no-fund --loglevel=error)
    [[ -f "$everything" ]] || die "server-everything not found at $everything"
    echo "$npm_stamp_want" > "$npm_stamp_file"
    log "npm packages ready"
fi
