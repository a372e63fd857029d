#!/usr/bin/env bash
# Makes a fresh machine ready to build, test and demo STOA. Idempotent: every step
# checks before it acts. Stops with one line naming what is missing.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
tools="$repo/.tools"

die() { echo "stoa setup: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (eBPF, network namespaces and cgroups are privileged)"
[ -r /sys/kernel/btf/vmlinux ] || die "kernel has no BTF (/sys/kernel/btf/vmlinux missing)"
if ! grep -qw cgroup2 /proc/mounts; then die "no cgroup v2 hierarchy is mounted"; fi
command -v rustup >/dev/null || die "rustup is missing"
rustup toolchain list | grep -q '^nightly' || die "no nightly Rust toolchain (rustup toolchain install nightly)"

# Debian packages the tests and demo use.
need_pkgs=()
for pair in ip:iproute2 curl:curl nsenter:util-linux jq:jq; do
    cmd="${pair%%:*}"; pkg="${pair##*:}"
    command -v "$cmd" >/dev/null || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "stoa setup: installing ${need_pkgs[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# rust-src lets the nightly build `core` for bpfel-unknown-none.
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    echo "stoa setup: adding rust-src to the nightly toolchain"
    rustup component add rust-src --toolchain nightly >/dev/null
fi

# bpf-linker, built against the nightly's own LLVM so both agree on the bitcode.
sysroot="$(rustc +nightly --print sysroot)"
llvm_major="$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
[ -n "$llvm_major" ] || die "cannot read the nightly's LLVM version"
libllvm="$(find "$sysroot/lib" -maxdepth 1 -name "libLLVM.so.${llvm_major}*" | head -n1)"
[ -n "$libllvm" ] || die "the nightly ships no libLLVM.so.${llvm_major}* in $sysroot/lib"
stamp="$tools/bpf-linker.stamp"
want="$(basename "$libllvm")"
if [ ! -x "$tools/bin/bpf-linker" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "stoa setup: building bpf-linker against $want (about a minute)"
    llvm_prefix="$tools/llvm"
    mkdir -p "$llvm_prefix/lib"
    ln -sf "$libllvm" "$llvm_prefix/lib/libLLVM.so"
    ln -sf "$libllvm" "$llvm_prefix/lib/$want"
    LLVM_PREFIX="$llvm_prefix" cargo install --quiet --locked --root "$tools" bpf-linker \
        --no-default-features --features "llvm-${llvm_major}" --force
    echo "$want" >"$stamp"
fi

# MCP peers the end-to-end tests drive (tests/peers): the official Python SDK in a
# virtualenv, the TypeScript SDK and server-everything from npm. Each is reinstalled
# only when its pin file changed (a stamp holds the pin file's sha256).
peers="$repo/tests/peers"
command -v python3 >/dev/null || die "python3 is missing (the MCP test peers need it)"
command -v npm >/dev/null || die "npm is missing (the MCP test peers need Node.js 18 or newer)"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "stoa setup: installing python3-venv"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
want="$(sha256sum "$peers/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$peers/.venv/bin/python" ] || [ "$(cat "$peers/.venv/.stoa-stamp" 2>/dev/null)" != "$want" ]; then
    echo "stoa setup: installing the Python MCP peers (tests/peers/.venv)"
    python3 -m venv --clear "$peers/.venv"
    "$peers/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$peers/requirements.txt"
    echo "$want" >"$peers/.venv/.stoa-stamp"
fi
want="$(sha256sum "$peers/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$peers/node_modules/.stoa-stamp" 2>/dev/null)" != "$want" ]; then
    echo "stoa setup: installing the Node MCP peers (tests/peers/node_modules)"
    (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" >"$peers/node_modules/.stoa-stamp"
fi
echo "stoa setup: ready"
