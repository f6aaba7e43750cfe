#!/usr/bin/env bash
# benches/run.sh: build the release binaries, run the benchmark matrix of mcp-bridge and
# print one markdown table (see docs/benchmark.md).
#
#   benches/run.sh [--smoke] [--debug] [--no-musl] [--no-peer] [--tracing-only]
#                  [--instructions] [--instructions-only] [--profile NAME]
#                  [--callgrind-dir DIR] [--keep FILE]
#
#   --smoke    a few seconds of tiny runs (N=200, S=50, 2,000 spans) that only prove
#              the harness works; implies --no-musl --no-peer. For CI.
#   --debug    use debug builds (cargo build) instead of release; numbers meaningless.
#   --no-musl  skip the musl static builds (memory budgets then use the glibc build).
#   --no-peer  skip the optional supergateway (Node) comparison.
#   --tracing-only  only the tracing rounds and the span cost (glibc; no floors,
#              sessions, startup, musl or peer runs): about 8 minutes after the build.
#   --instructions  also count instructions per request under callgrind (valgrind),
#              router and gateway apart, for each tracing mode (~1 minute).
#   --instructions-only  only that (and the build): no load rounds, no memory runs.
#   --memory-only  only the musl router's memory rows: MEM_ROUNDS (default 5) rounds of
#              router + gateway at C = 1, tracing off and always_on alternating, each
#              reading the median of its rounds (resident code moves a reading by
#              100–200 KiB from one process to the next): about 3 minutes after the build.
#   --profile P  build and measure cargo profile P (e.g. profiling: release with symbols,
#              for callgrind_annotate); release by default.
#   --callgrind-dir D  keep the callgrind output files of --instructions in D.
#   --keep F   also copy the raw results (one JSON object per line) to F.
#
# The tracing rounds run twice: with the fixture as the backend (the bridge's own
# cost), and with server-everything (Node) when tests/setup.sh has installed it.
#
# Exit status: 0 when every run completed, whether or not the budgets are met; non-zero
# when the harness itself broke (a build, a process that did not start, a run that
# failed or got error responses). Every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=0 PROFILE=release MUSL=1 PEER=1 KEEP= TRACING_ONLY=0 INSTR=0 INSTR_ONLY=0 CG_DIR=
MEM_ONLY=0
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 MUSL=0 PEER=0 ;;
        --debug) PROFILE=dev ;;
        --no-musl) MUSL=0 ;;
        --no-peer) PEER=0 ;;
        --tracing-only) TRACING_ONLY=1 MUSL=0 PEER=0 ;;
        --instructions) INSTR=1 ;;
        --instructions-only) INSTR=1 INSTR_ONLY=1 TRACING_ONLY=1 MUSL=0 PEER=0 ;;
        --memory-only) MEM_ONLY=1 TRACING_ONLY=1 MUSL=1 PEER=0 ;;
        --profile) PROFILE=${2:?--profile needs a name}; shift ;;
        --callgrind-dir) CG_DIR=${2:?--callgrind-dir needs a directory}; shift ;;
        --keep) KEEP=${2:?--keep needs a file}; shift ;;
        -h | --help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

# Tracing: TROUNDS* rounds of off / always_on / always_on with span_detail basic /
# traceidratio; EV_ROUNDS rounds of off / always_on / traceidratio with server-everything
# as the backend (EV_N* requests); SPANS spans per mode and
# round of the span-cost microbenchmark; QUIET_MS is how long the exporters must be idle
# before the payload is counted (longer than the batch processor's scheduled_delay,
# which smoke runs shorten to SCHED).
if [ "$SMOKE" = 1 ]; then
    N1=200 N32=500 ROUNDS1=1 ROUNDS32=1 WARMUP=20 SESSIONS=(50) TRICKLE=20 RATE=1000 STARTUP_RUNS=3
    TROUNDS1=1 TROUNDS32=1 SPANS=2000 SPAN_ROUNDS=1 SCHED=100ms QUIET_MS=300
    EV_ROUNDS=1 EV_N1=50 EV_N32=200 INSTR_N=100
else
    N1=10000 N32=50000 ROUNDS1=5 ROUNDS32=3 WARMUP=1000 SESSIONS=(1000 10000) TRICKLE=500 RATE=250
    STARTUP_RUNS=21
    TROUNDS1=9 TROUNDS32=9 SPANS=50000 SPAN_ROUNDS=7 SCHED= QUIET_MS=1500
    EV_ROUNDS=7 EV_N1=5000 EV_N32=20000 INSTR_N=6000
fi
# Bytes of argument text per call (BENCH_PAYLOAD overrides; the tables use 128).
PAYLOAD=${BENCH_PAYLOAD:-128}

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
cargo build --profile "$PROFILE" -p mcp-router -p mcp-gateway -p mcp-fixture -p mcp-bench
if [ "$PROFILE" = dev ]; then BIN=$ROOT/target/debug; else BIN=$ROOT/target/$PROFILE; fi
BENCH=$BIN/mcp-bench
FIXTURE=$BIN/mcp-fixture
EVERYTHING=$ROOT/.cache/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js

MUSL_BIN= MUSL_BENCH=
if [ "$MUSL" = 1 ]; then
    MUSL_TARGET=x86_64-unknown-linux-musl
    # The gateway's allocator (mimalloc) is C: musl-gcc when installed (packaging/build.sh
    # installs it), else the host cc, as packaging/build.sh does.
    if [ -z "${CC_x86_64_unknown_linux_musl:-}" ] && ! command -v musl-gcc >/dev/null; then
        export CC_x86_64_unknown_linux_musl=cc
    fi
    if rustup target add "$MUSL_TARGET" >/dev/null 2>&1 &&
        cargo build --release --target "$MUSL_TARGET" -p mcp-router -p mcp-gateway; then
        MUSL_BIN=$ROOT/target/$MUSL_TARGET/release
        # For the span-cost microbenchmark on musl (its allocator is slower).
        if cargo build --release --target "$MUSL_TARGET" -p mcp-bench; then
            MUSL_BENCH=$MUSL_BIN/mcp-bench
        else
            log "no musl build of mcp-bench; the span cost is measured on glibc only"
        fi
    else
        log "no musl build; the memory budgets are checked on the glibc build"
    fi
fi

# --- helpers ---------------------------------------------------------------------------

# write_config FILE [everything]: a gateway configuration with one shared backend: the
# fixture as "fx", or server-everything (Node) as "ev".
# The level must be info: the readiness line "listening on ws://…" is an info record.
write_config() {
    local backend
    if [ "${2:-}" = everything ]; then
        backend=$(printf 'name = "ev"\ntransport = "stdio"\ncommand = "node"\nargs = ["%s", "stdio"]' "$EVERYTHING")
    else
        backend=$(printf 'name = "fx"\ntransport = "stdio"\ncommand = "%s"\nargs = ["--name", "fx"]' "$FIXTURE")
    fi
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:0"
max_sessions = 20000
[limits]
max_in_flight = 256
[logging]
level = "info"
[[backends]]
$backend
session = "shared"
EOF
}
CONFIG=$WORK/gateway.toml
write_config "$CONFIG"

# start_gateway BINARY [CONFIG]: starts it (with $CONFIG by default) and waits for its
# readiness line; sets GW_PID, GW_URL, and ADMIN_URL when [admin] is configured.
# stderr goes through a FIFO so the first lines can be read here; the rest is drained
# into gateway.log by cat (so the gateway never blocks on a full pipe).
start_gateway() {
    local fifo=$WORK/gateway.fifo line fd
    rm -f "$fifo"
    mkfifo "$fifo"
    # GW_WRAP: a command (words split on spaces) the gateway runs under, if set.
    ${GW_WRAP:-} "$1" --config "${2:-$CONFIG}" 2>"$fifo" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    exec {fd}<"$fifo"
    rm -f "$fifo"
    GW_URL= ADMIN_URL=
    while IFS= read -r -t 30 -u "$fd" line; do
        echo "$line" >>"$WORK/gateway.log"
        case $line in
            *"admin endpoints on http://"*)
                ADMIN_URL=${line##*admin endpoints on }
                ADMIN_URL=${ADMIN_URL%% *}
                ;;
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
if [ "$TRACING_ONLY" = 0 ]; then
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
fi

# --- tracing: off / always_on / basic / traceidratio 0.01, in interleaved rounds --------
# Router + gateway with both binaries tracing, each exporting OTLP/HTTP to its own sink
# (mcp-bench otlp-sink, on loopback: the export is real but cheap). Every run gets a
# fresh gateway with that mode's configuration, the off baseline too, so the three
# differ only in [tracing]; the order of the modes rotates from round to round. After a
# traced run, otlp-stats waits until the exporters are idle, then records the body
# bytes the sinks received and the spans exported (the gateway's own count from
# /metrics, the router's as found in the bodies).

# start_sink NAME: an OTLP/HTTP sink; sets SINK_URL from the line it prints when ready.
start_sink() {
    local out=$WORK/sink-$1.out pid i
    "$BENCH" otlp-sink >"$out" 2>>"$WORK/sink-$1.log" &
    pid=$!
    PIDS+=("$pid")
    SINK_URL=
    for i in $(seq 1000); do
        IFS= read -r SINK_URL <"$out" || true
        [ -n "$SINK_URL" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.01
    done
    die "otlp-sink $1 did not start (log: $(tail -n 5 "$WORK/sink-$1.log" 2>/dev/null))"
}
start_sink router
SINK_ROUTER=$SINK_URL
start_sink gateway
SINK_GW=$SINK_URL
SINKS=(--sink "router=$SINK_ROUTER" --sink "gateway=$SINK_GW")

# tracing_section MODE ENDPOINT: the [tracing] of a mode (off: none, i.e. the default).
tracing_section() {
    case $1 in
        off) return 0 ;;
        on) printf '[tracing]\nenabled = true\nsampler_type = "always_on"\n' ;;
        basic) printf '[tracing]\nenabled = true\nsampler_type = "always_on"\nspan_detail = "basic"\n' ;;
        ratio) printf '[tracing]\nenabled = true\nsampler_type = "traceidratio"\nsampler_param = 0.01\n' ;;
        *) die "unknown tracing mode $1" ;;
    esac
    printf 'exporter_type = "otlp"\notlp_protocol = "http/protobuf"\notlp_endpoint = "%s"\n' "$2"
    if [ -n "$SCHED" ]; then printf 'scheduled_delay = "%s"\n' "$SCHED"; fi
}

# trace_run LABEL MODE C N BINDIR [STATS_LABEL]: a fresh gateway (with [admin]) and a
# router from BINDIR, both with tracing MODE; one load run; then, with STATS_LABEL, the
# OTLP payload of the run. The backend is the fixture, or server-everything when
# TRACE_BACKEND=everything.
trace_run() {
    local label=$1 mode=$2 c=$3 n=$4 bindir=$5 stats=${6:-}
    local gwcfg=$WORK/gateway-trace-$mode.toml rcfg=$WORK/router-trace-$mode.toml
    local tool=(--tool fx.echo) router=$bindir/mcp-router
    if [ "${TRACE_BACKEND:-}" = everything ]; then tool=(--tool ev.echo --arg message); fi
    if [ -n "${ROUTER_WRAP:-}" ]; then
        # mcp-bench runs one executable: a script that runs the router under the wrapper.
        router=$WORK/router-wrapped.sh
        printf '#!/bin/sh\nexec %s %s "$@"\n' "$ROUTER_WRAP" "$bindir/mcp-router" >"$router"
        chmod +x "$router"
    fi
    write_config "$gwcfg" "${TRACE_BACKEND:-}"
    {
        printf '[admin]\nlisten = "127.0.0.1:0"\n'
        tracing_section "$mode" "$SINK_GW"
    } >>"$gwcfg"
    start_gateway "$bindir/mcp-gateway" "$gwcfg"
    [ -n "$ADMIN_URL" ] || die "gateway did not log its admin address"
    {
        printf '[gateway]\nurl = "%s"\n[logging]\nlevel = "warn"\n' "$GW_URL"
        tracing_section "$mode" "$SINK_ROUTER"
    } >"$rcfg"
    "$BENCH" otlp-stats --reset "${SINKS[@]}" || die "the OTLP sinks do not answer"
    MCP_LOG=warn load "$label" "$c" "$n" stdio --cmd "$router" "${tool[@]}" \
        --pid "$GW_PID" -- --config "$rcfg"
    if [ -n "$stats" ]; then
        bench "$stats" otlp-stats "${SINKS[@]}" --admin "$ADMIN_URL" \
            --requests $((n + WARMUP)) --quiet-ms "$QUIET_MS"
    fi
    stop_gateway
}

TMODES=(off on basic ratio)
if [ "$INSTR_ONLY" = 1 ] || [ "$MEM_ONLY" = 1 ]; then TROUNDS1=0 TROUNDS32=0 EV_ROUNDS=0; fi
for c in 1 32; do
    if [ "$c" = 1 ]; then rounds=$TROUNDS1; else rounds=$TROUNDS32; fi
    n=$(n_for "$c")
    for r in $(seq "$rounds"); do
        for k in "${!TMODES[@]}"; do
            mode=${TMODES[$(((r + k) % ${#TMODES[@]}))]}
            stats=
            if [ "$mode" != off ]; then stats="otlp-$mode-c$c#$r"; fi
            trace_run "trace-$mode-c$c#$r" "$mode" "$c" "$n" "$BIN" "$stats"
        done
    done
done

# The same with a real backend, server-everything (Node, installed by tests/setup.sh),
# which does what an MCP server does per call (schema validation, its SDK's dispatch):
# the fixture isolates the bridge's own cost, this shows what a deployment would see.
# Off / always_on / traceidratio 0.01 only (basic sits between the two).
if [ "$EV_ROUNDS" = 0 ]; then
    :
elif [ -f "$EVERYTHING" ] && command -v node >/dev/null; then
    EMODES=(off on ratio)
    for c in 1 32; do
        if [ "$c" = 1 ]; then n=$EV_N1; else n=$EV_N32; fi
        for r in $(seq "$EV_ROUNDS"); do
            for k in "${!EMODES[@]}"; do
                mode=${EMODES[$(((r + k) % ${#EMODES[@]}))]}
                stats=
                if [ "$mode" != off ]; then stats="ev-otlp-$mode-c$c#$r"; fi
                TRACE_BACKEND=everything trace_run "ev-trace-$mode-c$c#$r" "$mode" "$c" "$n" \
                    "$BIN" "$stats"
            done
        done
    done
else
    log "server-everything is not installed (bash tests/setup.sh installs it) or node is" \
        "missing: the tracing rounds with a real backend are skipped"
fi

# Calls of libc's clock_gettime in a callgrind output file: each is one reading of the
# clock, which costs 30-55 ns on a VM while callgrind counts the vDSO's few instructions
# (docs/tracing.md, "Clock readings"). Function names are compressed: "fn=(id) name" the
# first time, "(id)" after; a "calls=" line follows the "cfn=" it counts.
clock_reads() {
    awk '
        /^c?fn=\(/ {
            s = $0; sub(/^c?fn=\(/, "", s)
            id = s; sub(/\).*/, "", id)
            rest = s; sub(/^[0-9]+\) ?/, "", rest)
            if (rest != "") name[id] = rest
            if ($0 ~ /^cfn=/) cur = id
            next
        }
        /^calls=/ {
            s = $0; sub(/^calls=/, "", s); split(s, a, " ")
            if (index(name[cur], "clock_gettime") == 1) n += a[1]
            next
        }
        END { print n + 0 }' "$1"
}

# Instructions per request under callgrind, router and gateway apart, per tracing mode:
# a figure that does not move with the VM's scheduling as throughput does. Each process
# is counted whole (all its threads, exporter included; start-up and shutdown spread
# over the run's requests), at C = 32 with the fixture as the backend.
if [ "$INSTR" = 1 ]; then
    if command -v valgrind >/dev/null; then
        for mode in off on basic ratio; do
            for target in router gateway; do
                out=$WORK/callgrind-$mode-$target.out
                wrap="valgrind --tool=callgrind --callgrind-out-file=$out"
                if [ "$target" = gateway ]; then
                    GW_WRAP=$wrap trace_run "instr-run-$mode-$target" "$mode" 32 "$INSTR_N" "$BIN"
                else
                    ROUTER_WRAP=$wrap trace_run "instr-run-$mode-$target" "$mode" 32 "$INSTR_N" "$BIN"
                fi
                total=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$out")
                [ -n "$total" ] || die "no callgrind totals for $mode $target"
                clock=$(clock_reads "$out")
                printf '{"label":"instr-%s-%s","instructions":%s,"clock_reads":%s,"requests":%s}\n' \
                    "$mode" "$target" "$total" "$clock" $((INSTR_N + WARMUP)) >>"$RESULTS"
                if [ -n "$CG_DIR" ]; then mkdir -p "$CG_DIR" && cp "$out" "$CG_DIR/"; fi
            done
        done
    else
        log "valgrind not found (apt-get install valgrind): instruction counts skipped"
    fi
fi

# The cost of one span, through mcp-shared's telemetry (the code both binaries run).
if [ "$INSTR_ONLY" = 0 ] && [ "$MEM_ONLY" = 0 ]; then
    bench span-cost span-cost -n "$SPANS" --rounds "$SPAN_ROUNDS"
fi

# --- startup, idle sessions ------------------------------------------------------------
# sessions_run PREFIX BINARY S: a fresh gateway, S sessions, stop.
sessions_run() {
    start_gateway "$2"
    bench "${1}sessions-$3" sessions --url "$GW_URL" -s "$3" --pid "$GW_PID" \
        --trickle "$TRICKLE" --rate "$RATE" -p "$PAYLOAD"
    stop_gateway
}

if [ "$TRACING_ONLY" = 0 ]; then
    bench startup startup --runs "$STARTUP_RUNS" -- "$BIN/mcp-gateway" --config "$CONFIG"
    for s in "${SESSIONS[@]}"; do sessions_run "" "$BIN/mcp-gateway" "$s"; done
fi

if [ "$MEM_ONLY" = 1 ]; then
    [ -n "$MUSL_BIN" ] || die "--memory-only needs the musl build"
    for r in $(seq "${MEM_ROUNDS:-5}"); do
        start_gateway "$MUSL_BIN/mcp-gateway"
        MCP_LOG=warn load "musl-router-gateway-c1#$r" 1 "$N1" stdio --cmd "$MUSL_BIN/mcp-router" \
            --tool fx.echo --pid "$GW_PID" -- --gateway "$GW_URL"
        stop_gateway
        trace_run "musl-trace-on-c1#$r" on 1 "$N1" "$MUSL_BIN"
    done
elif [ -n "$MUSL_BIN" ]; then
    bench musl-startup startup --runs "$STARTUP_RUNS" -- "$MUSL_BIN/mcp-gateway" --config "$CONFIG"
    start_gateway "$MUSL_BIN/mcp-gateway"
    MCP_LOG=warn load musl-router-gateway-c1 1 "$N1" stdio --cmd "$MUSL_BIN/mcp-router" --tool fx.echo \
        --pid "$GW_PID" -- --gateway "$GW_URL"
    stop_gateway
    # Both binaries' RSS with tracing on, after the C = 1 load.
    trace_run musl-trace-on-c1 on 1 "$N1" "$MUSL_BIN" musl-otlp-on-c1
    if [ -n "$MUSL_BENCH" ]; then
        log musl-span-cost
        "$MUSL_BENCH" span-cost --label musl-span-cost -n "$SPANS" --rounds "$SPAN_ROUNDS" \
            >>"$RESULTS" || die "musl-span-cost failed"
    fi
    for s in "${SESSIONS[@]}"; do sessions_run musl- "$MUSL_BIN/mcp-gateway" "$s"; done
fi

# --- optional peer: supergateway (Node) exposing the same fixture over WebSocket --------
if [ "$PEER" = 1 ]; then
    SG_DIR=$ROOT/.cache/supergateway
    SG_JS=$SG_DIR/node_modules/supergateway/dist/index.js
    if [ ! -f "$SG_JS" ] && command -v npm >/dev/null; then
        log "installing supergateway into $SG_DIR"
        mkdir -p "$SG_DIR"
        npm install --prefix "$SG_DIR" --no-audit --no-fund --loglevel=error supergateway@4.0.0 >&2 ||
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
