#!/usr/bin/env bash
# What a slot-range move costs the clients (release builds, all on this machine):
#   1. a node of 8 shards without replication (`strata node --shards 8`), or with NODES=3 a
#      three-process cluster of 8 shards (each a Raft group with a replica on every node), is
#      filled for PRELOAD seconds at full speed (`strata bench append`, 64 unary clients,
#      1 KiB events), then its maximum measured (8 s);
#   2. for the throttle on, then off (`--move-throttle true|false`, the nodes restarted on the
#      same data): ROUNDS times, SECONDS at half the maximum with nothing else going on, then
#      SECONDS at the same load while slots 0..256 (half of shard 0's, 1/16 of the data) move
#      to the other of shards 1 and 0 (`strata cluster move-slots`, started 2 s in; on a
#      cluster the metadata group's leader runs it).
# Prints one line per run and a JSON summary per mode: medians of p99, p99.9 and throughput
# with and without the move, their ratios, each move's duration, write pause (fence → switch),
# bytes and events copied, client errors (must be 0) and the servers' CPU per event. The
# disk's own limits come first (../shared/bench/disk-limits.sh, 5 s per job) when that script
# is there.
#   usage: benches/move.sh [SECONDS=20] [ROUNDS=2] [PRELOAD=30] [DATA_PARENT=/tmp] [NODES=1|3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; rounds=${2:-2}; preload=${3:-30}; parent=${4:-/tmp}; nodes=${5:-1}
[[ $secs =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ && $preload =~ ^[1-9][0-9]*$ ]] &&
  [[ $nodes == 1 || $nodes == 3 ]] ||
  { echo "usage: benches/move.sh [SECONDS>0] [ROUNDS>0] [PRELOAD>0] [DATA_PARENT] [NODES=1|3]" >&2; exit 2; }
source benches/lib.sh
limits=../shared/bench/disk-limits.sh
[ -f "$limits" ] && bash "$limits" "$parent" 5 >&2
bench_dir "$parent" strata-move-bench
for n in $(seq "$nodes"); do port[$n]=$(free_port); done
server="127.0.0.1:${port[1]}"
servers=$(for n in $(seq "$nodes"); do printf '127.0.0.1:%s,' "${port[$n]}"; done)
servers=${servers%,}
start_node() { # throttle true|false
  local n peers
  for n in $(seq "$nodes"); do
    peers=()
    if [ "$nodes" -gt 1 ]; then
      peers=(--id "$n")
      for p in $(seq "$nodes"); do [ "$p" != "$n" ] && peers+=(--peer "$p=127.0.0.1:${port[$p]}"); done
    fi
    "$strata" node --data "$data/node-$n" --listen "127.0.0.1:${port[$n]}" --metrics off \
      --shards 8 --move-throttle "$1" "${peers[@]}" >>"$data/node-$n.log" 2>&1 &
    pid[$n]=$!
  done
  for n in $(seq "$nodes"); do wait_up "${port[$n]}"; done
  if [ "$nodes" -gt 1 ]; then
    init_cluster "$server"
  fi
}
stop_node() { local n; for n in $(seq "$nodes"); do kill -TERM "${pid[$n]}"; wait "${pid[$n]}" || true; done; }
run() { bench_run "$1" "$2" "$3" "$servers"; } # clients rate seconds → JSON line
start_node true
run 64 "" "$preload" >/dev/null
max=$(run 64 "" 8 | python3 -c 'import json,sys;print(int(json.load(sys.stdin)["events_per_s"]))')
half=$((max / 2))
echo "maximum $max events/s after a ${preload}s preload; runs at $half" >&2
to=1
summary=()
for throttle in true false; do
  [ "$throttle" = false ] && { stop_node; start_node false; }
  calm=(); busy=(); moves=()
  for r in $(seq "$rounds"); do
    calm+=("$(run 64 "$half" "$secs")")
    echo "throttle $throttle round $r calm: ${calm[-1]}" >&2
    ( sleep 2; "$strata" cluster move-slots 0..256 --to "$to" --server "$server" 2>/dev/null ) \
      >"$data/move" &
    mover=$!
    busy+=("$(run 64 "$half" "$secs")")
    wait "$mover"
    moves+=("$(cat "$data/move")")
    echo "throttle $throttle round $r with a move (${moves[-1]}): ${busy[-1]}" >&2
    to=$((1 - to))
  done
  summary+=("$(python3 - "$throttle" "$max" "$half" "$(printf '%s\n' "${calm[@]}")" \
    "$(printf '%s\n' "${busy[@]}")" "$(printf '%s\n' "${moves[@]}")" "$nodes" <<'PY'
import json, statistics, sys
throttle, mx, half = sys.argv[1] == "true", int(sys.argv[2]), int(sys.argv[3])
lines = lambda k: [json.loads(l) for l in sys.argv[k].splitlines() if l.strip()]
calm, busy, moves = lines(4), lines(5), lines(6)
med = lambda runs, k: statistics.median(r[k] for r in runs)
keys = ("events_per_s", "p50_ms", "p99_ms", "p999_ms", "server_cpu_us_per_event")
out = {
    "nodes": int(sys.argv[7]), "throttle": throttle, "max_events_per_s": mx, "offered_events_per_s": half,
    "calm": {k: med(calm, k) for k in keys},
    "moving": {k: med(busy, k) for k in keys},
    "moves": [{k: m[k] for k in ("step", "elapsed_us", "pause_us", "copied_bytes", "copied_events", "streams")} for m in moves],
    "errors": sum(r["errors"] for r in calm + busy),
}
out["p99_ratio"] = round(out["moving"]["p99_ms"] / out["calm"]["p99_ms"], 2)
out["throughput_ratio"] = round(out["moving"]["events_per_s"] / out["calm"]["events_per_s"], 3)
print(json.dumps(out))
PY
)")
done
printf '%s\n' "${summary[@]}"
