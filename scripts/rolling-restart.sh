#!/usr/bin/env bash
# Restarts every node of a running cluster one at a time without failing client requests:
# followers first, then the leader after it hands leadership to another voter. Each node gets
# SIGTERM (graceful), is started again with its original command, and must be ready (/ready)
# before the next one goes. Works on the loopback and netns clusters (scripts/faults layout).
#   scripts/rolling-restart.sh
set -euo pipefail
source "$(dirname "$0")/faults/lib.sh"
ready_deadline_seconds=60
stop_deadline_seconds=15

wait_ready() {
    local deadline=$((SECONDS + ready_deadline_seconds))
    until curl -sf --max-time 1 "$(client_addr "$1")/ready" >/dev/null; do
        ((SECONDS < deadline)) || { echo "node $1 not ready after ${ready_deadline_seconds}s" >&2; exit 1; }
        sleep 0.2
    done
}

leader=$(current_leader) || { echo "error: no leader known" >&2; exit 1; }
order=$(seq 1 "$NODES" | grep -vx "$leader"; echo "$leader")
for id in $order; do
    if [[ "$id" == "$leader" ]]; then
        target=$(seq 1 "$NODES" | grep -vx "$leader" | head -n 1)
        echo "node $id is the leader: handing leadership to node $target"
        curl -sf --max-time 10 -X POST "$(client_addr "$target")/v1/cluster/leader" \
            -H 'content-type: application/json' -d "{\"id\":$target}" >/dev/null
    fi
    pid=$(node_pid "$id") || { echo "error: node $id is not running" >&2; exit 1; }
    kill -TERM "$pid"
    deadline=$((SECONDS + stop_deadline_seconds))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || { echo "node $id did not stop" >&2; exit 1; }
        sleep 0.1
    done
    rm -f "$cluster_dir/node-$id.pid"
    setsid bash "$cluster_dir/node-$id.cmd" >>"$cluster_dir/node-$id.log" 2>&1 </dev/null &
    echo $! >"$cluster_dir/node-$id.pid"
    wait_ready "$id"
    echo "restarted node $id"
done
echo "rolling restart done; leader is node $(current_leader)"
