#!/usr/bin/env bash
# Runs the chaos suite (see docs/CHAOS.md): every scenario, or the quick subset, as root.
#   scripts/chaos.sh                          the full suite, a random seed
#   scripts/chaos.sh --quick                  the subset .ci/run runs (about 3 minutes)
#   scripts/chaos.sh --seed N [--scenario NAME]   replay a run, or one scenario of it
#   scripts/chaos.sh --report docs/CHAOS.md   append the run's report
#   scripts/chaos.sh --list                   the scenarios
set -euo pipefail
# No cloud SDK looks for an instance-metadata service: everything here is on loopback.
export AWS_EC2_METADATA_DISABLED=true
cd "$(dirname "$0")/.."
scripts/setup.sh chaos
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --quiet --workspace --bins
# A lab left by a run that was killed is removed by the next run (its namespaces carry the pid).
if [ "$(id -u)" = 0 ]; then
  exec target/debug/fleetsnap-chaos "$@"
else
  exec sudo target/debug/fleetsnap-chaos "$@"
fi
