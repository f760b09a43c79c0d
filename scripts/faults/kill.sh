#!/usr/bin/env bash
# kill -9 one node: scripts/faults/kill.sh <node-id|leader>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
id=$(resolve_node "${1:?usage: kill.sh <node-id|leader>}")
pid=$(node_pid "$id") || skipped "node $id is not running"
if [[ "${KIND:-local}" == compose ]]; then
    container=$(node_container "$id")
    docker unpause "$container" >/dev/null 2>&1 || true
    docker kill --signal KILL "$container" >/dev/null
    docker wait "$container" >/dev/null
    rm -f "$cluster_dir/node-$id.paused"
    installed "killed node $id (container ${container:0:12}) with SIGKILL"
fi
kill -CONT "$pid" 2>/dev/null || true
kill -KILL "$pid"
# Wait until it is really gone (its ports and RocksDB lock freed) before reporting.
for _ in $(seq 1 100); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
    [[ "$state" == gone || "$state" == Z ]] && break
    sleep 0.05
done
rm -f "$cluster_dir/node-$id.pid" "$cluster_dir/node-$id.paused"
installed "killed node $id (pid $pid) with SIGKILL"
