#!/usr/bin/env bash
# Start a stopped node again with its original command: scripts/faults/restart.sh <node-id|all>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
target="${1:?usage: restart.sh <node-id|all>}"
ids=$(resolve_targets "$target")
started=()
for id in $ids; do
    node_pid "$id" >/dev/null && continue
    if [[ "${KIND:-local}" == compose ]]; then
        docker start "$(node_container "$id")" >/dev/null
        started+=("$id")
        continue
    fi
    setsid bash "$cluster_dir/node-$id.cmd" >>"$cluster_dir/node-$id.log" 2>&1 </dev/null &
    echo $! >"$cluster_dir/node-$id.pid"
    started+=("$id")
done
((${#started[@]} > 0)) || skipped "node(s) $target already running"
installed "restarted node(s) ${started[*]}"
