#!/usr/bin/env bash
# What a replica move costs the clients (release builds, all on this machine):
#   1. three `strata node` processes of 8 shards form a cluster (each shard a Raft group of
#      three); a fourth is started and added (`cluster add-node`: it joins the metadata group
#      and holds no replica);
#   2. the cluster is filled for PRELOAD seconds at full speed (`strata bench append` through
#      nodes 1–3, 64 unary clients, 1 KiB events), then its maximum measured (8 s);
#   3. for the move throttle on, then off (`--move-throttle true|false`, the four nodes
#      restarted on the same data): ROUNDS times, SECONDS at half the maximum with nothing
#      else going on, then SECONDS at the same load while one shard's replica moves from node
#      1 to node 4 (or back, every other round; `strata cluster move-shard`, started 2 s in).
#      The throttle paces the new replica's catch-up (entries its leader sends it, snapshot
#      segments it fetches); off, it goes at the ceiling (64 MiB/s).
# Prints one line per run and a JSON summary per mode: medians of p99, p99.9 and throughput
# with and without the move, their ratios, each move's duration and the moved replica's size
# on disk, client errors (must be 0) and the servers' CPU per event. The disk's own limits
# come first (../shared/bench/disk-limits.sh, 5 s per job) when that script is there.
#   usage: benches/replica-move.sh [SECONDS=20] [ROUNDS=2] [PRELOAD=30] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; rounds=${2:-2}; preload=${3:-30}; parent=${4:-/tmp}
[[ $secs =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ && $preload =~ ^[1-9][0-9]*$ ]] ||
  { echo "usage: benches/replica-move.sh [SECONDS>0] [ROUNDS>0] [PRELOAD>0] [DATA_PARENT]" >&2; exit 2; }
source benches/lib.sh
limits=../shared/bench/disk-limits.sh
[ -f "$limits" ] && bash "$limits" "$parent" 5 >&2
bench_dir "$parent" strata-replica-move-bench
for n in 1 2 3 4; do port[$n]=$(free_port); done
server="127.0.0.1:${port[1]}"
servers="127.0.0.1:${port[1]},127.0.0.1:${port[2]},127.0.0.1:${port[3]}"
start_nodes() { # throttle true|false
  local n p peers
  for n in 1 2 3 4; do
    peers=()
    for p in 1 2 3 4; do
      # Nodes 1-3 form the cluster; node 4 knows them and is added afterwards.
      [ "$p" != "$n" ] && { [ "$n" = 4 ] || [ "$p" != 4 ]; } && peers+=(--peer "$p=127.0.0.1:${port[$p]}")
    done
    "$strata" node --id "$n" --data "$data/node-$n" --listen "127.0.0.1:${port[$n]}" --metrics off \
      --shards 8 --leader-balance-interval-ms 0 --move-throttle "$1" "${peers[@]}" \
      >>"$data/node-$n.log" 2>&1 &
    pid[$n]=$!
  done
  for n in 1 2 3 4; do wait_up "${port[$n]}"; done
}
stop_nodes() { local n; for n in 1 2 3 4; do kill -TERM "${pid[$n]}"; wait "${pid[$n]}" || true; done; }
start_nodes true
init_cluster "$server"
"$strata" cluster add-node --id 4 --addr "127.0.0.1:${port[4]}" --server "$server" >/dev/null
run() { bench_run "$1" "$2" "$3" "$servers"; } # clients rate seconds → JSON line
run 64 "" "$preload" >/dev/null
max=$(run 64 "" 8 | python3 -c 'import json,sys;print(int(json.load(sys.stdin)["events_per_s"]))')
half=$((max / 2))
echo "maximum $max events/s after a ${preload}s preload; runs at $half" >&2
shard=5 from=1 to=4
summary=()
for throttle in true false; do
  if [ "$throttle" = false ]; then
    stop_nodes; start_nodes false
    # Every shard led again before the calm run.
    run 64 "$half" 5 >/dev/null
  fi
  calm=(); busy=(); moves=()
  for r in $(seq "$rounds"); do
    calm+=("$(run 64 "$half" "$secs")")
    echo "throttle $throttle round $r calm: ${calm[-1]}" >&2
    ( sleep 2; t0=$(date +%s%N)
      "$strata" cluster move-shard "$shard" --from "$from" --to "$to" --server "$server" >/dev/null
      t1=$(date +%s%N)
      bytes=$(du -sb "$data/node-$to/shards/$shard" | cut -f1)
      echo "{\"shard\": $shard, \"from\": $from, \"to\": $to, \"ms\": $(((t1 - t0) / 1000000)), \"replica_bytes\": $bytes}"
    ) >"$data/move" &
    mover=$!
    busy+=("$(run 64 "$half" "$secs")")
    wait "$mover"
    moves+=("$(cat "$data/move")")
    echo "throttle $throttle round $r with a move (${moves[-1]}): ${busy[-1]}" >&2
    tmp=$from; from=$to; to=$tmp
  done
  summary+=("$(python3 - "$throttle" "$max" "$half" "$(printf '%s\n' "${calm[@]}")" \
    "$(printf '%s\n' "${busy[@]}")" "$(printf '%s\n' "${moves[@]}")" <<'PY'
import json, statistics, sys
throttle, mx, half = sys.argv[1] == "true", int(sys.argv[2]), int(sys.argv[3])
lines = lambda k: [json.loads(l) for l in sys.argv[k].splitlines() if l.strip()]
calm, busy, moves = lines(4), lines(5), lines(6)
med = lambda runs, k: statistics.median(r[k] for r in runs)
keys = ("events_per_s", "p50_ms", "p99_ms", "p999_ms", "server_cpu_us_per_event")
out = {
    "nodes": 4, "shards": 8, "throttle": throttle, "max_events_per_s": mx,
    "offered_events_per_s": half,
    "calm": {k: med(calm, k) for k in keys},
    "moving": {k: med(busy, k) for k in keys},
    "moves": moves,
    "errors": sum(r["errors"] for r in calm + busy),
}
out["p99_ratio"] = round(out["moving"]["p99_ms"] / out["calm"]["p99_ms"], 2)
out["throughput_ratio"] = round(out["moving"]["events_per_s"] / out["calm"]["events_per_s"], 3)
print(json.dumps(out))
PY
)")
done
printf '%s\n' "${summary[@]}"
