#!/usr/bin/env bash
# Packaging tests: static builds for x86_64 and aarch64, the binaries run (aarch64 under
# qemu-aarch64-static), a request through router -> gateway -> fixture on each
# architecture, the TLS variant's builds and TLS tests (aarch64 under qemu), the example
# configurations, install.sh into a throwaway root and as a
# real install confined to a private mount namespace, the systemd unit
# (systemd-analyze verify / security) and the notification protocol it relies on, and
# the .deb (contents, dpkg -i/-r/-P in an empty root and confined on the live system).
#
#   packaging/test.sh
#
# Installs what it needs (rustup targets via build.sh; apt: qemu-user-static, systemd
# for systemd-analyze, clang for the aarch64 TLS build; the Python test peers via
# tests/setup.sh when missing). Exits non-zero when a check fails; the last line is
# "N passed, M failed".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PKG="$ROOT/packaging"
DIST="$ROOT/target/dist"
X86="$DIST/x86_64-unknown-linux-musl"
ARM="$DIST/aarch64-unknown-linux-musl"
MAX_EXPOSURE=2.0

T=$(mktemp -d)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
nok() { failed=$((failed + 1)); printf 'FAIL  %s%s\n' "$1" "${2:+: $2}"; }
step() { printf '\n== %s\n' "$*"; }
finish() {
    printf '\n%d passed, %d failed\n' "$passed" "$failed"
    [ "$failed" = 0 ]
    exit
}
# expect_rc NAME WANT CMD...: runs CMD, passes when its exit status is WANT.
expect_rc() {
    local name=$1 want=$2 rc
    shift 2
    "$@" >"$T/out" 2>&1
    rc=$?
    if [ "$rc" = "$want" ]; then ok "$name"; else nok "$name" "exit $rc, want $want: $(head -c 400 "$T/out")"; fi
}

step "setup: apt packages (qemu-user-static, systemd) when missing"
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v file >/dev/null || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
    echo "apt-get install ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
QEMU=$(command -v qemu-aarch64-static || true)
if [ -n "$QEMU" ]; then ok "qemu-aarch64-static available ($QEMU)"; else nok "qemu-aarch64-static available"; fi

step "build: packaging/build.sh --target all (release, static musl, x86_64 + aarch64)"
if "$PKG/build.sh" --target all 2>&1 | grep -v '^ *Compiling '; then
    ok "build.sh: both targets built, every binary static"
else
    nok "build.sh"
    finish
fi
for d in "$X86" "$ARM"; do
    for b in mcp-router mcp-gateway mcp-fixture; do
        [ -x "$d/$b" ] || nok "$d/$b exists"
    done
done

# smoke LABEL DIST [EMULATOR]: gateway on 127.0.0.1:0 with the fixture as backend "fx"
# (all under EMULATOR when given), then initialize, tools/list and tools/call fx.echo
# through the router, then SIGTERM to the gateway.
smoke() {
    local label=$1 dist=$2 emu=${3:-}
    local d="$T/smoke-$label" run=() cmd args
    mkdir -p "$d"
    if [ -n "$emu" ]; then
        run=("$emu")
        # No binfmt_misc in a container: the gateway runs the emulator, which runs the
        # aarch64 fixture.
        cmd=$emu
        args="[\"$dist/mcp-fixture\", \"--name\", \"fx\"]"
    else
        cmd="$dist/mcp-fixture"
        args='["--name", "fx"]'
    fi
    cat >"$d/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[[backends]]
name = "fx"
transport = "stdio"
command = "$cmd"
args = $args
EOF
    echo "gateway: ${run[*]} $dist/mcp-gateway --config $d/gateway.toml"
    mkfifo "$d/gateway.err"
    timeout -k 5 120 "${run[@]}" "$dist/mcp-gateway" --config "$d/gateway.toml" 2>"$d/gateway.err" &
    local gw=$!
    pids+=("$gw")
    local efd line rc url=""
    exec {efd}<"$d/gateway.err"
    # Read the gateway's stderr until the "listening on ws://..." line (or its end).
    local deadline=$((SECONDS + 60))
    while [ -z "$url" ] && [ "$SECONDS" -lt "$deadline" ]; do
        if IFS= read -r -t 5 -u "$efd" line; then
            printf '%s\n' "$line" >>"$d/gateway.log"
            if [[ $line =~ listening\ on\ (ws://[^ ]+) ]]; then url=${BASH_REMATCH[1]}; fi
        else
            rc=$?
            [ "$rc" -gt 128 ] || break  # end of stream: the gateway exited
        fi
    done
    cat <&"$efd" >>"$d/gateway.log" &  # keep draining its stderr
    pids+=("$!")
    exec {efd}<&-
    if [ -z "$url" ]; then
        nok "$label: gateway listening" "$(tail -n 5 "$d/gateway.log" 2>/dev/null)"
        kill -TERM "$gw" 2>/dev/null
        return
    fi
    ok "$label: gateway says listening on $url"

    echo "router: ${run[*]} $dist/mcp-router --gateway $url"
    coproc ROUTER { exec timeout -k 5 60 "${run[@]}" "$dist/mcp-router" --gateway "$url" 2>>"$d/router.log"; }
    local rpid=$ROUTER_PID rin=${ROUTER[1]} rout=${ROUTER[0]} reply=""
    pids+=("$rpid")
    send() { printf '%s\n' "$1" >&"$rin"; echo "  -> $1"; }
    # recv ID: reads router stdout until the response with that id.
    recv() {
        local want=$1 l
        reply=""
        while IFS= read -r -t 30 -u "$rout" l; do
            printf '%s\n' "$l" >>"$d/router.out"
            if [[ $l =~ \"id\":[[:space:]]*${want}[,}] ]]; then
                reply=$l
                echo "  <- ${l:0:160}$([ ${#l} -gt 160 ] && echo ...)"
                return 0
            fi
        done
        return 1
    }
    send '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"packaging-test","version":"1"}}}'
    if recv 1 && [[ $reply == *'"result"'* && $reply == *'"protocolVersion"'* ]]; then
        ok "$label: initialize through router and gateway"
    else
        nok "$label: initialize" "${reply:-no response}"
    fi
    send '{"jsonrpc":"2.0","method":"notifications/initialized"}'
    send '{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
    if recv 2 && [[ $reply =~ \"name\":[[:space:]]*\"fx\.echo\" ]]; then
        ok "$label: tools/list offers fx.echo"
    else
        nok "$label: tools/list" "${reply:-no response}"
    fi
    local text="hello from $label"
    send '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"fx.echo","arguments":{"text":"'"$text"'"}}}'
    if recv 3 && [[ $reply =~ \"text\":[[:space:]]*\"$text\" && $reply != *'"isError":true'* ]]; then
        ok "$label: tools/call fx.echo answered by the fixture"
    else
        nok "$label: tools/call fx.echo" "${reply:-no response}"
    fi
    if [ -z "$emu" ]; then
        # For the unit's MemoryMax (informational): the gateway is the child of
        # `timeout`, the fixture backend the child of the gateway.
        local gpid bpid
        gpid=$(cat "/proc/$gw/task/$gw/children" 2>/dev/null | awk '{ print $1 }')
        bpid=$(cat "/proc/$gpid/task/$gpid/children" 2>/dev/null | awk '{ print $1 }')
        echo "  memory: gateway $(awk '/^VmRSS|^VmHWM/ { printf "%s %s kB  ", $1, $2 }' "/proc/$gpid/status" 2>/dev/null)|" \
             "backend (fixture) $(awk '/^VmRSS/ { printf "%s %s kB", $1, $2 }' "/proc/$bpid/status" 2>/dev/null)"
    fi
    exec {rin}>&-
    wait "$rpid"
    rc=$?
    if [ "$rc" = 0 ]; then ok "$label: router exits 0 at end of stdin"; else nok "$label: router exit" "status $rc: $(tail -n 3 "$d/router.log")"; fi
    kill -TERM "$gw"
    wait "$gw"
    rc=$?
    if [ "$rc" = 0 ]; then ok "$label: gateway exits 0 on SIGTERM"; else nok "$label: gateway exit on SIGTERM" "status $rc: $(tail -n 3 "$d/gateway.log")"; fi
}

cat >"$T/bad-gateway.toml" <<'EOF'
[server]
listen = "not-an-address"
EOF
cat >"$T/unknown-key-gateway.toml" <<'EOF'
[server]
listne = "127.0.0.1:8443"
EOF
cat >"$T/bad-router.toml" <<'EOF'
[gateway]
url = "http://127.0.0.1:8443/mcp"
EOF

for arch in x86_64 aarch64; do
    if [ "$arch" = x86_64 ]; then dist=$X86; emu=""; else dist=$ARM; emu=$QEMU; fi
    run=()
    [ -n "$emu" ] && run=("$emu")
    step "$arch: --version and --check-config${emu:+ under $emu}"
    for b in mcp-gateway mcp-router; do
        v=$("${run[@]}" "$dist/$b" --version 2>&1)
        if [[ $v =~ ^$b\ [0-9]+\.[0-9]+\.[0-9]+ ]]; then ok "$arch: $b --version: $v"; else nok "$arch: $b --version" "$v"; fi
    done
    expect_rc "$arch: gateway --check-config packaging/gateway.toml (0)" 0 \
        "${run[@]}" "$dist/mcp-gateway" --check-config --config "$PKG/gateway.toml"
    expect_rc "$arch: gateway --check-config invalid listen address (64)" 64 \
        "${run[@]}" "$dist/mcp-gateway" --check-config --config "$T/bad-gateway.toml"
    expect_rc "$arch: gateway --check-config unknown key (64)" 64 \
        "${run[@]}" "$dist/mcp-gateway" --check-config --config "$T/unknown-key-gateway.toml"
    expect_rc "$arch: router --check-config packaging/router.toml (0)" 0 \
        "${run[@]}" "$dist/mcp-router" --check-config --config "$PKG/router.toml"
    expect_rc "$arch: router --check-config http:// url (64)" 64 \
        "${run[@]}" "$dist/mcp-router" --check-config --config "$T/bad-router.toml"
    step "$arch: one request through router -> gateway -> fixture${emu:+ (all three under qemu)}"
    smoke "$arch" "$dist" "$emu"
done

# The TLS variant (otlp-tls: rustls with ring, whose C and assembly differ per
# architecture): built static for both targets, then the TLS tests of tests/python run
# against those binaries — on aarch64 through qemu — so a handshake with a real
# collector, certificate checks and mutual TLS are exercised on the code that ships.
step "TLS variant: packaging/build.sh --target all --features otlp-tls, and the TLS tests on it"
if "$PKG/build.sh" --target all --features otlp-tls 2>&1 | grep -v '^ *Compiling '; then
    ok "build.sh --features otlp-tls: both targets built, every binary static"
    VENV_PY=$ROOT/.cache/venv/bin/python
    if [ ! -x "$VENV_PY" ]; then bash "$ROOT/tests/setup.sh" >/dev/null; fi
    for arch in x86_64 aarch64; do
        if [ "$arch" = x86_64 ]; then emu=""; else emu=$QEMU; fi
        dist="$DIST/$arch-unknown-linux-musl+otlp-tls"
        bins="$T/tls-$arch"
        mkdir -p "$bins"
        # The tests start mcp-gateway and mcp-router from one directory: scripts that
        # exec the binary (under the emulator on aarch64) keep the pid and the signals.
        for b in mcp-gateway mcp-router; do
            printf '#!/bin/sh\nexec %s %s "$@"\n' "$emu" "$dist/$b" >"$bins/$b"
            chmod +x "$bins/$b"
        done
        v=$("$bins/mcp-gateway" --version 2>&1)
        if [[ $v == *"tls: otlp"* ]]; then ok "$arch TLS: gateway --version: $v"; else nok "$arch TLS: gateway --version" "$v"; fi
        # The backend is the x86_64 static fixture, run natively.
        if MCP_TLS_BIN_DIR=$bins MCP_BIN_DIR=$X86 "$VENV_PY" -m pytest -q -p no:cacheprovider \
            "$ROOT/tests/python/test_otlp_tls.py" >"$T/tls-$arch.log" 2>&1; then
            ok "$arch TLS: tests/python/test_otlp_tls.py${emu:+ under qemu}: $(tail -n 1 "$T/tls-$arch.log")"
        else
            nok "$arch TLS: tests/python/test_otlp_tls.py${emu:+ under qemu}" "$(tail -n 15 "$T/tls-$arch.log")"
        fi
    done
else
    nok "build.sh --features otlp-tls"
fi

step "x86_64: what Type=notify, WatchdogSec and ExecReload rely on; admin endpoints"
# The gateway under a fake $NOTIFY_SOCKET (a unix datagram socket, as systemd gives
# it): READY=1 after the listening line, WATCHDOG=1 pings, RELOADING=1 + READY=1 on
# SIGHUP, STOPPING=1 and exit 0 on SIGTERM; /healthz, /readyz, /metrics answer 200.
cat >"$T/notify-gateway.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[[backends]]
name = "fx"
transport = "stdio"
command = "$X86/mcp-fixture"
EOF
cat >"$T/notify.py" <<'EOF'
import os, re, select, signal, socket, subprocess, sys, time, urllib.request

gateway, config, sock_path = sys.argv[1:4]
results = []
def check(name, cond, detail=""):
    results.append(cond)
    print(("ok    " if cond else "FAIL  ") + name + ("" if cond or not detail else ": " + detail), flush=True)

srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind(sock_path)
env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="2000000")
# Unbuffered: select() must see every byte not yet read.
p = subprocess.Popen([gateway, "--config", config], env=env, stderr=subprocess.PIPE, bufsize=0)
log = []
def until(pred, timeout):
    """Reads notifications and stderr lines until pred(message) or timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([srv, p.stderr], [], [], end - time.monotonic())
        if srv in r:
            msg = srv.recv(4096).decode()
            if pred(msg):
                return msg
        if p.stderr in r:
            line = p.stderr.readline().decode()
            if line:
                log.append(line.rstrip())
    return None

def wait_log(pattern, timeout):
    """Reads stderr lines until one matches (the gateway logs before it notifies)."""
    end = time.monotonic() + timeout
    while not any(re.search(pattern, l) for l in log) and time.monotonic() < end:
        if select.select([p.stderr], [], [], end - time.monotonic())[0]:
            line = p.stderr.readline().decode()
            if not line:
                break
            log.append(line.rstrip())
    return any(re.search(pattern, l) for l in log)

try:
    ready = until(lambda m: m == "READY=1", 20)
    check("notify: READY=1 once listening", ready is not None and wait_log("listening on ws://", 5),
          " | ".join(log[-3:]))
    check("notify: WATCHDOG=1 pings (WATCHDOG_USEC=2s)", until(lambda m: m == "WATCHDOG=1", 5) is not None)
    admin = next((m.group(1) for l in log for m in [re.search(r"admin endpoints on (http://\S+)", l)] if m), None)
    check("admin listener announced", admin is not None, " | ".join(log[-3:]))
    for path in ("/healthz", "/readyz", "/metrics"):
        try:
            with urllib.request.urlopen(admin + path, timeout=10) as r:
                body = r.read().decode()
                check(f"admin {path}: HTTP {r.status}", r.status == 200 and (path != "/metrics" or "# TYPE" in body))
        except Exception as e:
            check(f"admin {path}", False, repr(e))
    p.send_signal(signal.SIGHUP)
    check("notify: SIGHUP gives RELOADING=1", until(lambda m: m.startswith("RELOADING=1"), 10) is not None)
    check("notify: then READY=1 again", until(lambda m: m == "READY=1", 10) is not None)
    p.send_signal(signal.SIGTERM)
    check("notify: SIGTERM gives STOPPING=1", until(lambda m: m == "STOPPING=1", 10) is not None)
    rc = p.wait(timeout=20)
    check("gateway exits 0 after SIGTERM", rc == 0, f"status {rc}")
finally:
    if p.poll() is None:
        p.kill()
sys.exit(0 if all(results) else 1)
EOF
echo "python3 notify.py: $X86/mcp-gateway with NOTIFY_SOCKET and WATCHDOG_USEC set"
python3 "$T/notify.py" "$X86/mcp-gateway" "$T/notify-gateway.toml" "$T/notify.sock" >"$T/notify.log" 2>&1
grep -E '^(ok|FAIL) ' "$T/notify.log"
passed=$((passed + $(grep -c '^ok ' "$T/notify.log")))
failed=$((failed + $(grep -c '^FAIL ' "$T/notify.log")))
if ! grep -q '^ok ' "$T/notify.log"; then nok "notify test ran" "$(tail -n 5 "$T/notify.log")"; fi

step "example configurations: every documented key, uncommented, is accepted"
# Uncomment "#key = value" lines (and "#[auth]") up to the commented second backend;
# keep one of the two exclusive token keys, pointing at a real token file.
echo "s3cret" >"$T/token"
uncomment() {
    awk '/^# A second backend/ { stop = 1 }
         !stop && /^#\[auth\]$/ { sub(/^#/, "") }
         !stop && /^#[a-z_]+ = / { sub(/^#/, "") }
         { print }' "$1"
}
uncomment "$PKG/gateway.toml" | grep -v '^token_env = ' \
    | sed "s|^token_file = .*|token_file = \"$T/token\"|" >"$T/all-gateway.toml"
uncomment "$PKG/router.toml" | grep -v '^token_file = ' >"$T/all-router.toml"
n=$(grep -c '^[a-z_]* = ' "$T/all-gateway.toml")
expect_rc "gateway.toml with all $n keys set accepted" 0 \
    "$X86/mcp-gateway" --check-config --config "$T/all-gateway.toml"
n=$(grep -c '^[a-z_]* = ' "$T/all-router.toml")
expect_rc "router.toml with all $n keys set accepted" 0 \
    env MCP_GATEWAY_TOKEN=x "$X86/mcp-router" --check-config --config "$T/all-router.toml"

step "install.sh into a throwaway root"
R="$T/root"
echo "packaging/install.sh --destdir $R --bin-dir $X86"
if "$PKG/install.sh" --destdir "$R" --bin-dir "$X86" >"$T/install.log" 2>&1; then
    ok "install.sh --destdir exits 0"
else
    nok "install.sh --destdir" "$(tail -n 5 "$T/install.log")"
fi
expected_layout() {
    cat <<'EOF'
755 usr/bin/mcp-gateway
755 usr/bin/mcp-router
755 usr/lib/mcp-bridge/mcp-fixture
640 etc/mcp-bridge/gateway.toml
644 etc/mcp-bridge/router.toml
644 lib/systemd/system/mcp-gateway.service
644 usr/lib/sysusers.d/mcp-gateway.conf
644 usr/share/doc/mcp-bridge/packaging.md
EOF
}
layout_ok=1
while read -r mode path; do
    if [ ! -f "$R/$path" ]; then nok "installed $path" "missing"; layout_ok=0; continue; fi
    m=$(stat -c %a "$R/$path")
    [ "$m" = "$mode" ] || { nok "mode of $path" "$m, want $mode"; layout_ok=0; }
done < <(expected_layout)
extra=$(cd "$R" && find . -type f -printf '%P\n' | sort | comm -23 - <(expected_layout | cut -d' ' -f2 | sort))
[ -z "$extra" ] || { nok "no unexpected files" "$extra"; layout_ok=0; }
[ "$layout_ok" = 1 ] && ok "layout and modes: $(expected_layout | tr '\n' ',' | sed 's/,$//')"
if cmp -s "$R/lib/systemd/system/mcp-gateway.service" "$PKG/systemd/mcp-gateway.service" \
   && cmp -s "$R/etc/mcp-bridge/gateway.toml" "$PKG/gateway.toml"; then
    ok "prefix /usr: unit and gateway.toml installed unchanged"
else
    nok "prefix /usr: unit and gateway.toml installed unchanged"
fi
expect_rc "installed mcp-gateway --check-config on the installed gateway.toml" 0 \
    "$R/usr/bin/mcp-gateway" --check-config --config "$R/etc/mcp-bridge/gateway.toml"
expect_rc "installed mcp-router --check-config on the installed router.toml" 0 \
    "$R/usr/bin/mcp-router" --check-config --config "$R/etc/mcp-bridge/router.toml"
snapshot() { (cd "$1" && find . -printf '%P %m %s\n' | sort && find . -type f -exec md5sum {} + | sort -k2); }
snapshot "$R" >"$T/snap1"
"$PKG/install.sh" --destdir "$R" --bin-dir "$X86" >"$T/install2.log" 2>&1
snapshot "$R" >"$T/snap2"
if cmp -s "$T/snap1" "$T/snap2"; then ok "install.sh twice: identical tree (idempotent)"; else nok "idempotent install" "$(diff "$T/snap1" "$T/snap2" | head -5)"; fi
echo "# local edit" >>"$R/etc/mcp-bridge/gateway.toml"
echo "# local edit" >>"$R/etc/mcp-bridge/router.toml"
"$PKG/install.sh" --destdir "$R" --bin-dir "$X86" >"$T/install3.log" 2>&1
if tail -n1 "$R/etc/mcp-bridge/gateway.toml" | grep -q 'local edit' \
   && tail -n1 "$R/etc/mcp-bridge/router.toml" | grep -q 'local edit' \
   && grep -q 'kept existing' "$T/install3.log"; then
    ok "reinstall keeps edited configuration files"
else
    nok "reinstall keeps edited configuration files"
fi
expect_rc "sysusers.d entry creates mcp-gateway in the throwaway root" 0 \
    systemd-sysusers --root="$R" mcp-gateway.conf
if grep -q '^mcp-gateway:x:[0-9]*:[0-9]*:MCP gateway:/nonexistent:/usr/sbin/nologin$' "$R/etc/passwd" 2>/dev/null; then
    ok "mcp-gateway: system user, no home, nologin"
else
    nok "mcp-gateway user entry" "$(cat "$R/etc/passwd" 2>/dev/null)"
fi
rm -f "$R"/etc/passwd "$R"/etc/group "$R"/etc/shadow "$R"/etc/gshadow "$R"/etc/*- "$R"/etc/.pwd.lock
"$PKG/install.sh" --destdir "$R" --uninstall >"$T/uninstall.log" 2>&1
left=$(cd "$R" && find . -type f -printf '%P\n' | sort | tr '\n' ' ')
if [ "$left" = "etc/mcp-bridge/gateway.toml etc/mcp-bridge/router.toml " ]; then
    ok "--uninstall removes binaries, unit, sysusers entry, docs; keeps the two configs"
else
    nok "--uninstall" "left: $left"
fi
expect_rc "--uninstall again (nothing to remove) exits 0" 0 "$PKG/install.sh" --destdir "$R" --uninstall
"$PKG/install.sh" --destdir "$R" --bin-dir "$X86" >/dev/null 2>&1
if [ -x "$R/usr/bin/mcp-gateway" ] && tail -n1 "$R/etc/mcp-bridge/gateway.toml" | grep -q 'local edit'; then
    ok "install after uninstall: binaries back, edited configuration kept"
else
    nok "install after uninstall"
fi
R2="$T/root-local"
"$PKG/install.sh" --destdir "$R2" --prefix /usr/local --bin-dir "$X86" >/dev/null 2>&1
u="$R2/usr/local/lib/systemd/system/mcp-gateway.service"
if [ -x "$R2/usr/local/bin/mcp-gateway" ] && [ -f "$u" ] \
   && grep -q '^ExecStart=/usr/local/bin/mcp-gateway --config /etc/mcp-bridge/gateway.toml$' "$u" \
   && ! grep -q '/usr/bin/mcp-gateway' "$u" \
   && grep -q '^command = "/usr/local/lib/mcp-bridge/mcp-fixture"$' "$R2/etc/mcp-bridge/gateway.toml"; then
    ok "--prefix /usr/local: files under /usr/local, unit and config paths rewritten"
else
    nok "--prefix /usr/local"
fi

# confined NAME SCRIPT [VAR=VALUE...]: runs the bash SCRIPT in a private mount namespace
# with overlays on /usr, /etc and /var (and /lib when it is not a symlink into /usr):
# what SCRIPT installs, the users it creates, dpkg's database all change for real in
# there, and the host's directories are never written. SCRIPT reports with ok/nok.
confined_prelude='
set -u
ok() { echo "ok    $NAME: $1"; }
nok() { echo "FAIL  $NAME: $1"; }
dirs="usr etc var"
[ -L /lib ] || dirs="$dirs lib"
for d in $dirs; do
    mkdir -p "$O/$d/u" "$O/$d/w"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$O/$d/u,workdir=$O/$d/w" "/$d" \
        || { echo "SKIP  $NAME: overlay mount on /$d not possible here"; exit 0; }
done
'
host_state() {
    ls -d /etc/mcp-bridge /usr/bin/mcp-gateway /usr/bin/mcp-router /usr/lib/mcp-bridge \
        /lib/systemd/system/mcp-gateway.service 2>/dev/null | tr '\n' ' '
    getent passwd mcp-gateway
    dpkg-query -W -f '${Status}' mcp-bridge 2>/dev/null
}
confined() {
    local name=$1 script=$2 log="$T/confined-$1.log" before after
    shift 2
    if ! command -v unshare >/dev/null || ! unshare -m --propagation private true 2>/dev/null; then
        echo "SKIP  $name: no private mount namespace here"
        return
    fi
    before=$(host_state)
    rm -rf "$T/overlay-$name"
    env NAME="$name" O="$T/overlay-$name" PKG="$PKG" X86="$X86" "$@" \
        unshare -m --propagation private bash -c "$confined_prelude$script" >"$log" 2>&1
    grep -E '^(ok|FAIL|SKIP) ' "$log"
    passed=$((passed + $(grep -c '^ok ' "$log")))
    failed=$((failed + $(grep -c '^FAIL ' "$log")))
    grep -qE '^(ok|SKIP) ' "$log" || nok "$name" "$(tail -n 5 "$log")"
    after=$(host_state)
    if [ "$before" = "$after" ]; then
        ok "$name: host untouched"
    else
        nok "$name: host untouched" "before: $before; after: $after"
    fi
}

step "install.sh as a real install (no --destdir), confined to a private mount namespace"
echo "unshare -m + overlays: packaging/install.sh; install.sh again; install.sh --uninstall"
confined "live install" '
if "$PKG/install.sh" --bin-dir "$X86"; then ok "install.sh exits 0"; else nok "install.sh"; fi
getent passwd mcp-gateway >/dev/null && ok "mcp-gateway user created" || nok "mcp-gateway user"
[ "$(stat -c "%a %U %G" /etc/mcp-bridge/gateway.toml)" = "640 root mcp-gateway" ] \
    && ok "gateway.toml is root:mcp-gateway 0640" || nok "gateway.toml owner/mode: $(stat -c "%a %U %G" /etc/mcp-bridge/gateway.toml)"
runuser -u mcp-gateway -- /usr/bin/mcp-gateway --check-config --config /etc/mcp-bridge/gateway.toml >/dev/null \
    && ok "the service user reads gateway.toml" || nok "the service user cannot read gateway.toml"
runuser -u nobody -- /usr/bin/mcp-gateway --check-config --config /etc/mcp-bridge/gateway.toml >/dev/null 2>&1 \
    && nok "another user can read gateway.toml" || ok "other users cannot read gateway.toml"
runuser -u nobody -- /usr/bin/mcp-router --check-config --config /etc/mcp-bridge/router.toml 2>/dev/null \
    && ok "any user can use router.toml" || nok "router.toml unreadable for users"
"$PKG/install.sh" --bin-dir "$X86" | grep -q "kept existing /etc/mcp-bridge/gateway.toml" \
    && ok "second run keeps the configuration" || nok "second run"
"$PKG/install.sh" --uninstall >/dev/null
[ ! -e /usr/bin/mcp-gateway ] && [ ! -e /lib/systemd/system/mcp-gateway.service ] && [ -f /etc/mcp-bridge/gateway.toml ] \
    && ok "--uninstall removes binaries and unit, keeps /etc/mcp-bridge" || nok "--uninstall"
'

step "README install section, run verbatim (confined; sudo is a pass-through for root)"
readme_block=$(sed -n '/<!-- install:begin/,/<!-- install:end/p' "$PKG/../README.md" | sed '/^```/d; /^<!--/d')
if [ -z "$readme_block" ]; then
    nok "README install section" "no install:begin/install:end block in README.md"
else
    printf '%s\n' "$readme_block" | sed 's/^/    /'
    confined "README install" '
sudo() { "$@"; }
cd "$PKG/.."
if ( set -e; eval "$README_BLOCK" ) >/dev/null 2>&1; then ok "the README install commands succeed as written"; else nok "README install commands failed"; fi
[ -x /usr/bin/mcp-gateway ] && [ -x /usr/bin/mcp-router ] && [ -f /etc/mcp-bridge/gateway.toml ] \
    && ok "binaries and configuration are where the README says" || nok "installed layout"
' README_BLOCK="$readme_block"
fi

step "systemd unit: systemd-analyze verify and security"
# verify checks that ExecStart's program exists: point it at the built binary.
V="$T/verify"
mkdir -p "$V"
sed "s|/usr/bin/mcp-gateway|$X86/mcp-gateway|g" "$PKG/systemd/mcp-gateway.service" >"$V/mcp-gateway.service"
echo "systemd-analyze verify --man=no mcp-gateway.service"
vout=$(systemd-analyze verify --man=no "$V/mcp-gateway.service" 2>&1)
rc=$?
if [ "$rc" = 0 ] && [ -z "$vout" ]; then ok "systemd-analyze verify: clean"; else nok "systemd-analyze verify" "exit $rc: $vout"; fi
# `--offline` and `--threshold` came with systemd 250 (Ubuntu 22.04 has 249).
sd_ver=$(systemd-analyze --version 2>/dev/null | awk 'NR == 1 { print $2 + 0 }')
if [ "${sd_ver:-0}" -lt 250 ]; then
    echo "SKIP  systemd-analyze security: systemd ${sd_ver:-?} lacks --offline/--threshold (250+)"
else
    echo "systemd-analyze security --offline=true --threshold=20 mcp-gateway.service"
    sout=$(systemd-analyze security --offline=true --threshold=20 "$PKG/systemd/mcp-gateway.service" 2>&1)
    rc=$?
    printf '%s\n' "$sout" | grep -E '✗|Overall'
    exposure=$(printf '%s\n' "$sout" | sed -n 's/.*Overall exposure level for mcp-gateway.service: \([0-9.]*\).*/\1/p')
    if [ "$rc" = 0 ] && [ -n "$exposure" ] && awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
        ok "systemd-analyze security: exposure $exposure (<= $MAX_EXPOSURE)"
    else
        nok "systemd-analyze security" "exit $rc, exposure '${exposure}' (want <= $MAX_EXPOSURE)"
    fi
fi
for key in Type=notify 'ExecReload=/bin/kill -HUP $MAINPID' Restart=on-failure User=mcp-gateway \
           ProtectSystem=strict ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes 'CapabilityBoundingSet=' \
           'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' SystemCallFilter=@system-service \
           MemoryMax= LimitNOFILE=65536; do
    grep -q -- "^$key" "$PKG/systemd/mcp-gateway.service" || missing_keys="${missing_keys:-} [$key]"
done
if [ -z "${missing_keys:-}" ]; then
    ok "unit sets Type=notify, ExecReload=SIGHUP, restart policy and the required hardening keys"
else
    nok "unit keys" "missing:$missing_keys"
fi

step "deb: packaging/deb.sh --no-build (amd64 + arm64)"
if "$PKG/deb.sh" --no-build --out "$T/debs" >"$T/deb.log" 2>&1; then
    cat "$T/deb.log"
    ok "deb.sh builds both packages"
else
    nok "deb.sh" "$(tail -n 5 "$T/deb.log")"
fi
for debarch in amd64 arm64; do
    deb=$(ls "$T"/debs/mcp-bridge_*_"$debarch".deb 2>/dev/null | head -n1)
    if [ -z "$deb" ]; then nok "$debarch .deb exists"; continue; fi
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$debarch" ] && ok "$debarch: Architecture field" || nok "$debarch: Architecture field"
    listing=$(dpkg-deb -c "$deb")
    miss=""
    while read -r mode path; do
        line=$(printf '%s\n' "$listing" | awk -v p="./$path" '$NF == p')
        case "$mode" in 755) want='-rwxr-xr-x' ;; 644) want='-rw-r--r--' ;; 640) want='-rw-r-----' ;; esac
        [[ $line == "$want root/root "* ]] || miss="$miss $path"
    done < <(expected_layout)
    if [ -z "$miss" ]; then ok "$debarch: dpkg-deb -c lists the install.sh layout, root-owned, same modes"; else nok "$debarch: dpkg-deb -c" "wrong or missing:$miss"; fi
    if dpkg-deb -f "$deb" Depends | grep -q .; then nok "$debarch: no Depends (static binaries)"; fi
    [ "$(dpkg-deb -I "$deb" conffiles | sort | tr '\n' ' ')" = "/etc/mcp-bridge/gateway.toml /etc/mcp-bridge/router.toml " ] \
        && ok "$debarch: conffiles are the two configs" || nok "$debarch: conffiles"
done
deb=$(ls "$T"/debs/mcp-bridge_*_amd64.deb 2>/dev/null | head -n1)
if [ -n "$deb" ]; then
    X="$T/extract"
    dpkg-deb -x "$deb" "$X"
    expect_rc "amd64 .deb extracted: mcp-gateway --check-config on its gateway.toml" 0 \
        "$X/usr/bin/mcp-gateway" --check-config --config "$X/etc/mcp-bridge/gateway.toml"
    # A real dpkg install into an empty root (maintainer scripts run chrootless with
    # DPKG_ROOT set), then remove and purge.
    DR="$T/dpkgroot"
    mkdir -p "$DR/var/lib/dpkg/info" "$DR/var/lib/dpkg/updates" "$DR/var/lib/dpkg/triggers" "$DR/etc"
    touch "$DR/var/lib/dpkg/status"
    echo "dpkg --root=$DR --force-script-chrootless -i $(basename "$deb")"
    expect_rc "dpkg -i into an empty root" 0 \
        dpkg --root="$DR" --force-script-chrootless --log=/dev/null -i "$deb"
    gid=$(awk -F: '$1 == "mcp-gateway" { print $3 }' "$DR/etc/group" 2>/dev/null)
    if [ -n "$gid" ] && [ "$(stat -c '%a %g' "$DR/etc/mcp-bridge/gateway.toml")" = "640 $gid" ] \
       && [ -x "$DR/usr/bin/mcp-gateway" ]; then
        ok "postinst: mcp-gateway user created, gateway.toml root:mcp-gateway 0640"
    else
        nok "postinst user and config group" "gid=$gid $(stat -c '%a %g' "$DR/etc/mcp-bridge/gateway.toml" 2>&1)"
    fi
    expect_rc "dpkg -r" 0 dpkg --root="$DR" --force-script-chrootless --log=/dev/null -r mcp-bridge
    if [ ! -e "$DR/usr/bin/mcp-gateway" ] && [ ! -e "$DR/lib/systemd/system/mcp-gateway.service" ] \
       && [ -f "$DR/etc/mcp-bridge/gateway.toml" ]; then
        ok "dpkg -r removes binaries and unit, keeps configuration"
    else
        nok "dpkg -r"
    fi
    expect_rc "dpkg -P" 0 dpkg --root="$DR" --force-script-chrootless --log=/dev/null -P mcp-bridge
    if [ ! -e "$DR/etc/mcp-bridge" ]; then ok "dpkg -P removes the configuration"; else nok "dpkg -P" "$(ls -A "$DR/etc/mcp-bridge")"; fi
fi

step "deb: a real dpkg -i / -r / -P, confined to a private mount namespace"
if [ -n "$deb" ]; then
    echo "unshare -m + overlays: dpkg -i $(basename "$deb"); dpkg -i again; dpkg -r; dpkg -P"
    confined "live dpkg" '
dpkg -i "$DEB" >/dev/null && ok "dpkg -i exits 0" || nok "dpkg -i"
[ "$(dpkg-query -W -f "\${Status}" mcp-bridge)" = "install ok installed" ] && ok "package installed" || nok "package status"
getent passwd mcp-gateway >/dev/null && ok "postinst created the mcp-gateway user" || nok "mcp-gateway user"
[ "$(stat -c "%a %U %G" /etc/mcp-bridge/gateway.toml)" = "640 root mcp-gateway" ] \
    && ok "gateway.toml is root:mcp-gateway 0640" || nok "gateway.toml owner/mode: $(stat -c "%a %U %G" /etc/mcp-bridge/gateway.toml)"
runuser -u mcp-gateway -- /usr/bin/mcp-gateway --check-config --config /etc/mcp-bridge/gateway.toml >/dev/null \
    && ok "the service user reads gateway.toml" || nok "the service user cannot read gateway.toml"
echo "# local edit" >>/etc/mcp-bridge/gateway.toml
dpkg -i --force-confold "$DEB" >/dev/null && tail -n1 /etc/mcp-bridge/gateway.toml | grep -q "local edit" \
    && ok "reinstall keeps the edited conffile" || nok "reinstall"
dpkg -r mcp-bridge >/dev/null && [ ! -e /usr/bin/mcp-gateway ] && [ -f /etc/mcp-bridge/gateway.toml ] \
    && ok "dpkg -r removes binaries, keeps configuration" || nok "dpkg -r"
dpkg -P mcp-bridge >/dev/null && [ ! -e /etc/mcp-bridge ] && ok "dpkg -P removes /etc/mcp-bridge" || nok "dpkg -P"
' DEB="$deb"
fi

finish
