#!/usr/bin/env bash
# Builds mcp-bridge_<version>-1_<arch>.deb with plain dpkg-deb (no extra cargo tool),
# staged by install.sh so that the layout is exactly the one install.sh produces.
#
#   packaging/deb.sh [--target x86_64|aarch64|all] [--no-build] [--out DIR]
#
#   --target    amd64 (x86_64), arm64 (aarch64) or both (default: all)
#   --no-build  use the binaries already in target/dist/<triple>/ (else build.sh runs)
#   --out DIR   where the .deb files go (default: target/dist)
#
# The package: static binaries (no Depends), /etc/mcp-bridge/*.toml as conffiles,
# the unit in /lib/systemd/system, the mcp-gateway system user created in postinst
# (systemd-sysusers, else useradd). The service is NOT enabled or started on install:
# edit /etc/mcp-bridge/gateway.toml, then `systemctl enable --now mcp-gateway`.
# Maintainer scripts honour DPKG_ROOT (dpkg --root --force-script-chrootless).
set -euo pipefail
umask 022

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
cd "$ROOT"

targets=all
build=1
out="$ROOT/target/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --target) targets=${2:?--target needs a value}; shift 2 ;;
        --target=*) targets=${1#*=}; shift ;;
        --no-build) build=0; shift ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$SELF"; exit 0 ;;
        *) echo "deb.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$targets" in
    x86_64|aarch64) archs=("$targets") ;;
    all) archs=(x86_64 aarch64) ;;
    *) echo "deb.sh: --target must be x86_64, aarch64 or all" >&2; exit 2 ;;
esac
command -v dpkg-deb >/dev/null || { echo "deb.sh: dpkg-deb not found (apt-get install dpkg)" >&2; exit 1; }

if [ "$build" = 1 ]; then
    "$ROOT/packaging/build.sh" --target "$targets"
fi

# [workspace.package] version in the root Cargo.toml.
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "deb.sh: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
debversion="$version-1"
maintainer=${DEB_MAINTAINER:-"mcp-bridge maintainers <mcp-bridge@localhost>"}
mkdir -p "$out"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

for a in "${archs[@]}"; do
    case "$a" in
        x86_64) triple=x86_64-unknown-linux-musl; debarch=amd64 ;;
        aarch64) triple=aarch64-unknown-linux-musl; debarch=arm64 ;;
    esac
    pkgroot="$stage/$debarch"
    rm -rf "$pkgroot"
    install -d -m 0755 "$pkgroot"
    "$ROOT/packaging/install.sh" --destdir "$pkgroot" --prefix /usr \
        --bin-dir "$ROOT/target/dist/$triple" >/dev/null

    doc="$pkgroot/usr/share/doc/mcp-bridge"
    install -d -m 0755 "$doc"
    cat >"$doc/copyright" <<'EOF'
Upstream-Name: mcp-bridge

Files: *
Copyright: mcp-bridge contributors
License: MIT or Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
    chmod 0644 "$doc/copyright"

    install -d -m 0755 "$pkgroot/DEBIAN"
    installed_size=$(du -sk --exclude=DEBIAN "$pkgroot" | cut -f1)
    cat >"$pkgroot/DEBIAN/control" <<EOF
Package: mcp-bridge
Version: $debversion
Architecture: $debarch
Maintainer: $maintainer
Installed-Size: $installed_size
Section: net
Priority: optional
Recommends: systemd
Description: MCP gateway and stdio router (static binaries)
 mcp-gateway accepts MCP clients over WebSocket and serves them from backend
 MCP servers that it runs as subprocesses, aggregating their tools, prompts
 and resources under backend namespaces. mcp-router is a stdio MCP server for
 MCP hosts (Claude Desktop, Claude Code, ...) that relays to a gateway.
 .
 The gateway runs as the hardened systemd service mcp-gateway.service.
EOF
    cat >"$pkgroot/DEBIAN/conffiles" <<'EOF'
/etc/mcp-bridge/gateway.toml
/etc/mcp-bridge/router.toml
EOF
    cat >"$pkgroot/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
root="${DPKG_ROOT:-}"
if [ "$1" = configure ]; then
    if ! grep -q '^mcp-gateway:' "$root/etc/passwd" 2>/dev/null; then
        if command -v systemd-sysusers >/dev/null 2>&1; then
            systemd-sysusers ${root:+--root="$root"} mcp-gateway.conf
        elif [ -z "$root" ]; then
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin --comment "MCP gateway" mcp-gateway
        else
            echo "mcp-bridge: create the system user mcp-gateway by hand" >&2
        fi
    fi
    # The configuration is readable by the service's group (dpkg installs it root:root).
    gid=$(awk -F: '$1 == "mcp-gateway" { print $3 }' "$root/etc/group" 2>/dev/null || true)
    conf="$root/etc/mcp-bridge/gateway.toml"
    if [ -n "$gid" ] && [ -f "$conf" ] && [ "$(stat -c %g "$conf")" = 0 ]; then
        chgrp "$gid" "$conf"
    fi
    if [ -z "$root" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # An upgrade restarts a running gateway; a first install starts nothing.
        if [ -n "$2" ]; then systemctl try-restart mcp-gateway.service || true; fi
    fi
fi
exit 0
EOF
    cat >"$pkgroot/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl disable --now mcp-gateway.service || true
fi
exit 0
EOF
    cat >"$pkgroot/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
# The mcp-gateway user is kept (Debian policy: system users are not removed).
exit 0
EOF
    chmod 0755 "$pkgroot/DEBIAN/postinst" "$pkgroot/DEBIAN/prerm" "$pkgroot/DEBIAN/postrm"
    (cd "$pkgroot" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
        >"$pkgroot/DEBIAN/md5sums"
    chmod 0644 "$pkgroot/DEBIAN/md5sums" "$pkgroot/DEBIAN/control" "$pkgroot/DEBIAN/conffiles"

    deb="$out/mcp-bridge_${debversion}_${debarch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$pkgroot" "$deb" >/dev/null
    printf 'deb.sh: %s (%d bytes)\n' "$deb" "$(stat -c %s "$deb")"
done
