#!/usr/bin/env bash
# Builds the bridge and runs it on the bundled default (packaging/demo.toml): an
# mcp-gateway on loopback with the workspace's fixture MCP server as backend, and an
# mcp-router in front of it. Needs no outside server.
#
#   bash packaging/demo.sh            send a short scripted MCP session through the
#                                     router and print every answer, then stop
#   bash packaging/demo.sh --serve    keep the gateway running (Ctrl-C stops it) and
#                                     print the router command to connect an MCP host
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-script}"
# shellcheck source=tests/base.sh
source tests/base.sh
cargo build --release --locked -p mcp-router -p mcp-gateway -p mcp-fixture

mkdir -p .cache
log=.cache/demo-gateway.log
: >"$log"
target/release/mcp-gateway --config packaging/demo.toml 2>"$log" &
gw=$!
trap 'kill "$gw" 2>/dev/null; wait "$gw" 2>/dev/null || true' EXIT

# Wait for the readiness line (bounded: 10 s).
url=""
for _ in $(seq 1 200); do
    url=$(grep -o 'listening on ws://[^ ]*' "$log" | head -1 | cut -d' ' -f3 || true)
    [[ -n "$url" ]] && break
    kill -0 "$gw" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.05
done
[[ -n "$url" ]] || { echo "gateway did not start:" >&2; cat "$log" >&2; exit 1; }
echo "mcp-gateway is listening on $url"

if [[ "$mode" == "--serve" ]]; then
    echo
    echo "Connect any MCP host to it with this stdio server command:"
    echo "  $PWD/target/release/mcp-router --gateway $url"
    echo "Gateway log: $log (Ctrl-C to stop)"
    wait "$gw"
    exit 0
fi

echo "sending a scripted MCP session through mcp-router:"
echo
printf '%s\n' \
  '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"demo","version":"1"}}}' \
  '{"jsonrpc":"2.0","method":"notifications/initialized"}' \
  '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' \
  '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"demo.echo","arguments":{"text":"hello through the bridge"}}}' \
  '{"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"demo.greet","arguments":{"name":"operator"}}}' \
  '{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"fixture://demo/hello"}}' \
  | target/release/mcp-router --gateway "$url" 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    r = m.get("result", m.get("error"))
    if "tools" in r:
        r = {"tools": [t["name"] for t in r["tools"]]}
    print("<- id %s: %s" % (m["id"], json.dumps(r)[:200]))
'
echo
echo "gateway log ($log):"
sed 's/^/  /' "$log"
