#!/usr/bin/env bash
# Strata vs PostgreSQL as an event store, same machine, same run: for each load (1, 16, 64
# clients x 1 event, 16 clients x 100 events; 1 KiB events), ROUNDS alternating runs of
# `strata bench append` against a fresh release `strata dev` and of
# ../shared/bench/peers/postgres.sh (a fresh PostgreSQL each time). Alternating matters here:
# this machine's speed drifts by 2-3x within minutes, so runs far apart are not comparable.
# At 64 clients Strata runs twice per round: the client's default (a connection's appends share
# one AppendStream call, each client waiting for its own answer) and with --unary-calls (one
# Append call per append), so both paths are measured beside the same PostgreSQL runs.
# Prints every run, then the medians and Strata / PostgreSQL per load.
#   usage: benches/vs-postgres.sh [SECONDS=10] [DATA_PARENT=/tmp] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; parent=${2:-/tmp}; rounds=${3:-2}
source benches/lib.sh
peer="$(cd .. && pwd)/shared/bench/peers/postgres.sh"
out=$(mktemp)
strata_run() { # clients, events per append, extra bench flags
  local data port dev
  data=$(mktemp -d "$parent/strata-bench.XXXXXX"); port=$(free_port)
  "$strata" dev --data "$data/node" --listen "127.0.0.1:$port" --metrics off >"$data/dev.log" 2>&1 &
  dev=$!
  for _ in $(seq 100); do "$strata" stream-info probe --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
  "$strata" bench append --clients "$1" --batch "$2" --event-bytes 1024 --duration "$secs" ${3:-} \
    --server "127.0.0.1:$port" 2>&1 >/dev/null | tail -1 | tee -a "$out"
  kill -INT $dev; wait $dev 2>/dev/null || true; rm -rf "$data"
}
for run in "1 1" "16 1" "64 1" "16 100"; do
  set -- $run
  for _ in $(seq "$rounds"); do
    strata_run "$1" "$2"
    if [ "$1" = 64 ] && [ "$2" = 1 ]; then strata_run 64 1 --unary-calls; fi
    bash "$peer" "$1" "$secs" "$2" 1024 | tail -1 | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    system = line.split()[0] + (" (unary calls)" if "unary_calls" in line else "")
    fields = dict(re.findall(r"(\w+(?:/s)?)=([\d.]+)", line))
    key = (int(fields["clients"]), int(fields["events_per_append"]))
    runs.setdefault(key, {}).setdefault(system, []).append(float(fields["events/s"]))
print(f"medians of alternating runs (events/s):")
for (clients, batch), by in sorted(runs.items()):
    p = statistics.median(by.get("postgres", [0]))
    for system in sorted(k for k in by if k.startswith("strata")):
        s = statistics.median(by[system])
        ratio = f"{s / p:.2f}x" if p else "n/a"
        print(f"  {clients:3} clients x {batch:3} events: {system:21} {s:9.0f}  postgres {p:9.0f}  ratio {ratio}")
PY
rm -f "$out"
