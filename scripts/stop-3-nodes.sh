#!/usr/bin/env bash
# Stops the nodes started by scripts/start-3-nodes.sh (SIGTERM: graceful, leader hands over),
# and only those: it signals the PIDs in its own PID files.
set -euo pipefail

cd "$(dirname "$0")/.."
state_dir="${QUORUMKV_STATE_DIR:-$PWD/.quorumkv}"
stop_deadline_seconds=15

for id in 1 2 3; do
    pid_file="$state_dir/node-$id.pid"
    [[ -f "$pid_file" ]] || continue
    pid=$(cat "$pid_file")
    rm -f "$state_dir/node-$id.paused"
    if kill -0 "$pid" 2>/dev/null && grep -qaE "quorumkv|node-$id.cmd" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + stop_deadline_seconds))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS > deadline)); then
                echo "node $id (pid $pid) did not stop in ${stop_deadline_seconds}s; sending SIGKILL" >&2
                kill -KILL "$pid" || true
                break
            fi
            sleep 0.1
        done
        echo "stopped node $id"
    fi
    rm -f "$pid_file"
done
