#!/usr/bin/env bash
# Static release builds of mcp-router, mcp-gateway and mcp-fixture (the demo backend)
# for x86_64 and aarch64 Linux (musl), checked to be static, copied to
# target/dist/<triple>/ with their sizes printed.
#
#   packaging/build.sh [--target x86_64|aarch64|all] [--features LIST] [--locked]
#                      [--no-setup]
#
#   --target     which architecture(s) (default: all)
#   --features   cargo features for mcp-router and mcp-gateway (a size variant), as
#                cargo takes them (e.g. "otlp-tls"); the output then goes to
#                target/dist/<triple>+<features>/
#   --locked     pass --locked to cargo (release builds from a clean checkout: fail
#                rather than update Cargo.lock)
#   --no-setup   do not install anything (rustup targets, apt packages)
#
# Setup done here, so that a fresh machine with only rustup and apt works:
#   rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
#   apt-get install file (and gcc if there is no `cc`: cargo links build scripts and
#   proc macros for the host with it), musl-tools for x86_64 (musl-gcc compiles the
#   gateway's allocator, mimalloc, against musl's headers)
#   and, for otlp-tls on aarch64, clang (ring, rustls' crypto, compiles C and assembly)
# Linking: x86_64 musl with the host `cc` and Rust's self-contained musl CRT (gives a
# static-pie); aarch64 musl with rust-lld, shipped with the Rust toolchain, through
# CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER (no cross gcc needed).
# C code: mimalloc in the x86_64 gateway (it includes libc headers), and ring in
# otlp-tls builds (it needs none). x86_64 with musl-gcc when present, else the host `cc`
# (glibc's headers; it builds and runs, but musl-gcc is what setup installs); aarch64
# with `clang --target=aarch64-...` (cc-rs adds the target), since there is no aarch64
# musl gcc in Debian (so the aarch64 gateway keeps musl's allocator). CC_<triple> set
# in the environment wins.
# The release profile (root Cargo.toml) is size-oriented: opt-level s, LTO, one codegen
# unit, panic=abort, stripped.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
cd "$ROOT"

targets=all
features=""
setup=1
locked=()
while [ $# -gt 0 ]; do
    case "$1" in
        --target) targets=${2:?--target needs a value}; shift 2 ;;
        --target=*) targets=${1#*=}; shift ;;
        --features) features=${2:?--features needs a value}; shift 2 ;;
        --features=*) features=${1#*=}; shift ;;
        --locked) locked=(--locked); shift ;;
        --no-setup) setup=0; shift ;;
        -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$SELF"; exit 0 ;;
        *) echo "build.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$targets" in
    x86_64) triples=(x86_64-unknown-linux-musl) ;;
    aarch64) triples=(aarch64-unknown-linux-musl) ;;
    all) triples=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl) ;;
    *) echo "build.sh: --target must be x86_64, aarch64 or all" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "$setup" = 1 ]; then
    missing=()
    installed=$(rustup target list --installed)
    for t in "${triples[@]}"; do
        grep -qx "$t" <<<"$installed" || missing+=("$t")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "rustup target add ${missing[*]}"
        rustup target add "${missing[@]}"
    fi
    pkgs=()
    command -v file >/dev/null || pkgs+=(file)
    command -v cc >/dev/null || pkgs+=(gcc libc6-dev)
    # The x86_64 gateway links mimalloc (C, with libc headers): musl's own, from musl-gcc.
    if [[ " ${triples[*]} " == *x86_64* ]] && [ -z "${CC_x86_64_unknown_linux_musl:-}" ] \
        && ! command -v x86_64-linux-musl-gcc >/dev/null; then
        command -v musl-gcc >/dev/null || pkgs+=(musl-tools)
    fi
    if [[ "$features" == *otlp-tls* && " ${triples[*]} " == *aarch64* ]] \
        && [ -z "${CC_aarch64_unknown_linux_musl:-}" ]; then
        command -v clang >/dev/null || pkgs+=(clang)
    fi
    if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
fi

# rust-lld ships with the toolchain; rustc finds it in its own bin directory.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-rust-lld}
# C compilers for crates with C code (mimalloc; ring with otlp-tls), unless given.
if [ -z "${CC_x86_64_unknown_linux_musl:-}" ] \
    && ! command -v x86_64-linux-musl-gcc >/dev/null && ! command -v musl-gcc >/dev/null; then
    export CC_x86_64_unknown_linux_musl=cc
fi
if [ -z "${CC_aarch64_unknown_linux_musl:-}" ] && ! command -v aarch64-linux-musl-gcc >/dev/null; then
    export CC_aarch64_unknown_linux_musl=clang
fi

bins=(mcp-router mcp-gateway mcp-fixture)
status=0
for t in "${triples[@]}"; do
    out="target/dist/$t"
    feature_args=()
    if [ -n "$features" ]; then
        out="$out+$(tr -c 'A-Za-z0-9_\n-' '_' <<<"$features")"
        feature_args=(--features "$features")
    fi
    say "cargo build --release ${locked[*]:+--locked }--target $t (${bins[*]})${features:+ features: $features}"
    if [ -n "$features" ]; then
        # The fixture has no features: build it on its own.
        cargo build --release "${locked[@]}" --target "$t" -p mcp-router -p mcp-gateway "${feature_args[@]}"
        cargo build --release "${locked[@]}" --target "$t" -p mcp-fixture
    else
        cargo build --release "${locked[@]}" --target "$t" -p mcp-router -p mcp-gateway -p mcp-fixture
    fi
    mkdir -p "$out"
    for b in "${bins[@]}"; do
        src="target/$t/release/$b"
        # cp to a temporary name then rename: never rewrite a binary that is running.
        cp "$src" "$out/.$b.tmp" && mv -f "$out/.$b.tmp" "$out/$b"
    done
    say "static check and sizes: $out"
    for b in "${bins[@]}"; do
        f="$out/$b"
        desc=$(file -b "$f")
        lddout=$(ldd "$f" 2>&1 || true)
        lddout=$(tr '\n\t' '  ' <<<"$lddout" | sed 's/  */ /g; s/^ //; s/ $//')
        size=$(stat -c %s "$f")
        ok=1
        case "$desc" in *"statically linked"*|*"static-pie linked"*) ;; *) ok=0 ;; esac
        case "$lddout" in *"=>"*) ok=0 ;; esac
        case "$lddout" in *"not a dynamic executable"*|*"statically linked"*) ;; *) ok=0 ;; esac
        printf '%-12s %9d bytes (%4d KiB)  %s\n' "$b" "$size" $(( (size + 1023) / 1024 )) "$t"
        printf '    file: %s\n    ldd:  %s\n' "$desc" "$lddout"
        if [ "$ok" != 1 ]; then
            echo "build.sh: $f is NOT static" >&2
            status=1
        fi
    done
done
exit "$status"
