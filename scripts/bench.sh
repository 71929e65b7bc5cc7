#!/usr/bin/env bash
# Runs the snapshot benchmark and prints its table (see docs/BENCHMARKS.md).
#   scripts/bench.sh [--sizes-gib 1,4]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p fleetsnap-agent -p fleetsnap-bench
exec target/release/fleetsnap-bench --agent target/release/fleetsnap-agent "$@"
