#!/usr/bin/env bash
# Measures failover on a local 3-node cluster: `scripts/measure-failover.sh [rounds]`. Each round
# kills the leader with kill -9 while a writer on each surviving node PUTs back to back, and
# reports two figures:
#   election  time from the kill until a survivor reports a new leader
#   resume    time from that report until every writer has had a write, sent after the kill,
#             succeed (quorumkv promises under 100 ms; tests/failover.rs holds it)
# Uses its own state dir, ports 8081-8083, and stops only the nodes and writers it started.
# Timing resolution is that of starting curl (a few ms).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
export QUORUMKV_STATE_DIR="${QUORUMKV_STATE_DIR:-$(mktemp -d)}"
writer_pids=()
stop_writers() {
    for pid in "${writer_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${writer_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    writer_pids=()
}
trap 'stop_writers; scripts/stop-3-nodes.sh >/dev/null' EXIT
scripts/start-3-nodes.sh >/dev/null

leader_seen_by() {
    target/debug/quorumkv --endpoints "127.0.0.1:808$1" cluster leader 2>/dev/null || true
}

# Appends "<sent ns> <done ns>" for every successful PUT through node $1 to file $2.
writer() {
    local node="$1" out="$2" n=0 sent
    while true; do
        n=$((n + 1))
        sent=$(date +%s%N)
        if curl -sf -o /dev/null --max-time 10 -X PUT "127.0.0.1:808$node/v1/kv/failover/$node-$n" -d x; then
            echo "$sent $(date +%s%N)" >>"$out"
        fi
    done
}

for ((round = 1; round <= rounds; round++)); do
    scripts/start-3-nodes.sh >/dev/null
    old=""
    until [[ -n "$old" ]]; do old=$(leader_seen_by 1); done
    survivors=()
    for id in 1 2 3; do [[ "$id" == "$old" ]] || survivors+=("$id"); done
    until [[ "$(leader_seen_by "${survivors[0]}")" == "$old" ]]; do sleep 0.02; done
    for id in "${survivors[@]}"; do
        : >"$QUORUMKV_STATE_DIR/writes-$id"
        writer "$id" "$QUORUMKV_STATE_DIR/writes-$id" &
        writer_pids+=($!)
    done
    until [[ -s "$QUORUMKV_STATE_DIR/writes-${survivors[1]}" ]]; do sleep 0.01; done
    killed_ns=$(date +%s%N)
    kill -9 "$(cat "$QUORUMKV_STATE_DIR/node-$old.pid")"
    deadline=$((SECONDS + 30))
    while true; do
        new=$(leader_seen_by "${survivors[0]}")
        [[ -z "$new" || "$new" == "$old" ]] && new=$(leader_seen_by "${survivors[1]}")
        [[ -n "$new" && "$new" != "$old" ]] && break
        ((SECONDS < deadline)) || { echo "round $round: no new leader in 30 s" >&2; exit 1; }
    done
    elected_ns=$(date +%s%N)
    resumed_ns=0
    for id in "${survivors[@]}"; do
        first=""
        until [[ -n "$first" ]]; do
            first=$(awk -v k="$killed_ns" '$1 > k { print $2; exit }' "$QUORUMKV_STATE_DIR/writes-$id")
            [[ -n "$first" ]] || { ((SECONDS < deadline)) || { echo "round $round: writes did not resume" >&2; exit 1; }; sleep 0.01; }
        done
        ((first > resumed_ns)) && resumed_ns=$first
    done
    stop_writers
    resume_ms=$(((resumed_ns - elected_ns) / 1000000))
    ((resume_ms < 0)) && resume_ms=0
    echo "round $round: leader $old killed; node $new leads after $(((elected_ns - killed_ns) / 1000000)) ms (election);" \
        "every writer resumed $resume_ms ms after that"
done
