#!/usr/bin/env bash
# A quorumkv cluster whose nodes can really be cut off from one another: each node runs in its
# own network namespace (qkvN) with its own address (10.77.0.N) on a private bridge (qkvbr0).
# Needs root (ip netns, veth, bridge, iptables).
#
#   scripts/netns-cluster.sh up [3|5] [L] start (bootstraps a new cluster of 3 or 5 voters, then
#                                         L learners (0-2) join it; fails if one is up)
#   scripts/netns-cluster.sh down         stop the nodes and remove every namespace, link and rule
#   scripts/netns-cluster.sh status       print the cluster as node 1 sees it
#
# State (PID files, logs, data, per-node start commands) lives in $QUORUMKV_NETNS_STATE_DIR
# (default ./.quorumkv-netns); scripts/faults/* read it. $QUORUMKV_SERVE_ARGS adds `quorumkv
# serve` arguments for every node (the fault runs pass injected faults this way). `up` cleans up after itself when it
# fails or is interrupted.
set -euo pipefail

cd "$(dirname "$0")/.."
state_dir="${QUORUMKV_NETNS_STATE_DIR:-$PWD/.quorumkv-netns}"
binary="$PWD/target/debug/quorumkv"
bridge=qkvbr0
subnet=10.77.0
host_ip="$subnet.254"
leader_deadline_seconds=60

node_ns() { echo "qkv$1"; }

down() {
    set +e
    if [[ -f "$state_dir/cluster.env" ]]; then
        # shellcheck disable=SC1091
        source "$state_dir/cluster.env"
        for ((id = 1; id <= NODES; id++)); do
            pid_file="$state_dir/node-$id.pid"
            if [[ -f "$pid_file" ]]; then
                pid=$(cat "$pid_file")
                if grep -qaE "quorumkv|node-$id.cmd" "/proc/$pid/cmdline" 2>/dev/null; then
                    kill -CONT "$pid" 2>/dev/null
                    kill -KILL "$pid" 2>/dev/null
                fi
                rm -f "$pid_file"
            fi
        done
    fi
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^qkv[0-9]+$'); do
        # Only these scripts create qkvN namespaces: whatever runs inside is a node of ours,
        # possibly from a run whose PID files are gone.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -CONT "$pid" 2>/dev/null
            kill -KILL "$pid" 2>/dev/null
        done
        ip netns delete "$ns"
    done
    # The host ends of the veth pairs: deleting one deletes its pair. Done explicitly because a
    # deleted namespace can linger in the kernel (sockets draining) and keep its links alive.
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^qkv[0-9]+-h$'); do
        ip link delete "$link" 2>/dev/null
    done
    ip link show "$bridge" >/dev/null 2>&1 && ip link delete "$bridge"
    while iptables -D FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null; do :; done
    rm -f "$state_dir/cluster.env"
    set -e
}

# Creates node $1's namespace, address and partition chain, and writes its env file.
add_namespace() {
    local id="$1" ns
    ns=$(node_ns "$id")
    ip netns add "$ns"
    ip link add "$ns-h" type veth peer name eth0 netns "$ns"
    ip link set "$ns-h" master "$bridge" up
    ip -n "$ns" addr add "$subnet.$id/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Partitions go into this chain; heal flushes it.
    ip netns exec "$ns" iptables -N QKV-PARTITION
    ip netns exec "$ns" iptables -I INPUT -j QKV-PARTITION
    cat >"$state_dir/node-$id.env" <<ENV
NETNS=$ns
IP=$subnet.$id
CLIENT_ADDR=$subnet.$id:8080
PEER_ADDR=$subnet.$id:9080
ENV
}

start_node() {
    setsid bash "$state_dir/node-$1.cmd" >>"$state_dir/node-$1.log" 2>&1 </dev/null &
    echo $! >"$state_dir/node-$1.pid"
}

up() {
    local nodes="${1:-3}" learners="${2:-0}"
    if [[ "$nodes" != 3 && "$nodes" != 5 ]] || [[ ! "$learners" =~ ^[0-2]$ ]]; then
        echo "usage: $0 up [3|5] [0-2 learners]" >&2
        exit 2
    fi
    if [[ -f "$state_dir/cluster.env" ]]; then
        echo "a netns cluster is already up ($state_dir); run '$0 down' first" >&2
        exit 1
    fi
    [[ -x "$binary" ]] || cargo build --quiet --bin quorumkv
    if ip link show "$bridge" >/dev/null 2>&1; then
        echo "bridge $bridge exists: another netns cluster is up (state elsewhere?); run '$0 down'" >&2
        exit 1
    fi
    trap 'echo "netns-cluster: bring-up failed, cleaning up" >&2; down' ERR
    trap 'echo "netns-cluster: interrupted, cleaning up" >&2; down; exit 130' INT TERM
    rm -rf "$state_dir"
    mkdir -p "$state_dir"
    # The peer token every node presents (random, owner-only).
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$state_dir/peer-token")
    # NODES counts learners too: the fault scripts act on every node.
    echo "NODES=$((nodes + learners))" >"$state_dir/cluster.env"
    echo "VOTERS=$nodes" >>"$state_dir/cluster.env"
    echo "KIND=netns" >>"$state_dir/cluster.env"

    ip link add "$bridge" type bridge
    ip addr add "$host_ip/24" dev "$bridge"
    ip link set "$bridge" up
    # Docker sets the FORWARD policy to DROP and bridged frames pass through it.
    iptables -I FORWARD -i "$bridge" -o "$bridge" -j ACCEPT

    local initial_cluster=""
    for ((id = 1; id <= nodes; id++)); do
        initial_cluster+="${initial_cluster:+,}$id=$subnet.$id:9080"
    done
    for ((id = 1; id <= nodes; id++)); do
        add_namespace "$id"
        # The exact start command, reused by scripts/faults/restart.sh.
        cat >"$state_dir/node-$id.cmd" <<CMD
exec ip netns exec $(node_ns "$id") $binary serve --id $id --data-dir $state_dir/node-$id \
  --client-addr $subnet.$id:8080 --peer-addr $subnet.$id:9080 --initial-cluster $initial_cluster \
  --peer-token-file $state_dir/peer-token ${QUORUMKV_SERVE_ARGS:-}
CMD
        start_node "$id"
    done

    local deadline=$((SECONDS + leader_deadline_seconds)) leader=""
    while [[ -z "$leader" ]]; do
        if ((SECONDS > deadline)); then
            echo "no leader after ${leader_deadline_seconds}s; logs in $state_dir" >&2
            false
        fi
        leader=$("$binary" --endpoints "$subnet.1:8080" cluster leader 2>/dev/null || true)
        [[ -n "$leader" ]] || sleep 0.2
    done
    local join="" total=$((nodes + learners))
    for ((id = 1; id <= nodes; id++)); do join+="${join:+,}$subnet.$id:8080"; done
    for ((id = nodes + 1; id <= total; id++)); do
        add_namespace "$id"
        cat >"$state_dir/node-$id.cmd" <<CMD
exec ip netns exec $(node_ns "$id") $binary serve --id $id --data-dir $state_dir/node-$id \
  --client-addr $subnet.$id:8080 --peer-addr $subnet.$id:9080 --join $join --auto-promote false \
  --peer-token-file $state_dir/peer-token ${QUORUMKV_SERVE_ARGS:-}
CMD
        start_node "$id"
        until curl -sf --max-time 1 "$subnet.$id:8080/ready" >/dev/null; do
            if ((SECONDS > deadline)); then
                echo "learner $id not ready after ${leader_deadline_seconds}s; logs in $state_dir" >&2
                false
            fi
            sleep 0.2
        done
    done
    trap - ERR INT TERM
    echo "netns cluster of $nodes voters and $learners learners is up; leader is node $leader"
    echo "client endpoints: $(for ((id = 1; id <= total; id++)); do printf '%s ' "$subnet.$id:8080"; done)"
}

case "${1:-}" in
    up) up "${2:-3}" "${3:-0}" ;;
    down) down && echo "netns cluster is down" ;;
    status) curl -sf --max-time 2 "$subnet.1:8080/v1/cluster" && echo ;;
    *)
        echo "usage: $0 up [3|5] [learners] | down | status" >&2
        exit 2
        ;;
esac
