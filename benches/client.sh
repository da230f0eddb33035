#!/usr/bin/env bash
# Appends through strata-client, each run on a fresh release `strata dev` node, beside the
# disk's own limits measured in the same run (../shared/bench/disk-limits.sh on the same
# directory): pipelined 1 KiB appends at 16 and 64 connections, unpipelined single-event
# appends at 1 and 64 clients, 16 clients x 100-event appends, and a consumer group handling
# events with a commit every 100; then the pipelined and 100-event shapes again against
# `strata bench null-server` (answers appends, stores nothing): what the append interface alone
# reaches on this machine, the floor under the node's numbers (and one client's round trip with
# nothing stored, the floor under its latency). Prints one line per run and a summary of ratios, with each
# run's CPU ceiling: the machine's cores over the node's and the client's CPU per event (they
# share the cores), the most events/s that CPU cost allows whatever the disk does.
#   usage: benches/client.sh [SECONDS=10] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; parent=${2:-/tmp}
source benches/lib.sh
limits=$(bash ../shared/bench/disk-limits.sh "$parent" 5)
echo "$limits"
out=$(mktemp)
run() { # bench args…
  local data port dev
  data=$(mktemp -d "$parent/strata-bench.XXXXXX"); port=$(free_port)
  "$strata" dev --data "$data/node" --listen "127.0.0.1:$port" --metrics off >"$data/dev.log" 2>&1 &
  dev=$!
  for _ in $(seq 100); do "$strata" stream-info probe --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
  "$strata" bench "$@" --server "127.0.0.1:$port" 2>&1 | tee -a "$out" | grep -v '^{' | sed 's/  */ /g'
  kill -INT $dev; wait $dev 2>/dev/null || true; rm -rf "$data"
}
run append --clients 16 --pipeline 256 --duration "$secs"
# The same 256 events in flight per connection as 16-event appends: the difference in CPU per
# event is what a record (and an answer) per append costs.
run append --clients 16 --pipeline 16 --batch 16 --duration "$secs"
run append --clients 64 --pipeline 64 --duration "$secs"
run append --clients 1 --duration "$secs"
run append --clients 64 --duration "$secs"
run append --clients 16 --batch 100 --duration "$secs"
run group --events 200000 --workers 2 --commit-every 100
nullout=$(mktemp)
run_null() { # bench args…
  local port null
  port=$(free_port)
  "$strata" bench null-server --listen "127.0.0.1:$port" 2>/dev/null &
  null=$!
  for _ in $(seq 100); do "$strata" cluster status --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
  echo -n "null server: "
  "$strata" bench "$@" --server "127.0.0.1:$port" 2>&1 | tee -a "$nullout" | grep -v '^{' | sed 's/  */ /g'
  kill -INT $null; wait $null 2>/dev/null || true
}
run_null append --clients 16 --pipeline 256 --duration "$secs"
run_null append --clients 16 --batch 100 --duration "$secs"
run_null append --clients 1 --duration "$secs"
LIMITS="$limits" CORES=$(nproc) python3 - "$out" "$nullout" <<'PY'
import json, os, re, sys
cores = int(os.environ["CORES"])
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
limit = {m.group(1): float(m.group(3)) for m in re.finditer(r"^(\S+)\s+(write|read)\s+\d+ ops/s\s+([\d.]+) MiB/s", os.environ["LIMITS"], re.M)}
seq = limit.get("seq_write_1m_fsync")
for r in runs:
    if "mib_per_s" in r and seq:
        print(f"clients={r['clients']} pipeline={r['pipeline']} batch={r['events_per_append']}: "
              f"{r['events_per_s']:.0f} events/s = {r['mib_per_s']:.1f} MiB/s = {r['mib_per_s']/seq:.1%} of the disk's "
              f"sequential fsync'd {seq:.0f} MiB/s; server {r['server_cpu_us_per_event']:.1f} µs CPU/event")
        cpu = (r.get("server_cpu_us_per_event") or 0) + (r.get("client_cpu_us_per_event") or 0)
        if cpu > 0 and r["clients"] * max(r["pipeline"], 1) > 1:  # one append at a time waits, it is not CPU-bound
            cap = cores * 1e6 / cpu
            cap_mib = cap * r["mib_per_s"] / r["events_per_s"]
            print(f"  CPU ceiling: {cores} cores / ({r['server_cpu_us_per_event']:.1f} node + {r['client_cpu_us_per_event']:.1f} client µs/event) "
                  f"= {cap:.0f} events/s = {cap_mib/seq:.1%} of the disk; reached {r['events_per_s']/cap:.0%} of it")
# The interface alone: the same shape against the null server, and the node as a share of it.
nulls = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
for n in nulls:
    if not seq or n["clients"] * max(n["pipeline"], 1) == 1:
        continue
    shape = lambda r: (r["clients"], r["pipeline"], r["events_per_append"])
    node = next((r for r in runs if "mib_per_s" in r and shape(r) == shape(n)), None)
    cpu = (n.get("server_cpu_us_per_event") or 0) + (n.get("client_cpu_us_per_event") or 0)
    print(f"null server, clients={n['clients']} pipeline={n['pipeline']} batch={n['events_per_append']}: "
          f"{n['events_per_s']:.0f} events/s = {n['mib_per_s']/seq:.1%} of the disk with nothing stored "
          f"({n['server_cpu_us_per_event']:.1f} server + {n['client_cpu_us_per_event']:.1f} client µs/event = {cpu:.1f})"
          + (f"; the node reached {node['events_per_s']/n['events_per_s']:.0%} of it" if node else ""))
fsync_ops = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+)\s+write\s+(\d+) ops/s", os.environ["LIMITS"], re.M)}.get("fsync_4k_seq")
for r in runs:
    if r.get("clients") == 1 and r.get("pipeline") == 0 and r.get("events_per_append") == 1 and fsync_ops:
        sync_ms = 1000 / fsync_ops
        bound = sync_ms + 0.1
        print(f"one client: append p50 {r['p50_ms']:.3f} ms against a 4 KiB write + fdatasync of {sync_ms:.3f} ms "
              f"(fio, same run) + 0.1 ms = {bound:.3f} ms: {'within' if r['p50_ms'] <= bound else 'above'}")
        # The round trip through the interface with nothing stored: what of the 0.1 ms it takes.
        for n in nulls:
            if n["clients"] == 1 and n["pipeline"] == 0 and n["events_per_append"] == 1:
                print(f"  the same append against the null server (nothing stored): p50 {n['p50_ms']:.3f} ms; "
                      f"the node's p50 less it and the fdatasync: {r['p50_ms'] - n['p50_ms'] - sync_ms:+.3f} ms")
PY
rm -f "$out" "$nullout"
