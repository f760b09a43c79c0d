#!/usr/bin/env bash
# Freeze one node with SIGSTOP (a GC pause, a stalled VM): scripts/faults/pause.sh <node-id|leader>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
id=$(resolve_node "${1:?usage: pause.sh <node-id|leader>}")
pid=$(node_pid "$id") || skipped "node $id is not running"
[[ -f "$cluster_dir/node-$id.paused" ]] && skipped "node $id is already paused"
kill -STOP "$pid"
touch "$cluster_dir/node-$id.paused"
installed "paused node $id (pid $pid) with SIGSTOP"
