#!/usr/bin/env bash
# Replicated vs single node, same machine, same run (release builds):
#   1. ROUNDS rounds, each on fresh data directories: `strata bench append` (1 KiB events, 16
#      and 64 clients) against one `strata dev` node, then the same against a three-process
#      cluster (`strata node` ×3 on loopback). Runs on this 2-core machine vary by ±15 % from
#      one to the next, so rounds alternate and the summary takes medians;
#   2. the last round's cluster at half the median 64-client maximum (`--rate`), for p99 at
#      half load;
#   3. failover: KILLS times, SIGKILL the leader and time until an append succeeds again
#      (through the `strata` client, which follows the new leader), then restart the node.
# Prints one line per measurement and a JSON summary with the ratios.
#   usage: benches/cluster.sh [SECONDS=10] [KILLS=10] [DATA_PARENT=/tmp] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; kills=${2:-10}; parent=${3:-/tmp}; rounds=${4:-3}
[[ $secs =~ ^[1-9][0-9]*$ && $kills =~ ^[0-9]+$ && $rounds =~ ^[1-9][0-9]*$ ]] ||
  { echo "usage: benches/cluster.sh [SECONDS>0] [KILLS>=0] [DATA_PARENT] [ROUNDS>0]" >&2; exit 2; }
source benches/lib.sh
data=$(mktemp -d "$parent/strata-cluster-bench.XXXXXX")
declare -A pid port
cleanup() {
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
wait_up() { for _ in $(seq 300); do "$strata" cluster status --json --server "127.0.0.1:$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "node on $1 did not start" >&2; exit 1; }
bench() { # server clients [rate]
  local extra=(); [ -n "${3:-}" ] && extra=(--rate "$3")
  "$strata" bench append --server "$1" --clients "$2" --batch 1 --event-bytes 1024 --duration "$secs" "${extra[@]}" 2>/dev/null
}
stop() { kill -TERM "${pid[$1]}"; wait "${pid[$1]}" 2>/dev/null || true; unset "pid[$1]"; }
start_node() { # n round
  local n=$1 peers=()
  for p in 1 2 3; do [ "$p" != "$n" ] && peers+=(--peer "$p=127.0.0.1:${port[$p]}"); done
  "$strata" node --id "$n" --data "$data/round-$2/node-$n" --listen "127.0.0.1:${port[$n]}" --metrics off "${peers[@]}" >>"$data/node-$n.log" 2>&1 &
  pid[$n]=$!
}
leader() { "$strata" cluster status --json --server "127.0.0.1:${port[$1]}" | python3 -c 'import json,sys;l=json.load(sys.stdin)["leader"];print(l if l is not None else "")'; }

results=()
for r in $(seq "$rounds"); do
  # 1a. Single node.
  sp=$(free_port)
  "$strata" dev --data "$data/round-$r/single" --listen "127.0.0.1:$sp" --metrics off >"$data/single.log" 2>&1 &
  pid[single]=$!
  wait_up "$sp"
  s16=$(bench "127.0.0.1:$sp" 16); s64=$(bench "127.0.0.1:$sp" 64)
  echo "round $r single   16 clients: $s16"; echo "round $r single   64 clients: $s64"
  stop single; rm -rf "$data/round-$r/single"
  # 1b. Three-process cluster.
  for n in 1 2 3; do port[$n]=$(free_port); done
  for n in 1 2 3; do start_node "$n" "$r"; done
  for n in 1 2 3; do wait_up "${port[$n]}"; done
  "$strata" cluster init --server "127.0.0.1:${port[1]}" >/dev/null
  for _ in $(seq 100); do [ -n "$(leader 1)" ] && break; sleep 0.1; done
  c16=$(bench "127.0.0.1:${port[1]}" 16); c64=$(bench "127.0.0.1:${port[1]}" 64)
  echo "round $r cluster  16 clients: $c16"; echo "round $r cluster  64 clients: $c64"
  results+=("$s16" "$s64" "$c16" "$c64")
  if [ "$r" -lt "$rounds" ]; then for n in 1 2 3; do stop "$n"; done; rm -rf "$data/round-$r"; fi
done

# 2. Half load on the last round's cluster.
half=$(python3 -c "
import json,statistics,sys
rs=[json.loads(a) for a in sys.argv[1:]]
print(round(statistics.median(r['events_per_s'] for r in rs[3::4]) / 2))" "${results[@]}")
ch=$(bench "127.0.0.1:${port[1]}" 64 "$half")
echo "cluster  64 clients at half load ($half appends/s): $ch"

# 3. Failover distribution.
times=()
for k in $(seq "$kills"); do
  l=$(leader 1); [ -z "$l" ] && l=$(leader 2)
  other=1; [ "$l" = 1 ] && other=2
  t0=$(date +%s%N)
  kill -KILL "${pid[$l]}"; wait "${pid[$l]}" 2>/dev/null || true
  until "$strata" append failover --type Probe --server "127.0.0.1:${port[$other]}" >/dev/null 2>&1; do :; done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 )); times+=("$ms")
  echo "failover $k: node $l killed, next append acknowledged after ${ms} ms"
  start_node "$l" "$rounds"; wait_up "${port[$l]}"
  # Let it catch up before the next kill.
  for _ in $(seq 100); do
    a=$("$strata" cluster status --json --server "127.0.0.1:${port[$l]}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["last_applied"])')
    b=$("$strata" cluster status --json --server "127.0.0.1:${port[$other]}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["last_applied"])')
    [ "$a" = "$b" ] && break; sleep 0.1
  done
done
python3 - "$ch" "${times[*]:-}" "${results[@]}" <<'EOF'
import json, statistics, sys
ch = json.loads(sys.argv[1])
times = sorted(int(t) for t in sys.argv[2].split())
rs = [json.loads(a) for a in sys.argv[3:]]
runs = {"single_16": rs[0::4], "single_64": rs[1::4], "cluster_16": rs[2::4], "cluster_64": rs[3::4]}
rate = {k: [r["events_per_s"] for r in v] for k, v in runs.items()}
med = {k: statistics.median(v) for k, v in rate.items()}
p99 = {k: statistics.median(r["p99_ms"] for r in v) for k, v in runs.items()}
pct = lambda p: times[min(len(times) - 1, int(len(times) * p))] if times else None
print(json.dumps({
    "rounds": len(rs) // 4,
    "events_per_s_each_round": rate,
    "median_events_per_s": med,
    "cluster_over_single": {c: round(med[f"cluster_{c}"] / med[f"single_{c}"], 3) for c in ("16", "64")},
    "cluster_over_single_each_round": {
        c: [round(a / b, 3) for a, b in zip(rate[f"cluster_{c}"], rate[f"single_{c}"])] for c in ("16", "64")},
    "median_p99_ms": {k: round(v, 2) for k, v in p99.items()},
    "half_load": {"appends_per_s": ch["offered_rate"], "p50_ms": round(ch["p50_ms"], 2),
                  "p99_ms": round(ch["p99_ms"], 2)},
    "failover_ms": {"kills": len(times), "min": times[0] if times else None, "p50": pct(0.5),
                    "p90": pct(0.9), "max": times[-1] if times else None, "all": times},
}, indent=1))
EOF
