#!/usr/bin/env bash
# Sourced by tests/run.sh and packaging/demo.sh before their first build: what a
# machine with only the Rust toolchain, Python, Node and apt lacks for building at all.
#   - a C compiler and libc headers: rustc links through `cc`, and build scripts
#     compile C (mimalloc for the gateway, ring for otlp-tls);
#   - the system CA store: the OTLP TLS tests check that an untrusted collector is
#     refused against the system roots;
#   - rustfmt and clippy, which a `--profile minimal` rustup lacks (added through
#     rustup when it is there and they are missing).
# Runs as root without sudo; installs nothing that is already there.

# apt_install PKG...: non-interactive, after an index update, waiting for a dpkg lock
# held by a freshly booted machine's unattended upgrades.
apt_install() {
    command -v apt-get >/dev/null || { echo "base.sh: need $* and there is no apt-get" >&2; return 1; }
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "$@" >/dev/null
}

base_pkgs=()
command -v cc >/dev/null || base_pkgs+=(gcc libc6-dev)
[ -s /etc/ssl/certs/ca-certificates.crt ] || base_pkgs+=(ca-certificates)
if [ ${#base_pkgs[@]} -gt 0 ]; then
    echo "base.sh: installing ${base_pkgs[*]}" >&2
    apt_install "${base_pkgs[@]}"
fi
unset base_pkgs
# (Only through rustup, and only if missing: a toolchain from elsewhere brings its own.)
if ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 \
    && command -v rustup >/dev/null; then
    rustup component add rustfmt clippy
fi
