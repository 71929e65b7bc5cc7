#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes in fleetsnap-core (coverage-guided, cargo fuzz):
#   scripts/fuzz.sh            60 s per target
#   scripts/fuzz.sh --quick    10 s per target (the test suite runs this)
#   scripts/fuzz.sh 600        600 s per target
# The corpora grow under fuzz/corpus/TARGET (seeded from the RDB vectors beside the repository
# when present); a crash stops the run with the input under fuzz/artifacts/TARGET.
set -euo pipefail
# No cloud SDK looks for an instance-metadata service: everything here is on loopback.
export AWS_EC2_METADATA_DISABLED=true
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=60
case "${1:-}" in
  --quick) secs=10 ;;
  "") ;;
  *) secs="$1" ;;
esac
if ! command -v cargo-fuzz >/dev/null 2>&1 || ! cargo fuzz --version 2>/dev/null | grep -q '0\.13\.'; then
  echo "fuzz: installing cargo-fuzz 0.13 from crates.io (about a minute)"
  cargo install cargo-fuzz --locked --version '^0.13' --quiet
fi
cd fuzz
# No sanitizer: the stable toolchain has none; coverage and the limits below still apply.
cargo fuzz build -s none --release >/dev/null 2>&1 || cargo fuzz build -s none --release
seeds=../../shared/rdb-vectors
for t in $(cargo fuzz list); do
  mkdir -p "corpus/$t"
  case "$t" in
    rdb_*) [ -d "$seeds" ] && cp -n "$seeds"/*.rdb "corpus/$t/" 2>/dev/null || true ;;
  esac
  log="$(mktemp)"
  # -malloc_limit_mb: any one allocation over 64 MiB is a finding (inputs are at most 1 MiB);
  # -timeout: an input that takes over 10 s is a hang.
  if ! cargo fuzz run -s none --release "$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=1048576 -malloc_limit_mb=64 -rss_limit_mb=2048 \
      -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t found a problem; the input is under fuzz/artifacts/$t"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  printf 'fuzz: %-14s %10s runs in %ss, corpus %s inputs, no crash\n' "$t" "$runs" "$secs" \
    "$(ls "corpus/$t" | wc -l)"
  rm -f "$log"
done
