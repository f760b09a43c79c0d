#!/usr/bin/env bash
# Builds quorumkv and runs one seeded Jepsen-style test; arguments go to quorumkv-jepsen.
#   scripts/jepsen.sh --nemesis partition --time-limit-secs 300 --seed 42
#   scripts/jepsen.sh --help
# The netns cluster (the default) needs root. Exit status 0 only for a valid verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --workspace --bins
exec target/debug/quorumkv-jepsen "$@"
