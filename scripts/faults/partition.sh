#!/usr/bin/env bash
# Cut the network (iptables DROP: silent loss, not a polite reject). Two nodes can talk only
# if some group holds both; a node may be in several groups (bridges, rings).
#   scripts/faults/partition.sh 1,2/3              majority / minority
#   scripts/faults/partition.sh 1,2,3/3,4,5        bridge: 3 sees both sides
#   scripts/faults/partition.sh 1,2/2,3/3,4/4,5/5,1  ring
#   scripts/faults/partition.sh isolate-leader
# On the network-namespace cluster (scripts/netns-cluster.sh) and the compose cluster
# (scripts/compose-cluster.sh: rules go into each container's network namespace from the host,
# so the image needs no iptables and no NET_ADMIN); elsewhere it is skipped.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
spec="${1:?usage: partition.sh <groups like 1,2/3|isolate-leader>}"
[[ "${KIND:-local}" == netns || "${KIND:-local}" == compose ]] ||
    skipped "partitions need the network-namespace or compose cluster (scripts/netns-cluster.sh, compose-cluster.sh)"
if [[ "$spec" == isolate-leader ]]; then
    leader=$(resolve_node leader)
    others=$(seq 1 "$NODES" | grep -vx "$leader" | paste -sd, -)
    spec="$leader/$others"
fi
declare -A groups_of
group=0
IFS='/' read -ra groups <<<"$spec"
for members in "${groups[@]}"; do
    IFS=',' read -ra ids <<<"$members"
    for id in "${ids[@]}"; do
        id=$(resolve_node "$id")
        groups_of[$id]+=" $group "
    done
    group=$((group + 1))
done
connected() {
    local g
    for g in ${groups_of[$1]:-}; do
        [[ "${groups_of[$2]:-}" == *" $g "* ]] && return 0
    done
    return 1
}
for ((a = 1; a <= NODES; a++)); do
    for ((b = 1; b <= NODES; b++)); do
        [[ $a == "$b" ]] && continue
        connected "$a" "$b" && continue
        if [[ "$KIND" == compose ]]; then
            # A stopped container has no rules to add; it is cut off when it comes back only if
            # the partition is installed again.
            pid=$(container_pid "$a") || continue
            ip_b=$(container_ip "$b") || continue
            in_container_netns "$pid" iptables -A QKV-PARTITION -s "$ip_b" -j DROP
        else
            # shellcheck disable=SC1090
            ns=$(source "$cluster_dir/node-$a.env" && echo "$NETNS")
            # shellcheck disable=SC1090
            ip_b=$(source "$cluster_dir/node-$b.env" && echo "$IP")
            ip netns exec "$ns" iptables -A QKV-PARTITION -s "$ip_b" -j DROP
        fi
    done
done
installed "partitioned into $spec"
