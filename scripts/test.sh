#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite: formatting, lints, unit and
# integration tests (real redis-server, Garage and moto processes on loopback), then the chaos
# suite's quick subset (hosts in network namespaces; docs/CHAOS.md).
set -euo pipefail
# No cloud SDK looks for an instance-metadata service: everything here is on loopback.
export AWS_EC2_METADATA_DISABLED=true
cd "$(dirname "$0")/.."
scripts/setup.sh test
export PATH="$HOME/.cargo/bin:$PATH"
# A one-off build gains nothing from incremental caches, which double the target's size.
export CARGO_INCREMENTAL=0
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# No two files of a crate import each other (ARCHITECTURE.md, "Files point one way").
python3 scripts/modgraph.py --quiet
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --quiet -- --test-threads=2 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "fleetsnap: %d passed, %d failed\n", p, f }' "$log"
# Every fuzz target for a few seconds (the longer runs' figures are in docs/fuzzing.md).
scripts/fuzz.sh --quick
# The chaos suite's quick subset, on the binaries just built.
scripts/chaos.sh --quick
