#!/usr/bin/env bash
# Installs (or removes) mcp-bridge: binaries, example configuration, systemd unit.
#
#   packaging/install.sh [--prefix DIR] [--destdir DIR] [--bin-dir DIR] [--uninstall]
#                        [--no-user]
#
#   --prefix DIR   installation prefix (default /usr)
#   --destdir DIR  stage everything under DIR (packaging, tests); implies --no-user and
#                  never touches the running system (no systemctl)
#   --bin-dir DIR  where the built binaries are (default: target/dist/<this machine's
#                  arch>-unknown-linux-musl, made by packaging/build.sh)
#   --uninstall    remove binaries, unit, sysusers entry and docs; KEEPS
#                  /etc/mcp-bridge/*.toml (your configuration) and the mcp-gateway user
#   --no-user      do not create the mcp-gateway user nor set the config's group
#
# Layout (DESTDIR=$D, PREFIX=$P):
#   $D$P/bin/mcp-gateway, $D$P/bin/mcp-router                       0755
#   $D$P/lib/mcp-bridge/mcp-fixture    demo backend of the example  0755
#   $D/etc/mcp-bridge/gateway.toml     root:mcp-gateway             0640  never overwritten
#   $D/etc/mcp-bridge/router.toml      root:root                    0644  never overwritten
#   $D/lib/systemd/system/mcp-gateway.service                       0644
#       ($D$P/lib/systemd/system/ when PREFIX is not /usr)
#   $D$P/lib/sysusers.d/mcp-gateway.conf                            0644
#   $D$P/share/doc/mcp-bridge/packaging.md                          0644
# With a PREFIX other than /usr, the paths inside the unit and the example gateway
# configuration are rewritten to match.
#
# Idempotent: running it again replaces binaries, unit and docs and leaves existing
# configuration files alone (a new example is not written over them).
set -euo pipefail
umask 022

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
PKG="$ROOT/packaging"

prefix=/usr
destdir=""
bindir=""
uninstall=0
mkuser=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --destdir) destdir=${2:?--destdir needs a value}; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --bin-dir) bindir=${2:?--bin-dir needs a value}; shift 2 ;;
        --bin-dir=*) bindir=${1#*=}; shift ;;
        --uninstall) uninstall=1; shift ;;
        --no-user) mkuser=0; shift ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$SELF"; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
prefix=${prefix%/}
[ -n "$prefix" ] || prefix=/usr
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac
destdir=${destdir%/}
if [ -n "$destdir" ]; then
    mkdir -p "$destdir"
    destdir=$(cd "$destdir" && pwd)
    mkuser=0
fi

say() { printf 'install.sh: %s\n' "$*"; }

D=$destdir
BIN="$D$prefix/bin"
LIBEXEC="$D$prefix/lib/mcp-bridge"
ETC="$D/etc/mcp-bridge"
if [ "$prefix" = /usr ]; then UNITDIR="$D/lib/systemd/system"; else UNITDIR="$D$prefix/lib/systemd/system"; fi
SYSUSERS="$D$prefix/lib/sysusers.d"
DOCDIR="$D$prefix/share/doc/mcp-bridge"
UNIT=mcp-gateway.service
# Touch the running system's systemd only for a real install on a systemd host.
live_systemd=0
if [ -z "$D" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    live_systemd=1
fi

if [ "$uninstall" = 1 ]; then
    if [ "$live_systemd" = 1 ] && [ -e "$UNITDIR/$UNIT" ]; then
        say "systemctl disable --now $UNIT"
        systemctl disable --now "$UNIT" || true
    fi
    for f in "$BIN/mcp-gateway" "$BIN/mcp-router" "$LIBEXEC/mcp-fixture" \
             "$UNITDIR/$UNIT" "$SYSUSERS/mcp-gateway.conf" "$DOCDIR/packaging.md"; do
        if [ -e "$f" ] || [ -L "$f" ]; then
            rm -f "$f"
            say "removed $f"
        fi
    done
    rmdir "$LIBEXEC" "$DOCDIR" 2>/dev/null || true
    if [ "$live_systemd" = 1 ]; then systemctl daemon-reload || true; fi
    say "kept configuration in $ETC (remove it by hand if you want it gone)"
    if [ -z "$D" ] && getent passwd mcp-gateway >/dev/null 2>&1; then
        say "kept the system user mcp-gateway (userdel mcp-gateway to remove it)"
    fi
    exit 0
fi

if [ -z "$bindir" ]; then
    case "$(uname -m)" in
        x86_64|amd64) bindir="$ROOT/target/dist/x86_64-unknown-linux-musl" ;;
        aarch64|arm64) bindir="$ROOT/target/dist/aarch64-unknown-linux-musl" ;;
        *) echo "install.sh: no default --bin-dir for $(uname -m)" >&2; exit 2 ;;
    esac
fi
for b in mcp-gateway mcp-router; do
    if [ ! -x "$bindir/$b" ]; then
        echo "install.sh: $bindir/$b not found: run packaging/build.sh first or give --bin-dir" >&2
        exit 1
    fi
done

# Rewrites /usr/bin and /usr/lib/mcp-bridge for another prefix.
relocate() {
    if [ "$prefix" = /usr ]; then cat; else
        sed -e "s|/usr/bin/mcp-gateway|$prefix/bin/mcp-gateway|g" \
            -e "s|/usr/lib/mcp-bridge/|$prefix/lib/mcp-bridge/|g" \
            -e "s|/usr/share/doc/mcp-bridge/|$prefix/share/doc/mcp-bridge/|g"
    fi
}

# Replaces a file atomically (a running binary is never rewritten in place).
put() { # mode src dest
    local mode=$1 src=$2 dest=$3 tmp
    tmp="$(dirname "$dest")/.$(basename "$dest").new"
    install -m "$mode" "$src" "$tmp"
    mv -f "$tmp" "$dest"
    say "installed $dest"
}

install -d -m 0755 "$BIN" "$LIBEXEC" "$UNITDIR" "$SYSUSERS" "$DOCDIR" "$ETC"
put 0755 "$bindir/mcp-gateway" "$BIN/mcp-gateway"
put 0755 "$bindir/mcp-router" "$BIN/mcp-router"
if [ -x "$bindir/mcp-fixture" ]; then
    put 0755 "$bindir/mcp-fixture" "$LIBEXEC/mcp-fixture"
else
    say "no $bindir/mcp-fixture: the demo backend of the example configuration is not installed"
fi
tmpd=$(mktemp -d)
trap 'rm -rf "$tmpd"' EXIT
relocate <"$PKG/systemd/$UNIT" >"$tmpd/$UNIT"
put 0644 "$tmpd/$UNIT" "$UNITDIR/$UNIT"
put 0644 "$PKG/systemd/mcp-gateway.sysusers" "$SYSUSERS/mcp-gateway.conf"
if [ -f "$ROOT/docs/packaging.md" ]; then
    put 0644 "$ROOT/docs/packaging.md" "$DOCDIR/packaging.md"
fi

# The service user: before the configuration, which it must be able to read.
group=""
if [ "$mkuser" = 1 ]; then
    if ! getent passwd mcp-gateway >/dev/null 2>&1; then
        if command -v systemd-sysusers >/dev/null; then
            say "creating the system user mcp-gateway (systemd-sysusers)"
            systemd-sysusers "$SYSUSERS/mcp-gateway.conf"
        else
            say "creating the system user mcp-gateway (useradd)"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin --comment "MCP gateway" mcp-gateway
        fi
    fi
    group=mcp-gateway
fi

# Configuration: written only when absent. gateway.toml may hold backend secrets:
# readable by root and the service's group only. router.toml holds none and is read by
# the users whose MCP hosts start the router.
install_config() { # name mode group
    local name=$1 mode=$2 grp=$3 dest="$ETC/$1"
    if [ -e "$dest" ]; then
        say "kept existing $dest"
        return
    fi
    relocate <"$PKG/$name" >"$tmpd/$name"
    install -m "$mode" "$tmpd/$name" "$dest"
    if [ -n "$grp" ]; then chgrp "$grp" "$dest"; fi
    say "installed $dest (mode $mode${grp:+, group $grp})"
}
install_config gateway.toml 0640 "$group"
install_config router.toml 0644 ""

if [ "$live_systemd" = 1 ]; then
    systemctl daemon-reload
    say "unit installed; start it with: systemctl enable --now $UNIT"
elif [ -z "$D" ]; then
    say "systemd is not running here: unit installed, not loaded"
fi
