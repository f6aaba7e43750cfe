#!/usr/bin/env bash
# benches/paired.sh OLD_GATEWAY NEW_GATEWAY [ROUNDS] [N]: two gateway builds side by side
# on the same machine, in the same minutes: each with its own fixture backend (shared
# session), loaded in turn with `mcp-bench ws --tool fx.echo -n N -c 32`, the order
# swapped every other round so neither always runs first. Prints each run, then the
# medians, the ratio of the medians and the per-round ratios (new / old), and the
# gateways' CPU time per request served (utime + stime from /proc, all threads, over
# the measured and the warm-up requests; 10 ms ticks): on a VM whose
# speed drifts between minutes, a change is real when the rounds agree, not when one
# run says so (docs/benchmark.md, "Changes made").
#
# Needs builds of mcp-bench and mcp-fixture: release ones (cargo build --release -p
# mcp-bench -p mcp-fixture), or those in $PAIRED_BIN_DIR (CI's smoke run: target/debug).
# Defaults: 9 rounds of 50,000 requests (~20 s in all).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OLD=${1:?old gateway binary} NEW=${2:?new gateway binary} ROUNDS=${3:-9} N=${4:-50000}
BIN_DIR=${PAIRED_BIN_DIR:-$PWD/target/release}
BENCH=$BIN_DIR/mcp-bench
FIXTURE=$BIN_DIR/mcp-fixture
# Unmeasured requests before each run; the CPU time counts them too.
WARMUP=1000
for b in "$OLD" "$NEW" "$BENCH" "$FIXTURE"; do
    [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 64; }
done
W=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT

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

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

for r in $(seq "$ROUNDS"); do
    order=(old new)
    ((r % 2 == 0)) && order=(new old)
    for v in "${order[@]}"; do
        before=$(cpu_ticks "${PID[$v]}")
        "$BENCH" ws --url "${URL[$v]}" --tool fx.echo -n "$N" -c 32 --warmup "$WARMUP" \
            --label "$v" 2>/dev/null |
            tail -1 > "$W/run.json"
        after=$(cpu_ticks "${PID[$v]}")
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r["cpu_ticks"]=int(sys.argv[2]); print(json.dumps(r))' \
            "$W/run.json" $((after - before)) >> "$W/runs.jsonl"
    done
done

python3 - "$W/runs.jsonl" "$((N + WARMUP))" "$TICK_US" <<'PY'
import json, statistics as st, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
# Requests served per run (the warm-up's included: the CPU time covers them).
n, tick_us = int(sys.argv[2]), int(sys.argv[3])
by = {"old": [], "new": []}
for r in runs:
    r["cpu_us"] = r["cpu_ticks"] * tick_us / n
    by[r["label"]].append(r)
    print(f'{r["label"]}  {r["rps"]:9.0f} req/s  p50 {r["p50_us"]:7.1f} µs  p99 {r["p99_us"]:7.1f} µs'
          f'  gateway CPU {r["cpu_us"]:5.2f} µs/request')
old, new = ([r["rps"] for r in by[k]] for k in ("old", "new"))
ratios = sorted(n / o for n, o in zip(new, old))
p50 = {k: st.median(r["p50_us"] for r in by[k]) for k in by}
print(f"medians: old {st.median(old):.0f}, new {st.median(new):.0f} req/s "
      f"(ratio {st.median(new) / st.median(old):.3f}); p50 {p50['old']:.1f} → {p50['new']:.1f} µs")
print("per-round ratios:", " ".join(f"{x:.2f}" for x in ratios))
cpu = {k: st.median(r["cpu_us"] for r in by[k]) for k in by}
print(f"gateway CPU per request, medians: old {cpu['old']:.2f}, new {cpu['new']:.2f} µs "
      f"(ratio {cpu['new'] / cpu['old']:.3f})")
PY
