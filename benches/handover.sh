#!/usr/bin/env bash
# What a leadership handover costs the clients (release builds, all on this machine):
#   1. a three-process cluster of SHARDS shards (`strata node --shards`, loopback) is formed and
#      its maximum measured (`strata bench append`, 64 unary clients, 1 KiB events, 8 s);
#   2. ROUNDS times, alternating: SECONDS at half that load (`--rate`) with nothing else going
#      on, then SECONDS at the same load while a shard's leadership is handed to another voter
#      every 2 s (`strata cluster transfer-leader`, timed). Leaders are checked first: a group
#      of three elects the new leader at once only if its old one has led for a lease (800 ms).
# Prints one line per run and a JSON summary: medians of p99, p99.9 and throughput with and
# without handovers, their ratios, the handovers' durations, and client errors (must be 0).
#   usage: benches/handover.sh [SECONDS=20] [SHARDS=8] [ROUNDS=3] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; shards=${2:-8}; rounds=${3:-3}; parent=${4:-/tmp}
[[ $secs =~ ^[1-9][0-9]*$ && $shards =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ ]] ||
  { echo "usage: benches/handover.sh [SECONDS>0] [SHARDS>0] [ROUNDS>0] [DATA_PARENT]" >&2; exit 2; }
source benches/lib.sh
bench_dir "$parent" strata-handover-bench
for n in 1 2 3; do port[$n]=$(free_port); done
servers="127.0.0.1:${port[1]},127.0.0.1:${port[2]},127.0.0.1:${port[3]}"
for n in 1 2 3; do
  peers=()
  for p in 1 2 3; do [ "$p" != "$n" ] && peers+=(--peer "$p=127.0.0.1:${port[$p]}"); done
  "$strata" node --id "$n" --data "$data/node-$n" --listen "127.0.0.1:${port[$n]}" --metrics off \
    --shards "$shards" "${peers[@]}" >>"$data/node-$n.log" 2>&1 &
  pid[$n]=$!
done
for n in 1 2 3; do wait_up "${port[$n]}"; done
"$strata" cluster init --server "127.0.0.1:${port[1]}" >/dev/null
sleep 3
run() { # clients rate seconds → the bench's JSON line
  "$strata" bench append --server "$servers" --clients "$1" --batch 1 --event-bytes 1024 \
    --duration "$3" ${2:+--rate "$2"} 2>/dev/null
}
max=$(run 64 "" 8 | python3 -c 'import json,sys;print(int(json.load(sys.stdin)["events_per_s"]))')
half=$((max / 2))
echo "maximum $max events/s; runs at $half" >&2
# Hands shard k's leadership to the next voter every 2 s until SECONDS is nearly over; prints
# each handover's milliseconds.
handovers() {
  local k=0 end=$((SECONDS + secs - 2)) leader to t0 t1
  sleep 2
  while [ $SECONDS -lt $end ]; do
    leader=$("$strata" cluster status --json --server "127.0.0.1:${port[1]}" |
      python3 -c "import json,sys;print(json.load(sys.stdin)['shards'][$k]['leader'])")
    to=$(( leader % 3 + 1 ))
    t0=$(date +%s%N)
    "$strata" cluster transfer-leader --shard "$k" --to "$to" --server "$servers" >/dev/null
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
    k=$(( (k + 1) % shards ))
    sleep 2
  done
}
calm=(); busy=(); moved=()
for r in $(seq "$rounds"); do
  calm+=("$(run 64 "$half" "$secs")")
  echo "round $r calm: ${calm[-1]}" >&2
  handovers >"$data/moves" &
  mover=$!
  busy+=("$(run 64 "$half" "$secs")")
  wait "$mover"
  moved+=("$(paste -sd, "$data/moves")")
  echo "round $r with handovers (ms: ${moved[-1]}): ${busy[-1]}" >&2
done
python3 - "$max" "$half" "$(printf '%s\n' "${calm[@]}")" "$(printf '%s\n' "${busy[@]}")" "$(printf '%s;' "${moved[@]}")" <<'PY'
import json, statistics, sys
mx, half = int(sys.argv[1]), int(sys.argv[2])
calm = [json.loads(l) for l in sys.argv[3].splitlines() if l]
busy = [json.loads(l) for l in sys.argv[4].splitlines() if l]
moves = [int(m) for r in sys.argv[5].split(";") for m in r.split(",") if m]
med = lambda runs, k: statistics.median(r[k] for r in runs)
out = {
    "max_events_per_s": mx, "offered_events_per_s": half,
    "calm": {k: med(calm, k) for k in ("events_per_s", "p50_ms", "p99_ms", "p999_ms")},
    "handovers": {k: med(busy, k) for k in ("events_per_s", "p50_ms", "p99_ms", "p999_ms")},
    "handover_ms": sorted(moves),
    "errors": sum(r["errors"] for r in calm + busy),
}
out["p99_ratio"] = round(out["handovers"]["p99_ms"] / out["calm"]["p99_ms"], 2)
out["throughput_ratio"] = round(out["handovers"]["events_per_s"] / out["calm"]["events_per_s"], 3)
print(json.dumps(out))
PY
