# Shared by the fault scripts: finds the cluster, resolves node names, reports outcomes.
# A fault script prints one line and exits 0 when the fault was installed, 3 when it could not
# apply here (skipped), 1 on error. It only signals processes listed in the cluster's PID files.

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -n "${QUORUMKV_CLUSTER_DIR:-}" ]]; then
    cluster_dir="$QUORUMKV_CLUSTER_DIR"
elif [[ -f "$repo_dir/.quorumkv-netns/cluster.env" ]]; then
    cluster_dir="$repo_dir/.quorumkv-netns"
elif [[ -f "$repo_dir/.quorumkv-compose/cluster.env" ]]; then
    cluster_dir="$repo_dir/.quorumkv-compose"
else
    cluster_dir="$repo_dir/.quorumkv"
fi
if [[ ! -f "$cluster_dir/cluster.env" ]]; then
    echo "error: no cluster at $cluster_dir (start one, or set QUORUMKV_CLUSTER_DIR)" >&2
    exit 1
fi
# shellcheck disable=SC1091
source "$cluster_dir/cluster.env"

# A cluster with TLS on its client ports (start-3-nodes.sh --tls) keeps its CA here: the CLI
# trusts it, and only it.
client_tls_args=()
if [[ -f "$cluster_dir/certs/ca.pem" ]]; then
    client_tls_args=(--cacert "$cluster_dir/certs/ca.pem")
fi

installed() { echo "installed: $*"; exit 0; }
skipped() { echo "skipped: $*"; exit 3; }

# The container of node $1 (compose clusters only).
node_container() {
    # shellcheck disable=SC1090
    (source "$cluster_dir/node-$1.env" && echo "$CONTAINER")
}

# The network namespace of node $1's container, as `nsenter` arguments' target PID.
container_pid() {
    docker inspect --format '{{if .State.Running}}{{.State.Pid}}{{end}}' "$(node_container "$1")" 2>/dev/null | grep -E '^[0-9]+$'
}

# The address of node $1's container on the compose network.
container_ip() {
    docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(node_container "$1")" \
        2>/dev/null | awk '{print $1}' | grep -E '^[0-9.]+$'
}

# Runs a command in the network namespace of the container whose first process is $1, after
# making sure the partition chain exists there (a restarted container has a fresh namespace).
in_container_netns() {
    local pid="$1"
    shift
    nsenter -t "$pid" -n iptables -N QKV-PARTITION 2>/dev/null || true
    nsenter -t "$pid" -n iptables -C INPUT -j QKV-PARTITION 2>/dev/null ||
        nsenter -t "$pid" -n iptables -I INPUT -j QKV-PARTITION
    nsenter -t "$pid" -n "$@"
}

node_pid() {
    if [[ "${KIND:-local}" == compose ]]; then
        # quorumkv is the container's first process; a paused container still counts as running.
        container_pid "$1"
        return
    fi
    local pid_file="$cluster_dir/node-$1.pid"
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(cat "$pid_file")
    # Right after start the process is still `bash node-N.cmd`; then it execs quorumkv.
    grep -qaE "quorumkv|node-$1.cmd" "/proc/$pid/cmdline" 2>/dev/null || return 1
    # The PID file may name the `ip netns exec` wrapper's successor: it execs, so it is the node.
    echo "$pid"
}

client_addr() {
    # shellcheck disable=SC1090
    (source "$cluster_dir/node-$1.env" && echo "$CLIENT_ADDR")
}

current_leader() {
    local id leader
    for ((id = 1; id <= NODES; id++)); do
        node_pid "$id" >/dev/null || continue
        [[ -f "$cluster_dir/node-$id.paused" ]] && continue
        leader=$("$repo_dir/target/debug/quorumkv" "${client_tls_args[@]}" --endpoints "$(client_addr "$id")" cluster leader 2>/dev/null || true)
        if [[ -n "$leader" ]]; then
            echo "$leader"
            return 0
        fi
    done
    return 1
}

# Resolves "all" to every node id, else one node as resolve_node does.
resolve_targets() {
    if [[ "$1" == all ]]; then seq 1 "$NODES"; else resolve_node "$1"; fi
}

# Resolves "leader" or a node id to a node id.
resolve_node() {
    case "$1" in
        leader) current_leader || { echo "error: no leader known" >&2; exit 1; } ;;
        [0-9]*)
            if (($1 < 1 || $1 > NODES)); then
                echo "error: node $1 is not in 1..$NODES" >&2
                exit 1
            fi
            echo "$1"
            ;;
        *)
            echo "error: expected a node id or 'leader', got '$1'" >&2
            exit 1
            ;;
    esac
}
