#!/usr/bin/env bash
# Freeze one node with SIGSTOP or `docker pause` (a GC pause, a stalled VM): scripts/faults/pause.sh <node-id|leader>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
id=$(resolve_node "${1:?usage: pause.sh <node-id|leader>}")
pid=$(node_pid "$id") || skipped "node $id is not running"
[[ -f "$cluster_dir/node-$id.paused" ]] && skipped "node $id is already paused"
if [[ "${KIND:-local}" == compose ]]; then
    docker pause "$(node_container "$id")" >/dev/null
    how="docker pause"
else
    kill -STOP "$pid"
    how="SIGSTOP"
fi
touch "$cluster_dir/node-$id.paused"
installed "paused node $id (pid $pid) with $how"
