#!/usr/bin/env bash
# Heap allocations per event, node and client, for one `strata bench append` shape: exact
# counts, not timings, so a change's effect shows through this VM's 15-30 % run-to-run noise
# (which hides anything under ~5 % in events/s). Counts calls into mimalloc's entry points
# (the `strata` binary's allocator) with perf uprobes on a fresh release node; the probes
# slow both processes down, so the events/s of this run mean nothing. Needs root and perf.
#   usage: benches/allocs.sh [SECONDS=3] [BENCH ARGS="--clients 16 --pipeline 256"] [BINARY…]
#   e.g.   benches/allocs.sh 3 "--clients 64" /tmp/strata.before target/release/strata
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}; args=${2:-"--clients 16 --pipeline 256"}; shift $(( $# < 2 ? $# : 2 ))
source benches/lib.sh
bins=("$@"); [ ${#bins[@]} -eq 0 ] && bins=("$strata")
probes=(mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned mi_free)
command -v perf >/dev/null || { echo "allocs.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
clear_probes() { perf probe -q -d 'probe_strata*:*' 2>/dev/null || true; }
trap clear_probes EXIT
for bin in "${bins[@]}"; do
  clear_probes
  for f in "${probes[@]}"; do perf probe -q -x "$bin" -a "$f"; done
  events=$(perf probe -l 2>/dev/null | awk '/^ *probe_strata/{print $1}' | paste -sd,)
  dir=$(mktemp -d /tmp/strata-allocs.XXXXXX); port=$(free_port)
  "$bin" dev --data "$dir/node" --listen "127.0.0.1:$port" --metrics off >"$dir/dev.log" 2>&1 &
  node=$!
  for _ in $(seq 100); do "$bin" stream-info probe --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
  perf stat -x, -e "$events" -p "$node" -o "$dir/node.stat" &
  stat=$!
  # shellcheck disable=SC2086 # the bench arguments are words
  perf stat -x, -e "$events" -o "$dir/client.stat" \
    "$bin" bench append $args --duration "$secs" --server "127.0.0.1:$port" >"$dir/out" 2>&1
  kill -INT "$stat"; wait "$stat" 2>/dev/null || true
  kill -INT "$node"; wait "$node" 2>/dev/null || true
  python3 - "$dir" "$bin" <<'PY'
import json, sys
d, name = sys.argv[1], sys.argv[2]
run = json.loads(next(l for l in open(d + "/out") if l.startswith("{")))
events = run["events_per_s"] * run["seconds"]
def per_event(f):
    counts = {}
    for line in open(f):
        p = line.strip().split(",")
        if len(p) > 2 and p[0].isdigit():
            counts[p[2].split(":")[-1].replace("mi_", "").replace("_aligned", "")] = int(p[0]) / events
    return " ".join(f"{k}={counts.get(k, 0):.2f}" for k in ("malloc", "zalloc", "realloc", "free"))
print(f"{name}: {events:.0f} events; per event: node {per_event(d + '/node.stat')}; client {per_event(d + '/client.stat')}")
PY
  rm -rf "$dir"
done
