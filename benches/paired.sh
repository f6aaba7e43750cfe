#!/usr/bin/env bash
# benches/paired.sh OLD_GATEWAY NEW_GATEWAY [ROUNDS] [N] [C]: two builds side by side on
# the same machine, in the same minutes. Each gateway runs with its own fixture backend
# (shared session) and is loaded in turn with `mcp-bench ws --tool fx.echo -n N -c C`,
# the order swapped every other round so neither always runs first.
#
# With PAIRED_ROUTERS="OLD_ROUTER NEW_ROUTER" the load goes through each side's router
# instead (`mcp-bench stdio --cmd ROUTER … -- --gateway URL`): router + gateway.
#
# Prints each run, then the medians, the ratio of the medians and the per-round ratios
# (new / old) of throughput, and the CPU time per measured request of each process
# (utime + stime from /proc, all threads, as mcp-bench reads it around the measured
# requests): on a VM whose speed drifts between minutes, a change is real when the
# rounds agree, not when one run says so, and CPU time moves far less than throughput
# (docs/benchmark.md, "Changes made").
#
# With PAIRED_TRACING=on|basic|ratio both sides trace (always_on, always_on with
# span_detail basic, traceidratio 0.01), exporting OTLP/HTTP to one `mcp-bench otlp-sink`
# (its CPU is not counted); the routers too, with PAIRED_ROUTERS. PAIRED_TRACING_OLD and
# PAIRED_TRACING_NEW are TOML lines added to that side's [tracing] (the same build with
# two settings: pass one binary twice), e.g. PAIRED_TRACING_NEW='max_export_batch_size = 512'.
#
# PAIRED_PAYLOAD=BYTES sets the size of each call's argument text (mcp-bench -p; its
# default otherwise).
#
# Needs builds of mcp-bench and mcp-fixture: release ones (cargo build --release -p
# mcp-bench -p mcp-fixture), or those in $PAIRED_BIN_DIR (CI's smoke run: target/debug).
# Defaults: 9 rounds of 50,000 requests at C = 32 (~20 s in all).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OLD=${1:?old gateway binary} NEW=${2:?new gateway binary}
ROUNDS=${3:-9} N=${4:-50000} C=${5:-32}
BIN_DIR=${PAIRED_BIN_DIR:-$PWD/target/release}
BENCH=$BIN_DIR/mcp-bench
FIXTURE=$BIN_DIR/mcp-fixture
declare -A ROUTER
if [[ -n ${PAIRED_ROUTERS:-} ]]; then
    read -r ROUTER[old] ROUTER[new] <<< "$PAIRED_ROUTERS"
fi
for b in "$OLD" "$NEW" "$BENCH" "$FIXTURE" "${ROUTER[@]}"; do
    [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 64; }
done
W=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT

# tracing NAME: the [tracing] section of side NAME (nothing without PAIRED_TRACING).
SINK=
tracing() {
    [[ -n ${PAIRED_TRACING:-} ]] || return 0
    case $PAIRED_TRACING in
        on) printf '[tracing]\nenabled = true\nsampler_type = "always_on"\n' ;;
        basic) printf '[tracing]\nenabled = true\nsampler_type = "always_on"\nspan_detail = "basic"\n' ;;
        ratio) printf '[tracing]\nenabled = true\nsampler_type = "traceidratio"\nsampler_param = 0.01\n' ;;
        *) echo "PAIRED_TRACING: on, basic or ratio, not $PAIRED_TRACING" >&2; exit 64 ;;
    esac
    printf 'exporter_type = "otlp"\notlp_protocol = "http/protobuf"\notlp_endpoint = "%s"\n' "$SINK"
    if [[ $1 == old ]]; then printf '%s\n' "${PAIRED_TRACING_OLD:-}"; else printf '%s\n' "${PAIRED_TRACING_NEW:-}"; fi
}
if [[ -n ${PAIRED_TRACING:-} ]]; then
    "$BENCH" otlp-sink > "$W/sink.out" 2> "$W/sink.err" &
    PIDS+=($!)
    deadline=$((SECONDS + 10))
    until [[ -s $W/sink.out ]]; do
        ((SECONDS < deadline)) || { cat "$W/sink.err" >&2; exit 1; }
        sleep 0.05
    done
    SINK=$(head -1 "$W/sink.out")
fi

# start NAME BINARY: runs a gateway on 127.0.0.1:0 and sets URL[NAME] to its WebSocket
# URL once it logs that it listens.
declare -A URL PID
start() {
    cat > "$W/$1.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[logging]
level = "warn"
[[backends]]
name = "fx"
transport = "stdio"
command = "$FIXTURE"
args = ["--name", "fx"]
session = "shared"
TOML
    tracing "$1" >> "$W/$1.toml"
    MCP_LOG=info "$2" --config "$W/$1.toml" > /dev/null 2> "$W/$1.err" &
    PIDS+=($!)
    PID[$1]=$!
    local deadline=$((SECONDS + 10))
    until grep -q "listening on" "$W/$1.err"; do
        ((SECONDS < deadline)) || { cat "$W/$1.err" >&2; exit 1; }
        sleep 0.05
    done
    URL[$1]=$(grep -o "ws://[^ ]*" "$W/$1.err" | head -1)
}
start old "$OLD"
start new "$NEW"

for r in $(seq "$ROUNDS"); do
    order=(old new)
    ((r % 2 == 0)) && order=(new old)
    for v in "${order[@]}"; do
        load=(-n "$N" -c "$C" --tool fx.echo --pid "${PID[$v]}" --label "$v")
        [[ -n ${PAIRED_PAYLOAD:-} ]] && load+=(-p "$PAIRED_PAYLOAD")
        if [[ -n ${ROUTER[$v]:-} ]]; then
            {
                printf '[gateway]\nurl = "%s"\n[logging]\nlevel = "warn"\n' "${URL[$v]}"
                tracing "$v"
            } > "$W/router-$v.toml"
            MCP_LOG=warn "$BENCH" stdio --cmd "${ROUTER[$v]}" "${load[@]}" \
                -- --config "$W/router-$v.toml" 2>/dev/null | tail -1 > "$W/run.json"
        else
            "$BENCH" ws --url "${URL[$v]}" "${load[@]}" 2>/dev/null | tail -1 > "$W/run.json"
        fi
        echo "${PID[$v]} $(cat "$W/run.json")" >> "$W/runs.txt"
    done
done

python3 - "$W/runs.txt" <<'PY'
import json, statistics as st, sys
runs = []
for line in open(sys.argv[1]):
    gateway_pid, text = line.split(" ", 1)
    r = json.loads(text)
    # CPU per measured request of each process, by its part: the gateway (the pid given
    # with --pid), and the router (the process mcp-bench started) when there is one.
    names = {p["name"]: ("gateway" if p["pid"] == int(gateway_pid) else "router")
             for p in r["procs"]}
    r["cpu"] = {names.get(k[len("cpu_us_per_request_"):], k): v for k, v in r.items()
                if k.startswith("cpu_us_per_request_")}
    runs.append(r)
by = {"old": [], "new": []}
for r in runs:
    by[r["label"]].append(r)
    cpu = "  ".join(f"{k} CPU {v:5.2f} µs/request" for k, v in sorted(r["cpu"].items()))
    print(f'{r["label"]}  {r["rps"]:9.0f} req/s  p50 {r["p50_us"]:7.1f} µs  '
          f'p99 {r["p99_us"]:7.1f} µs  {cpu}')
old, new = ([r["rps"] for r in by[k]] for k in ("old", "new"))
ratios = sorted(n / o for n, o in zip(new, old))
p50 = {k: st.median(r["p50_us"] for r in by[k]) for k in by}
print(f"medians: old {st.median(old):.0f}, new {st.median(new):.0f} req/s "
      f"(ratio {st.median(new) / st.median(old):.3f}); p50 {p50['old']:.1f} → {p50['new']:.1f} µs")
print("per-round ratios:", " ".join(f"{x:.2f}" for x in ratios))
names = sorted({k for r in runs for k in r["cpu"]})
for name in names:
    o, n = (st.median(r["cpu"][name] for r in by[k] if name in r["cpu"]) for k in ("old", "new"))
    # Short runs (CI's smoke) can see no CPU tick at all: no ratio then.
    ratio = f"{n / o:.3f}" if o > 0 else "n/a: no CPU time measured"
    print(f"{name} CPU per request, medians: old {o:.2f}, new {n:.2f} µs (ratio {ratio})")
PY
