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
#        .cache/venv/bin/python -m pytest tests/python -q
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

# ---------------------------------------------------------------- Python venv
py_version="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
py_stamp_want="$( { hash_of "$here/requirements.txt"; echo "$py_version"; } | sha256sum | cut -d' ' -f1)"
py_stamp_file="$venv/.mcp-bridge-stamp"
if [[ "$force" != 1 && -x "$venv/bin/python" && -f "$py_stamp_file" \
      && "$(cat "$py_stamp_file")" == "$py_stamp_want" ]]; then
    log "venv up to date ($venv)"
else
    log "creating venv $venv with $python ($py_version)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements.txt"
    "$venv/bin/python" -m pip check
    "$venv/bin/python" - <<'EOF'
import mcp.client.stdio, mcp.client.websocket  # noqa: F401
import pytest, pytest_timeout, grpc  # noqa: F401
import opentelemetry.sdk.trace  # noqa: F401
import opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc  # noqa: F401
import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
EOF
    echo "$py_stamp_want" > "$py_stamp_file"
    log "venv ready"
fi

# ------------------------------------------- Python venv for the MCP SDK 2.x
venv2="$cache/venv-mcp2"
py2_stamp_want="$( { hash_of "$here/requirements-mcp2.txt"; echo "$py_version"; } | sha256sum | cut -d' ' -f1)"
py2_stamp_file="$venv2/.mcp-bridge-stamp"
if [[ "$force" != 1 && -x "$venv2/bin/python" && -f "$py2_stamp_file" \
      && "$(cat "$py2_stamp_file")" == "$py2_stamp_want" ]]; then
    log "venv up to date ($venv2)"
else
    log "creating venv $venv2 (MCP Python SDK 2.x)"
    rm -rf "$venv2"
    "$python" -m venv "$venv2"
    "$venv2/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-mcp2.txt"
    "$venv2/bin/python" -m pip check
    "$venv2/bin/python" -c 'import mcp.server.mcpserver, opentelemetry.exporter.otlp.proto.grpc.trace_exporter'
    echo "$py2_stamp_want" > "$py2_stamp_file"
    log "venv ready"
fi

# ----------------------------------------------- promtool (Debian prometheus)
# The ops test checks the alert rules and the live /metrics output with promtool.
if command -v promtool >/dev/null; then
    log "promtool present"
else
    command -v apt-get >/dev/null || die "promtool missing and no apt-get to install it"
    log "installing Debian's prometheus package for promtool"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
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
