#!/usr/bin/env bash
# Remove every partition: scripts/faults/heal.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ "${KIND:-local}" == netns || "${KIND:-local}" == compose ]] || skipped "no partitions on a loopback cluster"
for ((id = 1; id <= NODES; id++)); do
    if [[ "$KIND" == compose ]]; then
        pid=$(container_pid "$id") || continue
        in_container_netns "$pid" iptables -F QKV-PARTITION
        continue
    fi
    # shellcheck disable=SC1090
    ns=$(source "$cluster_dir/node-$id.env" && echo "$NETNS")
    ip netns exec "$ns" iptables -F QKV-PARTITION
done
installed "healed all partitions"
