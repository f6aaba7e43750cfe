#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. lint: cargo fmt --check, cargo clippy -D warnings
#   2. Rust: unit tests of every crate + end-to-end tests of the real binaries
#   3. real peers: the official MCP Python SDK and @modelcontextprotocol/server-everything
#   4. smoke runs of the benchmark harness and of the packaging checks, when present
# Installs what it needs itself (tests/setup.sh); needs only Rust, Python 3, Node and apt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=tests/base.sh
source tests/base.sh

step() { printf '\n== %s\n' "$*"; }
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

step "lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The size variants (docs/packaging.md) must build too: no OTLP exporter at all.
cargo clippy -p mcp-router -p mcp-gateway -p mcp-shared --no-default-features --all-targets --locked -- -D warnings
# And the TLS variant (docs/tracing.md: TLS to the collector).
cargo clippy -p mcp-router -p mcp-gateway -p mcp-shared --features otlp-tls --all-targets --locked -- -D warnings

step "build (the end-to-end tests run these binaries)"
cargo build --workspace --locked
# The otlp-tls binaries for tests/python/test_otlp_tls.py, copied aside: same target
# dir (only mcp-shared, the binaries and rustls/ring are compiled again), then the
# default build is put back in target/debug (a relink).
cargo build -p mcp-router -p mcp-gateway --features otlp-tls --locked
rm -rf target/tls-debug && mkdir -p target/tls-debug
cp target/debug/mcp-router target/debug/mcp-gateway target/tls-debug/
cargo build --workspace --locked
export MCP_TLS_BIN_DIR="$PWD/target/tls-debug"
target/tls-debug/mcp-gateway --version | grep -q 'tls: otlp' || { echo "TLS build missing" >&2; exit 1; }
target/debug/mcp-gateway --version | grep -q 'tls: no' || { echo "default build not restored" >&2; exit 1; }

step "install real-peer test dependencies"
bash tests/setup.sh

step "packaging checks"
if [[ -f packaging/test.sh ]]; then bash packaging/test.sh | tee "$LOGS/packaging.log"; fi

step "benchmark smoke"
if [[ -f benches/run.sh ]]; then bash benches/run.sh --smoke --debug; fi
# The side-by-side comparison, on a handful of requests (debug builds: it only proves
# the script works).
PAIRED_BIN_DIR=target/debug bash benches/paired.sh target/debug/mcp-gateway \
    target/debug/mcp-gateway 1 300
PAIRED_BIN_DIR=target/debug PAIRED_ROUTERS="target/debug/mcp-router target/debug/mcp-router" \
    bash benches/paired.sh target/debug/mcp-gateway target/debug/mcp-gateway 1 300

step "real-peer tests (Python SDK, server-everything)"
.cache/venv/bin/python -m pytest tests/python -q | tee "$LOGS/pytest.log"

step "Rust unit and end-to-end tests"
cargo test --workspace --locked 2>&1 | tee "$LOGS/cargo.log"
# The core without any OTLP exporter (the smallest size variant).
cargo test -p mcp-shared --no-default-features --lib --locked 2>&1 | tee -a "$LOGS/cargo.log"
# The core with TLS (certificate file checks).
cargo test -p mcp-shared --features otlp-tls --lib --locked 2>&1 | tee -a "$LOGS/cargo.log"

# One closing line for the whole suite (every step above has already failed the run
# on any failure; this only counts).
passed=0 failed=0
while read -r p f; do passed=$((passed + p)); failed=$((failed + f)); done < <(
    sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$LOGS/cargo.log"
    sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$LOGS/packaging.log" 2>/dev/null
    sed -n 's/^\([0-9]*\) passed.* in .*/\1 0/p' "$LOGS/pytest.log"
)
echo
echo "total: $passed passed, $failed failed"
[[ $failed == 0 && $passed -gt 0 ]]
