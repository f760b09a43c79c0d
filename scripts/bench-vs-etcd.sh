#!/usr/bin/env bash
# quorumkv and etcd side by side on this machine, with the same client (`quorumkv bench`).
#
#   scripts/bench-vs-etcd.sh            # 3 rounds x 10 s per run; prints a table of medians
#   scripts/bench-vs-etcd.sh --smoke    # 1 short round, small key space: proves it works (CI)
#
# Both systems run on loopback with the same durability (fsync on, default settings): a 3-node
# cluster of each for the table, then one node of each. Workloads alternate between the two
# systems (the order flips every round) so drift on a shared machine hits both alike. Also
# measured: server CPU per request (all nodes together, from /proc) and resident memory of the
# nodes after the runs. etcd comes from Debian's packages (installed when missing).
# Settings (environment): BENCH_ROUNDS (3), BENCH_DURATION_SECS (10), BENCH_KEYS (100000),
# BENCH_VALUE_BYTES (256), BENCH_NODES (3: the cluster size of the table), BENCH_CONFIGS
# (workloads and connections, comma-separated: "put 64,get 64"; default the table's),
# BENCH_SINGLE_NODE (1: also the 1-node runs), BENCH_OUT (the results folder),
# BENCH_KEEP_DATA (0: the clusters' data directories are removed once measured),
# QUORUMKV_PROFILE (release: the binary users deploy; dev with --smoke, the tests' build),
# QUORUMKV_BINARY (target/<profile>/quorumkv, built when missing). scripts/bench-growth.sh
# runs it over value sizes, key counts and cluster sizes.
# Results: target/bench/<time>/ (one JSON per run, summary.md).
set -euo pipefail

cd "$(dirname "$0")/.."
repo_dir=$(pwd)
rounds="${BENCH_ROUNDS:-3}"
duration="${BENCH_DURATION_SECS:-10}"
keys="${BENCH_KEYS:-100000}"
value_bytes="${BENCH_VALUE_BYTES:-256}"
configs=("put 1" "put 64" "put 256" "get 1" "get 64" "get 256" "txn 64" "watch 16")
single_node_configs=("put 64" "get 64")
if [[ "${1:-}" == --smoke ]]; then
    rounds=1 duration=2 keys=2000
    configs=("put 8" "get 8" "mixed 8" "cas 8" "txn 8" "watch 8")
    single_node_configs=("put 8")
    # It times nothing: the tests' build will do, and CI builds no second profile.
    default_profile=dev
fi
if [[ -n "${BENCH_CONFIGS:-}" ]]; then IFS=, read -r -a configs <<<"$BENCH_CONFIGS"; fi
cluster_nodes="${BENCH_NODES:-3}"
[[ "${BENCH_SINGLE_NODE:-1}" == 1 ]] || single_node_configs=()
# Ports are 1808<id> and <id>2379: one digit of node id.
((cluster_nodes >= 1 && cluster_nodes <= 9)) || { echo "BENCH_NODES must be 1 to 9" >&2; exit 2; }
default_profile="${default_profile:-release}"
source scripts/profile.sh
out="${BENCH_OUT:-$repo_dir/target/bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out/runs"
startup_deadline_seconds=60

if ! command -v etcd >/dev/null; then
    echo "installing etcd from Debian's packages"
    if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 2379/2380; ours use other ports.
binary="${QUORUMKV_BINARY:-$repo_dir/target/$profile_dir/quorumkv}"
if [[ -z "${QUORUMKV_BINARY:-}" ]]; then
    echo "building quorumkv, $profile profile"
    cargo build --quiet --locked "${profile_flags[@]}" --bin quorumkv
fi

started_pids=()
cleanup() {
    local pid
    for pid in "${started_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${started_pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    started_pids=()
}
trap cleanup EXIT INT TERM

wait_for() {
    local what="$1" deadline=$((SECONDS + startup_deadline_seconds))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "timed out waiting for $what; logs in $out" >&2; exit 1; }
        sleep 0.2
    done
}

# start_quorumkv N: nodes on 127.0.0.1:1808i (client) and 1908i (peer). Sets qkv_endpoints, qkv_pids.
start_quorumkv() {
    local n="$1" id members=""
    qkv_endpoints="" qkv_pids=()
    for ((id = 1; id <= n; id++)); do members+="${members:+,}$id=127.0.0.1:1908$id"; done
    [[ -f "$out/peer-token" ]] || (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$out/peer-token")
    for ((id = 1; id <= n; id++)); do
        "$binary" serve --id "$id" --data-dir "$out/quorumkv-$n/node-$id" --client-addr "127.0.0.1:1808$id" \
            --peer-addr "127.0.0.1:1908$id" --initial-cluster "$members" --peer-token-file "$out/peer-token" --log warn \
            >>"$out/quorumkv-$n-node-$id.log" 2>&1 &
        started_pids+=($!) qkv_pids+=($!)
        qkv_endpoints+="${qkv_endpoints:+,}127.0.0.1:1808$id"
    done
    wait_for "a quorumkv leader" "$binary" --endpoints 127.0.0.1:18081 cluster leader
    for ((id = 1; id <= n; id++)); do wait_for "quorumkv node $id ready" curl -sf "127.0.0.1:1808$id/ready"; done
}

# start_etcd N: members on 127.0.0.1:<i>2379 (client) and <i>2380 (peer). Sets etcd_endpoints, etcd_pids.
start_etcd() {
    local n="$1" id members=""
    etcd_endpoints="" etcd_pids=()
    for ((id = 1; id <= n; id++)); do members+="${members:+,}e$id=http://127.0.0.1:${id}2380"; done
    for ((id = 1; id <= n; id++)); do
        etcd --name "e$id" --data-dir "$out/etcd-$n/e$id" \
            --listen-client-urls "http://127.0.0.1:${id}2379" --advertise-client-urls "http://127.0.0.1:${id}2379" \
            --listen-peer-urls "http://127.0.0.1:${id}2380" --initial-advertise-peer-urls "http://127.0.0.1:${id}2380" \
            --initial-cluster "$members" --initial-cluster-state new --initial-cluster-token "bench-$$-$n" \
            --log-level warn --logger zap >>"$out/etcd-$n-e$id.log" 2>&1 &
        started_pids+=($!) etcd_pids+=($!)
        etcd_endpoints+="${etcd_endpoints:+,}127.0.0.1:${id}2379"
    done
    for ((id = 1; id <= n; id++)); do
        wait_for "etcd member $id healthy" bash -c "curl -sf 127.0.0.1:${id}2379/health | grep -q true"
    done
}

# Clock ticks of user + system CPU of the given processes so far.
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# run SYSTEM NODES WORKLOAD CONNECTIONS ROUND: one timed run, its JSON with CPU added.
run() {
    local system="$1" nodes="$2" workload="$3" connections="$4" round="$5" endpoints pids before after
    if [[ "$system" == quorumkv ]]; then endpoints="$qkv_endpoints" pids=("${qkv_pids[@]}"); else
        endpoints="$etcd_endpoints" pids=("${etcd_pids[@]}"); fi
    local file="$out/runs/$system-$nodes-$workload-$connections-$round.json"
    before=$(cpu_ticks "${pids[@]}")
    "$binary" bench --target "$system" --endpoints "$endpoints" --workload "$workload" \
        --connections "$connections" --duration-secs "$duration" --keys "$keys" --value-bytes "$value_bytes" \
        --quiet --json "$file" >/dev/null
    after=$(cpu_ticks "${pids[@]}")
    python3 - "$file" "$((after - before))" "$(getconf CLK_TCK)" "$nodes" "$round" <<'PY'
import json, sys
path, ticks, hz, nodes, round_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
run = json.load(open(path))
run["nodes"], run["round"] = nodes, round_
run["server_cpu_us_per_request"] = ticks / hz * 1e6 / max(run["ok"], 1)
json.dump(run, open(path, "w"), indent=2)
l = run["latency_ms"]
print(f"  {run['target']:<8} {nodes} nodes {run['workload']:<6} {run['connections']:>3} conns: "
      f"{run['throughput_per_sec']:8.0f} req/s  p50 {l['p50']:6.2f} ms  p99 {l['p99']:7.2f} ms  "
      f"errors {sum(run['errors'].values())}")
PY
}

populate() {
    "$binary" bench --target quorumkv --endpoints "$qkv_endpoints" --workload populate --connections 64 \
        --keys "$keys" --value-bytes "$value_bytes" --quiet >/dev/null
    "$binary" bench --target etcd --endpoints "$etcd_endpoints" --workload populate --connections 64 \
        --keys "$keys" --value-bytes "$value_bytes" --quiet >/dev/null
}

memory() {
    local system="$1" nodes="$2" pid
    shift 2
    for pid in "$@"; do
        echo "{\"system\":\"$system\",\"nodes\":$nodes,\"rss_kib\":$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")}"
    done >>"$out/memory.jsonl"
}

bench_cluster() {
    local nodes="$1" round config system order
    shift
    local cluster_configs=("$@")
    start_quorumkv "$nodes"
    start_etcd "$nodes"
    echo "$nodes-node clusters up; writing $keys keys of $value_bytes bytes into each"
    populate
    for ((round = 1; round <= rounds; round++)); do
        if ((round % 2 == 1)); then order=(quorumkv etcd); else order=(etcd quorumkv); fi
        echo "round $round of $rounds ($nodes nodes)"
        for config in "${cluster_configs[@]}"; do
            for system in "${order[@]}"; do
                # shellcheck disable=SC2086
                run "$system" "$nodes" $config "$round"
            done
        done
    done
    memory quorumkv "$nodes" "${qkv_pids[@]}"
    memory etcd "$nodes" "${etcd_pids[@]}"
    cleanup
    # The data is not a result and can be large (100,000 values of 4 KiB on 6 nodes and their
    # logs: gigabytes); keep it only when asked.
    [[ "${BENCH_KEEP_DATA:-0}" == 1 ]] || rm -rf "$out/quorumkv-$nodes" "$out/etcd-$nodes"
}

echo "quorumkv $("$binary" --version | awk '{print $2}') ($binary) vs $(etcd --version | head -n 1); results in $out"
bench_cluster "$cluster_nodes" "${configs[@]}"
rounds_of_the_table="$rounds"
if ((${#single_node_configs[@]} > 0 && cluster_nodes != 1)); then
    rounds=1
    bench_cluster 1 "${single_node_configs[@]}"
fi

python3 - "$out" "$cluster_nodes" "$rounds_of_the_table" "$keys" "$value_bytes" <<'PY' | tee "$out/summary.md"
import glob, json, os, statistics, sys
out, cluster_nodes, table_rounds, keys, value_bytes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
runs = [json.load(open(p)) for p in glob.glob(os.path.join(out, "runs", "*.json"))]
groups = {}
for r in runs:
    groups.setdefault((r["nodes"], r["workload"], r["connections"]), {}).setdefault(r["target"], []).append(r)
def med(rs, f):
    return statistics.median(f(r) for r in rs)
print("| nodes | workload | conns | quorumkv req/s | etcd req/s | ratio | quorumkv p50 / p99 ms | etcd p50 / p99 ms | p99 ratio | CPU µs/req quorumkv / etcd | errors q / e |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (nodes, workload, conns) in sorted(groups, key=lambda k: (-k[0], k[1], k[2])):
    g = groups[(nodes, workload, conns)]
    q, e = g.get("quorumkv"), g.get("etcd")
    if not q or not e:
        continue
    qt, et = med(q, lambda r: r["throughput_per_sec"]), med(e, lambda r: r["throughput_per_sec"])
    q50, q99 = med(q, lambda r: r["latency_ms"]["p50"]), med(q, lambda r: r["latency_ms"]["p99"])
    e50, e99 = med(e, lambda r: r["latency_ms"]["p50"]), med(e, lambda r: r["latency_ms"]["p99"])
    qc, ec = med(q, lambda r: r["server_cpu_us_per_request"]), med(e, lambda r: r["server_cpu_us_per_request"])
    qe = sum(sum(r["errors"].values()) for r in q); ee = sum(sum(r["errors"].values()) for r in e)
    print(f"| {nodes} | {workload} | {conns} | {qt:.0f} | {et:.0f} | {qt/et:.2f}x | {q50:.2f} / {q99:.2f} | "
          f"{e50:.2f} / {e99:.2f} | {q99/e99:.2f} | {qc:.0f} / {ec:.0f} | {qe} / {ee} |")
watch_groups = {k: g for k, g in groups.items() if k[1] == "watch" and g.get("quorumkv") and g.get("etcd")}
if watch_groups:
    print("\nWatch: the writes above with watchers of every key; events delivered, and the delay from a write's sending to its event")
    print("| nodes | writers | watchers | quorumkv events/s | etcd events/s | ratio | quorumkv delay p50 / p99 ms | etcd delay p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (nodes, _, conns), g in sorted(watch_groups.items(), key=lambda kv: -kv[0][0]):
        q, e = g["quorumkv"], g["etcd"]
        qe, ee = med(q, lambda r: r["watch"]["events_per_sec"]), med(e, lambda r: r["watch"]["events_per_sec"])
        q50, q99 = med(q, lambda r: r["watch"]["delay_ms"]["p50"]), med(q, lambda r: r["watch"]["delay_ms"]["p99"])
        e50, e99 = med(e, lambda r: r["watch"]["delay_ms"]["p50"]), med(e, lambda r: r["watch"]["delay_ms"]["p99"])
        print(f"| {nodes} | {conns} | {q[0]['watch']['watchers']} | {qe:.0f} | {ee:.0f} | {qe/ee:.2f}x | "
              f"{q50:.2f} / {q99:.2f} | {e50:.2f} / {e99:.2f} |")
memory = [json.loads(l) for l in open(os.path.join(out, "memory.jsonl"))]
for nodes in sorted({m["nodes"] for m in memory}, reverse=True):
    line = []
    for system in ("quorumkv", "etcd"):
        rss = [m["rss_kib"] / 1024 for m in memory if m["system"] == system and m["nodes"] == nodes]
        line.append(f"{system} max {max(rss):.0f} MiB")
    print(f"\nResident memory per node after the {nodes}-node runs: " + ", ".join(line))
single = "" if cluster_nodes == 1 or not any(r["nodes"] == 1 for r in runs) else " and 1 round (1 node)"
print(f"\nMedians of {table_rounds} rounds ({cluster_nodes} nodes){single}, {keys} keys of {value_bytes} bytes; "
      f"ratio = quorumkv / etcd; p99 ratio below 1 means quorumkv's p99 is lower.")
PY
# Every run must have served requests without errors on an undisturbed cluster.
python3 - "$out" <<'PY'
import glob, json, os, sys
bad = [(os.path.basename(p), r["ok"], r["errors"]) for p in glob.glob(os.path.join(sys.argv[1], "runs", "*.json"))
       for r in [json.load(open(p))] if r["ok"] == 0 or sum(r["errors"].values()) > 0]
for name, ok, errors in bad:
    print(f"bench run {name}: {ok} ok, errors {errors}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
