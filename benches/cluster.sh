#!/usr/bin/env bash
# Replicated vs single node, same machine, same run (release builds):
#   1. ROUNDS rounds, each on fresh data directories: `strata bench append` (1 KiB events, 16,
#      64 and 256 clients) against one `strata dev` node, then the same against a three-process
#      cluster (`strata node` ×3 on loopback). Runs on this 2-core machine vary by ±15 % from
#      one to the next, so rounds alternate and the summary takes medians. A setup's maximum
#      load is its best median over the client counts (256 clients saturate both here). Each
#      round also runs 16 connections with 256 pipelined appends each (`--pipeline 256`);
#   2. the last round's cluster offered half its maximum load (`--rate`, 256 clients, so the
#      offered rate does not depend on the latency) three times, for p99 at half load (median);
#   3. failover: KILLS times, SIGKILL the leader and time until an append succeeds again
#      (through the `strata` client, which follows the new leader), then restart the node.
# Each measurement also records what it cost: the servers' and the bench client's CPU per event,
# and the disk's cache flushes per second. From the CPU cost the summary derives each setup's
# ceiling on this machine (all cores busy at that cost per event); three replicas on one machine
# do every event's work three times, so this is the limit a same-machine cluster meets first.
# Prints one line per measurement and a JSON summary with the ratios.
#   usage: benches/cluster.sh [SECONDS=10] [KILLS=10] [DATA_PARENT=/tmp] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; kills=${2:-10}; parent=${3:-/tmp}; rounds=${4:-3}
[[ $secs =~ ^[1-9][0-9]*$ && $kills =~ ^[0-9]+$ && $rounds =~ ^[1-9][0-9]*$ ]] ||
  { echo "usage: benches/cluster.sh [SECONDS>0] [KILLS>=0] [DATA_PARENT] [ROUNDS>0]" >&2; exit 2; }
source benches/lib.sh
bench_dir "$parent" strata-cluster-bench
# What a run costs, beside its speed: CPU seconds of the server processes (from /proc/PID/stat)
# and of the bench client (bash's `time`), and cache flushes the data directory's disk completed
# (/proc/diskstats; null where the kernel does not count them for that device).
hz=$(getconf CLK_TCK)
disk=$(basename "$(df --output=source "$parent" | tail -1)")
ticks() { local f; read -r -a f <"/proc/$1/stat"; echo $((f[13] + f[14])); } # utime + stime
flushes() { awk -v d="$disk" '$3 == d && NF >= 20 { print $19; found = 1 } END { if (!found) print "" }' /proc/diskstats; }
bench() { # server clients [rate] [pipeline]; the servers' pids in $servers
  local extra=() each0=() each1=() f0 f1 client p
  [ -n "${3:-}" ] && extra=(--rate "$3")
  [ -n "${4:-}" ] && extra+=(--pipeline "$4")
  for p in $servers; do each0+=("$(ticks "$p")"); done
  f0=$(flushes)
  if ! client=$( { TIMEFORMAT='%U %S'; time "$strata" bench append --server "$1" --clients "$2" --batch 1 \
      --event-bytes 1024 --duration "$secs" "${extra[@]}" >"$data/bench.json" 2>"$data/bench.err"; } 2>&1 ); then
    echo "strata bench append --clients $2 ${extra[*]} against $1 failed: $(tail -5 "$data/bench.err")" >&2
    exit 1
  fi
  f1=$(flushes)
  for p in $servers; do each1+=("$(ticks "$p")"); done
  python3 - "$data/bench.json" "$hz" "$client" "$f0" "$f1" "${each0[*]}" "${each1[*]}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
hz, (cu, cs), f0, f1 = int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5]
each = [int(b) - int(a) for a, b in zip(sys.argv[6].split(), sys.argv[7].split())]
ticks = sum(each)
events = r["appends"] * r["events_per_append"]
r["server_cpu_s"] = round(ticks / hz, 2)
r["client_cpu_s"] = round(float(cu) + float(cs), 2)
r["server_cpu_us_per_event"] = round(ticks / hz * 1e6 / events, 1) if events else None
# Per server process, in the order node 1, 2, 3 (the round's line names the leader).
r["each_server_cpu_us_per_event"] = [round(t / hz * 1e6 / events, 1) if events else None for t in each]
r["client_cpu_us_per_event"] = round(r["client_cpu_s"] * 1e6 / events, 1) if events else None
r["disk_flushes_per_s"] = round((int(f1) - int(f0)) / r["seconds"]) if f0 and f1 else None
print(json.dumps(r))
PY
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
  servers=${pid[single]}
  s16=$(bench "127.0.0.1:$sp" 16); s64=$(bench "127.0.0.1:$sp" 64); s256=$(bench "127.0.0.1:$sp" 256)
  echo "round $r single   16 clients: $s16"; echo "round $r single   64 clients: $s64"
  echo "round $r single  256 clients: $s256"
  bench "127.0.0.1:$sp" 16 "" 256 >"$data/piped-single-$r.json"
  echo "round $r single   16 connections x 256 pipelined: $(cat "$data/piped-single-$r.json")"
  stop single; rm -rf "$data/round-$r/single"
  # 1b. Three-process cluster.
  for n in 1 2 3; do port[$n]=$(free_port); done
  for n in 1 2 3; do start_node "$n" "$r"; done
  for n in 1 2 3; do wait_up "${port[$n]}"; done
  "$strata" cluster init --server "127.0.0.1:${port[1]}" >/dev/null
  for _ in $(seq 100); do [ -n "$(leader 1)" ] && break; sleep 0.1; done
  servers="${pid[1]} ${pid[2]} ${pid[3]}"
  c16=$(bench "127.0.0.1:${port[1]}" 16); c64=$(bench "127.0.0.1:${port[1]}" 64)
  c256=$(bench "127.0.0.1:${port[1]}" 256)
  echo "round $r cluster  16 clients: $c16"; echo "round $r cluster  64 clients: $c64"
  echo "round $r cluster 256 clients: $c256"
  bench "127.0.0.1:${port[1]}" 16 "" 256 >"$data/piped-cluster-$r.json"
  echo "round $r cluster  16 connections x 256 pipelined: $(cat "$data/piped-cluster-$r.json")"
  echo "round $r cluster leader: node $(leader 1)"
  results+=("$s16" "$s64" "$s256" "$c16" "$c64" "$c256")
  if [ "$r" -lt "$rounds" ]; then for n in 1 2 3; do stop "$n"; done; rm -rf "$data/round-$r"; fi
done

# The rounds' results grouped by setup and client count: `summary half` prints half the
# cluster's maximum load, `summary all` the JSON summary (after the half-load runs and kills).
summary() { # mode
  python3 - "$1" "$data" "${times[*]:-}" "${results[@]}" <<'EOF'
import json, os, statistics, sys
mode, data, times, rs = sys.argv[1], sys.argv[2], sys.argv[3], [json.loads(a) for a in sys.argv[4:]]
counts = ("16", "64", "256")
runs = {f"{setup}_{c}": rs[i * 3 + j::6] for i, setup in enumerate(("single", "cluster"))
        for j, c in enumerate(counts)}
rate = {k: [r["events_per_s"] for r in v] for k, v in runs.items()}
med = {k: statistics.median(v) for k, v in rate.items()}
maximum = {s: max(med[f"{s}_{c}"] for c in counts) for s in ("single", "cluster")}
if mode == "half":
    print(round(maximum["cluster"] / 2))
    sys.exit()
halves = [json.load(open(f"{data}/half-{k}.json")) for k in (1, 2, 3)]
# Pipelined appends (16 connections, 256 in flight on each, one stream per connection).
piped = {setup: [json.load(open(f"{data}/piped-{setup}-{k}.json")) for k in range(1, len(rs) // 6 + 1)]
         for setup in ("single", "cluster")}
piped_med = {k: statistics.median(r["events_per_s"] for r in v) for k, v in piped.items()}
times = sorted(int(t) for t in times.split())
p99 = {k: statistics.median(r["p99_ms"] for r in v) for k, v in runs.items()}
cores = os.cpu_count()
cost = {k: statistics.median(r["server_cpu_us_per_event"] + r["client_cpu_us_per_event"] for r in v)
        for k, v in runs.items()}
# The most events/s this machine's cores could give at the CPU cost per event measured: what
# the servers and the bench client spent, all cores busy with nothing else.
ceiling = {k: round(cores * 1e6 / c) for k, c in cost.items()}
cpu = lambda key: {k: statistics.median(r[key] for r in v) for k, v in runs.items()}
flushes = {k: (statistics.median(r["disk_flushes_per_s"] for r in v)
               if all(r["disk_flushes_per_s"] is not None for r in v) else None)
           for k, v in runs.items()}
pct = lambda p: times[min(len(times) - 1, int(len(times) * p))] if times else None
print(json.dumps({
    "rounds": len(rs) // 6,
    "events_per_s_each_round": rate,
    "median_events_per_s": med,
    "cluster_over_single": {c: round(med[f"cluster_{c}"] / med[f"single_{c}"], 3) for c in counts},
    "cluster_over_single_each_round": {
        c: [round(a / b, 3) for a, b in zip(rate[f"cluster_{c}"], rate[f"single_{c}"])] for c in counts},
    "maximum_load": maximum,
    "cluster_over_single_at_maximum_load": round(maximum["cluster"] / maximum["single"], 3),
    "pipelined_16x256_median_events_per_s": piped_med,
    "pipelined_16x256_median_server_cpu_us_per_event": {
        k: statistics.median(r["server_cpu_us_per_event"] for r in v) for k, v in piped.items()},
    "pipelined_cluster_over_single": round(piped_med["cluster"] / piped_med["single"], 3),
    "median_p99_ms": {k: round(v, 2) for k, v in p99.items()},
    "cores": cores,
    "median_server_cpu_us_per_event": cpu("server_cpu_us_per_event"),
    "median_client_cpu_us_per_event": cpu("client_cpu_us_per_event"),
    "cpu_ceiling_events_per_s": ceiling,
    "median_over_cpu_ceiling": {k: round(med[k] / ceiling[k], 3) for k in med},
    "median_disk_flushes_per_s": flushes,
    "half_load": {"appends_per_s": halves[0]["offered_rate"], "runs": len(halves),
                  "median_p50_ms": round(statistics.median(h["p50_ms"] for h in halves), 2),
                  "median_p99_ms": round(statistics.median(h["p99_ms"] for h in halves), 2),
                  "p99_ms_each_run": [round(h["p99_ms"], 2) for h in halves]},
    "failover_ms": {"kills": len(times), "min": times[0] if times else None, "p50": pct(0.5),
                    "p90": pct(0.9), "max": times[-1] if times else None, "all": times},
}, indent=1))
EOF
}

# 2. Half the cluster's maximum load on the last round's cluster.
half=$(summary half)
for k in 1 2 3; do
  ch=$(bench "127.0.0.1:${port[1]}" 256 "$half"); echo "$ch" >"$data/half-$k.json"
  echo "cluster 256 clients at half its maximum load ($half appends/s), run $k: $ch"
done

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
summary all
