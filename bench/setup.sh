#!/usr/bin/env bash
# Installs what `make bench` needs on a fresh machine. Idempotent: every step checks
# before it acts.
#  - Debian: nginx, HAProxy (the peers), gnuplot-nox (the plot), sqlite3 (oha's
#    per-request records), curl, and libssl-dev + pkg-config to build oha.
#  - crates.io: oha (the load generator) into the git-ignored .tools/ folder.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
tools="$repo/.tools"
OHA_VERSION="1.16.0"

die() { echo "stoa bench setup: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, cgroups, eBPF)"

need_pkgs=()
for pair in nginx:nginx haproxy:haproxy gnuplot:gnuplot-nox sqlite3:sqlite3 curl:curl \
            pkg-config:pkg-config taskset:util-linux; do
    cmd="${pair%%:*}"; pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 \
        || need_pkgs+=("$pkg")
done
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "stoa bench setup: installing ${need_pkgs[*]} from Debian"
    apt-get update -qq >/dev/null
    # Containers often forbid starting services at install (policy-rc.d); either way
    # the benchmark starts its own nginx and HAProxy with their own configurations.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >/dev/null
fi

# oha, pinned, with native-tls (system OpenSSL: no C crypto library to compile; the
# benchmark only speaks cleartext anyway).
if [ ! -x "$tools/bin/oha" ] || ! "$tools/bin/oha" --version 2>/dev/null | grep -q " $OHA_VERSION\$"; then
    echo "stoa bench setup: building oha $OHA_VERSION from crates.io (a few minutes)"
    cargo install --quiet --locked --root "$tools" --force \
        --no-default-features --features native-tls "oha@$OHA_VERSION"
fi
echo "stoa bench setup: ready ($("$tools/bin/oha" --version), $(PATH="$PATH:/usr/sbin" nginx -v 2>&1), $(PATH="$PATH:/usr/sbin" haproxy -v | head -n1 | cut -d' ' -f1-3))"
