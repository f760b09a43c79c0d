#!/usr/bin/env bash
# Resume paused nodes with SIGCONT: scripts/faults/resume.sh <node-id|all>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
target="${1:?usage: resume.sh <node-id|all>}"
ids=$(resolve_targets "$target")
resumed=()
for id in $ids; do
    [[ -f "$cluster_dir/node-$id.paused" ]] || continue
    if [[ "${KIND:-local}" == compose ]]; then
        docker unpause "$(node_container "$id")" >/dev/null 2>&1 || true
    elif pid=$(node_pid "$id"); then
        kill -CONT "$pid"
    fi
    rm -f "$cluster_dir/node-$id.paused"
    resumed+=("$id")
done
((${#resumed[@]} > 0)) || skipped "no paused node among $target"
installed "resumed node(s) ${resumed[*]}"
