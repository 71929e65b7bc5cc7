#!/usr/bin/env bash
# Runs a benchmark and prints its table (see docs/BENCHMARKS.md).
#   scripts/bench.sh [--sizes-gib 1,4]              the snapshot data path
#   scripts/bench.sh fleet [--agents 1000,5000,10000] [--window 15]   the control plane at scale
#   scripts/bench.sh windows [--shards 3,8,16] [--windows 20]          skew and write pause
#   scripts/bench.sh restore [--size-gib 1] [--repeat 3]              RTO: replace, online, floor, seed
#   scripts/bench.sh client [--keys 500000] [--repeat 3]              pipelined RESTORE: our RESP client, the redis crate
#   scripts/bench.sh archive [--shards 3,16] [--rate 10000,50000] [--seconds 15] [--rto-mib 256]
#                                                                     archive lag, CPU per MB, restore-to-time RTO
#   scripts/bench.sh scan [--size-mib 512] [--repeat 3] [--rate N]    the scan source against redis-cli --rdb
#   scripts/bench.sh crossver [--keys 200000] [--members 10] [--repeat 3]
#                                                                     a Valkey 8.1 backup into Redis 7.0 as commands, against RESTORE
#   (snapshot and restore take --baseline-agent PATH: an earlier agent's rows, run for run;
#    snapshot takes --cores 1,2,4: the agent pinned with taskset, and --file-only)
set -euo pipefail
# No cloud SDK looks for an instance-metadata service: everything here is on loopback.
export AWS_EC2_METADATA_DISABLED=true
cd "$(dirname "$0")/.."
if [ "${1:-}" = windows ]; then
    shift
    scripts/setup.sh
    cargo build --release --quiet -p fleetsnap-coordinator -p fleetsnap-agent -p fleetsnap-cli -p fleetsnap-bench
    # windows finds the fleetsnap binaries next to itself.
    exec target/release/windows "$@"
fi
if [ "${1:-}" = restore ]; then
    shift
    scripts/setup.sh
    cargo build --release --quiet -p fleetsnap-agent -p fleetsnap-bench
    exec target/release/restore --agent target/release/fleetsnap-agent "$@"
fi
if [ "${1:-}" = archive ]; then
    shift
    scripts/setup.sh
    cargo build --release --quiet -p fleetsnap-agent --bin fleetsnap-agent
    cargo build --release --quiet -p fleetsnap-bench --bin archive
    # archive finds fleetsnap-agent next to itself.
    exec target/release/archive "$@"
fi
if [ "${1:-}" = scan ]; then
    shift
    scripts/setup.sh
    cargo build --release --quiet -p fleetsnap-agent --bin fleetsnap-agent
    cargo build --release --quiet -p fleetsnap-bench --bin scan
    exec target/release/scan --agent target/release/fleetsnap-agent "$@"
fi
if [ "${1:-}" = crossver ]; then
    shift
    # Valkey's valkey-server comes with the test parts.
    scripts/setup.sh test
    cargo build --release --quiet -p fleetsnap-agent --bin fleetsnap-agent
    cargo build --release --quiet -p fleetsnap-bench --bin crossver
    exec target/release/crossver --agent target/release/fleetsnap-agent "$@"
fi
if [ "${1:-}" = client ]; then
    shift
    scripts/setup.sh
    cargo build --release --quiet -p fleetsnap-bench --bin resp_client
    exec target/release/resp_client "$@"
fi
if [ "${1:-}" = fleet ]; then
    shift
    cargo build --release --quiet -p fleetsnap-coordinator -p fleetsnap-cli -p fleetsnap-bench
    # fleet-sim finds fleetsnap-coordinator and fleetsnap next to itself.
    exec target/release/fleet-sim "$@"
fi
scripts/setup.sh bench
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p fleetsnap-agent -p fleetsnap-bench
exec target/release/fleetsnap-bench --agent target/release/fleetsnap-agent "$@"
