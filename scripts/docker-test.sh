#!/usr/bin/env bash
# End-to-end test of the container image, the compose cluster and the Kubernetes manifests.
# Run by scripts/test.sh (as root); also by hand: sudo scripts/docker-test.sh
#
#  1. builds the image (scripts/docker-image.sh) and starts the 3-node compose cluster;
#  2. writes through every node and reads every key back through every node;
#  3. kills the leader's container: a new leader is elected and nothing is lost;
#     restarts it and sees it catch up;
#  4. partitions one container away (iptables in its network namespace): the majority keeps
#     accepting writes, the cut-off node cannot serve a linearizable read; heals, and the node
#     catches up;
#  5. runs `quorumkv verify` against it; tears the cluster down, runs a short Jepsen-style test against a fresh compose cluster
#     (valid verdict required);
#  6. starts the compose cluster with TLS (cluster/docker-compose.tls.yml): writes and reads over
#     HTTPS through every node, checks that a client not trusting the CA and plain HTTP get
#     nothing, runs `quorumkv verify` over TLS; then scripts/k8s-check.py, plain and --tls.
set -euo pipefail

cd "$(dirname "$0")/.."
repo_dir=$(pwd)
export QUORUMKV_STATE_DIR="$repo_dir/target/docker-test/cluster"
export QUORUMKV_CLUSTER_DIR="$QUORUMKV_STATE_DIR"
deadline_seconds=60

step() { echo "docker-test: $*"; }
fail() {
    echo "docker-test: FAILED: $*" >&2
    scripts/compose-cluster.sh logs >"$repo_dir/target/docker-test/compose.log" 2>&1 || true
    echo "docker-test: container logs in target/docker-test/compose.log" >&2
    exit 1
}
# Polls "$@" until it succeeds, or fails the test at the deadline.
eventually() {
    local what="$1" deadline=$((SECONDS + deadline_seconds))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out waiting for: $what"
        sleep 0.2
    done
}
value_is() { [[ "$(curl -sf --max-time 5 "127.0.0.1:808$1/v1/kv/$2?consistency=${4:-linearizable}")" == "$3" ]]; }
leader_is_not() {
    local id leader
    for id in 1 2 3; do
        [[ "$id" == "$1" ]] && continue
        leader=$(target/debug/quorumkv --endpoints "127.0.0.1:808$id" cluster leader 2>/dev/null) || continue
        [[ -n "$leader" && "$leader" != "$1" ]] && return 0
    done
    return 1
}

mkdir -p target/docker-test
scripts/docker-image.sh
scripts/compose-cluster.sh down >/dev/null
trap 'scripts/compose-cluster.sh down >/dev/null 2>&1 || true' EXIT
scripts/compose-cluster.sh up 3

step "write through every node, read through every node"
for id in 1 2 3; do
    curl -sf --max-time 10 -X PUT "127.0.0.1:808$id/v1/kv/docker/$id" -d "value-$id" >/dev/null || fail "PUT through node $id"
done
for id in 1 2 3; do
    for key in 1 2 3; do
        value_is "$id" "docker/$key" "value-$key" || fail "node $id does not read docker/$key"
    done
done

step "kill the leader's container"
old_leader=$(scripts/faults/leader.sh)
scripts/faults/kill.sh leader
eventually "a new leader after node $old_leader was killed" leader_is_not "$old_leader"
survivor=$(seq 1 3 | grep -vx "$old_leader" | head -n 1)
curl -sf --max-time 10 -X PUT "127.0.0.1:808$survivor/v1/kv/docker/after-kill" -d written >/dev/null ||
    fail "PUT after the leader was killed"
for key in 1 2 3; do
    value_is "$survivor" "docker/$key" "value-$key" || fail "docker/$key lost after the leader was killed"
done
scripts/faults/restart.sh "$old_leader"
eventually "node $old_leader back and caught up" value_is "$old_leader" docker/after-kill written

step "partition one container away, then heal"
isolated=$(seq 1 3 | grep -vx "$(scripts/faults/leader.sh)" | head -n 1)
others=$(seq 1 3 | grep -vx "$isolated" | paste -sd, -)
scripts/faults/partition.sh "$isolated/$others"
majority=$(echo "$others" | cut -d, -f1)
curl -sf --max-time 10 -X PUT "127.0.0.1:808$majority/v1/kv/docker/partitioned" -d majority >/dev/null ||
    fail "the majority refused a write during the partition"
# Bounded by the server: up to 3 attempts of a 5 s read-index call plus a 2 s leader wait.
started=$SECONDS
status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "127.0.0.1:808$isolated/v1/kv/docker/partitioned")
step "the cut-off node answered $status after $((SECONDS - started)) s"
[[ "$status" == 503 ]] || fail "the cut-off node answered a linearizable read with $status, not 503"
scripts/faults/heal.sh
eventually "node $isolated caught up after healing" value_is "$isolated" docker/partitioned majority

step "quorumkv verify against the compose cluster"
target/debug/quorumkv --endpoints 127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083 verify --duration-secs 5 ||
    fail "quorumkv verify did not find the compose cluster linearizable"
scripts/compose-cluster.sh down >/dev/null

step "a short Jepsen-style run against the containers"
target/debug/quorumkv-jepsen --cluster compose --nemesis mix --time-limit-secs 30 --nemesis-interval-secs 6 \
    --seed 106 --out target/docker-test/jepsen || fail "the Jepsen-style run on the compose cluster was not valid"

step "the compose cluster over TLS (cluster/docker-compose.tls.yml)"
QUORUMKV_COMPOSE_TLS=1 scripts/compose-cluster.sh up 3
tls_ca="$QUORUMKV_STATE_DIR/certs/ca.pem"
tls_value_is() { [[ "$(curl -sf --max-time 5 --cacert "$tls_ca" "https://127.0.0.1:808$1/v1/kv/$2")" == "$3" ]]; }
for id in 1 2 3; do
    curl -sf --max-time 10 --cacert "$tls_ca" -X PUT "https://127.0.0.1:808$id/v1/kv/tls/$id" -d "tls-$id" >/dev/null ||
        fail "PUT over HTTPS through node $id"
done
for id in 1 2 3; do
    for key in 1 2 3; do
        eventually "node $id reads tls/$key over HTTPS" tls_value_is "$id" "tls/$key" "tls-$key"
    done
done
if curl -sf --max-time 10 "https://127.0.0.1:8081/health" >/dev/null 2>&1; then
    fail "a client that does not trust the cluster's CA was answered"
fi
if curl -sf --max-time 10 "http://127.0.0.1:8081/health" >/dev/null 2>&1; then
    fail "plain HTTP was answered on a TLS client port"
fi
target/debug/quorumkv --cacert "$tls_ca" --endpoints 127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083 \
    verify --duration-secs 5 || fail "quorumkv verify did not find the TLS compose cluster linearizable"
scripts/compose-cluster.sh down >/dev/null

step "Kubernetes manifests"
/usr/bin/python3 scripts/k8s-check.py || fail "scripts/k8s-check.py"
step "Kubernetes manifests, TLS variant"
/usr/bin/python3 scripts/k8s-check.py --tls || fail "scripts/k8s-check.py --tls"
step "ok"
