#!/usr/bin/env bash
# Replicated vs single node, same machine, same run (release builds):
#   1. `strata bench append` (1 KiB events, 16 and 64 clients) against one `strata dev` node;
#   2. the same against a three-process cluster (`strata node` ×3 on loopback);
#   3. the cluster at half its 64-client maximum (`--rate`), for p99 at half load;
#   4. failover: KILLS times, SIGKILL the leader and time until an append succeeds again
#      (through the `strata` client, which follows the new leader), then restart the node.
# Prints one line per measurement and a JSON summary with the ratios.
#   usage: benches/cluster.sh [SECONDS=10] [KILLS=10] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; kills=${2:-10}; parent=${3:-/tmp}
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
field() { python3 -c "import json,sys;print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# 1. Single node.
sp=$(free_port)
"$strata" dev --data "$data/single" --listen "127.0.0.1:$sp" --metrics "127.0.0.1:$(free_port)" >"$data/single.log" 2>&1 &
pid[single]=$!
wait_up "$sp"
s16=$(bench "127.0.0.1:$sp" 16); s64=$(bench "127.0.0.1:$sp" 64)
echo "single   16 clients: $s16"; echo "single   64 clients: $s64"
kill -TERM "${pid[single]}"; wait "${pid[single]}" 2>/dev/null || true; unset 'pid[single]'

# 2. Three-process cluster.
for n in 1 2 3; do port[$n]=$(free_port); done
start_node() {
  local n=$1 peers=()
  for p in 1 2 3; do [ "$p" != "$n" ] && peers+=(--peer "$p=127.0.0.1:${port[$p]}"); done
  "$strata" node --id "$n" --data "$data/node-$n" --listen "127.0.0.1:${port[$n]}" --metrics off "${peers[@]}" >>"$data/node-$n.log" 2>&1 &
  pid[$n]=$!
}
for n in 1 2 3; do start_node "$n"; done
for n in 1 2 3; do wait_up "${port[$n]}"; done
"$strata" cluster init --server "127.0.0.1:${port[1]}" >/dev/null
leader() { "$strata" cluster status --json --server "127.0.0.1:${port[$1]}" | python3 -c 'import json,sys;l=json.load(sys.stdin)["leader"];print(l if l is not None else "")'; }
for _ in $(seq 100); do [ -n "$(leader 1)" ] && break; sleep 0.1; done
c16=$(bench "127.0.0.1:${port[1]}" 16); c64=$(bench "127.0.0.1:${port[1]}" 64)
echo "cluster  16 clients: $c16"; echo "cluster  64 clients: $c64"
half=$(python3 -c "import json,sys;r=[json.loads(a)['appends']/json.loads(a)['seconds'] for a in sys.argv[1:]];print(round(max(r)/2))" "$c16" "$c64")
ch=$(bench "127.0.0.1:${port[1]}" 64 "$half")
echo "cluster  64 clients at half load ($half appends/s): $ch"

# 4. Failover distribution.
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
  start_node "$l"; wait_up "${port[$l]}"
  # Let it catch up before the next kill.
  for _ in $(seq 100); do
    a=$("$strata" cluster status --json --server "127.0.0.1:${port[$l]}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["last_applied"])')
    b=$("$strata" cluster status --json --server "127.0.0.1:${port[$other]}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["last_applied"])')
    [ "$a" = "$b" ] && break; sleep 0.1
  done
done
python3 - "$s16" "$s64" "$c16" "$c64" "$ch" "${times[@]}" <<'EOF'
import json, sys
s16, s64, c16, c64, ch = (json.loads(a) for a in sys.argv[1:6])
times = sorted(int(t) for t in sys.argv[6:])
pct = lambda p: times[min(len(times) - 1, int(len(times) * p))] if times else None
print(json.dumps({
    "single_events_per_s": {"16": s16["events_per_s"], "64": s64["events_per_s"]},
    "cluster_events_per_s": {"16": c16["events_per_s"], "64": c64["events_per_s"]},
    "cluster_over_single": {"16": round(c16["events_per_s"] / s16["events_per_s"], 3),
                            "64": round(c64["events_per_s"] / s64["events_per_s"], 3)},
    "cluster_p99_ms": {"16": round(c16["p99_ms"], 2), "64": round(c64["p99_ms"], 2),
                       "64_at_half_load": round(ch["p99_ms"], 2)},
    "half_load_appends_per_s": ch["offered_rate"],
    "failover_ms": {"kills": len(times), "min": times[0] if times else None, "p50": pct(0.5),
                    "p90": pct(0.9), "max": times[-1] if times else None, "all": times},
}, indent=1))
EOF
