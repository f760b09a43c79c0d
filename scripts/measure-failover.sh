#!/usr/bin/env bash
# Measures how long the local 3-node cluster takes to elect a new leader after kill -9 of the
# leader: `scripts/measure-failover.sh [rounds]`. Uses its own state dir, ports 8081-8083, and
# stops only the nodes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
export QUORUMKV_STATE_DIR="${QUORUMKV_STATE_DIR:-$(mktemp -d)}"
trap 'scripts/stop-3-nodes.sh >/dev/null' EXIT
scripts/start-3-nodes.sh >/dev/null

leader_seen_by() {
    curl -sf --max-time 0.5 "127.0.0.1:808$1/v1/cluster" | grep -o '"leader_id":[0-9]*' | cut -d: -f2 || true
}

for ((round = 1; round <= rounds; round++)); do
    scripts/start-3-nodes.sh >/dev/null
    old=""
    until [[ -n "$old" ]]; do old=$(leader_seen_by 1); done
    survivor=$((old % 3 + 1))
    until [[ "$(leader_seen_by "$survivor")" == "$old" ]]; do sleep 0.02; done
    start_ns=$(date +%s%N)
    kill -9 "$(cat "$QUORUMKV_STATE_DIR/node-$old.pid")"
    deadline=$((SECONDS + 30))
    while true; do
        new=$(leader_seen_by "$survivor")
        [[ -n "$new" && "$new" != "$old" ]] && break
        ((SECONDS < deadline)) || { echo "round $round: no new leader in 30 s" >&2; exit 1; }
        sleep 0.01
    done
    echo "round $round: leader $old killed, node $new leads after $((($(date +%s%N) - start_ns) / 1000000)) ms"
done
