#!/usr/bin/env bash
# `make bench`: installs the benchmark's tools, builds release binaries and runs
# `stoa-bench run` (arguments are passed on, e.g. --quick). Results go to
# bench/results/latest.{json,md} and bench/results/latency.png.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
CARGO="${CARGO:-cargo}"

bash bench/setup.sh
echo "stoa bench: building release binaries"
"$CARGO" build --release --workspace --bins
export PATH="$PATH:/usr/sbin:/sbin"
STOA_BIN_DIR="$repo/target/release" exec "$repo/target/release/stoa-bench" run "$@"
