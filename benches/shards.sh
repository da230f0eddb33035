#!/usr/bin/env bash
# One node, 1 shard vs SHARDS shards (issue 15): ROUNDS alternating runs of `strata bench
# append` (1 KiB events, single-event unary appends, CLIENTS clients, each on its own stream,
# so the streams spread over the shards) against a fresh release `strata dev --shards N`.
# Alternating matters: this machine's speed drifts 2-3x within minutes. Prints every run,
# then the medians: events/s, fdatasyncs/s (the node's own count of log fdatasyncs) and
# server CPU per event, with SHARDS / 1 for each. The disk's limits are measured first.
#   usage: benches/shards.sh [SECONDS=10] [DATA_PARENT=/tmp] [ROUNDS=3] [SHARDS=8] [CLIENTS=64]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; parent=${2:-/tmp}; rounds=${3:-3}; shards=${4:-8}; clients=${5:-64}
source benches/lib.sh
bash ../shared/bench/disk-limits.sh "$parent" 5
out=$(mktemp)
run() { # shards
  local data port dev
  data=$(mktemp -d "$parent/strata-bench.XXXXXX"); port=$(free_port)
  "$strata" dev --data "$data/node" --shards "$1" --listen "127.0.0.1:$port" --metrics off \
    >"$data/dev.log" 2>&1 &
  dev=$!
  for _ in $(seq 100); do "$strata" stream-info probe --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
  echo -n "shards=$1 "
  "$strata" bench append --clients "$clients" --event-bytes 1024 --duration "$secs" \
    --server "127.0.0.1:$port" 2>/dev/null | tail -1 | sed "s/^{/{\"shards\": $1, /" | tee -a "$out"
  kill -INT $dev; wait $dev 2>/dev/null || true; rm -rf "$data"
}
for _ in $(seq "$rounds"); do
  run 1
  run "$shards"
done
python3 - "$out" "$shards" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
n = int(sys.argv[2])
def med(shards, key):
    values = [r[key] for r in runs if r["shards"] == shards and r.get(key) is not None]
    return statistics.median(values) if values else float("nan")
print(f"medians of {len(runs) // 2} alternating pairs, {runs[0]['clients']} clients, 1 KiB events:")
for key, what in [("events_per_s", "events/s"), ("fdatasyncs_per_s", "fdatasyncs/s"),
                  ("server_cpu_us_per_event", "server CPU µs/event"), ("p99_ms", "p99 ms")]:
    one, many = med(1, key), med(n, key)
    print(f"  {what:20} 1 shard {one:10.1f}   {n} shards {many:10.1f}   {n} / 1 = {many / one:.2f}")
PY
rm -f "$out"
