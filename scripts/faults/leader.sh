#!/usr/bin/env bash
# Print the current leader's node id: scripts/faults/leader.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
current_leader || { echo "error: no leader known" >&2; exit 1; }
