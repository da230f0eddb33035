#!/usr/bin/env bash
# Strata against UmaDB 0.7.8 (../shared/bench/peers/umadb.md: a Rust event store over gRPC that
# fdatasyncs before it answers) in one run: ROUNDS alternating runs of each at C clients x B
# events of 1 KiB per append, each on a fresh server, beside the disk's own limits. Prints every
# run and the medians: events/s, p99, server CPU µs per event, and Strata ÷ UmaDB.
#   usage: benches/vs-umadb.sh [CLIENTS=16] [EVENTS_PER_APPEND=100] [SECONDS=10] [ROUNDS=4]
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-16}; batch=${2:-100}; secs=${3:-10}; rounds=${4:-4}
source benches/lib.sh
uma=../shared/bench/peers/umadb/run.sh
bash ../shared/bench/disk-limits.sh /tmp 5
out=$(mktemp)
strata_run() {
  local data port dev
  data=$(mktemp -d /tmp/strata-bench.XXXXXX); port=$(free_port)
  "$strata" dev --data "$data/node" --listen "127.0.0.1:$port" --metrics off >"$data/dev.log" 2>&1 &
  dev=$!
  for _ in $(seq 100); do "$strata" stream-info probe --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
  "$strata" bench append --clients "$clients" --batch "$batch" --duration "$secs" --server "127.0.0.1:$port" 2>&1 \
    | grep '^{' | tee -a "$out"
  kill -INT $dev; wait $dev 2>/dev/null || true; rm -rf "$data"
}
for round in $(seq "$rounds"); do
  bash "$uma" "$clients" "$secs" "$batch" | tee -a "$out"
  strata_run
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(system, key):
    return statistics.median(r[key] for r in runs if r.get("system", "strata") == system)
u = {k: med("umadb", k) for k in ("events_per_s", "p99_ms", "server_cpu_us_per_event")}
s = {"events_per_s": med("strata", "events_per_s"), "p99_ms": med("strata", "p99_ms"),
     "server_cpu_us_per_event": med("strata", "server_cpu_us_per_event")}
print(f"medians of {len(runs)//2} alternating runs each:")
print(f"  umadb : {u['events_per_s']:.0f} events/s, p99 {u['p99_ms']:.1f} ms, server {u['server_cpu_us_per_event']:.1f} µs CPU/event")
print(f"  strata: {s['events_per_s']:.0f} events/s, p99 {s['p99_ms']:.1f} ms, server {s['server_cpu_us_per_event']:.1f} µs CPU/event")
print(f"  strata ÷ umadb: {s['events_per_s']/u['events_per_s']:.2f}x")
PY
rm -f "$out"
