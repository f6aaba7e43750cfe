#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. lint: cargo fmt --check, cargo clippy -D warnings
#   2. Rust: unit tests of every crate + end-to-end tests of the real binaries
#   3. real peers: the official MCP Python SDK and @modelcontextprotocol/server-everything
#   4. smoke runs of the benchmark harness and of the packaging checks, when present
# Installs what it needs itself (tests/setup.sh); needs only Rust, Python 3, Node and apt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (the end-to-end tests run these binaries)"
cargo build --workspace --locked

step "install real-peer test dependencies"
bash tests/setup.sh

step "packaging checks"
if [[ -f packaging/test.sh ]]; then bash packaging/test.sh; fi

step "benchmark smoke"
if [[ -f benches/run.sh ]]; then bash benches/run.sh --smoke --debug; fi

step "real-peer tests (Python SDK, server-everything)"
.cache/venv/bin/python -m pytest tests/python -q

step "Rust unit and end-to-end tests"
cargo test --workspace --locked
