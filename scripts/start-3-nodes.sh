#!/usr/bin/env bash
# Starts a local 3-node quorumkv cluster on loopback, or restarts whichever of its nodes are
# not running. Idempotent: run it again after killing a node and that node comes back.
#
#   client API: 127.0.0.1:8081..8083    peer (Raft): 127.0.0.1:9081..9083
#   state:      $QUORUMKV_STATE_DIR (default ./.quorumkv): node-N/ data, node-N.log, node-N.pid
#   options:    $QUORUMKV_SERVE_ARGS, further `quorumkv serve` arguments for every node
#               (the fault runs pass injected faults this way)
#   --tls:      HTTPS on the client ports and mutual TLS between the nodes, with development
#               certificates made by `quorumkv certs init` in $QUORUMKV_STATE_DIR/certs (kept:
#               once a state dir has certificates, its nodes always start with TLS)
#   --auth:     users and roles on: creates user `root` (role admin) with a random password in
#               $QUORUMKV_STATE_DIR/root-password and enables auth (kept, like --tls)
#   --release:  build and run the release profile (what users deploy; a second RocksDB build
#               of about 10 minutes the first time) instead of the dev profile the tests use;
#               QUORUMKV_PROFILE=release does the same
#
# The nodes authenticate each other with a peer token, generated once into
# $QUORUMKV_STATE_DIR/peer-token (and, with --tls, also with their certificates).
#
# Stop it with scripts/stop-3-nodes.sh.
set -euo pipefail

tls=false
auth=false
for arg in "$@"; do
    case "$arg" in
        --tls) tls=true ;;
        --auth) auth=true ;;
        --release) export QUORUMKV_PROFILE=release ;;
        *)
            echo "usage: $0 [--tls] [--auth] [--release]" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "$0")/.."
default_profile=dev
source scripts/profile.sh
state_dir="${QUORUMKV_STATE_DIR:-$PWD/.quorumkv}"
binary="$PWD/target/$profile_dir/quorumkv"
initial_cluster="1=127.0.0.1:9081,2=127.0.0.1:9082,3=127.0.0.1:9083"
leader_deadline_seconds=60

echo "building quorumkv, $profile profile (the first build compiles RocksDB: about 10 minutes on 2 cores)..."
cargo build --quiet "${profile_flags[@]}" --bin quorumkv

mkdir -p "$state_dir"
certs_dir="$state_dir/certs"
if $tls && [[ ! -f "$certs_dir/ca.pem" ]]; then
    "$binary" certs init "$certs_dir" --nodes 3 >/dev/null
    echo "made development certificates in $certs_dir"
fi
[[ -f "$certs_dir/ca.pem" ]] && tls=true
# The shared secret every node presents on the peer port: random, made once, owner-only.
if [[ ! -f "$state_dir/peer-token" ]]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$state_dir/peer-token")
fi
client_tls_args=()
if $tls; then
    client_tls_args=(--cacert "$certs_dir/ca.pem")
fi

is_running() {
    local pid_file="$state_dir/node-$1.pid"
    # Right after start the process is still `bash node-N.cmd`; then it execs quorumkv.
    [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null \
        && grep -qaE "quorumkv|node-$1.cmd" "/proc/$(cat "$pid_file")/cmdline" 2>/dev/null
}

# The layout scripts/faults/* read: cluster.env, node-N.env, node-N.cmd.
printf 'NODES=3\nKIND=local\n' >"$state_dir/cluster.env"
for id in 1 2 3; do
    printf 'CLIENT_ADDR=127.0.0.1:808%s\nPEER_ADDR=127.0.0.1:908%s\n' "$id" "$id" >"$state_dir/node-$id.env"
    node_tls_args=""
    if $tls; then
        node_tls_args="--client-cert-file $certs_dir/node-$id.pem --client-key-file $certs_dir/node-$id-key.pem \
  --peer-cert-file $certs_dir/node-$id.pem --peer-key-file $certs_dir/node-$id-key.pem \
  --peer-trusted-ca-file $certs_dir/ca.pem"
    fi
    cat >"$state_dir/node-$id.cmd" <<CMD
exec $binary serve --id $id --data-dir $state_dir/node-$id \
  --client-addr 127.0.0.1:808$id --peer-addr 127.0.0.1:908$id --initial-cluster $initial_cluster \
  --peer-token-file $state_dir/peer-token $node_tls_args \
  ${QUORUMKV_SERVE_ARGS:-}
CMD
    if is_running "$id"; then
        echo "node $id already running (pid $(cat "$state_dir/node-$id.pid"))"
        continue
    fi
    setsid bash "$state_dir/node-$id.cmd" >>"$state_dir/node-$id.log" 2>&1 </dev/null &
    echo $! >"$state_dir/node-$id.pid"
    echo "started node $id (pid $!), log: $state_dir/node-$id.log"
done

echo "waiting for a leader..."
deadline=$((SECONDS + leader_deadline_seconds))
leader=""
while [[ -z "$leader" ]]; do
    if ((SECONDS > deadline)); then
        echo "no leader after ${leader_deadline_seconds}s; see the logs in $state_dir" >&2
        exit 1
    fi
    for id in 1 2 3; do
        if ! is_running "$id"; then
            echo "node $id exited; last log lines:" >&2
            tail -n 5 "$state_dir/node-$id.log" >&2
            exit 1
        fi
    done
    leader=$("$binary" "${client_tls_args[@]}" --endpoints 127.0.0.1:8081 cluster leader 2>/dev/null || true)
    [[ -n "$leader" ]] || sleep 0.2
done

# --auth: a root user with a random password, then auth on. Once; later runs keep it.
password_file="$state_dir/root-password"
if $auth && [[ ! -f "$password_file" ]]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$password_file.partial")
    QUORUMKV_NEW_PASSWORD="$(cat "$password_file.partial")" "$binary" "${client_tls_args[@]}" \
        --endpoints 127.0.0.1:8081 user add root --roles admin >/dev/null
    "$binary" "${client_tls_args[@]}" --endpoints 127.0.0.1:8081 auth enable >/dev/null
    mv "$password_file.partial" "$password_file"
    echo "auth enabled: user root, password in $password_file"
fi
auth_hint=""
# The same build again (a restart without --release would start the dev build's nodes).
restart_flags=""
[[ "$profile" == release ]] && restart_flags=" --release"
if [[ -f "$password_file" ]]; then
    auth_hint="
  export QUORUMKV_USER=root QUORUMKV_PASSWORD=\$(cat $password_file)   # auth is on: log in as root
  TOKEN=\$($binary ${client_tls_args[*]} auth token)                  # a token for curl's -H \"Authorization: Bearer \$TOKEN\""
fi

if $tls; then
    cat <<USAGE
cluster is up (TLS): leader is node $leader (pid $(cat "$state_dir/node-$leader.pid"))

  curl --cacert $certs_dir/ca.pem -X PUT https://localhost:8081/v1/kv/greeting -d hello
  curl --cacert $certs_dir/ca.pem https://localhost:8082/v1/kv/greeting
  $binary --cacert $certs_dir/ca.pem get greeting      # or: export QUORUMKV_CACERT=$certs_dir/ca.pem

  kill -9 \$(cat $state_dir/node-$leader.pid)    # kill the leader; the others elect a new one
  scripts/start-3-nodes.sh$restart_flags                        # restart whatever is not running (TLS is kept)
  scripts/stop-3-nodes.sh                         # stop all three (SIGTERM, graceful)
$auth_hint
USAGE
    exit 0
fi
cat <<USAGE
cluster is up: leader is node $leader (pid $(cat "$state_dir/node-$leader.pid"))

  curl -X PUT localhost:8081/v1/kv/greeting -d hello
  curl localhost:8082/v1/kv/greeting
  curl localhost:8083/v1/cluster
  $binary get greeting

  kill -9 \$(cat $state_dir/node-$leader.pid)    # kill the leader; the others elect a new one
  scripts/start-3-nodes.sh$restart_flags                        # restart whatever is not running
  scripts/stop-3-nodes.sh                         # stop all three (SIGTERM, graceful)
$auth_hint
USAGE
