#!/usr/bin/env bash
# A quorumkv cluster of containers under Docker Compose, usable by the fault scripts and the
# Jepsen-style runner (like scripts/netns-cluster.sh, but every node is a container).
#   scripts/compose-cluster.sh up [3|5]     # builds the image if missing, waits for a leader
#   scripts/compose-cluster.sh down         # removes containers, network and volumes
#   QUORUMKV_COMPOSE_TLS=1 scripts/compose-cluster.sh up 3
#                                           # with cluster/docker-compose.tls.yml: HTTPS clients,
#                                           # mutual TLS between nodes (certificates in $state/certs)
# State (for scripts/faults/*): .quorumkv-compose/ or $QUORUMKV_STATE_DIR.
set -euo pipefail

repo_dir="$(cd "$(dirname "$0")/.." && pwd)"
state_dir="${QUORUMKV_STATE_DIR:-$repo_dir/.quorumkv-compose}"
project="${QUORUMKV_COMPOSE_PROJECT:-quorumkv}"
image="${QUORUMKV_IMAGE:-quorumkv:dev}"
leader_deadline_seconds=60

compose() {
    local files=(-f "$repo_dir/cluster/docker-compose.yml")
    if [[ "${nodes:-3}" == 5 ]]; then files+=(-f "$repo_dir/cluster/docker-compose.five.yml"); fi
    if [[ -f "$state_dir/certs/ca.pem" ]]; then files+=(-f "$repo_dir/cluster/docker-compose.tls.yml"); fi
    # The cluster's peer token, made by `up`; `down` needs some value only to read the file.
    local token
    token=$(cat "$state_dir/peer-token" 2>/dev/null || echo "no-cluster-is-up-here")
    QUORUMKV_CERTS_DIR="$state_dir/certs" QUORUMKV_PEER_TOKEN="$token" QUORUMKV_IMAGE="$image" docker-compose -p "$project" "${files[@]}" "$@"
}

down() {
    if [[ -f "$state_dir/cluster.env" ]]; then
        # shellcheck disable=SC1091
        nodes=$(source "$state_dir/cluster.env" && echo "$NODES")
    fi
    nodes="${nodes:-5}"
    compose down --volumes --timeout 20 >/dev/null 2>&1 || true
    rm -rf "$state_dir"
}

up() {
    nodes="${1:-3}"
    if [[ "$nodes" != 3 && "$nodes" != 5 ]]; then
        echo "usage: $0 up [3|5]" >&2
        exit 1
    fi
    if [[ -f "$state_dir/cluster.env" ]]; then
        echo "a compose cluster is already up ($state_dir); run '$0 down' first" >&2
        exit 1
    fi
    docker image inspect "$image" >/dev/null 2>&1 || QUORUMKV_IMAGE="$image" "$repo_dir/scripts/docker-image.sh"
    trap 'echo "compose-cluster: bring-up failed, cleaning up" >&2; down' ERR
    trap 'echo "compose-cluster: interrupted, cleaning up" >&2; down; exit 130' INT TERM
    mkdir -p "$state_dir"
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$state_dir/peer-token")
    # The host's CLI asks who leads (the image was built from it; build it if it is gone).
    [[ -x "$repo_dir/target/debug/quorumkv" ]] || (cd "$repo_dir" && cargo build --quiet --locked --bin quorumkv)
    local cli=("$repo_dir/target/debug/quorumkv")
    if [[ "${QUORUMKV_COMPOSE_TLS:-0}" == 1 ]]; then
        if [[ "$nodes" != 3 ]]; then
            echo "TLS is set up for 3 nodes (cluster/docker-compose.tls.yml)" >&2
            false
        fi
        "${cli[@]}" certs init "$state_dir/certs" --nodes 3 --hosts node1,node2,node3 >/dev/null
        # The CAs' keys stay on the host: the containers get certificates, never a way to make them.
        mkdir -p "$state_dir/ca-keys"
        mv "$state_dir/certs/ca-key.pem" "$state_dir/certs/client-ca-key.pem" "$state_dir/ca-keys/"
        # The image runs as uid 10001, which must read the keys.
        chown -R 10001:10001 "$state_dir/certs"
        cli+=(--cacert "$state_dir/certs/ca.pem")
    fi
    compose up -d >"$state_dir/compose-up.log" 2>&1
    {
        echo "NODES=$nodes"
        echo "KIND=compose"
        echo "PROJECT=$project"
    } >"$state_dir/cluster.env"
    for ((id = 1; id <= nodes; id++)); do
        container=$(compose ps -q "node$id")
        cat >"$state_dir/node-$id.env" <<ENV
CLIENT_ADDR=127.0.0.1:808$id
PEER_ADDR=node$id:9080
CONTAINER=$container
ENV
    done
    local deadline=$((SECONDS + leader_deadline_seconds)) leader=""
    until leader=$("${cli[@]}" --endpoints 127.0.0.1:8081 cluster leader 2>/dev/null); do
        if ((SECONDS >= deadline)); then
            compose logs --no-color >"$state_dir/compose.log" 2>&1 || true
            echo "no leader after ${leader_deadline_seconds}s; logs in $state_dir/compose.log" >&2
            false
        fi
        sleep 0.2
    done
    trap - ERR INT TERM
    echo "compose cluster of $nodes nodes is up; leader is node $leader"
    echo "client endpoints: $(for ((id = 1; id <= nodes; id++)); do printf '127.0.0.1:808%s ' "$id"; done)"
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    down) down && echo "compose cluster is down" ;;
    logs) nodes=5 compose logs --no-color ;;
    *)
        echo "usage: $0 up [3|5] | down | logs" >&2
        exit 1
        ;;
esac
