#!/usr/bin/env bash
# benches/run.sh: build the release binaries, run the benchmark matrix of mcp-bridge and
# print one markdown table (see docs/benchmark.md).
#
#   benches/run.sh [--smoke] [--debug] [--no-musl] [--no-peer] [--keep FILE]
#
#   --smoke    a few seconds of tiny runs (N=200, S=50) that only prove the harness
#              works; implies --no-musl --no-peer. For CI.
#   --debug    use debug builds (cargo build) instead of release; numbers meaningless.
#   --no-musl  skip the musl static builds (memory budgets then use the glibc build).
#   --no-peer  skip the optional supergateway (Node) comparison.
#   --keep F   also copy the raw results (one JSON object per line) to F.
#
# Exit status: 0 when every run completed, whether or not the budgets are met; non-zero
# when the harness itself broke (a build, a process that did not start, a run that
# failed or got error responses). Every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=0 PROFILE=release MUSL=1 PEER=1 KEEP=
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 MUSL=0 PEER=0 ;;
        --debug) PROFILE=debug ;;
        --no-musl) MUSL=0 ;;
        --no-peer) PEER=0 ;;
        --keep) KEEP=${2:?--keep needs a file}; shift ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

if [ "$SMOKE" = 1 ]; then
    N1=200 N32=500 ROUNDS1=1 ROUNDS32=1 WARMUP=20 SESSIONS=(50) TRICKLE=20 RATE=1000 STARTUP_RUNS=3
else
    N1=10000 N32=50000 ROUNDS1=5 ROUNDS32=3 WARMUP=1000 SESSIONS=(1000 10000) TRICKLE=500 RATE=250
    STARTUP_RUNS=21
fi
PAYLOAD=128

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcp-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
PIDS=()

log() { echo "run.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 10,000 sessions need more than 10,000 descriptors in the gateway and in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
log "open files limit: $(ulimit -n)"
if [ "$SMOKE" = 0 ] && [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
    log "warning: the open files limit is below 10,100; the 10,000-session run will fail sessions"
fi

# --- build -----------------------------------------------------------------------------
cd "$ROOT"
if [ "$PROFILE" = release ]; then
    cargo build --release -p mcp-router -p mcp-gateway -p mcp-fixture -p mcp-bench
    BIN=$ROOT/target/release
else
    cargo build -p mcp-router -p mcp-gateway -p mcp-fixture -p mcp-bench
    BIN=$ROOT/target/debug
fi
BENCH=$BIN/mcp-bench
FIXTURE=$BIN/mcp-fixture

MUSL_BIN=
if [ "$MUSL" = 1 ]; then
    MUSL_TARGET=x86_64-unknown-linux-musl
    if rustup target add "$MUSL_TARGET" >/dev/null 2>&1 &&
        cargo build --release --target "$MUSL_TARGET" -p mcp-router -p mcp-gateway; then
        MUSL_BIN=$ROOT/target/$MUSL_TARGET/release
    else
        log "no musl build; the memory budgets are checked on the glibc build"
    fi
fi

# --- helpers ---------------------------------------------------------------------------

# write_config FILE: a gateway configuration with one shared fixture backend "fx".
# The level must be info: the readiness line "listening on ws://…" is an info record.
write_config() {
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:0"
max_sessions = 20000
[limits]
max_in_flight = 256
[logging]
level = "info"
[[backends]]
name = "fx"
transport = "stdio"
command = "$FIXTURE"
args = ["--name", "fx"]
session = "shared"
EOF
}
CONFIG=$WORK/gateway.toml
write_config "$CONFIG"

# start_gateway BINARY: starts it and waits for its readiness line; sets GW_PID, GW_URL.
# stderr goes through a FIFO so the first lines can be read here; the rest is drained
# into gateway.log by cat (so the gateway never blocks on a full pipe).
start_gateway() {
    local fifo=$WORK/gateway.fifo line fd
    rm -f "$fifo"
    mkfifo "$fifo"
    "$1" --config "$CONFIG" 2>"$fifo" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    exec {fd}<"$fifo"
    rm -f "$fifo"
    GW_URL=
    while IFS= read -r -t 30 -u "$fd" line; do
        echo "$line" >>"$WORK/gateway.log"
        case $line in
            *"listening on ws://"*)
                GW_URL=${line##*listening on }
                GW_URL=${GW_URL%% *}
                break
                ;;
        esac
    done
    if [ -z "$GW_URL" ]; then
        exec {fd}<&-
        die "gateway $1 did not print its readiness line (log: $(tail -n 5 "$WORK/gateway.log"))"
    fi
    cat <&"$fd" >>"$WORK/gateway.log" &
    GW_CAT=$!
    PIDS+=("$GW_CAT")
    exec {fd}<&-
}

# forget PID: no longer to be stopped on exit (it was waited for).
forget() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

# stop_gateway: SIGTERM (the gateway stops its backends), wait for it and its log.
stop_gateway() {
    kill -TERM "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
    wait "$GW_CAT" 2>/dev/null || true
    forget "$GW_PID"
    forget "$GW_CAT"
}

# bench LABEL SUBCOMMAND ARGS…: one mcp-bench run, its JSON line appended to the results.
bench() {
    local label=$1 sub=$2
    shift 2
    log "$label"
    "$BENCH" "$sub" --label "$label" "$@" >>"$RESULTS" || die "$label failed"
}

# load LABEL C N SUBCOMMAND ARGS…: a load run with the common settings.
load() {
    local label=$1 c=$2 n=$3 sub=$4
    shift 4
    bench "$label" "$sub" -c "$c" -n "$n" -p "$PAYLOAD" --warmup "$WARMUP" "$@"
}

n_for() { if [ "$1" = 1 ]; then echo "$N1"; else echo "$N32"; fi; }

# --- floors and bridge, in interleaved rounds ------------------------------------------
# On a small shared VM a run lands in one of several scheduling regimes (e.g. the peers
# on the same CPU or not), which moves a loopback round trip by 2× or more. So every
# latency/throughput scenario runs ROUNDS times, floors and bridge interleaved, and the
# report takes the median of each figure (labels NAME#k) and shows the spread of p50.
# (MCP_LOG=warn keeps the router's two info lines per run off the terminal.)
start_gateway "$BIN/mcp-gateway"
for c in 1 32; do
    if [ "$c" = 1 ]; then rounds=$ROUNDS1; else rounds=$ROUNDS32; fi
    n=$(n_for "$c")
    for r in $(seq "$rounds"); do
        load "direct-c$c#$r" "$c" "$n" stdio --cmd "$FIXTURE" --tool echo -- --name fx
        load "ws-floor-c$c#$r" "$c" "$n" echo-floor
        load "gateway-c$c#$r" "$c" "$n" ws --url "$GW_URL" --tool fx.echo --pid "$GW_PID"
        MCP_LOG=warn load "router-gateway-c$c#$r" "$c" "$n" stdio --cmd "$BIN/mcp-router" \
            --tool fx.echo --pid "$GW_PID" -- --gateway "$GW_URL"
    done
done
stop_gateway

# --- startup, idle sessions ------------------------------------------------------------
# sessions_run PREFIX BINARY S: a fresh gateway, S sessions, stop.
sessions_run() {
    start_gateway "$2"
    bench "${1}sessions-$3" sessions --url "$GW_URL" -s "$3" --pid "$GW_PID" \
        --trickle "$TRICKLE" --rate "$RATE" -p "$PAYLOAD"
    stop_gateway
}

bench startup startup --runs "$STARTUP_RUNS" -- "$BIN/mcp-gateway" --config "$CONFIG"
for s in "${SESSIONS[@]}"; do sessions_run "" "$BIN/mcp-gateway" "$s"; done

if [ -n "$MUSL_BIN" ]; then
    bench musl-startup startup --runs "$STARTUP_RUNS" -- "$MUSL_BIN/mcp-gateway" --config "$CONFIG"
    start_gateway "$MUSL_BIN/mcp-gateway"
    MCP_LOG=warn load musl-router-gateway-c1 1 "$N1" stdio --cmd "$MUSL_BIN/mcp-router" --tool fx.echo \
        --pid "$GW_PID" -- --gateway "$GW_URL"
    stop_gateway
    for s in "${SESSIONS[@]}"; do sessions_run musl- "$MUSL_BIN/mcp-gateway" "$s"; done
fi

# --- optional peer: supergateway (Node) exposing the same fixture over WebSocket --------
if [ "$PEER" = 1 ]; then
    SG_DIR=$ROOT/.cache/supergateway
    SG_JS=$SG_DIR/node_modules/supergateway/dist/index.js
    if [ ! -f "$SG_JS" ] && command -v npm >/dev/null; then
        log "installing supergateway into $SG_DIR"
        mkdir -p "$SG_DIR"
        npm install --prefix "$SG_DIR" --no-audit --no-fund --loglevel=error supergateway >&2 ||
            log "supergateway did not install"
    fi
    if [ -f "$SG_JS" ] && command -v node >/dev/null; then
        # A free port (supergateway does not report the one it got for port 0).
        SG_PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
        node "$SG_JS" --stdio "$FIXTURE --name fx" --outputTransport ws --port "$SG_PORT" \
            --logLevel none >"$WORK/supergateway.log" 2>&1 &
        SG_PID=$!
        PIDS+=("$SG_PID")
        # It logs nothing at --logLevel none: the client waits for the port instead.
        for c in 1 32; do
            if [ "$c" = 1 ]; then rounds=$ROUNDS1; else rounds=$ROUNDS32; fi
            for r in $(seq "$rounds"); do
                load "peer-supergateway-c$c#$r" "$c" "$(n_for "$c")" ws \
                    --url "ws://127.0.0.1:$SG_PORT/message" --tool echo --pid "$SG_PID" \
                    --connect-wait-ms 20000
            done
        done
        kill -TERM "$SG_PID" 2>/dev/null || true
        wait "$SG_PID" 2>/dev/null || true
        forget "$SG_PID"
    else
        log "supergateway not available (needs node and npm); peer comparison skipped"
    fi
fi

# --- the table -------------------------------------------------------------------------
if [ -n "$KEEP" ]; then cp "$RESULTS" "$KEEP"; fi
"$BENCH" report "$RESULTS"
