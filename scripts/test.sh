#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite: formatting, lints, unit and
# integration tests (real redis-server, Garage and moto processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --quiet -- --test-threads=2
