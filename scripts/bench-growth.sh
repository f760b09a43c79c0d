#!/usr/bin/env bash
# How cost grows with the data: quorumkv and etcd side by side (scripts/bench-vs-etcd.sh, one
# round each) at 64 connections, over value size (256 B, 4 KiB, 64 KiB), key count (100,000
# and 1,000,000) and cluster size (3 and 5 nodes), one of them changed at a time.
#
#   scripts/bench-growth.sh        # prints one table; about 30 minutes on 2 cores (the
#                                  # 1,000,000-key case alone took 12, mostly loading the keys)
#
# 64 KiB values use 10,000 keys (640 MB per node, the same order as 4 KiB x 100,000) so the
# runs fit an ordinary disk. Settings (environment): BENCH_DURATION_SECS (10), QUORUMKV_PROFILE,
# QUORUMKV_BINARY, as for bench-vs-etcd.sh. Results: target/bench/growth-<time>/ (each case's
# folder, and summary.md).
set -euo pipefail

cd "$(dirname "$0")/.."
out="$(pwd)/target/bench/growth-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

# nodes, keys, value bytes
cases=(
    "3 100000 256"
    "3 100000 4096"
    "3 10000 65536"
    "3 1000000 256"
    "5 100000 256"
)
for case in "${cases[@]}"; do
    read -r nodes keys value_bytes <<<"$case"
    echo "== $nodes nodes, $keys keys of $value_bytes bytes"
    BENCH_ROUNDS=1 BENCH_NODES="$nodes" BENCH_KEYS="$keys" BENCH_VALUE_BYTES="$value_bytes" \
        BENCH_CONFIGS="put 64,get 64" BENCH_SINGLE_NODE=0 BENCH_OUT="$out/$nodes-$keys-$value_bytes" \
        scripts/bench-vs-etcd.sh >"$out/$nodes-$keys-$value_bytes.log" 2>&1 ||
        { echo "case failed; its log: $out/$nodes-$keys-$value_bytes.log" >&2; exit 1; }
done

python3 - "$out" "${cases[@]}" <<'PY' | tee "$out/summary.md"
import glob, json, os, sys
out, cases = sys.argv[1], sys.argv[2:]
print("| nodes | keys | value | workload | quorumkv req/s | p99 ms | CPU µs/req | etcd req/s | p99 ms | CPU µs/req | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for case in cases:
    nodes, keys, value_bytes = case.split()
    runs = [json.load(open(p)) for p in glob.glob(os.path.join(out, f"{nodes}-{keys}-{value_bytes}", "runs", "*.json"))]
    for workload in ("put", "get"):
        by = {r["target"]: r for r in runs if r["workload"] == workload}
        q, e = by.get("quorumkv"), by.get("etcd")
        if not q or not e:
            continue
        size = f"{int(value_bytes) // 1024} KiB" if int(value_bytes) >= 1024 else f"{value_bytes} B"
        print(f"| {nodes} | {int(keys):,} | {size} | {workload} 64 | {q['throughput_per_sec']:.0f} | "
              f"{q['latency_ms']['p99']:.2f} | {q['server_cpu_us_per_request']:.0f} | {e['throughput_per_sec']:.0f} | "
              f"{e['latency_ms']['p99']:.2f} | {e['server_cpu_us_per_request']:.0f} | "
              f"{q['throughput_per_sec'] / e['throughput_per_sec']:.2f}x |")
print("\nOne round of 10 s per cell, both systems in the same run; get = linearizable.")
PY
